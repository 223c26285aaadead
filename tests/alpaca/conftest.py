"""Fixtures for the Alpaca tests: the REST stub with ground truth, keys in the environment, fast
retry policies and limiters so nothing sleeps for seconds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import polars as pl
import pytest

from workbench.data.ratelimit import RateLimiter
from workbench.data.sources._alpaca_http import RetryPolicy
from workbench.data.sources.alpaca import AlpacaSource

from .stub_server import KEY_ID, SECRET, AlpacaStub, asset_json, make_truth

STOCKS = ["AAPL", "MSFT", "NVDA", "SPY", "TSLA"]
CRYPTO = ["BTC/USD"]
START, END = date(2024, 1, 2), date(2024, 1, 10)  # 7 sessions incl. none closed
FAST = RetryPolicy(
    max_retries=8, timeout=2.0, backoff_initial=0.005, backoff_max=0.05, rate_limit_wait_max=0.5
)


@pytest.fixture(scope="session")
def truth() -> pl.DataFrame:
    """Ground truth 1Min bars: 5 stocks (IEX-like, 3% of minutes missing) and BTC/USD 24/7."""
    stocks = make_truth(STOCKS, "1Min", START, END, seed=1, drop_fraction=0.03)
    crypto = make_truth(CRYPTO, "1Min", START, date(2024, 1, 3), seed=2)
    return pl.concat([stocks, crypto]).sort("symbol", "ts")


@pytest.fixture(scope="session")
def truth_daily() -> pl.DataFrame:
    return make_truth(STOCKS, "1Day", date(2023, 1, 3), date(2023, 12, 29), seed=3)


@pytest.fixture
def keys_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)


@pytest.fixture
def stub(truth: pl.DataFrame, truth_daily: pl.DataFrame) -> Iterator[AlpacaStub]:
    assets = [
        asset_json("AAPL"),
        asset_json("TSLA", easy_to_borrow=False),
        asset_json("GME", shortable=False, easy_to_borrow=False, marginable=False),
        asset_json("BRK.A", fractionable=False),
        asset_json("BTC/USD", shortable=False, marginable=False),
    ]
    with AlpacaStub({"1Min": truth, "1Day": truth_daily}, assets=assets, page_size=500) as s:
        yield s


def fast_limiter(per_second: int = 1000) -> RateLimiter:
    return RateLimiter(per_second, 1.0)


def make_source(stub: AlpacaStub, **kw: Any) -> AlpacaSource:
    args: dict[str, Any] = {
        "key_id": KEY_ID,
        "secret": SECRET,
        "data_url": stub.url,
        "limiter": fast_limiter(),
        "retry": FAST,
    }
    args.update(kw)
    return AlpacaSource(**args)


def contract(df: pl.DataFrame) -> pl.DataFrame:
    """Return ground truth in the bar contract (what the store must hold)."""
    from workbench.data.schema import validate_bars

    return validate_bars(df)
