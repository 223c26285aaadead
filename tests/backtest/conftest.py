"""Deterministic bars for backtest tests: a few symbols, intraday (5Min) or daily, valid bars."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from workbench.data.schema import validate_bars


def _sessions(n_days: int, start: datetime) -> list[datetime]:
    days, d = [], start
    while len(days) < n_days:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


def make_bars(
    symbols: Sequence[str] = ("AAA", "BBB", "CCC"),
    n: int = 120,
    *,
    timeframe: str = "1Day",
    seed: int = 0,
    vol: float = 0.01,
    drift: float = 0.0,
    same_path: bool = False,
) -> pl.DataFrame:
    """Return ``n`` valid bars per symbol (random walk), UTC starts, sorted by (symbol, ts).

    ``1Day`` bars start at 05:00 UTC (midnight New York in winter) on weekdays; ``5Min`` bars
    cover the regular session 14:30-21:00 UTC (78 bars a day). ``same_path`` gives every symbol the
    same prices (for the split-capital property).
    """
    rng = np.random.default_rng(seed)
    if timeframe == "1Day":
        ts = _sessions(n, datetime(2024, 1, 2, 5, tzinfo=UTC))
    elif timeframe == "5Min":
        days = _sessions(n // 78 + 1, datetime(2024, 1, 2, 14, 30, tzinfo=UTC))
        ts = [d + timedelta(minutes=5 * i) for d in days for i in range(78)][:n]
    else:
        raise ValueError(timeframe)
    frames = []
    path = None
    for k, sym in enumerate(symbols):
        if path is None or not same_path:
            r = rng.normal(drift, vol, n)
            close = 50.0 * (1 + k) * np.exp(np.cumsum(r))
            gap = rng.normal(0, vol / 4, n)
            open_ = np.r_[close[0] * (1 - gap[0]), close[:-1]] * np.exp(gap)
            wick = np.abs(rng.normal(0, vol / 2, (2, n)))
            high = np.maximum(open_, close) * (1 + wick[0])
            low = np.minimum(open_, close) * (1 - wick[1])
            volume = rng.integers(1_000, 50_000, n).astype(float)
            vwap = np.clip((open_ + high + low + close) / 4, low, high)
            path = (open_, high, low, close, volume, vwap)
        o, h, lo, c, v, vw = path
        frames.append(
            pl.DataFrame(
                {
                    "symbol": [sym] * n,
                    "ts": pl.Series(ts, dtype=pl.Datetime("us", "UTC")),
                    "open": o,
                    "high": h,
                    "low": lo,
                    "close": c,
                    "volume": v,
                    "vwap": vw,
                    "trade_count": np.full(n, 100, dtype=np.int64),
                }
            )
        )
    return validate_bars(pl.concat(frames))


def random_targets(
    bars: pl.DataFrame, seed: int, *, low: float = -1.0, high: float = 1.0, p_change: float = 0.3
) -> pl.DataFrame:
    """Return piecewise-constant random targets in ``[low, high]`` for every bar."""
    rng = np.random.default_rng(seed)
    out = []
    for (_sym,), g in bars.group_by("symbol", maintain_order=True):
        n = g.height
        change = rng.random(n) < p_change
        change[0] = True
        vals = rng.uniform(low, high, n)
        idx = np.maximum.accumulate(np.where(change, np.arange(n), 0))
        out.append(g.select("symbol", "ts").with_columns(target=vals[idx]))
    return pl.concat(out)


@pytest.fixture(scope="session")
def bars_factory() -> Callable[..., pl.DataFrame]:
    return make_bars


@pytest.fixture(scope="session")
def targets_factory() -> Callable[..., pl.DataFrame]:
    return random_targets


@pytest.fixture(scope="session")
def daily_bars() -> pl.DataFrame:
    return make_bars(("AAA", "BBB", "CCC"), 300, timeframe="1Day", seed=1, drift=0.0005)


@pytest.fixture(scope="session")
def intraday_bars() -> pl.DataFrame:
    return make_bars(("AAA", "BBB"), 78 * 5, timeframe="5Min", seed=2)
