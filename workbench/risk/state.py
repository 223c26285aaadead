"""Durable kill-switch state: a trip survives a restart and only a recorded re-arm resumes trading.

The trip *logic* (daily loss, drawdown, losers, violations, heat) lives in the risk kernel; this module
keeps what it decided. A trading session calls :meth:`KillSwitchStore.load` at start and
:meth:`KillSwitchStore.trip` when the kernel trips; an operator re-arms with
:meth:`KillSwitchStore.rearm` (``wb risk rearm``), which needs a written reason.

Two tables: ``kill_switch`` holds one row per strategy (the current state) and ``kill_switch_events``
the append-only history of trips and re-arms. Every write is one transaction, so the state row and
its event are written together or not at all. Datetimes are timezone-aware UTC in and out.

>>> from datetime import UTC, datetime
>>> store = KillSwitchStore("sqlite://", clock=lambda: datetime(2024, 1, 2, 15, tzinfo=UTC))
>>> store.trip("s1", rule="daily_loss", reason="loss 2.1% > 2%", values={"loss": 0.021}).halted
True
>>> store.rearm("s1", reason="checked fills, resuming", actor="ops").allows_entries
True
"""

from __future__ import annotations

import getpass
import json
import math
import numbers
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from workbench.errors import ConfigError, ParameterError, WorkbenchError

DEFAULT_STATE_URL = "sqlite:///runs/risk.db"
"""Default kill-switch database: an SQLite file under ``runs/`` of the project."""

MIN_REARM_REASON = 5
"""Fewest characters (after trimming whitespace) a re-arm reason must have."""

BUSY_TIMEOUT_MS = 10_000
"""How long an SQLite writer waits for another process's lock before failing."""

State = Literal["active", "halted"]


class KillSwitchError(WorkbenchError):
    """A kill-switch operation is refused in the switch's current state."""


class NotTrippedError(KillSwitchError):
    """A re-arm was asked for a switch that is not tripped."""


class KillSwitchStoreError(KillSwitchError):
    """The kill-switch database cannot be opened, read or written."""


def default_state_url() -> str:
    """Return the kill-switch database URL: config ``risk.state_url`` (``WB_RISK__STATE_URL``
    overrides it like any config field), ``sqlite:///runs/risk.db`` by default.

    Returns
    -------
    str
        An SQLAlchemy URL; a relative SQLite path is relative to the project root.
    """
    from workbench.config import load_config

    try:
        return load_config().risk.state_url
    except ConfigError:  # an unreadable config must not hide the kill switch's state
        return os.environ.get("WB_RISK__STATE_URL", DEFAULT_STATE_URL)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class KillSwitchState:
    """The kill switch of one strategy: ``active`` (trading) or ``halted`` (tripped).

    A halted switch refuses new entries only: reduce-only orders (closing or shrinking a position)
    are always allowed, so a halt never traps a position. ``tripped_at``, ``rule``, ``reason`` and
    ``values`` describe the first trip of the current halt and are empty while active.
    """

    strategy: str
    state: State = "active"
    tripped_at: datetime | None = None
    rule: str | None = None
    reason: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def halted(self) -> bool:
        """Whether the switch is tripped."""
        return self.state == "halted"

    @property
    def allows_entries(self) -> bool:
        """Whether new (risk-increasing) orders may be sent; reduce-only orders always may."""
        return not self.halted


