"""Stationary-bootstrap Monte Carlo of out-of-sample returns: oracles and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from arch.bootstrap import StationaryBootstrap
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import ParameterError
from workbench.validation.montecarlo import bootstrap_returns, max_drawdown


def _sharpe(x: np.ndarray) -> np.ndarray:
    return np.array([x.mean() / x.std(ddof=1) * math.sqrt(252)])


def test_the_sharpe_interval_is_archs_own_percentile_interval() -> None:
    r = np.random.default_rng(0).normal(0.001, 0.01, 300)
    mc = bootstrap_returns(r, n_draws=500, block=5.0, seed=7)
    oracle = StationaryBootstrap(5.0, r, seed=7).conf_int(
        _sharpe, 500, method="percentile", size=0.95
    )
    assert mc.sharpe_ci == pytest.approx(tuple(oracle.ravel()), rel=1e-12)
    assert mc.sharpe == pytest.approx(_sharpe(r)[0], rel=1e-12)
    assert mc.summary()["sharpe_ci_low"] == mc.sharpe_ci[0]
    # the interval's own point: the Sharpe ratio of the series resampled, on its annualisation
    assert mc.summary()["mc_sharpe"] == mc.sharpe


def test_max_drawdown_by_hand() -> None:
    # wealth 1.1, 0.55, 0.66: the fall from 1.1 to 0.55 is half the peak
    assert max_drawdown(np.array([0.1, -0.5, 0.2])) == pytest.approx(0.5)
    assert max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(0.1)  # the start is a peak
    assert max_drawdown(np.array([0.01, 0.02])) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5, allow_nan=False), min_size=1, max_size=60))
def test_max_drawdown_equals_a_loop(rets: list[float]) -> None:
    wealth, peak, worst = 1.0, 1.0, 0.0
    for x in rets:
        wealth *= 1.0 + x
        peak = max(peak, wealth)
        worst = max(worst, 1.0 - wealth / peak)
    assert max_drawdown(np.array(rets)) == pytest.approx(worst, abs=1e-12)


def test_the_interval_covers_the_true_sharpe_at_its_level_and_has_the_asymptotic_width() -> None:
    """i.i.d. normal returns with a known Sharpe ratio: the 90% interval covers it in about 90%
    of 120 series, and its mean width is that of Lo's (2002) asymptotic standard error,
    sqrt((1 + SR^2 / 2) / T) per period."""
    mu, sd, n, ppy = 0.0008, 0.01, 250, 252.0
    true = mu / sd * math.sqrt(ppy)
    covered, widths = 0, []
    for seed in range(120):
        r = np.random.default_rng(1000 + seed).normal(mu, sd, n)
        mc = bootstrap_returns(r, n_draws=300, block=1.0, level=0.9, seed=seed)
        lo, hi = mc.sharpe_ci
        covered += lo <= true <= hi
        widths.append(hi - lo)
    assert 0.8 <= covered / 120 <= 0.97
    sr = mu / sd
    se = math.sqrt((1 + sr**2 / 2) / n) * math.sqrt(ppy)
    assert np.mean(widths) == pytest.approx(2 * 1.6449 * se, rel=0.12)


def test_blocks_widen_the_interval_of_autocorrelated_returns() -> None:
    """Positively autocorrelated returns: resampling blocks keeps the dependence, so the interval
    is wider than an i.i.d. resample's (block 1), and the optimal block is long."""
    rng = np.random.default_rng(3)
    e = rng.normal(0, 0.01, 600)
    r = np.empty_like(e)
    r[0] = e[0]
    for i in range(1, r.size):
        r[i] = 0.6 * r[i - 1] + e[i]
    r += 0.0005
    iid = bootstrap_returns(r, n_draws=600, block=1.0, seed=1)
    auto = bootstrap_returns(r, n_draws=600, seed=1)
    assert auto.block > 3.0
    width = lambda m: m.sharpe_ci[1] - m.sharpe_ci[0]  # noqa: E731
    assert width(auto) > 1.4 * width(iid)


def test_loss_probability_and_drawdowns_follow_the_returns() -> None:
    sure = np.full(100, 0.001) + np.random.default_rng(0).normal(0, 1e-6, 100)
    mc = bootstrap_returns(sure, n_draws=200, seed=0)
    assert mc.loss_probability == 0.0 and mc.max_drawdown_quantile(0.95) < 1e-4
    coin = np.random.default_rng(5).choice([-0.01, 0.01], 400)
    coin -= coin.mean()
    mc = bootstrap_returns(coin, n_draws=800, horizon=50, block=1.0, seed=0)
    assert 0.4 < mc.loss_probability < 0.7  # compounding a zero mean loses slightly more often
    assert mc.horizon_return_draws.shape == (800,)
    assert (mc.max_drawdown_draws > 0).all()
    fig = mc.figure()
    assert len(fig.data) == 3


def test_the_same_seed_gives_the_same_paths() -> None:
    r = np.random.default_rng(9).normal(0.0005, 0.01, 200)
    a = bootstrap_returns(r, n_draws=200, seed=4)
    b = bootstrap_returns(r, n_draws=200, seed=4)
    c = bootstrap_returns(r, n_draws=200, seed=5)
    assert np.array_equal(a.sharpe_draws, b.sharpe_draws)
    assert not np.array_equal(a.sharpe_draws, c.sharpe_draws)


@pytest.mark.parametrize(
    ("returns", "kw", "match"),
    [
        (np.zeros(5), {}, "at least 10 returns; got 5"),
        (np.r_[np.zeros(20), np.nan], {}, "1 non-finite values \\(first at position 20"),
        (np.zeros(20) + 0.001, {"n_draws": 10}, "n_draws must be an int >= 100; got 10"),
        (np.zeros(20) + 0.001, {"level": 1.0}, "level must be in"),
        (np.zeros(20) + 0.001, {"horizon": 21}, "horizon must be an int in 1..20"),
        (np.zeros(20) + 0.001, {"block": 0.5}, "block must be in \\[1, 20\\]"),
    ],
)
def test_bad_input_is_refused_with_the_field_and_the_fix(returns, kw, match) -> None:
    with pytest.raises(ParameterError, match=match):
        bootstrap_returns(returns, **kw)


def test_the_min_sharpe_ci_low_gate_reads_the_bootstrap_interval() -> None:
    from workbench.config import GatesConfig
    from workbench.validation.gates import evaluate_gates

    rng = np.random.default_rng(2)
    strong = bootstrap_returns(rng.normal(0.002, 0.01, 250), n_draws=300, seed=0).summary()
    weak = bootstrap_returns(rng.normal(0.0002, 0.01, 250), n_draws=300, seed=0).summary()
    gates = GatesConfig(min_sharpe=None, max_drawdown=None, min_trades=None, min_sharpe_ci_low=0.0)
    assert strong["sharpe_ci_low"] > 0.0 > weak["sharpe_ci_low"]
    assert evaluate_gates(strong, gates).passed
    report = evaluate_gates(weak, gates)
    assert not report.passed
    assert report.failures() == [
        f"min_sharpe_ci_low: sharpe_ci_low = {weak['sharpe_ci_low']:.4g}, >= 0 required"
    ]
    assert not evaluate_gates({}, gates).passed  # not measured: the model must prove it
