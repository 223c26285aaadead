"""The bars a live session saw, kept so its divergence report can re-run the backtest on them.

A live session's bars are built from the trade stream and exist nowhere else until the next
ingest; :func:`record_bars` wraps the session's bar source and writes each timestamp's bars, once
the engine has processed them (off the decision path), to one Parquet file per bar under a
folder of the session (written atomically: a crash leaves whole files; a restart that streams a
bar again rewrites the same file). :func:`recorded_bars` reads them back in the bar contract.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import polars as pl

from workbench.data.schema import BAR_SCHEMA, empty_bars


class BarRecorder:
    """Writes each bar timestamp of a session as ``<root>/bars-<UTC ts>.parquet``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.recorded = 0

    def record(self, ts: datetime, frame: pl.DataFrame) -> None:
        """Write the bars of ``ts`` (atomically; the same bar again replaces its file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"bars-{ts.strftime('%Y%m%dT%H%M%S%f')}.parquet"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        frame.select(list(BAR_SCHEMA)).cast(BAR_SCHEMA).write_parquet(tmp)
        os.replace(tmp, path)
        self.recorded += 1


async def record_bars(
    source: AsyncIterator[tuple[datetime, pl.DataFrame]], recorder: BarRecorder
) -> AsyncIterator[tuple[datetime, pl.DataFrame]]:
    """Yield ``source``'s bars unchanged; each is recorded once the consumer asks for the next
    one (the engine has processed it) or stops."""
    async for ts, frame in source:
        try:
            yield ts, frame
        finally:
            recorder.record(ts, frame)


def recorded_bars(root: str | Path) -> pl.DataFrame:
    """Every bar recorded under ``root``, sorted by ``(ts, symbol)`` (empty when none)."""
    files = sorted(Path(root).glob("bars-*.parquet")) if Path(root).is_dir() else []
    if not files:
        return empty_bars()
    out = pl.concat([pl.read_parquet(f).cast(BAR_SCHEMA) for f in files])
    return out.unique(["symbol", "ts"], keep="last").sort("ts", "symbol")
