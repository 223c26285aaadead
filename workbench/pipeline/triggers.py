"""Market-time triggers: fire times in exchange terms, computed from the exchange calendar.

A :class:`MarketTrigger` is an APScheduler 3 trigger (``BaseTrigger.get_next_fire_time``), so
APScheduler's job store, misfire handling and coalescing work on it unchanged. It fires either at
an anchor of each session, ``at_open``, ``at_close``, ``before_open - 60min``,
``after_close + 30min`` (also ``at_open + 15min``, ``at_close - 10min``), or at the times of a
cron expression (exchange-local time) on session days only. ``sessions`` keeps every session or
only the first/last session of each ISO week or calendar month.

Holidays have no session, so they never fire; early closes carry their own close (13:00 New York
on a half day), so ``after_close + 30min`` fires at 13:30 there. Every time in and out is UTC;
anchors are offsets in absolute time, so daylight-saving changes need no special case.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from workbench.data.calendar import DEFAULT_CALENDAR, FIRST_DATE, get_calendar, sessions
from workbench.errors import PipelineError

log = logging.getLogger(__name__)

SESSION_FILTERS = ("every", "first_of_week", "last_of_week", "first_of_month", "last_of_month")
ANCHORS = ("at_open", "at_close", "before_open", "after_close")
MAX_OFFSET = timedelta(hours=12)
_EXPR = re.compile(r"^\s*([a-z_]+)\s*(?:([+-])\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*)?$")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
_EXAMPLES = "'after_close + 30min', 'before_open - 60min', 'at_open', 'at_close - 10min'"
_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TriggerError(PipelineError):
    """A market-time expression, cron expression or session filter is invalid."""


@dataclass(frozen=True)
class MarketTime:
    """A parsed anchor expression: ``anchor`` of each session plus ``offset``."""

    anchor: str  # open | close
    offset: timedelta

    @property
    def text(self) -> str:
        if not self.offset:
            return f"at_{self.anchor}"
        minutes = abs(self.offset) / timedelta(minutes=1)
        amount = f"{minutes:g}min" if minutes < 60 or minutes % 60 else f"{minutes / 60:g}h"
        if self.anchor == "open":
            return (
                f"before_open - {amount}" if self.offset < timedelta(0) else f"at_open + {amount}"
            )
        return f"after_close + {amount}" if self.offset > timedelta(0) else f"at_close - {amount}"


def parse_market_time(text: str) -> MarketTime:
    """Parse ``after_close + 30min``, ``before_open - 60min``, ``at_open``, ``at_close - 5min``.

    Raises
    ------
    TriggerError
        Naming the bad part and the fix.
    """
    m = _EXPR.match(str(text).lower())
    if not m:
        raise TriggerError(
            f"{text!r} is not a market time. Fix: write an anchor and an optional offset, e.g. {_EXAMPLES}."
        )
    anchor, sign, amount, unit = m.groups()
    if anchor not in ANCHORS:
        close = [a for a in ANCHORS if a.split("_")[-1] in anchor] or list(ANCHORS)
        raise TriggerError(
            f"{text!r}: unknown anchor {anchor!r}; valid anchors: {list(ANCHORS)}. Fix: e.g. {close[0]!r}."
        )
    offset = timedelta(0)
    if sign:
        if unit not in _UNITS:
            raise TriggerError(
                f"{text!r}: unknown unit {unit!r}; valid units: min, h, s. Fix: e.g. '{anchor} {sign} 30min'."
            )
        offset = timedelta(seconds=float(amount) * _UNITS[unit]) * (1 if sign == "+" else -1)
    if anchor == "before_open" and not offset < timedelta(0):
        raise TriggerError(
            f"{text!r}: before_open needs a negative offset. Fix: 'before_open - 60min' (or 'at_open + 60min')."
        )
    if anchor == "after_close" and not offset > timedelta(0):
        raise TriggerError(
            f"{text!r}: after_close needs a positive offset. Fix: 'after_close + 30min' (or 'at_close - 30min')."
        )
    if abs(offset) > MAX_OFFSET:
        raise TriggerError(
            f"{text!r}: the offset must be at most 12h from the {anchor.split('_')[-1]}. Fix: use a cron "
            "expression for other times of day."
        )
    return MarketTime(anchor.split("_")[-1], offset)


def parse_cron(text: str, tz: str) -> CronTrigger:
    """Build a cron trigger (minute hour day month day_of_week) in exchange-local time ``tz``.

    Numeric weekdays are refused: APScheduler 3 numbers them from Monday = 0, unlike cron.
    """
    fields = str(text).split()
    if len(fields) != 5:
        raise TriggerError(
            f"cron {text!r} has {len(fields)} field(s); it needs 5 (minute hour day month day_of_week). "
            "Fix: e.g. '0 10 * * mon-fri'."
        )
    if re.search(r"\d", fields[4]):
        raise TriggerError(
            f"cron {text!r}: day_of_week {fields[4]!r} uses numbers, which APScheduler 3 counts from "
            "Monday = 0 (cron counts from Sunday = 0). Fix: use names, e.g. 'mon-fri' or 'mon,wed'."
        )
    try:
        return CronTrigger(
            minute=fields[0], hour=fields[1], day=fields[2], month=fields[3],
            day_of_week=fields[4], timezone=ZoneInfo(tz),
        )  # fmt: skip
    except ValueError as exc:
        raise TriggerError(f"cron {text!r}: {exc}. Fix: e.g. '0 10 * * mon-fri'.") from None


def _us(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise TriggerError(f"expected a timezone-aware datetime, got naive {ts!r}.")
    return (ts - _EPOCH) // _US


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


@functools.lru_cache(maxsize=16)
def _sessions(calendar: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every session of the calendar: dates (datetime64[D]), opens and closes (int64 us, UTC)."""
    cal = get_calendar(calendar)
    sch = sessions(FIRST_DATE, cal.last_session.date(), calendar)
    days = sch["session"].to_numpy().astype("datetime64[D]")
    opens = sch["open"].dt.epoch("us").to_numpy()
    closes = sch["close"].dt.epoch("us").to_numpy()
    return days, opens, closes


