"""Simulated venue: a broker that keeps its own orders, positions, cash and fills, matched on bars.

:class:`SimulatedBroker` implements :class:`workbench.execution.broker.Broker`. The session engine
submits orders and feeds bars (:meth:`SimulatedBroker.on_bars`); the venue matches working orders
against each bar and reports ``new`` / ``partial_fill`` / ``fill`` / ``canceled`` / ``expired`` /
``replaced`` / ``rejected`` events (:meth:`SimulatedBroker.events`). With ``state_url`` (a
SQLAlchemy URL, e.g. ``sqlite:///runs/sim_venue.db``) the venue's whole state is written in one
transaction after every command and every timestamp of bars (SQLite: WAL, ``synchronous=NORMAL``:
each commit survives a crash of the process, which is what the venue stands in for; a power cut may
lose its last commits, never half of one), so a session killed with SIGKILL and restarted finds the
venue as a real broker would.

Matching (bar ``ts`` of the order's symbol, the order's decision row = the symbol's last bar the
venue had processed when it accepted the order):

* an order accepted after the venue processed ``b`` bars of its symbol works from bar number
  ``b + latency_bars + 1`` on, and never at or before its ``decided_at``;
* market: the bar's open plus costs; limit buy (sell): when ``low <= limit`` (``high >= limit``) at
  ``min(open, limit)`` (``max(open, limit)``), commission only; stop buy (sell): triggered when
  ``high >= stop`` (``low <= stop``), fills at ``max(open, stop)`` (``min(open, stop)``) plus
  costs like a market order (later bars: the open plus costs); stop-limit: the trigger, then the
  limit rule from the trigger price (``min(max(open, stop), limit)`` for a buy);
* ``participation`` caps one bar's execution at ``floor(participation * volume)`` shares (at
  least 1 when the volume is positive); the rest works on later bars. The commission of an order
  is charged on its cumulative fills (``commission_min`` and ``commission_flat`` once per order);
* ``IOC``: whatever fills at the first eligible bar, the rest is canceled; ``DAY`` orders expire at
  :meth:`SimulatedBroker.expire_day` (or ``on_bars(..., end_of_day=True)``);
* bracket / OTO: the legs are ``held`` until the entry has filled completely, then work from the
  next bar (take-profit = limit, stop-loss = stop or stop-limit); OCO: both orders work at once.
  The first execution of one cancels its sibling; when both would trade in one bar the
  take-profit wins only if the bar opens through it, else the stop-loss (the pessimistic path).

Costs are the backtest's (``workbench/backtest``), input for input:

* market and stop executions go through :func:`workbench.backtest._kernels.fill_cost_nb` with the
  half-spread, volatility and volume estimates of the decision row (config half-spread, or the
  Corwin-Schultz EWMA of :func:`~workbench.backtest._kernels.estimates_nb` recomputed here bar by
  bar from O(1) state per symbol, falling back to ``half_spread_bps`` where it is NaN, as
  :meth:`CostModel.prepare` does) and the fill bar's time-of-day slippage
  (``slippage_bps * (1 + intraday_u_shape * U(ts))`` when the bars are intraday, as the backtest's
  ``slip_row``);
* borrow is charged at each timestamp's close on every short, ``-qty * last close * rate`` with
  ``rate = borrow_bps_annual * 1e-4 * days / 360`` and ``days`` the calendar time since the
  previous timestamp the venue saw (``borrow_by_row``); the venue's first timestamp accrues
  nothing (the backtest accrues its grid's smallest spacing there, but no fill can precede it).

Venue-side checks: rule breaks (:func:`~workbench.execution.orders.check_request`, duplicate
``client_order_id``) raise :class:`~workbench.execution.broker.OrderRefused`; a halted symbol, a sell
that opens a short in an asset whose facts say it is not shortable, and an order needing more
than the buying power (``margin * equity - gross exposure - open orders``; ``= cash`` for a
long-only cash account) are accepted and then rejected at once (``new`` then ``rejected`` events;
:meth:`SimulatedBroker.reason` says why), like a venue's asynchronous rejection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numba import njit

from workbench.backtest import _kernels as BK
from workbench.backtest.costs import u_shape
from workbench.config import CostsConfig
from workbench.data.assets import AssetFacts
from workbench.errors import ConfigError
from workbench.execution.broker import NotFound, OrderRefused, register_broker
from workbench.execution.orders import (
    Account,
    BrokerOrder,
    Capabilities,
    Fill,
    Leg,
    OrderClass,
    OrderEvent,
    OrderRequest,
    OrderRuleError,
    OrderStatus,
    OrderType,
    Position,
    Side,
    TimeInForce,
    check_request,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_DAY = 86_400_000_000
_N_SPACINGS = 64  # timestamp spacings kept to tell intraday from daily bars (median, as the grid)
_EPS = 1e-9
_WORKING = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.ACCEPTED})
_LIVE = _WORKING | {OrderStatus.HELD}
_SCHEMA_VERSION = 1

# estimator state per symbol: has_prev, prev_high, prev_low, prev_close, spread_ewm, ret2_ewm,
# volume_ewm, then the decision-row outputs half_spread, sigma, volume
_ST_N = 10


@njit(cache=True)
def _estimate_step_nb(st, h, lo, c, v, alpha):
    """One bar of :func:`workbench.backtest._kernels.estimates_nb` for one symbol, same arithmetic."""
    k = 3.0 - 2.0 * np.sqrt(2.0)
    vol_ewm = st[6]
    vol_ewm = v if np.isnan(vol_ewm) else vol_ewm + alpha * (v - vol_ewm)
    st[6] = vol_ewm
    st[9] = vol_ewm
    if st[0] > 0.0:
        r = np.log(c / st[3])
        v2_ewm = st[5]
        v2_ewm = r * r if np.isnan(v2_ewm) else v2_ewm + alpha * (r * r - v2_ewm)
        st[5] = v2_ewm
        st[8] = np.sqrt(v2_ewm)
        b1 = np.log(h / lo)
        b0 = np.log(st[1] / st[2])
        beta = b1 * b1 + b0 * b0
        hh = max(h, st[1])
        ll = min(lo, st[2])
        g = np.log(hh / ll)
        a = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / k - np.sqrt(g * g / k)
        s = 2.0 * (np.exp(a) - 1.0) / (1.0 + np.exp(a))
        s = max(s, 0.0)
        s_ewm = st[4]
        s_ewm = s if np.isnan(s_ewm) else s_ewm + alpha * (s - s_ewm)
        st[4] = s_ewm
        st[7] = 0.5 * s_ewm
    st[0] = 1.0
    st[1] = h
    st[2] = lo
    st[3] = c


def _us(ts: Any) -> int:
    """Microseconds since the epoch (UTC) of a datetime (naive = UTC), numpy datetime or int."""
    if isinstance(ts, datetime):
        t = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
        return (t - _EPOCH) // timedelta(microseconds=1)
    if isinstance(ts, np.datetime64):
        return int(ts.astype("datetime64[us]").astype(np.int64))
    return int(ts)


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _iso(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat()


def _from_iso(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


@dataclass(slots=True)
class _SymbolState:
    last_ts: int | None = None  # last bar processed (idempotency key with the symbol)
    n_bars: int = 0
    last_close: float = float("nan")
    est: list[float] = field(
        default_factory=lambda: [0.0] + [float("nan")] * (_ST_N - 1)
    )  # _estimate_step_nb state


@dataclass(slots=True)
class _Order:
    id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: float
    type: OrderType
    time_in_force: TimeInForce
    limit_price: float | None
    stop_price: float | None
    order_class: OrderClass
    status: OrderStatus
    seq: int
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None = None
    intent: str = "entry"
    sub_count: int = 0  # bars of the symbol processed when the order started working
    wait: int = 0  # latency in bars
    est: tuple[float, float, float] = (float("nan"),) * 3  # decision row half, sigma, volume
    filled_qty: float = 0.0
    filled_notional: float = 0.0
    commission: float = 0.0
    triggered: bool = False
    parent: str | None = None
    legs: list[str] = field(default_factory=list)
    sibling: str | None = None
    role: str = ""  # "", "take_profit", "stop_loss"
    replaces: str | None = None
    replaced_by: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]
        for k in ("created_at", "updated_at", "decided_at"):
            d[k] = _iso(d[k])
        d["est"] = list(self.est)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Order:
        kw = dict(d)
        kw["side"] = Side(kw["side"])
        kw["type"] = OrderType(kw["type"])
        kw["time_in_force"] = TimeInForce(kw["time_in_force"])
        kw["order_class"] = OrderClass(kw["order_class"])
        kw["status"] = OrderStatus(kw["status"])
        for k in ("created_at", "updated_at", "decided_at"):
            kw[k] = _from_iso(kw[k])
        kw["est"] = tuple(kw["est"])
        return cls(**kw)


def _bo_json(o: BrokerOrder) -> dict[str, Any]:
    d = {k: getattr(o, k) for k in BrokerOrder.__dataclass_fields__}
    for k in ("created_at", "updated_at"):
        d[k] = _iso(d[k])
    d["legs"] = [_bo_json(x) for x in o.legs]
    return d


def _bo_from(d: dict[str, Any]) -> BrokerOrder:
    kw = dict(d)
    kw["side"] = Side(kw["side"])
    kw["type"] = OrderType(kw["type"])
    kw["time_in_force"] = TimeInForce(kw["time_in_force"])
    kw["order_class"] = OrderClass(kw["order_class"])
    kw["status"] = OrderStatus(kw["status"])
    for k in ("created_at", "updated_at"):
        kw[k] = _from_iso(kw[k])
    kw["legs"] = tuple(_bo_from(x) for x in kw["legs"])
    return BrokerOrder(**kw)


def _event_json(e: OrderEvent) -> dict[str, Any]:
    d = {k: getattr(e, k) for k in OrderEvent.__dataclass_fields__}
    d["order"] = _bo_json(e.order)
    d["ts"] = _iso(e.ts)
    return d


def _event_from(d: dict[str, Any]) -> OrderEvent:
    kw = dict(d)
    kw["order"] = _bo_from(kw["order"])
    kw["ts"] = _from_iso(kw["ts"])
    kw = {k: v for k, v in kw.items() if k in OrderEvent.__dataclass_fields__}
    return OrderEvent(**kw)


def _fill_json(f: Fill) -> dict[str, Any]:
    d = {k: getattr(f, k) for k in Fill.__dataclass_fields__}
    d["ts"] = _iso(f.ts)
    d["decided_at"] = _iso(f.decided_at)
    return d


def _fill_from(d: dict[str, Any]) -> Fill:
    kw = dict(d)
    kw["ts"] = _from_iso(kw["ts"])
    kw["decided_at"] = _from_iso(kw["decided_at"])
    return Fill(**kw)


_JSON = json.JSONEncoder()  # json.dumps' defaults, one encoder

#: the automatic WAL checkpoint threshold (4 KiB pages); the session checkpoints after each bar
_WAL_AUTOCHECKPOINT_PAGES = 16_384
_WAL_CHECKPOINT_BYTES = 4 << 20  # checkpoint() runs once the log is this large


class _Store:
    """The venue's durable state in a SQLAlchemy database: one transaction per commit."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":

            @sa.event.listens_for(self.engine, "connect")
            def _connect(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.isolation_level = None  # SQLAlchemy issues BEGIN itself (below)
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # crash-safe; see above
                cur.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
                cur.execute("PRAGMA journal_size_limit=0")  # the log restarts empty (ledger.py)
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()

            @sa.event.listens_for(self.engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        md = sa.MetaData()
        self.meta = sa.Table(
            "sim_meta",
            md,
            sa.Column("key", sa.String, primary_key=True),
            sa.Column("value", sa.Text),
        )
        self.orders = sa.Table(
            "sim_orders",
            md,
            sa.Column("id", sa.String, primary_key=True),
            sa.Column("seq", sa.Integer, index=True),
            sa.Column("data", sa.Text),
        )
        self.fills = sa.Table(
            "sim_fills",
            md,
            sa.Column("seq", sa.Integer, primary_key=True),
            sa.Column("data", sa.Text),
        )
        self.events = sa.Table(
            "sim_events",
            md,
            sa.Column("seq", sa.Integer, primary_key=True),
            sa.Column("data", sa.Text),
        )
        self.borrow = sa.Table(
            "sim_borrow",
            md,
            sa.Column("seq", sa.Integer, primary_key=True),
            sa.Column("ts", sa.String),
            sa.Column("symbol", sa.String),
            sa.Column("amount", sa.Float),
        )
        md.create_all(self.engine)
        # statements built once (SQLAlchemy caches their compiled form by statement)
        self._del_state = self.meta.delete().where(self.meta.c.key == "state")
        self._ins_meta = self.meta.insert()
        self._del_orders = self.orders.delete().where(
            self.orders.c.id.in_(sa.bindparam("ids", expanding=True))
        )
        self._ins_orders = self.orders.insert()
        self._ins_fills = self.fills.insert()
        self._ins_events = self.events.insert()
        self._del_events = self.events.delete().where(self.events.c.seq <= sa.bindparam("upto"))
        self._ins_borrow = self.borrow.insert()
        url_obj = self.engine.url
        if url_obj.get_backend_name() == "sqlite":
            self.where = url_obj.database or ":memory:"
        else:
            self.where = url_obj.render_as_string(hide_password=True)

    def load(self) -> dict[str, Any] | None:
        sa = self.sa
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(self.meta.c.value).where(self.meta.c.key == "state")
            ).first()
            if row is None:
                return None
            orders = conn.execute(sa.select(self.orders.c.data).order_by(self.orders.c.seq)).all()
            fills = conn.execute(sa.select(self.fills.c.data).order_by(self.fills.c.seq)).all()
            events = conn.execute(
                sa.select(self.events.c.seq, self.events.c.data).order_by(self.events.c.seq)
            ).all()
            borrow = conn.execute(
                sa.select(self.borrow.c.ts, self.borrow.c.symbol, self.borrow.c.amount).order_by(
                    self.borrow.c.seq
                )
            ).all()
        return {
            "state": json.loads(row[0]),
            "orders": [json.loads(r[0]) for r in orders],
            "fills": [json.loads(r[0]) for r in fills],
            "events": [(int(r[0]), json.loads(r[1])) for r in events],
            "borrow": [(r[0], r[1], float(r[2])) for r in borrow],
        }

    def commit(
        self,
        state: dict[str, Any],
        orders: list[_Order],
        fills: list[tuple[int, Fill]],
        events: list[tuple[int, OrderEvent]],
        drained_to: int | None,
        borrow: list[tuple[int, datetime, str, float]],
    ) -> None:
        dumps = _JSON.encode
        if self.engine.dialect.name == "sqlite":
            self._commit_sqlite(state, orders, fills, events, drained_to, borrow)
            return
        with self.engine.begin() as conn:
            conn.execute(self._del_state)
            conn.execute(self._ins_meta, [{"key": "state", "value": dumps(state)}])
            if orders:
                conn.execute(self._del_orders, {"ids": [o.id for o in orders]})
                conn.execute(
                    self._ins_orders,
                    [{"id": o.id, "seq": o.seq, "data": dumps(o.to_json())} for o in orders],
                )
            if fills:
                conn.execute(
                    self._ins_fills, [{"seq": s, "data": dumps(_fill_json(f))} for s, f in fills]
                )
            if events:
                conn.execute(
                    self._ins_events,
                    [{"seq": s, "data": dumps(_event_json(e))} for s, e in events],
                )
            if drained_to is not None:
                conn.execute(self._del_events, {"upto": drained_to})
            if borrow:
                conn.execute(
                    self._ins_borrow,
                    [
                        {"seq": s, "ts": ts.isoformat(), "symbol": sym, "amount": a}
                        for s, ts, sym, a in borrow
                    ],
                )

    def _commit_sqlite(
        self,
        state: dict[str, Any],
        orders: list[_Order],
        fills: list[tuple[int, Fill]],
        events: list[tuple[int, OrderEvent]],
        drained_to: int | None,
        borrow: list[tuple[int, datetime, str, float]],
    ) -> None:
        """:meth:`commit` on SQLite, straight to the driver (the tables hold text and numbers:
        no conversions), in the transaction SQLAlchemy begins (``BEGIN IMMEDIATE``)."""
        dumps = _JSON.encode
        with self.engine.begin() as conn:
            cur = conn.connection.dbapi_connection.cursor()
            try:
                cur.execute(
                    "INSERT OR REPLACE INTO sim_meta (key, value) VALUES ('state', ?)",
                    (dumps(state),),
                )
                if orders:
                    cur.executemany(
                        "INSERT OR REPLACE INTO sim_orders (id, seq, data) VALUES (?, ?, ?)",
                        [(o.id, o.seq, dumps(o.to_json())) for o in orders],
                    )
                if fills:
                    cur.executemany(
                        "INSERT INTO sim_fills (seq, data) VALUES (?, ?)",
                        [(s, dumps(_fill_json(f))) for s, f in fills],
                    )
                if events:
                    cur.executemany(
                        "INSERT INTO sim_events (seq, data) VALUES (?, ?)",
                        [(s, dumps(_event_json(e))) for s, e in events],
                    )
                if drained_to is not None:
                    cur.execute("DELETE FROM sim_events WHERE seq <= ?", (drained_to,))
                if borrow:
                    cur.executemany(
                        "INSERT INTO sim_borrow (seq, ts, symbol, amount) VALUES (?, ?, ?, ?)",
                        [(s, ts.isoformat(), sym, a) for s, ts, sym, a in borrow],
                    )
            finally:
                cur.close()

    def checkpoint(self) -> None:
        if self.engine.dialect.name == "sqlite":
            db = self.engine.url.database
            if db and db != ":memory:":
                try:
                    if os.path.getsize(f"{db}-wal") < _WAL_CHECKPOINT_BYTES:
                        return
                except OSError:
                    return
            with self.engine.connect() as conn:
                conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.engine.dispose()


@register_broker("sim")
class SimulatedBroker:
    """A simulated venue matching orders on bars with the backtest's costs (see the module doc).

    Parameters
    ----------
    cash : float
        Starting cash (used only when the state store is new).
    costs : CostsConfig, optional
        The backtest's cost config (commission, half-spread, slippage, impact, borrow).
    state_url : str, optional
        SQLAlchemy URL of the durable venue state; None keeps it in memory.
    participation : float, optional
        Cap of one bar's execution as a fraction of the bar's volume.
    latency_bars : int
        Extra bars an order waits before it can trade.
    assets : Mapping[str, AssetFacts], optional
        Per-symbol facts (shortable, fractionable); unknown symbols are permissive.
    halted : Iterable[str]
        Symbols halted from the start (see :meth:`set_halted`).
    margin : float
        Buying-power multiple of equity, checked when an order is submitted (2: a Reg-T margin
        account, Alpaca's for accounts of $2,000 or more; 1: a cash account). The strategy's own
        leverage limit (``risk.limits.leverage``) binds first in normal trading.
    shortable : bool
        Whether the account may short at all (False: a short is refused by the rule check).
    seed : int
        Seed of the venue's order and execution ids.
    intraday : bool, optional
        Whether the bars are intraday (time-of-day slippage); None infers it like the backtest,
        from the median spacing of the timestamps seen (the first 64).
    alpaca_rules : bool
        Refuse one order from long to short, as Alpaca does (the session then closes, and opens
        once the close has filled). Off by default: the backtest flips in one fill, and a replay
        on the simulated venue equals the backtest.
    """

    name = "sim"

    def __init__(
        self,
        cash: float,
        costs: CostsConfig | None = None,
        *,
        state_url: str | None = None,
        participation: float | None = None,
        latency_bars: int = 0,
        assets: Mapping[str, AssetFacts] | None = None,
        halted: Iterable[str] = (),
        margin: float = 2.0,
        shortable: bool = True,
        seed: int = 0,
        intraday: bool | None = None,
        alpaca_rules: bool = False,
    ) -> None:
        checks = [
            ("cash", cash > 0, "> 0", cash),
            (
                "participation",
                participation is None or 0 < participation <= 1,
                "None or in (0, 1]",
                participation,
            ),
            ("latency_bars", int(latency_bars) == latency_bars >= 0, "an int >= 0", latency_bars),
            ("margin", margin > 0, "> 0", margin),
        ]
        for pname, ok, want, got in checks:
            if not ok:
                raise ConfigError(
                    f"The {pname!r} parameter of SimulatedBroker must be {want}. Got {got!r} instead."
                )
        self.costs = costs if costs is not None else CostsConfig()
        self.participation = participation
        self.latency_bars = int(latency_bars)
        self.assets = dict(assets or {})
        self.margin = float(margin)
        self.shortable = bool(shortable)
        self.seed = int(seed)
        self._intraday_cfg = intraday
        self.capabilities = Capabilities(
            order_types=frozenset(OrderType),
            time_in_force=frozenset({TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC}),
            order_classes=frozenset(OrderClass),
            fractional=True,
            short=self.shortable,
            extended_hours=False,
            notional=False,
            # the backtest flips in one fill; alpaca_rules rehearses Alpaca's close-then-open
            cross_zero=not alpaca_rules,
        )
        c = self.costs
        p = np.zeros(BK.N_PARAMS)
        p[BK.P_PER_SHARE] = c.commission_per_share
        p[BK.P_MIN] = c.commission_min
        p[BK.P_BPS] = c.commission_bps
        p[BK.P_FLAT] = c.commission_flat
        p[BK.P_IMPACT] = c.impact_coef
        self._params = p
        self._alpha = 2.0 / (float(c.estimate_span) + 1.0)
        self._slip_cache: dict[int, float] = {}
        # state (everything below is persisted)
        self._cash = float(cash)
        self._initial_cash = float(cash)
        self._pos: dict[str, float] = {}
        self._avg: dict[str, float] = {}
        self._marks: dict[str, float] = {}
        self._syms: dict[str, _SymbolState] = {}
        self._orders: dict[str, _Order] = {}
        self._by_cid: dict[str, str] = {}
        self._live: set[str] = set()
        self._fills: list[Fill] = []
        self._events: list[tuple[int, OrderEvent]] = []  # not delivered by this object yet
        self._log: list[OrderEvent] = []  # every event the venue ever sent (durable)
        self._depth = 0  # open batch() contexts
        # (_reserved(), _margin_room()) while no order, position, mark or cash changed
        self._held: tuple[float, float] | None = None
        self._borrow: list[tuple[datetime, str, float]] = []
        self._cum_borrow: dict[str, float] = {}
        self._halted: set[str] = set(halted)
        self._n = {"order": 0, "exec": 0, "event": 0, "fill": 0, "borrow": 0, "replace": 0}
        self._row_prev: int | None = None  # last timestamp whose close was settled
        self._row_open: int | None = None  # timestamp being delivered, not yet settled
        self._spacings: list[int] = []
        self._clock: int | None = None  # latest bar timestamp seen (the venue's time)
        # pending writes
        self._dirty: set[str] = set()
        self._new_fills: list[tuple[int, Fill]] = []
        self._new_events: list[tuple[int, OrderEvent]] = []
        self._new_borrow: list[tuple[int, datetime, str, float]] = []
        self._drained_to: int | None = None
        self._store = _Store(state_url) if state_url is not None else None
        if self._store is not None:
            loaded = self._store.load()
            if loaded is None:
                self._commit()
            else:
                self._restore(loaded)

    # ------------------------------------------------------------------ persistence

    def _state_json(self) -> dict[str, Any]:
        return {
            "version": _SCHEMA_VERSION,
            "cash": self._cash,
            "initial_cash": self._initial_cash,
            "pos": self._pos,
            "avg": self._avg,
            "marks": self._marks,
            "syms": {
                s: {
                    "last_ts": v.last_ts,
                    "n_bars": v.n_bars,
                    "last_close": v.last_close,
                    "est": v.est,
                }
                for s, v in self._syms.items()
            },
            "cum_borrow": self._cum_borrow,
            "halted": sorted(self._halted),
            "n": self._n,
            "row_prev": self._row_prev,
            "row_open": self._row_open,
            "spacings": self._spacings,
            "clock": self._clock,
        }

    def _restore(self, loaded: dict[str, Any]) -> None:
        self._held = None
        st = loaded["state"]
        self._cash = float(st["cash"])
        self._initial_cash = float(st["initial_cash"])
        self._pos = {k: float(v) for k, v in st["pos"].items()}
        self._avg = {k: float(v) for k, v in st["avg"].items()}
        self._marks = {k: float(v) for k, v in st["marks"].items()}
        self._syms = {
            s: _SymbolState(v["last_ts"], int(v["n_bars"]), float(v["last_close"]), list(v["est"]))
            for s, v in st["syms"].items()
        }
        self._cum_borrow = {k: float(v) for k, v in st["cum_borrow"].items()}
        self._halted = set(st["halted"])
        self._n = dict(st["n"])
        self._row_prev = st["row_prev"]
        self._row_open = st["row_open"]
        self._spacings = list(st["spacings"])
        self._clock = st["clock"]
        self._orders = {}
        self._by_cid = {}
        self._live = set()
        for d in loaded["orders"]:
            o = _Order.from_json(d)
            self._orders[o.id] = o
            self._by_cid.setdefault(o.client_order_id, o.id)
            if o.status in _LIVE:
                self._live.add(o.id)
        self._fills = [_fill_from(d) for d in loaded["fills"]]
        self._events = [(s, _event_from(d)) for s, d in loaded["events"]]
        # a venue re-opened after a crash re-delivers its events (the ledger dedupes them)
        self._log = [e for _, e in self._events]
        self._borrow = [(datetime.fromisoformat(t), s, a) for t, s, a in loaded["borrow"]]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit the venue's state once for several commands (the session engine sends a bar's
        orders inside one batch, before it records their acknowledgements). A crash inside the
        batch leaves the venue as before it: the orders never arrived."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._commit()

    def _commit(self) -> None:
        """Write what changed since the last commit in one transaction (no-op in memory)."""
        if self._depth > 0:
            return
        if self._store is not None:
            try:
                self._store.commit(
                    self._state_json(),
                    [self._orders[i] for i in sorted(self._dirty)],
                    self._new_fills,
                    self._new_events,
                    self._drained_to,
                    self._new_borrow,
                )
            except Exception:
                # the database is the truth: drop the in-memory changes it did not take
                self._discard()
                loaded = self._store.load()
                if loaded is not None:
                    self._restore(loaded)
                raise
        self._discard()

    def _discard(self) -> None:
        self._dirty.clear()
        self._new_fills = []
        self._new_events = []
        self._new_borrow = []
        self._drained_to = None

    # ------------------------------------------------------------------ helpers

    def _next(self, kind: str) -> int:
        self._n[kind] += 1
        return self._n[kind]

    def _uid(self, kind: str) -> str:
        n = self._next(kind)
        digest = hashlib.sha256(f"sim\x1f{self.seed}\x1f{kind}\x1f{n}".encode()).digest()[:16]
        return str(uuid.UUID(bytes=digest, version=4))

    def _now(self, fallback: datetime | None = None) -> datetime:
        if self._clock is not None:
            return _dt(self._clock)
        return fallback if fallback is not None else datetime.now(UTC)

    def _sym(self, symbol: str) -> _SymbolState:
        st = self._syms.get(symbol)
        if st is None:
            st = self._syms[symbol] = _SymbolState()
        return st

    def _decision_estimates(self, symbol: str) -> tuple[float, float, float]:
        """Half-spread, sigma and volume of the symbol's last processed bar, as the backtest
        passes them for a decision at that bar (CostModel.prepare)."""
        c = self.costs
        st = self._sym(symbol).est
        half = st[7] if c.spread_from_bars else float("nan")
        if math.isnan(half):
            half = c.half_spread_bps * 1e-4
        if c.impact_coef > 0:
            return half, st[8], st[9]
        return half, float("nan"), float("nan")

    def estimates(self, symbol: str) -> tuple[float, float, float]:
        """The cost inputs an order decided now in ``symbol`` gets: (half-spread, sigma, volume)."""
        return self._decision_estimates(symbol)

    @property
    def intraday(self) -> bool:
        if self._intraday_cfg is not None:
            return self._intraday_cfg
        if not self._spacings:
            return False
        return bool(np.median(np.asarray(self._spacings, dtype=np.int64)) < _US_PER_DAY * 0.99)

    def _slip(self, ts_us: int) -> float:
        """The backtest's ``slip_row`` at a fill bar starting at ``ts_us``."""
        c = self.costs
        base = c.slippage_bps * 1e-4
        if base > 0 and self.intraday and c.intraday_u_shape > 0:
            u = self._slip_cache.get(ts_us)
            if u is None:
                if len(self._slip_cache) > 4096:
                    self._slip_cache.clear()
                u = self._slip_cache[ts_us] = float(u_shape(np.array([ts_us], dtype=np.int64))[0])
            return base * (1.0 + c.intraday_u_shape * u)
        return base

    def _commission(self, n: float, notional: float) -> float:
        """The backtest's per-order commission (``_kernels._commission``)."""
        if n <= 0:
            return 0.0
        c = self.costs
        var = c.commission_per_share * n + c.commission_bps * 1e-4 * notional
        return max(var, c.commission_min) + c.commission_flat

    def _set_status(self, o: _Order, status: OrderStatus, ts: datetime | None = None) -> None:
        self._held = None
        o.status = status
        o.updated_at = ts if ts is not None else self._now(o.updated_at)
        if status in _LIVE:
            self._live.add(o.id)
        else:
            self._live.discard(o.id)
        self._dirty.add(o.id)

    def _snapshot(self, o: _Order) -> BrokerOrder:
        return BrokerOrder(
            id=o.id,
            client_order_id=o.client_order_id,
            symbol=o.symbol,
            side=o.side,
            qty=o.qty,
            filled_qty=o.filled_qty,
            filled_avg_price=o.filled_notional / o.filled_qty if o.filled_qty > 0 else None,
            status=o.status,
            type=o.type,
            time_in_force=o.time_in_force,
            limit_price=o.limit_price,
            stop_price=o.stop_price,
            order_class=o.order_class,
            created_at=o.created_at,
            updated_at=o.updated_at,
            replaced_by=o.replaced_by,
            replaces=o.replaces,
            legs=tuple(self._snapshot(self._orders[i]) for i in o.legs),
            raw_status=o.status.value,
        )

    def _emit(self, event: str, o: _Order, ts: datetime | None = None, **kw: Any) -> BrokerOrder:
        snap = self._snapshot(o)
        e = OrderEvent(event, snap, ts if ts is not None else o.updated_at, **kw)
        item = (self._next("event"), e)
        self._events.append(item)
        self._new_events.append(item)
        self._log.append(item[1])
        return snap

    def _get(self, order_id: str) -> _Order:
        try:
            return self._orders[order_id]
        except KeyError:
            raise NotFound(f"sim: no order with id {order_id!r}") from None

    def _facts(self, symbol: str) -> AssetFacts:
        return self.assets.get(symbol) or AssetFacts(symbol)

    def _price_hint(self, o: _Order) -> float:
        last = self._marks.get(o.symbol, float("nan"))
        if o.type is OrderType.LIMIT or o.type is OrderType.STOP_LIMIT:
            return float(o.limit_price)  # type: ignore[arg-type]
        if not math.isnan(last):
            return last
        return float(o.stop_price) if o.stop_price is not None else float("nan")

    def _opening(self, symbol: str, side: Side, qty: float) -> float:
        """Shares of an order that open or grow exposure, at the current position."""
        q = self._pos.get(symbol, 0.0)
        if side is Side.BUY:
            return qty if q >= 0 else max(0.0, qty - abs(q))
        return qty if q <= 0 else max(0.0, qty - q)

    def _reserve_of(self, o: _Order) -> float:
        """What a live order holds of the buying power (its opening shares at its price)."""
        if o.status is OrderStatus.HELD or o.parent is not None or o.order_class is OrderClass.OCO:
            return 0.0
        px = self._price_hint(o)
        if math.isnan(px):
            return 0.0
        return self._opening(o.symbol, o.side, o.qty - o.filled_qty) * px

    def _reserved(self, exclude: str | None = None) -> float:
        return sum(self._reserve_of(self._orders[i]) for i in self._live if i != exclude)

    def _margin_room(self) -> float:
        """``margin * equity - gross exposure`` (the buying power before open orders)."""
        gross = sum(abs(q) * self._marks.get(s, 0.0) for s, q in self._pos.items())
        return self.margin * self.equity - gross

    def _buying_power(
        self, exclude: str | None = None, held: tuple[float, float] | None = None
    ) -> float:
        reserved, room = (
            held if held is not None else (self._reserved(exclude), self._margin_room())
        )
        return max(0.0, room - reserved)

    # ------------------------------------------------------------------ commands

    def submit(self, request: OrderRequest) -> BrokerOrder:
        """Accept one order (refused on a rule break; rejected by the venue, see the module doc)."""
        req = request
        if req.client_order_id in self._by_cid:
            raise OrderRefused(
                f"sim: client_order_id must be unique; {req.client_order_id!r} was already used",
                status=422,
            )
        facts = self._facts(req.symbol)
        position = self._pos.get(req.symbol, 0.0)
        # the buying power the live orders hold and the margin room: computed once, then kept
        # up to date by the orders this submit and the next ones add (nothing else changes)
        held = self._held if self._held is not None else (self._reserved(), self._margin_room())
        try:
            check_request(
                req,
                self.capabilities,
                position=position,
                fractionable=facts.fractionable,
                shortable=self.shortable,
            )
        except OrderRuleError as e:
            raise OrderRefused(str(e), status=422) from None
        decided = req.decided_at
        if decided is not None and decided.tzinfo is None:
            decided = decided.replace(tzinfo=UTC)
        now = self._now(decided)
        st = self._sym(req.symbol)
        est = self._decision_estimates(req.symbol)
        qty = float(req.qty)  # type: ignore[arg-type]
        cls_ = req.order_class
        limit = req.limit_price
        if cls_ is OrderClass.OCO and limit is None and req.take_profit is not None:
            limit = req.take_profit.limit_price
        o = _Order(
            id=self._uid("order"),
            client_order_id=req.client_order_id,
            symbol=req.symbol,
            side=req.side,
            qty=qty,
            type=req.type,
            time_in_force=req.time_in_force,
            limit_price=limit,
            stop_price=req.stop_price,
            order_class=cls_,
            status=OrderStatus.NEW,
            seq=self._n["order"],
            created_at=now,
            updated_at=now,
            decided_at=decided,
            intent=req.intent,
            sub_count=st.n_bars,
            wait=self.latency_bars,
            est=est,
            role="take_profit" if cls_ is OrderClass.OCO else "",
        )
        self._orders[o.id] = o
        self._by_cid[o.client_order_id] = o.id
        self._set_status(o, OrderStatus.NEW, now)
        if cls_ is not OrderClass.SIMPLE:
            self._make_legs(o, req, now)
        snap = self._emit("new", o, now)
        reason = self._venue_check(o, held)
        if reason:
            o.reason = reason
            for i in o.legs:
                self._set_status(self._orders[i], OrderStatus.REJECTED, now)
            self._set_status(o, OrderStatus.REJECTED, now)
            snap = self._emit("rejected", o, now)
            self._held = held
        else:
            self._held = (held[0] + self._reserve_of(o), held[1])
        self._commit()
        return snap

    def _make_legs(self, o: _Order, req: OrderRequest, now: datetime) -> None:
        exit_side = (
            o.side
            if o.order_class is OrderClass.OCO
            else (Side.SELL if o.side is Side.BUY else Side.BUY)
        )
        held = o.order_class is not OrderClass.OCO
        legs: list[tuple[str, Leg]] = []
        if req.take_profit is not None and o.order_class is not OrderClass.OCO:
            legs.append(("take_profit", req.take_profit))
        if req.stop_loss is not None:
            legs.append(("stop_loss", req.stop_loss))
        ids = []
        for n_leg, (role, leg) in enumerate(legs, start=1):
            if role == "take_profit":
                typ, lim, stop = OrderType.LIMIT, leg.limit_price, None
            else:
                typ = OrderType.STOP_LIMIT if leg.limit_price is not None else OrderType.STOP
                lim, stop = leg.limit_price, leg.stop_price
            child = _Order(
                id=self._uid("order"),
                client_order_id=f"{o.client_order_id[:44]}.l{n_leg}",
                symbol=o.symbol,
                side=exit_side,
                qty=o.qty,
                type=typ,
                time_in_force=o.time_in_force,
                limit_price=lim,
                stop_price=stop,
                order_class=o.order_class,
                status=OrderStatus.HELD if held else OrderStatus.NEW,
                seq=self._n["order"],
                created_at=now,
                updated_at=now,
                decided_at=o.decided_at,
                intent="exit",
                sub_count=o.sub_count,
                wait=o.wait,
                est=o.est,
                parent=o.id,
                role=role,
            )
            self._orders[child.id] = child
            self._set_status(child, child.status, now)
            ids.append(child.id)
        o.legs = ids
        roles = {self._orders[i].role: i for i in ids}
        if o.order_class is OrderClass.OCO:
            roles["take_profit"] = o.id
        if "take_profit" in roles and "stop_loss" in roles:
            tp, sl = self._orders[roles["take_profit"]], self._orders[roles["stop_loss"]]
            tp.sibling, sl.sibling = sl.id, tp.id

    def _venue_check(self, o: _Order, held: tuple[float, float] | None = None) -> str:
        if o.symbol in self._halted:
            return f"{o.symbol} is halted"
        opening = self._opening(o.symbol, o.side, o.qty)
        if o.side is Side.SELL and opening > _EPS and not self._facts(o.symbol).shortable:
            return f"asset {o.symbol} is not shortable"
        px = self._price_hint(o)
        if opening > _EPS and not math.isnan(px):
            need = opening * px
            bp = self._buying_power(exclude=o.id, held=held)
            if need > bp + 1e-9:
                return (
                    f"insufficient buying power: {o.side.value} {o.qty:g} {o.symbol} needs "
                    f"{need:.2f}, buying power {bp:.2f}"
                )
        return ""

    def cancel(self, order_id: str) -> None:
        """Cancel a working order (and its legs) at once; a terminal order is refused."""
        o = self._get(order_id)
        if o.status not in _LIVE:
            raise OrderRefused(
                f"sim: order {order_id} is {o.status.value} and cannot be canceled", status=422
            )
        now = self._now()
        self._cancel_tree(o, now)
        self._commit()

    def _cancel_tree(self, o: _Order, now: datetime, event: str = "canceled") -> None:
        status = OrderStatus.EXPIRED if event == "expired" else OrderStatus.CANCELED
        for i in o.legs:
            leg = self._orders[i]
            if leg.status in _LIVE:
                self._set_status(leg, status, now)
                self._emit(event, leg, now)
        if o.status in _LIVE:
            self._set_status(o, status, now)
            self._emit(event, o, now)

    def replace(
        self,
        order_id: str,
        *,
        qty: float | None = None,
        limit_price: float | None = None,
        stop_price: float | None = None,
        client_order_id: str | None = None,
    ) -> BrokerOrder:
        """Replace a working order: a new order (new id) takes its place, the old one is replaced."""
        old = self._get(order_id)
        if old.status not in _LIVE:
            raise OrderRefused(
                f"sim: order {order_id} is {old.status.value} and cannot be replaced", status=422
            )
        cid = client_order_id
        if cid is None:
            k = self._next("replace")
            cid = f"{old.client_order_id[:38]}.r{k}"
            while cid in self._by_cid:
                k = self._next("replace")
                cid = f"{old.client_order_id[:38]}.r{k}"
        elif cid in self._by_cid:
            raise OrderRefused(
                f"sim: client_order_id must be unique; {cid!r} was already used", status=422
            )
        new_qty = float(qty) if qty is not None else old.qty - old.filled_qty
        new_limit = limit_price if limit_price is not None else old.limit_price
        new_stop = stop_price if stop_price is not None else old.stop_price
        req = OrderRequest(
            client_order_id=cid,
            symbol=old.symbol,
            side=old.side,
            qty=new_qty,
            type=old.type,
            time_in_force=old.time_in_force,
            limit_price=new_limit,
            stop_price=new_stop,
            decided_at=old.decided_at,
            intent=old.intent,
        )
        try:
            check_request(
                req,
                self.capabilities,
                position=self._pos.get(old.symbol, 0.0),
                fractionable=self._facts(old.symbol).fractionable,
                shortable=self.shortable,
            )
        except OrderRuleError as e:
            raise OrderRefused(str(e), status=422) from None
        now = self._now()
        new = _Order(
            id=self._uid("order"),
            client_order_id=cid,
            symbol=old.symbol,
            side=old.side,
            qty=new_qty,
            type=old.type,
            time_in_force=old.time_in_force,
            limit_price=new_limit,
            stop_price=new_stop,
            order_class=old.order_class,
            status=OrderStatus.HELD if old.status is OrderStatus.HELD else OrderStatus.NEW,
            seq=self._n["order"],
            created_at=now,
            updated_at=now,
            decided_at=old.decided_at,
            intent=old.intent,
            sub_count=old.sub_count,
            wait=old.wait,
            est=old.est,
            triggered=old.triggered,
            parent=old.parent,
            legs=list(old.legs),
            sibling=old.sibling,
            role=old.role,
            replaces=old.id,
        )
        self._orders[new.id] = new
        self._by_cid[cid] = new.id
        self._set_status(new, new.status, now)
        old.replaced_by = new.id
        old.legs = []
        self._set_status(old, OrderStatus.REPLACED, now)
        for i in new.legs:
            self._orders[i].parent = new.id
            self._dirty.add(i)
        if new.parent is not None:
            par = self._orders[new.parent]
            par.legs = [new.id if i == old.id else i for i in par.legs]
            self._dirty.add(par.id)
        if new.sibling is not None:
            self._orders[new.sibling].sibling = new.id
            self._dirty.add(new.sibling)
        self._emit("replaced", old, now)
        snap = self._emit("new", new, now)
        self._held = None
        self._commit()
        return snap

    def set_halted(self, symbol: str, halted: bool = True) -> None:
        """Halt (or resume) a symbol: new orders are rejected, working ones do not trade."""
        if halted:
            self._halted.add(symbol)
        else:
            self._halted.discard(symbol)
        self._commit()

    # ------------------------------------------------------------------ queries

    def get_order(self, order_id: str) -> BrokerOrder:
        return self._snapshot(self._get(order_id))

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        i = self._by_cid.get(client_order_id)
        return None if i is None else self._snapshot(self._orders[i])

    def reason(self, order_id: str) -> str:
        """Why the venue rejected an order ('' when it did not)."""
        return self._get(order_id).reason

    def open_orders(self) -> list[BrokerOrder]:
        live = sorted((self._orders[i] for i in self._live), key=lambda o: o.seq)
        return [self._snapshot(o) for o in live]

    def recent_orders(self, after: datetime | None = None) -> list[BrokerOrder]:
        out = [o for o in self._orders.values() if after is None or o.created_at > after]
        return [self._snapshot(o) for o in sorted(out, key=lambda o: -o.seq)]

    def positions(self) -> list[Position]:
        return [
            Position(s, q, self._avg.get(s, 0.0), q * self._marks.get(s, float("nan")))
            for s, q in sorted(self._pos.items())
            if q != 0.0
        ]

    def account(self) -> Account:
        where = "memory" if self._store is None else self._store.where
        return Account(
            id=f"sim-{self.seed}",
            equity=self.equity,
            cash=self._cash,
            buying_power=self._buying_power(),
            endpoint=f"sim://{where}",
            paper=True,
            extra={"borrow_paid": sum(self._cum_borrow.values()), "margin": self.margin},
        )

    def events(self) -> list[OrderEvent]:
        """Drain the events since the last call.

        The venue keeps every event it sent (like a broker's activity history): a venue
        re-opened on its state delivers them all again once, and :meth:`replay_events` returns
        them, so a fill whose event was lost in a crash is recovered exactly (commission
        included). Consumers dedupe by execution id.
        """
        if not self._events:
            return []
        out = [e for _, e in self._events]
        self._events = []
        return out

    def replay_events(self) -> list[OrderEvent]:
        """Every event the venue has sent, oldest first (reconcile reads it before REST)."""
        return list(self._log)

    def checkpoint(self) -> None:
        """Move the venue database's write-ahead log into the database (SQLite): the session
        engine calls it after a bar's orders are out, so no order submission pays for it."""
        if self._store is not None:
            self._store.checkpoint()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # ------------------------------------------------------------------ bars

    def on_bar(self, bar: Mapping[str, Any]) -> bool:
        """Match one bar (``symbol, ts, open, high, low, close, volume``); False if already seen.

        The borrow of a timestamp is charged when the venue moves past it (a later bar arrives),
        by :meth:`end_bar`, or at once by :meth:`on_bars`, which delivers whole timestamps.
        """
        done = self._process(bar)
        if done:
            self._commit()
        return done

    def on_bars(self, frame: Any, *, end_of_day: bool = False) -> int:
        """Match every bar of ``frame`` (a polars frame or rows), one timestamp at a time.

        Each timestamp's bars are matched in symbol order, then its close is settled (borrow)
        and committed in one transaction. ``end_of_day`` expires DAY orders after the last
        timestamp. Returns the number of new bars (bars already processed are ignored).
        """
        rows = list(frame.iter_rows(named=True)) if hasattr(frame, "iter_rows") else list(frame)
        rows.sort(key=lambda r: (_us(r["ts"]), r["symbol"]))
        n = 0
        i = 0
        while i < len(rows):
            ts = _us(rows[i]["ts"])
            j = i
            while j < len(rows) and _us(rows[j]["ts"]) == ts:
                n += self._process(rows[j])
                j += 1
            if self._row_open == ts:
                self._settle_row()
            self._commit()
            i = j
        if end_of_day:
            self.expire_day()
        return n

    def end_bar(self) -> None:
        """Settle the close of the timestamp being delivered bar by bar (borrow)."""
        if self._row_open is not None:
            self._settle_row()
            self._commit()

    def expire_day(self, ts: datetime | None = None) -> int:
        """Expire every working DAY order (the session's close); returns how many."""
        now = ts if ts is not None else self._now()
        n = 0
        for o in sorted((self._orders[i] for i in list(self._live)), key=lambda o: o.seq):
            if o.status in _LIVE and o.time_in_force is TimeInForce.DAY and o.parent is None:
                self._cancel_tree(o, now, "expired")
                n += 1
            elif o.status in _LIVE and o.time_in_force is TimeInForce.DAY:
                self._set_status(o, OrderStatus.EXPIRED, now)
                self._emit("expired", o, now)
                n += 1
        self._commit()
        return n

    def _advance_rows(self, ts_us: int) -> None:
        if self._row_open is not None and ts_us > self._row_open:
            self._settle_row()
        if self._row_open is None and (self._row_prev is None or ts_us > self._row_prev):
            self._row_open = ts_us
            if self._row_prev is not None and len(self._spacings) < _N_SPACINGS:
                self._spacings.append(ts_us - self._row_prev)

    def _settle_row(self) -> None:
        """Charge borrow at the open timestamp's close, as the backtest's ``borrow_row``."""
        t = self._row_open
        assert t is not None
        self._held = None  # borrow is charged to cash
        prev = self._row_prev
        bps = self.costs.borrow_bps_annual
        if prev is not None and bps > 0:
            days = float(t - prev) / _US_PER_DAY
            br = bps * 1e-4 * days / 360.0
            ts = _dt(t)
            for s, q in sorted(self._pos.items()):
                if q < 0.0:
                    lc = self._syms[s].last_close
                    fee = -q * lc * br
                    self._cash -= fee
                    self._cum_borrow[s] = self._cum_borrow.get(s, 0.0) + fee
                    self._borrow.append((ts, s, fee))
                    self._new_borrow.append((self._next("borrow"), ts, s, fee))
        self._row_prev = t
        self._row_open = None

    def _process(self, bar: Mapping[str, Any]) -> bool:
        self._held = None  # marks and fills change
        symbol = str(bar["symbol"])
        ts_us = _us(bar["ts"])
        st = self._sym(symbol)
        if st.last_ts is not None and ts_us <= st.last_ts:
            return False
        self._advance_rows(ts_us)
        ts = _dt(ts_us)
        if self._clock is None or ts_us > self._clock:
            self._clock = ts_us
        o_, h, lo, c, v = (float(bar[k]) for k in ("open", "high", "low", "close", "volume"))
        n = st.n_bars
        if symbol not in self._halted:
            cands = [
                self._orders[i]
                for i in self._live
                if self._orders[i].symbol == symbol
                and self._orders[i].status in _WORKING
                and n >= self._orders[i].sub_count + self._orders[i].wait
                and (self._orders[i].decided_at is None or ts > self._orders[i].decided_at)
            ]
            cands.sort(key=lambda o: o.seq)
            cands = self._oco_first(cands, o_)
            for o in cands:
                if o.status in _WORKING:
                    self._match(o, ts, ts_us, o_, h, lo, v, n)
            for o in cands:
                if o.time_in_force is TimeInForce.IOC and o.status in _WORKING:
                    self._set_status(o, OrderStatus.CANCELED, ts)
                    self._emit("canceled", o, ts)
        st.last_close = c
        self._marks[symbol] = c
        est = np.asarray(st.est, dtype=np.float64)
        _estimate_step_nb(est, h, lo, c, v, self._alpha)
        st.est = [float(x) for x in est]
        st.last_ts = ts_us
        st.n_bars = n + 1
        return True

    def _oco_first(self, cands: list[_Order], open_px: float) -> list[_Order]:
        """Put the leg that trades first in front when both OCO siblings work in this bar."""
        ids = {o.id for o in cands}
        out: list[_Order] = []
        done: set[str] = set()
        for o in cands:
            if o.id in done:
                continue
            if o.sibling is not None and o.sibling in ids:
                sib = self._orders[o.sibling]
                tp, sl = (o, sib) if o.role == "take_profit" else (sib, o)
                lim = float(tp.limit_price)  # type: ignore[arg-type]
                gap = open_px >= lim if tp.side is Side.SELL else open_px <= lim
                out += [tp, sl] if gap else [sl, tp]
                done |= {o.id, sib.id}
            else:
                out.append(o)
                done.add(o.id)
        return out

    def _match(
        self, o: _Order, ts: datetime, ts_us: int, op: float, h: float, lo: float, v: float, n: int
    ) -> None:
        buy = o.side is Side.BUY
        ref: float | None = None  # market-like: reference price, costs added
        px: float | None = None  # limit-like: execution price, no costs
        if o.type is OrderType.MARKET:
            ref = op
        elif o.type is OrderType.LIMIT:
            lim = float(o.limit_price)  # type: ignore[arg-type]
            if buy and lo <= lim:
                px = min(op, lim)
            elif not buy and h >= lim:
                px = max(op, lim)
        elif o.type is OrderType.STOP:
            stop = float(o.stop_price)  # type: ignore[arg-type]
            if o.triggered:
                ref = op
            elif buy and h >= stop:
                ref = max(op, stop)
            elif not buy and lo <= stop:
                ref = min(op, stop)
            if ref is not None and not o.triggered:
                o.triggered = True
                self._dirty.add(o.id)
        else:  # stop-limit: the trigger, then the limit from the trigger price
            stop = float(o.stop_price)  # type: ignore[arg-type]
            lim = float(o.limit_price)  # type: ignore[arg-type]
            start = op
            if not o.triggered:
                if buy and h >= stop:
                    start = max(op, stop)
                elif not buy and lo <= stop:
                    start = min(op, stop)
                else:
                    return
                o.triggered = True
                self._dirty.add(o.id)
            if buy and lo <= lim:
                px = min(start, lim)
            elif not buy and h >= lim:
                px = max(start, lim)
        if ref is None and px is None:
            return
        remaining = o.qty - o.filled_qty
        fill_n = remaining
        if self.participation is not None:
            cap = math.floor(self.participation * v)
            if v > 0:
                cap = max(cap, 1)
            fill_n = min(remaining, float(cap))
        if fill_n <= _EPS:
            return
        d = fill_n if buy else -fill_n
        if ref is not None:
            half, sigma, vol = o.est
            price, comm_k, _, _ = BK.fill_cost_nb(
                float(ref), float(d), 0, 0, 0, np.full((1, 1), half), np.full((1, 1), sigma),
                np.full((1, 1), vol), np.array([self._slip(ts_us)]), self._params,
            )  # fmt: skip
            price = float(price)
            ref_price = float(ref)
        else:
            price = float(px)  # type: ignore[arg-type]
            ref_price = price
            comm_k = None
        cum_n = o.filled_qty + fill_n
        cum_notional = o.filled_notional + fill_n * price
        if o.filled_qty == 0.0 and comm_k is not None:
            comm = float(comm_k)  # the backtest's own number for a whole-order fill
        else:
            comm = self._commission(cum_n, cum_notional) - o.commission
        o.filled_qty = cum_n
        o.filled_notional = cum_notional
        o.commission += comm
        self._apply(o.symbol, d, price, comm)
        exec_id = self._uid("exec")
        fill = Fill(
            execution_id=exec_id,
            client_order_id=o.client_order_id,
            order_id=o.id,
            symbol=o.symbol,
            ts=ts,
            qty=d,
            price=price,
            commission=comm,
            ref_price=ref_price,
            decided_at=o.decided_at,
            venue="sim",
        )
        self._fills.append(fill)
        self._new_fills.append((self._next("fill"), fill))
        done = o.qty - o.filled_qty <= _EPS
        self._set_status(o, OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED, ts)
        self._emit(
            "fill" if done else "partial_fill",
            o,
            ts,
            execution_id=exec_id,
            qty=fill_n,
            price=price,
            position_qty=self._pos.get(o.symbol, 0.0),
            commission=comm,
        )
        if o.sibling is not None:
            sib = self._orders[o.sibling]
            if sib.status in _LIVE:
                self._set_status(sib, OrderStatus.CANCELED, ts)
                self._emit("canceled", sib, ts)
        if done and o.legs and o.order_class is not OrderClass.OCO:
            for i in o.legs:  # the entry filled: its legs work from the next bar
                leg = self._orders[i]
                if leg.status is OrderStatus.HELD:
                    leg.qty = o.filled_qty
                    leg.sub_count = n + 1
                    leg.wait = 0
                    leg.est = self._decision_estimates(o.symbol)
                    self._set_status(leg, OrderStatus.NEW, ts)
                    self._emit("new", leg, ts)

    def _apply(self, symbol: str, d: float, price: float, comm: float) -> None:
        self._held = None
        q0 = self._pos.get(symbol, 0.0)
        q1 = q0 + d
        self._cash -= d * price + comm
        if abs(q1) <= 1e-12:
            q1 = 0.0
            self._avg[symbol] = 0.0
        elif q0 == 0.0 or q0 * q1 < 0.0:
            self._avg[symbol] = price
        elif abs(q1) > abs(q0):
            self._avg[symbol] = (abs(q0) * self._avg.get(symbol, 0.0) + abs(d) * price) / abs(q1)
        self._pos[symbol] = q1

    # ------------------------------------------------------------------ session engine helpers

    def mark(self, closes: Mapping[str, float]) -> float:
        """Update the marks and return equity (cash + positions at the marks)."""
        self._held = None
        self._marks.update({k: float(v) for k, v in closes.items()})
        return self.equity

    @property
    def cash(self) -> float:
        return self._cash

    @property
    def equity(self) -> float:
        return self._cash + sum(q * self._marks.get(s, 0.0) for s, q in self._pos.items() if q)

    @property
    def fills(self) -> list[Fill]:
        return list(self._fills)

    @property
    def borrow_charges(self) -> list[tuple[datetime, str, float]]:
        """Every borrow charge: (timestamp whose close it was charged at, symbol, amount)."""
        return list(self._borrow)

    @property
    def borrow_paid(self) -> dict[str, float]:
        return dict(self._cum_borrow)

    def position(self, symbol: str) -> float:
        return self._pos.get(symbol, 0.0)
