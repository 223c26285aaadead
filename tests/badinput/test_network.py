"""Bad input: a network endpoint that accepts connections and never answers, or is not there.

Each case: the library's error (or exit 2) within the total deadline, a message naming the
endpoint and saying to check it (not to wait longer), nothing written.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.alpaca.silent_server import SilentServer, silent_websocket
from workbench.config import AlpacaConfig
from workbench.data.ratelimit import RateLimiter
from workbench.data.sources._alpaca_http import DEFAULT_DEADLINE, AlpacaHttp, RetryPolicy
from workbench.errors import SourceError

from .conftest import assert_clean_message, fingerprint, wb

KEY_ID, SECRET = "PKBADINPUTNETWORK01", "bad-input-network-secret"


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    """A local server that accepts every connection and never sends a byte."""
    with SilentServer() as srv:
        yield srv


@pytest.fixture
def silent_server(silent: SilentServer) -> str:
    return silent.url


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


# --------------------------------------------------------------------------- broker and streams

ENV = {"APCA_API_KEY_ID": KEY_ID, "APCA_API_SECRET_KEY": SECRET}


def _fast(deadline: float = 1.0, timeout: float = 0.4) -> RetryPolicy:
    return RetryPolicy(timeout=timeout, deadline=deadline, backoff_initial=0.01, backoff_max=0.05)


def _eventually(cond: object, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return bool(cond())  # type: ignore[operator]


class _NeverAnswersAny(requests.Session):
    """A session whose every request uses up its whole timeout on a fake clock, then times out."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock, self.sent = clock, []

    def request(self, method: str, url: str, **kw: object) -> requests.Response:  # type: ignore[override]
        self.sent.append((method, url.split("/v2", 1)[1]))
        self.clock[0] += float(kw["timeout"])  # type: ignore[arg-type]
        raise requests.exceptions.ReadTimeout("read timed out")


def test_broker_default_deadline_bounds_reads_and_submits_by_30_seconds() -> None:
    """Unit: the broker's defaults (library and config) bound a read, and a submit with every
    lookup resolving it, by 30 s; simulated on a frozen clock against a server that never
    answers. The submit is POSTed once."""
    from workbench.config import WorkbenchConfig
    from workbench.data.stream import LiveStream
    from workbench.execution.alpaca import PAPER_URL, AlpacaBroker
    from workbench.execution.broker import OutcomeUnknown, Unreachable
    from workbench.execution.orders import OrderRequest, Side

    with AlpacaBroker(environ=ENV, stream=False) as b:
        assert b.policy.deadline == DEFAULT_DEADLINE <= 30
    with AlpacaBroker.from_config(WorkbenchConfig(), environ=ENV, stream=False) as b:
        assert b.policy.deadline == AlpacaConfig().deadline_seconds <= 30
    live = LiveStream(key_id=KEY_ID, secret=SECRET)
    assert live.connect_deadline == DEFAULT_DEADLINE <= 30
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    session = _NeverAnswersAny(clock)
    # every field a default but the fake clock; the broker's defaults too (timeout 10 s)
    policy = RetryPolicy(timeout=10.0, sleep=sleep, clock=lambda: clock[0])
    b = AlpacaBroker(environ=ENV, stream=False, retry=policy, session=session)
    with pytest.raises(Unreachable) as err:
        b.account()
    assert clock[0] <= 30 and len(session.sent) >= 2, (clock[0], session.sent)
    assert_clean_message(
        str(err.value), f"{PAPER_URL}/v2/account", "25 s deadline", "Fix: check", "up"
    )
    assert "raise alpaca" not in str(err.value)
    clock[0], session.sent = 0.0, []
    with pytest.raises(OutcomeUnknown) as err:
        b.submit(OrderRequest("wb-deadline-1", "AAPL", Side.BUY, qty=1))
    assert clock[0] <= 30, clock[0]
    assert [m for m, p in session.sent if p == "/orders"] == ["POST"]  # sent once
    assert [p for m, p in session.sent if m == "GET"][:1] == ["/orders:by_client_order_id"]
    assert_clean_message(
        str(err.value), f"{PAPER_URL}/v2/orders", "get_order_by_client_id('wb-deadline-1')",
        "Fix: check", "never resend",
    )  # fmt: skip


def test_broker_read_from_a_silent_server_fails_within_the_deadline(silent: SilentServer) -> None:
    from workbench.execution.alpaca import AlpacaBroker
    from workbench.execution.broker import Unreachable

    b = AlpacaBroker(
        silent.url, environ=ENV, stream=False, retry=_fast(), limiter=RateLimiter(1000, 1.0)
    )
    t0 = time.monotonic()
    with pytest.raises(Unreachable) as err:
        b.positions()
    took = time.monotonic() - t0
    b.close()
    assert took < 1.0 + 0.5, took
    msg = str(err.value)
    assert_clean_message(
        msg, f"{silent.url}/v2/positions", "1 s deadline", "Fix: check that this endpoint"
    )
    assert "waiting longer will not help" in msg and "raise alpaca.timeout" not in msg
    assert KEY_ID not in msg and SECRET not in msg
    assert silent.count("GET", "/v2/positions") >= 2  # retried inside the deadline


