"""Allocation against skfolio and closed forms; caps; rebalance plan; bad input."""

from __future__ import annotations

import math
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from scipy import optimize
from skfolio import RiskMeasure
from skfolio.optimization import InverseVolatility, RiskBudgeting

from workbench.data.sources.synthetic import SyntheticSource
from workbench.errors import ParameterError
from workbench.portfolio import RebalancePlan, allocate, rebalance_check
from workbench.risk.metrics import risk_contributions


def _frame(x: np.ndarray, names: list[str] | None = None) -> pl.DataFrame:
    names = names or [f"a{j}" for j in range(x.shape[1])]
    ts = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(x.shape[0])]
    return pl.DataFrame({"ts": ts, **{a: x[:, j] for j, a in enumerate(names)}})


def _random_returns(n: int, seed: int, n_obs: int = 200) -> np.ndarray:
    """Returns drawn from a random well-conditioned covariance (vols 0.5%-5% per period)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    c = a @ a.T / n + np.eye(n)
    d = np.sqrt(np.diag(c))
    vol = rng.uniform(0.005, 0.05, n)
    cov = c / np.outer(d, d) * np.outer(vol, vol)
    return rng.multivariate_normal(np.full(n, 0.0005), cov, size=n_obs)


def _alternating(sigmas: list[float], means: list[float] | None = None, n: int = 8) -> np.ndarray:
    """Columns mean ± s, alternating: sample std s·sqrt(n/(n-1)) each, uncorrelated with a mean."""
    sign = np.tile([1.0, -1.0], n // 2)
    means = means or [0.0] * len(sigmas)
    return np.column_stack([m + s * sign for s, m in zip(sigmas, means, strict=True)])


def _w(d: dict[str, float]) -> np.ndarray:
    return np.array(list(d.values()))


def _polish_erc(cov: np.ndarray, w0: np.ndarray) -> np.ndarray:
    """Refine a risk-parity solution with MINPACK on y_i (Σy)_i = 1/n (Spinu's optimality)."""
    n = len(w0)
    y0 = w0 / math.sqrt(n * (w0 @ cov @ w0))
    sol = optimize.root(lambda y: y * (cov @ y) - 1.0 / n, y0, tol=1e-14)
    assert np.max(np.abs(sol.x * (cov @ sol.x) - 1.0 / n)) < 1e-13
    return sol.x / sol.x.sum()


def _skfolio_erc(x: np.ndarray) -> np.ndarray:
    # ERC weights do not change when every return is scaled by one constant; unit-variance
    # input keeps Clarabel's gap tolerance meaningful (raw 1e-4 variances leave ~5e-5 errors).
    # On some draws Clarabel stops at its iteration limit a few 1e-6 from the optimum and warns
    # "Solution may be inaccurate" (an error under this suite's filterwarnings, which skfolio
    # reports as no solution): the comparisons below bound how inaccurate it may be.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Solution may be inaccurate", category=UserWarning
        )
        return RiskBudgeting(risk_measure=RiskMeasure.VARIANCE).fit(x / x.std()).weights_


@pytest.fixture(scope="module")
def daily() -> pl.DataFrame:
    """A year of daily close-to-close returns of four simulated stocks (factor-correlated)."""
    syms = ["SYN000", "SYN001", "SYN002", "SYN003"]
    bars = SyntheticSource(seed=5).fetch(
        syms, "1Day", datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
    )
    wide = bars.pivot(on="symbol", index="ts", values="close").sort("ts")
    return wide.select("ts", *[pl.col(s).pct_change() for s in syms]).drop_nulls()


# --------------------------------------------------------------------------------- oracles
@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1), st.integers(40, 250))
def test_inverse_vol_and_risk_parity_equal_skfolio(n: int, seed: int, n_obs: int) -> None:
    x = _random_returns(n, seed, n_obs)
    frame = _frame(x)
    iv = _w(allocate(frame, "inverse_vol"))
    np.testing.assert_allclose(iv, InverseVolatility().fit(x).weights_, atol=1e-12)
    erc = _w(allocate(frame, "risk_parity"))
    ref = _skfolio_erc(x)
    np.testing.assert_allclose(erc, ref, atol=2e-5)  # Clarabel's interior-point accuracy
    np.testing.assert_allclose(erc, _polish_erc(np.cov(x, rowvar=False), ref), atol=1e-9)
    rc = risk_contributions(erc, np.cov(x, rowvar=False))
    np.testing.assert_allclose(rc / rc.sum(), np.full(n, 1.0 / n), atol=1e-12)
    assert erc.sum() == pytest.approx(1.0, abs=1e-12) and erc.min() > 0


