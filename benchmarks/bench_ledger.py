"""Order ledger throughput and read latency on an SQLite file (WAL, synchronous=FULL).

Writes: ``add_intent``, ``mark_acked`` and ``apply_order`` (a full fill), each one call per
transaction (unbatched) and inside ``OrderLedger.batch()`` of ``--batch`` calls, in calls/s, with
the SQL statements and commits per call. Reads: the calls the session engine makes every bar
(``orders(open_only=True)``, ``orders()``, ``intents(states=...)``, ``intents()``,
``positions()``, ``intent(cid)``, ``order(id)``) with ``--orders`` orders in the session, p50/p99
latency, warm (repeated) and right after a write (one ``apply_order`` between two reads).

Run: .venv/bin/python benchmarks/bench_ledger.py [--n 300] [--batch 50] [--orders 500]
     [--dir DIR] [--json out.json]

The database goes to a temporary folder under ``--dir`` (default: the system temp folder); an
fsync-free filesystem (tmpfs) makes the unbatched numbers meaningless, so the folder's filesystem
is printed.

Measured (2 vCPU VM, ext4; before: one transaction and ~10 statements per call, no caches;
after: batch(), pre-built statements, ON CONFLICT inserts, write-through caches):

    call                  unbatched before -> after     batch(50) after
    add_intent            189/s  (7 stmts) -> 383/s  (3)   2,281/s (2 stmts, 0.02 commits)
    mark_acked            145/s (10 stmts) -> 363/s  (5)   1,501/s (4)
    apply_order(fill)     151/s (10 stmts) -> 313/s  (5)   1,169/s (4)
    read, 500 orders, p50 warm      before -> after
    orders(s, open_only=True)      11.6 ms -> 0.20 ms
    intents(s)                     27.8 ms -> 0.16 ms
    positions(s)                   0.92 ms -> 12 us
    intent(cid) / order(id)        0.53 / 0.70 ms -> 4 / 3 us
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from workbench.execution.ledger import OrderLedger
from workbench.execution.orders import BrokerOrder, OrderRequest, OrderStatus, Side

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
DAY = date(2024, 1, 2)
SID = "bench"


class Counter:
    """SQL statements and commits issued by a ledger's engine."""

    def __init__(self, lg: OrderLedger) -> None:
        self.statements = 0
        self.commits = 0
        sa.event.listen(lg._engine, "before_cursor_execute", self._stmt)
        sa.event.listen(lg._engine, "commit", self._commit)

    def _stmt(self, *_: Any) -> None:
        self.statements += 1

    def _commit(self, *_: Any) -> None:
        self.commits += 1

    def snap(self) -> tuple[int, int]:
        return self.statements, self.commits


def new_ledger(folder: Path, name: str) -> OrderLedger:
    lg = OrderLedger(f"sqlite:///{folder / name}")
    lg.open_session(SID, strategy="bench", broker="sim", mode="paper", session_date=DAY)
    return lg


def request(i: int, symbol: str = "") -> OrderRequest:
    side = Side.BUY if i % 2 else Side.SELL
    return OrderRequest(
        f"c{i}", symbol or f"S{i % 40:02d}", side, qty=10.0 + i % 7, decided_at=T0, intent="entry"
    )


def broker_order(r: OrderRequest, filled: float = 0.0, status: OrderStatus = OrderStatus.NEW):
    return BrokerOrder(
        f"o-{r.client_order_id}", r.client_order_id, r.symbol, r.side, r.qty, filled,
        None if filled == 0 else 100.0 + filled / 100, status,
    )  # fmt: skip


@contextlib.contextmanager
def maybe_batch(lg: OrderLedger, on: bool) -> Iterator[None]:
    if on:
        with lg.batch():
            yield
    else:
        yield


def run_writes(lg: OrderLedger, calls: list[Callable[[], object]], batch: int) -> float:
    """Calls/s of ``calls``, in batches of ``batch`` (0: unbatched)."""
    t0 = time.perf_counter()
    if batch:
        for k in range(0, len(calls), batch):
            with lg.batch():
                for c in calls[k : k + batch]:
                    c()
    else:
        for c in calls:
            c()
    return len(calls) / (time.perf_counter() - t0)


def write_calls(lg: OrderLedger, n: int) -> dict[str, list[Callable[[], object]]]:
    """``n`` calls of each write op: intents, their acks, then one full fill of each."""
    reqs = [request(i) for i in range(n)]

    def add(i: int, r: OrderRequest) -> Callable[[], object]:
        return lambda: lg.add_intent(SID, i, r, bar_ts=T0)

    def ack(r: OrderRequest) -> Callable[[], object]:
        return lambda: lg.mark_acked(r.client_order_id, broker_order(r), T0)

    def fill(i: int, r: OrderRequest) -> Callable[[], object]:
        o = broker_order(r, r.qty, OrderStatus.FILLED)
        ts = T0 + timedelta(seconds=i)
        return lambda: lg.apply_order(
            SID, o, event="fill", ts=ts, execution_id=f"e{i}", price=100.0, qty=r.qty
        )

    return {
        "add_intent": [add(i, r) for i, r in enumerate(reqs)],
        "mark_acked": [ack(r) for r in reqs],
        "apply_order(fill)": [fill(i, r) for i, r in enumerate(reqs)],
    }


