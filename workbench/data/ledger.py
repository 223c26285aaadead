"""Persisted chunk ledger: which (source, timeframe, symbol, window) an ingest has completed."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

_DDL = """
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
"""


class ChunkLedger:
    """A small SQLite table of completed ingest chunks, one row per symbol and window.

    A row is written only after the chunk's bars are safely in the store, so a crash at any point
    makes the next run fetch that chunk again (the store upsert makes that harmless).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.execute(_DDL)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(
        self, source_key: str, timeframe: str, symbol: str, start: datetime, end: datetime
    ) -> tuple[int, bool] | None:
        """Return ``(rows, complete)`` recorded for a chunk, or None."""
        with closing(self._connect()) as con:
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
        with closing(self._connect()) as con, con:
            con.execute(
                "INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?)",
                (
                    source_key,
                    timeframe,
                    symbol,
                    start.isoformat(),
                    end.isoformat(),
                    rows,
                    int(complete),
                    datetime.now(UTC).isoformat(),
                ),
            )

    def count(self) -> int:
        """Return the number of recorded chunk rows."""
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def clear(self) -> None:
        """Forget every chunk (the next ingest fetches everything again)."""
        with closing(self._connect()) as con, con:
            con.execute("DELETE FROM chunks")
