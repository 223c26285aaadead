"""Persisted chunk ledger: which (source, timeframe, symbol, window) an ingest has completed.

The ledger is an index, not the truth: every chunk it records is also recorded in the manifest of
the symbol folder it wrote (see :mod:`workbench.data.integrity`), in the same commit as the bars.
A ledger that SQLite cannot read is reported as :class:`LedgerCorruptError` naming the file and the
fix, and :func:`rebuild_ledger` (``wb store repair``) rebuilds it from the store's manifests,
keeping the bad file beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import StoreError

if TYPE_CHECKING:
    from workbench.data.store import BarStore

LEDGER_NAME = "_ledger.sqlite"

_DDL = (
    """
CREATE TABLE IF NOT EXISTS chunks (
    source_key TEXT NOT NULL,
    timeframe  TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    start      TEXT NOT NULL,
    "end"      TEXT NOT NULL,
    rows       INTEGER NOT NULL,
    complete   INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (source_key, timeframe, symbol, start, "end")
)
""",
    """
CREATE TABLE IF NOT EXISTS sources (
    source_key TEXT PRIMARY KEY,
    provenance TEXT NOT NULL
)
""",
)
_CHUNK_COLUMNS = ["source_key", "timeframe", "symbol", "start", "end", "rows", "complete"]


class LedgerCorruptError(StoreError):
    """The ingest ledger cannot be read; the message names the file and the fix."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        store = path.parent
        super().__init__(
            f"the ingest ledger {path} is corrupt ({reason}); nothing was fetched or written. "
            f"Fix: run `wb store repair --store {store}` to rebuild it from the store's manifests "
            "(the bad file is kept beside it as "
            f"{path.name}.corrupt-<time>)."
        )


