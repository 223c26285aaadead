"""LGBMForecaster: scikit-learn contracts, parity with raw LightGBM, frame edge, errors."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from workbench.errors import SchemaError
from workbench.models.estimator import VALID_NAME, LGBMForecaster
from workbench.models.lgbm import feature_matrix, importance_frame, predict

from .conftest import FEATURES

SMALL = {"num_boost_round": 15, "num_leaves": 7, "min_child_samples": 20}


def _fit(table: pl.DataFrame, **params: object) -> LGBMForecaster:
    return LGBMForecaster(**{**SMALL, **params}).fit(table.select(FEATURES), table["label"])


def test_clone_get_set_params_roundtrip() -> None:
    m = LGBMForecaster(num_leaves=9, extra_params={"max_bin": 63})
    c = clone(m)
    assert c is not m and c.get_params() == m.get_params()
    assert c.set_params(learning_rate=0.2) is c and c.learning_rate == 0.2
    assert m.learning_rate == 0.05  # the original is untouched
    with pytest.raises(ValueError, match="Invalid parameter"):
        m.set_params(num_leavs=3)
    assert "num_leaves=9" in repr(m)


def test_fit_returns_self_and_sets_fitted_attributes(table: pl.DataFrame) -> None:
    m = LGBMForecaster(**SMALL)
    with pytest.raises(NotFittedError):
        m.predict(table)
    assert m.fit(table.select(FEATURES), table["label"]) is m
    assert isinstance(m.booster_, lgb.Booster)
    assert m.feature_names_ == FEATURES and m.n_features_in_ == 4
    assert m.best_iteration_ == 15 and m.evals_result_ == {}
    # clone of a fitted estimator is unfitted
    assert not hasattr(clone(m), "booster_")


def test_deterministic_with_seed(table: pl.DataFrame) -> None:
    kw = {"bagging_fraction": 0.6, "feature_fraction": 0.5}
    a = _fit(table, seed=3, **kw).predict(table)
    b = _fit(table, seed=3, **kw).predict(table)
    c = _fit(table, seed=4, **kw).predict(table)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", ["polars", "pandas", "numpy"])
def test_predictions_equal_raw_lightgbm(table: pl.DataFrame, kind: str) -> None:
    x = table.select(FEATURES)
    data = {"polars": x, "pandas": x.to_pandas(), "numpy": x.to_numpy()}[kind]
    y = table["label"].to_numpy()
    m = LGBMForecaster(**SMALL, bagging_fraction=0.8, seed=5).fit(data, y)
    raw = lgb.train(m.lgb_params(), lgb.Dataset(x.to_numpy(order="c"), label=y), 15)
    np.testing.assert_array_equal(m.predict(data), raw.predict(x.to_numpy(order="c")))


def test_binary_objective_predicts_probabilities(table: pl.DataFrame) -> None:
    up = (table["label"] > 0).cast(pl.Float64)
    m = LGBMForecaster(**SMALL, objective="binary").fit(table.select(FEATURES), up)
    p = m.predict(table)
    assert ((p > 0) & (p < 1)).all()


def test_predict_reads_frames_by_name(table: pl.DataFrame) -> None:
    m = _fit(table)
    base = m.predict(table.select(FEATURES))
    shuffled = table.select("label", *reversed(FEATURES), "symbol", "ts")
    np.testing.assert_array_equal(m.predict(shuffled), base)
    np.testing.assert_array_equal(m.predict(shuffled.to_pandas()), base)
    with pytest.raises(SchemaError, match=r"\['f3'\] not in the frame.*did you mean 'f3x'"):
        m.predict(table.rename({"f3": "f3x"}))
    with pytest.raises(SchemaError, match="must have 4 columns"):
        m.predict(np.zeros((3, 5)))


def test_eval_set_and_early_stopping(table: pl.DataFrame) -> None:
    train, valid = table[:1500], table[1500:]
    m = LGBMForecaster(num_boost_round=300, learning_rate=0.3, early_stopping_rounds=5)
    m.fit(train.select(FEATURES), train["label"], eval_X=valid, eval_y=valid["label"])
    assert 1 <= m.best_iteration_ < 300
    assert len(m.evals_result_[VALID_NAME]["l2"]) == m.best_iteration_ + 5
    expected = m.booster_.predict(
        valid.select(FEATURES).to_numpy(), num_iteration=m.best_iteration_
    )
    np.testing.assert_array_equal(m.predict(valid), expected)


def test_fit_callbacks_and_eval_metric_reach_lightgbm(table: pl.DataFrame) -> None:
    seen: list[int] = []

    def mean_pred(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
        return "mean_pred", float(np.mean(preds)), True

    LGBMForecaster(**SMALL, metric="None").fit(
        table.select(FEATURES),
        table["label"],
        table,
        table["label"],
        eval_metric=mean_pred,
        callbacks=[lambda env: seen.append(env.iteration)],
    )
    assert seen == list(range(15))


def test_errors_name_parameter_value_and_fix(table: pl.DataFrame) -> None:
    x, y = table.select(FEATURES), table["label"]
    with pytest.raises(ValueError, match="'eval_y'.*Got eval_y=None.*pass both"):
        LGBMForecaster(**SMALL).fit(x, y, eval_X=x)
    with pytest.raises(ValueError, match="'early_stopping_rounds'.*Got early_stopping_rounds=3"):
        LGBMForecaster(early_stopping_rounds=3).fit(x, y)
    with pytest.raises(ValueError, match="'num_boost_round'.*int >= 1. Got 0"):
        LGBMForecaster(num_boost_round=0).fit(x, y)
    with pytest.raises(ValueError, match="'bagging_fraction'.*Got 1.5"):
        LGBMForecaster(bagging_fraction=1.5).fit(x, y)
    with pytest.raises(ValueError, match=r"must not set \['n_estimators'\].*pass num_boost_round="):
        LGBMForecaster(extra_params={"n_estimators": 5}).fit(x, y)
    with pytest.raises(SchemaError, match=r"\['symbol \(String\)'\] are not numeric"):
        LGBMForecaster().fit(table.select("symbol", *FEATURES), y)
    with pytest.raises(SchemaError, match="1 null/NaN/infinite.*drop those rows"):
        LGBMForecaster().fit(x, y.scatter(0, None))
    with pytest.raises(SchemaError, match="one value per row"):
        LGBMForecaster().fit(x, y[:10])
    with pytest.raises(TypeError, match="'X' parameter must be a polars DataFrame"):
        LGBMForecaster().fit(x.rows(), y)


def test_inputs_not_mutated_and_no_needless_copies(table: pl.DataFrame) -> None:
    pdf = table.select(FEATURES).to_pandas()
    before = pdf.copy()
    arr = np.ascontiguousarray(table.select(FEATURES).to_numpy())
    _fit(table).predict(pdf)
    LGBMForecaster(**SMALL).fit(pdf, table["label"].to_pandas())
    assert pdf.equals(before)
    assert feature_matrix(arr)[0] is arr  # numpy passes through
    assert np.shares_memory(feature_matrix(pdf)[0], pdf["f0"].to_numpy())  # one float block: view
    assert feature_matrix(table, FEATURES)[0].flags.f_contiguous  # LightGBM reads it as is


def test_existing_frame_helpers_accept_the_wrapper(table: pl.DataFrame) -> None:
    m = _fit(table)
    out = predict(m, table, FEATURES)
    assert out.columns == ["symbol", "ts", "prediction"] and out.height == table.height
    imp = importance_frame(m, FEATURES)
    assert sorted(imp["feature"].to_list()) == FEATURES and imp["gain"][0] > 0


@settings(max_examples=15, deadline=None)
@given(st.permutations(range(40)))
def test_prediction_is_row_order_equivariant(perm: list[int]) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    m = LGBMForecaster(num_boost_round=5, num_leaves=3, min_child_samples=5).fit(x, y)
    np.testing.assert_array_equal(m.predict(x[perm]), m.predict(x)[perm])