def test_a_submit_to_a_silent_server_is_posted_once_and_left_unknown(
    silent: SilentServer,
) -> None:
    from workbench.execution.alpaca import AlpacaBroker
    from workbench.execution.broker import OutcomeUnknown
    from workbench.execution.orders import OrderRequest, Side

    b = AlpacaBroker(
        silent.url, environ=ENV, stream=False, retry=_fast(deadline=1.5, timeout=0.5),
        limiter=RateLimiter(1000, 1.0), resolve_wait=0.02,
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(OutcomeUnknown) as err:
        b.submit(OrderRequest("wb-silent-1", "AAPL", Side.BUY, qty=1))
    took = time.monotonic() - t0
    b.close()
    assert took < 1.5 + 0.5, took
    assert _eventually(lambda: silent.count("GET", "/v2/orders:by_client_order_id") >= 1)
    assert silent.count("POST", "/v2/orders") == 1  # never re-POSTed
    assert_clean_message(
        str(err.value), f"{silent.url}/v2/orders", "within the 1.5 s deadline",
        "get_order_by_client_id('wb-silent-1')", "never resend it under a new client_order_id",
    )  # fmt: skip


def test_trade_stream_to_a_silent_server_gives_up_naming_it(silent: SilentServer) -> None:
    """The trade_updates websocket at an endpoint that never answers the upgrade: the stream
    gives up at the deadline with an error naming it, and the broker goes on over REST."""
    from tests.alpaca.trading_stub import KEY_ID as STUB_KEY
    from tests.alpaca.trading_stub import SECRET as STUB_SECRET
    from tests.alpaca.trading_stub import TradingStub
    from workbench.execution.alpaca import AlpacaBroker

    ws = f"{silent.ws_url}/stream"
    with TradingStub() as stub:
        env = {"APCA_API_KEY_ID": STUB_KEY, "APCA_API_SECRET_KEY": STUB_SECRET}
        t0 = time.monotonic()
        b = AlpacaBroker(
            stub.url, environ=env, stream=True, stream_url=ws, retry=_fast(deadline=1.0, timeout=0.3),
            limiter=RateLimiter(1000, 1.0), reconnect_min=0.05, reconnect_max=0.2,
        )  # fmt: skip
        try:
            assert not b.wait_stream(10)
            took = time.monotonic() - t0
            assert took < 1.0 + 0.7, took
            assert b.stream_state == "off" and silent.count("GET", "/stream") >= 2
            assert_clean_message(
                b.stream_error or "", "trade_updates stream", ws, "1 s deadline",
                "Fix: check that this endpoint", "alpaca.trading_stream_url",
            )  # fmt: skip
            assert STUB_SECRET not in (b.stream_error or "")
            assert b.account().equity > 0  # REST is the truth and still answers
        finally:
            b.close()


@pytest.mark.parametrize("dead", ["accepts-tcp-only", "upgrades-then-silent"])
def test_market_data_stream_to_a_dead_endpoint_gives_up_naming_it(
    dead: str, silent: SilentServer
) -> None:
    """The market-data websocket: alpaca-py waits for the server's first frame forever and
    reconnects forever; ours gives up at the deadline, names the endpoint, and a consumer of
    its bars (the session's LiveBars advances the aggregator) gets the error."""
    from contextlib import nullcontext

    from workbench.data.stream import LiveStream

    ctx = (
        silent_websocket()
        if dead == "upgrades-then-silent"
        else nullcontext(f"{silent.ws_url}/v2/iex")
    )
    with ctx as url:
        stream = LiveStream(
            key_id=KEY_ID, secret=SECRET, url=url, timeout=0.3, connect_deadline=1.0,
            reconnect_min=0.05, reconnect_max=0.2, check_every=0.05,
        )  # fmt: skip
        agg = stream.aggregate_trades(lambda bar: None, "AAPL")
        t0 = time.monotonic()
        stream.start()
        try:
            with pytest.raises(SourceError) as err:
                stream.wait_connected()
            took = time.monotonic() - t0
        finally:
            stream.stop()
    assert took < 1.0 + 0.7, took
    msg = str(err.value)
    assert_clean_message(msg, f"market-data stream: the endpoint {url}", "1 s deadline",
                         "Fix: check that this endpoint", "alpaca.stream_url")  # fmt: skip
    assert stream.attempts >= 2 and KEY_ID not in msg and SECRET not in msg
    with pytest.raises(SourceError, match="1 s deadline"):
        from datetime import UTC, datetime

        agg.advance(datetime.now(UTC))


def test_a_live_session_stops_at_the_open_when_the_data_stream_never_connects(
    silent: SilentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's live bar source, on a market-data stream that never connects, fails at
    the stream's deadline with its error (endpoint, deadline, fix): its bars poll the stream's
    aggregators every 0.2 s, so no bar boundary is waited for."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from workbench.config import WorkbenchConfig
    from workbench.stages.session import _live_source

    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    url = f"{silent.ws_url}/v2/iex"
    cfg = WorkbenchConfig(
        alpaca=AlpacaConfig(stream_url=url, timeout_seconds=0.3, deadline_seconds=1.0)
    )

    class Clock:  # the open is now
        def now(self) -> datetime:
            return datetime.now(UTC)

        async def sleep_until(self, when: datetime) -> None:
            return None

    now = datetime.now(UTC)
    source = _live_source(cfg, ["AAPL"], "5Min", Clock(), now, now + timedelta(hours=6))

    async def first() -> object:
        return await source.__anext__()

    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        asyncio.run(first())
    took = time.monotonic() - t0
    assert took < 1.0 + 1.0, took  # the deadline, not the first 5-minute bar's close
    msg = str(err.value)
    assert_clean_message(msg, f"market-data stream: the endpoint {url}", "1 s deadline",
                         "Fix: check that this endpoint")  # fmt: skip
    assert KEY_ID not in msg and SECRET not in msg