def provenance_key(provenance: dict[str, str]) -> str:
    """Return a short id of a source's provenance (different data, different key)."""
    payload = json.dumps({k: str(v) for k, v in provenance.items()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ChunkLedger:
    """A small SQLite table of completed ingest chunks, one row per symbol and window.

    A row is written only after the chunk's bars are safely in the store, so a crash at any point
    makes the next run fetch that chunk again (the store upsert makes that harmless). Opening the
    ledger checks it (``PRAGMA quick_check`` and its columns) without writing to a bad file.

    Raises
    ------
    LedgerCorruptError
        If the file is not a readable ledger.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            self._check()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard(), closing(self._connect()) as con, con:
            for ddl in _DDL:
                con.execute(ddl)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if isinstance(exc, sqlite3.OperationalError) and "locked" in msg:
                raise
            if isinstance(exc, sqlite3.OperationalError) and (
                "readonly" in msg or "unable to open" in msg
            ):
                raise StoreError(
                    f"cannot write the ingest ledger {self.path} ({msg}). Fix: make its folder "
                    f"writable (e.g. `chmod -R u+w {self.path.parent}`) or pass --store with a "
                    "writable folder."
                ) from None
            raise LedgerCorruptError(self.path, str(exc)) from None

    def _check(self) -> None:
        with self._guard(), closing(self._connect()) as con:
            verdict = con.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                raise LedgerCorruptError(self.path, f"quick_check: {verdict and verdict[0]}")
            cols = [r[1] for r in con.execute("PRAGMA table_info(chunks)")]
        if cols and not set(_CHUNK_COLUMNS) <= set(cols):
            raise LedgerCorruptError(self.path, f"table 'chunks' has columns {cols}")

    def get(
        self, source_key: str, timeframe: str, symbol: str, start: datetime, end: datetime
    ) -> tuple[int, bool] | None:
        """Return ``(rows, complete)`` recorded for a chunk, or None."""
        with self._guard(), closing(self._connect()) as con:
            row = con.execute(
                'SELECT rows, complete FROM chunks WHERE source_key=? AND timeframe=? AND symbol=? AND start=? AND "end"=?',
                (source_key, timeframe, symbol, start.isoformat(), end.isoformat()),
            ).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    def record(
        self,
        source_key: str,
        timeframe: str,
        symbol: str,
        start: datetime,
        end: datetime,
        rows: int,
        complete: bool,
    ) -> None:
        """Record (or replace) a chunk's outcome."""
        self.record_many(
            [(source_key, timeframe, symbol, start.isoformat(), end.isoformat(), rows, complete)]
        )

    def record_many(self, rows: list[tuple[str, str, str, str, str, int, bool]]) -> None:
        """Record chunks ``(source_key, timeframe, symbol, start, end, rows, complete)`` at once."""
        now = datetime.now(UTC).isoformat()
        with self._guard(), closing(self._connect()) as con, con:
            con.executemany(
                "INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?)",
                [(*r[:6], int(r[6]), now) for r in rows],
            )

    def record_source(self, source_key: str, provenance: dict[str, str]) -> None:
        """Remember the provenance behind a source key (what ``wb store repair`` rebuilds from)."""
        with self._guard(), closing(self._connect()) as con, con:
            con.execute(
                "INSERT OR REPLACE INTO sources VALUES (?,?)",
                (source_key, json.dumps(provenance, sort_keys=True)),
            )

    def source(self, source_key: str) -> dict[str, str] | None:
        """Return the provenance recorded for a source key, or None."""
        with self._guard(), closing(self._connect()) as con:
            row = con.execute(
                "SELECT provenance FROM sources WHERE source_key=?", (source_key,)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def chunks_for(self, timeframe: str, symbol: str) -> list[tuple[str, datetime, datetime]]:
        """Return ``(source_key, start, end)`` of every chunk recorded for a symbol."""
        with self._guard(), closing(self._connect()) as con:
            rows = con.execute(
                'SELECT source_key, start, "end" FROM chunks WHERE timeframe=? AND symbol=? ORDER BY start',
                (timeframe, symbol),
            ).fetchall()
        return [(k, datetime.fromisoformat(a), datetime.fromisoformat(b)) for k, a, b in rows]

    def count(self) -> int:
        """Return the number of recorded chunk rows."""
        with self._guard(), closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def clear(self) -> None:
        """Forget every chunk (the next ingest fetches everything again)."""
        with self._guard(), closing(self._connect()) as con, con:
            con.execute("DELETE FROM chunks")


@dataclass(frozen=True, slots=True)
class LedgerRebuild:
    """What :func:`rebuild_ledger` did: the new ledger, rows recovered, where the bad file went."""

    path: Path
    chunks: int
    sources: int
    kept_as: Path | None


def check_ledger(store: BarStore) -> LedgerCorruptError | None:
    """Return the problem of a store's ledger, or None when it is readable (or absent)."""
    path = store.root / LEDGER_NAME
    if not path.exists():
        return None
    try:
        ChunkLedger(path)
    except LedgerCorruptError as exc:
        return exc
    return None


def rebuild_ledger(store: BarStore) -> LedgerRebuild:
    """Rebuild the store's ingest ledger from the chunks recorded in its manifests.

    The old file (if any) is renamed to ``_ledger.sqlite.corrupt-<time>`` first. Chunks that only
    the old ledger knew (written before manifests existed) are fetched again by the next ingest;
    the store's upsert makes that harmless.
    """
    path = store.root / LEDGER_NAME
    kept: Path | None = None
    with store.lock():  # the store writer lock guards its ledger too
        if path.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            kept = path.with_name(f"{path.name}.corrupt-{stamp}")
            os.replace(path, kept)
            for side in ("-wal", "-shm", "-journal"):
                extra = path.with_name(path.name + side)
                if extra.exists():
                    os.replace(extra, kept.with_name(kept.name + side))
        ledger = ChunkLedger(path)
        rows: list[tuple[str, str, str, str, str, int, bool]] = []
        sources: dict[str, dict[str, str]] = {}
        for _, man, _problem in store.manifests():
            if man is None:
                continue
            for c in man.chunks:
                rows.append(
                    (
                        c["source_key"],
                        man.timeframe,
                        man.symbol,
                        c["start"],
                        c["end"],
                        int(c["rows"]),
                        bool(c["complete"]),
                    )
                )
            for rec in man.partitions.values():
                prov = rec.get("provenance")
                if prov:
                    sources[provenance_key(prov)] = prov
        if rows:
            ledger.record_many(rows)
        for key, prov in sources.items():
            ledger.record_source(key, prov)
    return LedgerRebuild(path, len(rows), len(sources), kept)
