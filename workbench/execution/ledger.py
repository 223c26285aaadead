"""The order ledger: the durable, write-ahead record of a trading session.

An intent is committed before its order is sent (:meth:`OrderLedger.add_intent`); every broker
event is recorded (:meth:`OrderLedger.apply_order`), and fills are derived in exactly one place from
the order's cumulative ``filled_qty``, so replayed stream events, REST polls after stream fills and
stream fills after polls all dedupe. Every write is one transaction: a crash at any point leaves a
consistent ledger that reconcile can finish. :meth:`OrderLedger.batch` makes the calls of a block
one transaction (one commit, all or nothing), and the sessions an object writes are cached in it,
so the per-bar reads of a running session issue no SQL (see :class:`OrderLedger`).

Tables: ``sessions``, ``intents``, ``orders``, ``transitions`` (order status changes with the event
and time), ``events`` (raw broker events; unknown event names are kept), ``fills`` (unique by
``execution_id``), ``position_snapshots`` and ``ledger_meta`` (the ``schema_version`` row).

SQLite runs in WAL mode with ``synchronous=FULL`` (a committed intent survives a power cut) and a
busy timeout (``batch(durable=False)`` commits without the fsync: see :meth:`OrderLedger.batch`); any other SQLAlchemy URL (e.g. Postgres) works too. Datetimes are stored UTC and
returned timezone-aware UTC; floats round-trip exactly.

>>> from datetime import UTC, date, datetime
>>> from workbench.execution.orders import OrderRequest, Side
>>> ledger = OrderLedger("sqlite://")
>>> ledger.open_session("s1", strategy="rev", broker="sim", mode="paper",
...                     session_date=date(2024, 1, 2)).status
'running'
>>> req = OrderRequest("cid-1", "AAPL", Side.BUY, qty=10)
>>> ledger.add_intent("s1", 0, req, bar_ts=datetime(2024, 1, 2, 15, tzinfo=UTC)).state
'pending'
>>> ledger.next_seq("s1")
1
"""

from __future__ import annotations

import bisect
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from workbench.errors import ParameterError, StoreError
from workbench.execution.orders import (
    OPEN,
    BrokerOrder,
    Fill,
    OrderClass,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
    next_status,
)
from workbench.risk.state import (
    BUSY_TIMEOUT_MS,
    _resolve,
    _sqlite_on_begin,
    _sqlite_on_connect,
    _utc,
    _UTCDateTime,
)

DEFAULT_LEDGER_URL = "sqlite:///ledger.db"
"""Default ledger database: ``ledger.db`` in the working directory."""

SCHEMA_VERSION = 1
"""Version of the ledger's tables; a ledger written by a newer version is refused."""

SESSION_STATUSES = ("running", "halted", "stopped", "done")
INTENT_STATES = ("pending", "acked", "refused", "not_found")
SNAPSHOT_KINDS = ("start", "end", "reconcile")

#: events whose order snapshot is a REST read: its reported status is the truth
REST_EVENTS = frozenset({"rest", "ack"})

_EPS = 1e-9
# Fill's own NaN default object: Fill equality compares NaN fields by identity, so a fill read back
# equals the fill apply_order returned
_NAN = Fill.__dataclass_fields__["ref_price"].default


# -- records -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionRecord:
    """One trading session: what runs, where, and how far it got."""

    session_id: str
    strategy: str
    broker: str
    mode: str
    session_date: date
    status: str  # running | halted | stopped | done
    reason: str
    last_bar_ts: datetime | None  # the last bar fully processed (UTC)
    next_seq: int
    params: dict[str, Any]
    started_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class IntentRecord:
    """An order the session decided to send, committed before it is sent."""

    client_order_id: str
    session_id: str
    seq: int
    symbol: str
    request: OrderRequest
    bar_ts: datetime
    state: str  # pending | acked | refused | not_found
    broker_order_id: str | None
    error: str
    created_at: datetime


@dataclass(frozen=True)
class FillRecord:
    """A derived fill, the session that observed it and the bar it was booked at (None: not yet)."""

    fill: Fill
    session_id: str
    booked_bar_ts: datetime | None


# -- schema --------------------------------------------------------------------------------------

_META = sa.MetaData()
_DT = _UTCDateTime

