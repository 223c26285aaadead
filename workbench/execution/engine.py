"""The trading-session engine: bars in, orders out, through the ledger, crash-safe and resumable.

Per bar ``t`` (the backtest kernel's order):

1. a simulated venue matches its working orders against bar ``t`` (orders decided at an earlier
   close fill at ``t``'s open);
2. broker events are recorded in the ledger, which derives fills from cumulative filled
   quantities (replayed events and REST reads dedupe); the fills are *booked* at ``t`` and the
   risk engine applies them; remainders of orders that ended unfilled are released;
3. the feature engine takes bar ``t``; the model predicts the rows whose features are complete;
4. the :class:`~workbench.risk.engine.RiskEngine` marks, checks the kill switch and decides with
   the strategy's :class:`~workbench.risk.RiskPolicy` (the backtest's functions);
5. the :class:`~workbench.execution.policy.ExecutionPolicy` turns each decided change into
   orders; each is committed to the ledger as an intent (write-ahead) before it is sent under a
   client order id derived from (strategy, session, sequence);
6. in replay against a real broker API, the engine waits (``settle_seconds``) for the bar's orders
   to finish, so a replay does not outrun the broker;
7. the bar is recorded as processed.

**Restart.** A session id is derived from (strategy, date, broker, mode). A restarted session
reconciles the ledger with the broker, then replays its bars from the start: bars already
processed re-run the features, model and risk engine with the fills the ledger booked at each
of them, without sending anything (their intents exist); the first unprocessed bar resumes
normal work, re-deriving the same intents (same ids) and sending only those the broker does not
have. The outcome equals an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl

from workbench.config import ReconcileConfig
from workbench.data.assets import AssetFacts
from workbench.errors import ConfigError, StoreError
from workbench.execution import failpoints
from workbench.execution.broker import Broker, BrokerError, OrderRefused, OutcomeUnknown
from workbench.execution.clock import Clock, ReplayClock
from workbench.execution.ledger import OrderLedger, SessionRecord
from workbench.execution.orders import (
    BrokerOrder,
    Fill,
    OrderRequest,
    OrderRuleError,
    Side,
    check_request,
    client_order_id,
)
from workbench.execution.policy import ExecutionPolicy, Planned, WorkingOrder
from workbench.execution.reconcile import ReconcileReport, reconcile
from workbench.risk.engine import FillEvent, RiskEngine
from workbench.risk.policy import RiskPolicy

if TYPE_CHECKING:
    from workbench.risk.state import KillSwitchStore

log = logging.getLogger("workbench.execution.session")

_TS = pl.Datetime("us", "UTC")


class FeatureUpdater(Protocol):
    """Anything that turns newly arrived bars into the feature rows of those bars."""

    def update(self, bars: pl.DataFrame) -> pl.DataFrame: ...


class SessionObserver(Protocol):
    """Watches a session (metrics, monitoring): called once per bar and on orders sent, orders
    refused, fills and the finish. Its errors are logged and never change what the session does.

    ``on_bar(engine, t, bars, features, predictions, orders, timing)``: ``features`` are the rows
    the model read at ``t``, ``timing`` the bar's :class:`BarTiming` (None for a bar a restart
    replays); ``on_submit(engine, request)``; ``on_refused(engine, client_order_id, why)``;
    ``on_fills(engine, fills)``; ``on_finish(engine, result)``.
    """

    def on_bar(self, engine: Any, t: datetime, bars: pl.DataFrame, features: pl.DataFrame,
               predictions: dict, orders: dict, timing: Any) -> None: ...  # fmt: skip


class SessionHalted(BrokerError):
    """The session stopped itself (reconcile mismatch, replay divergence): it must not trade."""


def session_id(strategy: str, session_date: date, broker: str, mode: str) -> str:
    """The id of one strategy's session on one broker and mode (a restart re-derives it)."""
    return f"{strategy}:{session_date.isoformat()}:{broker}:{mode}"


@dataclass
class SessionResult:
    """Fills, per-bar PnL, every decision, the risk engine's orders, denials and trip, the
    broker orders sent, and what reconcile found at start."""

    fills: pl.DataFrame
    pnl: pl.DataFrame
    decisions: pl.DataFrame
    orders: pl.DataFrame
    rejections: pl.DataFrame
    kill_switch: pl.DataFrame
    broker_orders: pl.DataFrame = field(default_factory=pl.DataFrame)
    reconcile: ReconcileReport | None = None
    status: str = "done"

    @property
    def net_pnl(self) -> float:
        return float(self.pnl["pnl"].sum()) if self.pnl.height else 0.0


@dataclass
class _Work:
    """A committed intent waiting to be sent (for cancels to be confirmed, a close to fill, a
    slot)."""

    request: OrderRequest
    bar_ts: datetime
    seq: int


