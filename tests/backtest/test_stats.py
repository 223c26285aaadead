"""Statistics against an independent implementation (quantstats) and by hand.

Conventions shared with quantstats 0.0.86: rf = 0, ``periods`` = our periods per year, std with
ddof=1, Sortino downside deviation over all n returns, CAGR over ``n / periods`` years, drawdown
measured from a starting wealth of 1 (our initial cash). Differences: quantstats' default VaR is
parametric (Gaussian); ours is the historical quantile, so ``var_95`` is checked against the pandas
quantile that quantstats' historical CVaR uses as its threshold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest

from workbench.backtest import STAT_KEYS, returns_stats, run_backtest, trade_stats
from workbench.config import BacktestConfig, CostsConfig

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import quantstats as qs


@pytest.fixture(
    scope="module",
    params=[("1Day", 11, 300), ("5Min", 12, 78 * 6)],
    ids=["daily", "intraday"],
)
def result(request, bars_factory, targets_factory):
    tf, seed, n = request.param
    bars = bars_factory(("AAA", "BBB"), n, timeframe=tf, seed=seed, drift=0.0003)
    tg = targets_factory(bars, seed, low=-0.5, high=0.5)
    costs = CostsConfig(commission_bps=1.0, half_spread_bps=2.0, borrow_bps_annual=30.0)
    return run_backtest(bars, tg, config=BacktestConfig(costs=costs, fractional=True))


def _series(res) -> pd.Series:
    eq = res.equity
    idx = pd.DatetimeIndex(eq["ts"].dt.replace_time_zone(None).to_numpy())
    return pd.Series(eq["returns"].to_numpy(), index=idx)


def test_stats_agree_with_quantstats(result):
    r = _series(result)
    p = result.periods_per_year
    s = result.stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = {
            "total_return": qs.stats.comp(r),
            "annual_return": qs.stats.cagr(r, periods=p),
            "annual_volatility": qs.stats.volatility(r, periods=p),
            "sharpe": qs.stats.sharpe(r, periods=p),
            "sortino": qs.stats.sortino(r, periods=p),
            "max_drawdown": qs.stats.max_drawdown(r),
            "calmar": qs.stats.calmar(r, periods=p),
            "cvar_95": qs.stats.cvar(r, method="historical"),
            "var_95": r.quantile(0.05),
        }
    for key, want in oracle.items():
        assert s[key] == pytest.approx(float(want), rel=1e-9, abs=1e-12), key
    assert s["max_drawdown"] < 0 and s["cvar_95"] <= s["var_95"] < 0


def test_stat_keys_are_stable_and_documented(result):
    import workbench.backtest.stats as mod

    assert tuple(result.stats) == STAT_KEYS
    for key in STAT_KEYS:
        assert key in mod.__doc__, f"{key} is not documented in stats.py"
    assert all(isinstance(v, float) for v in result.stats.values())


def test_returns_stats_by_hand():
    r = np.array([0.10, -0.20, 0.05, 0.0])
    s = returns_stats(r, periods_per_year=4)
    wealth = [1.1, 0.88, 0.924, 0.924]
    assert s["total_return"] == pytest.approx(wealth[-1] - 1)
    assert s["annual_return"] == pytest.approx(wealth[-1] - 1)  # exactly one year of bars
    assert s["max_drawdown"] == pytest.approx(0.88 / 1.1 - 1)
    assert s["max_drawdown_duration"] == 3.0  # bars 2..4 below the 1.1 peak
    m, sd = r.mean(), r.std(ddof=1)
    assert s["sharpe"] == pytest.approx(m / sd * 2)
    assert s["sortino"] == pytest.approx(m / np.sqrt(0.04 / 4) * 2)
    assert s["annual_volatility"] == pytest.approx(sd * 2)
    assert s["var_95"] == pytest.approx(np.quantile(r, 0.05))
    assert s["cvar_95"] == pytest.approx(-0.20)


def test_flat_returns_give_nan_ratios():
    s = returns_stats(np.zeros(10), 252)
    assert s["total_return"] == 0 and s["max_drawdown"] == 0
    assert np.isnan(s["sharpe"]) and np.isnan(s["sortino"]) and np.isnan(s["calmar"])


def test_trade_stats_by_hand():
    trades = pl.DataFrame(
        {
            "pnl": [100.0, -50.0, 30.0, -10.0, 999.0],
            "return": [0.1, -0.05, 0.03, -0.01, 0.5],
            "is_open": [False, False, False, False, True],
        }
    )
    s = trade_stats(trades)
    assert s["n_trades"] == 4 and s["n_open_trades"] == 1
    assert s["win_rate"] == 0.5
    assert s["profit_factor"] == pytest.approx(130 / 60)
    assert s["expectancy"] == pytest.approx(17.5)
    assert s["avg_trade"] == pytest.approx(0.0175)
    assert trade_stats(trades.head(1))["profit_factor"] == float("inf")
    assert np.isnan(trade_stats(trades.tail(1))["win_rate"])


def test_exposure_turnover_and_benchmark(daily_bars):
    bars = daily_bars.filter(pl.col("symbol") == "AAA")
    tg = bars.select("symbol", "ts", target=pl.lit(1.0))
    res = run_backtest(
        bars, tg, config=BacktestConfig(fractional=True, costs=CostsConfig(half_spread_bps=0.0))
    )
    s = res.stats
    # invested from the second bar on: exposure ~ (n-1)/n, one buy of ~all equity
    n = bars.height
    assert s["exposure"] == pytest.approx((n - 1) / n, rel=1e-3)
    assert s["turnover"] == pytest.approx(
        res.equity["traded"].sum() / res.equity["equity"].mean() / n, rel=1e-9
    )
    c = bars["close"].to_numpy()
    o = bars["open"].to_numpy()
    assert s["buy_and_hold_return"] == pytest.approx(c[-1] / c[0] - 1)
    # fully invested at the second open: the strategy's return is the open-to-close path
    assert s["total_return"] == pytest.approx(c[-1] / o[1] - 1, rel=1e-9)
