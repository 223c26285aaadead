"""Bar sources of a trading session: replay a stored day, or live bars built from the trade stream.

Both yield ``(ts, frame)``: every bar of one timestamp (one row per symbol that traded), in time
order, each timestamp once. The warm-up history before the session comes from the store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from workbench.data.schema import BAR_SCHEMA
from workbench.data.timeframe import Timeframe
from workbench.errors import SchemaError


def split_session(bars: pl.DataFrame, session_start: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (history before ``session_start``, the session's bars), both sorted by ts, symbol."""
    if bars.is_empty():
        raise SchemaError("no bars to replay; ingest the session first (`wb ingest`).")
    bars = bars.sort("ts", "symbol")
    history = bars.filter(pl.col("ts") < session_start)
    session = bars.filter(pl.col("ts") >= session_start)
    if session.is_empty():
        raise SchemaError(
            f"no bars at or after {session_start}; pick a session inside the stored data."
        )
    return history, session


class ReplayBars:
    """The stored bars of one session, one timestamp at a time."""

    def __init__(self, session: pl.DataFrame) -> None:
        self.session = session.sort("ts", "symbol")

    def __iter__(self) -> Iterator[tuple[datetime, pl.DataFrame]]:
        for (ts,), group in self.session.group_by(["ts"], maintain_order=True):
            yield ts, group

    async def stream(self) -> AsyncIterator[tuple[datetime, pl.DataFrame]]:
        for item in self:
            yield item
            await asyncio.sleep(0)

    def __len__(self) -> int:
        return self.session["ts"].n_unique()


class LiveBars:
    """Bars of ``timeframe`` built from the live trade stream (:class:`workbench.data.stream.LiveStream`).

    A timestamp is complete when the wall clock passes its bar end plus ``grace``; bars that
    arrive later than that are dropped (a late bar never rewrites a decision already taken).
    """

    def __init__(
        self,
        stream: Any,
        symbols: list[str],
        timeframe: str | Timeframe,
        *,
        clock: Any,
        grace: timedelta = timedelta(seconds=2),
        session_close: datetime | None = None,
    ) -> None:
        self.tf = Timeframe.parse(timeframe)
        self.clock = clock
        self.grace = grace
        self.session_close = session_close
        self._lock = threading.Lock()
        self._pending: dict[datetime, list[dict]] = {}
        self._emitted: datetime | None = None
        self.late = 0
        self.agg = stream.aggregate_trades(self._on_bar, *symbols, timeframe=str(timeframe))
        self.stream = stream

    def _on_bar(self, bar: dict) -> None:
        with self._lock:
            if self._emitted is not None and bar["ts"] <= self._emitted:
                self.late += 1
                return
            self._pending.setdefault(bar["ts"], []).append(bar)

    async def stream_bars(self) -> AsyncIterator[tuple[datetime, pl.DataFrame]]:
        step = self.tf.delta
        while True:
            now = self.clock.now()
            if self.session_close is not None and now >= self.session_close + self.grace:
                return
            self.agg.advance(now - self.grace)
            ready = []
            with self._lock:
                for ts in sorted(self._pending):
                    if ts + step + self.grace <= now:
                        ready.append((ts, self._pending.pop(ts)))
                if ready:
                    self._emitted = ready[-1][0]
            for ts, rows in ready:
                frame = pl.DataFrame(rows).select(list(BAR_SCHEMA)).cast(BAR_SCHEMA)
                yield ts, frame.sort("symbol")
            await asyncio.sleep(0.2)
