"""Bar store throughput: write (first insert, identical re-write, partial update) and read, in bars/s.

Reads are timed with checksum verification (what ``BarStore.read`` does: sha256 of every partition
against its manifest; partitions the store validated when writing them are not validated again)
and without it (the same files scanned and validated with ``validate_bars``, no sha256).
50 symbols x 1 year of 5Min bars (regular hours), in the default layout (a file per symbol and
month: 600 files) and with ``partition="year"`` (50 files); each figure is the best of 3 runs. The
RESULT rows put insert and validated read beside a plain polars write / read of the same frame as
one file, interleaved, and the identical re-write beside the insert; each carries the load
averages (the machine is shared).

Run: .venv/bin/python benchmarks/bench_store.py
"""

from __future__ import annotations

import tempfile
import time
from datetime import date, timedelta

import polars as pl
from _report import report, store_rows

from workbench.data.ingest import to_window
from workbench.data.schema import BAR_SCHEMA, validate_bars
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.data.timeframe import Timeframe


def timed(label: str, n: int, fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    print(f"{label:<44} {n:>10,} bars  {best:7.3f} s  {n / best:>12,.0f} bars/s")
    return best


def unverified_read(store: BarStore, lo: str | None = None, hi: str | None = None) -> pl.DataFrame:
    """The read path without checksums: scan the same partition files, validate."""
    files = sorted(store.root.glob("timeframe=5Min/symbol=*/[!.]*.parquet"))
    if lo:  # a period name is a prefix of the days it covers
        last = (date.fromisoformat(hi) - timedelta(days=1)).isoformat()
        files = [f for f in files if lo[: len(f.stem)] <= f.stem <= last[: len(f.stem)]]
    lf = pl.scan_parquet(files, schema=BAR_SCHEMA)
    if lo:
        lf = lf.filter(pl.col("ts").is_between(pl.lit(lo).str.to_datetime(time_zone="UTC"),
                                               pl.lit(hi).str.to_datetime(time_zone="UTC"),
                                               closed="left"))  # fmt: skip
    return validate_bars(lf.collect(engine="in-memory"))


def writes(bars: pl.DataFrame, partition: str, repeat: int = 3) -> tuple[float, float]:
    """Best insert (new store) and identical re-write times, each of ``repeat`` rounds."""
    t_new, t_same = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(repeat):
            store = BarStore(f"{d}/{i}", partition)
            t0 = time.perf_counter()
            store.write(bars, "5Min")
            t1 = time.perf_counter()
            rep = store.write(bars, "5Min")
            t_new.append(t1 - t0)
            t_same.append(time.perf_counter() - t1)
            assert rep.unchanged == bars.height and rep.partitions == 0
    return min(t_new), min(t_same)


def layout(bars: pl.DataFrame, syms: list[str], partition: str, row: str) -> None:
    n = bars.height
    print(f"-- partition={partition}")
    t_new, t_same = writes(bars, partition)
    print(f"{'write (insert)':<44} {n:>10,} bars  {t_new:7.3f} s  {n / t_new:>12,.0f} bars/s")
    print(f"{'write (identical re-write)':<44} {n:>10,} bars  {t_same:7.3f} s  {n / t_same:>12,.0f} bars/s")  # fmt: skip
    report(f"{row}: identical re-write", n / t_same / 1e6, n / t_new / 1e6, unit="M bars/s",
           ours_label="BarStore.write (same bars again)", peer_label="BarStore.write (new keys)",
           target=1.0, note=f"{n:,} bars, best of 3")  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        store = BarStore(d, partition)
        store.write(bars, "5Min")
        changed = bars.filter(pl.col("ts").dt.month() == 6).with_columns(
            volume=pl.col("volume") + 1
        )
        timed("write (update one month)", changed.height, lambda: store.write(changed, "5Min"))
        assert store.read(syms, "5Min").equals(unverified_read(store))
        t_on = timed("read (all, validated, sha256 verified)", n,
                     lambda: store.read(syms, "5Min"), 3)  # fmt: skip
        t_off = timed("read (all, validated, no verification)", n,
                      lambda: unverified_read(store), 3)  # fmt: skip
        t_ver = timed("verify only (sha256 of every partition)", n, lambda: store.verify(), 3)
        m = changed.height
        m_on = timed("read (one month, 50 symbols, verified)", m,
                     lambda: store.read(syms, "5Min", "2024-06-01", "2024-07-01"), 3)  # fmt: skip
        m_off = timed("read (one month, 50 symbols, no verification)", m,
                      lambda: unverified_read(store, "2024-06-01", "2024-07-01"), 3)  # fmt: skip
        timed("fingerprint (all)", n, lambda: store.fingerprint(syms, "5Min"))
        store_rows(row, bars, lambda root: BarStore(root, partition).write(bars, "5Min"), lambda: store.read(syms, "5Min"))  # fmt: skip
        print(
            f"verification cost: full read {100 * (t_on / t_off - 1):+.0f}% "
            f"({t_on - t_off:+.3f} s; sha256 alone {t_ver:.3f} s = {n / t_ver:,.0f} bars/s), "
            f"one-month read {100 * (m_on / m_off - 1):+.0f}%"
        )


def main() -> None:
    src = SyntheticSource(seed=1)
    syms = [f"SYN{i:03d}" for i in range(50)]
    lo, hi = to_window(date(2024, 1, 2), date(2024, 12, 31))
    bars = src.fetch(syms, Timeframe.parse("5Min"), lo, hi)
    row = "store, 50 symbols x 1 year of 5Min"
    layout(bars, syms, "month", row)  # the default layout: 600 files
    layout(bars, syms, "year", f"{row}, partition=year")  # 50 files


if __name__ == "__main__":
    main()
