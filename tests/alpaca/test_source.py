"""AlpacaSource against the stub: every bar exactly once through pages and faults, requests as
Alpaca expects them, the page bound, the SIP clamp, credentials, config and registry."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import polars as pl
import pytest

from workbench.config import load_config
from workbench.data.sources.alpaca import AlpacaSource, bars_frame, sdk_timeframe
from workbench.data.sources.base import get_source_factory, source_names
from workbench.data.sources.factory import make_source as make_configured
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, CredentialsError, SourceError

from .conftest import CRYPTO, STOCKS, contract, make_source
from .stub_server import FAULTS, KEY_ID, SECRET, AlpacaStub

LO = datetime(2024, 1, 2, tzinfo=UTC)
HI = datetime(2024, 1, 11, tzinfo=UTC)


def test_fetch_returns_every_bar_once_across_pages_and_faults(
    stub: AlpacaStub, truth: pl.DataFrame
) -> None:
    rng = random.Random(5)
    kinds = [f for f in FAULTS if f != "hang"]
    stub.state.fault_fn = lambda n, path: rng.choice(kinds) if rng.random() < 0.25 else None
    src = make_source(stub)
    got = src.fetch(STOCKS + CRYPTO, "1Min", LO, HI)
    want = contract(truth.filter(pl.col("ts") < HI))
    assert got.height > 15_000 and src.pages > 30
    assert got.equals(want)
    assert sum(1 for r in stub.requests if r.fault) >= 10


def test_requests_carry_feed_adjustment_timeframe_and_page_tokens(stub: AlpacaStub) -> None:
    src = make_source(stub, feed="sip", adjustment="split", free_plan=False)
    src.fetch(["AAPL", "MSFT"], "1Min", LO, LO + timedelta(days=2))
    reqs = [r for r in stub.requests if r.path == "/v2/stocks/bars"]
    first = reqs[0].query
    assert first["symbols"] == "AAPL,MSFT" and first["timeframe"] == "1Min"
    assert (first["feed"], first["adjustment"], first["limit"]) == ("sip", "split", "10000")
    assert "page_token" not in first
    assert all("page_token" in r.query for r in reqs[1:]) and len(reqs) > 1
    assert unquote(first["start"]).startswith("2024-01-02T00:00:00")


def test_crypto_goes_to_v1beta3_without_feed(stub: AlpacaStub, truth: pl.DataFrame) -> None:
    src = make_source(stub)
    got = src.fetch(["BTC/USD"], "1Min", LO, LO + timedelta(hours=5))
    assert got.height == 300
    paths = {r.path for r in stub.requests}
    assert paths == {"/v1beta3/crypto/us/bars"}
    assert all("feed" not in r.query for r in stub.requests)


def test_daily_bars_and_half_open_window(stub: AlpacaStub, truth_daily: pl.DataFrame) -> None:
    src = make_source(stub)
    lo, hi = (
        datetime(2023, 3, 1, tzinfo=UTC),
        datetime(2023, 4, 3, 4, tzinfo=UTC),
    )  # 2023-04-03 ET midnight
    got = src.fetch(STOCKS, Timeframe.parse("1Day"), lo, hi)
    want = contract(truth_daily.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)))
    assert got.equals(want)
    assert got["ts"].max() < hi  # Alpaca's inclusive end is cut to the protocol's exclusive end


def test_page_bound_raises_instead_of_truncating(stub: AlpacaStub) -> None:
    src = make_source(stub, max_pages_per_chunk=3)
    with pytest.raises(SourceError) as ei:
        src.fetch(STOCKS, "1Min", LO, HI)
    msg = str(ei.value)
    assert "pagination bound hit" in msg and "max_pages_per_chunk=3" in msg
    assert "WB_ALPACA__MAX_PAGES_PER_CHUNK" in msg and "Nothing of this chunk was written" in msg
    assert len(stub.requests) == 3
    # just enough pages: no error
    ok = make_source(stub, max_pages_per_chunk=4)
    assert ok.fetch(["AAPL"], "1Min", LO, LO + timedelta(days=4)).height > 1000


def test_free_plan_sip_clamps_end_to_fifteen_minutes_ago(stub: AlpacaStub) -> None:
    now = datetime(2024, 1, 3, 16, 0, tzinfo=UTC)
    src = make_source(stub, feed="sip", free_plan=True, now=lambda: now)
    got = src.fetch(["AAPL"], "1Min", LO, HI)
    assert got["ts"].max() <= now - timedelta(minutes=15)
    sent = datetime.fromisoformat(unquote(stub.requests[0].query["end"]))
    assert sent == now - timedelta(minutes=15)
    iex = make_source(stub, feed="iex", free_plan=True, now=lambda: now)
    assert iex.stock_end(HI) == HI
    assert make_source(stub, feed="sip", free_plan=False, now=lambda: now).stock_end(HI) == HI
    # a window wholly inside the delay asks for nothing
    n = len(stub.requests)
    assert src.fetch(["AAPL"], "1Min", now - timedelta(minutes=5), now).is_empty()
    assert len(stub.requests) == n


def test_provenance_records_feed_and_adjustment_never_keys(stub: AlpacaStub) -> None:
    src = make_source(stub, feed="sip", adjustment="raw")
    prov = src.provenance()
    assert prov == {"source": "alpaca", "data_url": stub.url, "feed": "sip", "adjustment": "raw"}
    text = repr(src) + str(prov) + repr(src.http)
    assert KEY_ID not in text and SECRET not in text


def test_missing_keys_say_how_to_set_them(
    monkeypatch: pytest.MonkeyPatch, stub: AlpacaStub
) -> None:
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    with pytest.raises(CredentialsError) as ei:
        AlpacaSource(data_url=stub.url)
    msg = str(ei.value)
    assert "APCA_API_KEY_ID and APCA_API_SECRET_KEY not set" in msg and "export" in msg
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    with pytest.raises(CredentialsError, match="APCA_API_SECRET_KEY not set") as ei:
        AlpacaSource(data_url=stub.url)
    assert KEY_ID not in str(ei.value)
    with pytest.raises(CredentialsError):
        make_configured(load_config(), "alpaca")


def test_from_config_uses_env_url_override_and_registry(
    monkeypatch: pytest.MonkeyPatch, keys_env: None, stub: AlpacaStub
) -> None:
    monkeypatch.setenv("WB_ALPACA__DATA_URL", stub.url)
    monkeypatch.setenv("WB_ALPACA__FEED", "sip")
    monkeypatch.setenv("WB_ALPACA__MAX_PAGES_PER_CHUNK", "7")
    src = make_configured(load_config(), "alpaca")
    assert isinstance(src, AlpacaSource) and get_source_factory("alpaca") is AlpacaSource
    assert "alpaca" in source_names()
    assert (src.data_url, src.feed, src.max_pages_per_chunk) == (stub.url, "sip", 7)
    assert src.limiter.max_requests == 200 and src.limiter.window_seconds == 60.0
    assert src.http.policy.max_retries == 6 and src.http.policy.timeout == 10.0
    assert src.http.policy.deadline == 25.0  # a dead endpoint fails within 30 s


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"data_url": "data.alpaca.markets"}, "must be an http"),
        ({"data_url": "https://data.alpaca.markets/v2"}, "must not include the API version"),
        ({"feed": "otc"}, "alpaca.feed must be 'iex' or 'sip'"),
        ({"adjustment": "splits"}, "alpaca.adjustment must be one of"),
        ({"max_pages_per_chunk": 0}, "max_pages_per_chunk must be >= 1"),
    ],
)
def test_bad_settings_name_the_field(stub: AlpacaStub, kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_source(stub, **kw)


def test_pages_that_are_not_alpaca_shaped_fail_loudly(stub: AlpacaStub) -> None:
    src = make_source(stub)
    from workbench.data.sources import alpaca as mod

    with pytest.raises(SourceError, match="a page without 'bars'"):
        mod._page_bars({"trades": {}}, "/stocks/bars")
    with pytest.raises(SourceError, match="must map symbol"):
        mod._page_bars({"bars": [1, 2]}, "/stocks/bars")
    assert mod._page_bars({"bars": None, "next_page_token": None}, "/x") == {}
    assert src.fetch(["ZZZZ"], "1Min", LO, HI).is_empty()


def test_wire_mapping_uses_the_sdk_field_names() -> None:
    df = bars_frame(
        {
            "AAPL": [
                {
                    "t": "2024-01-02T14:30:00Z",
                    "o": 1.5,
                    "h": 2,
                    "l": 1,
                    "c": 1.75,
                    "v": 10,
                    "n": 3,
                    "vw": 1.6,
                }
            ]
        }
    )
    assert df.row(0, named=True) == {
        "symbol": "AAPL",
        "ts": datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
        "open": 1.5,
        "high": 2.0,
        "low": 1.0,
        "close": 1.75,
        "volume": 10.0,
        "vwap": 1.6,
        "trade_count": 3,
    }
    assert str(sdk_timeframe(Timeframe.parse("15Min"))) == "15Min"
    assert str(sdk_timeframe(Timeframe.parse("1Hour"))) == "1Hour"
