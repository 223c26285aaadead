"""Asset facts from /v2/assets through the stub, cached on disk with a TTL and an explicit clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.config import load_config
from workbench.data.asset_cache import AssetCache
from workbench.data.assets import AssetFacts
from workbench.data.sources._alpaca_assets import AlpacaAssets
from workbench.errors import ConfigError, SourceError

from .conftest import FAST, fast_limiter
from .stub_server import KEY_ID, SECRET, AlpacaStub, asset_json


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def api(stub: AlpacaStub) -> AlpacaAssets:
    return AlpacaAssets(
        key_id=KEY_ID, secret=SECRET, trading_url=stub.url, limiter=fast_limiter(), retry=FAST
    )


def test_facts_come_from_the_assets_endpoint(stub: AlpacaStub) -> None:
    a = api(stub)
    assert a.get("GME") == AssetFacts(
        "GME", shortable=False, easy_to_borrow=False, fractionable=True, marginable=False
    )
    assert a.get("BRK.A").fractionable is False
    assert a.get("BTC/USD").shortable is False  # sent as /v2/assets/BTC%2FUSD
    assert {f.symbol for f in a.all()} == {"AAPL", "TSLA", "GME", "BRK.A", "BTC/USD"}
    assert stub.requests[-1].query == {"status": "active"}
    with pytest.raises(SourceError, match="Alpaca has no asset 'NOPE'"):
        a.get("NOPE")
    clock = a.clock()
    assert clock.is_open is True and clock.next_close > clock.timestamp


def test_ttl_cache_fetches_once_per_ttl_and_persists_across_instances(
    stub: AlpacaStub, tmp_path: Path
) -> None:
    clk = Clock()
    path = tmp_path / "assets.json"
    a = api(stub)
    cache = AssetCache(path, a.get, a.all, ttl_seconds=3600, clock=clk)
    assert cache.get("TSLA").easy_to_borrow is False
    assert cache.get("TSLA").easy_to_borrow is False
    assert cache.fetches == 1 and len(stub.requests) == 1
    # another process (a fresh instance) reads the file, no request
    other = AssetCache(path, a.get, a.all, ttl_seconds=3600, clock=clk)
    assert other.get_many(["TSLA"])["TSLA"].easy_to_borrow is False
    assert other.fetches == 0 and other.age("TSLA") == 0.0
    # the server changes its mind; the cache answers the old value until the TTL passes
    stub.state.assets["TSLA"] = asset_json("TSLA", easy_to_borrow=True)
    clk.t += 3599
    assert other.get("TSLA").easy_to_borrow is False
    clk.t += 2
    assert other.get("TSLA").easy_to_borrow is True and other.fetches == 1
    assert json.loads(path.read_text())["version"] == 1


def test_clear_forgets_everything(stub: AlpacaStub, tmp_path: Path) -> None:
    a = api(stub)
    cache = AssetCache(tmp_path / "c.json", a.get, ttl_seconds=3600)
    cache.get("AAPL")
    cache.clear()
    assert cache.age("AAPL") is None and not (tmp_path / "c.json").exists()
    cache.get("AAPL")
    assert cache.fetches == 2
    cache.clear()
    cache.clear()  # clearing an empty cache is fine


def test_many_missing_symbols_use_one_bulk_call(stub: AlpacaStub, tmp_path: Path) -> None:
    for i in range(40):
        stub.state.assets[f"S{i:02d}"] = asset_json(f"S{i:02d}", shortable=i % 2 == 0)
    a = api(stub)
    cache = AssetCache(tmp_path / "c.json", a.get, a.all, ttl_seconds=60)
    facts = cache.get_many([f"S{i:02d}" for i in range(40)])
    assert [f.shortable for f in facts.values()] == [i % 2 == 0 for i in range(40)]
    assert len(stub.requests) == 1 and stub.requests[0].path == "/v2/assets"
    assert cache.refresh_all() == 45


def test_zero_ttl_always_fetches_and_corrupt_file_is_ignored(
    stub: AlpacaStub, tmp_path: Path
) -> None:
    path = tmp_path / "c.json"
    path.write_text("{not json")
    a = api(stub)
    cache = AssetCache(path, a.get, ttl_seconds=0)
    cache.get("AAPL")
    cache.get("AAPL")
    assert cache.fetches == 2
    with pytest.raises(ConfigError, match="ttl_seconds"):
        AssetCache(path, a.get, ttl_seconds=-1)
    with pytest.raises(ConfigError, match="needs fetch_all"):
        cache.refresh_all()


def test_from_config_uses_trading_url_ttl_and_store_root(
    stub: AlpacaStub, tmp_path: Path, keys_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WB_ALPACA__TRADING_URL", stub.url)
    monkeypatch.setenv("WB_ALPACA__ASSET_CACHE_TTL_SECONDS", "120")
    monkeypatch.setenv("WB_STORE__ROOT", str(tmp_path / "bars"))
    cache = AssetCache.from_config(load_config())
    assert cache.ttl_seconds == 120 and cache.path == tmp_path / "bars" / "_assets.json"
    assert cache.get("AAPL") == AssetFacts("AAPL")
    assert KEY_ID not in repr(cache) and SECRET not in cache.path.read_text()
