"""Pipeline run locks: at most one running instance of a pipeline, across processes.

The runner takes the lock of a pipeline before it creates the run folder and holds it until the
run ends, so a scheduled run and a manual ``wb run`` of the same pipeline cannot overlap, and no
run of a pipeline for one session can outlast into the next session's run. The lock is a row in
a database table (SQLite by default, any SQLAlchemy URL; the primary key makes taking it atomic),
and the row names its holder: pipeline, session, trigger, process, host, start time, run folder.

A holder that died without releasing (SIGKILL, power loss) leaves a stale row. On the holder's
own host the next run sees that the process is gone (its pid is not running, or runs a process
started at another time) and takes the lock over; a holder on another host is reported with the
command that clears it (``wb schedule unlock PIPELINE``). A process that must exit at once
(the scheduler's second SIGTERM) first releases every lock it holds (:func:`release_held`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from workbench.errors import PipelineError

NEW_YORK = ZoneInfo("America/New_York")
_HELD: dict[str, tuple[RunLock, LockHolder]] = {}  # token -> lock taken in this process
_HELD_GUARD = threading.Lock()
_META = sa.MetaData()
_LOCKS = sa.Table(
    "pipeline_locks",
    _META,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("session", sa.String(10), nullable=False),
    sa.Column("trigger", sa.String(200), nullable=False),
    sa.Column("token", sa.String(32), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_started", sa.Float, nullable=False),  # process start time (epoch s), 0 unknown
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_dir", sa.String(1000), nullable=False),
)


class PipelineLocked(PipelineError):
    """Another run of the pipeline holds its lock."""

    def __init__(self, message: str, holder: LockHolder) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LockHolder:
    """Who holds a pipeline's lock."""

    pipeline: str
    session: str
    trigger: str
    token: str
    host: str
    pid: int
    pid_started: float
    started_at: datetime
    run_dir: str

    def describe(self) -> str:
        t = self.started_at.astimezone(UTC)
        return (
            f"{self.trigger} run for session {self.session}, pid {self.pid} on host {self.host}, "
            f"started {t:%Y-%m-%d %H:%M:%S} UTC ({t.astimezone(NEW_YORK):%H:%M:%S %Z}), "
            f"run folder {self.run_dir}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": self.started_at.astimezone(UTC).isoformat()}


def _process_started(pid: int) -> float:
    try:
        import psutil  # a dependency of ipykernel

        return float(psutil.Process(pid).create_time())
    except Exception:
        return 0.0


def _alive(holder: LockHolder) -> bool:
    """Whether the holder's process still runs (only answerable on its own host)."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _process_started(holder.pid)
    return not (holder.pid_started and started and abs(started - holder.pid_started) > 1.0)


def project_url(root: Path, url: str) -> str:
    """An SQLAlchemy URL with a relative SQLite path made absolute under ``root``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or ":memory:" in url:
        return url
    return prefix + str(root / url[len(prefix) :])


def sqlite_url_in(folder: str | Path) -> str:
    """The default lock database: ``locks.db`` in the runs folder."""
    return f"sqlite:///{Path(folder) / 'locks.db'}"