@dataclass(frozen=True)
class BarTiming:
    """Where one live bar's time went (seconds, ``time.perf_counter``).

    ``decision_latency`` is bar in -> orders out: the broker's events recorded and booked, then
    features, model, risk and execution policy, the intents committed (durably) and every order
    handed to the broker. ``venue`` is a simulated venue matching the bar (an exchange's work,
    not the session's); ``after`` is what follows the orders (acknowledgements recorded, working
    orders managed, progress).
    """

    ts: datetime
    orders: int
    venue: float
    record: float  # broker events recorded, fills and releases booked
    decide: float  # features, model, risk engine
    send: float  # execution plans, intents committed, orders sent
    after: float
    broker: float = 0.0  # of record + send: inside the broker's calls (events, submit)

    @property
    def decision_latency(self) -> float:
        return self.record + self.decide + self.send

    @property
    def session_latency(self) -> float:
        """The decision latency less the broker's own time (its calls' work)."""
        return self.decision_latency - self.broker

    @property
    def total(self) -> float:
        return self.venue + self.decision_latency + self.after


class SessionEngine:
    """One strategy's trading session on one broker (see the module doc).

    Parameters
    ----------
    session_id : str
        From :func:`session_id`.
    policy : RiskPolicy
        The strategy's risk policy (the one its backtest and gates used).
    symbols : list of str
    features, predict, feature_names
        Incremental feature engine, rows -> predictions, and the columns the model reads.
    broker : Broker
    ledger : OrderLedger
    execution : ExecutionPolicy
    clock : Clock
        :class:`ReplayClock` (default) or :class:`WallClock`.
    killswitch : KillSwitchStore, optional
    assets : mapping, optional
    settle_seconds : float or None
        Replay against a broker API: wait up to this long after each bar for its orders to end.
    on_shutdown : 'keep' | 'flatten'
    reconcile_config : ReconcileConfig
    health_path : Path, optional
        Where the health status is written (JSON, atomically) after each bar.
    observer : SessionObserver, optional
        Metrics and monitoring (:class:`workbench.monitoring.session.SessionMonitor`).
    borrow_bps_annual : float, optional
        Borrow the risk book charges on shorts (default: the broker's ``costs`` when it has them,
        as the simulated venue does; else 0).
    """

    def __init__(
        self,
        *,
        session_id: str,
        policy: RiskPolicy,
        symbols: list[str],
        features: FeatureUpdater,
        predict: Callable[[pl.DataFrame], np.ndarray],
        feature_names: list[str],
        broker: Broker,
        ledger: OrderLedger,
        execution: ExecutionPolicy,
        session_date: date,
        mode: str = "replay",
        clock: Clock | None = None,
        killswitch: KillSwitchStore | None = None,
        assets: Mapping[str, AssetFacts] | None = None,
        settle_seconds: float | None = None,
        on_shutdown: str = "keep",
        reconcile_config: ReconcileConfig | None = None,
        health_path: Path | None = None,
        model: str = "",
        observer: SessionObserver | None = None,
        borrow_bps_annual: float | None = None,
    ) -> None:
        self.session_id = session_id
        self.borrow_bps_annual = borrow_bps_annual
        self.observer = observer
        self.model = model
        self.policy = policy
        self.symbols = sorted(symbols)
        self.features = features
        self.predict = predict
        self.feature_names = feature_names
        self.broker = broker
        self.ledger = ledger
        self.execution = execution
        self.session_date = session_date
        self.mode = mode
        self.clock = clock or ReplayClock()
        self.killswitch = killswitch
        self.assets = assets
        self.settle_seconds = settle_seconds
        self.on_shutdown = on_shutdown
        self.reconcile_config = reconcile_config or ReconcileConfig()
        self.health_path = health_path
        self.venue = getattr(broker, "venue", broker.name)
        self.stop_requested = False
        self.risk: RiskEngine | None = None
        self.report: ReconcileReport | None = None
        self._done_until: datetime | None = None
        self._seq = 0
        self._waiting: list[_Work] = []
        self._sent_at: dict[str, datetime] = {}
        self._released: set[str] = set()
        self._decisions: list[dict] = []
        self._pnl: list[dict] = []
        self._last: dict[str, float] = {}
        self._equity0: float | None = None
        self._prev_equity: float | None = None
        self._last_bar: datetime | None = None
        self._last_ok: float | None = None
        self.status = "running"
        self._salt = ""
        self._resumed = False
        self._prior: list[tuple[datetime, int]] = []
        self._unknown: set[str] = set()
        self._touched: set[str] = set()
        self._refused: set[str] = set()
        self._kind: dict[str, str] = {}
        self._queued: set[str] = set()
        self._pos: dict[str, float] = {}
        self._bar_px: dict[tuple[str, datetime], tuple[float, float]] = {}
        self.timings: list[BarTiming] = []  # one per live bar
        self._t_sent = 0.0
        self._in_broker = 0.0  # seconds inside broker calls on the decision path, this bar

    # ------------------------------------------------------------------ start

    def start(self, history: pl.DataFrame, *, strategy: str, broker_name: str) -> ReconcileReport:
        """Open (or re-open) the session in the ledger, reconcile, warm the engines up.

        Raises :class:`SessionHalted` on an unexplained mismatch (after tripping the kill switch).
        """
        now = self.clock.now()
        acct = self.broker.account()
        rec = self.ledger.open_session(
            self.session_id, strategy=strategy, broker=broker_name, mode=self.mode,
            session_date=self.session_date,
            params={
                "symbols": self.symbols, "initial_cash": acct.cash, "endpoint": acct.endpoint,
                "model": self.model,
            },
        )  # fmt: skip
        first = rec.params or {}
        if first.get("model", "") != self.model or list(first.get("symbols", [])) != self.symbols:
            raise ConfigError(
                f"session {self.session_id} in ledger {self.ledger.url} was traded with model "
                f"{first.get('model')!r} on {first.get('symbols')}; this run has {self.model!r} on "
                f"{self.symbols}. A restart must use the same arguments. Fix: pass the same "
                "--model/--symbols, or use a new ledger (--ledger) for a new session."
            )
        # ids are unique per ledger session: a rehearsal re-run on a fresh ledger gets new ones
        self._salt = f"{self.session_id}|{rec.started_at.isoformat()}"
        self._done_until = rec.last_bar_ts
        prev = self._previous(strategy, broker_name)
        first_open = self.ledger.snapshot(self.session_id, "start") is None
        if first_open:
            carried = self.ledger.snapshot(prev.session_id, "end") if prev is not None else None
            self.ledger.snapshot_positions(self.session_id, carried or {}, kind="start", ts=now)
        self.report = reconcile(
            self.ledger, self.broker, self.session_id, now=now,
            config=self.reconcile_config, venue=self.venue,
        )  # fmt: skip
        if not self.report.ok:
            self._halt(self.report.reason, strategy)
        self._prior = [(i.bar_ts, i.seq) for i in self.ledger.intents(self.session_id)]
        self._pos = dict(self.ledger.positions(self.session_id))
        self.risk = RiskEngine(
            self.policy, self.symbols, initial_cash=float(rec.params["initial_cash"]),
            assets=self.assets, store=None, borrow_bps_annual=self._borrow_bps(),
        )  # fmt: skip
        if self._done_until is None and self.killswitch is not None:
            self.risk.attach_store(self.killswitch)
        if history.height:
            self.features.update(history)
            self.risk.warm(history)
        if prev is not None:
            self._carry_in(prev.session_id, now, float(rec.params["initial_cash"]))
        self._last_ok = time.monotonic()
        return self.report

    def _borrow_bps(self) -> float:
        """The borrow rate the book charges: given, else the venue's cost config (the simulated
        venue charges the backtest's), else none (a broker account charges its own)."""
        if self.borrow_bps_annual is not None:
            return float(self.borrow_bps_annual)
        costs = getattr(self.broker, "costs", None)
        return float(getattr(costs, "borrow_bps_annual", 0.0) or 0.0)

    def _previous(self, strategy: str, broker_name: str) -> SessionRecord | None:
        """The strategy's latest earlier session on this broker and mode that ended (has an end
        snapshot): the one this session continues from."""
        prev = [
            s
            for s in self.ledger.sessions(strategy)
            if s.session_id != self.session_id and s.broker == broker_name and s.mode == self.mode
            and s.session_date < self.session_date
        ]  # fmt: skip
        for s in sorted(prev, key=lambda s: s.session_date, reverse=True):
            if self.ledger.snapshot(s.session_id, "end") is not None:
                return s
        return None

    def _carry_in(self, prev_id: str, now: datetime, cash: float) -> None:
        """Continue from session ``prev_id``: its book and the orders it decided at its last bar.

        Those orders are still working at the broker (a market order sent after the close fills
        at the next open, as the backtest fills it). Each becomes an intent of this session
        (``carry``: committed before anything is sent; its old order is cancelled, confirmed,
        and the remainder sent under this session's id), so this session owns their fills. A
        restart finds the carry intents in the ledger and carries nothing twice. The risk engine
        then starts from the book ``prev_id`` recorded at its end (:meth:`RiskEngine.restore_state`),
        with this session's starting cash and positions and the carried orders pending.
        """
        risk = self.risk
        assert risk is not None
        mine = self.ledger.intents(self.session_id)
        taken = {oid for i in mine if i.request.intent == "carry" for oid in i.request.after_cancel}
        plans = []
        for o in self.ledger.orders(prev_id, open_only=True):
            if o.id in taken or o.symbol not in risk.col or o.remaining <= 1e-9:
                continue
            it = self.ledger.intent(o.client_order_id)
            signed = o.remaining if o.side is Side.BUY else -o.remaining
            decided = (it.request.decided_at if it is not None else None) or now
            reduce_only = bool(it is not None and it.request.reduce_only)
            plans.append(
                Planned(
                    o.symbol,
                    signed,
                    type=o.type,
                    limit_price=o.limit_price,
                    intent="carry",
                    reduce_only=reduce_only,
                    decided_at=decided,
                    after_cancel=(o.id,),
                )
            )
        if plans:
            t = min(p.decided_at for p in plans if p.decided_at is not None)
            self._seq = max((q for _, q in self._prior), default=-1) + 1
            self._commit_plans(plans, t)
            mine = self.ledger.intents(self.session_id)
            self._prior = [(i.bar_ts, i.seq) for i in mine]
        pending: dict[str, float] = {}
        for i in mine:
            if i.request.intent == "carry" and i.state not in ("refused",):
                q = i.request.qty or 0.0
                pending[i.request.symbol] = pending.get(i.request.symbol, 0.0) + (
                    q if i.request.side is Side.BUY else -q
                )
        state = self.ledger.engine_state(prev_id) or {"version": 1, "policy": self.policy.name}
        start = self.ledger.snapshot(self.session_id, "start") or {}
        for w in risk.restore_state(state, cash=cash, positions=start, pending=pending):
            log.warning("session %s: %s", self.session_id, w)
        if self._done_until is None and plans:  # first open: out before the first bar
            deadline = time.monotonic() + (self.settle_seconds or 5.0)
            self._flush_waiting()
            while self._waiting and time.monotonic() < deadline:
                self._drain()
                self._flush_waiting()
                if self._waiting:
                    time.sleep(0.02)

    def _halt(self, reason: str, strategy: str) -> None:
        self.ledger.set_status(self.session_id, "halted", reason)
        self.status = "halted"
        if self.killswitch is not None:
            self.killswitch.trip(
                strategy, rule="reconcile", reason=reason,
                values={"mismatches": self.report.mismatches if self.report else []},
            )  # fmt: skip
        log.error("session %s halted: %s", self.session_id, reason)
        raise SessionHalted(
            f"session {self.session_id} halted: {reason}. The kill switch is tripped. Fix: "
            "find out where the difference comes from (orders placed outside the workbench, a "
            "manual trade), bring the account back to the ledger's positions (or flatten it), "
            f"then `wb risk rearm {strategy}` and run again."
        )

    # ------------------------------------------------------------------ per bar

    def _batch(self, *, durable: bool) -> Any:
        """One ledger transaction: durable for intents (flushed before their orders are sent),
        not for what the broker knows too (events, acknowledgements, bookings, progress: a
        power cut may lose the last of those, and reconcile asks the broker again)."""
        batch = getattr(self.ledger, "batch", None)
        return batch(durable=durable) if batch is not None else contextlib.nullcontext()

    def step(self, t: datetime, now: pl.DataFrame) -> dict[str, float]:
        """Process bar ``t`` (every symbol's bar of that timestamp); return the decided orders."""
        assert self.risk is not None, "call start() first"
        risk = self.risk
        catchup = self._done_until is not None and t <= self._done_until
        t_in = time.perf_counter()
        self._in_broker = 0.0
        on_bars = getattr(self.broker, "on_bars", None)
        if on_bars is not None:
            on_bars(now)
        t_venue = time.perf_counter()
        if catchup:
            fills = self.ledger.fills_booked_at(self.session_id, t)
            released = self.ledger.releases_booked_at(self.session_id, t)
        else:
            resumed = not self._resumed
            if resumed:  # the first bar this process works: everything may have changed
                self._resumed = True
                if self._done_until is not None and self.killswitch is not None:
                    risk.attach_store(self.killswitch)  # the store's state from now on
                self._done_until = None
                self._seq = max((s for b, s in self._prior if b < t), default=-1) + 1
                self._unknown = {
                    i.client_order_id
                    for i in self.ledger.intents(self.session_id, states=("pending",))
                }
                self._requeue()  # intents committed but never sent wait in the queue again
            with self._batch(durable=False):
                self._drain()
                # orders decided at this bar fill after its decision: booked at the next bar
                fills = self.ledger.book_fills(self.session_id, t, decided_before=t)
                released = self._book_releases(t, full=resumed)
        t_booked = time.perf_counter()
        risk.on_fills([FillEvent(f.symbol, f.qty, f.price, f.commission) for f in fills], t)
        for sym, qty in released:
            risk.release(sym, qty)
        feats = self.features.update(now)
        ready = (
            feats.filter(pl.col("ts") == t).drop_nulls(self.feature_names)
            if feats.height
            else feats
        )
        preds = (
            dict(zip(ready["symbol"].to_list(), self.predict(ready).tolist(), strict=True))
            if ready.height
            else {}
        )
        closes = dict(zip(now["symbol"].to_list(), now["close"].to_list(), strict=True))
        self._last.update(closes)
        for sym, o, c in now.select("symbol", "open", "close").iter_rows():
            self._bar_px[(sym, t)] = (o, c)
        self.clock.advance(t)
        stopping = self.stop_requested
        orders = risk.on_bar(t, now, preds)
        if catchup:
            self._seq = max(self._seq, max((s for b, s in self._prior if b <= t), default=-1) + 1)
        else:
            if stopping:  # graceful stop: no new entries; reduce-only orders still go out
                orders = {
                    s: q for s, q in orders.items()
                    if abs(risk.position(s) + q) < abs(risk.position(s))
                }  # fmt: skip
            t_decided = self._t_sent = time.perf_counter()
            self._send_decisions(t, orders)
            t_out = self._t_sent  # the last order handed to the broker
            in_broker = self._in_broker
            self._work_open_orders(t)
            self._settle()
        self._record_bar(t, closes, preds, orders)
        if not catchup:
            failpoints.hit("bar.before_progress")
            with self._batch(durable=False):
                self.ledger.set_progress(self.session_id, t)
            self._write_health()
            for store in (self.ledger, self.broker):  # off the decision path (see checkpoint)
                checkpoint = getattr(store, "checkpoint", None)
                if checkpoint is not None:
                    checkpoint()
            self.timings.append(
                BarTiming(t, len(orders), t_venue - t_in, t_booked - t_venue,
                          t_decided - t_booked, t_out - t_decided, time.perf_counter() - t_out,
                          in_broker)
            )  # fmt: skip
        self._observe("on_bar", t, now, ready, preds, orders, None if catchup else self.timings[-1])
        return orders

    def _observe(self, event: str, *args: Any) -> None:
        """Tell the observer; its failures are logged, never raised (off the decision path)."""
        if self.observer is None:
            return
        hook = getattr(self.observer, event, None)
        if hook is None:
            return
        try:
            hook(self, *args)
        except Exception:
            log.exception("session observer %s failed (the session goes on)", event)

    def _note(self, fills: Iterable[Fill]) -> None:
        fills = list(fills)
        for f in fills:
            self._pos[f.symbol] = self._pos.get(f.symbol, 0.0) + f.qty
        if fills:
            self._observe("on_fills", fills)

    def _drain(self) -> list[Fill]:
        """Record the broker's events; return the fills they added."""
        new: list[Fill] = []
        try:
            b0 = time.perf_counter()
            events = self.broker.events()
            self._in_broker += time.perf_counter() - b0
            self._last_ok = time.monotonic()
        except BrokerError as exc:
            log.warning("reading broker events failed: %s", exc)
            return new
        if not events:
            return new
        with self._batch(durable=False):
            for ev in events:
                if ev.qty:
                    failpoints.hit("fill.before_record")
                got = self.ledger.apply_order(
                    self.session_id, ev.order, event=ev.event, ts=ev.ts,
                    execution_id=ev.execution_id, price=ev.price, qty=ev.qty,
                    commission=ev.commission, venue=self.venue,
                )  # fmt: skip
                self._touched.add(ev.order.id)
                self._note(got)
                new += got
                if ev.qty:
                    failpoints.hit("fill.after_record")
        return new

    def _book_releases(self, t: datetime, *, full: bool) -> list[tuple[str, float]]:
        """Remainders of this session's orders that ended unfilled, booked at bar ``t``.

        A remainder that a fallback or stale re-send carries over was booked with qty 0 when
        that order was planned (the pending quantity moves to the new order).
        """
        if full:
            orders = self.ledger.orders(self.session_id)
            refused = [i for i in self.ledger.intents(self.session_id, states=("refused",))]
        else:
            orders = [o for oid in self._touched if (o := self.ledger.order(oid)) is not None]
            refused = [i for c in self._refused if (i := self.ledger.intent(c)) is not None]
        self._touched.clear()
        self._refused.clear()
        later: set[str] = set()  # decided at this bar: released at the next, like their fills
        for o in orders:
            if not o.is_terminal or o.replaced_by or o.id in self._released:
                continue
            it = self.ledger.intent(o.client_order_id)
            if it is not None and it.bar_ts >= t:
                later.add(o.id)
                continue
            self._released.add(o.id)
            rest = o.remaining
            if rest > 1e-9 and it is not None:
                signed = rest if o.side is Side.BUY else -rest
                self.ledger.book_release(self.session_id, o.id, o.symbol, signed, t)
        for it in refused:
            key = f"refused:{it.client_order_id}"
            if it.bar_ts >= t:
                self._refused.add(it.client_order_id)
                continue
            if key not in self._released:
                self._released.add(key)
                self.ledger.book_release(self.session_id, key, it.symbol, it.request.signed_qty, t)
        self._touched |= later
        return self.ledger.releases_booked_at(self.session_id, t)

    # ------------------------------------------------------------------ sending

    def _working(self) -> dict[str, list[WorkingOrder]]:
        out: dict[str, list[WorkingOrder]] = {}
        for o in self.ledger.orders(self.session_id, open_only=True):
            kind = self._kind.get(o.client_order_id)
            if kind is None:
                it = self.ledger.intent(o.client_order_id)
                kind = self._kind[o.client_order_id] = it.request.intent if it else "external"
            sent = self._sent_at.get(o.client_order_id, self.clock.now())
            out.setdefault(o.symbol, []).append(WorkingOrder(o, sent, kind))
        return out

    def _send_decisions(self, t: datetime, orders: Mapping[str, float]) -> None:
        risk = self.risk
        assert risk is not None
        working = self._working() if orders else {}
        plans: list[Planned] = []
        for sym, delta in orders.items():
            plans += self.execution.plan(
                sym, delta, position=risk.position(sym), price=self._last.get(sym, float("nan")),
                atr=risk.atr(sym), working=working.get(sym, []), decided_at=t,
            )  # fmt: skip
        self._commit_plans(plans, t)
        self._flush_waiting()

    def _commit_plans(self, plans: list[Planned], t: datetime) -> list[str]:
        """Give each plan its sequence number and client order id and commit it as an intent
        (one transaction, before anything of it is sent); queue it for sending.

        Every order is an intent from the bar that planned it, also one that must wait (the open
        of a flip waits for the close to fill; a re-send waits for its cancel): a restart finds
        them in the ledger, in their order, with their ids.
        """
        if not plans:
            return []
        cids = []
        if getattr(self.ledger, "in_batch", False):  # pragma: no cover - a programming error
            raise RuntimeError("intents are committed on their own, never inside a batch")
        failpoints.hit("intent.before_commit")
        with self._batch(durable=True):
            for plan in plans:
                if plan.decided_at is None:
                    plan = replace(plan, decided_at=t)
                seq = self._seq
                self._seq += 1
                cid = client_order_id(
                    self.policy.name, f"{self.session_date:%Y%m%d}", seq, salt=self._salt
                )
                req = plan.request(cid)
                try:
                    rec = self.ledger.add_intent(self.session_id, seq, req, bar_ts=t)
                except StoreError as exc:  # a resumed bar decided differently: never guess
                    self._halt(f"replay diverged from the ledger at {t}: {exc}", self.policy.name)
                self._kind[cid] = req.intent
                cids.append(cid)
                if rec.state in ("pending", "not_found") and cid not in self._queued:
                    self._queued.add(cid)
                    self._waiting.append(_Work(rec.request, t, seq))
        return cids

    def _requeue(self) -> None:
        """After a restart: intents committed but never sent (reconcile found them nowhere) go
        back in the queue, in sequence order."""
        for it in self.ledger.intents(self.session_id, states=("not_found",)):
            if it.client_order_id not in self._queued:
                self._queued.add(it.client_order_id)
                self._kind[it.client_order_id] = it.request.intent
                self._waiting.append(_Work(it.request, it.bar_ts, it.seq))
        self._waiting.sort(key=lambda w: w.seq)

    def _flush_waiting(self) -> None:
        """Send queued intents whose cancels are confirmed, while slots are free."""
        if not self._waiting:
            return
        n_open = len(self.ledger.orders(self.session_id, open_only=True))
        keep: list[_Work] = []
        ready: list[OrderRequest] = []
        for w in self._waiting:
            req = w.request
            if any(not self._terminal(oid) for oid in req.after_cancel):
                for oid in req.after_cancel:
                    self._cancel(oid)
                keep.append(w)
                continue
            if req.intent == "flip_open" and self._flip_pending(req):
                keep.append(w)  # the close must fill first
                continue
            if req.intent in ("fallback", "stale_resend", "carry"):
                old = self.ledger.order(req.after_cancel[0])
                rest = old.remaining if old is not None else 0.0
                if rest <= 1e-9:  # it filled before the cancel landed: nothing left to send
                    self._refuse(
                        req.client_order_id, "nothing left: the order filled before its cancel"
                    )
                    continue
                if rest < (req.qty or 0.0) - 1e-9:  # a partial fill raced the cancel
                    req = replace(req, qty=rest)
            if self.execution.slots(n_open + len(ready)) <= 0:
                keep.append(w)
                continue
            ready.append(req)
        self._waiting = keep
        if ready:
            self._submit(ready)

    def _refuse(self, cid: str, why: str) -> None:
        self.ledger.mark_refused(cid, why)
        self._refused.add(cid)
        self._queued.discard(cid)
        self._observe("on_refused", cid, why)

    def _flip_pending(self, req: OrderRequest) -> bool:
        pos = self._pos.get(req.symbol, 0.0)  # filled, now
        return abs(pos) > 1e-9 and pos * req.signed_qty < 0

    def _terminal(self, order_id: str) -> bool:
        o = self.ledger.order(order_id)
        return o is None or o.is_terminal

    def _cancel(self, order_id: str) -> None:
        try:
            self.broker.cancel(order_id)
        except BrokerError as exc:
            log.warning("cancel %s: %s", order_id, exc)

    def _submit(self, requests: list[OrderRequest]) -> list[str]:
        """Send committed intents; record the broker's answers (acks in one transaction)."""
        now = self.clock.now()
        out: list[str] = []
        acks: list[tuple[str, BrokerOrder]] = []
        venue_batch = getattr(self.broker, "batch", None)
        with venue_batch() if venue_batch is not None else contextlib.nullcontext():
            self._submit_each(requests, now, out, acks)
            b0 = time.perf_counter()
        self._t_sent = time.perf_counter()
        self._in_broker += self._t_sent - b0  # the venue's commit of the batch
        if acks:
            with self._batch(durable=False):
                for cid, order in acks:
                    self._note(self.ledger.mark_acked(cid, order, now))
                    self._touched.add(order.id)
        return out

    def _submit_each(
        self, requests: list[OrderRequest], now: datetime, out: list[str],
        acks: list[tuple[str, BrokerOrder]],
    ) -> None:  # fmt: skip
        for req in requests:
            cid = req.client_order_id
            facts = (self.assets or {}).get(req.symbol)
            try:
                check_request(
                    req, self.broker.capabilities, position=self._pos.get(req.symbol, 0.0),
                    fractionable=facts.fractionable if facts else True,
                    shortable=(facts.shortable and facts.easy_to_borrow) if facts else True,
                )  # fmt: skip
            except OrderRuleError as exc:
                self._refuse(cid, str(exc))
                log.warning("%s", exc)
                continue
            self._sent_at[cid] = now
            failpoints.hit("intent.after_commit")
            s0 = time.perf_counter()
            try:
                order = self.broker.submit(req)
            except OrderRefused as exc:
                self._refuse(cid, str(exc))
                log.warning("order %s refused: %s", cid, exc)
                continue
            except OutcomeUnknown as exc:
                log.warning("order %s outcome unknown (%s); resolving by client order id", cid, exc)
                self._unknown.add(cid)
                self._queued.discard(cid)
                out.append(cid)
                continue
            finally:
                self._in_broker += time.perf_counter() - s0
            self._last_ok = time.monotonic()
            failpoints.hit("submit.after_accept")
            self._observe("on_submit", req)
            acks.append((cid, order))
            self._queued.discard(cid)
            out.append(cid)

    def _resolve_pending(self) -> None:
        """Ask the broker about intents of unknown outcome, by client order id."""
        for cid in sorted(self._unknown):
            try:
                order = self.broker.get_order_by_client_id(cid)
            except BrokerError:
                continue
            if order is not None:
                self._note(self.ledger.mark_acked(cid, order, self.clock.now()))
                self._touched.add(order.id)
                self._unknown.discard(cid)

    def _work_open_orders(self, t: datetime) -> None:
        with self._batch(durable=False):
            # the events of the orders just sent (their acceptance) are recorded here, after
            # the orders are out, not at the start of the next bar, on its decision path
            self._drain()
            self._resolve_pending()
            working = [w for ws in self._working().values() for w in ws]
            plans = self.execution.manage(working, self.clock.now(), self._last)
            for p in plans:
                # the remainder's pending quantity moves to the re-sent order: nothing to release
                self.ledger.book_release(self.session_id, p.after_cancel[0], p.symbol, 0.0, t)
                self._released.add(p.after_cancel[0])
        self._commit_plans(plans, t)
        self._flush_waiting()

    def _settle(self) -> None:
        """Replay against a broker API: wait for this bar's orders to end (bounded)."""
        if self.settle_seconds is None or getattr(self.broker, "on_bars", None) is not None:
            return
        deadline = time.monotonic() + self.settle_seconds
        while time.monotonic() < deadline:
            self._drain()
            self._resolve_pending()
            self._flush_waiting()
            if (
                not self._waiting
                and not self._unknown
                and not self.ledger.orders(self.session_id, open_only=True)
            ):
                return
            time.sleep(0.02)
        for o in self.ledger.orders(self.session_id, open_only=True):  # REST is the truth
            try:
                fresh = self.broker.get_order(o.id)
            except BrokerError:
                continue
            self._note(
                self.ledger.apply_order(
                    self.session_id, fresh, event="rest", ts=self.clock.now(), venue=self.venue
                )
            )
            self._touched.add(fresh.id)

    # ------------------------------------------------------------------ records

    def _record_bar(self, t: datetime, closes: dict[str, float], preds: dict, orders: dict) -> None:
        risk = self.risk
        assert risk is not None
        for sym in closes:
            self._decisions.append(
                {
                    "ts": t,
                    "symbol": sym,
                    "prediction": preds.get(sym),
                    "position": risk.position(sym),
                    "order_qty": orders.get(sym, 0.0),
                }
            )
        equity = risk.equity
        if self._equity0 is None:
            self._equity0 = self._prev_equity = equity
        gross = sum(abs(risk.position(s)) * self._last.get(s, 0.0) for s in self.symbols)
        self._pnl.append(
            {
                "ts": t,
                "equity": equity,
                "cash": float(risk.g[0]),
                "gross_exposure": gross,
                "pnl": equity - (self._prev_equity or equity),
                "cum_pnl": equity - self._equity0,
            }
        )
        self._prev_equity = equity
        self._last_bar = t

    def health(self) -> dict[str, Any]:
        """Last bar age, broker reachability, stream state, open orders, positions, PnL, kill switch."""
        risk = self.risk
        now = self.clock.now()
        return {
            "session_id": self.session_id,
            "status": self.status,
            "last_bar": self._last_bar.isoformat() if self._last_bar else None,
            "last_bar_age_seconds": (now - self._last_bar).total_seconds()
            if self._last_bar
            else None,
            "broker": self.broker.name,
            "broker_reachable": self._last_ok is not None
            and time.monotonic() - self._last_ok < 120,
            "stream": getattr(self.broker, "stream_state", "n/a"),
            "open_orders": len(self.ledger.orders(self.session_id, open_only=True)),
            "positions": {s: q for s, q in (risk.positions() if risk else {}).items() if q},
            "equity": risk.equity if risk else None,
            "pnl": (risk.equity - self._equity0) if risk and self._equity0 is not None else 0.0,
            "kill_switch": "halted" if risk and risk.halted else "armed",
        }

    def _write_health(self) -> None:
        if self.health_path is None:
            return
        self.health_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.health_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.health(), default=str, indent=1))
        os.replace(tmp, self.health_path)

    # ------------------------------------------------------------------ end

    def request_stop(self) -> None:
        """Ask for a graceful stop after the current bar (the SIGTERM/SIGINT handler)."""
        self.stop_requested = True

    def shutdown(self, reason: str = "stop requested") -> None:
        """Graceful stop: cancel working entry orders (confirmed), keep or flatten protective
        orders and positions per ``on_shutdown``, persist, mark the session stopped."""
        for w in self._waiting:  # queued entries are never sent now
            if not w.request.reduce_only:
                self._refuse(w.request.client_order_id, "session stopped before it was sent")
        self._waiting = [w for w in self._waiting if w.request.reduce_only]
        for o in self.ledger.orders(self.session_id, open_only=True):
            it = self.ledger.intent(o.client_order_id)
            entry = it is not None and it.request.intent in ("entry", "flip_open", "fallback")
            if entry or self.on_shutdown == "flatten":
                self._cancel(o.id)
        deadline = time.monotonic() + (self.settle_seconds or 5.0)
        while time.monotonic() < deadline and self.ledger.orders(self.session_id, open_only=True):
            self._drain()
            for o in self.ledger.orders(self.session_id, open_only=True):
                with contextlib.suppress(BrokerError):
                    self.ledger.apply_order(
                        self.session_id,
                        self.broker.get_order(o.id),
                        event="rest",
                        ts=self.clock.now(),
                        venue=self.venue,
                    )
            time.sleep(0.05)
        if self.on_shutdown == "flatten":
            self.flatten()
        self.status = "stopped"
        self.ledger.set_status(self.session_id, "stopped", reason)
        self._write_health()

    def flatten(self) -> list[str]:
        """Send reduce-only market orders closing every position the ledger holds now."""
        self._drain()
        self._seq = max(self._seq, max((q for _, q in self._prior), default=-1) + 1)
        t = self.clock.now()
        plans = [
            Planned(sym, -q, intent="flatten", reduce_only=True, decided_at=t)
            for sym, q in sorted(self.ledger.positions(self.session_id).items())
            if abs(q) > 1e-9
        ]
        cids = self._commit_plans(plans, t)
        self._flush_waiting()
        return cids

    def finish(self) -> SessionResult:
        """Close the day: record the end snapshot and return the session's frames."""
        self._drain()
        if self._last_bar is not None:
            self.ledger.book_fills(self.session_id, self._last_bar)
        if self.status == "running":
            self.status = "done"
            self.ledger.set_status(self.session_id, "done")
        self.ledger.snapshot_positions(
            self.session_id, self.ledger.positions(self.session_id), kind="end", ts=self.clock.now()
        )
        if self.risk is not None:  # the next session of the strategy starts from this book
            self.ledger.save_engine_state(
                self.session_id, self.risk.export_state(), ts=self.clock.now()
            )
        self._write_health()
        res = self.result()
        self._observe("on_finish", res)
        return res

    def result(self) -> SessionResult:
        risk = self.risk
        assert risk is not None
        decisions = pl.DataFrame(
            self._decisions,
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
        frames = self.ledger.frames(self.session_id)
        return SessionResult(
            fills_frame(self._with_ref(f.fill) for f in self.ledger.fills(self.session_id)),
            pl.DataFrame(self._pnl, schema_overrides={"ts": _TS}),
            decisions,
            risk.orders(),
            rejections,
            risk.kill_switch(),
            frames.get("orders", pl.DataFrame()),
            self.report,
            self.status,
        )

    def _with_ref(self, f: Fill) -> Fill:
        """The fill with its reference price: the fill bar's open when it filled at a bar's
        open (the simulated venue), else the decision bar's close (the arrival price)."""
        if not math.isnan(f.ref_price):
            return f
        at = self._bar_px.get((f.symbol, f.ts))
        if at is not None:
            return replace(f, ref_price=at[0])
        dec = self._bar_px.get((f.symbol, f.decided_at)) if f.decided_at else None
        return replace(f, ref_price=dec[1]) if dec is not None else f

    # ------------------------------------------------------------------ async loop

    async def run(self, bars: Any) -> SessionResult:
        """Process ``bars`` (an async iterator of ``(ts, frame)``) until they end or a stop."""
        async for t, now in bars:
            await asyncio.to_thread(self.step, t, now)
            if self.stop_requested:
                await asyncio.to_thread(self.shutdown, "SIGTERM/SIGINT")
                break
        return await asyncio.to_thread(self.finish)


def fills_frame(fills: Iterable[Fill]) -> pl.DataFrame:
    """Fills as a frame (the columns notebooks and the divergence report read)."""
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
        "execution_id": pl.String,
        "venue": pl.String,
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
            "cost": f.cost if not math.isnan(f.ref_price) else f.commission,
            "execution_id": f.execution_id,
            "venue": f.venue,
        }
        for f in fills
    ]
    return pl.DataFrame(rows, schema=schema)


def broker_order_rows(orders: Iterable[BrokerOrder]) -> list[dict]:
    return [
        {
            "id": o.id,
            "client_order_id": o.client_order_id,
            "symbol": o.symbol,
            "side": o.side.value,
            "qty": o.qty,
            "filled_qty": o.filled_qty,
            "filled_avg_price": o.filled_avg_price,
            "status": o.status.value,
        }
        for o in orders
    ]
