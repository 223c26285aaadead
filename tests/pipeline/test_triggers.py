"""Market-time triggers against an independent oracle: hand-written NYSE holidays and half days
of 2024-2026, New York wall times turned into UTC by zoneinfo (no exchange_calendars involved),
and against exchange_calendars itself."""

from __future__ import annotations

import pickle
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from workbench.data.calendar import get_calendar
from workbench.pipeline.triggers import MarketTrigger, TriggerError, parse_market_time

NY = ZoneInfo("America/New_York")
HOLIDAYS = {
    2024: ["01-01", "01-15", "02-19", "03-29", "05-27", "06-19", "07-04", "09-02", "11-28", "12-25"],
    2025: ["01-01", "01-09", "01-20", "02-17", "04-18", "05-26", "06-19", "07-04", "09-01", "11-27", "12-25"],
    2026: ["01-01", "01-19", "02-16", "04-03", "05-25", "06-19", "07-03", "09-07", "11-26", "12-25"],
}  # fmt: skip
HALF_DAYS = {  # close 13:00 New York
    2024: ["07-03", "11-29", "12-24"],
    2025: ["07-03", "11-28", "12-24"],
    2026: ["11-27", "12-24"],
}


def oracle_sessions(year: int) -> list[date]:
    off = {date.fromisoformat(f"{year}-{d}") for d in HOLIDAYS[year]}
    d, out = date(year, 1, 1), []
    while d.year == year:
        if d.weekday() < 5 and d not in off:
            out.append(d)
        d += timedelta(days=1)
    return out


def ny(d: date, hh: int, mm: int) -> datetime:
    return datetime(d.year, d.month, d.day, hh, mm, tzinfo=NY).astimezone(UTC)


def oracle_close(d: date) -> datetime:
    half = d.strftime("%m-%d") in HALF_DAYS[d.year]
    return ny(d, 13, 0) if half else ny(d, 16, 0)


def year_window(year: int) -> tuple[datetime, datetime]:
    return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, 5, tzinfo=UTC)


@pytest.mark.parametrize("year", [2024, 2025, 2026])
def test_a_year_of_after_close_fires_is_exact(year: int) -> None:
    trig = MarketTrigger(at="after_close + 30min")
    got = trig.fire_times(*year_window(year))
    want = [(oracle_close(d) + timedelta(minutes=30), d) for d in oracle_sessions(year)]
    assert got == want
    assert len(got) == {2024: 252, 2025: 250, 2026: 251}[year]
    # every half day fires at 13:30 New York, every other session at 16:30
    for fire, session in got:
        local = fire.astimezone(NY)
        half = session.strftime("%m-%d") in HALF_DAYS[year]
        assert (local.hour, local.minute) == ((13, 30) if half else (16, 30)), session


@pytest.mark.parametrize("year", [2024, 2025, 2026])
def test_a_year_of_before_open_and_at_open_fires_is_exact(year: int) -> None:
    before = MarketTrigger(at="before_open - 60min").fire_times(*year_window(year))
    at_open = MarketTrigger(at="at_open").fire_times(*year_window(year))
    days = oracle_sessions(year)
    assert before == [(ny(d, 8, 30), d) for d in days]  # DST changes are handled by zoneinfo
    assert at_open == [(ny(d, 9, 30), d) for d in days]
    holidays = {date.fromisoformat(f"{year}-{h}") for h in HOLIDAYS[year]}
    assert not holidays & {s for _, s in before}


def test_early_closes_2024_2026_match_exchange_calendars() -> None:
    cal = get_calendar("XNYS")
    xc = [d.date() for d in cal.early_closes if 2024 <= d.year <= 2026]
    hand = [date.fromisoformat(f"{y}-{d}") for y in (2024, 2025, 2026) for d in HALF_DAYS[y]]
    assert xc == hand  # our oracle agrees with exchange_calendars' list
    at_close = MarketTrigger(at="at_close")
    after = MarketTrigger(at="after_close + 30min")
    for d in xc:
        close = cal.session_close(d.isoformat()).to_pydatetime()
        assert close.astimezone(NY).hour == 13
        assert at_close.next_fire(ny(d, 0, 0)) == (close, d)
        assert after.next_fire(ny(d, 0, 0)) == (close + timedelta(minutes=30), d)


