"""Bar store throughput: write (first insert, identical re-write, partial update) and read, in bars/s.

Run: .venv/bin/python benchmarks/bench_store.py
"""

from __future__ import annotations

import tempfile
import time
from datetime import date

import polars as pl

from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.data.timeframe import Timeframe


def timed(label: str, n: int, fn) -> None:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{label:<36} {n:>10,} bars  {dt:7.2f} s  {n / dt:>12,.0f} bars/s")


def main() -> None:
    src = SyntheticSource(seed=1)
    syms = [f"SYN{i:03d}" for i in range(50)]
    from workbench.data.ingest import to_window

    lo, hi = to_window(date(2024, 1, 2), date(2024, 12, 31))
    bars = src.fetch(syms, Timeframe.parse("5Min"), lo, hi)
    n = bars.height
    with tempfile.TemporaryDirectory() as d:
        store = BarStore(d)
        timed("write (insert, 600 partitions)", n, lambda: store.write(bars, "5Min"))
        timed("write (identical re-write)", n, lambda: store.write(bars, "5Min"))
        changed = bars.filter(pl.col("ts").dt.month() == 6).with_columns(
            volume=pl.col("volume") + 1
        )
        timed("write (update one month)", changed.height, lambda: store.write(changed, "5Min"))
        timed("read (all, validated)", n, lambda: store.read(syms, "5Min"))
        timed(
            "read (one month, 50 symbols)",
            changed.height,
            lambda: store.read(syms, "5Min", "2024-06-01", "2024-07-01"),
        )
        timed("fingerprint (all)", n, lambda: store.fingerprint(syms, "5Min"))


if __name__ == "__main__":
    main()
