"""Kill switch: trips on the bar of the breach, flattens, denies entries while reduce-only orders
pass, stays tripped across a restart (persisted state) and resumes only after a recorded re-arm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from workbench.backtest import run_backtest
from workbench.config import (
    DecisionConfig,
    KillSwitchConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.data.schema import validate_bars
from workbench.risk import RiskEngine, RiskPolicy
from workbench.risk.engine import FillEvent
from workbench.risk.state import KillSwitchStore

T0 = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)  # 09:30 ET


def _bars(closes: list[float], symbol: str = "AAA") -> pl.DataFrame:
    c = np.asarray(closes, dtype=float)
    o = np.r_[c[0], c[:-1]]
    return validate_bars(
        pl.DataFrame(
            {
                "symbol": symbol,
                "ts": [T0 + timedelta(minutes=5 * i) for i in range(len(c))],
                "open": o,
                "high": np.maximum(o, c) * 1.001,
                "low": np.minimum(o, c) * 0.999,
                "close": c,
                "volume": 10_000.0,
                "vwap": (o + c) / 2,
                "trade_count": 100,
            }
        )
    )


def _policy(ks: KillSwitchConfig, **limits) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x",
        decision=DecisionConfig(long=0.0, short=0.0),
        sizing=SizingConfig(fraction=1.0),
        risk=StrategyRiskConfig(
            limits=LimitsConfig(max_position=None, **limits),
            killswitch=ks,
            eod_flatten_minutes=None,
        ),
    )
    return RiskPolicy.from_strategy(strat, name="ks", timeframe="5Min")


def _long(bars: pl.DataFrame, value: float = 1.0) -> pl.DataFrame:
    return bars.select("symbol", "ts").with_columns(prediction=pl.lit(value))


def test_daily_loss_trips_on_the_bar_of_the_breach_and_flattens() -> None:
    closes = [100.0] * 5 + [99.0, 97.0, 96.0, 95.5] + [96.0] * 6  # -3% at bar 6 (close 97)
    bars = _bars(closes)
    res = run_backtest(bars, _long(bars), risk=_policy(KillSwitchConfig(daily_loss=0.025)))
    trip = res.kill_switch
    assert trip.height == 1 and trip["rule"].item() == "daily_loss"
    eq = res.equity["equity"].to_numpy()
    breach = int(np.argmax((100_000 - eq) / 100_000 >= 0.025))
    assert trip["ts"].item() == bars["ts"][breach]  # the first close past the limit
    assert trip["value"].item() >= 0.025 and trip["limit"].item() == 0.025
    flat = res.orders.filter(pl.col("reason") == "kill_switch")
    assert flat.height == 1 and flat["decision_ts"].item() == bars["ts"][breach]
    assert res.positions["shares"][-1] == 0  # flattened at the next open, never re-entered


def test_entries_denied_reduce_only_passes_while_halted() -> None:
    # flat, then a long signal after the trip: denied; a position cut (reduce-only) passes
    store_bars = _bars([100.0] * 6 + [90.0] + [91.0] * 6)
    engine = RiskEngine(_policy(KillSwitchConfig(max_drawdown=0.05)), ["AAA"], initial_cash=100_000)
    orders: list[dict[str, float]] = []
    for i, row in enumerate(store_bars.iter_rows(named=True)):
        if orders and orders[-1]:
            qty = orders[-1]["AAA"]
            engine.on_fills([FillEvent("AAA", qty, row["open"], 0.0)], row["ts"])
        pred = {"AAA": 1.0} if i < 6 or i > 8 else {"AAA": -1.0}
        orders.append(engine.on_bar(row["ts"], store_bars[i : i + 1], pred))
    assert engine.halted
    assert engine.position("AAA") == 0
    rej = engine.rejections()
    assert set(rej["reason"]) == {"kill_switch"}  # the model's new targets were denied
    check_in = engine.check("AAA", 10, 91.0)
    assert check_in["status"] == "allowed"  # limits themselves pass; the halt is the session's


def test_halt_survives_a_restart_and_rearm_needs_a_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'risk.db'}"
    bars = _bars([100.0] * 4 + [94.0] + [95.0] * 4)
    pol = _policy(KillSwitchConfig(daily_loss=0.04))
    store = KillSwitchStore(url)
    eng = RiskEngine(pol, ["AAA"], initial_cash=100_000, store=store)
    last: dict[str, float] = {}
    for i, row in enumerate(bars.iter_rows(named=True)):
        if last:
            eng.on_fills([FillEvent("AAA", last["AAA"], row["open"], 0.0)], row["ts"])
        last = eng.on_bar(row["ts"], bars[i : i + 1], {"AAA": 1.0})
    assert eng.halted
    state = KillSwitchStore(url).load("ks")  # what a new process reads
    assert state.halted and state.rule == "daily_loss" and "0.04" in state.reason
    restarted = RiskEngine(pol, ["AAA"], initial_cash=100_000, store=KillSwitchStore(url))
    assert restarted.halted
    t = bars["ts"][-1] + timedelta(minutes=5)
    assert restarted.on_bar(t, bars[-1:].with_columns(ts=pl.lit(t)), {"AAA": 1.0}) == {}
    assert restarted.rejections()["reason"].to_list() == ["kill_switch"]
    with pytest.raises(Exception, match="reason"):
        KillSwitchStore(url).rearm("ks", reason="  ")
    KillSwitchStore(url).rearm("ks", reason="loss reviewed: simulator shock")
    resumed = RiskEngine(pol, ["AAA"], initial_cash=100_000, store=KillSwitchStore(url))
    assert not resumed.halted
    hist = KillSwitchStore(url).history("ks")
    assert hist["event"].to_list() == ["trip", "rearm"]


def test_violations_and_consecutive_losses_trip() -> None:
    bars = _bars(list(100 + np.sin(np.arange(40)) * 0.5))
    pol = _policy(
        KillSwitchConfig(max_violations=3, violation_window_minutes=30), max_open_positions=None
    )
    # a tiny leverage cap cuts every entry: three cuts in 30 minutes halt the runaway model
    pol = RiskPolicy(**{**pol.__dict__, "limits": pol.limits.model_copy(update={"leverage": 0.01})})
    flip = bars.select("symbol", "ts").with_columns(
        prediction=pl.Series(np.where(np.arange(40) % 2 == 0, 1.0, -1.0))
    )
    res = run_backtest(bars, flip, risk=pol)
    assert res.kill_switch["rule"].item() == "violations"
    cuts = res.rejections.filter(pl.col("reason") == "insufficient_buying_power")
    assert cuts.height == 3 and res.kill_switch["ts"].item() == cuts["decision_ts"][-1]
    # a zigzag against alternating longs and shorts: every round trip loses
    zigzag = _bars([100.0, 99.0] * 15)
    res = run_backtest(zigzag, flip.head(30), risk=_policy(KillSwitchConfig(consecutive_losses=4)))
    assert res.kill_switch["rule"].item() == "consecutive_losses"
    closed = res.trades.filter(~pl.col("is_open"))
    assert (closed["pnl"].head(4) < 0).all()
    assert res.kill_switch["ts"].item() == closed["exit_ts"][3]  # the bar that booked the 4th loss
    assert closed.height == 5  # the flip's new trade, closed by the trip's flatten
    assert res.orders["reason"][-1] == "kill_switch"
