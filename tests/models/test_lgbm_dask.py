"""LightGBM on Dask (model.distributed): a data-parallel fit on 2 worker processes, from a frame or
from parquet files the workers read, predicts like the local fit (correlation, not bit for bit:
distributed histograms differ) and comes back as a plain LGBMForecaster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workbench.errors import ParameterError
from workbench.models.estimator import LGBMForecaster
from workbench.models.lgbm_dask import fit_on_dask

from .conftest import FEATURES, make_table

PARAMS = {"num_boost_round": 40, "num_leaves": 7, "min_child_samples": 20, "learning_rate": 0.1}


@pytest.fixture(scope="module")
def client(dask_client: Any) -> Any:
    return dask_client


def test_a_dask_fit_predicts_like_the_local_one(tmp_path: Path, client: Any) -> None:
    table = make_table(n_ts=400)
    local = LGBMForecaster(**PARAMS).fit(table.select(FEATURES), table["label"])
    dist = fit_on_dask(table, FEATURES, client=client, params=PARAMS)
    assert isinstance(dist, LGBMForecaster) and dist.feature_names_ == FEATURES
    a, b = local.predict(table), dist.predict(table)
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert np.corrcoef(b, table["label"].to_numpy())[0, 1] > 0.2  # it learned the planted signal
    # from parquet files read by the workers (the table never in one process)
    paths = []
    for k, part in enumerate(table.partition_by("symbol")):
        paths.append(tmp_path / f"part-{k}.parquet")
        part.write_parquet(paths[-1])
    from_files = fit_on_dask(paths, FEATURES, client=client, params=PARAMS)
    assert np.corrcoef(a, from_files.predict(table))[0, 1] > 0.9


def test_missing_columns_are_refused(client: Any) -> None:
    with pytest.raises(ParameterError, match=r"no column\(s\) \['f9'\]"):
        fit_on_dask(make_table(n_ts=50), ["f9"], client=client)
