"""Crash safety: SIGKILL a trading session at seeded random points, restart it, compare.

Each trial runs the session of :mod:`session_child` in its own process (forked from a fork server
that has everything imported), armed to kill itself with SIGKILL the k-th time it
passes one of the engine's crash points (:data:`workbench.execution.failpoints.POINTS`: before the
intent commit, between commit and send, after the broker accepted but before the answer is
recorded, around recording a fill, before the bar is marked processed). Then it runs again with
the same arguments, which reconciles and resumes. After each trial:

* no intent produced more than one order at the broker (0 duplicates);
* the ledger equals the broker: every order's status and filled quantity;
* positions are flat at the end of the day, in the ledger and at the broker;
* every intent was filled like in an uninterrupted run (same sizes, prices, commissions).

Against the durable simulated venue and against the Alpaca-compatible test server (random partial
fills), ``CRASH_TRIALS`` trials each (default 26: 52 kill points per ``make test``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import session_child

from workbench.execution.ledger import OrderLedger

TRIALS = int(os.environ.get("CRASH_TRIALS", "26"))
COUNT_ALL = ",".join(f"{p}:1000000000" for p in session_child.failpoints.POINTS)


@pytest.fixture(scope="module")
def ctx():
    c = mp.get_context("forkserver")
    saved = dict(os.environ)
    # the server imports everything once (children fork from it); it runs nothing: polars'
    # thread pool must not exist before a fork
    # the server is a fresh interpreter that ignores our sys.path (CPython 3.11's forkserver
    # accepts sys_path but never applies it): the preload must be importable from PYTHONPATH
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [saved.get("PYTHONPATH")])]
    )
    try:
        c.set_forkserver_preload(["session_child"])
        p = c.Process(target=_noop)
        p.start()
        p.join()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return c


def _noop() -> None:
    return None


def _run(ctx, args: list[str], spec: str = "", timeout: float = 120) -> int:
    env = {k: v for k, v in os.environ.items() if k.startswith("APCA_")}
    p = ctx.Process(target=session_child.run_child, args=(args, spec, env))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        pytest.fail(f"session child hung ({args}, {spec})")
    return p.exitcode


def _args(tmp: Path, broker: str, url: str = "") -> list[str]:
    return [
        "--ledger", str(tmp / "ledger.db"), "--venue", str(tmp / "venue.db"), "--broker", broker,
        "--url", url, "--out", str(tmp / "out.json"),
    ]  # fmt: skip


def _comparable(summary: dict) -> list[tuple]:
    return [
        (i["seq"], i["symbol"], i["bar_ts"], i["asked"], i["filled"], i["vwap"], i["commission"])
        for i in summary["intents"]
    ]


def _check_sim(tmp: Path, summary: dict) -> None:
    from workbench.execution.sim_broker import SimulatedBroker

    venue = SimulatedBroker(1, state_url=f"sqlite:///{tmp / 'venue.db'}")
    led = OrderLedger(f"sqlite:///{tmp / 'ledger.db'}")
    try:
        theirs = {o.id: o for o in venue.recent_orders()}
        cids = Counter(o.client_order_id for o in theirs.values())
        assert max(cids.values(), default=0) <= 1, f"duplicate orders: {cids.most_common(3)}"
        sid = summary["session_id"]
        mine = {o.id: o for o in led.orders(sid)}
        assert set(mine) == set(theirs)
        for oid, o in mine.items():
            assert (o.status, o.filled_qty) == (theirs[oid].status, theirs[oid].filled_qty), oid
        assert led.positions(sid) == {}
        assert [p for p in venue.positions() if abs(p.qty) > 1e-9] == []
    finally:
        venue.close()
        led.close()


def _check_stub(stub, tmp: Path, summary: dict) -> None:
    led = OrderLedger(f"sqlite:///{tmp / 'ledger.db'}")
    try:
        sid = summary["session_id"]
        for it in led.intents(sid):
            assert stub.count_orders(it.client_order_id) <= 1, it.client_order_id
        mine = {o.id: o for o in led.orders(sid)}
        theirs = {oid: o for oid, o in stub.orders.items()}
        assert set(mine) == set(theirs)
        for oid, o in mine.items():
            assert o.status.value == theirs[oid]["status"], oid
            assert o.filled_qty == pytest.approx(float(theirs[oid]["filled_qty"]), abs=1e-9)
        assert led.positions(sid) == {}
        assert all(abs(float(p["qty"])) < 1e-9 for p in stub.positions.values())
    finally:
        led.close()


def _trials(ctx, tmp_path: Path, broker: str, make_stub=None) -> None:
    base = tmp_path / "baseline"
    base.mkdir()
    stub = make_stub() if make_stub else None
    try:
        url = stub.url if stub else ""
        # armed with unreachable counts: the run counts how often it passes each point
        assert _run(ctx, _args(base, broker, url), COUNT_ALL) == 0
        baseline = json.loads((base / "out.json").read_text())
        seen = baseline["seen"]
        assert baseline["status"] == "done" and len(baseline["intents"]) > 10
        points = [p for p in session_child.failpoints.POINTS if seen.get(p, 0) > 0]
        assert set(points) == set(session_child.failpoints.POINTS), seen
    finally:
        if stub:
            stub.stop()

    def trial(i: int) -> str:
        rng = random.Random(1000 + i)
        point = points[i % len(points)]  # every point in turn, at a seeded random pass
        # fill events vary by a few between runs on the test server (its random partial fills
        # depend on the client order ids, which differ between ledgers): stay well inside
        k = rng.randint(1, max(1, int(seen[point] * (0.7 if point.startswith("fill.") else 1))))
        d = tmp_path / f"trial-{i}"
        d.mkdir()
        stub = make_stub() if make_stub else None
        try:
            args = _args(d, broker, stub.url if stub else "")
            code = _run(ctx, args, f"{point}:{k}")
            assert code == -9, f"trial {i}: expected a SIGKILL at {point}:{k}, exit {code}"
            assert _run(ctx, args) == 0, f"trial {i}: the restart after {point}:{k} failed"
            summary = json.loads((d / "out.json").read_text())
            assert summary["status"] == "done"
            assert _comparable(summary) == _comparable(baseline), f"trial {i} ({point}:{k})"
            if stub:
                _check_stub(stub, d, summary)
            else:
                _check_sim(d, summary)
        finally:
            if stub:
                stub.stop()
        return point

    with ThreadPoolExecutor(max_workers=2) as pool:  # two trials at a time: one per core
        killed = Counter(pool.map(trial, range(TRIALS)))
    assert len(killed) == min(TRIALS, len(points)), killed


def test_sim_venue_survives_sigkill_anywhere(ctx, tmp_path: Path) -> None:
    _trials(ctx, tmp_path, "sim")


def test_alpaca_survives_sigkill_anywhere(ctx, tmp_path: Path, monkeypatch) -> None:
    from tests.alpaca.trading_stub import KEY_ID, SECRET, TradingStub

    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)

    def make():
        s = TradingStub(partial_fill_prob=0.3, seed=5)
        s.start()
        return s

    _trials(ctx, tmp_path, "alpaca", make)