def test_simulated_daily_returns_match_skfolio(daily: pl.DataFrame) -> None:
    x = daily.drop("ts").to_numpy()
    np.testing.assert_allclose(
        _w(allocate(daily, "inverse_vol")), InverseVolatility().fit(x).weights_, atol=1e-12
    )
    erc = _w(allocate(daily, "risk_parity"))
    ref = _skfolio_erc(x)
    np.testing.assert_allclose(erc, ref, atol=2e-5)
    np.testing.assert_allclose(erc, _polish_erc(np.cov(x, rowvar=False), ref), atol=1e-9)
    assert not np.allclose(erc, _w(allocate(daily, "inverse_vol")), atol=1e-3)  # correlated


@pytest.mark.parametrize("rho", [-0.6, 0.0, 0.8])
def test_two_asset_risk_parity_closed_form(rho: float) -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(size=(300, 2))
    x = np.column_stack([0.01 * z[:, 0], 0.03 * (rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1])])
    s1, s2 = x.std(axis=0, ddof=1)
    w = allocate(_frame(x, ["a", "b"]), "risk_parity")
    assert w["a"] == pytest.approx(s2 / (s1 + s2), abs=1e-12)
    assert w["b"] == pytest.approx(s1 / (s1 + s2), abs=1e-12)


def test_equal_weights() -> None:
    assert allocate(_frame(_random_returns(4, 1)), "equal") == dict.fromkeys(
        ["a0", "a1", "a2", "a3"], 0.25
    )


# ----------------------------------------------------------------------------------- kelly
def test_kelly_hand_case_uncorrelated() -> None:
    # a: mean 0.001, std 0.03 ± pattern over 4 rows -> var 4·0.03²/3 = 0.0012, f* = 0.8333
    # b: mean 0.0005, pattern (+,+,-,-) of 0.05 -> var 0.01/3, f* = 0.15; cov(a, b) = 0
    x = np.array([[0.031, 0.0505], [-0.029, 0.0505], [0.031, -0.0495], [-0.029, -0.0495]])
    frame = _frame(x, ["a", "b"])
    half = allocate(frame, "kelly")
    assert half["a"] == pytest.approx(0.5 * 0.001 / 0.0012, rel=1e-9)
    assert half["b"] == pytest.approx(0.5 * 0.0005 / (0.01 / 3), rel=1e-9)
    full = allocate(frame, "kelly", fraction=1.0, max_gross=0.5)  # f* sums to 0.98333
    gross = 0.001 / 0.0012 + 0.15
    assert full["a"] == pytest.approx(0.5 * (0.001 / 0.0012) / gross, rel=1e-9)
    assert sum(full.values()) == pytest.approx(0.5, rel=1e-12)
    short_b = allocate(_frame(x - np.array([0.0, 0.001]), ["a", "b"]), "kelly")  # b's mean now < 0
    assert short_b == {"a": pytest.approx(0.5 * 0.001 / 0.0012, rel=1e-9), "b": 0.0}


def test_kelly_two_asset_inverse_formula() -> None:
    x = _random_returns(2, 11, 300) + np.array([0.002, 0.001])
    va, vb = x.var(axis=0, ddof=1)
    cab = np.cov(x, rowvar=False)[0, 1]
    ma, mb = x.mean(axis=0)
    det = va * vb - cab**2
    fa, fb = (vb * ma - cab * mb) / det, (va * mb - cab * ma) / det
    assert fa > 0 and fb > 0
    w = allocate(_frame(x, ["a", "b"]), "kelly", fraction=0.25, max_gross=100.0)
    assert w["a"] == pytest.approx(0.25 * fa, rel=1e-9)
    assert w["b"] == pytest.approx(0.25 * fb, rel=1e-9)


# ------------------------------------------------------------------------------ vol target
def test_vol_target_closed_form_per_period_annualised_and_capped() -> None:
    x = _alternating([0.01, 0.02])
    frame = _frame(x, ["a", "b"])
    s = x.std(axis=0, ddof=1)
    w = allocate(frame, "vol_target", target_vol=0.004)
    assert w["a"] == pytest.approx(0.004 / s[0] / 2, rel=1e-12)
    assert w["b"] == pytest.approx(0.004 / s[1] / 2, rel=1e-12)
    ann = allocate(frame, "vol_target", target_vol=0.004 * math.sqrt(252), periods_per_year=252)
    assert ann == pytest.approx(w, rel=1e-12)
    capped = allocate(frame, "vol_target", target_vol=0.05, max_leverage=1.5)
    assert sum(capped.values()) == pytest.approx(1.5, rel=1e-12)
    assert capped["a"] / capped["b"] == pytest.approx(s[1] / s[0], rel=1e-12)


