"""A swing strategy traded one session a day equals one backtest over the same days.

The backtest holds its book overnight; a session ends each day. The next day's session must start
from the book the last one left (positions, entry prices, stops, the trade history Kelly and the
daily-loss rule read, day trades for the PDT rule) and must own the orders decided at the last
bar of the day before (a market order sent after the close fills at the next open, as the
backtest fills it). Otherwise it re-buys what it holds and books yesterday's fills nowhere.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from workbench.backtest import run_backtest
from workbench.config import (
    BacktestConfig,
    CostsConfig,
    DecisionConfig,
    ExecutionPolicyConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.execution.bars import ReplayBars, split_session
from workbench.execution.clock import ReplayClock
from workbench.execution.engine import SessionEngine, session_id
from workbench.execution.ledger import OrderLedger
from workbench.execution.policy import ExecutionPolicy
from workbench.execution.session import run_session
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk import RiskPolicy

from .conftest import LookupFeatures, lookup_predict, reversal_predictions

COSTS = CostsConfig(
    commission_per_share=0.005,
    commission_min=1.0,
    half_spread_bps=2.0,
    slippage_bps=1.0,
    borrow_bps_annual=300.0,  # shorts held overnight pay for the whole night, in both
)
FIRST = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)  # day 1 (11-25) warms the engines up


def _policy(sizing: SizingConfig, **limits) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x",
        type="swing",
        decision=DecisionConfig(long=2e-4, short=-2e-4),
        sizing=sizing,
        risk=StrategyRiskConfig(
            limits=LimitsConfig(max_position=0.3, **limits), eod_flatten_minutes=None
        ),
    )
    return RiskPolicy.from_strategy(strat, name="swing", timeframe="5Min")


def _sessions(
    bars: pl.DataFrame,
    policy: RiskPolicy,
    ledger_url: str,
    crash_on: int | None = None,
    venue_url: str | None = None,
):
    """One run_session per trading day from FIRST on, on one venue and one ledger; with
    ``crash_on`` the process dies after 20 bars of that day (no finish) and is run again; with
    ``venue_url`` each day (and the restart) opens the simulated account from its durable state,
    as ``wb session run`` does (one account per ledger)."""
    preds = reversal_predictions(bars)
    days = (
        bars.filter(pl.col("ts") >= FIRST)
        .group_by(pl.col("ts").dt.date().alias("d"))
        .agg(pl.col("ts").min().alias("start"), pl.col("ts").max().alias("end"))
        .sort("d")
    )
    broker = SimulatedBroker(100_000, COSTS, state_url=venue_url)
    ledger = OrderLedger(ledger_url)
    out = []
    try:
        for k, (start, end) in enumerate(days.select("start", "end").iter_rows()):
            if venue_url is not None and k:
                broker.close()
                broker = SimulatedBroker(100_000, COSTS, state_url=venue_url)
            if k == crash_on:
                _crash_after(bars.filter(pl.col("ts") <= end), start, 20, preds, policy, broker,
                             ledger)  # fmt: skip
                if venue_url is not None:  # the process died: its venue object with it
                    broker = SimulatedBroker(100_000, COSTS, state_url=venue_url)
            out.append(
                run_session(
                    bars.filter(pl.col("ts") <= end),
                    start,
                    engine=LookupFeatures(),
                    predict=lookup_predict(preds),
                    features=[],
                    policy=policy,
                    broker=broker,
                    ledger=ledger,
                )
            )
    finally:
        ledger.close()
    bt_preds = preds.with_columns(
        pl.when(pl.col("ts") >= FIRST).then(pl.col("prediction")).otherwise(None)
    )
    bt = run_backtest(
        bars, bt_preds, config=BacktestConfig(initial_cash=100_000, costs=COSTS), risk=policy
    )
    return bt, out, broker


def _crash_after(bars, start, n_bars, preds, policy, broker, ledger) -> None:
    """Start the day's session and die after ``n_bars`` bars, without a finish."""
    history, session = split_session(bars, start)
    day = start.date()
    engine = SessionEngine(
        session_id=session_id(policy.name, day, broker.name, "replay"), policy=policy,
        symbols=sorted(bars["symbol"].unique().to_list()), features=LookupFeatures(),
        predict=lookup_predict(preds), feature_names=[], broker=broker, ledger=ledger,
        execution=ExecutionPolicy(ExecutionPolicyConfig(), broker.capabilities),
        session_date=day, clock=ReplayClock(start),
    )  # fmt: skip
    engine.start(history, strategy=policy.name, broker_name=broker.name)
    for i, (t, now) in enumerate(ReplayBars(session)):
        if i == n_bars:
            return
        engine.step(t, now)