class _UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores them naive, as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_META = sa.MetaData()
_STATE = sa.Table(
    "kill_switch",
    _META,
    sa.Column("strategy", sa.String(200), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("tripped_at", _UTCDateTime(), nullable=True),
    sa.Column("rule", sa.String(100), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("values", sa.JSON(), nullable=False),
    sa.Column("updated_at", _UTCDateTime(), nullable=False),
    sa.CheckConstraint("state IN ('active', 'halted')", name="ck_kill_switch_state"),
)
_EVENTS = sa.Table(
    "kill_switch_events",
    _META,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("strategy", sa.String(200), nullable=False, index=True),
    sa.Column("ts", _UTCDateTime(), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("rule", sa.String(100), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("values", sa.JSON(), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.CheckConstraint("event IN ('trip', 'rearm')", name="ck_kill_switch_events_event"),
)

_STATE_SCHEMA = {
    "strategy": pl.String,
    "state": pl.String,
    "tripped_at": pl.Datetime("us", "UTC"),
    "rule": pl.String,
    "reason": pl.String,
    "values": pl.String,
    "updated_at": pl.Datetime("us", "UTC"),
}
_EVENT_SCHEMA = {
    "id": pl.Int64,
    "strategy": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "event": pl.String,
    "rule": pl.String,
    "reason": pl.String,
    "values": pl.String,
    "actor": pl.String,
}


class KillSwitchStore:
    """Persisted kill-switch state of every strategy, with its trip and re-arm history.

    Parameters
    ----------
    url : str, default "sqlite:///runs/risk.db"
        Any SQLAlchemy URL. A relative SQLite path resolves against ``root`` and its folder is
        created; for any other database nothing is created on disk. Tables are created if missing.
    root : Path, optional
        Folder a relative SQLite path is relative to (default: the working directory).
    clock : callable, default UTC now
        Returns the current time (timezone-aware); stamps ``updated_at``, re-arms and default trips.

    Raises
    ------
    ConfigError
        If ``url`` is not a valid SQLAlchemy URL.
    KillSwitchStoreError
        If the database cannot be opened (e.g. the SQLite file is not a database).
    """

    def __init__(
        self,
        url: str = DEFAULT_STATE_URL,
        *,
        root: Path | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._clock = clock
        self._url, self._path = _resolve(url, Path.cwd() if root is None else Path(root))
        self._engine = _engine(self._url, self._path)
        with self._guard("open"):
            _META.create_all(self._engine)

    @property
    def url(self) -> str:
        """The resolved database URL (password hidden)."""
        return self._url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> KillSwitchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, strategy: str) -> KillSwitchState:
        """Return the current kill-switch state of a strategy.

        Parameters
        ----------
        strategy : str
            Strategy name.

        Returns
        -------
        KillSwitchState
            The stored state; ``active`` for a strategy never tripped.
        """
        strategy = _name(strategy)
        with self._tx("load") as conn:
            row = self._select(conn, strategy)
        return _state(strategy, row)

    def trip(
        self,
        strategy: str,
        *,
        rule: str,
        reason: str,
        values: Mapping[str, Any],
        ts: datetime | None = None,
        actor: str | None = None,
    ) -> KillSwitchState:
        """Halt a strategy and record the trip.

        Tripping is idempotent: tripping an already-halted switch appends the event to the history
        but keeps the first trip's rule, reason, values and time as the state, so the halt always
        explains what stopped trading first.

        Parameters
        ----------
        strategy : str
            Strategy name.
        rule : str
            The rule that tripped (e.g. ``daily_loss``, ``manual``).
        reason : str
            Readable explanation (e.g. ``"loss 2.1% > limit 2%"``).
        values : mapping of str to JSON values
            The numbers behind the decision (floats, ints, strings, bools, lists, mappings);
            non-finite floats are stored as null.
        ts : datetime, optional
            When the kernel tripped, timezone-aware (default: the store's clock).
        actor : str, optional
            Who tripped (default: the user running the process).

        Returns
        -------
        KillSwitchState
            The state after the trip (always halted).

        Raises
        ------
        ParameterError
            If an argument is empty, ``ts`` is naive or ``values`` is not JSON-serialisable.
        """
        strategy = _name(strategy)
        rule = _text(rule, "rule")
        reason = _text(reason, "reason")
        clean = _json_values(values)
        ts = self._now() if ts is None else _utc(ts, "ts")
        actor = _text(actor, "actor") if actor is not None else _user()
        with self._tx("trip") as conn:
            row = self._select(conn, strategy)
            current = _state(strategy, row)
            if not current.halted:
                self._write_state(
                    conn,
                    exists=row is not None,
                    strategy=strategy,
                    state="halted",
                    tripped_at=ts,
                    rule=rule,
                    reason=reason,
                    values=clean,
                )
                current = KillSwitchState(strategy, "halted", ts, rule, reason, clean)
            self._insert_event(conn, strategy, ts, "trip", rule, reason, clean, actor)
        return current

    def rearm(self, strategy: str, *, reason: str, actor: str | None = None) -> KillSwitchState:
        """Re-arm a halted strategy so it may enter positions again, recording why.

        Parameters
        ----------
        strategy : str
            Strategy name.
        reason : str
            Why it is safe to resume: at least 5 characters besides surrounding whitespace.
        actor : str, optional
            Who re-armed (default: the user running the process).

        Returns
        -------
        KillSwitchState
            The state after the re-arm (always active).

        Raises
        ------
        ParameterError
            If ``reason`` is missing, blank or shorter than 5 characters.
        NotTrippedError
            If the switch is not tripped.
        """
        strategy = _name(strategy)
        if not isinstance(reason, str) or len(reason.strip()) < MIN_REARM_REASON:
            got = "nothing" if reason is None else repr(reason)
            raise ParameterError(
                f"re-arming strategy {strategy!r} needs a reason of at least {MIN_REARM_REASON} "
                f"characters; got reason={got}. Fix: say what was checked and why it is safe to "
                f"resume, e.g. --reason 'fills reconciled, loss explained by halted symbol'."
            )
        reason = reason.strip()
        actor = _text(actor, "actor") if actor is not None else _user()
        with self._tx("rearm") as conn:
            row = self._select(conn, strategy)
            current = _state(strategy, row)
            if not current.halted:
                raise NotTrippedError(
                    f"the kill switch of strategy {strategy!r} is not tripped (state "
                    f"{current.state!r}); there is nothing to re-arm. Fix: check "
                    f"`wb risk status --strategy {strategy}`."
                )
            now = self._now()
            self._write_state(
                conn,
                exists=True,
                strategy=strategy,
                state="active",
                tripped_at=None,
                rule=None,
                reason=None,
                values={},
            )
            self._insert_event(conn, strategy, now, "rearm", current.rule, reason, {}, actor)
        return KillSwitchState(strategy)

    def history(self, strategy: str | None = None, limit: int = 100) -> pl.DataFrame:
        """Return the latest trip and re-arm events, oldest first.

        Parameters
        ----------
        strategy : str, optional
            Only this strategy's events (default: every strategy).
        limit : int, default 100
            Most events to return (the latest ones).

        Returns
        -------
        polars.DataFrame
            Columns ``id, strategy, ts, event, rule, reason, values, actor``; ``ts`` is UTC and
            ``values`` a JSON string.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ParameterError(
                f"the 'limit' parameter of history must be an int >= 1; got {limit!r}."
            )
        q = sa.select(_EVENTS).order_by(_EVENTS.c.id.desc()).limit(limit)
        if strategy is not None:
            q = q.where(_EVENTS.c.strategy == _name(strategy))
        with self._tx("history") as conn:
            rows = conn.execute(q).mappings().all()
        out = [{**r, "values": _dumps(r["values"])} for r in reversed(rows)]
        return pl.DataFrame(out, schema=_EVENT_SCHEMA, orient="row")

    def all_states(self) -> pl.DataFrame:
        """Return the stored state of every strategy, sorted by name.

        Returns
        -------
        polars.DataFrame
            Columns ``strategy, state, tripped_at, rule, reason, values, updated_at``; strategies
            never tripped have no row.
        """
        with self._tx("all_states") as conn:
            rows = conn.execute(sa.select(_STATE).order_by(_STATE.c.strategy)).mappings().all()
        out = [{**r, "values": _dumps(r["values"])} for r in rows]
        return pl.DataFrame(out, schema=_STATE_SCHEMA, orient="row")

    # -- writes (one transaction each, opened by the caller) ---------------------------------------

    def _select(self, conn: Connection, strategy: str) -> sa.RowMapping | None:
        q = sa.select(_STATE).where(_STATE.c.strategy == strategy).with_for_update()
        return conn.execute(q).mappings().first()

    def _write_state(self, conn: Connection, *, exists: bool, strategy: str, **cols: Any) -> None:
        cols["updated_at"] = self._now()
        if exists:
            conn.execute(sa.update(_STATE).where(_STATE.c.strategy == strategy).values(**cols))
        else:
            conn.execute(sa.insert(_STATE).values(strategy=strategy, **cols))

    def _insert_event(
        self,
        conn: Connection,
        strategy: str,
        ts: datetime,
        event: str,
        rule: str | None,
        reason: str,
        values: dict[str, Any],
        actor: str,
    ) -> None:
        conn.execute(
            sa.insert(_EVENTS).values(
                strategy=strategy,
                ts=ts,
                event=event,
                rule=rule,
                reason=reason,
                values=values,
                actor=actor,
            )
        )

    def _now(self) -> datetime:
        return _utc(self._clock(), "clock()")

    @contextmanager
    def _tx(self, what: str) -> Iterator[Connection]:
        with self._guard(what), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sa.exc.DBAPIError, sqlite3.DatabaseError) as exc:
            orig = getattr(exc, "orig", exc)
            if self._path is not None and "not a database" in str(orig):
                raise KillSwitchStoreError(
                    f"{self._path} is not an SQLite database ({orig}). Fix: move the file away "
                    f"(e.g. mv {self._path} {self._path}.bad) or set WB_RISK__STATE_URL / --url "
                    f"to another database."
                ) from None
            raise KillSwitchStoreError(
                f"kill-switch database {self.url}: {what} failed ({type(orig).__name__}: {orig}). "
                f"Fix: check that the database is reachable and writable, or set "
                f"WB_RISK__STATE_URL / --url to another database."
            ) from exc


# -- helpers -----------------------------------------------------------------------------------------


def _resolve(url: str, root: Path) -> tuple[URL, Path | None]:
    try:
        u = make_url(url)
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"kill-switch state URL {url!r} is not an SQLAlchemy URL ({exc}). Fix: use e.g. "
            f"'sqlite:///runs/risk.db' or 'postgresql+psycopg://user@host/db'."
        ) from None
    if u.get_backend_name() != "sqlite":
        return u, None
    db = u.database
    if not db or db == ":memory:" or db.startswith("file:") or u.query.get("uri"):
        return u, None
    path = Path(db).expanduser()
    if not path.is_absolute():
        path = root / path
    return u.set(database=str(path)), path


def _engine(url: URL, path: Path | None) -> Engine:
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError, OSError) as exc:
        raise ConfigError(
            f"kill-switch state URL {url.render_as_string(hide_password=True)!r} cannot be "
            f"used ({exc}). Fix: install the database driver or correct the URL."
        ) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    # let SQLAlchemy emit BEGIN itself (below), so a read-modify-write holds the write lock
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _state(strategy: str, row: sa.RowMapping | None) -> KillSwitchState:
    if row is None:
        return KillSwitchState(strategy)
    return KillSwitchState(
        strategy=strategy,
        state=row["state"],
        tripped_at=row["tripped_at"],
        rule=row["rule"],
        reason=row["reason"],
        values=dict(row["values"] or {}),
    )


def _name(strategy: str) -> str:
    if not isinstance(strategy, str) or not strategy.strip():
        raise ParameterError(
            f"the 'strategy' parameter must be a non-empty name; got {strategy!r}. Fix: pass the "
            f"strategy's name, e.g. 'intraday_reversal'."
        )
    return strategy


def _text(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(
            f"the {name!r} parameter must be a non-empty string; got {value!r}. Fix: say what "
            f"it is, e.g. {name}='...'."
        )
    return value.strip()


def _utc(ts: datetime, name: str) -> datetime:
    if not isinstance(ts, datetime):
        raise ParameterError(f"{name} must be a datetime; got {type(ts).__name__} {ts!r}.")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ParameterError(
            f"{name} must be timezone-aware; got the naive datetime {ts.isoformat()}. Fix: attach "
            f"the zone, e.g. ts.replace(tzinfo=datetime.UTC) if it is UTC."
        )
    return ts.astimezone(UTC)


def _json_values(values: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ParameterError(
            f"the 'values' parameter must be a mapping of names to numbers or strings; got "
            f"{type(values).__name__}. Fix: pass e.g. values={{'loss': 0.021}}."
        )
    return {_key(k): _json(v, f"values[{k!r}]") for k, v in values.items()}


def _key(k: object) -> str:
    if not isinstance(k, str):
        raise ParameterError(f"values keys must be strings; got {k!r}. Fix: use str({k!r}).")
    return k


def _json(v: object, where: str) -> Any:
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, Mapping):
        return {_key(k): _json(x, f"{where}[{k!r}]") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json(x, f"{where}[{i}]") for i, x in enumerate(v)]
    raise ParameterError(
        f"{where} must be a number, string, bool, None, list or mapping; got "
        f"{type(v).__name__} {v!r}. Fix: convert it (e.g. float(), str(), .isoformat())."
    )


def _dumps(values: Any) -> str:
    return json.dumps(values or {}, sort_keys=True, allow_nan=False)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return "unknown"
