"""Small bar frames and a counting fake source for store and ingest tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from workbench.data.timeframe import Timeframe


def make_bars(
    symbols: Sequence[str], start: datetime, n: int, step_min: int = 5, seed: int = 0
) -> pl.DataFrame:
    """Return valid bars: ``n`` per symbol every ``step_min`` minutes from ``start`` (UTC)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, s in enumerate(symbols):
        c = 100.0 * (1 + k) * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
        o = np.r_[c[0], c[:-1]]
        hi = np.maximum(o, c) * (1 + rng.uniform(0, 0.001, n))
        lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.001, n))
        frames.append(
            pl.DataFrame(
                {
                    "symbol": s,
                    "ts": [start + timedelta(minutes=step_min * i) for i in range(n)],
                    "open": o,
                    "high": hi,
                    "low": lo,
                    "close": c,
                    "volume": rng.integers(100, 10_000, n).astype(float),
                    "vwap": (hi + lo + c) / 3,
                    "trade_count": rng.integers(1, 100, n),
                }
            ).with_columns(pl.col("ts").dt.cast_time_unit("us").dt.replace_time_zone("UTC"))
        )
    return pl.concat(frames)


class CountingSource:
    """A deterministic source of daily bars that counts calls and can fail on a chosen call."""

    name = "counting"

    def __init__(self, fail_on_call: int | None = None, version: str = "1") -> None:
        self.calls: list[tuple[tuple[str, ...], datetime, datetime]] = []
        self.fail_on_call = fail_on_call
        self.version = version

    def provenance(self) -> dict[str, str]:
        return {"source": self.name, "version": self.version}

    def fetch(
        self, symbols: Sequence[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        self.calls.append((tuple(symbols), start, end))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise ConnectionError("simulated network failure")
        # one daily bar per XNYS session (stamped at midnight New York), deterministic in
        # (symbol, day): window-independent
        from workbench.data.calendar import bar_starts

        days = [
            d for d in bar_starts("1Day", start.date(), end.date()).to_list() if start <= d < end
        ]
        rows = []
        for s in symbols:
            for d in days:
                p = 100.0 + (sum(map(ord, s)) + d.toordinal()) % 97
                rows.append(
                    {
                        "symbol": s,
                        "ts": d,
                        "open": p,
                        "high": p + 1,
                        "low": p - 1,
                        "close": p + 0.5,
                        "volume": 10.0,
                        "vwap": p,
                        "trade_count": 3,
                    }
                )
        if not rows:
            from workbench.data.schema import empty_bars

            return empty_bars()
        return pl.DataFrame(rows).with_columns(pl.col("ts").dt.cast_time_unit("us"))


@pytest.fixture
def t0() -> datetime:
    return datetime(2024, 1, 30, 14, 30, tzinfo=UTC)
