"""Alpaca ingest end to end against the stub: nothing lost or doubled through faults, the rate
limit held (measured at the server), crash and SIGKILL recovery, the CLI, and no leaked secrets."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.data.ingest import ingest, plan_chunks, to_window
from workbench.data.ledger import ChunkLedger
from workbench.data.ratelimit import RateLimiter
from workbench.data.sources._alpaca_http import RetryPolicy
from workbench.data.store import BarStore
from workbench.errors import SourceError

from .conftest import CRYPTO, STOCKS, contract, make_source
from .stub_server import FAULTS, KEY_ID, SECRET, AlpacaStub

CHILD = Path(__file__).with_name("ingest_child.py")
SYMS = STOCKS + CRYPTO
END2 = date(2024, 1, 3)


def run(store: BarStore, src, start=date(2024, 1, 2), end=date(2024, 1, 5), **kw):
    args = {"chunk_days": 1, "chunk_symbols": 2, "progress": False}
    args.update(kw)
    return ingest(src, store, SYMS, "1Min", start, end, **args)


def window_truth(truth: pl.DataFrame, start=date(2024, 1, 2), end=date(2024, 1, 5)) -> pl.DataFrame:
    lo, hi = to_window(start, end)
    return contract(truth.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)))


def test_every_bar_stored_exactly_once_and_unaltered_through_faults(
    stub: AlpacaStub, truth: pl.DataFrame, tmp_path: Path
) -> None:
    kinds = [f for f in FAULTS if f != "hang"] + ["hang"]
    stub.state.hang_seconds = 0.6
    stub.state.fault_fn = lambda n, path: kinds[(n // 3) % len(kinds)] if n % 3 == 0 else None
    store = BarStore(tmp_path / "s")
    # a short timeout so hangs are cheap; a spurious timeout on a busy machine is just one more retry
    quick = RetryPolicy(max_retries=8, timeout=0.4, backoff_initial=0.005, backoff_max=0.05)
    rep = run(store, make_source(stub, retry=quick), end=date(2024, 1, 10), chunk_days=3)
    want = window_truth(truth, end=date(2024, 1, 10))
    got = store.read(SYMS, "1Min")
    assert got.height > 15_000
    assert got.equals(want)
    assert rep.total("inserted") == want.height and rep.total("updated") == 0
    faults = {r.fault for r in stub.requests if r.fault}
    assert faults == set(FAULTS)
    prov = store.provenance("AAPL", "1Min")
    assert prov["2024-01"]["feed"] == "iex" and prov["2024-01"]["adjustment"] == "all"


def test_request_rate_never_exceeds_the_limit_at_the_server(
    stub: AlpacaStub, truth: pl.DataFrame, tmp_path: Path
) -> None:
    n, window = 10, 1.0  # 600 requests/minute
    stub.state.page_size = 200
    src = make_source(stub, limiter=RateLimiter(n, window))
    t0 = time.monotonic()
    run(BarStore(tmp_path), src, end=date(2024, 1, 3), chunk_symbols=3)
    elapsed = time.monotonic() - t0
    arrivals = stub.state.arrivals()
    assert len(arrivals) >= 25
    # any n+1 consecutive arrivals span at least one window (less the client-to-server latency)
    tolerance = 0.08
    spans = [b - a for a, b in zip(arrivals, arrivals[n:], strict=False)]
    assert min(spans) >= window - tolerance, f"{n + 1} requests within {min(spans):.3f}s"
    # and overall no more than the budget of the windows the run touched
    assert len(arrivals) <= n * (elapsed / window + 1)
    assert src.limiter.waited > 0  # the limiter, not luck, kept the pace


def test_server_side_429s_are_absorbed(
    stub: AlpacaStub, truth: pl.DataFrame, tmp_path: Path
) -> None:
    stub.state.limit = (2, 0.2)  # the server is stricter than our limiter
    stub.state.reset_in = 0.1
    store = BarStore(tmp_path)
    run(store, make_source(stub, limiter=RateLimiter(1000, 1.0)), end=date(2024, 1, 3))
    assert any(r.status == 429 for r in stub.requests)
    assert store.read(SYMS, "1Min").equals(window_truth(truth, end=date(2024, 1, 3)))


def test_server_dying_mid_ingest_then_rerun_equals_uninterrupted(
    stub: AlpacaStub, truth: pl.DataFrame, tmp_path: Path
) -> None:
    clean = BarStore(tmp_path / "clean")
    run(clean, make_source(stub), end=END2)
    served = len(stub.requests)
    stub.state.fault_fn = lambda n, path: "503" if n > served + 5 else None
    crashed = BarStore(tmp_path / "crashed")
    flaky = make_source(stub, retry=RetryPolicy(max_retries=2, timeout=0.5, backoff_initial=0.001))
    with pytest.raises(SourceError, match="HTTP 503"):
        run(crashed, flaky, end=END2)
    done_before = ChunkLedger(crashed.root / "_ledger.sqlite").count()
    assert done_before > 0
    stub.state.fault_fn = None
    rep = run(crashed, make_source(stub), end=END2)
    n_chunks = len(
        plan_chunks(SYMS, *to_window(date(2024, 1, 2), END2), chunk_days=1, chunk_symbols=2)
    )
    assert rep.skipped == done_before // 2 and rep.fetched == n_chunks - rep.skipped
    assert crashed.read(SYMS, "1Min").equals(clean.read(SYMS, "1Min"))
    assert clean.read(SYMS, "1Min").equals(window_truth(truth, end=END2))


def test_sigkill_mid_ingest_then_rerun_equals_uninterrupted(
    stub: AlpacaStub, truth: pl.DataFrame, tmp_path: Path, keys_env: None
) -> None:
    stub.state.fault_fn = lambda n, path: "slow"
    stub.state.slow_seconds = 0.05
    killed = BarStore(tmp_path / "killed")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), stub.url, str(killed.root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ledger_path = killed.root / "_ledger.sqlite"
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger_path.exists():
            done = ChunkLedger(ledger_path).count()
            if done >= 4:
                break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    n_chunks = len(
        plan_chunks(
            SYMS, *to_window(date(2024, 1, 2), date(2024, 1, 5)), chunk_days=1, chunk_symbols=2
        )
    )
    partial = ChunkLedger(ledger_path).count()
    assert 4 <= partial < 2 * n_chunks  # killed mid-way
    stub.state.fault_fn = None
    n_req = len(stub.requests)
    rep = run(killed, make_source(stub))
    assert rep.skipped >= partial // 2 and rep.fetched >= 1
    assert len(stub.requests) > n_req
    assert killed.read(SYMS, "1Min").equals(window_truth(truth))
    assert not list(killed.root.rglob(".*.tmp-*"))  # no half-written partition left visible


def test_cli_ingest_source_alpaca(
    stub: AlpacaStub,
    truth: pl.DataFrame,
    tmp_path: Path,
    keys_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WB_ALPACA__DATA_URL", stub.url)
    store = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            "--source",
            "alpaca",
            "--symbols",
            "AAPL,BTC/USD",
            "--timeframe",
            "1Min",
            "--start",
            "2024-01-02",
            "--end",
            "2024-01-03",
            "--store",
            str(store),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "ingested from alpaca" in res.output
    got = BarStore(store).read(["AAPL", "BTC/USD"], "1Min")
    assert got.equals(
        window_truth(
            truth.filter(pl.col("symbol").is_in(["AAPL", "BTC/USD"])), end=date(2024, 1, 3)
        )
    )


def test_cli_without_keys_explains_how_to_set_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    res = CliRunner().invoke(
        app, ["ingest", "--source", "alpaca", "--store", str(tmp_path), "--no-progress"]
    )
    assert res.exit_code == 2
    assert "APCA_API_KEY_ID" in res.output and "export" in res.output


def test_no_secret_in_logs_errors_provenance_or_files(
    stub: AlpacaStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stub.state.fault_fn = lambda n, path: ["429", "500", "drop", "malformed", None][n % 5]
    store = BarStore(tmp_path / "s")
    src = make_source(stub)
    run(store, src, end=date(2024, 1, 3))
    errors = []
    stub.state.fault_fn = lambda n, path: "502"
    try:
        run(
            BarStore(tmp_path / "t"),
            make_source(stub, retry=RetryPolicy(max_retries=1, backoff_initial=0.001)),
        )
    except SourceError as exc:
        errors.append(f"{exc!r} {exc} {exc.__cause__!r} {exc.__context__!r}")
    stub.state.fault_fn = None
    try:
        make_source(stub, secret="not-the-secret").fetch(
            ["AAPL"], "1Min", *to_window("2024-01-02", "2024-01-02")
        )
    except Exception as exc:
        errors.append(f"{exc!r} {exc}")
    assert len(errors) == 2 and "HTTP 502" in errors[0] and "CredentialsError" in errors[1]
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    blobs = [caplog.text, *errors, repr(src), str(src.provenance()), repr(src.http)]
    blobs += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    for blob in blobs:
        assert KEY_ID not in blob and SECRET not in blob
        assert "not-the-secret" not in blob
