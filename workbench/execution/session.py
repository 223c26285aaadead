"""Trading-session engine: replay bars one timestamp at a time through features, model, risk, broker.

At each bar ``t`` of the session, in this order:

1. queued orders fill at bar ``t``'s open (decided at the close of an earlier bar);
2. the feature engine receives bar ``t`` and returns the features of row ``t`` (past only);
3. the model predicts; a prediction above ``long_threshold`` targets ``+max_position`` of
   equity, below ``short_threshold`` targets ``-max_position``, otherwise flat;
4. the difference between target and current shares becomes an order, filled at ``t+1``'s open;
5. equity is marked at bar ``t``'s close.

Decisions from ``flatten_bars`` bars before the last bar on target zero; they fill by the last
bar's open, so the session ends flat (the last bar's own decision cannot fill in the session).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
import polars as pl

from workbench.config import StrategyConfig
from workbench.errors import SchemaError
from workbench.execution.orders import Order
from workbench.execution.sim_broker import SimulatedBroker


class FeatureUpdater(Protocol):
    """Anything that turns newly arrived bars into the feature rows of those bars."""

    def update(self, bars: pl.DataFrame) -> pl.DataFrame: ...


@dataclass
class SessionResult:
    """Fills, per-bar PnL and every decision of a replayed session."""

    fills: pl.DataFrame
    pnl: pl.DataFrame
    decisions: pl.DataFrame

    @property
    def net_pnl(self) -> float:
        return float(self.pnl["pnl"].sum()) if self.pnl.height else 0.0


def _fills_frame(broker: SimulatedBroker) -> pl.DataFrame:
    schema = {
        "client_order_id": pl.String,
        "symbol": pl.String,
        "decided_at": pl.Datetime("us", "UTC"),
        "ts": pl.Datetime("us", "UTC"),
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
    strategy: StrategyConfig,
    broker: SimulatedBroker,
    flatten_bars: int = 1,
) -> SessionResult:
    """Replay the bars from ``session_start`` on, bar by bar, and trade them through ``broker``.

    Bars before ``session_start`` warm the feature engine up; no trade is decided on them.
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
    if history.height:
        engine.update(history)
    stamps = session["ts"].unique().sort().to_list()
    equity0 = broker.equity
    prev_equity = equity0
    pnl_rows, decision_rows = [], []
    for i, t in enumerate(stamps):
        now = session.filter(pl.col("ts") == t)
        for row in now.iter_rows(named=True):
            broker.on_bar_open(row["symbol"], t, row["open"])
        feats = engine.update(now)
        closes = dict(zip(now["symbol"].to_list(), now["close"].to_list(), strict=True))
        equity = broker.mark(closes)
        flatten = i >= len(stamps) - 1 - flatten_bars  # fills at the open of the last bar(s)
        ready = feats.filter(pl.col("ts") == t).drop_nulls(features) if feats.height else feats
        preds = (
            dict(zip(ready["symbol"].to_list(), predict(ready).tolist(), strict=True))
            if ready.height
            else {}
        )
        for sym, close in closes.items():
            p = preds.get(sym)
            if flatten:
                frac, why = 0.0, "flatten before the close"
            elif p is None:
                frac, why = 0.0, "features warming up"
            elif p > strategy.long_threshold:
                frac, why = strategy.max_position, f"prediction {p:.2e} > long threshold"
            elif p < strategy.short_threshold:
                frac, why = -strategy.max_position, f"prediction {p:.2e} < short threshold"
            else:
                frac, why = 0.0, "prediction inside thresholds"
            target = math.trunc(frac * equity / close)
            qty = target - broker.position(sym)
            if qty != 0 and i != len(stamps) - 1:
                broker.submit(Order(f"{sym}-{t:%Y%m%dT%H%M}", sym, float(qty), t, why))
            decision_rows.append(
                {
                    "ts": t,
                    "symbol": sym,
                    "prediction": p,
                    "target_shares": float(target),
                    "order_qty": float(qty if i < len(stamps) - 1 else 0),
                    "reason": why,
                }
            )
        gross = sum(abs(q) * closes.get(s, 0.0) for s, q in broker.positions.items())
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
    decisions = pl.DataFrame(decision_rows, schema_overrides={"prediction": pl.Float64})
    return SessionResult(_fills_frame(broker), pl.DataFrame(pnl_rows), decisions)
