"""Trade ledger: scale-in/out, flips, open trades, consistency with the equity curve."""

from __future__ import annotations

import polars as pl
import pytest

from workbench.backtest import run_backtest
from workbench.config import BacktestConfig, CostsConfig

NO_COSTS = CostsConfig(half_spread_bps=0.0)


def _run(bars, shares, costs=NO_COSTS):
    tg = bars.head(len(shares)).select("symbol", "ts").with_columns(target=pl.Series(shares))
    return run_backtest(bars, tg, config=BacktestConfig(sizing="shares", costs=costs))


@pytest.fixture(scope="module")
def one(daily_bars):
    return daily_bars.filter(pl.col("symbol") == "AAA").head(12)


def test_scale_in_and_out_is_one_trade(one):
    res = _run(one, [10.0, 30.0, 15.0, 0.0])
    t = res.trades
    assert t.height == 1
    o = one["open"].to_numpy()
    row = t.row(0, named=True)
    assert row["size"] == 30.0
    assert row["entry_price"] == pytest.approx((10 * o[1] + 20 * o[2]) / 30)
    assert row["exit_price"] == pytest.approx((15 * o[3] + 15 * o[4]) / 30)
    assert row["pnl"] == pytest.approx(15 * o[3] + 15 * o[4] - 10 * o[1] - 20 * o[2])
    assert not row["is_open"]


def test_open_trade_is_marked_at_the_last_close(one):
    res = _run(one, [-5.0])
    row = res.trades.row(0, named=True)
    assert row["is_open"] and row["direction"] == -1
    assert row["exit_price"] == pytest.approx(one["close"][-1], rel=1e-12)
    assert row["pnl"] == pytest.approx(res.equity["equity"][-1] - 100_000)
    assert res.stats["n_trades"] == 0 and res.stats["n_open_trades"] == 1


def test_ledger_matches_equity_with_all_costs(daily_bars, targets_factory):
    costs = CostsConfig(
        commission_per_share=0.01,
        commission_min=1.0,
        commission_flat=0.5,
        half_spread_bps=3.0,
        spread_from_bars=True,
        slippage_bps=2.0,
        impact_coef=0.2,
        borrow_bps_annual=200.0,
    )
    tg = targets_factory(daily_bars, 21, low=-300, high=300)
    res = run_backtest(
        daily_bars, tg, config=BacktestConfig(sizing="shares", costs=costs, max_leverage=5)
    )
    t = res.trades
    assert t["pnl"].sum() == pytest.approx(res.equity["equity"][-1] - 100_000, abs=1e-6)
    assert t["costs"].sum() == pytest.approx(res.equity["costs"].sum(), rel=1e-9)
    assert t["gross_pnl"].sum() == pytest.approx(t["pnl"].sum() + t["costs"].sum())
    assert (t.filter(pl.col("direction") == 1)["borrow"] == 0).all()
    assert t.filter(pl.col("direction") == -1)["borrow"].sum() > 0
    assert (t["exit_ts"] >= t["entry_ts"]).all()
