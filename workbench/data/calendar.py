"""Exchange calendar: sessions, bar stamps and the bars that should exist at a given time.

A thin layer over :mod:`exchange_calendars` (default calendar ``"XNYS"``). Calendar objects are
built once per code and cached. Every timestamp in and out is UTC (naive datetimes are read as UTC).

Bar stamps follow Alpaca: intraday bars are clock-aligned in exchange-local time and stamped at
their start (5Min bars at 09:30, 09:35 ... 15:55 ET; the 1Hour bar stamped 09:00 ET covers
09:30-10:00), only bars that start inside a regular session exist, and early-close days end early.
Daily bars are stamped at midnight America/New_York (the exchange's time zone) of the session date,
expressed in UTC. A bar stamped ``ts`` is complete at ``min(ts + timeframe, session close)``.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from datetime import UTC, date, datetime, timedelta

import exchange_calendars as xcals
import numpy as np
import polars as pl

from workbench.data.schema import TS_DTYPE
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError

DEFAULT_CALENDAR = "XNYS"
FIRST_DATE = date(2000, 1, 1)  # earliest session any helper can answer for
_LOOKBACK = timedelta(days=14)  # longer than any exchange closure, for "last bar before now"


@functools.lru_cache(maxsize=8)
def get_calendar(calendar: str = DEFAULT_CALENDAR) -> xcals.ExchangeCalendar:
    """Return the cached :class:`exchange_calendars.ExchangeCalendar` for a code such as ``"XNYS"``.

    The calendar spans 2000-01-01 to the end of the year after next.

    Raises
    ------
    ConfigError
        If the code is unknown, naming the closest valid code.
    """
    names = xcals.get_calendar_names(include_aliases=True)
    if calendar not in names:
        close = difflib.get_close_matches(str(calendar), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown exchange calendar {calendar!r}.{hint} Fix: use an exchange_calendars code "
            "such as 'XNYS' (NYSE) or 'XNAS' (Nasdaq); see exchange_calendars.get_calendar_names()."
        )
    end = date(date.today().year + 2, 12, 31)
    with warnings.catch_warnings():
        # exchange_calendars trips pandas deprecation warnings we cannot fix from here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return xcals.get_calendar(calendar, start=FIRST_DATE.isoformat(), end=end.isoformat())


@functools.lru_cache(maxsize=8)
def _schedule(calendar: str) -> pl.DataFrame:
    cal = get_calendar(calendar)
    sch = cal.schedule
    return pl.DataFrame(
        {
            "session": sch.index.to_numpy().astype("datetime64[D]"),
            "open": sch["open"].dt.tz_convert(None).to_numpy().astype("datetime64[us]"),
            "close": sch["close"].dt.tz_convert(None).to_numpy().astype("datetime64[us]"),
        }
    ).with_columns(pl.col("open", "close").dt.replace_time_zone("UTC"))


@functools.lru_cache(maxsize=8)
def _bounds_us(calendar: str) -> tuple[np.ndarray, np.ndarray]:
    sch = _schedule(calendar)
    return (
        sch["open"].dt.epoch("us").to_numpy(),
        sch["close"].dt.epoch("us").to_numpy(),
    )


def session_bounds_us(calendar: str = DEFAULT_CALENDAR) -> tuple[np.ndarray, np.ndarray]:
    """Return every session's open and close as int64 microseconds since the epoch (UTC), sorted."""
    return _bounds_us(calendar)


def _as_date(value: date | str, what: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"{what} {value!r} is not an ISO date. Fix: pass a date such as '2024-01-02'."
            ) from None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise ConfigError(f"{what} must be a date, got {type(value).__name__} {value!r}.")