# ------------------------------------------------------------------------------------ caps
def test_asset_cap_redistributes_the_excess_proportionally() -> None:
    frame = _frame(_random_returns(4, 2), ["a", "b", "c", "d"])
    assert allocate(frame, "equal", caps={"a": 0.1}) == pytest.approx(
        {"a": 0.1, "b": 0.3, "c": 0.3, "d": 0.3}, abs=1e-12
    )


def test_caps_cascade_until_stable() -> None:
    # inverse vol on σ ∝ (1/4, 1/3, 1/2, 1) gives (0.4, 0.3, 0.2, 0.1)
    frame = _frame(_alternating([0.0025, 0.01 / 3, 0.005, 0.01]), ["a", "b", "c", "d"])
    assert allocate(frame, "inverse_vol") == pytest.approx(
        {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}, abs=1e-12
    )
    # a: 0.4 -> 0.35, +0.05 to (b, c, d) pro rata: b = 0.325 > 0.32 -> 0.32, +0.005 to (c, d)
    w = allocate(frame, "inverse_vol", caps={"a": 0.35, "b": 0.32})
    assert w == pytest.approx({"a": 0.35, "b": 0.32, "c": 0.22, "d": 0.11}, abs=1e-12)


def test_group_cap_scales_the_group_and_feeds_the_others() -> None:
    frame = _frame(_random_returns(4, 3), ["a", "b", "c", "d"])
    groups = {"a": "intraday", "b": "intraday", "c": "swing", "d": "swing"}
    caps = {"intraday": 0.3}
    w = allocate(frame, "equal", caps=caps, groups=groups)
    assert w == pytest.approx({"a": 0.15, "b": 0.15, "c": 0.35, "d": 0.35}, abs=1e-12)
    assert caps == {"intraday": 0.3} and groups["a"] == "intraday"  # not mutated


def test_everything_capped_leaves_cash_and_zero_cap_excludes() -> None:
    frame = _frame(_random_returns(3, 4), ["a", "b", "c"])
    w = allocate(frame, "equal", caps={"a": 0.1, "b": 0.1, "c": 0.1})
    assert w == pytest.approx({"a": 0.1, "b": 0.1, "c": 0.1}, abs=1e-12)
    w0 = allocate(frame, "equal", caps={"a": 0.0})
    assert w0 == pytest.approx({"a": 0.0, "b": 0.5, "c": 0.5}, abs=1e-12)


def test_inputs_are_not_mutated() -> None:
    frame = _frame(_random_returns(3, 5), ["a", "b", "c"])
    before = frame.clone()
    for method in ("equal", "inverse_vol", "risk_parity", "kelly"):
        allocate(frame, method, caps={"a": 0.2})
    allocate(frame, "vol_target", target_vol=0.01)
    assert_frame_equal(frame, before)


# ------------------------------------------------------------------------------- rebalance
def test_rebalance_plan_hand_case_with_values() -> None:
    current = {"a": 5000.0, "b": 3000.0, "c": 2000.0}
    target = {"a": 0.4, "b": 0.32, "d": 0.28}
    plan = rebalance_check(current, target, threshold=0.05, equity=10_000.0)
    assert isinstance(plan, RebalancePlan) and plan.needs_rebalance
    assert plan.drifted == ("a", "c", "d")  # b drifted by 0.02 only
    assert plan.drift["drift"].to_list() == pytest.approx([0.1, -0.02, 0.2, -0.28])
    t = plan.trades
    assert t.columns == ["asset", "current_weight", "target_weight", "delta_weight", "delta_value"]
    assert t["delta_weight"].to_list() == pytest.approx([-0.1, -0.2, 0.28])
    assert t["delta_value"].to_list() == pytest.approx([-1000.0, -2000.0, 2800.0])
    assert current == {"a": 5000.0, "b": 3000.0, "c": 2000.0}


def test_rebalance_within_threshold_trades_nothing() -> None:
    plan = rebalance_check({"a": 0.52, "b": 0.48}, {"a": 0.5, "b": 0.5})
    assert not plan.needs_rebalance and plan.trades.height == 0
    assert "delta_value" not in plan.trades.columns
    assert plan.drift["drifted"].to_list() == [False, False]


