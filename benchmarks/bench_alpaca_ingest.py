"""Alpaca ingest throughput and rate-limit adherence, against the local Alpaca-compatible stub.

Starts ``tests/alpaca/stub_server.py`` on 127.0.0.1 with ground-truth 1Min bars, then runs
:func:`workbench.data.ingest.ingest` with :class:`~workbench.data.sources.alpaca.AlpacaSource`:

0. ``fetch only``: one :meth:`AlpacaSource.fetch` of everything (no store), bars/s;
1. ``throughput``: Alpaca-sized pages (10,000 bars), a limiter far above the request count, no
   faults: bars/s from HTTP to parquet (fetch, parse, validate, store, ledger);
2. ``faults``: 1,000-bar pages with 10 % of requests failing (429 with reset, 5xx, dropped
   connections, truncated bodies): bars/s and retries;
3. ``rate``: small pages (200 bars) so requests outnumber the budget, limiter at
   ``--limit-per-minute`` over a ``--window`` second sliding window (600/min over 1 s by default,
   scaled from Alpaca's 200 per 60 s so the run is short; 2 % window margin): requests/minute
   achieved, measured from the server's arrival times as requests / (first-to-last span + one
   window), and the most requests the server saw in any window against the budget.

Every run is checked against the ground truth (each bar stored once, unaltered).

Run: ``.venv/bin/python benchmarks/bench_alpaca_ingest.py [--symbols 20] [--days 10]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import random
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from workbench.data.ingest import ingest, to_window
from workbench.data.ratelimit import RateLimiter
from workbench.data.schema import validate_bars
from workbench.data.sources._alpaca_http import RetryPolicy
from workbench.data.sources.alpaca import AlpacaSource
from workbench.data.store import BarStore

STUB_PATH = Path(__file__).resolve().parents[1] / "tests" / "alpaca" / "stub_server.py"


def load_stub():
    spec = importlib.util.spec_from_file_location("alpaca_stub_server", STUB_PATH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def max_in_window(times: list[float], window: float) -> int:
    j = best = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def run_once(stub_mod, truth, symbols, start, end, *, page_size, limiter, faults, chunk_days):
    with stub_mod.AlpacaStub({"1Min": truth}, page_size=page_size) as stub:
        if faults:
            rng = random.Random(1)
            kinds = ["429", "500", "503", "504", "drop", "malformed", "partial"]
            stub.state.fault_fn = lambda n, path: (
                rng.choice(kinds) if rng.random() < faults else None
            )
        src = AlpacaSource(
            key_id=stub_mod.KEY_ID,
            secret=stub_mod.SECRET,
            data_url=stub.url,
            limiter=limiter,
            retry=RetryPolicy(max_retries=8, timeout=10.0, backoff_initial=0.01, backoff_max=0.1),
        )
        with tempfile.TemporaryDirectory() as tmp:
            store = BarStore(tmp)
            t0 = time.perf_counter()
            rep = ingest(
                src, store, symbols, "1Min", start, end,
                chunk_days=chunk_days, chunk_symbols=10, progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            lo, hi = to_window(start, end)
            want = validate_bars(truth.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)))
            ok = store.read(symbols, "1Min").equals(want)
        arrivals = stub.state.arrivals()
    return {
        "bars": rep.total("rows"),
        "seconds": seconds,
        "requests": len(arrivals),
        "pages": src.pages,
        "retried": len(arrivals) - src.pages,
        "arrivals": arrivals,
        "exact": ok,
    }


def fetch_only(stub_mod, truth, symbols, start, end) -> None:
    """Time AlpacaSource.fetch alone (HTTP, JSON, parse, validate; no store)."""
    with stub_mod.AlpacaStub({"1Min": truth}, page_size=10_000) as stub:
        src = AlpacaSource(
            key_id=stub_mod.KEY_ID, secret=stub_mod.SECRET, data_url=stub.url,
            limiter=RateLimiter(1_000_000, 1.0),
        )  # fmt: skip
        lo, hi = to_window(start, end)
        t0 = time.perf_counter()
        bars = src.fetch(symbols, "1Min", lo, hi)
        seconds = time.perf_counter() - t0
    print(
        f"{'fetch only':<11} {bars.height:>9,} bars in {seconds:6.2f}s = {bars.height / seconds:>9,.0f} bars/s; "
        f"{src.pages} pages (HTTP + JSON + parse + validate, no store)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--days", type=int, default=10, help="calendar days of 1Min bars")
    ap.add_argument("--limit-per-minute", type=int, default=600)
    ap.add_argument("--window", type=float, default=1.0, help="limiter window, seconds")
    ap.add_argument(
        "--rate-requests", type=int, default=60, help="about this many requests in the rate run"
    )
    args = ap.parse_args()

    stub_mod = load_stub()
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    start = date(2024, 1, 2)
    end = start + timedelta(days=args.days - 1)
    truth = stub_mod.make_truth(symbols, "1Min", start, end, seed=7, drop_fraction=0.02)
    print(f"ground truth: {truth.height:,} 1Min bars, {len(symbols)} symbols, {start}..{end}")

    logging.getLogger("workbench.data.alpaca").setLevel(logging.ERROR)  # retries are expected here
    free = RateLimiter(1_000_000, 1.0)
    fetch_only(stub_mod, truth, symbols, start, end)
    for name, faults, page in (("throughput", 0.0, 10_000), ("faults 10%", 0.10, 1_000)):
        r = run_once(stub_mod, truth, symbols, start, end, page_size=page, limiter=free,
                     faults=faults, chunk_days=5)  # fmt: skip
        print(
            f"{name:<11} {r['bars']:>9,} bars in {r['seconds']:6.2f}s = {r['bars'] / r['seconds']:>9,.0f} bars/s; "
            f"{r['pages']} pages, {r['requests']} requests ({r['retried']} retried); exact={r['exact']}"
        )

    per_window = max(1, round(args.limit_per_minute * args.window / 60))
    lim = RateLimiter(per_window, args.window, margin_seconds=0.02 * args.window)
    rate_syms = symbols[: max(1, min(len(symbols), args.rate_requests // 4))]
    rate_truth = truth.filter(pl.col("symbol").is_in(rate_syms))
    rate_end = start + timedelta(days=1)
    r = run_once(stub_mod, rate_truth, rate_syms, start, rate_end, page_size=200, limiter=lim,
                 faults=0.0, chunk_days=1)  # fmt: skip
    arr = r["arrivals"]
    # n requests fill at most n / budget windows: rate = requests / (first-to-last span + window)
    achieved = len(arr) / (arr[-1] - arr[0] + args.window) * 60
    worst = max_in_window(arr, args.window)
    print(
        f"rate        limit {lim.per_minute:,.0f}/min ({per_window} per {args.window:g}s): {len(arr)} requests, "
        f"achieved {achieved:,.0f}/min ({achieved / lim.per_minute:.0%} of the limit), "
        f"most in any {args.window:g}s window {worst} (budget {per_window}); limiter waited "
        f"{lim.waited:.2f}s; exact={r['exact']}"
    )


if __name__ == "__main__":
    main()
