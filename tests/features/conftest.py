"""Deterministic synthetic bars for the feature and label tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from workbench.data.schema import validate_bars

NY = ZoneInfo("America/New_York")


def _sessions(start: date, n_days: int) -> list[date]:
    days, d = [], start
    while len(days) < n_days:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


def make_bars(
    n_symbols: int = 4,
    n_days: int = 10,
    seed: int = 0,
    start: date = date(2024, 3, 5),
    minutes: int = 5,
) -> pl.DataFrame:
    """Return random-walk bars in NYSE regular hours (09:30-16:00 New York), valid bars.

    The default window spans the 2024-03-10 daylight-saving change.
    """
    rng = np.random.default_rng(seed)
    per_day = 390 // minutes
    stamps = [
        datetime.combine(d, time(9, 30), NY) + timedelta(minutes=minutes * k)
        for d in _sessions(start, n_days)
        for k in range(per_day)
    ]
    ts = pl.Series("ts", stamps).dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    n = len(stamps)
    k = np.tile(np.arange(per_day), n_days)
    u_shape = 1.0 + 2.0 * ((k - per_day / 2) / (per_day / 2)) ** 2
    frames = []
    for s in range(n_symbols):
        step = rng.normal(0.0, 0.002, n)
        step[k == 0] += rng.normal(0.0, 0.01, n_days)  # overnight gaps
        close = (50.0 + 30.0 * s) * np.exp(np.cumsum(step))
        open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0.0, 0.0005, n))
        open_[k == 0] = close[k == 0] * np.exp(rng.normal(0.0, 0.002, n_days))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.0015, n)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.0015, n)))
        volume = np.round(rng.lognormal(np.log(20_000.0), 0.5, n) * u_shape)
        frames.append(
            pl.DataFrame(
                {
                    "symbol": f"SYM{s:02d}",
                    "ts": ts,
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": volume,
                    "vwap": (open_ + high + low + close) / 4.0,
                    "trade_count": (volume // 100).astype(np.int64),
                }
            )
        )
    return validate_bars(pl.concat(frames))


@pytest.fixture(scope="session")
def bar_factory() -> Callable[..., pl.DataFrame]:
    """Return the bar generator, for tests that need several shapes or seeds."""
    return make_bars


@pytest.fixture(scope="session")
def bars() -> pl.DataFrame:
    """Return 4 symbols x 10 sessions of 5Min bars (780 bars per symbol)."""
    return make_bars()