def _concat(results, attr: str) -> pl.DataFrame:
    return pl.concat([getattr(r, attr) for r in results])


@pytest.mark.parametrize(
    "sizing",
    [SizingConfig(method="atr_risk", risk_pct=0.005)],
    ids=["atr_risk"],
)
def test_daily_sessions_equal_one_backtest(week_bars, postgres, sizing) -> None:
    """On a PostgreSQL ledger (the crash case below runs on SQLite)."""
    policy = _policy(sizing)
    bt, sessions, broker = _sessions(week_bars, policy, postgres.database())
    assert len(sessions) == 5
    # the book is carried: the backtest holds positions over every night of the week
    nights = bt.positions.filter(pl.col("shares") != 0)["ts"].dt.date().n_unique()
    assert nights >= 4
    drop = ["row"] if "row" in bt.orders.columns else []
    assert_frame_equal(_concat(sessions, "orders").drop(drop), bt.orders.drop(drop))
    rej = bt.rejections.filter(pl.col("reason") != "end_of_data")
    drop = ["row"] if "row" in rej.columns else []
    assert_frame_equal(_concat(sessions, "rejections").drop(drop), rej.drop(drop))
    cols = ["ts", "symbol", "qty", "price", "commission"]
    fills = _concat(sessions, "fills").select(cols).sort("ts", "symbol")
    bt_fills = bt.fills.select(cols).sort("ts", "symbol")
    # the last bar's orders of the week fill after it: the backtest has no bar to fill them on
    assert_frame_equal(fills.filter(pl.col("ts") <= bt_fills["ts"].max()), bt_fills)
    # the venue holds what the backtest holds at its end (the week's last orders never fill)
    last = bt.positions.filter(pl.col("ts") == bt.positions["ts"].max())
    held = dict(last.select("symbol", "shares").iter_rows())
    assert any(held.values())
    for sym in policy_symbols(week_bars):
        assert broker.position(sym) == pytest.approx(held.get(sym, 0.0))


def policy_symbols(bars: pl.DataFrame) -> list[str]:
    return sorted(bars["symbol"].unique().to_list())


def test_a_crash_the_morning_after_carries_nothing_twice(week_bars, tmp_path) -> None:
    """Day 2's session dies after 20 bars (its carried orders already sent) and is run again:
    the carried orders are not carried again and the week still equals the backtest. Each day
    and the restart open the simulated account from its durable state (cash, positions, order
    ids carry over), as ``wb session run`` does."""
    policy = _policy(SizingConfig(fraction=0.2))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    venue = f"sqlite:///{tmp_path / 'ledger-sim.db'}"
    bt, sessions, broker = _sessions(week_bars, policy, url, crash_on=2, venue_url=venue)
    assert_frame_equal(_concat(sessions, "orders"), bt.orders)
    cols = ["ts", "symbol", "qty", "price", "commission"]
    fills = _concat(sessions, "fills").select(cols).sort("ts", "symbol")
    bt_fills = bt.fills.select(cols).sort("ts", "symbol")
    assert_frame_equal(fills.filter(pl.col("ts") <= bt_fills["ts"].max()), bt_fills)
    ledger = OrderLedger(url)
    try:
        sid = session_id(policy.name, sorted({t.date() for t in bt.orders["decision_ts"]})[2],
                         broker.name, "replay")  # fmt: skip
        carried = [i for i in ledger.intents(sid) if i.request.intent == "carry"]
        assert carried, "the day's first orders were decided at the last bar of the day before"
        assert len({i.request.after_cancel for i in carried}) == len(carried)
    finally:
        ledger.close()
