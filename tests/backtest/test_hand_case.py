"""A four-bar case computed by hand: next-open fills, commission minimum, half-spread, borrow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from workbench.backtest import run_backtest
from workbench.config import BacktestConfig, CostsConfig

TS = [datetime(2024, 1, 2, 5, tzinfo=UTC) + timedelta(days=i) for i in range(4)]  # Tue..Fri


@pytest.fixture(scope="module")
def result():
    bars = pl.DataFrame(
        {
            "symbol": ["X"] * 4,
            "ts": pl.Series(TS, dtype=pl.Datetime("us", "UTC")),
            "open": [100.0, 101.0, 104.0, 98.0],
            "high": [101.0, 103.0, 105.0, 99.0],
            "low": [99.0, 100.0, 98.0, 95.0],
            "close": [100.0, 102.0, 99.0, 96.0],
            "volume": [1e4] * 4,
        }
    )
    targets = pl.DataFrame(
        {"symbol": ["X"] * 4, "ts": bars["ts"], "target": [50.0, -20.0, 0.0, 10.0]}
    )
    cfg = BacktestConfig(
        initial_cash=10_000,
        sizing="shares",
        costs=CostsConfig(
            commission_per_share=0.01,  # 50 shares -> $0.50, below the minimum
            commission_min=1.0,
            half_spread_bps=10.0,  # 0.1% worse than the open
            borrow_bps_annual=360.0,  # 3.6%/year ACT/360 -> 0.01% per day
        ),
    )
    return run_backtest(bars, targets, config=cfg)


def test_fills_at_next_open_with_half_spread_and_minimum_commission(result):
    f = result.fills
    assert f["ts"].to_list() == TS[1:]
    assert f["decision_ts"].to_list() == TS[:3]
    assert f["qty"].to_list() == [50.0, -70.0, 20.0]
    assert f["ref_price"].to_list() == [101.0, 104.0, 98.0]  # the next bar's open
    assert f["price"].to_list() == pytest.approx([101.101, 103.896, 98.098])  # open +- 0.1%
    assert f["commission"].to_list() == [1.0, 1.0, 1.0]  # 0.5, 0.7, 0.2 all lifted to $1
    assert f["spread_cost"].to_list() == pytest.approx([5.05, 7.28, 1.96])


def test_cash_equity_and_borrow(result):
    eq = result.equity
    # t0: nothing filled yet
    # t1: buy 50 @ 101.101 + $1      -> cash 4943.95,  equity 4943.95 + 50 * 102
    # t2: sell 70 @ 103.896 - $1     -> cash 12215.67; short 20 @ close 99 pays
    #     borrow 20 * 99 * 0.0001 = 0.198 -> cash 12215.472, equity 12215.472 - 1980
    # t3: buy 20 @ 98.098 + $1       -> cash 10252.512, flat
    assert eq["cash"].to_list() == pytest.approx([10_000, 4943.95, 12215.472, 10252.512])
    assert eq["equity"].to_list() == pytest.approx([10_000, 10043.95, 10235.472, 10252.512])
    assert eq["costs"].to_list() == pytest.approx([0, 6.05, 8.28 + 0.198, 2.96])
    assert result.stats["total_return"] == pytest.approx(0.0252512)
    assert result.stats["max_drawdown"] == 0.0
    assert result.stats["total_costs"] == pytest.approx(6.05 + 8.478 + 2.96)


def test_last_decision_does_not_fill(result):
    r = result.rejections
    assert r["reason"].to_list() == ["end_of_data"]
    assert r["decision_ts"].to_list() == [TS[3]]


def test_trades_split_the_flip(result):
    t = result.trades
    assert t["direction"].to_list() == [1, -1]
    assert t["entry_ts"].to_list() == [TS[1], TS[2]]
    assert t["exit_ts"].to_list() == [TS[2], TS[3]]
    assert t["size"].to_list() == [50.0, 20.0]
    # long: 50 * (103.896 - 101.101) - $1 entry - 50/70 of the $1 flip commission
    # short: 20 * (103.896 - 98.098) - 20/70 of $1 - $1 exit - borrow 0.198
    assert t["pnl"].to_list() == pytest.approx([139.75 - 1 - 50 / 70, 115.96 - 20 / 70 - 1 - 0.198])
    assert t["borrow"].to_list() == pytest.approx([0.0, 0.198])
    assert t["pnl"].sum() == pytest.approx(252.512)
    # long held bar t1 (low 100, high 103) and exits at the t2 open 104 -> entry 101.101
    assert t["mae"][0] == pytest.approx(100 / 101.101 - 1)
    assert t["mfe"][0] == pytest.approx(104 / 101.101 - 1)
    # short held bar t2 (high 105, low 98), exits at the t3 open 98
    assert t["mae"][1] == pytest.approx(1 - 105 / 103.896)
    assert t["mfe"][1] == pytest.approx(1 - 98 / 103.896)
    assert t["bars_held"].to_list() == [1, 1]
    assert t["holding_time"].to_list() == [timedelta(days=1)] * 2
