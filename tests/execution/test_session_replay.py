"""Replayed sessions on the simulated venue: fills at the next open with costs, ends flat, no peeking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from workbench.config import (
    CostsConfig,
    DecisionConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.execution.session import run_session
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk import RiskPolicy

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
COSTS = CostsConfig(
    commission_per_share=0.01, commission_min=1.0, half_spread_bps=5.0, slippage_bps=1.0
)


class RetFeature:
    """Feature = last bar's return, computed from bars seen so far only."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for r in bars.sort("ts").iter_rows(named=True):
            prev = self.last.get(r["symbol"])
            rows.append(
                {
                    "symbol": r["symbol"],
                    "ts": r["ts"],
                    "ret": None if prev is None else r["close"] / prev - 1,
                }
            )
            self.last[r["symbol"]] = r["close"]
        return pl.DataFrame(
            rows, schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "ret": pl.Float64}
        )


def session_bars(n: int = 30) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    o = np.r_[100.0, c[:-1]]
    return pl.DataFrame(
        {
            "symbol": "A",
            "ts": [T0 + timedelta(minutes=5 * i) for i in range(n)],
            "open": o,
            "high": np.maximum(o, c),
            "low": np.minimum(o, c),
            "close": c,
            "volume": 1000.0,
        }
    )


def _policy(fraction: float = 0.5) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x",
        type="intraday",
        decision=DecisionConfig(long=0.0, short=0.0),
        sizing=SizingConfig(fraction=fraction),
        risk=StrategyRiskConfig(limits=LimitsConfig(max_position=None), eod_flatten_minutes=5),
    )
    return RiskPolicy.from_strategy(strat, name="fade", timeframe="5Min")


def test_session_trades_on_next_open_and_ends_flat() -> None:
    bars = session_bars(78)  # one full session, 09:30-15:55 ET
    broker = SimulatedBroker(100_000, COSTS)
    res = run_session(
        bars,
        T0 + timedelta(minutes=25),
        engine=RetFeature(),
        predict=lambda f: -f["ret"].to_numpy(),
        features=["ret"],
        policy=_policy(),
        broker=broker,
    )
    assert res.fills.height > 0
    assert (res.fills["ts"] > res.fills["decided_at"]).all()
    opens = dict(zip(bars["ts"].to_list(), bars["open"].to_list(), strict=True))
    assert all(opens[t] == p for t, p in zip(res.fills["ts"], res.fills["ref_price"], strict=True))
    assert broker.position("A") == 0  # flattened 5 minutes before the close, from the calendar
    last = res.fills.sort("ts")[-1]
    assert last["ts"].item() == T0 + timedelta(minutes=5 * 77)  # the 15:55 bar's open
    assert res.orders.filter(pl.col("reason") == "eod_flatten").height >= 1
    assert res.pnl["cum_pnl"][-1] == pytest.approx(broker.equity - 100_000)
    assert res.decisions.filter(
        pl.col("ts") < T0 + timedelta(minutes=25)
    ).is_empty()  # warm-up only


def test_constant_signal_trades_once() -> None:
    """The session rebalances on a change of target, not on every bar (it used to re-size each bar)."""
    bars = session_bars(60)
    broker = SimulatedBroker(100_000, COSTS)
    res = run_session(
        bars,
        T0 + timedelta(minutes=10),
        engine=RetFeature(),
        predict=lambda f: np.ones(f.height),
        features=["ret"],
        policy=_policy(),
        broker=broker,
    )
    assert res.fills.height == 1
    assert broker.position("A") > 0


def test_costs_never_help() -> None:
    bars = session_bars(60)
    out = []
    for costs in (CostsConfig(half_spread_bps=0.0), COSTS):
        res = run_session(
            bars,
            T0 + timedelta(minutes=10),
            engine=RetFeature(),
            predict=lambda f: -f["ret"].to_numpy(),
            features=["ret"],
            policy=_policy(),
            broker=SimulatedBroker(100_000, costs),
        )
        out.append(res.net_pnl)
    assert out[1] < out[0]
