"""Throughput of the embedded market simulator (bars generated per second, one process).

Run ``python benchmarks/bench_simulator.py [--symbols 50] [--year 2024] [--alpha 0.05]``. Every
timeframe simulates the same one-minute path, so coarser timeframes also report the rate in
underlying one-minute bars.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from workbench.data.sources.synthetic import SyntheticSource


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--year", type=int, default=2024)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()

    symbols = [f"SYN{i:03d}" for i in range(args.symbols)]
    start = datetime(args.year, 1, 1, tzinfo=UTC)
    end = datetime(args.year + 1, 1, 1, tzinfo=UTC)
    src = SyntheticSource(seed=7, alpha=args.alpha)
    t0 = time.perf_counter()
    src.fetch(symbols, "1Day", start, datetime(args.year, 1, 8, tzinfo=UTC))  # daily state, caches
    warm = time.perf_counter() - t0
    print(
        f"simulator: {args.symbols} symbols x {args.year}, alpha={args.alpha} "
        f"(warm-up incl. daily state since 2015: {warm:.2f} s)"
    )
    minutes = None
    for tf in ("1Min", "5Min", "15Min", "1Hour", "1Day"):
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            bars = src.fetch(symbols, tf, start, end)
            best = min(best, time.perf_counter() - t)
        if tf == "1Min":
            minutes = bars.height
        line = f"  {tf:>5}: {bars.height:>10,} bars in {best:6.2f} s = {bars.height / best:>12,.0f} bars/s"
        if tf != "1Min" and minutes:
            line += f"  ({minutes / best:,.0f} one-minute bars/s simulated)"
        print(line)


if __name__ == "__main__":
    main()
