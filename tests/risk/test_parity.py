"""One policy, two paths: a replayed session on the simulated broker equals the backtest.

Same bars, same predictions, same policy: the session (RiskEngine once per bar, SimulatedBroker)
and ``run_backtest(..., risk=policy)`` (the kernel loop) must send the same orders, record the
same denials with the same reasons, trip the kill switch on the same bar and fill at the same
prices, across an early-close day.
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
    KillSwitchConfig,
    LimitsConfig,
    RegimeConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.execution.session import run_session
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk import RiskPolicy

from .conftest import LookupFeatures, lookup_predict, reversal_predictions

COSTS = CostsConfig(
    commission_per_share=0.005, commission_min=1.0, half_spread_bps=2.0, slippage_bps=1.0
)
SESSION_START = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)  # day 2: day 1 warms the engines up


def _policy(killswitch: KillSwitchConfig) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x",
        type="intraday",
        decision=DecisionConfig(long=2e-4, short=-2e-4),
        sizing=SizingConfig(fraction=0.3),
        risk=StrategyRiskConfig(
            limits=LimitsConfig(
                max_position=0.25,  # cuts every 0.3 entry: denials on every entry
                heat_max=0.0015,
                max_correlation=0.3,
                correlation_window=60,
                leverage=1.0,
            ),
            killswitch=killswitch,
            eod_flatten_minutes=10,
        ),
    )
    return RiskPolicy.from_strategy(strat, name="parity", timeframe="5Min")


def _both(bars: pl.DataFrame, policy: RiskPolicy):
    preds = reversal_predictions(bars)
    # the backtest sees no decision before the session starts, like the session's warm-up
    bt_preds = preds.with_columns(
        pl.when(pl.col("ts") >= SESSION_START).then(pl.col("prediction")).otherwise(None)
    )
    bt = run_backtest(
        bars, bt_preds, config=BacktestConfig(initial_cash=100_000, costs=COSTS), risk=policy
    )
    ses = run_session(
        bars,
        SESSION_START,
        engine=LookupFeatures(),
        predict=lookup_predict(preds),
        features=[],
        policy=policy,
        broker=SimulatedBroker(100_000, COSTS),
    )
    return bt, ses


def _assert_same(bt, ses) -> None:
    assert bt.orders.height > 20
    assert_frame_equal(ses.orders, bt.orders)
    rej = bt.rejections.filter(pl.col("reason") != "end_of_data")
    assert_frame_equal(ses.rejections, rej)
    fills_bt = bt.fills.select("ts", "symbol", "qty", "price", "commission")
    fills_ses = ses.fills.select("ts", "symbol", "qty", "price", "commission")
    assert_frame_equal(fills_ses.sort("ts", "symbol"), fills_bt.sort("ts", "symbol"))
    assert_frame_equal(ses.kill_switch, bt.kill_switch)


def test_replayed_session_equals_backtest_with_limits_and_early_close(week_bars) -> None:
    policy = _policy(KillSwitchConfig())
    bt, ses = _both(week_bars, policy)
    _assert_same(bt, ses)
    reasons = set(bt.rejections["reason"].to_list())
    assert {"max_position", "portfolio_heat", "correlation", "eod_flatten"} <= reasons
    # flat at every close, the early close (13:00 ET on 2024-11-29) included
    eod = bt.orders.filter(pl.col("reason") == "eod_flatten")
    local = eod["decision_ts"].dt.convert_time_zone("America/New_York")
    half_day = local.filter(local.dt.date() == datetime(2024, 11, 29).date())
    assert half_day.len() > 0 and half_day.dt.hour().max() == 12  # 12:50-12:55, not 15:50
    pos = bt.positions.with_columns(
        local=pl.col("ts").dt.convert_time_zone("America/New_York")
    ).filter(pl.col("local").dt.time() == datetime(2024, 1, 1, 12, 55).time())
    early = pos.filter(pl.col("local").dt.date() == datetime(2024, 11, 29).date())
    assert (early["shares"] == 0).all()


def test_parity_holds_through_a_kill_switch_trip(week_bars) -> None:
    policy = _policy(KillSwitchConfig(max_drawdown=0.002))
    bt, ses = _both(week_bars, policy)
    assert bt.kill_switch.height == 1, "the drawdown trip must fire in this week"
    _assert_same(bt, ses)
    trip_ts = bt.kill_switch["ts"].item()
    after = bt.orders.filter(pl.col("decision_ts") >= trip_ts)
    assert (after["reason"] == "kill_switch").all()  # only flattening after the trip
    assert bt.rejections.filter(pl.col("reason") == "kill_switch").height > 0  # entries denied
    last = bt.positions.filter(pl.col("ts") == bt.positions["ts"].max())
    assert (last["shares"] == 0).all()


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_session_risk_engine_matches_kernel_state(week_bars, fraction: float) -> None:
    """Equity the engine marks equals the backtest's at every decision (same kernel, same books)."""
    strat = StrategyConfig(
        feature_set="x",
        decision=DecisionConfig(long=0.0, short=0.0),
        sizing=SizingConfig(fraction=fraction),
    )
    policy = RiskPolicy.from_strategy(strat, name="p", timeframe="5Min")
    bt, ses = _both(week_bars, policy)
    eq_bt = bt.orders.select("decision_ts", "symbol", "equity")
    eq_ses = ses.orders.select("decision_ts", "symbol", "equity")
    assert_frame_equal(eq_ses, eq_bt)


def test_parity_with_volatility_sizing_regimes_and_trend_filter(week_bars) -> None:
    """The session's bounded history (RiskPolicy.history_rows) gives the backtest's inputs:
    volatility target, regime cut-offs from past sessions, moving average, ATR heat."""
    strat = StrategyConfig(
        feature_set="x",
        type="intraday",
        decision=DecisionConfig(long=1e-4, short=-1e-4, trend_filter=20),
        sizing=SizingConfig(
            method="vol_target",
            vol_target=0.05,
            vol_window=20,
            max_leverage=0.4,
            min_trade=0.02,
            regime=RegimeConfig(window=20, lookback=156, multipliers=(1.2, 1.0, 0.5)),
        ),
        risk=StrategyRiskConfig(
            limits=LimitsConfig(max_position=0.3, heat_max=0.01), eod_flatten_minutes=5
        ),
    )
    policy = RiskPolicy.from_strategy(strat, name="vol", timeframe="5Min")
    bt, ses = _both(week_bars, policy)
    _assert_same(bt, ses)
    sizes = bt.orders.filter(pl.col("reason") == "model")["target"].abs().unique()
    assert sizes.len() > 20  # continuous sizes: the volatility and the regime moved them


def test_pre_trade_check_reports_cuts_and_denials(week_bars) -> None:
    from workbench.risk import RiskEngine

    policy = _policy(KillSwitchConfig())
    eng = RiskEngine(policy, sorted(week_bars["symbol"].unique()), initial_cash=100_000)
    eng.warm(week_bars.filter(pl.col("ts") < SESSION_START))
    px = float(week_bars.filter(pl.col("symbol") == "SYN000")["close"][-1])
    ok = eng.check("SYN000", 10, px)
    assert ok == {"allowed_qty": 10.0, "status": "allowed", "denials": []}
    cut = eng.check("SYN000", 1_000_000 / px, px)  # ten times equity: cut to max_position
    assert cut["status"] == "cut" and cut["denials"][0]["rule"] == "max_position"
    assert cut["allowed_qty"] * px <= 0.25 * eng.equity + px
    assert "position / equity" in cut["denials"][0]["reason"]
