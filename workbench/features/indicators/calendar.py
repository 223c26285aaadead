"""Calendar features: time of day and day of week in the exchange's time zone."""

from __future__ import annotations

import polars as pl

from workbench.features._expr import check_str, local_clock
from workbench.features.registry import register_feature

_DAY_US = 86_400_000_000
_MIN_US = 60_000_000


def _clock(ts: str, tz: str, fn: str, name: str, what: str) -> pl.Expr:
    check_str(fn, "ts", ts)
    check_str(fn, "tz", tz)

    def run(s: pl.Series) -> pl.Series:
        local = local_clock(s, tz)
        if what == "minute":
            out = (local % _DAY_US) / _MIN_US
        else:  # 1970-01-01 was a Thursday: day 0 -> 3 with Monday = 0
            out = ((local // _DAY_US + 3) % 7).astype(float)
        return pl.Series(name, out, dtype=pl.Float64)

    return pl.col(ts).map_batches(run, return_dtype=pl.Float64).alias(name)


@register_feature(warmup=0)
def time_of_day(*, ts: str = "ts", tz: str = "America/New_York") -> pl.Expr:
    """Return the minutes since local midnight at the bar's start.

    ``09:30`` New York is 570.0. Uses only the row's own timestamp. Warm-up: 0 bars.

    Parameters
    ----------
    ts : str
        UTC timestamp column (bar start).
    tz : str
        Time zone of the session clock.

    Returns
    -------
    pl.Expr
        Float64 expression named ``time_of_day``.
    """
    return _clock(ts, tz, "time_of_day", "time_of_day", "minute")


@register_feature(warmup=0)
def day_of_week(*, ts: str = "ts", tz: str = "America/New_York") -> pl.Expr:
    """Return the local day of the week at the bar's start, Monday = 0 ... Sunday = 6.

    Warm-up: 0 bars.

    Parameters
    ----------
    ts : str
        UTC timestamp column (bar start).
    tz : str
        Time zone of the session date.

    Returns
    -------
    pl.Expr
        Float64 expression named ``day_of_week``.
    """
    return _clock(ts, tz, "day_of_week", "day_of_week", "weekday")