class RunLock:
    """Pipeline run locks in the database at ``url``.

    Examples
    --------
    >>> locks = RunLock("sqlite:///runs/locks.db")  # doctest: +SKIP
    >>> with locks.hold("daily_ingest", session="2024-03-05", trigger="manual"):  # doctest: +SKIP
    ...     ...
    """

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = sa.create_engine(
            url, connect_args={"timeout": 30} if url.startswith("sqlite") else {}
        )
        _META.create_all(self.engine, checkfirst=True)

    def holder(self, pipeline: str) -> LockHolder | None:
        """Return the current holder of a pipeline's lock, if any."""
        with self.engine.connect() as c:
            row = (
                c.execute(sa.select(_LOCKS).where(_LOCKS.c.pipeline == pipeline)).mappings().first()
            )
        return _holder(row) if row else None

    def holders(self) -> list[LockHolder]:
        """Return every held lock."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(_LOCKS).order_by(_LOCKS.c.pipeline)).mappings().all()
        return [_holder(r) for r in rows]

    def acquire(
        self, pipeline: str, *, session: str, trigger: str, run_dir: str = ""
    ) -> LockHolder:
        """Take a pipeline's lock or raise :class:`PipelineLocked` naming the holder.

        A holder on this host whose process is gone is taken over (a stale lock).
        """
        pid = os.getpid()
        me = LockHolder(
            pipeline, session, trigger, uuid.uuid4().hex, socket.gethostname(), pid,
            _process_started(pid), datetime.now(UTC), run_dir,
        )  # fmt: skip
        for _ in range(3):
            try:
                with self.engine.begin() as c:
                    c.execute(sa.insert(_LOCKS).values(**asdict(me)))
                with _HELD_GUARD:
                    _HELD[me.token] = (self, me)
                return me
            except sa.exc.IntegrityError:
                held = self.holder(pipeline)
                if held is None:
                    continue  # released in between
                if held.host == me.host and not _alive(held):
                    with self.engine.begin() as c:  # stale: its process is gone
                        c.execute(
                            sa.delete(_LOCKS).where(
                                _LOCKS.c.pipeline == pipeline, _LOCKS.c.token == held.token
                            )
                        )
                    continue
                raise PipelineLocked(
                    f"pipeline {pipeline!r} is already running: {held.describe()}. Nothing was run. "
                    f"Fix: wait for that run to finish; if its process is gone (a stale lock), clear it "
                    f"with `wb schedule unlock {pipeline}`.",
                    held,
                ) from None
        raise PipelineError(
            f"could not take the lock of pipeline {pipeline!r} at {self.url}; retry."
        )

    def release(self, holder: LockHolder) -> bool:
        """Release a lock this holder took; return False if it was no longer held by it."""
        with _HELD_GUARD:
            _HELD.pop(holder.token, None)
        with self.engine.begin() as c:
            res = c.execute(
                sa.delete(_LOCKS).where(
                    _LOCKS.c.pipeline == holder.pipeline, _LOCKS.c.token == holder.token
                )
            )
        return res.rowcount > 0

    def update_run_dir(self, holder: LockHolder, run_dir: str) -> LockHolder:
        """Record the run folder once it exists."""
        with self.engine.begin() as c:
            c.execute(
                sa.update(_LOCKS)
                .where(_LOCKS.c.pipeline == holder.pipeline, _LOCKS.c.token == holder.token)
                .values(run_dir=run_dir)
            )
        return LockHolder(**{**asdict(holder), "run_dir": run_dir})

    def clear(self, pipeline: str) -> LockHolder | None:
        """Remove a pipeline's lock whoever holds it (for a stale lock); return the old holder."""
        held = self.holder(pipeline)
        if held is not None:
            with self.engine.begin() as c:
                c.execute(sa.delete(_LOCKS).where(_LOCKS.c.pipeline == pipeline))
        return held

    @contextlib.contextmanager
    def hold(
        self, pipeline: str, *, session: str, trigger: str, run_dir: str = ""
    ) -> Iterator[LockHolder]:
        """Hold a pipeline's lock for the body of a ``with`` block."""
        holder = self.acquire(pipeline, session=session, trigger=trigger, run_dir=run_dir)
        try:
            yield holder
        finally:
            self.release(holder)

    def close(self) -> None:
        self.engine.dispose()


def held_here() -> list[LockHolder]:
    """The locks this process holds now (taken and not yet released)."""
    with _HELD_GUARD:
        return [h for _, h in _HELD.values()]


def release_held() -> list[LockHolder]:
    """Release every lock this process holds (before an immediate exit that skips the runs'
    ``finally`` blocks, so no stale row is left); return what was released."""
    with _HELD_GUARD:
        held = list(_HELD.values())
    out = []
    for locks, holder in held:
        try:
            if locks.release(holder):
                out.append(holder)
        except Exception:  # a database gone: the row is stale, taken over by the next run here
            continue
    return out


def _holder(row: Any) -> LockHolder:
    d = dict(row)
    ts = d["started_at"]
    if ts.tzinfo is None:  # SQLite keeps no offset
        d["started_at"] = ts.replace(tzinfo=UTC)
    return LockHolder(**d)