def test_rebalance_refuses_values_without_equity_and_bad_threshold() -> None:
    with pytest.raises(ParameterError, match=r"current\['a'\] = 5000.0 is not a weight.*equity="):
        rebalance_check({"a": 5000.0}, {"a": 1.0})
    with pytest.raises(ParameterError, match=r"'threshold' parameter.*Got -0.1"):
        rebalance_check({"a": 0.5}, {"a": 0.5}, threshold=-0.1)
    with pytest.raises(ParameterError, match=r"'equity' parameter.*Got 0"):
        rebalance_check({"a": 0.5}, {"a": 0.5}, equity=0)
    with pytest.raises(ParameterError, match=r"target\['a'\] = nan"):
        rebalance_check({"a": 0.5}, {"a": float("nan")})


# ------------------------------------------------------------------------------- bad input
@pytest.fixture
def frame3() -> pl.DataFrame:
    return _frame(_random_returns(3, 6, 30), ["a", "b", "c"])


def test_unknown_method_lists_the_valid_ones(frame3: pl.DataFrame) -> None:
    with pytest.raises(
        ParameterError,
        match=r"equal, inverse_vol, risk_parity, kelly, vol_target\. Got 'risk_party'.*"
        r"Did you mean 'risk_parity'",
    ):
        allocate(frame3, "risk_party")


def test_unknown_option_is_refused(frame3: pl.DataFrame) -> None:
    with pytest.raises(ParameterError, match=r"unexpected option 'fracton'.*'fraction'"):
        allocate(frame3, "kelly", fracton=0.5)
    with pytest.raises(
        ParameterError, match=r"method='equal'\) got an unexpected option 'fraction'"
    ):
        allocate(frame3, "equal", fraction=0.5)


def test_non_float_column_is_refused(frame3: pl.DataFrame) -> None:
    bad = frame3.with_columns(pl.col("b").cast(pl.String))
    with pytest.raises(ParameterError, match=r"Column 'b'.*Got dtype String.*cast"):
        allocate(bad, "equal")


def test_too_few_rows_and_nans_are_refused(frame3: pl.DataFrame) -> None:
    with pytest.raises(ParameterError, match=r"at least 2 rows\. Got 1"):
        allocate(frame3.head(1), "equal")
    nan = frame3.with_columns(
        pl.when(pl.int_range(pl.len()) < 2).then(float("nan")).otherwise("c").alias("c")
    )
    with pytest.raises(ParameterError, match=r"Column 'c'.*2 NaN/null values.*drop_nans"):
        allocate(nan, "inverse_vol")


def test_negative_and_unknown_caps_are_refused(frame3: pl.DataFrame) -> None:
    with pytest.raises(ParameterError, match=r"caps\['a'\] = -0.1"):
        allocate(frame3, "equal", caps={"a": -0.1})
    with pytest.raises(
        ParameterError, match=r"names 'intraday', which is neither.*Did you mean 'intrday'"
    ):
        allocate(frame3, "equal", caps={"intraday": 0.5}, groups={"a": "intrday"})
    with pytest.raises(ParameterError, match=r"unknown asset 'x'"):
        allocate(frame3, "equal", groups={"x": "intraday"})


@pytest.mark.parametrize("fraction", [1.5, 0.0, -0.5])
def test_kelly_fraction_outside_0_1_is_refused(frame3: pl.DataFrame, fraction: float) -> None:
    with pytest.raises(ParameterError, match=rf"'fraction' parameter.*\(0, 1\]\. Got {fraction}"):
        allocate(frame3, "kelly", fraction=fraction)


@pytest.mark.parametrize("method", ["inverse_vol", "risk_parity", "vol_target"])
def test_zero_variance_asset_is_refused(frame3: pl.DataFrame, method: str) -> None:
    flat = frame3.with_columns(pl.lit(0.001).alias("b"))
    kw = {"target_vol": 0.01} if method == "vol_target" else {}
    with pytest.raises(ParameterError, match=r"Asset 'b' has zero variance over the 30 returns"):
        allocate(flat, method, **kw)


def test_vol_target_needs_a_target(frame3: pl.DataFrame) -> None:
    with pytest.raises(ParameterError, match=r"needs 'target_vol'"):
        allocate(frame3, "vol_target")
    with pytest.raises(ParameterError, match=r"'target_vol' parameter.*Got -0.1"):
        allocate(frame3, "vol_target", target_vol=-0.1)
