"""Rule baselines: the rule and its scale are chosen on the training rows only."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone

from workbench.errors import ParameterError
from workbench.models.baselines import RuleBaseline


def _frame(n: int = 4000, seed: int = 0, coef: float = -0.4) -> tuple[pl.DataFrame, pl.Series]:
    rng = np.random.default_rng(seed)
    ret_1 = rng.normal(0, 0.002, n)
    ret_3 = rng.normal(0, 0.003, n)
    y = coef * ret_1 + rng.normal(0, 0.002, n)
    X = pl.DataFrame({"ret_1": ret_1, "ret_3": ret_3, "rsi_14": rng.uniform(0, 100, n)})
    return X, pl.Series("label", y)


def test_mean_reversion_finds_the_reverting_feature_and_its_least_squares_scale() -> None:
    X, y = _frame()
    m = RuleBaseline("mean_reversion").fit(X, y)
    assert m.feature_ == "ret_1"  # rsi_14 is not a return: never a candidate
    x, yv = -X["ret_1"].to_numpy(), y.to_numpy()
    assert m.beta_ == pytest.approx(np.linalg.lstsq(x[:, None], yv, rcond=None)[0][0], rel=1e-12)
    assert m.beta_ == pytest.approx(0.4, rel=0.1)
    np.testing.assert_allclose(m.predict(X), -m.beta_ * X["ret_1"].to_numpy())
    assert m.describe()["baseline_feature"] == "ret_1"


def test_a_rule_the_training_window_contradicts_predicts_zero() -> None:
    X, y = _frame()
    m = RuleBaseline("momentum", feature="ret_1").fit(X, y)
    assert m.in_sample_corr_ < 0 and m.beta_ == 0.0
    assert not np.any(m.predict(X))


def test_the_fit_reads_only_the_rows_it_is_given() -> None:
    """Train on a reverting half, test on a trending half: the fit is the first half's."""
    Xa, ya = _frame(seed=1, coef=-0.4)
    Xb, yb = _frame(seed=2, coef=+0.4)
    m = RuleBaseline("mean_reversion").fit(Xa, ya)
    both = RuleBaseline("mean_reversion").fit(pl.concat([Xa, Xb]), pl.concat([ya, yb]))
    assert m.beta_ == pytest.approx(0.4, rel=0.15)
    assert both.beta_ < 0.1  # the other half cancels it: the test rows were not seen by m
    assert np.corrcoef(m.predict(Xb), yb.to_numpy())[0, 1] < 0  # and it fails out of sample


def test_estimator_contract_and_missing_features() -> None:
    X, y = _frame(500)
    m = RuleBaseline("mean_reversion", feature="ret_3")
    assert clone(m).get_params() == m.get_params()
    assert m.fit(X, y).feature_ == "ret_3"
    p = m.predict(X.with_columns(pl.lit(None, pl.Float64).alias("ret_3")))
    assert np.isnan(p).all()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rule": "breakout"}, "rule 'breakout' is unknown.*'mean_reversion', 'momentum'"),
        ({"feature": "nosuch"}, "\\['nosuch'\\] not in the frame.*Fix: name a past-return"),
        ({"candidates": []}, "not in the frame"),
    ],
)
def test_bad_configuration_is_refused_naming_the_fix(kw, match) -> None:
    X, y = _frame(100)
    with pytest.raises(ParameterError, match=match):
        RuleBaseline(**kw).fit(X, y)
