"""Universe rotation: pick the tradable symbols by liquidity and data quality, and track them.

:func:`select_universe` is a pure function of the bar store at one date: for each candidate, over
the ``lookback_days`` sessions ending at ``as_of`` (its own session included, nothing after), the
average daily dollar volume (``close x volume`` summed per session, averaged over the sessions with
data) and the share of the calendar's expected bars that are missing. A candidate is eligible when
it has data, its missing share is at most ``max_missing_share`` and its dollar volume at least
``min_dollar_volume``; eligible candidates are ranked 1, 2, ... by dollar volume (ties by symbol).

:class:`UniverseStore` keeps named universes in SQL (SQLite by default) and rotates them:

- a member that fails a floor (no data, gaps, illiquid, no longer a candidate) is removed;
- an incumbent stays while its rank is at most ``size + buffer``, and also below that while it has
  been a member fewer than ``min_retention_days`` sessions (sessions after the one it was added on);
- a newcomer enters only with rank at most ``size``, best rank first, while there is room.

Every addition and removal is recorded with its reason, in one transaction per rotation.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import polars as pl
from sqlalchemy import (
    Column,
    Connection,
    Date,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from workbench.data import calendar as cal
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, ParameterError, StoreError

if TYPE_CHECKING:
    from workbench.data.store import BarStore

DEFAULT_URL = "sqlite:///runs/universe.db"
UNIVERSE_PREFIX = "universe:"

SELECTION_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "rank": pl.Int64(),
    "eligible": pl.Boolean(),
    "selected": pl.Boolean(),
    "avg_dollar_volume": pl.Float64(),
    "missing_share": pl.Float64(),
    "sessions": pl.Int64(),
    "bars": pl.Int64(),
    "expected_bars": pl.Int64(),
    "reason": pl.String(),
}
ROTATION_SCHEMA: dict[str, pl.DataType] = {
    **SELECTION_SCHEMA,
    "action": pl.String(),
    "note": pl.String(),
}


# ---------------------------------------------------------------------- config


def _bad(name: str, what: str, value: Any) -> ParameterError:
    return ParameterError(
        f"The {name!r} parameter of UniverseConfig must be {what}. Got {value!r} instead."
    )


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(name, f"an int >= {low}", value)


def _check_number(name: str, value: Any, low: float, high: float | None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (high is not None and value > high):
        what = f"a number in [{low:g}, {high:g}]" if high is not None else f"a number >= {low:g}"
        raise _bad(name, what, value)
    return float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class UniverseConfig:
    """How a universe is chosen and how sticky its members are.

    Parameters
    ----------
    size : int, default 10
        Target number of members (>= 1).
    lookback_days : int, default 20
        Sessions of history ranked, ending at the rotation date (>= 1).
    min_dollar_volume : float, default 0
        Floor on the average daily dollar volume (>= 0).
    max_missing_share : float, default 0.05
        Largest share of the calendar's expected bars that may be missing (in [0, 1]).
    min_retention_days : int, default 0
        Sessions a member stays at least unless it fails a floor (>= 0).
    buffer : int, default 0
        Rank hysteresis: incumbents stay while ranked <= ``size + buffer`` (>= 0).

    Raises
    ------
    ParameterError
        Naming the field, the constraint and the value.
    """

    size: int = 10
    lookback_days: int = 20
    min_dollar_volume: float = 0.0
    max_missing_share: float = 0.05
    min_retention_days: int = 0
    buffer: int = 0

    def __post_init__(self) -> None:
        _check_int("size", self.size, 1)
        _check_int("lookback_days", self.lookback_days, 1)
        _check_int("min_retention_days", self.min_retention_days, 0)
        _check_int("buffer", self.buffer, 0)
        floor = _check_number("min_dollar_volume", self.min_dollar_volume, 0.0, None)
        gaps = _check_number("max_missing_share", self.max_missing_share, 0.0, 1.0)
        object.__setattr__(self, "min_dollar_volume", floor)
        object.__setattr__(self, "max_missing_share", gaps)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UniverseConfig:
        """Build a config from a mapping, refusing unknown keys (naming the closest valid one).

        Parameters
        ----------
        data : mapping
            Field names to values, e.g. parsed from YAML.

        Returns
        -------
        UniverseConfig
        """
        valid = [f.name for f in fields(cls)]
        for key in data:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ParameterError(
                    f"UniverseConfig has no field {key!r}; valid fields: {valid}.{hint}"
                )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return asdict(self)

    @property
    def config_hash(self) -> str:
        """Return the sha256 of the canonical JSON of the fields (recorded with each rotation)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------- selection


