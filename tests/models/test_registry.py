"""Registry: a searched model is logged as a native LightGBM booster with its parameters."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from workbench.models.estimator import LGBMForecaster
from workbench.models.lgbm import predict
from workbench.models.registry import ModelNotFoundError, load_model, log_lightgbm, model_params

from .conftest import FEATURES, make_table


def test_forecaster_round_trip(isolated: Path) -> None:
    table = make_table(n_ts=200)
    model = LGBMForecaster(num_boost_round=20, num_leaves=5, seed=9).fit(
        table.select(FEATURES), table["label"]
    )
    with mlflow.start_run():
        ref = log_lightgbm(model, table.select(FEATURES).to_pandas(), registered_name="m",
                           tags={"strategy": "s"})  # fmt: skip
    loaded = load_model(ref)
    assert isinstance(loaded, lgb.Booster)  # LightGBM's own format, no pickle
    np.testing.assert_allclose(
        predict(loaded, table, FEATURES)["prediction"].to_numpy(),
        model.predict(table.select(FEATURES)),
    )
    assert model_params(ref) == model.get_params()
    assert LGBMForecaster(**model_params(ref)).get_params() == model.get_params()
    mv = mlflow.MlflowClient().get_model_version("m", ref.version)
    assert mv.tags["strategy"] == "s"


def test_params_of_a_model_logged_elsewhere_are_unknown(isolated: Path) -> None:
    table = make_table(n_ts=100)
    booster = LGBMForecaster(num_boost_round=5).fit(table.select(FEATURES), table["label"]).booster_
    with mlflow.start_run():
        ref = log_lightgbm(booster, table.select(FEATURES).to_pandas(), registered_name="b")
    with pytest.raises(ModelNotFoundError, match="no 'workbench.params' tag.*Fix: log it"):
        model_params(ref)
