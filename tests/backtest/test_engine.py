"""The frame API: validation messages, no mutation, time contract, ragged grids, sizing modes."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from workbench.backtest import STAT_KEYS, TRADE_COLUMNS, run_backtest
from workbench.config import BacktestConfig, CostsConfig
from workbench.errors import SchemaError

COSTS = CostsConfig(
    commission_per_share=0.005,
    commission_min=1.0,
    commission_bps=0.5,
    half_spread_bps=2.0,
    slippage_bps=1.0,
    impact_coef=0.1,
    intraday_u_shape=1.0,
    borrow_bps_annual=50.0,
)


def test_result_shapes_and_accounting(daily_bars, targets_factory):
    targets = targets_factory(daily_bars, 3, low=-0.3, high=0.3)
    res = run_backtest(daily_bars, targets, config=BacktestConfig(costs=COSTS))
    n_ts = daily_bars["ts"].n_unique()
    assert res.equity.height == n_ts
    assert res.positions.height == n_ts * 3
    assert tuple(res.trades.columns) == TRADE_COLUMNS
    assert tuple(res.stats) == STAT_KEYS
    assert res.fills.height > 10
    # every dollar of PnL is in a trade; every cost paid is in the equity curve
    final = res.equity["equity"][-1]
    assert res.trades["pnl"].sum() == pytest.approx(final - 100_000, abs=1e-6)
    assert res.stats["total_costs"] == pytest.approx(res.trades["costs"].sum(), rel=1e-9)
    assert (res.trades["mae"] <= 0).all() and (res.trades["mfe"] >= 0).all()
    # whole shares by default
    assert (res.fills["qty"] == res.fills["qty"].round()).all()
    assert "sharpe" in repr(res)


def test_inputs_are_not_mutated(daily_bars, targets_factory):
    targets = targets_factory(daily_bars, 4)
    shuffled = daily_bars.sample(fraction=1.0, shuffle=True, seed=1)
    bars_before, targets_before = shuffled.clone(), targets.clone()
    run_backtest(shuffled, targets)
    assert shuffled.equals(bars_before)
    assert targets.equals(targets_before)


def test_fills_use_the_next_bar_of_the_symbol(daily_bars, targets_factory):
    targets = targets_factory(daily_bars, 5)
    res = run_backtest(daily_bars, targets, config=BacktestConfig(costs=COSTS))
    nxt = daily_bars.select(
        "symbol",
        pl.col("ts").alias("decision_ts"),
        pl.col("ts").shift(-1).over("symbol").alias("next_ts"),
        pl.col("open").shift(-1).over("symbol").alias("next_open"),
    )
    f = res.fills.join(nxt, on=["symbol", "decision_ts"], how="left")
    assert (f["ts"] == f["next_ts"]).all()
    assert (f["ref_price"] == f["next_open"]).all()
    # buys pay more than the open, sells receive less
    assert ((f["price"] - f["ref_price"]) * f["qty"] > 0).all()


def test_vwap_fills(daily_bars, targets_factory):
    targets = targets_factory(daily_bars, 6)
    res = run_backtest(daily_bars, targets, config=BacktestConfig(fill_price="vwap"))
    f = res.fills.join(
        daily_bars.select("symbol", "ts", "vwap", "open"), on=["symbol", "ts"], how="left"
    )
    assert (f["ref_price"] == f["vwap"]).all()
    assert (f["ref_price"] != f["open"]).any()


def test_null_vwap_falls_back_to_open(daily_bars, targets_factory):
    bars = daily_bars.with_columns(vwap=pl.lit(None, dtype=pl.Float64))
    res = run_backtest(bars, targets_factory(bars, 6), config=BacktestConfig(fill_price="vwap"))
    f = res.fills.join(bars.select("symbol", "ts", "open"), on=["symbol", "ts"], how="left")
    assert (f["ref_price"] == f["open"]).all()


def test_ragged_grid_marks_missing_bars_at_last_close(daily_bars, targets_factory):
    # drop every third bar of BBB: its decisions fill at its own next bar
    bars = daily_bars.filter(
        ~((pl.col("symbol") == "BBB") & (pl.int_range(pl.len()).over("symbol") % 3 == 1))
    )
    targets = targets_factory(bars, 7)
    res = run_backtest(bars, targets, config=BacktestConfig(costs=COSTS))
    bbb = res.fills.filter(pl.col("symbol") == "BBB")
    have = set(bars.filter(pl.col("symbol") == "BBB")["ts"].to_list())
    assert set(bbb["ts"].to_list()) <= have
    assert res.equity.height == daily_bars["ts"].n_unique()
    assert res.trades["pnl"].sum() == pytest.approx(res.equity["equity"][-1] - 100_000, abs=1e-6)


def test_null_target_holds_and_on_change_orders_once(daily_bars):
    bars = daily_bars.filter(pl.col("symbol") == "AAA")
    tg = bars.select("symbol", "ts", target=pl.lit(0.5))
    res = run_backtest(bars, tg, config=BacktestConfig(fractional=True))
    assert res.fills.height == 1
    every = run_backtest(bars, tg, config=BacktestConfig(fractional=True, rebalance="every_bar"))
    assert every.fills.height > 100  # drift is traded back to 50% each bar
    held = tg.with_columns(target=pl.when(pl.int_range(pl.len()) == 0).then(0.5).otherwise(None))
    res2 = run_backtest(bars, held, config=BacktestConfig(fractional=True))
    assert res2.equity["equity"].to_list() == pytest.approx(res.equity["equity"].to_list())


@pytest.mark.parametrize(
    ("sizing", "target", "check"),
    [
        ("shares", 37.0, lambda q, px, eq: q == 37.0),
        ("notional", 10_000.0, lambda q, px, eq: q == np.trunc(10_000 / px)),
        ("fraction", 0.25, lambda q, px, eq: q == np.trunc(0.25 * eq / px)),
    ],
)
def test_sizing_modes(daily_bars, sizing, target, check):
    bars = daily_bars.filter(pl.col("symbol") == "BBB")
    tg = bars.select("symbol", "ts", target=pl.lit(target))
    res = run_backtest(bars, tg, config=BacktestConfig(sizing=sizing, costs=CostsConfig()))
    f = res.fills.row(0, named=True)
    assert check(f["qty"], f["ref_price"], 100_000.0)


def test_multi_symbol_shared_cash_respects_leverage(daily_bars):
    tg = daily_bars.select("symbol", "ts", target=pl.lit(0.5))  # 3 x 50% > 100% of equity
    res = run_backtest(daily_bars, tg, config=BacktestConfig(costs=COSTS))
    assert (res.equity["cash"] >= -1e-6).all()
    assert res.rejections.filter(pl.col("reason") == "insufficient_buying_power").height >= 1
    lev2 = run_backtest(daily_bars, tg, config=BacktestConfig(costs=COSTS, max_leverage=2.0))
    assert lev2.rejections.filter(pl.col("reason") == "insufficient_buying_power").height == 0
    assert lev2.equity["cash"].min() < 0  # borrowed on margin


def test_intraday_periods_per_year(intraday_bars, targets_factory):
    res = run_backtest(intraday_bars, targets_factory(intraday_bars, 1), config=BacktestConfig())
    assert res.periods_per_year == pytest.approx(78 * 252)
    fixed = run_backtest(intraday_bars, targets_factory(intraday_bars, 1), periods_per_year=1000)
    assert fixed.periods_per_year == 1000


# ------------------------------------------------------------------ errors name the fix


def _tg(bars: pl.DataFrame) -> pl.DataFrame:
    return bars.select("symbol", "ts", target=pl.lit(0.1))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: t.drop("target"), r"missing column\(s\) \['target'\].*Fix"),
        (lambda t: t.with_columns(target=pl.lit("x")), r"'target' has type String.*Fix"),
        (
            lambda t: t.with_columns(target=pl.when(pl.int_range(pl.len()) == 3).then(np.nan)),
            r"NaN/inf target.*fill_nan\(None\)",
        ),
        (lambda t: pl.concat([t, t.head(1)]), r"repeat a \(symbol, ts\).*unique"),
        (
            lambda t: t.with_columns(ts=pl.col("ts") + timedelta(hours=1)),
            r"do not match a bar.*no bar for 'AAA'.*Fix",
        ),
        (
            lambda t: t.with_columns(
                symbol=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("ZZZ")).otherwise("symbol")
            ),
            r"symbol 'ZZZ' has no bars",
        ),
        (
            lambda t: t.with_columns(ts=pl.col("ts").dt.replace_time_zone(None)),
            r"expected Datetime\(time_zone='UTC'\).*Fix",
        ),
        (lambda t: t.to_pandas(), r"expected a polars DataFrame"),
    ],
)
def test_target_errors_name_the_fix(daily_bars, mutate, match):
    with pytest.raises(SchemaError, match=match):
        run_backtest(daily_bars, mutate(_tg(daily_bars)))


def test_bar_errors_come_from_the_contract(daily_bars):
    bad = daily_bars.with_columns(
        close=pl.when(pl.int_range(pl.len()) == 2).then(-1.0).otherwise("close")
    )
    with pytest.raises(SchemaError, match="close > 0"):
        run_backtest(bad, _tg(daily_bars))
    with pytest.raises(SchemaError, match="validate=True"):
        run_backtest(daily_bars.drop("vwap"), _tg(daily_bars), validate=False)
    with pytest.raises(SchemaError, match="empty"):
        run_backtest(daily_bars.head(0), _tg(daily_bars).head(0))


def test_trusted_bars_give_the_same_result(daily_bars, targets_factory):
    tg = targets_factory(daily_bars, 9)
    a = run_backtest(daily_bars, tg, config=BacktestConfig(costs=COSTS))
    b = run_backtest(daily_bars, tg, config=BacktestConfig(costs=COSTS), validate=False)
    assert a.equity.equals(b.equity)
    # unordered targets with missing rows go through the join path
    part = tg.sample(fraction=0.7, seed=3)
    c = run_backtest(daily_bars, part, config=BacktestConfig(costs=COSTS))
    assert c.equity.height == a.equity.height


def test_fused_contract_check_defers_every_doubt_to_validate_bars(daily_bars):
    from workbench.backtest.engine import _conforms
    from workbench.data.schema import validate_bars

    assert _conforms(daily_bars)
    row = pl.int_range(pl.len()) == 5
    assert _conforms(daily_bars.with_columns(vwap=pl.when(row).then(None).otherwise("vwap")))
    assert _conforms(daily_bars.with_columns(vwap=pl.lit(None, dtype=pl.Float64)))
    bad = [
        daily_bars.sample(fraction=1.0, shuffle=True, seed=2),  # unsorted
        pl.concat([daily_bars, daily_bars.tail(1)]),  # duplicate key
        daily_bars.with_columns(open=pl.when(row).then(np.nan).otherwise("open")),
        daily_bars.with_columns(high=pl.when(row).then(pl.col("low") * 0.5).otherwise("high")),
        daily_bars.with_columns(low=pl.when(row).then(pl.col("high") * 2).otherwise("low")),
        daily_bars.with_columns(volume=pl.when(row).then(-1.0).otherwise("volume")),
        daily_bars.with_columns(vwap=pl.when(row).then(0.0).otherwise("vwap")),
        daily_bars.with_columns(vwap=pl.when(row).then(np.nan).otherwise("vwap")),
        daily_bars.with_columns(close=pl.when(row).then(np.inf).otherwise("close")),
        daily_bars.with_columns(ts=pl.when(row).then(pl.col("ts").shift(1)).otherwise("ts")),
        daily_bars.with_columns(trade_count=pl.when(row).then(-1).otherwise("trade_count")),
        daily_bars.with_columns(symbol=pl.when(row).then(pl.lit("")).otherwise("symbol")),
        daily_bars.with_columns(volume=pl.col("volume").cast(pl.Float32)),
        daily_bars.drop("trade_count"),
    ]
    for frame in bad:
        assert not _conforms(frame)
        try:
            out = validate_bars(frame)
        except SchemaError:
            continue
        assert _conforms(out)  # what validate_bars returns passes the fused check