def _symbols(candidates: Sequence[str] | str) -> list[str]:
    items = candidates.split(",") if isinstance(candidates, str) else list(candidates)
    out = []
    for s in items:
        if not isinstance(s, str) or not s.strip():
            raise ParameterError(
                f"symbols must be non-empty strings. Got {s!r} in {candidates!r} instead."
            )
        out.append(s.strip())
    return list(dict.fromkeys(out))


def _as_day(value: date | str, what: str = "as_of") -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ParameterError(f"{what} must be a date such as '2024-01-31'. Got {value!r} instead.")


def _lookback(as_of: date, n: int, calendar: str) -> list[date]:
    span = timedelta(days=2 * n + 10)
    while True:
        lo = max(as_of - span, cal.FIRST_DATE)
        days = cal.sessions(lo, as_of, calendar)["session"].to_list()
        if len(days) >= n or lo == cal.FIRST_DATE:
            return days[-n:]
        span *= 2


def _local_midnight(day: date, tz: str) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def _money(x: float) -> str:
    return f"${x:,.0f}"


def _pct(x: float) -> str:
    return f"{x * 100:.3g}%"


def select_universe(
    store: BarStore,
    candidates: Sequence[str],
    timeframe: str | Timeframe,
    as_of: date | str,
    config: UniverseConfig,
    calendar: str = cal.DEFAULT_CALENDAR,
) -> pl.DataFrame:
    """Rank candidates by liquidity and check their data over the sessions ending at ``as_of``.

    Only bars of the ``lookback_days`` sessions up to and including ``as_of`` are read (no
    look-ahead); bars off the calendar (extended hours) are ignored.

    Parameters
    ----------
    store : BarStore
    candidates : sequence of str
        Symbols to consider (duplicates dropped).
    timeframe : str or Timeframe
        Bars used, e.g. ``1Day`` or ``5Min``.
    as_of : date or ISO string
        Last session of the window (a non-session date means the last session before it).
    config : UniverseConfig
    calendar : str
        exchange_calendars code giving the sessions and the expected bars.

    Returns
    -------
    pl.DataFrame
        One row per candidate with :data:`SELECTION_SCHEMA`: ``rank`` among eligible candidates
        (null when not eligible), ``eligible``, ``selected`` (eligible and rank <= size, what a
        fresh universe would hold), ``avg_dollar_volume``, ``missing_share``, ``sessions`` with
        data, ``bars`` and ``expected_bars`` in the window, and ``reason`` when not eligible
        (``'no data'``, ``'gaps: 20% > 5%'``, ``'illiquid: $900 < $1,000'``; ``'; '``-joined).
        Sorted by rank, then symbol.
    """
    tf = Timeframe.parse(timeframe)
    syms = _symbols(candidates)
    day = _as_day(as_of)
    tz = str(cal.get_calendar(calendar).tz)
    window = _lookback(day, config.lookback_days, calendar)
    lo = _local_midnight(window[0], tz)
    hi = _local_midnight(window[-1] + timedelta(days=1), tz)
    expected = pl.DataFrame({"ts": cal.expected_bars(tf, lo, hi, calendar)}).with_columns(
        session=pl.col("ts").dt.convert_time_zone(tz).dt.date()
    )
    bars = (
        store.scan(syms, tf, lo, hi)
        .select("symbol", "ts", dv=pl.col("close") * pl.col("volume"))
        .collect(engine="in-memory")
        .join(expected, on="ts", how="inner")
    )
    stats = (
        bars.group_by("symbol", "session")
        .agg(dv=pl.col("dv").sum(), n=pl.len())
        .group_by("symbol")
        .agg(
            avg_dollar_volume=pl.col("dv").mean(),
            sessions=pl.len().cast(pl.Int64),
            bars=pl.col("n").sum().cast(pl.Int64),
        )
    )
    n_expected = expected.height
    base = (
        pl.DataFrame({"symbol": syms}, schema={"symbol": pl.String()})
        .join(stats, on="symbol", how="left")
        .with_columns(
            pl.col("sessions", "bars").fill_null(0),
            expected_bars=pl.lit(n_expected, dtype=pl.Int64),
        )
        .with_columns(missing_share=1.0 - pl.col("bars") / max(n_expected, 1))
    )
    rows = []
    for r in base.iter_rows(named=True):
        reasons = []
        if r["bars"] == 0:
            reasons.append("no data")
        else:
            if r["missing_share"] > config.max_missing_share:
                reasons.append(
                    f"gaps: {_pct(r['missing_share'])} > {_pct(config.max_missing_share)}"
                )
            if r["avg_dollar_volume"] < config.min_dollar_volume:
                reasons.append(
                    f"illiquid: {_money(r['avg_dollar_volume'])} < {_money(config.min_dollar_volume)}"
                )
        rows.append({**r, "eligible": not reasons, "reason": "; ".join(reasons) or None})
    ranked = sorted(
        (r for r in rows if r["eligible"]), key=lambda r: (-r["avg_dollar_volume"], r["symbol"])
    )
    rank = {r["symbol"]: i for i, r in enumerate(ranked, start=1)}
    for r in rows:
        r["rank"] = rank.get(r["symbol"])
        r["selected"] = r["rank"] is not None and r["rank"] <= config.size
    out = pl.DataFrame(rows, schema=SELECTION_SCHEMA)
    return out.sort(pl.col("rank"), "symbol", nulls_last=True)


