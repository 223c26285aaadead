"""One rate-limited, retrying GET: every fault kind is retried, 4xx are not, waits follow headers."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from workbench.data.ratelimit import RateLimiter
from workbench.data.sources._alpaca_client import disable_sdk_retry, resolve_keys, stock_client
from workbench.data.sources._alpaca_http import AlpacaHttp, RetryPolicy, rate_limit_wait
from workbench.errors import CredentialsError, SourceError

from .conftest import FAST, fast_limiter
from .stub_server import KEY_ID, SECRET, AlpacaStub

PARAMS = {
    "symbols": "AAPL",
    "timeframe": "1Min",
    "start": "2024-01-02T00:00:00+00:00",
    "end": "2024-01-03T00:00:00+00:00",
    "feed": "iex",
    "adjustment": "all",
    "limit": 10,
}


def client(stub: AlpacaStub):
    return stock_client(resolve_keys(KEY_ID, SECRET), stub.url)


def test_sdk_retry_is_disabled_on_every_client(stub: AlpacaStub) -> None:
    c = client(stub)
    assert (c._retry, c._retry_wait, c._retry_codes) == (0, 0, [])
    # the SDK itself now gives up at once on a 429 instead of sleeping 3 x 3 s
    from alpaca.common.exceptions import APIError
    from alpaca.data.requests import StockLatestTradeRequest

    stub.state.faults = {1: "429"}
    t0 = time.perf_counter()
    with pytest.raises(APIError):
        c.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols="AAPL"))
    assert time.perf_counter() - t0 < 1.0 and len(stub.requests) == 1
    assert disable_sdk_retry(c) is c


@pytest.mark.parametrize(
    "fault",
    [
        "429",
        "429-retry-after",
        "429-bare",
        "500",
        "502",
        "503",
        "504",
        "hang",
        "malformed",
        "drop",
        "partial",
        "slow",
    ],
)
def test_each_fault_is_retried_and_the_page_comes_back_intact(stub: AlpacaStub, fault: str) -> None:
    stub.state.hang_seconds = 1.6
    http = AlpacaHttp(
        fast_limiter(),
        RetryPolicy(max_retries=3, timeout=1.0, backoff_initial=0.001, backoff_max=0.01),
    )
    clean = http.get_json(client(stub), "/stocks/bars", PARAMS)
    n_faults = 1 if fault == "hang" else 2  # a hang costs a whole timeout
    stub.state.faults = {2 + i: fault for i in range(n_faults)}
    again = http.get_json(client(stub), "/stocks/bars", PARAMS)
    assert again == clean and len(clean["bars"]["AAPL"]) == 10
    attempts = 1 if fault == "slow" else 1 + n_faults
    assert len(stub.requests) == 1 + attempts
    assert http.stats["requests"] == 1 + attempts


def test_retries_are_bounded_and_the_error_says_what_to_do(stub: AlpacaStub) -> None:
    stub.state.fault_fn = lambda n, path: "503"
    http = AlpacaHttp(
        fast_limiter(),
        RetryPolicy(max_retries=4, timeout=0.3, backoff_initial=0.001, backoff_max=0.002),
    )
    with pytest.raises(SourceError) as ei:
        http.get_json(client(stub), "/stocks/bars", PARAMS)
    msg = str(ei.value)
    assert "failed after 5 attempt(s)" in msg and "HTTP 503" in msg and "alpaca.max_retries" in msg
    assert len(stub.requests) == 5 and http.stats["gave_up"] == 1


def test_client_errors_are_not_retried(stub: AlpacaStub) -> None:
    http = AlpacaHttp(fast_limiter(), FAST)
    with pytest.raises(SourceError, match="HTTP 422.*invalid timeframe"):
        http.get_json(client(stub), "/stocks/bars", {**PARAMS, "timeframe": "7Min"})
    assert len(stub.requests) == 1
    bad = stock_client(resolve_keys(KEY_ID, "wrong-secret"), stub.url)
    with pytest.raises(CredentialsError, match="HTTP 401") as ei:
        http.get_json(bad, "/stocks/bars", PARAMS)
    assert "wrong-secret" not in str(ei.value) and len(stub.requests) == 2


def test_429_waits_for_the_reset_header_and_pauses_the_shared_limiter(stub: AlpacaStub) -> None:
    stub.state.reset_in = 0.3
    stub.state.faults = {1: "429"}
    lim = fast_limiter()
    http = AlpacaHttp(lim, RetryPolicy(max_retries=2, timeout=1.0, backoff_initial=0.001))
    t0 = time.perf_counter()
    http.get_json(client(stub), "/stocks/bars", PARAMS)
    reqs = stub.requests
    assert reqs[1].t - reqs[0].t >= 0.2  # waited (most of) the reset, not the 1 ms backoff
    assert time.perf_counter() - t0 < 2.0
    assert lim._paused_until > 0


def test_rate_limit_wait_reads_retry_after_and_reset_headers() -> None:
    now = 1_700_000_000.0
    assert rate_limit_wait({"Retry-After": "7"}, now) == 7.0
    when = datetime.fromtimestamp(now, UTC) + timedelta(seconds=30)
    assert rate_limit_wait(
        {"retry-after": format_datetime(when, usegmt=True)}, now
    ) == pytest.approx(30.0)
    assert rate_limit_wait({"X-RateLimit-Reset": str(int(now) + 12)}, now) == 12.0
    assert rate_limit_wait({"x-ratelimit-reset": str(now - 5)}, now) == 0.0  # already reset
    assert rate_limit_wait({"X-RateLimit-Reset": "soon"}, now) is None
    assert rate_limit_wait({}, now) is None


def test_a_429_without_headers_backs_off_exponentially(stub: AlpacaStub) -> None:
    stub.state.faults = {1: "429-bare", 2: "429-bare", 3: "429-bare"}
    sleeps: list[float] = []
    http = AlpacaHttp(
        RateLimiter(1000, 1.0),
        RetryPolicy(
            max_retries=5, timeout=1.0, backoff_initial=0.01, backoff_max=10.0, sleep=sleeps.append
        ),
    )
    http.get_json(client(stub), "/stocks/bars", PARAMS)
    assert len(sleeps) == 3
    # full jitter: wait n is uniform in [0, 0.01 * 2**n]
    assert all(0 <= s <= 0.01 * 2 ** (i + 1) for i, s in enumerate(sleeps))


def test_unreachable_server_gives_a_clear_error() -> None:
    c = stock_client(resolve_keys(KEY_ID, SECRET), "http://127.0.0.1:9")
    http = AlpacaHttp(
        fast_limiter(), RetryPolicy(max_retries=1, timeout=0.3, backoff_initial=0.001)
    )
    with pytest.raises(SourceError, match="connection failed.*reachable"):
        http.get_json(c, "/stocks/bars", PARAMS)