_LEDGER_META = sa.Table(
    "ledger_meta",
    _META,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
_SESSIONS = sa.Table(
    "sessions",
    _META,
    sa.Column("session_id", sa.String(200), primary_key=True),
    sa.Column("strategy", sa.String(200), nullable=False, index=True),
    sa.Column("broker", sa.String(100), nullable=False),
    sa.Column("mode", sa.String(50), nullable=False),
    sa.Column("session_date", sa.Date(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("last_bar_ts", _DT(), nullable=True),
    sa.Column("next_seq", sa.Integer(), nullable=False),
    sa.Column("params", sa.Text(), nullable=False),
    sa.Column("started_at", _DT(), nullable=False),
    sa.Column("updated_at", _DT(), nullable=False),
    sa.CheckConstraint(
        "status IN ('running', 'halted', 'stopped', 'done')", name="ck_sessions_status"
    ),
)
_INTENTS = sa.Table(
    "intents",
    _META,
    sa.Column("client_order_id", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(200), sa.ForeignKey("sessions.session_id"), nullable=False),
    sa.Column("seq", sa.Integer(), nullable=False),
    sa.Column("symbol", sa.String(64), nullable=False),
    sa.Column("request", sa.Text(), nullable=False),
    sa.Column("bar_ts", _DT(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("broker_order_id", sa.String(128), nullable=True),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("created_at", _DT(), nullable=False),
    sa.Column("updated_at", _DT(), nullable=False),
    sa.UniqueConstraint("session_id", "seq", name="uq_intents_session_seq"),
    sa.CheckConstraint(
        "state IN ('pending', 'acked', 'refused', 'not_found')", name="ck_intents_state"
    ),
)
_ORDERS = sa.Table(
    "orders",
    _META,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(128), nullable=False, unique=True),
    sa.Column("client_order_id", sa.String(128), nullable=False, index=True),
    sa.Column("intent_cid", sa.String(64), nullable=True, index=True),  # None: external order
    sa.Column("session_id", sa.String(200), nullable=False, index=True),
    sa.Column("symbol", sa.String(64), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("qty", sa.Double(), nullable=True),
    sa.Column("notional", sa.Double(), nullable=True),
    sa.Column("filled_qty", sa.Double(), nullable=False),
    sa.Column("filled_avg_price", sa.Double(), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("raw_status", sa.String(64), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("time_in_force", sa.String(8), nullable=False),
    sa.Column("order_class", sa.String(16), nullable=False),
    sa.Column("limit_price", sa.Double(), nullable=True),
    sa.Column("stop_price", sa.Double(), nullable=True),
    sa.Column("replaces", sa.String(128), nullable=True),
    sa.Column("replaced_by", sa.String(128), nullable=True),
    sa.Column("created_at", _DT(), nullable=True),  # the broker's
    sa.Column("updated_at", _DT(), nullable=True),  # the broker's
    sa.Column("recorded_at", _DT(), nullable=False),  # the last event's ts
    sa.Column("raw", sa.Text(), nullable=False),  # the latest snapshot, legs included
)
_TRANSITIONS = sa.Table(
    "transitions",
    _META,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(200), nullable=False, index=True),
    sa.Column("order_id", sa.String(128), nullable=False, index=True),
    sa.Column("client_order_id", sa.String(128), nullable=False, index=True),
    sa.Column("intent_cid", sa.String(64), nullable=True, index=True),
    sa.Column("from_status", sa.String(32), nullable=False),
    sa.Column("to_status", sa.String(32), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("ts", _DT(), nullable=False),
)
_EVENTS = sa.Table(
    "events",
    _META,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(200), nullable=False, index=True),
    sa.Column("order_id", sa.String(128), nullable=False),
    sa.Column("client_order_id", sa.String(128), nullable=False, index=True),
    sa.Column("intent_cid", sa.String(64), nullable=True, index=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("ts", _DT(), nullable=False),
    sa.Column("execution_id", sa.String(128), nullable=True),
    sa.Column("qty", sa.Double(), nullable=True),
    sa.Column("price", sa.Double(), nullable=True),
    sa.Column("commission", sa.Double(), nullable=False),
    sa.Column("venue", sa.String(64), nullable=False),
    sa.Column("order", sa.Text(), nullable=False),  # the order snapshot as reported
)
_FILLS = sa.Table(
    "fills",
    _META,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("execution_id", sa.String(160), nullable=False, unique=True),
    sa.Column("session_id", sa.String(200), nullable=False, index=True),
    sa.Column("order_id", sa.String(128), nullable=False, index=True),
    sa.Column("client_order_id", sa.String(128), nullable=False),
    sa.Column("symbol", sa.String(64), nullable=False),
    sa.Column("ts", _DT(), nullable=False),
    sa.Column("qty", sa.Double(), nullable=False),
    sa.Column("price", sa.Double(), nullable=True),  # NULL: the broker reported no price
    sa.Column("commission", sa.Double(), nullable=False),
    sa.Column("ref_price", sa.Double(), nullable=True),
    sa.Column("decided_at", _DT(), nullable=True),
    sa.Column("venue", sa.String(64), nullable=False),
    sa.Column("booked_bar_ts", _DT(), nullable=True),
)
_SNAPSHOTS = sa.Table(
    "position_snapshots",
    _META,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("ts", _DT(), nullable=False),
    sa.Column("positions", sa.Text(), nullable=False),
    sa.CheckConstraint("kind IN ('start', 'end', 'reconcile')", name="ck_snapshots_kind"),
)
_RELEASES = sa.Table(
    "releases",
    _META,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(200), nullable=False, index=True),
    sa.Column("key", sa.String(200), nullable=False),  # the order id (or refused:<cid>)
    sa.Column("symbol", sa.String(64), nullable=False),
    sa.Column("qty", sa.Double(), nullable=False),  # signed shares no longer pending
    sa.Column("booked_bar_ts", _DT(), nullable=False),
    sa.UniqueConstraint("session_id", "key", name="uq_releases_key"),
)
_STATES = sa.Table(  # the risk engine's book at a session's end (the next session starts from it)
    "engine_states",
    _META,
    sa.Column("session_id", sa.String(200), primary_key=True),
    sa.Column("ts", _DT(), nullable=False),
    sa.Column("state", sa.Text(), nullable=False),
)
_TABLES = (
    _SESSIONS, _INTENTS, _ORDERS, _TRANSITIONS, _EVENTS, _FILLS, _SNAPSHOTS, _RELEASES,
    _STATES, _LEDGER_META,
)  # fmt: skip

_UTC_US = pl.Datetime("us", "UTC")
_FRAME_SCHEMAS: dict[str, dict[str, Any]] = {
    "intents": {
        "client_order_id": pl.String,
        "session_id": pl.String,
        "seq": pl.Int64,
        "symbol": pl.String,
        "side": pl.String,
        "qty": pl.Float64,
        "notional": pl.Float64,
        "type": pl.String,
        "intent": pl.String,
        "bar_ts": _UTC_US,
        "state": pl.String,
        "broker_order_id": pl.String,
        "error": pl.String,
        "created_at": _UTC_US,
        "request": pl.String,
    },
    "orders": {
        "order_id": pl.String,
        "client_order_id": pl.String,
        "intent_cid": pl.String,
        "session_id": pl.String,
        "symbol": pl.String,
        "side": pl.String,
        "qty": pl.Float64,
        "notional": pl.Float64,
        "filled_qty": pl.Float64,
        "filled_avg_price": pl.Float64,
        "status": pl.String,
        "type": pl.String,
        "time_in_force": pl.String,
        "limit_price": pl.Float64,
        "stop_price": pl.Float64,
        "replaces": pl.String,
        "replaced_by": pl.String,
        "created_at": _UTC_US,
        "recorded_at": _UTC_US,
    },
    "fills": {
        "execution_id": pl.String,
        "client_order_id": pl.String,
        "order_id": pl.String,
        "symbol": pl.String,
        "ts": _UTC_US,
        "qty": pl.Float64,
        "price": pl.Float64,
        "commission": pl.Float64,
        "venue": pl.String,
        "booked_bar_ts": _UTC_US,
    },
    "transitions": {
        "order_id": pl.String,
        "client_order_id": pl.String,
        "intent_cid": pl.String,
        "from_status": pl.String,
        "to_status": pl.String,
        "event": pl.String,
        "ts": _UTC_US,
    },
}


# -- pre-built statements (SQLAlchemy compiles each once per dialect and caches it) ---------------

_Q_SESSION = (
    sa.select(_SESSIONS).where(_SESSIONS.c.session_id == sa.bindparam("sid")).with_for_update()
)
_Q_INTENT = sa.select(_INTENTS).where(_INTENTS.c.client_order_id == sa.bindparam("cid"))
_Q_INTENT_AT_SEQ = sa.select(_INTENTS.c.client_order_id).where(
    _INTENTS.c.session_id == sa.bindparam("sid"), _INTENTS.c.seq == sa.bindparam("seq")
)
_Q_SESSION_INTENTS = (
    sa.select(_INTENTS).where(_INTENTS.c.session_id == sa.bindparam("sid")).order_by(_INTENTS.c.seq)
)
_Q_MAX_SEQ = sa.select(sa.func.max(_INTENTS.c.seq)).where(
    _INTENTS.c.session_id == sa.bindparam("sid")
)
_Q_ORDER = sa.select(_ORDERS).where(_ORDERS.c.order_id == sa.bindparam("oid")).with_for_update()
_Q_SESSION_ORDERS = (
    sa.select(_ORDERS).where(_ORDERS.c.session_id == sa.bindparam("sid")).order_by(_ORDERS.c.id)
)
_Q_FILL_EXISTS = sa.select(_FILLS.c.id).where(_FILLS.c.execution_id == sa.bindparam("eid"))
_Q_SESSION_FILL_IDS = sa.select(_FILLS.c.execution_id).where(
    _FILLS.c.session_id == sa.bindparam("sid")
)
_Q_FILL_QTYS = (
    sa.select(_FILLS.c.symbol, _FILLS.c.qty)
    .where(_FILLS.c.session_id == sa.bindparam("sid"))
    .order_by(_FILLS.c.id)
)
_I_SESSION = sa.insert(_SESSIONS)
_I_INTENT = sa.insert(_INTENTS)
_I_ORDER = sa.insert(_ORDERS)
_I_EVENT = sa.insert(_EVENTS)
_I_TRANSITION = sa.insert(_TRANSITIONS)
_I_FILL = sa.insert(_FILLS)
_I_SNAPSHOT = sa.insert(_SNAPSHOTS)
_I_RELEASE = sa.insert(_RELEASES)
# an UPDATE without .values() sets the columns named by the parameters; b_* bind the WHERE
_U_SESSION = sa.update(_SESSIONS).where(_SESSIONS.c.session_id == sa.bindparam("b_sid"))
_U_INTENT = sa.update(_INTENTS).where(_INTENTS.c.client_order_id == sa.bindparam("b_cid"))
_U_ORDER = sa.update(_ORDERS).where(_ORDERS.c.order_id == sa.bindparam("b_oid"))
_U_LINK = sa.update(_ORDERS).where(
    _ORDERS.c.order_id == sa.bindparam("b_oid"), _ORDERS.c.replaced_by.is_(None)
)
_U_BOOK = sa.update(_FILLS).where(
    _FILLS.c.session_id == sa.bindparam("b_sid"), _FILLS.c.booked_bar_ts.is_(None)
)
_U_BOOK_BEFORE = sa.update(_FILLS).where(
    _FILLS.c.session_id == sa.bindparam("b_sid"),
    _FILLS.c.booked_bar_ts.is_(None),
    sa.or_(_FILLS.c.decided_at.is_(None), _FILLS.c.decided_at < sa.bindparam("b_before")),
)
#: SQLite's automatic WAL checkpoint threshold (pages of 4 KiB) for the ledger and the simulated
#: venue; the session engine checkpoints after each bar (``checkpoint()``), so this is a bound
WAL_AUTOCHECKPOINT_PAGES = 16_384
#: the log size from which ``OrderLedger.checkpoint()`` runs (SQLite's own default is ~4 MB)
WAL_CHECKPOINT_BYTES = 4 << 20
_OPEN_VALUES = frozenset(s.value for s in OPEN)
#: the ledger's queued writes go straight to the SQLite driver (False: through SQLAlchemy)
_RAW_MANY = True
_INTENT_STATE_COLS = frozenset({"state", "broker_order_id", "error"})  # set on an intent row
_ORDER_COLS = tuple(c.name for c in _ORDERS.columns if c.name != "id")
_KEPT_COLS = ("limit_price", "stop_price", "replaces", "replaced_by", "created_at")


def _conflict_free_inserts(dialect: str) -> tuple[Any, Any, Any] | None:
    """``INSERT ... ON CONFLICT DO NOTHING`` for intents, orders (by ``order_id``) and fills (by
    ``execution_id``): one statement instead of a look-up and an insert. None: not supported."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return None
    stmts = (
        insert(_INTENTS).on_conflict_do_nothing(),
        insert(_ORDERS).on_conflict_do_nothing(index_elements=["order_id"]),
        insert(_FILLS).on_conflict_do_nothing(index_elements=["execution_id"]),
    )
    if dialect == "postgresql":
        # SQLAlchemy's psycopg dialect reports rowcount -1 for a plain INSERT; with RETURNING it
        # counts the rows inserted (the conflicts are not returned), single or executemany
        keys = (_INTENTS.c.client_order_id, _ORDERS.c.order_id, _FILLS.c.execution_id)
        stmts = tuple(st.returning(k) for st, k in zip(stmts, keys, strict=True))
    return stmts


@dataclass
class _Level:
    """One level of :meth:`OrderLedger.batch`: the outermost (savepoint None) or a nested one."""

    savepoint: Any
    failed: bool = False


@dataclass
class _SessionCache:
    """What this object knows of one session it writes (None: not loaded yet)."""

    intents: list[tuple[int, str]] | None = None  # (seq, client order id), by seq
    orders: list[str] | None = None  # order ids, in recorded order
    open: dict[str, None] | None = None  # ids of the open ones among them, in recorded order
    positions: dict[str, float] | None = None  # start snapshot + fills so far (zeros kept)
    fill_ids: set[str] | None = None  # execution ids of the session's fills


class _Plan:
    """What one broker event does to an order (computed before anything is written)."""

    __slots__ = ("cid", "cols", "current", "fill", "intent_cid", "legs", "new", "owner")


# -- the ledger ----------------------------------------------------------------------------------


class OrderLedger:
    """The write-ahead record of trading sessions: intents, orders, events, fills, positions.

    Parameters
    ----------
    url : str, default "sqlite:///ledger.db"
        Any SQLAlchemy URL. A relative SQLite path is relative to the working directory and its
        folder is created. Tables are created on first use.

    Raises
    ------
    StoreError
        If the URL is invalid, the database cannot be opened, the SQLite file is not a database,
        or the ledger was written by a newer (or unknown) schema.

    Notes
    -----
    Every call is one transaction, committed (and with SQLite fsynced) before it returns;
    :meth:`batch` groups the calls of a thread into one transaction, committed once.

    Caches: the sessions this object writes (``open_session``, ``add_intent``, ``apply_order``,
    ... on them) are cached in the object: their session row, intents, orders and positions are
    read from the database once and then kept up to date by this object's own writes, so the
    engine's per-bar reads issue no SQL. A session is written by one process (its session
    process) at a time: another process (or another ``OrderLedger`` object) writing the same
    session while it runs is not supported, as that object's caches would not see those writes.
    Reading is always safe: an object that has not written a session (``wb session status``, a
    monitor) reads it from the database on every call, and sees every committed write. Calls
    are serialized per object (a thread waits while another thread's batch runs).
    """

    def __init__(self, url: str = DEFAULT_LEDGER_URL) -> None:
        self._lock = threading.RLock()
        self._levels: list[_Level] = []  # the open batch() levels (outermost first)
        self._batch_conn: Connection | None = None
        self._batch_durable = True  # the outermost open batch's durability
        self._drop_queued()  # writes queued in the open transaction (see _flush)
        self._nwrites = 0  # write statements issued (a call that raised after writing: dirty)
        self._owned: set[str] = set()  # sessions this object writes: their rows are cached
        self._clear_caches()
        self._raw_url = url
        try:
            make_url(url)
        except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
            raise StoreError(
                f"order ledger URL {url!r} is not an SQLAlchemy URL ({exc}). Fix: use e.g. "
                f"'sqlite:///runs/ledger.db' or 'postgresql+psycopg://user@host/db'."
            ) from None
        self._url, self._path = _resolve(url, Path.cwd())
        self._engine = self._make_engine()
        # queued writes straight to the SQLite driver (see _many); compiled once per column set
        self._raw_many = self._engine.dialect.name == "sqlite" and _RAW_MANY
        self._raw_plans: dict[tuple[Any, tuple[str, ...]], tuple[str, tuple, tuple]] = {}
        fast = _conflict_free_inserts(self._engine.dialect.name)
        self._i_intent_new, self._i_order_new, self._i_fill_new = fast or (None, None, None)
        with self._tx("open") as conn:  # one transaction: concurrent first opens serialize
            self._check_schema(conn)
            _META.create_all(conn)
            row = self._x(
                conn, sa.select(_LEDGER_META.c.value).where(_LEDGER_META.c.key == "schema_version")
            ).first()
            if row is None:
                self._x(
                    conn,
                    sa.insert(_LEDGER_META).values(key="schema_version", value=str(SCHEMA_VERSION)),
                )

    @property
    def url(self) -> str:
        """The resolved database URL (password hidden)."""
        return self._url.render_as_string(hide_password=True)

    def checkpoint(self, *, force: bool = False) -> None:
        """Move the write-ahead log's pages into the database (SQLite; a no-op elsewhere).

        SQLite would do it inside whichever commit crosses its threshold — on the session's
        decision path, with an fsync of the database. The session engine calls this after each
        bar's orders are out instead (``PASSIVE``: it never waits for a reader), and it runs
        once the log holds :data:`WAL_CHECKPOINT_BYTES` (or always with ``force``); the
        automatic checkpoint stays as a bound (:data:`WAL_AUTOCHECKPOINT_PAGES`) for other
        writers.
        """
        if self._engine.dialect.name != "sqlite" or self._batch_conn is not None:
            return
        if not force and self._path is not None:
            wal = self._path.with_name(self._path.name + "-wal")
            try:
                if wal.stat().st_size < WAL_CHECKPOINT_BYTES:
                    return
            except OSError:
                return  # no log yet
        with self._locked(), self._guard("checkpoint"), self._engine.connect() as conn:
            conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> OrderLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OrderLedger({self.url!r})"

    # -- batches ---------------------------------------------------------------------------------

    @property
    def in_batch(self) -> bool:
        """Whether a :meth:`batch` is open (the session engine never sends an order then: its
        intent would not be committed yet)."""
        return self._batch_conn is not None

    @contextmanager
    def batch(self, *, durable: bool = True) -> Iterator[OrderLedger]:
        """Run every ledger call of this thread inside the block in one transaction.

        The transaction is committed (one fsync with SQLite) when the outermost ``batch()``
        exits normally, and rolled back when the block raises: the ledger then holds exactly
        what it held before the block (a crash inside the block leaves the same). Calls inside
        the block see the block's own writes. Batches nest: a nested batch is a savepoint, and
        an exception out of it undoes that nested block only (the outer one goes on).

        A call inside a batch that fails after it started writing (a database error) fails its
        batch: later calls in it raise :class:`StoreError`, and so does its exit, after rolling
        it back. Validation errors (:class:`ParameterError`, a :class:`StoreError` such as a
        different intent under a known client order id) are raised before anything is written
        and leave the batch usable. Other threads' calls wait until the outermost batch exits.

        ``durable=False`` (the outermost batch decides): the commit is atomic and survives a
        crash of the process (SQLite's WAL holds it, ``synchronous=NORMAL``; Postgres
        ``synchronous_commit=off``) but is not flushed to disk at once, so a power cut may lose
        it, never half of it: the ledger then ends at an earlier consistent point, and the next
        durable commit flushes it. The session engine records broker events, acknowledgements
        and progress this way — what the broker knows and reconcile asks again — and commits
        intents durably, each before its order is sent. A durable batch cannot be nested in a
        non-durable one (:class:`ParameterError`).

        >>> from datetime import UTC, date, datetime
        >>> from workbench.execution.orders import OrderRequest, Side
        >>> lg = OrderLedger("sqlite://")
        >>> _ = lg.open_session("s", strategy="x", broker="sim", mode="paper",
        ...                     session_date=date(2024, 1, 2))
        >>> with lg.batch():
        ...     for i in range(3):
        ...         _ = lg.add_intent("s", i, OrderRequest(f"c{i}", "SPY", Side.BUY, qty=1),
        ...                           bar_ts=datetime(2024, 1, 2, 15, tzinfo=UTC))
        >>> lg.next_seq("s")
        3
        """
        with self._locked():
            if self._batch_conn is None:
                with self._guard("batch"):
                    conn = self._engine.connect()
                    try:
                        self._set_durability(conn, durable, begun=False)
                        conn.begin()
                        self._set_durability(conn, durable, begun=True)
                    except BaseException:
                        self._restore_durability(conn, durable)
                        conn.close()
                        raise
                self._batch_conn = conn
                self._batch_durable = durable
                level = _Level(None)
            else:
                if durable and not self._batch_durable:
                    raise ParameterError(
                        "a durable batch() cannot be nested in a non-durable one: its commit "
                        "would not be flushed when it exits. Fix: commit the outer batch first "
                        "(write-ahead intents are committed on their own, before any send)."
                    )
                self._check_level("batch")
                with self._guard("batch"):
                    self._flush(self._batch_conn)  # the savepoint's own writes queue from here
                    level = _Level(self._batch_conn.begin_nested())
            self._levels.append(level)
            try:
                yield self
            except BaseException:
                self._end_level(level, commit=False)
                raise
            if level.failed:
                self._end_level(level, commit=False)
                raise StoreError(
                    f"order ledger {self.url}: a call inside batch() failed after it started "
                    f"writing; the batch was rolled back (the ledger holds what it held before "
                    f"it). Fix: see the error that call raised, then run the batch again."
                )
            self._end_level(level, commit=True)

    def _end_level(self, level: _Level, *, commit: bool) -> None:
        assert self._levels and self._levels[-1] is level
        self._levels.pop()
        conn = self._batch_conn
        assert conn is not None
        try:
            with self._guard("commit" if commit else "rollback"):
                if commit:
                    self._flush(conn)
                else:
                    self._drop_queued()
                if level.savepoint is not None:
                    if commit:
                        level.savepoint.commit()
                    else:
                        level.savepoint.rollback()
                elif commit:
                    conn.commit()
                else:
                    conn.rollback()
        except BaseException:
            commit = False
            if level.savepoint is not None and self._levels:
                self._levels[-1].failed = True
            raise
        finally:
            if not commit:
                self._clear_caches()  # they may hold what was rolled back: read again
            if level.savepoint is None:
                self._batch_conn = None
                self._restore_durability(conn, self._batch_durable)
                self._batch_durable = True
                conn.close()

    def _set_durability(self, conn: Connection, durable: bool, *, begun: bool) -> None:
        """A non-durable transaction: SQLite ``synchronous=NORMAL`` (set before BEGIN),
        Postgres ``synchronous_commit=off`` (for this transaction only)."""
        if durable:
            return
        name = self._engine.dialect.name
        if name == "sqlite" and not begun:
            conn.connection.dbapi_connection.execute("PRAGMA synchronous = NORMAL")
        elif name == "postgresql" and begun:
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    def _restore_durability(self, conn: Connection, durable: bool) -> None:
        """Back to ``synchronous=FULL`` before the connection returns to the pool (a connection
        that cannot be reset is discarded)."""
        if durable or self._engine.dialect.name != "sqlite":
            return
        try:
            conn.connection.dbapi_connection.execute("PRAGMA synchronous = FULL")
        except Exception:  # the connection is not reused
            conn.invalidate()

    def _check_level(self, what: str) -> None:
        if self._levels and self._levels[-1].failed:
            raise StoreError(
                f"order ledger {self.url}: {what} refused: an earlier call in this batch() failed "
                f"after it started writing, so the batch will be rolled back. Fix: leave the "
                f"batch (it raises) and run it again."
            )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=BUSY_TIMEOUT_MS / 1000):
            raise StoreError(
                f"order ledger {self.url}: another thread held this ledger object (a batch) for "
                f"more than {BUSY_TIMEOUT_MS / 1000:g} s. Fix: keep batches short (no broker "
                f"calls inside one), or give the other thread its own OrderLedger."
            )
        try:
            yield
        finally:
            self._lock.release()

    # -- sessions ------------------------------------------------------------------------------

    def open_session(
        self,
        session_id: str,
        *,
        strategy: str,
        broker: str,
        mode: str,
        session_date: date,
        params: dict[str, Any] | None = None,
    ) -> SessionRecord:
        """Create a session (status ``running``), or return it unchanged when it exists.

        ``params`` are stored once, on creation. Raises :class:`StoreError` when ``session_id``
        exists with a different strategy, broker, mode or date.
        """
        session_id = _name(session_id, "session_id")
        if not isinstance(session_date, date) or isinstance(session_date, datetime):
            raise ParameterError(
                f"session_date must be a datetime.date; got {type(session_date).__name__} "
                f"{session_date!r}. Fix: pass e.g. datetime.date(2024, 1, 2)."
            )
        want = {
            "strategy": _name(strategy, "strategy"),
            "broker": _name(broker, "broker"),
            "mode": _name(mode, "mode"),
            "session_date": session_date,
        }
        params_json = _dumps(params or {}, "params")
        with self._tx("open_session") as conn:
            row = self._fetch_session(conn, session_id)  # the database: opens serialize
            if row is not None:
                diff = {k: (row[k], v) for k, v in want.items() if row[k] != v}
                if diff:
                    shown = ", ".join(f"{k} {a!r} (asked {b!r})" for k, (a, b) in diff.items())
                    raise StoreError(
                        f"session {session_id!r} already exists in ledger {self.url} with "
                        f"{shown}. Fix: use a new session id for a different strategy, broker, "
                        f"mode or date."
                    )
                self._own(session_id, row)
                return _session(row)
            now = _now()
            row = {
                "session_id": session_id,
                **want,
                "status": "running",
                "reason": "",
                "last_bar_ts": None,
                "next_seq": 0,
                "params": params_json,
                "started_at": now,
                "updated_at": now,
            }
            self._w(conn, _I_SESSION, row)
            self._own(session_id, row)
            return _session(row)

    def session(self, session_id: str) -> SessionRecord | None:
        """The session, or None when the ledger has no such session."""
        with self._locked():
            row = self._session_rows.get(session_id)
            if row is not None:
                return _session(row)
            with self._tx("session") as conn:
                row = self._session_row(conn, session_id)
            return None if row is None else _session(row)

    def sessions(self, strategy: str | None = None) -> list[SessionRecord]:
        """Every session (of ``strategy``), oldest first."""
        q = sa.select(_SESSIONS).order_by(_SESSIONS.c.started_at, _SESSIONS.c.session_id)
        if strategy is not None:
            q = q.where(_SESSIONS.c.strategy == strategy)
        with self._tx("sessions") as conn:
            rows = self._x(conn, q).mappings().all()
        return [_session(r) for r in rows]

    def set_progress(self, session_id: str, last_bar_ts: datetime) -> None:
        """Record that the bar at ``last_bar_ts`` is fully processed; never moves backwards."""
        ts = _utc(last_bar_ts, "last_bar_ts")
        with self._tx("set_progress") as conn:
            row = self._need_session(conn, session_id, own=True)
            last = row["last_bar_ts"]
            if last is not None and ts < last:
                raise StoreError(
                    f"session {session_id!r}: progress cannot move backwards from "
                    f"{last.isoformat()} to {ts.isoformat()} (ledger {self.url}). Fix: pass the "
                    f"last bar actually processed; a restarted session resumes after "
                    f"session().last_bar_ts."
                )
            if last == ts:
                return
            self._set_session(conn, session_id, last_bar_ts=ts)

    def set_status(self, session_id: str, status: str, reason: str = "") -> None:
        """Set the session's status (``running``, ``halted``, ``stopped``, ``done``) and reason."""
        if status not in SESSION_STATUSES:
            raise ParameterError(
                f"session status must be one of {list(SESSION_STATUSES)}; got {status!r}."
            )
        with self._tx("set_status") as conn:
            self._need_session(conn, session_id, own=True)
            self._set_session(conn, session_id, status=status, reason=str(reason or ""))

    def next_seq(self, session_id: str) -> int:
        """The next intent sequence number of the session (not reserved)."""
        with self._locked():
            row = self._session_rows.get(session_id)
            seqs = self._session_intents_cached(session_id)
            if row is None or seqs is None:
                with self._tx("next_seq") as conn:
                    row = self._need_session(conn, session_id)
                    seqs = self._session_intents(conn, session_id)
                    if seqs is None:
                        top = self._x(conn, _Q_MAX_SEQ, {"sid": session_id}).scalar()
            if seqs is not None:
                top = seqs[-1][0] if seqs else None
            return max(int(row["next_seq"]), -1 if top is None else int(top) + 1)

    # -- intents ---------------------------------------------------------------------------------

    def add_intent(
        self, session_id: str, seq: int, request: OrderRequest, *, bar_ts: datetime
    ) -> IntentRecord:
        """Commit an intent (write-ahead: before its order is sent) and return it.

        Idempotent on ``request.client_order_id``: the same content returns the existing record;
        a different request, session, seq or bar under an existing id raises :class:`StoreError`.
        Moves the session's ``next_seq`` to at least ``seq + 1``.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ParameterError(f"seq must be an int >= 0; got {seq!r}.")
        if not isinstance(request, OrderRequest):
            raise ParameterError(
                f"request must be an OrderRequest; got {type(request).__name__} {request!r}."
            )
        bar_ts = _utc(bar_ts, "bar_ts")
        cid = _name(request.client_order_id, "request.client_order_id")
        stored = _dumps(request.to_dict(), "request")
        with self._tx("add_intent") as conn:
            srow = self._need_session(conn, session_id, own=True)
            known = self._cached_intent(cid)
            if known is None and self._i_intent_new is None:
                known = self._fetch_intent(conn, cid)
            if known is not None:
                return self._same_intent(known, session_id, seq, bar_ts, request, stored)
            now = _now()
            row = {
                "client_order_id": cid,
                "session_id": session_id,
                "seq": seq,
                "symbol": request.symbol,
                "request": stored,
                "bar_ts": bar_ts,
                "state": "pending",
                "broker_order_id": None,
                "error": "",
                "created_at": now,
                "updated_at": now,
            }
            cache = self._cache(session_id)
            if (
                self._i_intent_new is not None
                and cache.intents is not None
                and self._batch_conn is not None
                and (not cache.intents or cache.intents[-1][0] < seq)
            ):
                # inside a batch, the next intent of a session whose intents are all known here:
                # queued and inserted with the batch's others in one statement; a conflict the
                # cache could not foresee (another writer) fails the batch (see _flush)
                self._queue_insert(self._i_intent_new, "intents", row)
            elif self._i_intent_new is not None:  # one statement; a conflict says which below
                if self._w(conn, self._i_intent_new, row).rowcount != 1:
                    known = self._fetch_intent(conn, cid)
                    if known is not None:
                        return self._same_intent(known, session_id, seq, bar_ts, request, stored)
                    self._seq_taken(conn, session_id, seq)
                    raise StoreError(  # pragma: no cover - a conflict is the id or the seq
                        f"intent {cid!r} could not be recorded in ledger {self.url}."
                    )
            else:
                self._seq_taken(conn, session_id, seq)
                self._w(conn, _I_INTENT, row)
            if seq + 1 > srow["next_seq"]:
                self._set_session(conn, session_id, next_seq=seq + 1, updated_at=now)
            self._intent_rows[cid] = row
            if cache.intents is not None:
                bisect.insort(cache.intents, (seq, cid))
            return self._intent_rec(row)

    def _same_intent(
        self,
        row: dict[str, Any],
        session_id: str,
        seq: int,
        bar_ts: datetime,
        request: OrderRequest,
        stored: str,
    ) -> IntentRecord:
        have = self._intent_rec(row)
        diff = []
        if have.session_id != session_id:
            diff.append(f"session {have.session_id!r} (asked {session_id!r})")
        if have.seq != seq:
            diff.append(f"seq {have.seq} (asked {seq})")
        if have.bar_ts != bar_ts:
            diff.append(f"bar_ts {have.bar_ts.isoformat()} (asked {bar_ts.isoformat()})")
        if have.request != OrderRequest.from_dict(json.loads(stored)):
            diff.append(f"request {have.request} (asked {request})")
        if diff:
            raise StoreError(
                f"client_order_id {have.client_order_id!r} is already recorded in ledger "
                f"{self.url} with different content: {'; '.join(diff)}. Fix: a client order id "
                f"names one intent; derive a new one (e.g. the next seq) for a different order."
            )
        return have

    def _seq_taken(self, conn: Connection, session_id: str, seq: int) -> None:
        other = self._x(conn, _Q_INTENT_AT_SEQ, {"sid": session_id, "seq": seq}).scalar()
        if other is not None:
            raise StoreError(
                f"session {session_id!r} already has intent seq {seq} (client_order_id "
                f"{other!r}) in ledger {self.url}. Fix: use next_seq() for a new intent."
            )

    def intent(self, client_order_id: str) -> IntentRecord | None:
        """The intent, or None when no intent has that client order id."""
        with self._locked():
            row = self._cached_intent(client_order_id)
            if row is None:
                with self._tx("intent") as conn:
                    row = self._fetch_intent(conn, client_order_id)
            return None if row is None else self._intent_rec(row)

    def intents(self, session_id: str, states: Iterable[str] | None = None) -> list[IntentRecord]:
        """The session's intents (in ``states``), ordered by seq."""
        wanted = None
        if states is not None:
            wanted = [states] if isinstance(states, str) else list(states)
            bad = [s for s in wanted if s not in INTENT_STATES]
            if bad:
                raise ParameterError(
                    f"intent states must be among {list(INTENT_STATES)}; got {bad!r}."
                )
        with self._locked():
            if session_id in self._owned:
                seqs = self._session_intents_cached(session_id)
                if seqs is None:
                    with self._tx("intents") as conn:
                        seqs = self._session_intents(conn, session_id)
                assert seqs is not None
                rows = [self._intent_rows[cid] for _, cid in seqs]
                if wanted is not None:
                    rows = [r for r in rows if r["state"] in wanted]
                return [self._intent_rec(r) for r in rows]
        q = sa.select(_INTENTS).where(_INTENTS.c.session_id == session_id)
        if wanted is not None:
            q = q.where(_INTENTS.c.state.in_(wanted))
        with self._tx("intents") as conn:
            rows = self._x(conn, q.order_by(_INTENTS.c.seq)).mappings().all()
        return [_intent(r) for r in rows]

    def mark_acked(self, client_order_id: str, order: BrokerOrder, ts: datetime) -> list[Fill]:
        """The broker acknowledged the intent: state ``acked``, its broker order id, and the order
        recorded as :meth:`apply_order` (event ``ack``, the order's status is the truth).

        Returns the fills the acknowledged order already carries (usually none).
        """
        ts = _utc(ts, "ts")
        if not isinstance(order, BrokerOrder) or not order.id:
            raise ParameterError(f"order must be a BrokerOrder with an id; got {order!r}.")
        if not order.client_order_id:
            order = replace(order, client_order_id=client_order_id)
        elif order.client_order_id != client_order_id:
            raise StoreError(
                f"mark_acked({client_order_id!r}) got broker order {order.id!r} of client order "
                f"id {order.client_order_id!r} (ledger {self.url}). Fix: acknowledge an intent "
                f"with the order the broker returned for it."
            )
        with self._tx("mark_acked") as conn:
            row = self._need_intent(conn, client_order_id, own=True)
            self._set_intent(conn, client_order_id, state="acked", broker_order_id=order.id)
            return self._apply(
                conn, row["session_id"], order, event="ack", ts=ts, execution_id=None,
                price=None, qty=None, commission=0.0, venue="",
            )  # fmt: skip

    def mark_refused(self, client_order_id: str, error: str) -> None:
        """The broker (or the local rule check) definitively refused the intent."""
        with self._tx("mark_refused") as conn:
            row = self._need_intent(conn, client_order_id, own=True)
            if row["state"] == "acked":
                raise StoreError(
                    f"intent {client_order_id!r} is acked (broker order "
                    f"{row['broker_order_id']!r}) in ledger {self.url}; it cannot be refused. "
                    f"Fix: cancel the order instead."
                )
            self._set_intent(conn, client_order_id, state="refused", error=str(error or ""))

    def mark_not_found(self, client_order_id: str) -> None:
        """Reconcile found that the broker never got the intent's order."""
        with self._tx("mark_not_found") as conn:
            row = self._need_intent(conn, client_order_id, own=True)
            if row["state"] in ("acked", "refused"):
                raise StoreError(
                    f"intent {client_order_id!r} is {row['state']} in ledger {self.url}; only a "
                    f"pending intent can be marked not found. Fix: leave it as it is."
                )
            self._set_intent(conn, client_order_id, state="not_found")

    # -- orders, events, fills -------------------------------------------------------------------

    def apply_order(
        self,
        session_id: str,
        order: BrokerOrder,
        *,
        event: str,
        ts: datetime,
        execution_id: str | None = None,
        price: float | None = None,
        qty: float | None = None,
        commission: float = 0.0,
        venue: str = "",
    ) -> list[Fill]:
        """Record a broker event about ``order`` and derive its new fills (the one place fills are
        derived); returns the new fills, empty when the event adds none.

        The order row is upserted by broker id; a status change is recorded as a transition
        (``next_status`` drives it from ``event``; for a REST read, event ``rest``, the order's
        reported status is the truth). The raw event is always recorded, unknown names too.

        Fills follow the cumulative ``filled_qty``: with ``F0, P0`` recorded and ``F, P`` the
        order's, ``F > F0 + 1e-9`` gives one fill of ``F - F0`` (signed by side) at ``price``
        when this event's own ``qty`` is exactly ``F - F0``, else at ``(F*P - F0*P0) / (F - F0)``.
        Its id is ``execution_id`` unless that is missing or already recorded, else
        ``f"{order.id}@{F:g}"``. ``F <= F0 + 1e-9`` (replays, a poll after a stream fill, a stream
        fill after a poll) gives none.
        """
        ts = _utc(ts, "ts")
        if not isinstance(event, str) or not event:
            raise ParameterError(f"event must be a non-empty event name; got {event!r}.")
        with self._tx("apply_order") as conn:
            self._need_session(conn, session_id, own=True)
            return self._apply(
                conn, session_id, order, event=event, ts=ts, execution_id=execution_id,
                price=price, qty=qty, commission=commission, venue=venue,
            )  # fmt: skip

    def order(self, order_id: str) -> BrokerOrder | None:
        """The recorded order by broker id (the ledger's status and cumulative fill)."""
        with self._locked():
            row = self._cached_order(order_id)
            if row is None:
                with self._tx("order") as conn:
                    row = self._fetch_order(conn, order_id)
            return None if row is None else self._order_obj(row)

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The latest order of an intent (or external client order id), following replaces."""
        with self._tx("order_by_client_id") as conn:
            row = self._latest_order(conn, client_order_id)
        return None if row is None else _order(row)

    def orders(
        self, session_id: str | None = None, *, open_only: bool = False
    ) -> list[BrokerOrder]:
        """Recorded orders (of a session; only open ones), in recorded order."""
        with self._locked():
            if session_id is not None and session_id in self._owned:
                cache = self._cache(session_id)
                if open_only and cache.orders is not None and cache.open is not None:
                    rows = [self._order_rows.get(oid) for oid in cache.open]
                    if all(r is not None for r in rows):
                        return [self._order_obj(r) for r in rows]
                ids = cache.orders
                if ids is None:
                    with self._tx("orders") as conn:
                        ids = self._load_orders(conn, session_id)
                rows = [self._order_rows.get(oid) for oid in ids]
                if any(r is None for r in rows):  # evicted (a value the database changes)
                    with self._tx("orders") as conn:
                        ids = self._load_orders(conn, session_id)
                    rows = [self._order_rows[oid] for oid in ids]
                if open_only:
                    rows = [r for r in rows if r["status"] in _OPEN_VALUES]
                    cache.open = {r["order_id"]: None for r in rows}
                return [self._order_obj(r) for r in rows]
        q = sa.select(_ORDERS).order_by(_ORDERS.c.id)
        if session_id is not None:
            q = q.where(_ORDERS.c.session_id == session_id)
        if open_only:
            q = q.where(_ORDERS.c.status.in_(sorted(_OPEN_VALUES)))
        with self._tx("orders") as conn:
            rows = self._x(conn, q).mappings().all()
        return [_order(r) for r in rows]

    def fills(self, session_id: str, *, unbooked_only: bool = False) -> list[FillRecord]:
        """The session's fills (only those not booked yet), in recorded order."""
        q = sa.select(_FILLS).where(_FILLS.c.session_id == session_id).order_by(_FILLS.c.id)
        if unbooked_only:
            q = q.where(_FILLS.c.booked_bar_ts.is_(None))
        with self._tx("fills") as conn:
            rows = self._x(conn, q).mappings().all()
        return [FillRecord(_fill(r), r["session_id"], r["booked_bar_ts"]) for r in rows]

    def book_fills(
        self, session_id: str, bar_ts: datetime, *, decided_before: datetime | None = None
    ) -> list[Fill]:
        """Book every unbooked fill of the session at ``bar_ts``; return all fills booked at
        ``bar_ts`` (now and before a crash), in recorded order. Idempotent.

        ``decided_before``: book only fills of orders decided before that time (or of no
        decision: external orders). The session engine passes the bar's own time, so a fill of
        an order decided at this bar is booked at the next one, as in an uninterrupted run,
        even when a restart finds it recorded already.
        """
        bar_ts = _utc(bar_ts, "bar_ts")
        with self._tx("book_fills") as conn:
            if decided_before is None:
                self._w(conn, _U_BOOK, {"b_sid": session_id, "booked_bar_ts": bar_ts})
            else:
                self._w(
                    conn,
                    _U_BOOK_BEFORE,
                    {
                        "b_sid": session_id, "booked_bar_ts": bar_ts,
                        "b_before": _utc(decided_before, "decided_before"),
                    },
                )  # fmt: skip
            return self._booked(conn, session_id, bar_ts)

    def fills_booked_at(self, session_id: str, bar_ts: datetime) -> list[Fill]:
        """The session's fills booked at ``bar_ts``, in recorded order."""
        bar_ts = _utc(bar_ts, "bar_ts")
        with self._tx("fills_booked_at") as conn:
            return self._booked(conn, session_id, bar_ts)

    def book_release(
        self, session_id: str, key: str, symbol: str, qty: float, bar_ts: datetime
    ) -> bool:
        """Record, once per ``key``, that ``qty`` signed shares of an order will not fill (its
        remainder ended cancelled, expired or rejected), booked at bar ``bar_ts``. Returns False
        when ``key`` was booked already (the first booking stands)."""
        bar_ts = _utc(bar_ts, "bar_ts")
        with self._tx("book_release") as conn:
            hit = self._x(
                conn,
                sa.select(_RELEASES.c.id).where(
                    _RELEASES.c.session_id == session_id, _RELEASES.c.key == key
                ),
            ).first()
            if hit is not None:
                return False
            self._w(
                conn,
                _I_RELEASE,
                {
                    "session_id": session_id,
                    "key": key,
                    "symbol": symbol,
                    "qty": float(qty),
                    "booked_bar_ts": bar_ts,
                },
            )
        return True

    def releases_booked_at(self, session_id: str, bar_ts: datetime) -> list[tuple[str, float]]:
        """(symbol, signed qty) released at bar ``bar_ts``, in booking order (zeros dropped)."""
        bar_ts = _utc(bar_ts, "bar_ts")
        with self._tx("releases_booked_at") as conn:
            rows = self._x(
                conn,
                sa.select(_RELEASES.c.symbol, _RELEASES.c.qty)
                .where(_RELEASES.c.session_id == session_id, _RELEASES.c.booked_bar_ts == bar_ts)
                .order_by(_RELEASES.c.id),
            ).all()
        return [(sym, q) for sym, q in rows if abs(q) > _EPS]

    # -- positions -------------------------------------------------------------------------------

    def positions(self, session_id: str) -> dict[str, float]:
        """The session's start snapshot plus the sum of its fills, per symbol (zeros dropped)."""
        with self._locked():
            cache = self._cache(session_id) if session_id in self._owned else None
            out = cache.positions if cache is not None else None
            if out is None:
                with self._tx("positions") as conn:
                    out = self._load_positions(conn, session_id)
                if cache is not None:
                    cache.positions = out
            return {s: q for s, q in out.items() if abs(q) > _EPS}

    def snapshot_positions(
        self, session_id: str, positions: Mapping[str, float], *, kind: str, ts: datetime
    ) -> None:
        """Record the broker's positions (``start``, ``end`` or ``reconcile``); ``start`` is
        written once (a second ``start`` keeps the first)."""
        if kind not in SNAPSHOT_KINDS:
            raise ParameterError(
                f"snapshot kind must be one of {list(SNAPSHOT_KINDS)}; got {kind!r}."
            )
        ts = _utc(ts, "ts")
        clean = {}
        for s, q in dict(positions).items():
            f = float(q)
            if not math.isfinite(f):
                raise ParameterError(f"position {s!r} must be a finite number; got {q!r}.")
            clean[str(s)] = f
        body = _dumps(clean, "positions")
        with self._tx("snapshot_positions") as conn:
            self._need_session(conn, session_id, own=True)
            if kind == "start" and self._snapshot(conn, session_id, "start") is not None:
                return
            self._w(
                conn, _I_SNAPSHOT, {"session_id": session_id, "kind": kind, "ts": ts,
                                    "positions": body},
            )  # fmt: skip
            if kind == "start":
                self._cache(session_id).positions = None  # positions start from it: reload

    def snapshot(self, session_id: str, kind: str = "start") -> dict[str, float] | None:
        """The latest snapshot of ``kind`` (the only ``start``), or None when none was taken."""
        with self._tx("snapshot") as conn:
            return self._snapshot(conn, session_id, kind)

    def save_engine_state(self, session_id: str, state: Mapping[str, Any], *, ts: datetime) -> None:
        """Record the risk engine's book at the end of ``session_id`` (replacing an earlier one):
        JSON with ``null`` for NaN. The next session of the strategy starts from it."""
        ts = _utc(ts, "ts")
        body = _dumps(_nan_to_none(state), "engine state")
        with self._tx("save_engine_state") as conn:
            self._need_session(conn, session_id, own=True)
            self._w(conn, sa.delete(_STATES).where(_STATES.c.session_id == session_id), {})
            self._w(conn, sa.insert(_STATES), {"session_id": session_id, "ts": ts, "state": body})

    def engine_state(self, session_id: str) -> dict[str, Any] | None:
        """The risk engine's book recorded at the end of ``session_id``, or None."""
        with self._tx("engine_state") as conn:
            body = self._x(
                conn, sa.select(_STATES.c.state).where(_STATES.c.session_id == session_id)
            ).scalar()
        if body is None:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise StoreError(
                f"order ledger {self.url}: the engine state of session {session_id!r} is not "
                "JSON. Fix: delete that row of engine_states (the next session then starts "
                "flat, from the broker's positions) or restore the ledger from a backup."
            ) from None

    # -- history ---------------------------------------------------------------------------------

    def events(self, session_id: str, client_order_id: str | None = None) -> list[dict[str, Any]]:
        """Raw events recorded (of an intent or client order id), oldest first.

        Each is a dict with ``id, session_id, order_id, client_order_id, intent_cid, event, ts,
        execution_id, qty, price, commission, venue`` and ``order`` (the snapshot as reported).
        """
        q = sa.select(_EVENTS).where(_EVENTS.c.session_id == session_id).order_by(_EVENTS.c.id)
        if client_order_id is not None:
            q = q.where(
                sa.or_(
                    _EVENTS.c.client_order_id == client_order_id,
                    _EVENTS.c.intent_cid == client_order_id,
                )
            )
        with self._tx("events") as conn:
            rows = self._x(conn, q).mappings().all()
        return [{**r, "order": json.loads(r["order"])} for r in rows]

    def transitions(self, client_order_id: str) -> list[tuple[str, str, str, datetime]]:
        """Status changes ``(from, to, event, ts)`` of the orders of an intent, oldest first."""
        t = _TRANSITIONS
        q = (
            sa.select(t.c.from_status, t.c.to_status, t.c.event, t.c.ts)
            .where(
                sa.or_(t.c.client_order_id == client_order_id, t.c.intent_cid == client_order_id)
            )
            .order_by(t.c.id)
        )
        with self._tx("transitions") as conn:
            rows = self._x(conn, q).all()
        return [(a, b, e, ts) for a, b, e, ts in rows]

    def frames(self, session_id: str) -> dict[str, pl.DataFrame]:
        """``intents``, ``orders``, ``fills`` and ``transitions`` of a session as polars frames."""
        with self._tx("frames") as conn:
            intents = self._x(
                conn,
                sa.select(_INTENTS)
                .where(_INTENTS.c.session_id == session_id)
                .order_by(_INTENTS.c.seq)
            ).mappings().all()  # fmt: skip
            orders = (
                self._x(
                    conn,
                    sa.select(_ORDERS)
                    .where(_ORDERS.c.session_id == session_id)
                    .order_by(_ORDERS.c.id),
                )
                .mappings()
                .all()
            )
            fills = (
                self._x(
                    conn,
                    sa.select(_FILLS)
                    .where(_FILLS.c.session_id == session_id)
                    .order_by(_FILLS.c.id),
                )
                .mappings()
                .all()
            )
            trans = self._x(
                conn,
                sa.select(_TRANSITIONS)
                .where(_TRANSITIONS.c.session_id == session_id)
                .order_by(_TRANSITIONS.c.id)
            ).mappings().all()  # fmt: skip
        intent_rows = []
        for r in intents:
            req = json.loads(r["request"])
            intent_rows.append(
                {
                    **{k: r[k] for k in _FRAME_SCHEMAS["intents"] if k in r},
                    "side": req.get("side"),
                    "qty": req.get("qty"),
                    "notional": req.get("notional"),
                    "type": req.get("type"),
                    "intent": req.get("intent"),
                }
            )
        return {
            "intents": _frame(intent_rows, "intents"),
            "orders": _frame(orders, "orders"),
            "fills": _frame(fills, "fills"),
            "transitions": _frame(trans, "transitions"),
        }

    # -- internals (run inside one transaction opened by the caller) ------------------------------

    def _apply(
        self,
        conn: Connection,
        session_id: str,
        order: BrokerOrder,
        *,
        event: str,
        ts: datetime,
        execution_id: str | None,
        price: float | None,
        qty: float | None,
        commission: float,
        venue: str,
    ) -> list[Fill]:
        if not isinstance(order, BrokerOrder) or not order.id:
            raise ParameterError(f"order must be a BrokerOrder with an id; got {order!r}.")
        oid = order.id
        reported = _order_dict(order)
        snapshot = _dumps(reported, "order")
        row = self._cached_order(oid)
        # an order this object has not seen is inserted first (INSERT ... ON CONFLICT DO
        # NOTHING); when it turns out to exist, it is read and the event planned again
        optimistic = row is None and self._i_order_new is not None
        if row is None and not optimistic:
            row = self._fetch_order(conn, oid)
        while True:
            known = row["client_order_id"] if row is not None else ""
            if known and order.client_order_id and order.client_order_id != known:
                raise StoreError(
                    f"order {oid!r} is recorded in ledger {self.url} for client order id "
                    f"{known!r} (session {row['session_id']!r}); the broker reported it for "
                    f"{order.client_order_id!r}. Two orders cannot share an id: a venue reused "
                    f"its ids in this ledger. Fix: keep a simulated venue's state with its ledger "
                    f"(or use a new ledger for a new venue)."
                )
            plan = self._plan(
                conn, session_id, order, row, event, price, qty, ts, reported, snapshot
            )
            if row is not None:
                changed = {k: v for k, v in plan.cols.items() if not _same(row[k], v)}
                if changed:
                    self._update(_U_ORDER, "b_oid", oid, changed)
                    self._cache_order_update(oid, changed, plan.legs)  # legs: of the raw kept
                break
            new_row = {"order_id": oid, "session_id": plan.owner, **plan.cols}
            owner = self._session_caches.get(plan.owner)
            if (
                optimistic
                and self._batch_conn is not None
                and owner is not None
                and owner.orders is not None
                and plan.owner in self._owned
            ):
                # inside a batch, an order new to a session whose orders are all known here:
                # queued with the batch's other new orders (a taken id fails the batch)
                self._queue_insert(self._i_order_new, "orders", new_row)
            elif not optimistic:
                self._w(conn, _I_ORDER, new_row)
            elif self._w(conn, self._i_order_new, new_row).rowcount != 1:
                optimistic = False
                row = self._fetch_order(conn, oid)
                if row is None:  # pragma: no cover - the conflict was on order_id
                    raise StoreError(f"order {oid!r} could not be recorded in ledger {self.url}.")
                continue
            self._cache_order_insert(new_row, plan.legs)
            break
        cid, intent_cid, current, new = plan.cid, plan.intent_cid, plan.current, plan.new

        # the raw event, always (unknown event names too)
        self._append(_I_EVENT, {
            "session_id": session_id, "order_id": oid, "client_order_id": cid,
            "intent_cid": intent_cid, "event": event, "ts": ts, "execution_id": execution_id,
            "qty": _num(qty), "price": _num(price), "commission": float(commission or 0.0),
            "venue": str(venue or ""), "order": snapshot,
        })  # fmt: skip

        # status
        if new is not current:
            self._append(_I_TRANSITION, {
                "session_id": session_id, "order_id": oid, "client_order_id": cid,
                "intent_cid": intent_cid, "from_status": current.value, "to_status": new.value,
                "event": event, "ts": ts,
            })  # fmt: skip

        # fills: cumulative filled_qty is the truth
        fills: list[Fill] = []
        if plan.fill is not None:
            delta, fill_price, f = plan.fill
            decided_at = None
            if intent_cid is not None:
                irow = self._intent_row(conn, intent_cid)
                if irow is not None:
                    decided_at = self._intent_rec(irow).request.decided_at
            signed = delta if order.side is Side.BUY else -delta
            comm, where = float(commission or 0.0), str(venue or "")
            exec_id = self._insert_fill(conn, {
                "session_id": session_id, "order_id": oid, "client_order_id": cid,
                "symbol": order.symbol, "ts": ts, "qty": signed, "price": _num(fill_price),
                "commission": comm, "ref_price": None, "decided_at": decided_at, "venue": where,
                "booked_bar_ts": None,
            }, oid, f, execution_id)  # fmt: skip
            fills.append(
                Fill(
                    execution_id=exec_id, client_order_id=cid, order_id=oid, symbol=order.symbol,
                    ts=ts, qty=signed, price=fill_price, commission=comm, decided_at=decided_at,
                    venue=where,
                )
            )  # fmt: skip
            pos = self._session_caches.get(session_id)
            if pos is not None and pos.positions is not None:
                pos.positions[order.symbol] = pos.positions.get(order.symbol, 0.0) + signed

        if order.replaces:  # link the replaced order forward
            prev = self._cached_order(order.replaces)
            if prev is not None and prev["replaced_by"] is None:  # known row: queue it
                self._update(_U_ORDER, "b_oid", order.replaces, {"replaced_by": oid})
                self._cache_order_update(order.replaces, {"replaced_by": oid}, None)
            elif prev is None:
                self._w(conn, _U_LINK, {"b_oid": order.replaces, "replaced_by": oid})

        # the intent: seeing its order proves the broker got it
        if intent_cid is not None and cid == intent_cid:
            irow = self._intent_row(conn, intent_cid)
            if irow is not None and irow["state"] != "acked":
                self._set_intent(conn, intent_cid, state="acked", broker_order_id=oid)
            elif irow is not None and irow["broker_order_id"] is None:
                self._set_intent(conn, intent_cid, broker_order_id=oid)
        return fills

    def _plan(
        self,
        conn: Connection,
        session_id: str,
        order: BrokerOrder,
        row: Mapping[str, Any] | None,
        event: str,
        price: float | None,
        qty: float | None,
        ts: datetime,
        reported: dict[str, Any],
        snapshot: str,
    ) -> _Plan:
        """The order row, status and fill an event leads to, given the recorded ``row``."""
        plan = _Plan()
        cid = order.client_order_id or (row["client_order_id"] if row is not None else "")
        intent_cid = row["intent_cid"] if row is not None else None
        if intent_cid is None:
            intent_cid = self._intent_of(conn, cid, order.replaces)
        owner = session_id if row is None else row["session_id"]
        if row is None and intent_cid is not None:
            irow = self._intent_row(conn, intent_cid)
            if irow is None:  # pragma: no cover - intent_cid always names a recorded intent
                raise StoreError(f"no intent {intent_cid!r} in ledger {self.url}.")
            owner = irow["session_id"]

        current = OrderStatus(row["status"]) if row is not None else OrderStatus.PENDING_SUBMIT
        if event in REST_EVENTS:
            new = (
                order.status if order.status is not OrderStatus.UNKNOWN or row is None else current
            )
        else:
            new = next_status(current, event, order.status)

        f0 = float(row["filled_qty"]) if row is not None else 0.0
        p0 = row["filled_avg_price"] if row is not None else None
        f = float(order.filled_qty or 0.0)
        p = order.filled_avg_price
        plan.fill = None
        if f > f0 + _EPS:
            delta = f - f0
            if price is not None and qty is not None and abs(abs(qty) - delta) <= _EPS:
                fill_price = float(price)
            elif p is not None:
                fill_price = (f * p - f0 * (p0 or 0.0)) / delta if f0 > 0 else float(p)
            else:  # the broker reported no average price
                fill_price = float(price) if price is not None else _NAN
            if p is None:
                p = (f0 * (p0 or 0.0) + delta * fill_price) / f
            plan.fill = (delta, fill_price, f)
        else:  # stale or equal: keep the recorded cumulative fill
            f, p = f0, p0

        # the snapshot kept on the row: an event without legs keeps the known legs
        legs = reported["legs"]
        if row is not None and not order.legs:
            known = self._row_legs(order.id, row)
            if known != legs:
                legs = known
        raw = snapshot if legs is reported["legs"] else _dumps({**reported, "legs": legs}, "order")

        cols: dict[str, Any] = {
            "client_order_id": cid,
            "intent_cid": intent_cid,
            "symbol": order.symbol,
            "side": order.side.value,
            "qty": _num(order.qty),
            "notional": _num(order.notional),
            "filled_qty": f,
            "filled_avg_price": _num(p),
            "status": new.value,
            "raw_status": order.raw_status or order.status.value,
            "type": order.type.value,
            "time_in_force": order.time_in_force.value,
            "order_class": order.order_class.value,
            "limit_price": _num(order.limit_price),
            "stop_price": _num(order.stop_price),
            "replaces": order.replaces,
            "replaced_by": order.replaced_by,
            "created_at": _utc_or_none(order.created_at),
            "updated_at": _utc_or_none(order.updated_at),
            "recorded_at": ts,
            "raw": raw,
        }
        if row is not None:
            for keep in _KEPT_COLS:
                if cols[keep] is None:
                    cols[keep] = row[keep]
        plan.cid, plan.intent_cid, plan.owner = cid, intent_cid, owner
        plan.current, plan.new, plan.cols, plan.legs = current, new, cols, legs
        return plan

    def _insert_fill(
        self, conn: Connection, params: dict[str, Any], order_id: str, f: float, given: str | None
    ) -> str:
        """Insert the fill under its execution id: ``given`` unless missing or recorded, else
        ``f"{order_id}@{f:g}"``, ``f"{order_id}@{f!r}"``, then ``...#2``, ``#3``, ..."""
        candidates = [given] if given else []
        candidates += [f"{order_id}@{f:g}", f"{order_id}@{f!r}"]
        sid = params["session_id"]
        cache = self._session_caches.get(sid)
        known = cache.fill_ids if cache is not None else None
        if (
            self._i_fill_new is not None
            and self._batch_conn is not None
            and cache is not None
            and sid in self._owned
        ):
            # inside a batch, a fill of a session whose execution ids are all known here: the
            # id is chosen from the cache and the row queued with the batch's other new rows
            # (a taken id, another writer's, fails the batch: see _flush)
            if known is None:
                known = cache.fill_ids = set(
                    self._x(conn, _Q_SESSION_FILL_IDS, {"sid": sid}).scalars()
                )
            n = 2
            while True:
                for c in candidates:
                    if c not in known:
                        known.add(c)
                        self._queue_insert(self._i_fill_new, "fills", {**params, "execution_id": c})
                        return c
                candidates = [f"{order_id}@{f!r}#{n}"]
                n += 1
        n = 2
        while True:
            for c in candidates:
                if self._i_fill_new is not None:
                    if self._w(conn, self._i_fill_new, {**params, "execution_id": c}).rowcount:
                        if known is not None:
                            known.add(c)
                        return c
                elif self._x(conn, _Q_FILL_EXISTS, {"eid": c}).first() is None:
                    self._w(conn, _I_FILL, {**params, "execution_id": c})
                    if known is not None:
                        known.add(c)
                    return c
            candidates = [f"{order_id}@{f!r}#{n}"]
            n += 1

    def _intent_of(self, conn: Connection, cid: str, replaces: str | None) -> str | None:
        """The intent an order belongs to: its own client order id, else the replaced order's."""
        if cid and self._intent_row(conn, cid) is not None:
            return cid
        if replaces:
            prev = self._order_row(conn, replaces)
            if prev is not None:
                return prev["intent_cid"]
        return None

    def _latest_order(self, conn: Connection, cid: str) -> sa.RowMapping | None:
        rows = self._x(
                conn,
            sa.select(_ORDERS)
            .where(sa.or_(_ORDERS.c.client_order_id == cid, _ORDERS.c.intent_cid == cid))
            .order_by(_ORDERS.c.id)
        ).mappings().all()  # fmt: skip
        if not rows:
            return None
        own = [r for r in rows if r["client_order_id"] == cid] or rows
        row = own[0]
        seen = {row["order_id"]}
        while row["replaced_by"] and row["replaced_by"] not in seen:
            nxt = self._x(conn, _Q_ORDER, {"oid": row["replaced_by"]}).mappings().first()
            if nxt is None:
                break
            seen.add(nxt["order_id"])
            row = nxt
        return row

    def _booked(self, conn: Connection, session_id: str, bar_ts: datetime) -> list[Fill]:
        rows = self._x(
                conn,
            sa.select(_FILLS)
            .where(_FILLS.c.session_id == session_id, _FILLS.c.booked_bar_ts == bar_ts)
            .order_by(_FILLS.c.id)
        ).mappings().all()  # fmt: skip
        return [_fill(r) for r in rows]

    def _snapshot(self, conn: Connection, session_id: str, kind: str) -> dict[str, float] | None:
        if kind not in SNAPSHOT_KINDS:
            raise ParameterError(
                f"snapshot kind must be one of {list(SNAPSHOT_KINDS)}; got {kind!r}."
            )
        order = _SNAPSHOTS.c.id if kind == "start" else _SNAPSHOTS.c.id.desc()
        body = self._x(
            conn,
            sa.select(_SNAPSHOTS.c.positions)
            .where(_SNAPSHOTS.c.session_id == session_id, _SNAPSHOTS.c.kind == kind)
            .order_by(order)
            .limit(1),
        ).scalar()
        return None if body is None else {k: float(v) for k, v in json.loads(body).items()}

    def _load_positions(self, conn: Connection, session_id: str) -> dict[str, float]:
        out = dict(self._snapshot(conn, session_id, "start") or {})
        for symbol, q in self._x(conn, _Q_FILL_QTYS, {"sid": session_id}).all():
            out[symbol] = out.get(symbol, 0.0) + q
        return out

    # -- cached rows (of the sessions this object writes) ----------------------------------------

    def _clear_caches(self) -> None:
        self._session_rows: dict[str, dict[str, Any]] = {}
        self._session_caches: dict[str, _SessionCache] = {}
        self._intent_rows: dict[str, dict[str, Any]] = {}
        self._intent_recs: dict[str, IntentRecord] = {}
        self._order_rows: dict[str, dict[str, Any]] = {}
        self._order_objs: dict[str, BrokerOrder] = {}
        self._order_legs: dict[str, list[Any]] = {}

    def _cache(self, session_id: str) -> _SessionCache:
        cache = self._session_caches.get(session_id)
        if cache is None:
            cache = self._session_caches[session_id] = _SessionCache()
        return cache

    def _own(self, session_id: str, row: Mapping[str, Any]) -> None:
        """This object writes ``session_id`` from now on: cache its rows."""
        self._owned.add(session_id)
        self._session_rows[session_id] = dict(row)

    def _w(self, conn: Connection, stmt: Any, params: Mapping[str, Any]) -> Any:
        """Execute a write statement; one that changed rows is counted (a call that raises after
        changing rows is rolled back, and fails its batch). An update runs after the queued
        writes (:meth:`_flush`); an insert needs not wait for them (they touch other rows)."""
        if self._q_rows and not stmt.is_insert:
            self._flush(conn)
        res = conn.execute(stmt, params)
        if res.rowcount != 0:
            self._nwrites += 1
        return res

    def _x(self, conn: Connection, stmt: Any, params: Any = None) -> Any:
        """Execute a read (after the queued writes: a read sees everything written before)."""
        if self._q_rows:
            self._flush(conn)
        return conn.execute(stmt, params)

    def _append(self, stmt: Any, params: dict[str, Any]) -> None:
        """Queue an insert into an append-only table (events, transitions): executed with the
        transaction's other queued rows of that table in one statement (see :meth:`_flush`)."""
        self._q_appends.setdefault(stmt, []).append(params)
        self._q_rows += 1
        self._nwrites += 1

    def _update(self, stmt: Any, bind: str, key: str, cols: Mapping[str, Any]) -> None:
        """Queue an update of one row (``bind`` = ``key``); updates of a row in one transaction
        merge into one, in call order."""
        slot = self._q_updates.get((stmt, key))
        if slot is None:
            self._q_updates[(stmt, key)] = {bind: key, **cols}
        else:
            slot.update(cols)
        self._q_rows += 1
        self._nwrites += 1

    def _flush(self, conn: Connection) -> None:
        """Execute the queued writes: one executemany per table and column set. Runs before any
        read, update or commit of the transaction, so every read sees every earlier write; a
        failure fails the call (and its batch) like any write."""
        if not self._q_rows:
            return
        inserts, appends, updates = self._q_inserts, self._q_appends, self._q_updates
        self._drop_queued()
        for (stmt, what), rows in inserts.items():
            if self._many(conn, stmt, rows) != len(rows):
                key = {"intents": "a client order id or a seq", "fills": "an execution id"}.get(
                    what, "an order id"
                )
                raise StoreError(
                    f"order ledger {self.url}: {len(rows)} {what} could not all be recorded "
                    f"({key} is taken: another process writes this session, or a venue "
                    f"reused its ids in this ledger). Nothing of the batch was kept. Fix: run "
                    f"one session process per session, and keep a simulated venue's state "
                    f"with its ledger; `wb session status` shows what is recorded."
                )
        for stmt, rows in appends.items():
            self._many(conn, stmt, rows)
        groups: dict[tuple[Any, tuple[str, ...]], list[dict[str, Any]]] = {}
        for (stmt, _key), row in updates.items():
            groups.setdefault((stmt, tuple(sorted(row))), []).append(row)
        for (stmt, _cols), rows in groups.items():
            self._many(conn, stmt, rows)

    def _many(self, conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> int:
        """Execute ``stmt`` once per row (an executemany) and return the rows it changed.

        With SQLite the rows go straight to the driver: the statement is compiled once per
        column set and each value converted by its column type's own bind processor (what
        SQLAlchemy does per row, without its per-row bookkeeping, most of the cost of a bar's
        writes). The rows of one call must name the same columns; elsewhere, and for rows that
        do not, SQLAlchemy executes them.
        """
        if not self._raw_many:
            return conn.execute(stmt, rows).rowcount
        keys = tuple(rows[0])
        if any(tuple(r) != keys for r in rows):
            return conn.execute(stmt, rows).rowcount
        plan = self._raw_plans.get((stmt, keys))
        if plan is None:
            plan = self._raw_plans[(stmt, keys)] = self._raw_plan(stmt, keys)
        sql, get, convert = plan
        params = []
        for r in rows:
            values = get(r)
            for i, proc in convert:
                values[i] = proc(values[i])
            params.append(values)
        cur = conn.connection.dbapi_connection.cursor()
        try:
            cur.executemany(sql, params)
            return cur.rowcount
        finally:
            cur.close()

    def _raw_plan(self, stmt: Any, keys: tuple[str, ...]) -> tuple[str, Any, list]:
        """``stmt`` for the driver: its SQL, a row -> positional values getter, and the bind
        processors of the positions that have one (datetimes memoized: a bar's rows share a few)."""
        dialect = self._engine.dialect
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        names = tuple(compiled.positiontup or ())
        convert = []
        for i, n in enumerate(names):
            typ = compiled.binds[n].type
            proc = typ.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                convert.append((i, _memo(proc) if isinstance(typ, _DT | sa.DateTime) else proc))

        def get(row: Mapping[str, Any]) -> list[Any]:
            return [row[n] for n in names]

        return str(compiled), get, convert

    def _queue_insert(self, stmt: Any, what: str, row: dict[str, Any]) -> None:
        """Queue an ``INSERT ... ON CONFLICT DO NOTHING`` whose row the caches say is new; the
        flush checks that every row went in."""
        self._q_inserts.setdefault((stmt, what), []).append(row)
        self._q_rows += 1
        self._nwrites += 1

    def _drop_queued(self) -> None:
        self._q_inserts: dict[tuple[Any, str], list[dict[str, Any]]] = {}  # rowcount-checked
        self._q_appends: dict[Any, list[dict[str, Any]]] = {}
        self._q_updates: dict[tuple[Any, str], dict[str, Any]] = {}
        self._q_rows = 0

    def _fetch_session(self, conn: Connection, session_id: str) -> sa.RowMapping | None:
        return self._x(conn, _Q_SESSION, {"sid": session_id}).mappings().first()

    def _session_row(self, conn: Connection, session_id: str) -> Mapping[str, Any] | None:
        row = self._session_rows.get(session_id)
        if row is not None:
            return row
        row = self._fetch_session(conn, session_id)
        if row is not None and session_id in self._owned:
            self._session_rows[session_id] = dict(row)
        return row

    def _need_session(
        self, conn: Connection, session_id: str, *, own: bool = False
    ) -> Mapping[str, Any]:
        row = self._session_row(conn, session_id)
        if row is None:
            raise StoreError(
                f"no session {session_id!r} in ledger {self.url}. Fix: call open_session first "
                f"(or check the session id and --ledger URL)."
            )
        if own and session_id not in self._owned:
            self._own(session_id, row)
        return row

    def _set_session(self, conn: Connection, session_id: str, **cols: Any) -> None:
        cols.setdefault("updated_at", _now())
        self._update(_U_SESSION, "b_sid", session_id, cols)
        row = self._session_rows.get(session_id)
        if row is not None:
            row.update(cols)

    def _cached_intent(self, cid: str) -> dict[str, Any] | None:
        row = self._intent_rows.get(cid)
        return row if row is not None and row["session_id"] in self._owned else None

    def _fetch_intent(self, conn: Connection, cid: str) -> dict[str, Any] | None:
        found = self._x(conn, _Q_INTENT, {"cid": cid}).mappings().first()
        if found is None:
            return None
        row = dict(found)
        if row["session_id"] in self._owned:
            self._intent_rows[cid] = row
            self._intent_recs.pop(cid, None)
        return row

    def _intent_row(self, conn: Connection, cid: str) -> dict[str, Any] | None:
        return self._cached_intent(cid) or self._fetch_intent(conn, cid)

    def _intent_rec(self, row: Mapping[str, Any]) -> IntentRecord:
        cid = row["client_order_id"]
        rec = self._intent_recs.get(cid)
        if rec is None:
            rec = _intent(row)
            if self._intent_rows.get(cid) is row:
                self._intent_recs[cid] = rec
        return rec

    def _need_intent(self, conn: Connection, cid: str, *, own: bool = False) -> dict[str, Any]:
        row = self._intent_row(conn, cid)
        if row is None:
            raise StoreError(
                f"no intent with client_order_id {cid!r} in ledger {self.url}. Fix: record it "
                f"with add_intent before sending (or check the id)."
            )
        if own and row["session_id"] not in self._owned:
            self._need_session(conn, row["session_id"], own=True)
            self._intent_rows[cid] = row
        return row

    def _set_intent(self, conn: Connection, cid: str, **cols: Any) -> None:
        cols["updated_at"] = _now()
        self._update(_U_INTENT, "b_cid", cid, cols)
        row = self._intent_rows.get(cid)
        if row is not None:
            row.update(cols)
            rec = self._intent_recs.get(cid)
            if rec is not None:  # the request is unchanged: not parsed again
                self._intent_recs[cid] = replace(
                    rec, **{k: v for k, v in cols.items() if k in _INTENT_STATE_COLS}
                )

    def _session_intents_cached(self, session_id: str) -> list[tuple[int, str]] | None:
        cache = self._session_caches.get(session_id)
        return None if cache is None else cache.intents

    def _session_intents(self, conn: Connection, session_id: str) -> list[tuple[int, str]] | None:
        """(seq, cid) of every intent of an owned session (loaded once); None: not owned."""
        if session_id not in self._owned:
            return None
        cache = self._cache(session_id)
        if cache.intents is None:
            seqs = []
            for found in self._x(conn, _Q_SESSION_INTENTS, {"sid": session_id}).mappings():
                row = dict(found)
                cid = row["client_order_id"]
                if self._intent_rows.get(cid) != row:
                    self._intent_rows[cid] = row
                    self._intent_recs.pop(cid, None)
                seqs.append((row["seq"], cid))
            cache.intents = seqs
        return cache.intents

    def _cached_order(self, order_id: str) -> dict[str, Any] | None:
        row = self._order_rows.get(order_id)
        return row if row is not None and row["session_id"] in self._owned else None

    def _fetch_order(self, conn: Connection, order_id: str) -> dict[str, Any] | None:
        found = self._x(conn, _Q_ORDER, {"oid": order_id}).mappings().first()
        if found is None:
            return None
        row = {k: found[k] for k in _ORDER_COLS}
        if row["session_id"] in self._owned:
            self._order_rows[order_id] = row
            self._order_objs.pop(order_id, None)
            self._order_legs.pop(order_id, None)
            cache = self._session_caches.get(row["session_id"])
            if cache is not None:
                cache.open = None  # a row read again: the open index is rebuilt
        return row

    def _order_row(self, conn: Connection, order_id: str) -> dict[str, Any] | None:
        return self._cached_order(order_id) or self._fetch_order(conn, order_id)

    def _load_orders(self, conn: Connection, session_id: str) -> list[str]:
        ids = []
        for found in self._x(conn, _Q_SESSION_ORDERS, {"sid": session_id}).mappings():
            row = {k: found[k] for k in _ORDER_COLS}
            oid = row["order_id"]
            if self._order_rows.get(oid) != row:
                self._order_rows[oid] = row
                self._order_objs.pop(oid, None)
                self._order_legs.pop(oid, None)
            ids.append(oid)
        cache = self._cache(session_id)
        cache.orders, cache.open = ids, None
        return ids

    def _order_obj(self, row: Mapping[str, Any]) -> BrokerOrder:
        oid = row["order_id"]
        obj = self._order_objs.get(oid)
        if obj is None:
            obj = _order(row, self._row_legs(oid, row))
            if self._order_rows.get(oid) is row:
                self._order_objs[oid] = obj
        return obj

    def _row_legs(self, order_id: str, row: Mapping[str, Any]) -> list[Any]:
        legs = self._order_legs.get(order_id)
        if legs is None:
            legs = json.loads(row["raw"]).get("legs", [])
            if self._order_rows.get(order_id) is row:
                self._order_legs[order_id] = legs
        return legs

    def _cache_order_insert(self, row: dict[str, Any], legs: list[Any]) -> None:
        oid, owner = row["order_id"], row["session_id"]
        if owner not in self._owned:
            return
        cache = self._session_caches.get(owner)
        if _has_nan(row):  # SQLite stores NaN as NULL: read the row back instead
            if cache is not None:
                cache.orders = cache.open = None
            return
        self._order_rows[oid] = row
        self._order_objs.pop(oid, None)
        self._order_legs[oid] = legs
        if cache is not None and cache.orders is not None:
            cache.orders.append(oid)
            if cache.open is not None and row["status"] in _OPEN_VALUES:
                cache.open[oid] = None

    def _cache_order_update(
        self, order_id: str, changed: Mapping[str, Any], legs: list[Any] | None
    ) -> None:
        row = self._order_rows.get(order_id)
        if row is None:
            return
        self._order_objs.pop(order_id, None)
        cache = self._session_caches.get(row["session_id"])
        if _has_nan(changed):
            del self._order_rows[order_id]
            self._order_legs.pop(order_id, None)
            if cache is not None:
                cache.open = None
            return
        status = changed.get("status")
        if status is not None and cache is not None and cache.open is not None:
            if status in _OPEN_VALUES:
                if order_id not in cache.open:  # open again: the index is rebuilt in order
                    cache.open = None
            else:
                cache.open.pop(order_id, None)
        row.update(changed)
        if legs is not None:
            self._order_legs[order_id] = legs

    # -- engine, schema, errors --------------------------------------------------------------------

    def _make_engine(self) -> Engine:
        try:
            if self._path is not None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(self._url)
        except (sa.exc.ArgumentError, ImportError, OSError) as exc:
            raise StoreError(
                f"order ledger URL {self.url!r} cannot be used ({type(exc).__name__}: {exc}). "
                f"Fix: install the database driver, make the folder writable, or correct the URL."
            ) from None
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _ledger_sqlite_on_connect)
            sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine

    def _check_schema(self, conn: Connection) -> None:
        insp = sa.inspect(conn)
        names = set(insp.get_table_names())
        if "ledger_meta" in names:
            v = self._x(
                conn, sa.text("SELECT value FROM ledger_meta WHERE key = 'schema_version'")
            ).scalar()
            if v is not None and (not str(v).isdigit() or int(v) != SCHEMA_VERSION):
                newer = str(v).isdigit() and int(v) > SCHEMA_VERSION
                fix = "upgrade the workbench to read it" if newer else "move the database away"
                raise StoreError(
                    f"order ledger {self.url} has schema_version {v!r}, "
                    f"{'newer than' if newer else 'not'} the version {SCHEMA_VERSION} this "
                    f"workbench reads. Fix: {fix}, or use another ledger URL."
                )
        for t in _TABLES:
            if t.name not in names:
                continue
            have = {c["name"] for c in insp.get_columns(t.name)}
            missing = sorted({c.name for c in t.columns} - have)
            if missing:
                raise StoreError(
                    f"order ledger {self.url}: table {t.name!r} has an unknown schema (missing "
                    f"columns {missing}); it is not a workbench order ledger of schema version "
                    f"{SCHEMA_VERSION}. Fix: use another ledger URL, or move the database away."
                )

    @contextmanager
    def _tx(self, what: str) -> Iterator[Connection]:
        """One call's transaction: its own (committed on return), or the open batch's."""
        with self._locked():
            self._check_level(what)
            n0 = self._nwrites
            try:
                with self._guard(what):
                    if self._batch_conn is not None:
                        yield self._batch_conn
                    else:
                        with self._engine.begin() as conn:
                            yield conn
                            self._flush(conn)
            except BaseException:
                if self._nwrites != n0:  # rolled back (or will be, with its batch)
                    self._clear_caches()
                    if self._levels:
                        self._levels[-1].failed = True
                    else:
                        self._drop_queued()
                raise

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sa.exc.DBAPIError, sqlite3.DatabaseError) as exc:
            if self._levels:  # the batch's transaction may be unusable now: it is rolled back
                self._levels[-1].failed = True
            orig = getattr(exc, "orig", exc)
            if self._path is not None and "not a database" in str(orig):
                raise StoreError(
                    f"order ledger {self.url}: {self._path} is not an SQLite database ({orig}). "
                    f"Fix: move the file away (e.g. mv {self._path} {self._path}.bad) or pass "
                    f"another ledger URL."
                ) from None
            raise StoreError(
                f"order ledger {self.url}: {what} failed ({type(orig).__name__}: {orig}). Fix: "
                f"check that the database is reachable and writable, or pass another ledger URL."
            ) from exc


# -- helpers -----------------------------------------------------------------------------------------


def _ledger_sqlite_on_connect(dbapi_conn: sqlite3.Connection, record: object) -> None:
    _sqlite_on_connect(dbapi_conn, record)  # busy_timeout, WAL, BEGIN left to SQLAlchemy
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA synchronous = FULL")
        # checkpoints run in checkpoint(), off the decision path; this bounds the log otherwise
        cur.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        # the log restarts empty after a checkpoint (SQLite reuses the file at its old size
        # otherwise, and checkpoint() would run after every bar once it had reached 4 MB)
        cur.execute("PRAGMA journal_size_limit = 0")
    finally:
        cur.close()


def _now() -> datetime:
    return datetime.now(UTC)


_MISSING = object()


def _memo(proc: Any, size: int = 4096) -> Any:
    """``proc`` remembering its last results by value (equal datetimes store the same value)."""
    seen: dict[Any, Any] = {}

    def run(value: Any) -> Any:
        out = seen.get(value, _MISSING)
        if out is _MISSING:
            if len(seen) >= size:
                seen.clear()
            out = seen[value] = proc(value)
        return out

    return run


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{what} must be a non-empty string; got {value!r}.")
    return value


def _num(v: float | None) -> float | None:
    return None if v is None else float(v)


def _same(recorded: Any, new: Any) -> bool:
    """Whether writing ``new`` over ``recorded`` changes nothing (NaN is never the same)."""
    return recorded == new and type(recorded) is type(new)


def _has_nan(values: Mapping[str, Any]) -> bool:
    return any(isinstance(v, float) and v != v for v in values.values())


def _utc_or_none(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


_SORTED_JSON = json.JSONEncoder(sort_keys=True)  # json.dumps(..., sort_keys=True), one encoder


def _dumps(value: Any, what: str) -> str:
    try:
        return _SORTED_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{what} must be JSON-serialisable ({exc}); got {value!r}.") from None


def _session(row: sa.RowMapping) -> SessionRecord:
    return SessionRecord(
        session_id=row["session_id"],
        strategy=row["strategy"],
        broker=row["broker"],
        mode=row["mode"],
        session_date=row["session_date"],
        status=row["status"],
        reason=row["reason"],
        last_bar_ts=row["last_bar_ts"],
        next_seq=int(row["next_seq"]),
        params=json.loads(row["params"]),
        started_at=row["started_at"],
        updated_at=row["updated_at"],
    )


def _intent(row: sa.RowMapping) -> IntentRecord:
    return IntentRecord(
        client_order_id=row["client_order_id"],
        session_id=row["session_id"],
        seq=int(row["seq"]),
        symbol=row["symbol"],
        request=OrderRequest.from_dict(json.loads(row["request"])),
        bar_ts=row["bar_ts"],
        state=row["state"],
        broker_order_id=row["broker_order_id"],
        error=row["error"],
        created_at=row["created_at"],
    )


def _fill(row: sa.RowMapping) -> Fill:
    return Fill(
        execution_id=row["execution_id"],
        client_order_id=row["client_order_id"],
        order_id=row["order_id"],
        symbol=row["symbol"],
        ts=row["ts"],
        qty=row["qty"],
        price=_NAN if row["price"] is None else row["price"],
        commission=row["commission"],
        ref_price=_NAN if row["ref_price"] is None else row["ref_price"],
        decided_at=row["decided_at"],
        venue=row["venue"],
    )


def _order_dict(o: BrokerOrder) -> dict[str, Any]:
    return {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "symbol": o.symbol,
        "side": o.side.value,
        "qty": o.qty,
        "filled_qty": o.filled_qty,
        "filled_avg_price": o.filled_avg_price,
        "status": o.status.value,
        "type": o.type.value,
        "time_in_force": o.time_in_force.value,
        "limit_price": o.limit_price,
        "stop_price": o.stop_price,
        "order_class": o.order_class.value,
        "notional": o.notional,
        "created_at": None if o.created_at is None else o.created_at.isoformat(),
        "updated_at": None if o.updated_at is None else o.updated_at.isoformat(),
        "replaced_by": o.replaced_by,
        "replaces": o.replaces,
        "legs": [_order_dict(leg) for leg in o.legs],
        "raw_status": o.raw_status,
    }


def _order_from_dict(d: dict[str, Any]) -> BrokerOrder:
    def ts(v: str | None) -> datetime | None:
        return None if v is None else datetime.fromisoformat(v)

    return BrokerOrder(
        id=d["id"],
        client_order_id=d["client_order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        qty=d["qty"],
        filled_qty=d["filled_qty"],
        filled_avg_price=d["filled_avg_price"],
        status=OrderStatus(d["status"]),
        type=OrderType(d["type"]),
        time_in_force=TimeInForce(d["time_in_force"]),
        limit_price=d["limit_price"],
        stop_price=d["stop_price"],
        order_class=OrderClass(d["order_class"]),
        notional=d["notional"],
        created_at=ts(d["created_at"]),
        updated_at=ts(d["updated_at"]),
        replaced_by=d["replaced_by"],
        replaces=d["replaces"],
        legs=tuple(_order_from_dict(leg) for leg in d.get("legs", ())),
        raw_status=d.get("raw_status", ""),
    )


def _order(row: Mapping[str, Any], legs: list[Any] | None = None) -> BrokerOrder:
    """The ledger's view: the latest snapshot with the ledger's status and cumulative fill
    (``legs``: the snapshot's legs when known, else read from ``raw``)."""
    if legs is None:
        legs = json.loads(row["raw"]).get("legs", ())
    return BrokerOrder(
        id=row["order_id"],
        client_order_id=row["client_order_id"],
        symbol=row["symbol"],
        side=Side(row["side"]),
        qty=row["qty"],
        filled_qty=row["filled_qty"],
        filled_avg_price=row["filled_avg_price"],
        status=OrderStatus(row["status"]),
        type=OrderType(row["type"]),
        time_in_force=TimeInForce(row["time_in_force"]),
        limit_price=row["limit_price"],
        stop_price=row["stop_price"],
        order_class=OrderClass(row["order_class"]),
        notional=row["notional"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        replaced_by=row["replaced_by"],
        replaces=row["replaces"],
        legs=tuple(_order_from_dict(leg) for leg in legs),
        raw_status=row["raw_status"],
    )


def _frame(rows: Iterable[Mapping[str, Any]], name: str) -> pl.DataFrame:
    schema = _FRAME_SCHEMAS[name]
    data = [{k: r.get(k) for k in schema} for r in rows]
    return pl.DataFrame(data, schema=schema, orient="row")


__all__ = [
    "DEFAULT_LEDGER_URL",
    "SCHEMA_VERSION",
    "FillRecord",
    "IntentRecord",
    "OrderLedger",
    "SessionRecord",
]