# ---------------------------------------------------------------------- persistence

_META = MetaData()
_MEMBERS = Table(
    "universe_memberships",
    _META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("universe", String(200), nullable=False, index=True),
    Column("symbol", String(64), nullable=False),
    Column("added_on", Date, nullable=False),
    Column("removed_on", Date, nullable=True),
    Column("reason_added", Text, nullable=False),
    Column("reason_removed", Text, nullable=True),
)
_RUNS = Table(
    "universe_rotations",
    _META,
    Column("universe", String(200), primary_key=True),
    Column("as_of", Date, primary_key=True),
    Column("config_hash", String(64), nullable=False),
    Column("config_json", Text, nullable=False),
    Column("timeframe", String(16), nullable=False),
    Column("calendar", String(32), nullable=False),
    Column("candidates_json", Text, nullable=False),
    Column("members_json", Text, nullable=False),
    Column("selection_json", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class RotationResult:
    """The outcome of one rotation of a named universe.

    Attributes
    ----------
    name : str
    as_of : date
    members : tuple of str
        Members after the rotation, sorted.
    added, removed : dict
        Symbol to the recorded reason.
    config : UniverseConfig
    selection : pl.DataFrame
        :data:`ROTATION_SCHEMA`: the ranking of :func:`select_universe` plus ``action``
        (``added``, ``kept``, ``removed`` or null) and its ``note``. Not compared by ``==``.
    """

    name: str
    as_of: date
    members: tuple[str, ...]
    added: dict[str, str]
    removed: dict[str, str]
    config: UniverseConfig
    selection: pl.DataFrame = field(compare=False, repr=False)

    @property
    def turnover(self) -> float:
        """Return ``(adds + removes) / (2 * size)``."""
        return (len(self.added) + len(self.removed)) / (2 * self.config.size)


def _resolve_url(url: str, root: Path) -> str:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return url
    path = Path(u.database)
    if not path.is_absolute():
        path = (root / path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return u.set(database=str(path)).render_as_string(hide_password=False)


def _make_engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True)
    memory = u.database in (None, "", ":memory:")
    if memory:
        engine = create_engine(u, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(u, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_con: Any, _record: Any) -> None:
        dbapi_con.isolation_level = None  # let the "begin" hook below open transactions
        if not memory:
            dbapi_con.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("universe_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _n_sessions(days: list[date], lo: date, hi: date) -> int:  # sorted days in [lo, hi]
    return max(0, bisect_right(days, hi) - bisect_left(days, lo))


def _decide(
    sel: pl.DataFrame, current: dict[str, date], as_of: date, cfg: UniverseConfig, calendar: str
) -> tuple[dict[str, str], dict[str, str], dict[str, tuple[str, str]]]:
    by = {r["symbol"]: r for r in sel.iter_rows(named=True)}
    since = min(current.values(), default=as_of)
    days = cal.sessions(since, as_of, calendar)["session"].to_list()
    removed: dict[str, str] = {}
    kept: dict[str, tuple[int, int]] = {}  # symbol -> (rank, tenure)
    notes: dict[str, tuple[str, str]] = {}
    hold = cfg.size + cfg.buffer
    for sym, added_on in sorted(current.items()):
        row = by.get(sym)
        tenure = _n_sessions(days, added_on + timedelta(days=1), as_of)
        if row is None:
            removed[sym] = "no longer a candidate"
        elif not row["eligible"]:
            removed[sym] = row["reason"]
        elif row["rank"] <= hold:
            kept[sym] = (row["rank"], tenure)
            notes[sym] = ("kept", f"rank {row['rank']} <= size+buffer {hold}")
        elif tenure < cfg.min_retention_days:
            kept[sym] = (row["rank"], tenure)
            notes[sym] = (
                "kept",
                f"rank {row['rank']} > size+buffer {hold}, retained: member {tenure} < "
                f"{cfg.min_retention_days} sessions",
            )
        else:
            removed[sym] = f"rank {row['rank']} > size+buffer {hold}"
    # more incumbents than seats (the size was lowered): drop the worst-ranked unprotected ones
    for sym, (rank, tenure) in sorted(kept.items(), key=lambda kv: -kv[1][0]):
        if len(kept) <= cfg.size:
            break
        if tenure >= cfg.min_retention_days:
            del kept[sym]
            removed[sym] = f"rank {rank}: over size {cfg.size}"
    room = cfg.size - len(kept)
    added: dict[str, str] = {}
    for r in sel.filter(pl.col("selected")).sort("rank").iter_rows(named=True):
        if room <= 0:
            break
        if r["symbol"] not in current:
            added[r["symbol"]] = f"rank {r['rank']} <= size {cfg.size}"
            room -= 1
    for sym, reason in removed.items():
        notes[sym] = ("removed", reason)
    for sym, reason in added.items():
        notes[sym] = ("added", reason)
    return added, removed, notes


class UniverseStore:
    """Named universes: memberships with reasons and the rotation runs that changed them.

    Parameters
    ----------
    url : str, default ``sqlite:///runs/universe.db``
        SQLAlchemy URL; SQLite runs in WAL mode, any other backend (Postgres) works by URL.
    root : str or Path, optional
        Folder that a relative SQLite path resolves against (default: the working directory);
        the database's folder is created for SQLite files only.
    """

    def __init__(self, url: str = DEFAULT_URL, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path.cwd()
        self.url = _resolve_url(url, self.root)
        self._engine = _make_engine(self.url)
        _META.create_all(self._engine)

    def __repr__(self) -> str:
        return f"UniverseStore({make_url(self.url).render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> UniverseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(universe_write=True)
            with conn.begin():
                yield conn

    # ------------------------------------------------------------ rotate

    def _last_run(self, conn: Connection, name: str, *, lock: bool = False) -> Any:
        q = select(_RUNS).where(_RUNS.c.universe == name).order_by(_RUNS.c.as_of.desc()).limit(1)
        return conn.execute(q.with_for_update() if lock else q).first()

    @staticmethod
    def _same_day(
        last: Any, name: str, day: date, cfg: UniverseConfig, tf: Timeframe, syms: list[str]
    ) -> bool:
        # True when ``day`` was already rotated with the same inputs; raise on any conflict
        if last is None or last.as_of < day:
            return False
        if last.as_of > day:
            raise ParameterError(
                f"The 'as_of' parameter of UniverseStore.rotate must not be earlier than the last "
                f"rotation of universe {name!r} ({last.as_of.isoformat()}). Got "
                f"{day.isoformat()} instead. Fix: rotate as of {last.as_of.isoformat()} or later "
                "(history is append-only), or use another universe name."
            )
        same = (
            last.config_hash == cfg.config_hash
            and last.timeframe == tf.name
            and sorted(json.loads(last.candidates_json)) == sorted(syms)
        )
        if not same:
            raise StoreError(
                f"universe {name!r} was already rotated as of {day.isoformat()} with other inputs "
                f"(config {last.config_hash[:12]}, timeframe {last.timeframe}, "
                f"{len(json.loads(last.candidates_json))} candidates); this call has config "
                f"{cfg.config_hash[:12]}, timeframe {tf.name}, {len(syms)} candidates. "
                "Fix: rotate as of a later date, or use another universe name."
            )
        return True

    def rotate(
        self,
        name: str,
        store: BarStore,
        candidates: Sequence[str],
        timeframe: str | Timeframe,
        as_of: date | str,
        config: UniverseConfig | None = None,
        *,
        calendar: str = cal.DEFAULT_CALENDAR,
    ) -> RotationResult:
        """Rotate a universe as of a date and record the changes in one transaction.

        Rotating the same name and date again with the same inputs records nothing and returns
        the recorded result.

        Parameters
        ----------
        name : str
            Universe name.
        store : BarStore
        candidates : sequence of str
        timeframe : str or Timeframe
        as_of : date or ISO string
            Rotation date; never earlier than the universe's last rotation.
        config : UniverseConfig, optional
            Default ``UniverseConfig()``.
        calendar : str
            exchange_calendars code.

        Returns
        -------
        RotationResult

        Raises
        ------
        ParameterError
            If ``as_of`` is earlier than the last recorded rotation (naming both dates).
        StoreError
            If the date was already rotated with another config, timeframe or candidates.
        """
        if not isinstance(name, str) or not name.strip():
            raise ParameterError(f"universe name must be a non-empty string. Got {name!r} instead.")
        cfg = config or UniverseConfig()
        day, tf, syms = _as_day(as_of), Timeframe.parse(timeframe), _symbols(candidates)
        if not syms:
            raise ParameterError(
                f"The 'candidates' parameter of UniverseStore.rotate must name at least one "
                f"symbol. Got {candidates!r} instead (an empty list would remove every member)."
            )
        with self._engine.connect() as conn:
            done = self._same_day(self._last_run(conn, name), name, day, cfg, tf, syms)
        if not done:
            sel = select_universe(store, syms, tf, day, cfg, calendar)
            self._record(name, day, cfg, tf, syms, calendar, sel)
        return self._result(name, day)

    def _record(
        self,
        name: str,
        day: date,
        cfg: UniverseConfig,
        tf: Timeframe,
        syms: list[str],
        calendar: str,
        sel: pl.DataFrame,
    ) -> None:
        try:
            with self._write() as conn:
                if self._same_day(self._last_run(conn, name, lock=True), name, day, cfg, tf, syms):
                    return  # another process recorded this date first
                current = dict(
                    conn.execute(
                        select(_MEMBERS.c.symbol, _MEMBERS.c.added_on).where(
                            _MEMBERS.c.universe == name, _MEMBERS.c.removed_on.is_(None)
                        )
                    ).all()
                )
                added, removed, notes = _decide(sel, current, day, cfg, calendar)
                for sym, reason in removed.items():
                    conn.execute(
                        update(_MEMBERS)
                        .where(
                            _MEMBERS.c.universe == name,
                            _MEMBERS.c.symbol == sym,
                            _MEMBERS.c.removed_on.is_(None),
                        )
                        .values(removed_on=day, reason_removed=reason)
                    )
                if added:
                    conn.execute(
                        insert(_MEMBERS),
                        [
                            {"universe": name, "symbol": s, "added_on": day, "reason_added": r}
                            for s, r in added.items()
                        ],
                    )
                members = sorted((set(current) - set(removed)) | set(added))
                rotation = sel.with_columns(
                    action=pl.col("symbol").replace_strict(
                        {s: a for s, (a, _) in notes.items()}, default=None, return_dtype=pl.String
                    ),
                    note=pl.col("symbol").replace_strict(
                        {s: n for s, (_, n) in notes.items()}, default=None, return_dtype=pl.String
                    ),
                )
                conn.execute(
                    insert(_RUNS).values(
                        universe=name,
                        as_of=day,
                        config_hash=cfg.config_hash,
                        config_json=json.dumps(cfg.to_dict(), sort_keys=True),
                        timeframe=tf.name,
                        calendar=calendar,
                        candidates_json=json.dumps(syms),
                        members_json=json.dumps(members),
                        selection_json=json.dumps(rotation.to_dicts()),
                        recorded_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:  # a concurrent writer recorded this date (backends without locks)
            with self._engine.connect() as conn:
                if not self._same_day(self._last_run(conn, name), name, day, cfg, tf, syms):
                    raise

    def _result(self, name: str, day: date) -> RotationResult:
        with self._engine.connect() as conn:
            run = conn.execute(
                select(_RUNS).where(_RUNS.c.universe == name, _RUNS.c.as_of == day)
            ).one()
            m = _MEMBERS.c
            added = conn.execute(
                select(m.symbol, m.reason_added).where(m.universe == name, m.added_on == day)
            ).all()
            removed = conn.execute(
                select(m.symbol, m.reason_removed).where(m.universe == name, m.removed_on == day)
            ).all()
        return RotationResult(
            name=name,
            as_of=day,
            members=tuple(json.loads(run.members_json)),
            added=dict(sorted(added)),
            removed=dict(sorted(removed)),
            config=UniverseConfig.from_dict(json.loads(run.config_json)),
            selection=pl.DataFrame(json.loads(run.selection_json), schema=ROTATION_SCHEMA),
        )

    # ------------------------------------------------------------ queries

    def names(self) -> list[str]:
        """Return the names of the universes with at least one rotation."""
        with self._engine.connect() as conn:
            return sorted(conn.execute(select(_RUNS.c.universe).distinct()).scalars())

    def members(self, name: str, as_of: date | str | None = None) -> list[str]:
        """Return a universe's members, now or as of a date (from the recorded history).

        A symbol added by the rotation of day ``d`` is a member from ``d`` on; one removed on
        ``d`` is no longer a member on ``d``.

        Parameters
        ----------
        name : str
        as_of : date or ISO string, optional
            Default: the current members.

        Returns
        -------
        list of str
            Sorted; empty for an unknown universe or a date before its first rotation.
        """
        m = _MEMBERS.c
        q = select(m.symbol).where(m.universe == name)
        if as_of is None:
            q = q.where(m.removed_on.is_(None))
        else:
            day = _as_day(as_of)
            q = q.where(m.added_on <= day, or_(m.removed_on.is_(None), m.removed_on > day))
        with self._engine.connect() as conn:
            return sorted(set(conn.execute(q).scalars()))

    def _memberships(self, name: str) -> list[Any]:
        with self._engine.connect() as conn:
            return list(
                conn.execute(
                    select(_MEMBERS).where(_MEMBERS.c.universe == name).order_by(_MEMBERS.c.id)
                )
            )

    def _runs(self, name: str) -> list[Any]:
        with self._engine.connect() as conn:
            return list(
                conn.execute(select(_RUNS).where(_RUNS.c.universe == name).order_by(_RUNS.c.as_of))
            )

    def history(self, name: str) -> pl.DataFrame:
        """Return every addition and removal of a universe.

        Returns
        -------
        pl.DataFrame
            Columns ``as_of`` (Date), ``symbol``, ``action`` (``added`` / ``removed``) and
            ``reason``, sorted by date, action and symbol.
        """
        rows = []
        for r in self._memberships(name):
            rows.append((r.added_on, r.symbol, "added", r.reason_added))
            if r.removed_on is not None:
                rows.append((r.removed_on, r.symbol, "removed", r.reason_removed))
        schema = {
            "as_of": pl.Date(),
            "symbol": pl.String(),
            "action": pl.String(),
            "reason": pl.String(),
        }
        return pl.DataFrame(rows, schema=schema, orient="row").sort("as_of", "action", "symbol")

    def stability(self, name: str) -> pl.DataFrame:
        """Return how steadily each symbol that was ever a member stayed in the universe.

        Sessions are counted on the calendar of the last rotation, over the observed period from
        the first to the last rotation (both included); a membership covers its sessions from the
        day it was added up to, not including, the day it was removed.

        Returns
        -------
        pl.DataFrame
            Per symbol: ``sessions_in`` (sessions as a member), ``sessions_total`` (sessions of
            the observed period), ``share = sessions_in / sessions_total``, ``entries`` (separate
            stints), ``member`` (a member now) and ``stability = share / entries`` in [0, 1]: 1 for
            a symbol in the universe throughout in one stint, lower for shorter stays and lower
            again when the same time was spread over several entries (churn).
            Sorted by stability (highest first), then symbol.
        """
        schema = {
            "symbol": pl.String(),
            "sessions_in": pl.Int64(),
            "sessions_total": pl.Int64(),
            "share": pl.Float64(),
            "entries": pl.Int64(),
            "member": pl.Boolean(),
            "stability": pl.Float64(),
        }
        runs = self._runs(name)
        if not runs:
            return pl.DataFrame(schema=schema)
        first, last = runs[0].as_of, runs[-1].as_of
        days = cal.sessions(first, last, runs[-1].calendar)["session"].to_list()
        total = len(days)
        per: dict[str, list[int]] = {}  # symbol -> [sessions_in, entries, open]
        for r in self._memberships(name):
            end = r.removed_on - timedelta(days=1) if r.removed_on is not None else last
            acc = per.setdefault(r.symbol, [0, 0, 0])
            acc[0] += _n_sessions(days, r.added_on, end)
            acc[1] += 1
            acc[2] |= r.removed_on is None
        rows = []
        for sym, (n_in, entries, is_open) in per.items():
            share = n_in / total if total else float(is_open)
            rows.append((sym, n_in, total, share, entries, bool(is_open), share / entries))
        return pl.DataFrame(rows, schema=schema, orient="row").sort(
            ["stability", "symbol"], descending=[True, False]
        )

    def metrics(self, name: str) -> dict[str, float]:
        """Return summary numbers of a universe's rotations (for logs and MLflow).

        Returns
        -------
        dict
            ``rotation_count``; ``avg_turnover``, the mean over rotations after the first (which
            forms the universe) of ``(adds + removes) / (2 * size)``, NaN before a second
            rotation; ``avg_tenure_days``, the mean calendar days of every membership (open ones
            counted to the last rotation), NaN without any; ``current_size``.
        """
        runs = self._runs(name)
        spans = self._memberships(name)
        turnovers = []
        for run in runs[1:]:
            changes = sum(r.added_on == run.as_of for r in spans) + sum(
                r.removed_on == run.as_of for r in spans
            )
            size = json.loads(run.config_json)["size"]
            turnovers.append(changes / (2 * size))
        last = runs[-1].as_of if runs else None
        tenures = [((r.removed_on or last) - r.added_on).days for r in spans]
        return {
            "rotation_count": len(runs),
            "avg_turnover": sum(turnovers) / len(turnovers) if turnovers else math.nan,
            "avg_tenure_days": sum(tenures) / len(tenures) if tenures else math.nan,
            "current_size": sum(r.removed_on is None for r in spans),
        }


def resolve_symbols(
    value: str | Sequence[str], *, url: str = DEFAULT_URL, root: str | Path | None = None
) -> list[str]:
    """Turn a symbol parameter into a list: ``universe:NAME`` gives that universe's members.

    Parameters
    ----------
    value : str or sequence of str
        ``'universe:liquid'``, ``'AAPL,MSFT'`` or ``['AAPL', 'MSFT']``.
    url, root
        As for :class:`UniverseStore`; a missing SQLite file is never created here.

    Returns
    -------
    list of str

    Raises
    ------
    StoreError
        When the universe has no members (unknown, or no database yet), naming the fix.
    """
    if not (isinstance(value, str) and value.strip().startswith(UNIVERSE_PREFIX)):
        return _symbols(value)
    name = value.strip()[len(UNIVERSE_PREFIX) :].strip()
    if not name:
        raise ConfigError(
            f"symbol parameter {value!r} names no universe. Fix: write 'universe:NAME', e.g. "
            "'universe:liquid'."
        )
    fix = (
        f"Fix: rotate it first, e.g. `wb universe rotate --name {name} --symbols A,B,C "
        "--timeframe 1Day --as-of YYYY-MM-DD`."
    )
    base = Path(root) if root is not None else Path.cwd()
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        path = Path(u.database) if Path(u.database).is_absolute() else base / u.database
        if not path.is_file():
            raise StoreError(
                f"universe {name!r} has no members: there is no universe database at {path}. {fix}"
            )
    with UniverseStore(url, base) as us:
        members, known = us.members(name), us.names()
    if not members:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise StoreError(
            f"universe {name!r} has no members in {us!r}; universes recorded: {known}.{hint} {fix}"
        )
    return members
