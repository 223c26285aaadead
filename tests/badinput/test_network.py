"""Bad input: a network endpoint that accepts connections and never answers, or is not there.

Each case: the library's error (or exit 2) within the total deadline, a message naming the
endpoint and saying to check it (not to wait longer), nothing written.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from workbench.config import AlpacaConfig
from workbench.data.ratelimit import RateLimiter
from workbench.data.sources._alpaca_http import DEFAULT_DEADLINE, AlpacaHttp, RetryPolicy
from workbench.errors import SourceError

from .conftest import assert_clean_message, fingerprint, wb

KEY_ID, SECRET = "PKBADINPUTNETWORK01", "bad-input-network-secret"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local server that accepts every connection and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never answered

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


@pytest.fixture
def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


class _Client:
    """What AlpacaHttp reads of an alpaca-py client."""

    def __init__(self, base: str) -> None:
        self._base_url, self._api_version = base, "v2"

    def _get_default_headers(self) -> dict[str, str]:
        return {}


class _NeverAnswers(requests.Session):
    """A session whose every GET uses up its whole timeout on a fake clock, then times out."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock, self.timeouts = clock, []

    def get(self, url: str, **kw: object) -> requests.Response:  # type: ignore[override]
        self.timeouts.append(kw["timeout"])
        self.clock[0] += float(kw["timeout"])  # type: ignore[arg-type]
        raise requests.exceptions.ReadTimeout("read timed out")


def test_default_total_deadline_is_at_most_30_seconds() -> None:
    """Unit: the defaults (library and config) bound one call, retries and waits included, by
    30 s: simulated on a frozen clock against a server that never answers."""
    assert RetryPolicy().deadline == DEFAULT_DEADLINE <= 30
    assert AlpacaConfig().deadline_seconds <= 30
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    policy = RetryPolicy(sleep=sleep, clock=lambda: clock[0])  # every other field a default
    session = _NeverAnswers(clock)
    http = AlpacaHttp(RateLimiter(10_000, 60.0), policy, session=session)
    with pytest.raises(SourceError) as err:
        http.get_json(_Client("https://data.example.test"), "/stocks/bars", {"symbols": "AAA"})
    assert clock[0] <= 30, clock[0]
    assert len(session.timeouts) >= 2  # retried inside the deadline, each attempt cut to fit
    assert_clean_message(
        str(err.value), "https://data.example.test/v2/stocks/bars", "deadline", "check", "up"
    )
    assert "raise alpaca" not in str(err.value)  # no advice to wait longer


def test_silent_server_fails_within_the_configured_deadline(silent_server: str) -> None:
    http = AlpacaHttp(
        RateLimiter(10_000, 60.0), RetryPolicy(timeout=0.2, deadline=0.6, backoff_initial=0.01)
    )
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        http.get_json(_Client(silent_server), "/stocks/bars")
    took = time.monotonic() - t0
    assert took < 0.6 + 0.5, took  # the deadline plus scheduling slack, never 231 s
    assert_clean_message(str(err.value), f"{silent_server}/v2/stocks/bars", "0.6 s deadline")
    assert "no answer within" in str(err.value)


@pytest.mark.parametrize("server", ["silent_server", "closed_port"])
def test_wb_ingest_from_a_dead_endpoint_exits_2_naming_it(
    server: str, isolated: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(server)
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("WB_ALPACA__DATA_URL", url)
    monkeypatch.setenv("WB_ALPACA__DEADLINE_SECONDS", "0.5")
    monkeypatch.setenv("WB_ALPACA__TIMEOUT_SECONDS", "0.2")
    store = isolated / "store"
    t0 = time.monotonic()
    res = wb(
        "ingest", "--source", "alpaca", "--symbols", "AAPL", "--timeframe", "1Day",
        "--start", "2024-01-02", "--end", "2024-01-05", "--store", str(store), "--no-progress",
    )  # fmt: skip
    assert time.monotonic() - t0 < 10
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", ""), url, "deadline", "Fix: check")
    assert KEY_ID not in res.output and SECRET not in res.output
    assert fingerprint(store) == {}


def test_tracking_server_calls_are_bounded_by_30_seconds() -> None:
    """Unit: the defaults for a tracking server: attempts x timeout + the waits between them."""
    from workbench.tracking import HTTP_DEFAULTS as d

    attempts = 1 + int(d["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    waits = sum(
        float(d["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]) * 2**i
        + float(d["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"])
        for i in range(attempts - 1)
    )
    assert attempts * int(d["MLFLOW_HTTP_REQUEST_TIMEOUT"]) + waits <= 30


def test_a_silent_tracking_server_fails_naming_it(
    silent_server: str, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # a short deadline instead of 28 s
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow  # noqa: F401 - imported before the clock starts (slow on a busy machine)
    import papermill  # noqa: F401

    before = fingerprint(isolated)
    t0 = time.monotonic()
    res = wb("reproduce", "a" * 32)
    assert time.monotonic() - t0 < 10
    assert res.exit_code == 2, res.output
    assert_clean_message(
        res.output.replace("\n", " "), silent_server, "Fix: check that the tracking server"
    )
    assert fingerprint(isolated) == before