def bench_writes(folder: Path, n: int, batch: int) -> list[dict[str, Any]]:
    has_batch = hasattr(OrderLedger, "batch")
    rows = []
    for mode in ("unbatched", f"batch({batch})"):
        if mode != "unbatched" and not has_batch:
            for op in ("add_intent", "mark_acked", "apply_order(fill)"):
                rows.append({"op": op, "mode": mode, "per_s": None, "stmts": None, "commits": None})
            continue
        b = 0 if mode == "unbatched" else batch
        lg = new_ledger(folder, f"writes-{b}.db")
        cnt = Counter(lg)
        stages = write_calls(lg, n)
        for op, calls in stages.items():
            s0, c0 = cnt.snap()
            rate = run_writes(lg, calls, b)
            s1, c1 = cnt.snap()
            rows.append(
                {
                    "op": op,
                    "mode": mode,
                    "per_s": rate,
                    "stmts": (s1 - s0) / n,
                    "commits": (c1 - c0) / n,
                }
            )
        assert len(lg.fills(SID)) == n and lg.positions(SID)
        lg.close()
    return rows


def build_session(folder: Path, n_orders: int) -> OrderLedger:
    """A session of ``n_orders`` acked orders: 1/3 filled, 1/3 partially filled, 1/3 open."""
    lg = new_ledger(folder, "reads.db")
    has_batch = hasattr(OrderLedger, "batch")
    lg.snapshot_positions(SID, {"S00": 5.0, "S01": -3.0}, kind="start", ts=T0)
    for k in range(0, n_orders, 50):
        with maybe_batch(lg, has_batch):
            for i in range(k, min(k + 50, n_orders)):
                r = request(i)
                lg.add_intent(SID, i, r, bar_ts=T0 + timedelta(minutes=i // 10))
                if i % 25 == 24:
                    lg.mark_refused(r.client_order_id, "refused by the bench")
                    continue
                lg.mark_acked(r.client_order_id, broker_order(r), T0)
                if i % 3 == 0:
                    lg.apply_order(
                        SID, broker_order(r, r.qty, OrderStatus.FILLED), event="fill", ts=T0
                    )
                elif i % 3 == 1:
                    lg.apply_order(
                        SID,
                        broker_order(r, 3.0, OrderStatus.PARTIALLY_FILLED),
                        event="partial_fill",
                        ts=T0,
                    )
    return lg


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def bench_reads(folder: Path, n_orders: int, reps: int) -> list[dict[str, Any]]:
    lg = build_session(folder, n_orders)
    some = [o.id for o in lg.orders(SID)][:: max(1, n_orders // 20)]
    cids = [i.client_order_id for i in lg.intents(SID)][:: max(1, n_orders // 20)]
    reads: dict[str, Callable[[int], object]] = {
        "orders(s, open_only=True)": lambda k: lg.orders(SID, open_only=True),
        "orders(s)": lambda k: lg.orders(SID),
        "intents(s, states=['refused'])": lambda k: lg.intents(SID, states=("refused",)),
        "intents(s)": lambda k: lg.intents(SID),
        "positions(s)": lambda k: lg.positions(SID),
        "intent(cid)": lambda k: lg.intent(cids[k % len(cids)]),
        "order(id)": lambda k: lg.order(some[k % len(some)]),
    }
    # the write between two reads: a status-only event on an open order (a replayed "new")
    open_ids = [o for o in lg.orders(SID, open_only=True)]

    def write(k: int) -> None:
        o = open_ids[k % len(open_ids)]
        lg.apply_order(SID, o, event="rest", ts=T0 + timedelta(seconds=k))

    rows = []
    for name, fn in reads.items():
        for mode in ("warm", "after write"):
            fn(0)
            lat = []
            for k in range(reps):
                if mode == "after write":
                    write(k)
                t0 = time.perf_counter()
                fn(k)
                lat.append(time.perf_counter() - t0)
            rows.append(
                {
                    "read": name,
                    "mode": mode,
                    "p50_us": pct(lat, 0.5) * 1e6,
                    "p99_us": pct(lat, 0.99) * 1e6,
                    "mean_us": statistics.fmean(lat) * 1e6,
                }
            )
    lg.close()
    return rows


def fs_type(folder: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "-T", str(folder)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        return out[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "?"


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="write calls per op and mode")
    ap.add_argument("--batch", type=int, default=50, help="calls per batch()")
    ap.add_argument("--orders", type=int, default=500, help="orders in the session for reads")
    ap.add_argument("--reps", type=int, default=200, help="timed calls per read")
    ap.add_argument("--dir", default=None, help="folder for the temporary databases")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-ledger-") as d:
        folder = Path(d)
        print(
            f"SQLite file ledger in {folder} ({fs_type(folder)}), WAL, synchronous=FULL; "
            f"batch()={'yes' if hasattr(OrderLedger, 'batch') else 'missing'}; pid {os.getpid()}"
        )
        writes = bench_writes(folder, args.n, args.batch)
        print(f"\nwrites ({args.n} calls each)")
        print(f"{'call':<20} {'mode':<11} {'calls/s':>10} {'stmts/call':>11} {'commits/call':>13}")
        for r in writes:
            print(
                f"{r['op']:<20} {r['mode']:<11} {fmt(r['per_s'], '10,.0f'):>10} "
                f"{fmt(r['stmts'], '11.1f'):>11} {fmt(r['commits'], '13.2f'):>13}"
            )
        reads = bench_reads(folder, args.orders, args.reps)
        print(f"\nreads ({args.orders} orders in the session, {args.reps} calls each)")
        print(f"{'call':<31} {'mode':<12} {'p50 us':>10} {'p99 us':>10}")
        for r in reads:
            print(f"{r['read']:<31} {r['mode']:<12} {r['p50_us']:>10,.1f} {r['p99_us']:>10,.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"writes": writes, "reads": reads}, indent=2))


if __name__ == "__main__":
    main()
