"""Trading-session engine: replay bars one timestamp at a time through features, model, risk, broker.

At each bar ``t`` of the session, in this order (the backtest kernel's order):

1. orders decided at an earlier close fill at bar ``t``'s open; the risk engine books the fills;
2. the feature engine receives bar ``t`` and returns the features of row ``t`` (past only);
3. the model predicts;
4. the :class:`~workbench.risk.engine.RiskEngine` marks the book at ``t``'s close, checks the
   kill switch and decides with the strategy's :class:`~workbench.risk.RiskPolicy` (decision,
   sizing, limits, end-of-day flatten): the same kernel functions the backtest runs;
5. its orders go to the broker; they fill at the symbol's next bar.

Bars before ``session_start`` warm the feature and risk engines up; no trade is decided on them.
A replay on the simulated broker therefore equals ``run_backtest(bars, predictions, risk=policy)``
of the same bars: same orders, denials and fills.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np
import polars as pl

from workbench.data.assets import AssetFacts
from workbench.errors import SchemaError
from workbench.execution.orders import Order
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk.engine import FillEvent, RiskEngine
from workbench.risk.policy import RiskPolicy

if TYPE_CHECKING:
    from workbench.risk.state import KillSwitchStore

_TS = pl.Datetime("us", "UTC")


class FeatureUpdater(Protocol):
    """Anything that turns newly arrived bars into the feature rows of those bars."""

    def update(self, bars: pl.DataFrame) -> pl.DataFrame: ...


@dataclass
class SessionResult:
    """Fills, per-bar PnL, every decision, and the risk engine's orders, denials and trip."""

    fills: pl.DataFrame
    pnl: pl.DataFrame
    decisions: pl.DataFrame
    orders: pl.DataFrame
    rejections: pl.DataFrame
    kill_switch: pl.DataFrame

    @property
    def net_pnl(self) -> float:
        return float(self.pnl["pnl"].sum()) if self.pnl.height else 0.0


def _fills_frame(broker: SimulatedBroker) -> pl.DataFrame:
    schema = {
        "client_order_id": pl.String,
        "symbol": pl.String,
        "decided_at": _TS,
        "ts": _TS,
        "qty": pl.Float64,
        "ref_price": pl.Float64,
        "price": pl.Float64,
        "commission": pl.Float64,
        "cost": pl.Float64,
    }
    rows = [
        {
            "client_order_id": f.client_order_id,
            "symbol": f.symbol,
            "decided_at": f.decided_at,
            "ts": f.ts,
            "qty": f.qty,
            "ref_price": f.ref_price,
            "price": f.price,
            "commission": f.commission,
            "cost": f.cost,
        }
        for f in broker.fills
    ]
    return pl.DataFrame(rows, schema=schema)


def run_session(
    bars: pl.DataFrame,
    session_start: datetime,
    *,
    engine: FeatureUpdater,
    predict: Callable[[pl.DataFrame], np.ndarray],
    features: list[str],
    policy: RiskPolicy,
    broker: SimulatedBroker,
    assets: Mapping[str, AssetFacts] | None = None,
    store: KillSwitchStore | None = None,
) -> SessionResult:
    """Replay the bars from ``session_start`` on, bar by bar, and trade them through ``broker``.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars of the session and the warm-up before it.
    session_start : datetime
        First bar of the session; earlier bars only warm the engines up.
    engine : FeatureUpdater
        Incremental features (``FeatureEngine``).
    predict : callable
        Feature rows -> predictions.
    features : list of str
        Columns the model reads (rows with a null among them are not predicted).
    policy : RiskPolicy
        The strategy's risk policy (the one its backtest and gates used).
    broker : SimulatedBroker
        Where orders go.
    assets, store : optional
        Asset facts for the limits; the persisted kill-switch state.
    """
    if bars.is_empty():
        raise SchemaError("no bars to replay; ingest the session first (`wb ingest`).")
    bars = bars.sort("ts", "symbol")
    history = bars.filter(pl.col("ts") < session_start)
    session = bars.filter(pl.col("ts") >= session_start)
    if session.is_empty():
        raise SchemaError(
            f"no bars at or after {session_start}; pick a session inside the stored data."
        )
    symbols = sorted(bars["symbol"].unique().to_list())
    risk = RiskEngine(policy, symbols, initial_cash=broker.equity, assets=assets, store=store)
    if history.height:
        engine.update(history)
        risk.warm(history)
    equity0 = broker.equity
    prev_equity = equity0
    pnl_rows, decision_rows = [], []
    seq = 0
    for (t,), now in session.group_by(["ts"], maintain_order=True):
        fills = []
        for sym, open_ in now.select("symbol", "open").iter_rows():
            fills += broker.on_bar_open(sym, t, open_)
        risk.on_fills([FillEvent(f.symbol, f.qty, f.price, f.commission) for f in fills], t)
        feats = engine.update(now)
        ready = feats.filter(pl.col("ts") == t).drop_nulls(features) if feats.height else feats
        preds = (
            dict(zip(ready["symbol"].to_list(), predict(ready).tolist(), strict=True))
            if ready.height
            else {}
        )
        orders = risk.on_bar(t, now, preds)
        for sym, qty in orders.items():
            seq += 1
            broker.submit(Order(f"{policy.name}-{t:%Y%m%dT%H%M}-{sym}-{seq}", sym, qty, t))
        closes = dict(zip(now["symbol"].to_list(), now["close"].to_list(), strict=True))
        equity = broker.mark(closes)
        for sym in closes:
            decision_rows.append(
                {
                    "ts": t,
                    "symbol": sym,
                    "prediction": preds.get(sym),
                    "position": risk.position(sym),
                    "order_qty": orders.get(sym, 0.0),
                }
            )
        gross = sum(abs(q) * broker._last.get(s, 0.0) for s, q in broker.positions.items())
        pnl_rows.append(
            {
                "ts": t,
                "equity": equity,
                "cash": broker.cash,
                "gross_exposure": gross,
                "pnl": equity - prev_equity,
                "cum_pnl": equity - equity0,
            }
        )
        prev_equity = equity
    decisions = pl.DataFrame(
        decision_rows,
        schema={
            "ts": _TS,
            "symbol": pl.String,
            "prediction": pl.Float64,
            "position": pl.Float64,
            "order_qty": pl.Float64,
        },
    )
    rejections = risk.rejections()
    why = (
        rejections.group_by("decision_ts", "symbol", maintain_order=True)
        .agg(pl.col("detail").str.join("; ").alias("denied"))
        .rename({"decision_ts": "ts"})
    )
    order_reason = (
        risk.orders()
        .group_by("decision_ts", "symbol", maintain_order=True)
        .agg(pl.col("reason").last())
        .rename({"decision_ts": "ts", "reason": "order_reason"})
    )
    decisions = decisions.join(order_reason, on=["ts", "symbol"], how="left").join(
        why, on=["ts", "symbol"], how="left"
    )
    return SessionResult(
        _fills_frame(broker),
        pl.DataFrame(pnl_rows, schema_overrides={"ts": _TS}),
        decisions,
        risk.orders(),
        rejections,
        risk.kill_switch(),
    )