def _as_utc(ts: datetime | str) -> datetime:
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    if not isinstance(ts, datetime):
        raise ConfigError(
            f"expected a datetime, got {type(ts).__name__} {ts!r}. Fix: pass a timezone-aware "
            "datetime (naive values are read as UTC)."
        )
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _to_us(ts: datetime) -> int:
    return int((_as_utc(ts) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def sessions(start: date | str, end: date | str, calendar: str = DEFAULT_CALENDAR) -> pl.DataFrame:
    """Return the sessions from ``start`` to ``end`` (both inclusive) with their open and close.

    Holidays and weekends are absent; early closes carry their early close time.

    Parameters
    ----------
    start, end : date or ISO string
        First and last calendar date (inclusive); datetimes are cut to their date.
    calendar : str
        exchange_calendars code.

    Returns
    -------
    pl.DataFrame
        Columns ``session`` (Date), ``open`` and ``close`` (``Datetime("us", "UTC")``), one row per
        session, sorted.

    Raises
    ------
    ConfigError
        If the calendar is unknown or a date is not a date.
    """
    lo, hi = _as_date(start, "start"), _as_date(end, "end")
    sch = _schedule(calendar)
    return sch.filter(pl.col("session").is_between(lo, hi))


def _intraday_bars(sch: pl.DataFrame, tf: Timeframe, tz: str) -> pl.DataFrame:
    first = pl.col("open").dt.convert_time_zone(tz).dt.truncate(tf.polars_every)
    starts = pl.datetime_ranges(
        first.dt.convert_time_zone("UTC"),
        pl.col("close") - pl.duration(microseconds=1),
        interval=tf.polars_every,
    )
    return (
        sch.select(starts.alias("ts"), "close")
        .explode("ts")
        .drop_nulls("ts")
        .with_columns(pl.col("ts").cast(TS_DTYPE))
    )


def _daily_stamps(session: pl.Expr, tz: str) -> pl.Expr:
    return (
        session.cast(pl.Datetime("us")).dt.replace_time_zone(tz).dt.convert_time_zone("UTC")
    ).cast(TS_DTYPE)


def bar_starts(
    timeframe: str | Timeframe,
    start: date | str,
    end: date | str,
    calendar: str = DEFAULT_CALENDAR,
) -> pl.Series:
    """Return the UTC start stamps of every bar of the sessions from ``start`` to ``end``.

    Parameters
    ----------
    timeframe : str or Timeframe
        ``1Min``, ``5Min``, ``15Min``, ``1Hour`` or ``1Day``.
    start, end : date or ISO string
        First and last session date (inclusive).
    calendar : str
        exchange_calendars code.

    Returns
    -------
    pl.Series
        ``ts`` of dtype ``Datetime("us", "UTC")``, sorted, unique. Intraday stamps are clock-aligned
        in exchange-local time and lie inside ``[floor(open), close)``; daily stamps are local
        midnight of the session date.

    Examples
    --------
    >>> bar_starts("1Hour", date(2024, 7, 3), date(2024, 7, 3)).dt.hour().to_list()
    [13, 14, 15, 16]
    """
    tf = Timeframe.parse(timeframe)
    sch = sessions(start, end, calendar)
    tz = str(get_calendar(calendar).tz)
    if not tf.is_intraday:
        return sch.select(_daily_stamps(pl.col("session"), tz).alias("ts"))["ts"]
    return _intraday_bars(sch, tf, tz)["ts"]


def _bars_with_ends(tf: Timeframe, lo: date, hi: date, calendar: str) -> pl.DataFrame:
    sch = sessions(lo, hi, calendar)
    tz = str(get_calendar(calendar).tz)
    if not tf.is_intraday:
        return sch.select(_daily_stamps(pl.col("session"), tz).alias("ts"), pl.col("close"))
    bars = _intraday_bars(sch, tf, tz)
    return bars.select("ts", pl.min_horizontal(pl.col("ts") + tf.delta, "close").alias("close"))


def is_open(ts: datetime | str, calendar: str = DEFAULT_CALENDAR) -> bool:
    """Return whether the exchange is in a regular session at ``ts`` (open inclusive, close not)."""
    us = _to_us(_as_utc(ts))
    opens, closes = _bounds_us(calendar)
    i = int(np.searchsorted(opens, us, side="right")) - 1
    return i >= 0 and us < closes[i]


def previous_close(ts: datetime | str, calendar: str = DEFAULT_CALENDAR) -> datetime | None:
    """Return the latest session close at or before ``ts`` (UTC), or None before the calendar."""
    us = _to_us(_as_utc(ts))
    _, closes = _bounds_us(calendar)
    i = int(np.searchsorted(closes, us, side="right")) - 1
    return _from_us(closes[i]) if i >= 0 else None


def last_expected_bar(
    timeframe: str | Timeframe, now: datetime | str, calendar: str = DEFAULT_CALENDAR
) -> datetime | None:
    """Return the start of the last bar that is complete at wall time ``now``, for staleness checks.

    A bar is complete once ``min(ts + timeframe, session close) <= now``; a daily bar once its
    session has closed.

    Parameters
    ----------
    timeframe : str or Timeframe
    now : datetime or ISO string
        Wall time (naive means UTC).
    calendar : str

    Returns
    -------
    datetime or None
        UTC start of that bar, or None if no bar of the calendar is complete yet.
    """
    tf = Timeframe.parse(timeframe)
    now_utc = _as_utc(now)
    hi = now_utc.date() + timedelta(days=1)
    lo = max(hi - _LOOKBACK, FIRST_DATE)
    while True:
        bars = _bars_with_ends(tf, lo, hi, calendar).filter(pl.col("close") <= now_utc)
        if bars.height:
            return bars["ts"].max()  # type: ignore[return-value]
        if lo <= FIRST_DATE:
            return None
        lo, hi = max(lo - _LOOKBACK * 26, FIRST_DATE), lo


def _window(start: date | datetime | str, end: date | datetime | str) -> tuple[datetime, datetime]:
    def conv(v: date | datetime | str, is_end: bool) -> datetime:
        if isinstance(v, str):
            v = datetime.fromisoformat(v) if ("T" in v or " " in v) else date.fromisoformat(v)
        if isinstance(v, datetime):
            return _as_utc(v)
        d = datetime(v.year, v.month, v.day, tzinfo=UTC)
        return d + timedelta(days=1) if is_end else d

    return conv(start, False), conv(end, True)


def expected_bars(
    timeframe: str | Timeframe,
    start: date | datetime | str,
    end: date | datetime | str,
    calendar: str = DEFAULT_CALENDAR,
) -> pl.Series:
    """Return the stamps of every bar that should exist in a window, for gap checks.

    Parameters
    ----------
    timeframe : str or Timeframe
    start, end : date, datetime or ISO string
        Datetimes give the half-open UTC window ``start <= ts < end`` (as ``Source.fetch``);
        dates are inclusive UTC days (``end`` date means up to the following midnight UTC).
    calendar : str

    Returns
    -------
    pl.Series
        Sorted ``ts`` stamps, ``Datetime("us", "UTC")``.
    """
    lo, hi = _window(start, end)
    if hi <= lo:
        return pl.Series("ts", [], dtype=TS_DTYPE)
    stamps = bar_starts(
        timeframe, lo.date() - timedelta(days=1), hi.date() + timedelta(days=1), calendar
    )
    return stamps.filter((stamps >= lo) & (stamps < hi))


_PRE_MARKET = timedelta(hours=5, minutes=30)  # 04:00 ET before a 09:30 open
_POST_MARKET = timedelta(hours=4)  # until 20:00 ET after a 16:00 close


def is_crypto(symbol: pl.Expr) -> pl.Expr:
    """Return a mask of crypto pairs (``BTC/USD``): they trade around the clock, on no calendar."""
    return symbol.str.contains("/", literal=True)


def check_bar_times(
    bars: pl.DataFrame,
    timeframe: str | Timeframe,
    calendar: str = DEFAULT_CALENDAR,
    *,
    extended_hours: bool = False,
) -> None:
    """Check that bars sit on their timeframe's grid and inside the calendar's sessions.

    Rules (crypto pairs get only the grid rule, on the UTC clock):

    * intraday bars start on a multiple of their length (``5Min``: :00, :05 ...); daily bars of
      stocks at midnight of the exchange's time zone, of crypto at a whole hour;
    * an intraday bar ``[ts, ts + timeframe)`` overlaps a regular session (Alpaca's ``1Hour`` bar
      stamped 09:00 ET covers 09:30-10:00), or with ``extended_hours`` the session's trading day
      from 04:00 to 20:00 ET (pre- and post-market); a daily bar's date is a session.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars satisfying the bar contract (:func:`~workbench.data.schema.validate_bars`).
    timeframe : str or Timeframe
    calendar : str
        exchange_calendars code of the sessions.
    extended_hours : bool
        The source delivers pre- and post-market bars.

    Raises
    ------
    SchemaError
        Naming the rule, how many rows break it, the first rows and the fix.
    """
    from workbench.data.schema import reject_rows

    tf = Timeframe.parse(timeframe)
    if bars.is_empty():
        return
    tz = str(get_calendar(calendar).tz)
    local = pl.col("ts").dt.convert_time_zone(tz)
    crypto = is_crypto(pl.col("symbol"))
    if tf.is_intraday:
        off = tf.off_grid(pl.col("ts"))
        grid = f"ts on the {tf.name} grid (a multiple of {tf.minutes} minute(s))"
    else:
        midnight = (
            (local.dt.hour() == 0)
            & (local.dt.minute() == 0)
            & (local.dt.second() == 0)
            & (local.dt.microsecond() == 0)
        )
        off = pl.when(crypto).then(tf.off_grid(pl.col("ts"))).otherwise(~midnight)
        grid = f"ts on the 1Day grid (midnight {tz} of the session date)"
    reject_rows(
        bars,
        off,
        grid,
        ["symbol", "ts"],
        f"bars of a {tf.name} timeframe must start on its grid; ingest them with the timeframe "
        "they have, or resample them first (e.g. df.group_by_dynamic('ts', every="
        f"'{tf.polars_every}', group_by='symbol')). Timestamps seconds off the grid are a clock or "
        "parsing error in the source.",
    )
    if tf.is_intraday:
        opens, closes = session_bounds_us(calendar)
        if extended_hours:
            opens = opens - _PRE_MARKET // timedelta(microseconds=1)
            closes = closes + _POST_MARKET // timedelta(microseconds=1)
        start = bars.get_column("ts").dt.epoch("us").to_numpy()
        end = start + tf.minutes * 60_000_000
        idx = np.searchsorted(opens, end, side="left") - 1  # last session opening before the end
        inside = (idx >= 0) & (start < closes[np.clip(idx, 0, None)])
        outside = ~pl.lit(pl.Series("inside", inside)) & ~crypto
        hours = "04:00-20:00 trading day" if extended_hours else "regular session"
        rule = f"bar inside a {calendar} {hours}"
    else:
        days = _schedule(calendar).get_column("session")
        outside = ~local.dt.date().is_in(days.implode()) & ~crypto
        rule = f"daily bar on a {calendar} session date"
    reject_rows(
        bars.with_columns(ts_local=local),
        outside,
        rule,
        ["symbol", "ts", "ts_local"],
        "drop bars stamped on weekends, holidays or outside trading hours (or fix their time "
        "zone: naive exchange-local stamps read as UTC land hours off); if the source delivers "
        "pre- and post-market bars on purpose, call ingest(..., extended_hours=True) (a source "
        "class declares it with an `extended_hours = True` attribute).",
    )