def session_arrays(calendar: str = DEFAULT_CALENDAR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return every session's date (datetime64[D]), open and close (int64 us since the epoch, UTC)."""
    return _sessions(calendar)


@functools.lru_cache(maxsize=64)
def _keep(calendar: str, which: str) -> np.ndarray:
    """Boolean mask over the calendar's sessions for a session filter."""
    days = _sessions(calendar)[0]
    if which == "every":
        return np.ones(days.size, dtype=bool)
    if which.endswith("week"):
        # ISO weeks start on Monday: week number = days since a Monday, // 7
        key = (days - np.datetime64("1970-01-05")).astype(np.int64) // 7
    else:
        key = days.astype("datetime64[M]").astype(np.int64)
    change = np.diff(key) != 0
    if which.startswith("first"):
        return np.concatenate([[True], change])
    return np.concatenate([change, [True]])


@functools.lru_cache(maxsize=64)
def _anchor_fires(
    calendar: str, anchor: str, offset_us: int, which: str
) -> tuple[np.ndarray, np.ndarray]:
    """Fire times (int64 us, sorted) and their session index, for an anchor trigger."""
    _, opens, closes = _sessions(calendar)
    base = opens if anchor == "open" else closes
    idx = np.flatnonzero(_keep(calendar, which))
    return base[idx] + offset_us, idx


class MarketTrigger(BaseTrigger):
    """Fire at a market time of each kept session, or at cron times on kept session days.

    Parameters
    ----------
    at : str, optional
        Anchor expression, e.g. ``after_close + 30min`` (see :func:`parse_market_time`).
    cron : str, optional
        Five-field cron expression in the exchange's time zone; fires only on session days.
    sessions : str
        ``every`` (default), ``first_of_week``, ``last_of_week``, ``first_of_month``,
        ``last_of_month``.
    market_hours : bool
        Cron only: keep cron times inside the session (open <= t <= close, early closes honoured).
    calendar : str
        exchange_calendars code (``XNYS``).

    Examples
    --------
    >>> t = MarketTrigger(at="after_close + 30min")
    >>> t.next_fire(datetime(2024, 7, 3, 12, tzinfo=UTC))  # a half day: close 13:00 New York
    (datetime.datetime(2024, 7, 3, 17, 30, tzinfo=datetime.timezone.utc), datetime.date(2024, 7, 3))
    """

    def __init__(
        self,
        *,
        at: str | None = None,
        cron: str | None = None,
        sessions: str = "every",
        market_hours: bool = False,
        calendar: str = DEFAULT_CALENDAR,
    ) -> None:
        self.at, self.cron, self.sessions = at, cron, sessions
        self.market_hours, self.calendar = market_hours, calendar
        self._setup()

    def _setup(self) -> None:
        if (self.at is None) == (self.cron is None):
            raise TriggerError(
                f"give exactly one of at= or cron=, got at={self.at!r}, cron={self.cron!r}. "
                f"Fix: e.g. at='after_close + 30min' or cron='0 10 * * mon-fri'."
            )
        if self.sessions not in SESSION_FILTERS:
            raise TriggerError(
                f"sessions {self.sessions!r} is not a session filter; valid: {list(SESSION_FILTERS)}."
            )
        if self.market_hours and self.cron is None:
            raise TriggerError(
                "market_hours applies to cron triggers only (an anchor already names a time in the "
                "session). Fix: drop market_hours or use cron."
            )
        self._tz = str(get_calendar(self.calendar).tz)
        self._mt = parse_market_time(self.at) if self.at is not None else None
        self._cron = parse_cron(self.cron, self._tz) if self.cron is not None else None

    # ------------------------------------------------------------------ APScheduler protocol

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """Return the first fire time after ``previous_fire_time`` (else at or after ``now``)."""
        start = previous_fire_time + _US if previous_fire_time is not None else now
        nxt = self.next_fire(start)
        if nxt is None:
            log.warning("%s: no fire time after %s within the calendar's span", self, start)
            return None
        return nxt[0]

    def __getstate__(self) -> dict[str, Any]:
        return {
            "version": 1, "at": self.at, "cron": self.cron, "sessions": self.sessions,
            "market_hours": self.market_hours, "calendar": self.calendar,
        }  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("version", 1) > 1:
            raise ValueError(
                f"MarketTrigger state version {state['version']} is newer than this code (1)."
            )
        self.at, self.cron, self.sessions = state["at"], state["cron"], state["sessions"]
        self.market_hours, self.calendar = state["market_hours"], state["calendar"]
        self._setup()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MarketTrigger) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.__getstate__().items())))

    @property
    def when(self) -> str:
        """The time part, e.g. ``after_close + 30min`` or ``cron '0 10 * * mon-fri'``."""
        what = self._mt.text if self._mt is not None else f"cron '{self.cron}'"
        return what + (" in market hours" if self.market_hours else "")

    def __str__(self) -> str:
        what = self._mt.text if self._mt is not None else f"cron '{self.cron}' ({self._tz})"
        if self.market_hours:
            what += " in market hours"
        scope = (
            "every session"
            if self.sessions == "every"
            else self.sessions.replace("_", " ") + " session"
        )
        return f"{what}, {scope} ({self.calendar})"

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.__getstate__().items() if k != "version" and v
        )
        return f"MarketTrigger({args})"

    # ------------------------------------------------------------------ queries

    def next_fire(self, start: datetime) -> tuple[datetime, date] | None:
        """Return the first ``(fire time UTC, session)`` at or after ``start``, or None."""
        if self._mt is not None:
            fires, idx = self._fires()
            i = int(np.searchsorted(fires, _us(start), side="left"))
            if i == fires.size:
                return None
            return _dt(fires[i]), self._day(idx[i])
        return self._next_cron(start)

    def last_fire(self, end: datetime) -> tuple[datetime, date] | None:
        """Return the last ``(fire time UTC, session)`` at or before ``end``, or None."""
        if self._mt is not None:
            fires, idx = self._fires()
            i = int(np.searchsorted(fires, _us(end), side="right")) - 1
            return (_dt(fires[i]), self._day(idx[i])) if i >= 0 else None
        days, opens, _ = _sessions(self.calendar)
        keep = _keep(self.calendar, self.sessions)
        i = int(
            np.searchsorted(opens, _us(end), side="right")
        )  # sessions opened by `end`, and one more
        for j in range(min(i, days.size - 1), max(i - 400, -1), -1):
            if not keep[j]:
                continue
            last = None
            t = self._cron_candidate(j, _dt(0))
            while t is not None and t <= end:
                last = t
                t = self._cron_candidate(j, t + _US)
            if last is not None:
                return last, self._day(j)
        return None

    def fire_times(self, start: datetime, end: datetime) -> list[tuple[datetime, date]]:
        """Return every ``(fire time UTC, session)`` with ``start <= t < end``."""
        if self._mt is not None:
            fires, idx = self._fires()
            lo, hi = np.searchsorted(fires, [_us(start), _us(end)], side="left")
            return [(_dt(f), self._day(i)) for f, i in zip(fires[lo:hi], idx[lo:hi], strict=True)]
        out = []
        nxt = self._next_cron(start)
        while nxt is not None and nxt[0] < end:
            out.append(nxt)
            nxt = self._next_cron(nxt[0] + _US)
        return out

    def session_of(self, fire: datetime) -> date | None:
        """Return the session a fire time belongs to (None if it is not a fire time)."""
        nxt = self.next_fire(fire)
        return nxt[1] if nxt is not None and nxt[0] == fire else None

    # ------------------------------------------------------------------ internals

    def _fires(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._mt is not None
        return _anchor_fires(self.calendar, self._mt.anchor, self._mt.offset // _US, self.sessions)

    def _day(self, i: int) -> date:
        return _sessions(self.calendar)[0][int(i)].astype(object)

    def _cron_candidate(self, j: int, start: datetime) -> datetime | None:
        """The first cron time at or after ``start`` inside session ``j``'s day (and hours)."""
        assert self._cron is not None
        _, opens, closes = _sessions(self.calendar)
        tz = ZoneInfo(self._tz)
        day = self._day(j)
        lo = datetime.combine(day, datetime.min.time(), tz)
        hi = lo + timedelta(days=1)
        if self.market_hours:
            lo, hi = _dt(opens[j]), _dt(closes[j]) + _US
        start = max(start, lo)
        t = self._cron.get_next_fire_time(None, start.astimezone(tz))
        if t is None or t >= hi:
            return None
        return t.astimezone(UTC)

    def _next_cron(self, start: datetime) -> tuple[datetime, date] | None:
        days, _, _ = _sessions(self.calendar)
        keep = _keep(self.calendar, self.sessions)
        local_day = np.datetime64(start.astimezone(ZoneInfo(self._tz)).date(), "D")
        j = int(np.searchsorted(days, local_day, side="left"))
        while j < days.size:
            if keep[j]:
                t = self._cron_candidate(j, start)
                if t is not None:
                    return t, self._day(j)
            j += 1
        return None
