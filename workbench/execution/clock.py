"""Clocks for trading sessions: a replay clock that follows the bars, a wall clock that waits."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What the session engine asks of time."""

    def now(self) -> datetime: ...

    async def sleep_until(self, ts: datetime) -> None: ...

    def monotonic(self) -> float: ...


class ReplayClock:
    """Time is the bar being processed: ``now()`` is the last bar's end, waits return at once.

    Waits for the broker (orders settling) still take real time: :meth:`monotonic` is real.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(1970, 1, 1, tzinfo=UTC)

    def advance(self, ts: datetime) -> None:
        if ts > self._now:
            self._now = ts

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, ts: datetime) -> None:
        self.advance(ts)
        await asyncio.sleep(0)

    def monotonic(self) -> float:
        return time.monotonic()


class WallClock:
    """The real time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def advance(self, ts: datetime) -> None:  # the wall does not move on request
        return None

    async def sleep_until(self, ts: datetime) -> None:
        while (delay := (ts - self.now()).total_seconds()) > 0:
            await asyncio.sleep(min(delay, 1.0))

    def monotonic(self) -> float:
        return time.monotonic()
