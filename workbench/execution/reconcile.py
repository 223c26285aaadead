"""Start-up reconciliation: make the ledger agree with the broker, or halt.

Order of work (NautilusTrader's: orders, then fills, then positions):

1. **Intents of unknown outcome** (committed, never acknowledged: the process died between the
   commit and the broker's answer) are looked up by client order id. Found: acknowledged, and its
   fills derived. Not found: marked ``not_found``; the resumed session sends it again under the
   *same* client order id, so a late arrival of the first request is refused by the broker.
2. **Orders the ledger holds open** are read back by id: fills, cancels and expiries missed
   while the session was down are recorded (cumulative ``filled_qty`` is the truth).
3. **Open orders the ledger does not know** (placed outside the workbench) are cancelled,
   adopted into the ledger, or halt the session (``execution.reconcile.orphan_orders``).
4. **Positions**: the ledger's (the session's start snapshot plus its fills) against the
   broker's. A difference larger than ``qty_tolerance`` is unexplained: it is reported as a
   mismatch and the caller halts (the kill switch trips with the mismatch as its reason). It is
   never silently adopted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from workbench.config import ReconcileConfig
from workbench.execution.broker import Broker, BrokerError, NotFound
from workbench.execution.ledger import OrderLedger
from workbench.execution.orders import Fill

log = logging.getLogger("workbench.execution.reconcile")

PREFIX = "wb-"


@dataclass
class ReconcileReport:
    """What reconciliation found and did."""

    resolved: list[tuple[str, str]] = field(default_factory=list)  # (client order id, outcome)
    missed_fills: list[Fill] = field(default_factory=list)
    orphans: list[tuple[str, str, str]] = field(default_factory=list)  # (order id, symbol, action)
    mismatches: list[dict] = field(default_factory=list)  # symbol, ledger, broker, diff
    refreshed: int = 0  # ledger-open orders read back

    @property
    def ok(self) -> bool:
        return not self.mismatches and not any(a == "halt" for _, _, a in self.orphans)

    @property
    def reason(self) -> str:
        parts = [
            f"{m['symbol']}: ledger {m['ledger']:g} vs broker {m['broker']:g}"
            for m in self.mismatches
        ]
        parts += [f"orphan order {oid} in {sym}" for oid, sym, a in self.orphans if a == "halt"]
        return "position mismatch: " + "; ".join(parts) if parts else ""

    def frame(self) -> pl.DataFrame:
        rows = [{"kind": "intent", "what": c, "action": o} for c, o in self.resolved]
        rows += [
            {"kind": "missed_fill", "what": f"{f.symbol} {f.qty:g} @ {f.price:.4f}", "action": f.client_order_id}
            for f in self.missed_fills
        ]  # fmt: skip
        rows += [{"kind": "orphan", "what": f"{s} {o}", "action": a} for o, s, a in self.orphans]
        rows += [
            {"kind": "mismatch", "what": m["symbol"], "action": f"ledger {m['ledger']:g} broker {m['broker']:g}"}
            for m in self.mismatches
        ]  # fmt: skip
        return pl.DataFrame(
            rows, schema={"kind": pl.String, "what": pl.String, "action": pl.String}
        )


def reconcile(
    ledger: OrderLedger,
    broker: Broker,
    session_id: str,
    *,
    now: datetime,
    config: ReconcileConfig | None = None,
    venue: str = "",
) -> ReconcileReport:
    """Reconcile ``session_id``'s ledger with ``broker`` (see the module doc); returns the report.

    Raises :class:`~workbench.execution.broker.Unreachable` when the broker cannot be read: a
    session does not start on a ledger it could not check.
    """
    cfg = config or ReconcileConfig()
    rep = ReconcileReport()
    # one paginated read of the recent orders answers most questions (a broker's request budget
    # is ~200 a minute: one lookup per order would take minutes for hundreds of orders)
    recent = broker.recent_orders(now - timedelta(days=cfg.lookback_days))
    by_cid = {o.client_order_id: o for o in recent if not o.replaces}
    by_id = {o.id: o for o in recent}
    # 1. intents of unknown outcome
    for it in ledger.intents(session_id, states=("pending",)):
        order = by_cid.get(it.client_order_id) or broker.get_order_by_client_id(it.client_order_id)
        if order is None:
            ledger.mark_not_found(it.client_order_id)
            rep.resolved.append((it.client_order_id, "not_found"))
            continue
        ledger.mark_acked(it.client_order_id, order, now)
        rep.missed_fills += ledger.apply_order(session_id, order, event="rest", ts=now, venue=venue)
        rep.resolved.append((it.client_order_id, f"found {order.status.value}"))
    # 2. orders the ledger holds open
    replay = getattr(broker, "replay_events", None)
    if replay is not None:  # a venue that keeps its events (the simulated broker): exact fills
        for ev in replay():
            if ledger.intent(ev.order.client_order_id) is None:
                continue
            rep.missed_fills += ledger.apply_order(
                session_id, ev.order, event=ev.event, ts=ev.ts, execution_id=ev.execution_id,
                price=ev.price, qty=ev.qty, commission=ev.commission, venue=venue,
            )  # fmt: skip
    for o in ledger.orders(session_id, open_only=True):
        try:
            fresh = by_id.get(o.id) or broker.get_order(o.id)
        except NotFound:
            log.warning(
                "order %s (%s) is open in the ledger but unknown to the broker",
                o.id,
                o.client_order_id,
            )
            continue
        rep.refreshed += 1
        rep.missed_fills += ledger.apply_order(session_id, fresh, event="rest", ts=now, venue=venue)
    # 3. open orders the ledger does not know
    for o in broker.open_orders():
        known = ledger.order(o.id) is not None or ledger.intent(o.client_order_id) is not None
        if known:
            continue
        action = cfg.orphan_orders
        if action == "cancel":
            try:
                broker.cancel(o.id)
            except BrokerError as exc:
                log.warning("could not cancel orphan order %s: %s", o.id, exc)
                action = "halt"
        elif action == "adopt":
            ledger.apply_order(session_id, o, event="adopted", ts=now, venue=venue)
        rep.orphans.append((o.id, o.symbol, action))
    # 4. positions
    mine = ledger.positions(session_id)
    theirs = {p.symbol: p.qty for p in broker.positions()}
    for sym in sorted(set(mine) | set(theirs)):
        a, b = mine.get(sym, 0.0), theirs.get(sym, 0.0)
        if abs(a - b) > cfg.qty_tolerance:
            rep.mismatches.append({"symbol": sym, "ledger": a, "broker": b, "diff": b - a})
    if rep.mismatches:
        log.error("reconcile: %s", rep.reason)
    return rep