def test_session_filters_first_and_last_of_week_and_month() -> None:
    lo, hi = year_window(2025)
    days = oracle_sessions(2024) + oracle_sessions(2025) + oracle_sessions(2026)

    def first_by(key):
        out = [d for i, d in enumerate(days) if i == 0 or key(days[i - 1]) != key(d)]
        return [d for d in out if d.year == 2025]

    def last_by(key):
        out = [d for i, d in enumerate(days[:-1]) if key(days[i + 1]) != key(d)]
        return [d for d in out if d.year == 2025]

    week, month = (lambda d: d.isocalendar()[:2]), (lambda d: (d.year, d.month))
    for which, want in [
        ("first_of_week", first_by(week)),
        ("last_of_week", last_by(week)),
        ("first_of_month", first_by(month)),
        ("last_of_month", last_by(month)),
    ]:
        got = [s for _, s in MarketTrigger(at="at_close", sessions=which).fire_times(lo, hi)]
        assert got == want, which
    lo, hi = year_window(2024)
    firsts = [
        s for _, s in MarketTrigger(at="at_open", sessions="first_of_week").fire_times(lo, hi)
    ]
    assert date(2024, 1, 16) in firsts and date(2024, 1, 15) not in firsts  # MLK Monday: Tuesday
    assert date(2024, 4, 1) in firsts  # Good Friday does not move Monday
    lasts = [s for _, s in MarketTrigger(at="at_close", sessions="last_of_week").fire_times(lo, hi)]
    assert date(2024, 3, 28) in lasts and date(2024, 7, 5) in lasts  # Good Friday: Thursday
    # the ISO week of 2024-12-30 ends in 2025: its last session is Friday 2025-01-03
    assert date(2024, 12, 31) not in lasts and date(2024, 12, 27) in lasts


def test_cron_fires_only_on_sessions_and_in_market_hours() -> None:
    trig = MarketTrigger(cron="0 10 * * mon-fri")
    lo, hi = year_window(2024)
    assert trig.fire_times(lo, hi) == [(ny(d, 10, 0), d) for d in oracle_sessions(2024)]
    hourly = MarketTrigger(cron="0 * * * *", market_hours=True)
    day = hourly.fire_times(ny(date(2024, 7, 3), 0, 0), ny(date(2024, 7, 6), 0, 0))
    local = [(s, t.astimezone(NY).hour) for t, s in day]
    # the half day keeps 10:00-13:00 (the close at 13:00 included), July 4 nothing, July 5 10-16
    assert local == [(date(2024, 7, 3), h) for h in (10, 11, 12, 13)] + [
        (date(2024, 7, 5), h) for h in range(10, 17)
    ]
    assert hourly.last_fire(ny(date(2024, 7, 4), 12, 0)) == (
        ny(date(2024, 7, 3), 13, 0),
        date(2024, 7, 3),
    )


def test_apscheduler_protocol_walks_the_year_and_survives_pickling() -> None:
    trig = MarketTrigger(at="after_close + 30min")
    now = datetime(2024, 1, 1, tzinfo=UTC)
    seen, t = [], trig.get_next_fire_time(None, now)
    t0 = time.perf_counter()
    while t is not None and t.year == 2024:
        seen.append(t)
        t = trig.get_next_fire_time(t, now)  # previous fire time given: strictly after it
    elapsed = time.perf_counter() - t0
    assert seen == [f for f, _ in trig.fire_times(*year_window(2024))]
    assert elapsed < 1.0, f"a year of fire times took {elapsed:.3f}s"
    # a fire time itself is "at or after" now: the trigger returns it, then moves on
    assert trig.get_next_fire_time(None, seen[3]) == seen[3]
    back = pickle.loads(pickle.dumps(trig))
    assert back == trig and back.get_next_fire_time(None, now) == seen[0]
    assert back != MarketTrigger(at="after_close + 31min")


def test_last_fire_and_session_of() -> None:
    trig = MarketTrigger(at="before_open - 60min")
    sat = datetime(2024, 3, 9, 15, tzinfo=UTC)
    assert trig.last_fire(sat) == (ny(date(2024, 3, 8), 8, 30), date(2024, 3, 8))
    assert trig.next_fire(sat) == (ny(date(2024, 3, 11), 8, 30), date(2024, 3, 11))  # after DST
    assert trig.session_of(ny(date(2024, 3, 11), 8, 30)) == date(2024, 3, 11)
    assert trig.session_of(ny(date(2024, 3, 11), 8, 31)) is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("after_close - 30min", "after_close needs a positive offset"),
        ("before_open + 60min", "Fix: 'before_open - 60min'"),
        ("after_clse + 30min", "unknown anchor 'after_clse'"),
        ("after close + 30min", "not a market time"),
        ("after_close + 30days", "unknown unit 'days'"),
        ("at_open + 13h", "at most 12h"),
    ],
)
def test_bad_market_times_say_what_and_how_to_fix(text: str, needle: str) -> None:
    with pytest.raises(TriggerError, match=needle.replace("(", r"\(").replace("+", r"\+")):
        parse_market_time(text)


def test_bad_cron_and_combinations() -> None:
    with pytest.raises(TriggerError, match="Monday = 0"):
        MarketTrigger(cron="0 10 * * 1-5")
    with pytest.raises(TriggerError, match="needs 5"):
        MarketTrigger(cron="0 10 * *")
    with pytest.raises(TriggerError, match="exactly one of at= or cron="):
        MarketTrigger(at="at_open", cron="0 10 * * mon")
    with pytest.raises(TriggerError, match="market_hours applies to cron"):
        MarketTrigger(at="at_open", market_hours=True)
    with pytest.raises(TriggerError, match="valid:"):
        MarketTrigger(at="at_open", sessions="first_of_year")
    assert parse_market_time("after_close + 1.5h").offset == timedelta(minutes=90)
