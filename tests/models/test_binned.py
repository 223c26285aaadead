"""Rows binned once: the same trees as binning per fit, and a Dataset of its own when not."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import ParameterError
from workbench.models.binned import BinnedRows
from workbench.models.estimator import LGBMForecaster
from workbench.models.search import _ic_feval


def _trees(model: LGBMForecaster) -> str:
    # the model text up to its parameters (those list feature_pre_filter, see binned's docstring)
    return model.booster_.model_to_string().split("\nparameters:")[0]


def _data(seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[:, 3] = np.round(x[:, 3])  # a few distinct values
    y = 0.3 * x[:, 0] + 0.1 * x[:, 3] + rng.normal(size=n)
    return x, y


def test_fits_on_shared_rows_grow_the_same_trees_as_fits_that_bin_their_own() -> None:
    x, y = _data()
    tr, te = np.arange(2000), np.arange(2000, 3000)
    rows = BinnedRows(x[tr], y[tr], eval_x=x[te], eval_y=y[te], max_min_data=400)
    rng = np.random.default_rng(1)
    for _ in range(6):  # min_data_in_leaf up and down: the shared Dataset serves them all
        p = {
            "num_leaves": int(rng.integers(2, 16)),
            "min_child_samples": int(rng.integers(5, 400)),
            "feature_fraction": float(rng.uniform(0.5, 1.0)),
            "bagging_fraction": 0.8,
            "lambda_l2": float(rng.uniform(0.0, 10.0)),
            "num_boost_round": 20,
            "seed": 3,
            "metric": "None",
        }
        own = LGBMForecaster(**p).fit(x[tr], y[tr], x[te], y[te], eval_metric=_ic_feval)
        shared = LGBMForecaster(**p).fit_binned(rows, evaluate=True, eval_metric=_ic_feval)
        assert _trees(shared) == _trees(own)
        assert shared.evals_result_ == own.evals_result_
        np.testing.assert_array_equal(shared.predict(x[te]), own.predict(x[te]))
        assert _trees(LGBMForecaster(**p).fit_binned(rows)) == _trees(own)
    assert rows.shared_fits == 12 and rows.own_fits == 0


def test_a_fit_whose_leaf_size_would_drop_a_feature_bins_its_own_rows() -> None:
    x, y = _data(n=2000)
    x[:, 2] = 0.0
    x[:60, 2] = 1.0  # a rare flag: no split leaves 100 rows on its rare side
    rows = BinnedRows(x, y, max_min_data=500)
    for m in (500, 20, 100, 50):
        p = {"num_leaves": 4, "min_child_samples": m, "num_boost_round": 15, "seed": 1}
        assert _trees(LGBMForecaster(**p).fit_binned(rows)) == _trees(LGBMForecaster(**p).fit(x, y))
    # 500 and 100 drop the flag (their own Datasets); 20 and 50 keep it (the shared one)
    assert (rows.shared_fits, rows.own_fits) == (2, 2)


def test_other_binning_parameters_rebin() -> None:
    x, y = _data(n=1500)
    rows = BinnedRows(x, y)
    for max_bin in (255, 15, 255):
        p = {"num_leaves": 4, "num_boost_round": 10, "extra_params": {"max_bin": max_bin}}
        assert _trees(LGBMForecaster(**p).fit_binned(rows)) == _trees(LGBMForecaster(**p).fit(x, y))


def test_evaluating_needs_evaluation_rows() -> None:
    x, y = _data(n=500)
    with pytest.raises(ParameterError, match="needs evaluation rows"):
        LGBMForecaster(num_boost_round=2).fit_binned(BinnedRows(x, y), evaluate=True)
