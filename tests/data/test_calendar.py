"""Exchange calendar helpers, checked against hand-verified NYSE dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.data import calendar as cal
from workbench.data.schema import TS_DTYPE
from workbench.errors import ConfigError


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_sessions_skip_holidays_and_weekends_and_keep_early_closes() -> None:
    s = cal.sessions(date(2024, 7, 1), date(2024, 7, 8))
    assert s.columns == ["session", "open", "close"]
    assert s.schema["open"] == TS_DTYPE and s.schema["close"] == TS_DTYPE
    assert s["session"].to_list() == [
        date(2024, 7, 1),
        date(2024, 7, 2),
        date(2024, 7, 3),
        date(2024, 7, 5),  # 07-04 holiday, 07-06/07 weekend
        date(2024, 7, 8),
    ]
    early = s.filter(pl.col("session") == date(2024, 7, 3)).row(0, named=True)
    assert early["open"] == utc(2024, 7, 3, 13, 30)
    assert early["close"] == utc(2024, 7, 3, 17, 0)  # 13:00 ET
    black_friday = cal.sessions(date(2024, 11, 29), date(2024, 11, 29)).row(0, named=True)
    assert black_friday["close"] == utc(2024, 11, 29, 18, 0)  # 13:00 EST
    assert cal.sessions(date(2024, 11, 28), date(2024, 11, 28)).height == 0  # Thanksgiving


def test_dst_shifts_the_utc_open() -> None:
    s = cal.sessions(date(2024, 3, 8), date(2024, 3, 11))
    assert s["open"].to_list() == [utc(2024, 3, 8, 14, 30), utc(2024, 3, 11, 13, 30)]
    assert s["close"].to_list() == [utc(2024, 3, 8, 21), utc(2024, 3, 11, 20)]


@pytest.mark.parametrize(
    ("tf", "n_full", "n_early", "first", "last_full", "last_early"),
    [
        ("1Min", 390, 210, (13, 30), (19, 59), (16, 59)),
        ("5Min", 78, 42, (13, 30), (19, 55), (16, 55)),
        ("15Min", 26, 14, (13, 30), (19, 45), (16, 45)),
        ("1Hour", 7, 4, (13, 0), (19, 0), (16, 0)),
    ],
)
def test_intraday_bar_starts(tf, n_full, n_early, first, last_full, last_early) -> None:
    full = cal.bar_starts(tf, date(2024, 7, 2), date(2024, 7, 2))
    early = cal.bar_starts(tf, date(2024, 7, 3), date(2024, 7, 3))
    assert full.dtype == TS_DTYPE
    assert (full.len(), early.len()) == (n_full, n_early)
    assert full[0] == utc(2024, 7, 2, *first)
    assert full[-1] == utc(2024, 7, 2, *last_full)
    assert early[-1] == utc(2024, 7, 3, *last_early)
    assert cal.bar_starts(tf, date(2024, 7, 4), date(2024, 7, 4)).len() == 0


def test_hourly_bars_are_clock_aligned_like_alpaca() -> None:
    winter = cal.bar_starts("1Hour", date(2024, 1, 2), date(2024, 1, 2))
    # 09:00 ET (covers 09:30-10:00), 10:00 ... 15:00 ET
    assert winter.dt.hour().to_list() == [14, 15, 16, 17, 18, 19, 20]


def test_daily_stamps_are_new_york_midnight_in_utc() -> None:
    d = cal.bar_starts("1Day", date(2024, 3, 8), date(2024, 3, 12))
    assert d.to_list() == [utc(2024, 3, 8, 5), utc(2024, 3, 11, 4), utc(2024, 3, 12, 4)]


def test_is_open() -> None:
    assert cal.is_open(utc(2024, 7, 3, 16, 59))
    assert not cal.is_open(utc(2024, 7, 3, 17, 0))  # early close
    assert not cal.is_open(utc(2024, 7, 4, 15, 0))  # holiday
    assert not cal.is_open(utc(2024, 7, 6, 15, 0))  # Saturday
    assert cal.is_open(datetime(2024, 7, 5, 13, 30))  # naive = UTC, open is inclusive
    assert not cal.is_open(utc(2024, 7, 5, 13, 29, 59))
    assert cal.is_open("2024-03-11T13:30:00+00:00")


def test_previous_close() -> None:
    assert cal.previous_close(utc(2024, 7, 5, 12)) == utc(2024, 7, 3, 17)
    assert cal.previous_close(utc(2024, 7, 3, 17)) == utc(2024, 7, 3, 17)
    assert cal.previous_close(utc(2024, 7, 3, 16, 59)) == utc(2024, 7, 2, 20)
    assert cal.previous_close(utc(1999, 1, 1)) is None


def test_last_expected_bar() -> None:
    f = cal.last_expected_bar
    assert f("5Min", utc(2024, 7, 3, 18)) == utc(2024, 7, 3, 16, 55)
    assert f("5Min", utc(2024, 7, 5, 13, 34, 59)) == utc(2024, 7, 3, 16, 55)
    assert f("5Min", utc(2024, 7, 5, 13, 35)) == utc(2024, 7, 5, 13, 30)
    # the 09:00 ET hourly bar is complete at 10:00 ET
    assert f("1Hour", utc(2024, 7, 1, 14)) == utc(2024, 7, 1, 13)
    assert f("1Hour", utc(2024, 7, 1, 13, 59)) == utc(2024, 6, 28, 19)
    # an early close completes the last hourly bar at the close
    assert f("1Hour", utc(2024, 7, 3, 17)) == utc(2024, 7, 3, 16)
    assert f("1Day", utc(2024, 7, 3, 16, 59)) == utc(2024, 7, 2, 4)
    assert f("1Day", utc(2024, 7, 3, 17)) == utc(2024, 7, 3, 4)
    assert f("1Day", utc(2024, 7, 7, 12)) == utc(2024, 7, 5, 4)
    assert f("1Min", utc(1999, 6, 1)) is None


def test_expected_bars_windows() -> None:
    by_date = cal.expected_bars("1Day", date(2024, 7, 1), date(2024, 7, 5))
    assert by_date.len() == 4
    half_open = cal.expected_bars("5Min", utc(2024, 7, 3, 16, 50), utc(2024, 7, 5, 13, 40))
    assert half_open.to_list() == [
        utc(2024, 7, 3, 16, 50),
        utc(2024, 7, 3, 16, 55),
        utc(2024, 7, 5, 13, 30),
        utc(2024, 7, 5, 13, 35),
    ]
    assert cal.expected_bars("5Min", utc(2024, 7, 5), utc(2024, 7, 5)).len() == 0


def test_unknown_calendar_names_the_closest_code() -> None:
    with pytest.raises(ConfigError, match="XNYS"):
        cal.sessions(date(2024, 1, 2), date(2024, 1, 3), calendar="XNYZ")


def test_calendar_objects_are_cached() -> None:
    assert cal.get_calendar("XNYS") is cal.get_calendar("XNYS")


@settings(max_examples=25, deadline=None)
@given(
    tf=st.sampled_from(["1Min", "5Min", "15Min", "1Hour"]),
    start=st.dates(date(2015, 1, 1), date(2025, 12, 1)),
    days=st.integers(0, 10),
)
def test_intraday_bars_lie_inside_sessions(tf: str, start: date, days: int) -> None:
    end = start + timedelta(days=days)
    bars = cal.bar_starts(tf, start, end)
    s = cal.sessions(start, end)
    assert bars.is_sorted() and bars.n_unique() == bars.len()
    assert all(cal.is_open(t) or t.minute % 60 == 0 for t in bars.to_list()[:50])
    every = {"1Min": 1, "5Min": 5, "15Min": 15, "1Hour": 60}[tf]
    minutes = ((s["close"] - s["open"]).dt.total_minutes()).to_list()
    expected = sum(-(-(m + (30 if every == 60 else 0)) // every) for m in minutes)
    assert bars.len() == expected
    win = cal.expected_bars(tf, start, end)
    assert win.to_list() == bars.to_list()


def test_docstring_examples_run() -> None:
    import doctest

    assert doctest.testmod(cal, raise_on_error=False).failed == 0
