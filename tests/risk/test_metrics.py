"""VaR/CVaR against skfolio and closed forms; Cornish-Fisher fixtures; risk contributions."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from polars.testing import assert_frame_equal
from scipy import integrate, stats
from skfolio import measures as skm

from workbench.errors import ParameterError
from workbench.risk.metrics import (
    METHODS,
    cornish_fisher_z,
    cvar,
    portfolio_var,
    risk_contributions,
    risk_contributions_frame,
    var,
)

RETURNS = arrays(
    np.float64,
    st.integers(2, 300),
    elements=st.floats(-0.5, 0.5, allow_nan=False, allow_subnormal=False),
)
LEVELS = st.floats(0.5, 0.995)


def _frame(x: np.ndarray, names: list[str]) -> pl.DataFrame:
    ts = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(x.shape[0])]
    return pl.DataFrame({"ts": ts, **{a: x[:, j] for j, a in enumerate(names)}})


def _sample(seed: int = 0, n: int = 250) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 0.0005 + 0.01 * rng.standard_t(4, size=n) + 0.004 * rng.exponential(size=n)


# ----------------------------------------------------------------------------- historical
@settings(max_examples=60, deadline=None)
@given(RETURNS, LEVELS)
def test_historical_var_and_cvar_equal_skfolio(r: np.ndarray, level: float) -> None:
    assert var(r, level) == pytest.approx(skm.value_at_risk(r, beta=level), rel=1e-12, abs=1e-15)
    assert cvar(r, level) == pytest.approx(skm.cvar(r, beta=level), rel=1e-12, abs=1e-15)
    assert cvar(r, level) >= var(r, level) - 1e-12


def test_historical_order_statistic_without_interpolation() -> None:
    r = np.array([0.03, -0.04, 0.01, -0.02, 0.0, -0.01, 0.02, 0.05, -0.03, 0.04])
    # k = (1 - 0.8) * 10 = 2: VaR is the 3rd largest loss, CVaR the mean of the 2 largest
    assert var(r, 0.8) == pytest.approx(0.02)
    assert cvar(r, 0.8) == pytest.approx(0.035)
    # k = 0.5: VaR is the largest loss; the tail mean is that loss alone
    assert var(r, 0.95) == pytest.approx(0.04)
    assert cvar(r, 0.95) == pytest.approx(0.04)


def test_every_input_type_gives_the_same_number() -> None:
    r = _sample(1, 50)
    frame = _frame(r[:, None], ["strat"])
    expected = var(r, 0.9)
    assert var(list(r), 0.9) == expected
    assert var(pl.Series("x", r), 0.9) == expected
    assert var(frame, 0.9) == expected
    assert cvar(frame, 0.9, method="gaussian") == cvar(r, 0.9, method="gaussian")


# ------------------------------------------------------------------------------ parametric
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_gaussian_var_and_cvar_equal_the_normal_formulas(level: float) -> None:
    r = _sample(2)
    mu, sigma = r.mean(), r.std(ddof=1)
    assert var(r, level, "gaussian") == pytest.approx(
        -stats.norm.ppf(1 - level, loc=mu, scale=sigma), rel=1e-12
    )
    # CVaR = mean of the normal quantile function over the tail, integrated numerically
    tail, _ = integrate.quad(lambda u: stats.norm.ppf(u, mu, sigma), 0.0, 1 - level)
    assert cvar(r, level, "gaussian") == pytest.approx(-tail / (1 - level), rel=1e-8)


def test_cornish_fisher_z_hand_case_and_normal_limit() -> None:
    z = stats.norm.ppf(0.05)  # -1.6448536269514729
    # terms: (z²-1)S/6 = 0.1421286212, (z³-3z)K/24 = 0.0242168959, -(2z³-5z)S²/36 = 0.0046956791
    assert cornish_fisher_z(z, 0.5, 1.2) == pytest.approx(-1.4738124307906921, abs=1e-12)
    assert cornish_fisher_z(z, 0.0, 0.0) == z
    # excess kurtosis deepens the quantile only beyond |z| = sqrt(3) (z³ - 3z < 0 there)
    assert cornish_fisher_z(z, 0.0, 3.0) > z
    z99 = stats.norm.ppf(0.01)
    assert cornish_fisher_z(z99, 0.0, 3.0) < z99


def test_cornish_fisher_equals_gaussian_without_skew_and_excess_kurtosis() -> None:
    # {-1, 0, 0, 0, 0, 1}: symmetric (S = 0) with m4 / m2² = (1/3) / (1/9) = 3, i.e. K = 0
    r = 0.001 + 0.02 * np.tile([-1.0, 0.0, 0.0, 0.0, 0.0, 1.0], 10)
    assert stats.kurtosis(r) == pytest.approx(0.0, abs=1e-9)
    for level in (0.9, 0.95, 0.99):
        assert var(r, level, "cornish_fisher") == pytest.approx(var(r, level, "gaussian"))
        assert cvar(r, level, "cornish_fisher") == pytest.approx(cvar(r, level, "gaussian"))


def test_cornish_fisher_uses_population_moments_and_sample_sigma() -> None:
    r = _sample(3)
    mu, sigma = r.mean(), r.std(ddof=1)
    d = r - mu
    s = np.mean(d**3) / np.mean(d**2) ** 1.5
    k = np.mean(d**4) / np.mean(d**2) ** 2 - 3.0
    assert s > 0.1 and k > 0.5  # the fixture really is skewed and fat-tailed
    z = stats.norm.ppf(0.01)
    z_cf = z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
    assert var(r, 0.99, "cornish_fisher") == pytest.approx(-(mu + sigma * z_cf), rel=1e-12)
    assert var(r, 0.99, "cornish_fisher") != pytest.approx(var(r, 0.99, "gaussian"), rel=1e-3)


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_cornish_fisher_cvar_is_the_tail_mean_of_the_cf_quantile(level: float) -> None:
    r = _sample(4)
    mu, sigma = r.mean(), r.std(ddof=1)
    s, k = stats.skew(r), stats.kurtosis(r)
    tail, _ = integrate.quad(
        lambda u: cornish_fisher_z(stats.norm.ppf(u), s, k), 0.0, 1 - level, limit=200
    )
    expected = -(mu + sigma * tail / (1 - level))
    assert cvar(r, level, "cornish_fisher") == pytest.approx(expected, rel=1e-7)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1, True, "0.95"])
def test_level_outside_the_unit_interval_is_refused(level: object) -> None:
    with pytest.raises(ParameterError, match=rf"'level' parameter of var .*Got {level!r}"):
        var([0.01, -0.02, 0.03], level=level)  # type: ignore[arg-type]


def test_unknown_method_lists_the_valid_ones_and_suggests() -> None:
    with pytest.raises(
        ParameterError, match=r"historical, gaussian, cornish_fisher\. Got 'gausian'.*'gaussian'"
    ):
        cvar([0.01, -0.02, 0.03], method="gausian")
    assert METHODS == ("historical", "gaussian", "cornish_fisher")


def test_nans_are_counted_and_drop_nans_is_suggested() -> None:
    with pytest.raises(ParameterError, match=r"2 NaN values out of 5.*drop_nans"):
        var([0.01, np.nan, -0.02, np.nan, 0.03])
    with pytest.raises(ParameterError, match=r"1 null values.*drop_nulls"):
        var(pl.Series([0.01, None, -0.02]))


def test_fewer_than_two_returns_are_refused() -> None:
    with pytest.raises(ParameterError, match=r"at least 2 finite returns\. Got 1"):
        var([0.01])
    with pytest.raises(ParameterError, match=r"at least 2 finite returns\. Got 0"):
        cvar(np.array([]), method="gaussian")


def test_frames_with_several_columns_and_non_float_series_are_refused() -> None:
    frame = _frame(np.zeros((3, 2)), ["a", "b"])
    with pytest.raises(ParameterError, match=r"exactly one float column.*'a'.*'b'"):
        var(frame)
    with pytest.raises(ParameterError, match=r"float series\. Got dtype String"):
        var(pl.Series(["0.1", "0.2"]))
    with pytest.raises(ParameterError, match=r"one-dimensional\. Got shape \(2, 2\)"):
        var(np.zeros((2, 2)))


# ------------------------------------------------------------------------------- portfolio
def test_portfolio_var_is_gaussian_on_the_portfolio_sigma() -> None:
    w = np.array([0.6, 0.4])
    cov = np.array([[0.0004, 0.0001], [0.0001, 0.0009]])
    mean = np.array([0.001, 0.002])
    # wᵀΣw = 0.36·4e-4 + 2·0.24·1e-4 + 0.16·9e-4 = 3.36e-4; wᵀμ = 0.0014
    out = portfolio_var(w, cov, level=0.99, mean=mean)
    sigma, mu, z = math.sqrt(3.36e-4), 0.0014, stats.norm.ppf(0.01)
    assert out.sigma == pytest.approx(sigma, rel=1e-12)
    assert out.mean == pytest.approx(mu, rel=1e-12)
    assert out.var == pytest.approx(-(mu + sigma * z), rel=1e-12)
    assert out.cvar == pytest.approx(-(mu - sigma * stats.norm.pdf(z) / 0.01), rel=1e-12)
    assert portfolio_var(w, cov).var == pytest.approx(-sigma * stats.norm.ppf(0.05))


def test_portfolio_var_refuses_mismatched_shapes() -> None:
    with pytest.raises(ParameterError, match=r"'cov' parameter of portfolio_var.*2x2.*\(3, 3\)"):
        portfolio_var([0.5, 0.5], np.eye(3))
    with pytest.raises(ParameterError, match=r"'mean' parameter.*2 finite expected"):
        portfolio_var([0.5, 0.5], np.eye(2), mean=[0.1])
    with pytest.raises(ParameterError, match=r"symmetric"):
        portfolio_var([0.5, 0.5], [[1.0, 0.5], [0.0, 1.0]])


def test_risk_contributions_hand_case() -> None:
    # uncorrelated, σ = (0.1, 0.2), w = (0.5, 0.5): Σw = (0.005, 0.02), σp = sqrt(0.0125)
    rc = risk_contributions([0.5, 0.5], np.diag([0.01, 0.04]))
    sp = math.sqrt(0.0125)
    np.testing.assert_allclose(rc, [0.0025 / sp, 0.01 / sp], rtol=1e-12)
    np.testing.assert_allclose(rc / rc.sum(), [0.2, 0.8], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_risk_contributions_sum_to_portfolio_sigma(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    cov = (a @ a.T / n + 0.1 * np.eye(n)) * 1e-4
    w = rng.uniform(-0.5, 1.0, n)
    rc = risk_contributions(w, cov)
    assert rc.sum() == pytest.approx(math.sqrt(w @ cov @ w), rel=1e-10)


def test_zero_risk_portfolio_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"zero volatility \(weights \[0.0, 0.0\]\)"):
        risk_contributions([0.0, 0.0], np.eye(2))


def test_risk_contributions_frame_per_asset_and_group() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 3)) * [0.01, 0.02, 0.015]
    frame = _frame(x, ["a", "b", "c"])
    before = frame.clone()
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    groups = {"a": "intraday", "b": "intraday", "c": "swing"}
    out = risk_contributions_frame(frame, weights, groups)
    assert_frame_equal(frame, before)
    assert weights == {"a": 0.5, "b": 0.3, "c": 0.2}
    assert out.columns == ["level", "asset", "weight", "contribution", "share"]
    assets = out.filter(pl.col("level") == "asset")
    grp = out.filter(pl.col("level") == "group")
    w = np.array(list(weights.values()))
    sigma = math.sqrt(w @ np.cov(x, rowvar=False) @ w)
    for part in (assets, grp):
        assert part["contribution"].sum() == pytest.approx(sigma, rel=1e-12)
        assert part["share"].sum() == pytest.approx(1.0, rel=1e-12)
    assert grp["asset"].to_list() == ["intraday", "swing"]
    intraday = assets.filter(pl.col("asset").is_in(["a", "b"]))["contribution"].sum()
    assert grp["contribution"][0] == pytest.approx(intraday)
    flat = risk_contributions_frame(frame, weights)
    assert flat.columns == ["asset", "weight", "contribution", "share"]
    np.testing.assert_allclose(
        flat["contribution"].to_numpy(), risk_contributions(w, np.cov(x, rowvar=False))
    )


def test_risk_contributions_frame_refuses_bad_input() -> None:
    frame = _frame(np.random.default_rng(0).normal(size=(10, 2)), ["a", "b"])
    with pytest.raises(ParameterError, match=r"unknown assets \['z'\]"):
        risk_contributions_frame(frame, {"a": 0.5, "z": 0.5})
    with pytest.raises(ParameterError, match=r"Missing: \['b'\]"):
        risk_contributions_frame(frame, {"a": 0.5, "b": 0.5}, {"a": "x"})
    with pytest.raises(ParameterError, match=r"Column 'a'.*1 NaN/null"):
        risk_contributions_frame(
            frame.with_columns(pl.when(pl.int_range(10) == 3).then(None).otherwise("a").alias("a")),
            {"a": 0.5, "b": 0.5},
        )
