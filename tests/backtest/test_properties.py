"""Properties over random bars, targets and costs (hypothesis)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.backtest import run_backtest
from workbench.config import BacktestConfig, CostsConfig

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**31 - 1)
timeframes = st.sampled_from(["1Day", "5Min"])


@st.composite
def costs(draw) -> CostsConfig:
    f = st.floats(0.0, 20.0)
    return CostsConfig(
        commission_per_share=draw(st.floats(0.0, 0.01)),
        commission_min=draw(st.floats(0.0, 2.0)),
        commission_bps=draw(f),
        commission_flat=draw(st.floats(0.0, 1.0)),
        half_spread_bps=draw(f),
        spread_from_bars=draw(st.booleans()),
        slippage_bps=draw(f),
        impact_coef=draw(st.floats(0.0, 1.0)),
        intraday_u_shape=draw(st.floats(0.0, 2.0)),
        borrow_bps_annual=draw(st.floats(0.0, 500.0)),
    )


def _more(c: CostsConfig, bump: float) -> CostsConfig:
    """Every cost parameter at least as high as in ``c``."""
    return c.model_copy(
        update={
            "commission_per_share": c.commission_per_share + 0.002 * bump,
            "commission_min": c.commission_min + bump,
            "commission_bps": c.commission_bps + bump,
            "commission_flat": c.commission_flat + 0.1 * bump,
            "half_spread_bps": c.half_spread_bps + bump,
            "slippage_bps": c.slippage_bps + bump,
            "impact_coef": c.impact_coef + 0.1 * bump,
            "intraday_u_shape": c.intraday_u_shape + bump,
            "borrow_bps_annual": c.borrow_bps_annual + 50 * bump,
        }
    )


@SETTINGS
@given(seed=seeds, tf=timeframes, c=costs(), sizing=st.sampled_from(["fraction", "shares"]))
def test_zero_position_means_flat_equity_and_no_costs(bars_factory, seed, tf, c, sizing):
    bars = bars_factory(("A", "B"), 60, timeframe=tf, seed=seed)
    tg = bars.select("symbol", "ts", target=pl.lit(0.0))
    res = run_backtest(bars, tg, config=BacktestConfig(sizing=sizing, costs=c))
    assert (res.equity["equity"] == 100_000.0).all()
    assert res.equity["costs"].sum() == 0.0
    assert res.fills.height == 0
    assert res.stats["total_costs"] == 0.0


@SETTINGS
@given(
    seed=seeds,
    tf=timeframes,
    c=costs(),
    bump=st.floats(0.0, 5.0),
    mode=st.sampled_from(["fraction", "shares"]),
)
def test_higher_costs_never_raise_pnl(bars_factory, targets_factory, seed, tf, c, bump, mode):
    bars = bars_factory(("A", "B", "C"), 50, timeframe=tf, seed=seed)
    if mode == "fraction":
        tg = targets_factory(bars, seed + 1, low=-0.5, high=0.5)
        base = BacktestConfig(sizing="fraction", fractional=True, max_leverage=10.0)
    else:
        tg = targets_factory(bars, seed + 1, low=-200, high=200)
        base = BacktestConfig(sizing="shares", max_leverage=10.0)
    low = run_backtest(bars, tg, config=base.model_copy(update={"costs": c}))
    high = run_backtest(bars, tg, config=base.model_copy(update={"costs": _more(c, bump)}))
    assert low.rejections.filter(pl.col("reason") != "end_of_data").height == 0
    assert high.equity["equity"][-1] <= low.equity["equity"][-1] + 1e-6


@SETTINGS
@given(seed=seeds, tf=timeframes, w=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=6))
def test_splitting_capital_across_identical_symbols(bars_factory, seed, tf, w):
    c = CostsConfig(
        commission_bps=1.0,
        commission_per_share=0.003,
        half_spread_bps=2.0,
        slippage_bps=1.0,
        intraday_u_shape=1.0,
        borrow_bps_annual=100.0,
    )
    cfg = BacktestConfig(fractional=True, max_leverage=2.0, costs=c)
    one = bars_factory(("A",), 40, timeframe=tf, seed=seed)
    two = bars_factory(("A", "B"), 40, timeframe=tf, seed=seed, same_path=True)
    steps = np.resize(np.repeat(np.asarray(w), 7), one.height)
    t1 = one.select("symbol", "ts").with_columns(target=pl.Series(steps))
    t2 = two.select("symbol", "ts").with_columns(target=pl.Series(np.tile(steps / 2, 2)))
    r1 = run_backtest(one, t1, config=cfg)
    r2 = run_backtest(two, t2, config=cfg)
    np.testing.assert_allclose(r2.equity["returns"], r1.equity["returns"], rtol=0, atol=1e-12)
    assert r2.stats["total_costs"] == pytest.approx(r1.stats["total_costs"], rel=1e-9, abs=1e-9)


@SETTINGS
@given(
    seed=seeds,
    tf=timeframes,
    k=st.integers(3, 45),
    u=st.floats(0.0, 1.0),
    fill=st.sampled_from(["open", "vwap"]),
    c=costs(),
)
def test_fills_never_use_the_decision_bar_price(
    bars_factory, targets_factory, seed, tf, k, u, fill, c
):
    bars = bars_factory(("A", "B"), 50, timeframe=tf, seed=seed)
    tg = targets_factory(bars, seed + 2, low=-0.4, high=0.4)
    # no decision at k-1, so nothing fills at bar k: the decision at k fills at k+1
    row = pl.int_range(pl.len()).over("symbol")
    tg = tg.with_columns(
        target=pl.when(row == k - 1)
        .then(pl.col("target").shift(1).over("symbol"))
        .otherwise("target")
    )
    perturbed = bars.with_columns(
        open=pl.when(row == k)
        .then(pl.col("low") + u * (pl.col("high") - pl.col("low")))
        .otherwise("open"),
        vwap=pl.when(row == k)
        .then(pl.col("high") - u * (pl.col("high") - pl.col("low")))
        .otherwise("vwap"),
    )
    cfg = BacktestConfig(fill_price=fill, costs=c)
    a = run_backtest(bars, tg, config=cfg)
    b = run_backtest(perturbed, tg, config=cfg)
    assert a.fills.equals(b.fills)
    assert a.equity.select("ts", "equity", "cash").equals(b.equity.select("ts", "equity", "cash"))
    # every fill comes strictly after its decision, at the fill bar's own reference price
    ref = "vwap" if fill == "vwap" else "open"
    f = a.fills.join(bars.select("symbol", "ts", ref), on=["symbol", "ts"])
    assert (f["ts"] > f["decision_ts"]).all()
    assert (f["ref_price"] == f[ref]).all()
