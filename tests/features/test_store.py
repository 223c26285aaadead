"""Feature store: keyed by definition hash and data fingerprint, atomic, never recomputes."""

from __future__ import annotations

import polars as pl
import pytest

from workbench.config import FeatureSpec
from workbench.data.store import frame_fingerprint
from workbench.errors import StoreError
from workbench.features import build_features, resolve_feature_set, sets
from workbench.features.store import FeatureStore

SPECS = [FeatureSpec(name="rsi"), FeatureSpec(name="zscore", params={"window": 10})]


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = sets.build_features

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("workbench.features.store.build_features", spy)
    return calls


def test_miss_then_hit_returns_identical_frame(tmp_path, bars, counted):
    store = FeatureStore(tmp_path)
    first = store.get_or_compute(bars, SPECS, fingerprint="fp-1")
    second = store.get_or_compute(bars, SPECS, fingerprint="fp-1")
    assert (store.misses, store.hits, len(counted)) == (1, 1, 1)
    assert first.equals(second)
    assert first.equals(build_features(bars, SPECS))
    assert store.contains(SPECS, "fp-1")


def test_new_data_or_new_definition_is_a_miss(tmp_path, bars, counted):
    store = FeatureStore(tmp_path)
    store.get_or_compute(bars, SPECS, fingerprint="fp-1")
    store.get_or_compute(bars.head(1000), SPECS, fingerprint="fp-2")
    store.get_or_compute(bars, [FeatureSpec(name="rsi", params={"window": 7})], fingerprint="fp-1")
    store.get_or_compute(bars, SPECS, fingerprint="fp-1")
    assert (store.misses, store.hits, len(counted)) == (3, 1, 3)
    entries = store.entries()
    assert entries.height == 3
    assert set(entries["fingerprint"]) == {"fp-1", "fp-2"}


def test_default_fingerprint_is_the_frame_fingerprint(tmp_path, bars):
    store = FeatureStore(tmp_path)
    store.get_or_compute(bars, SPECS)
    assert store.contains(SPECS, frame_fingerprint(bars))
    store.get_or_compute(bars, SPECS)
    assert store.hits == 1


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, bars):
    store = FeatureStore(tmp_path)
    store.get_or_compute(bars, SPECS, fingerprint="fp")
    fs = resolve_feature_set(SPECS)
    files = sorted(p.name for p in (tmp_path / fs.hash).iterdir())
    assert files == ["definition.json", "fp.parquet"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path, bars, monkeypatch):
    store = FeatureStore(tmp_path)
    good = store.get_or_compute(bars, SPECS, fingerprint="fp")

    def boom(self, path, **kwargs):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put(good, SPECS, "fp")
    monkeypatch.undo()
    assert store.get(SPECS, "fp").equals(good)
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_damaged_file_is_recomputed(tmp_path, bars, counted):
    store = FeatureStore(tmp_path)
    store.get_or_compute(bars, SPECS, fingerprint="fp")
    store.path(SPECS, "fp").write_bytes(b"not parquet")
    again = store.get_or_compute(bars, SPECS, fingerprint="fp")
    assert len(counted) == 2 and again.equals(build_features(bars, SPECS))


def test_fingerprints_are_validated_and_made_path_safe(tmp_path, bars):
    store = FeatureStore(tmp_path)
    with pytest.raises(
        StoreError, match="'fingerprint' parameter of FeatureStore must be a non-empty str"
    ):
        store.get_or_compute(bars, SPECS, fingerprint="")
    path = store.path(SPECS, "../../etc/passwd")
    assert path.parent == tmp_path / resolve_feature_set(SPECS).hash
    with pytest.raises(StoreError, match="expected"):
        store.put(build_features(bars, SPECS).drop("rsi"), SPECS, "fp")


def test_from_config_uses_features_root(tmp_path):
    from workbench.config import load_config

    cfg = load_config()
    assert FeatureStore.from_config(cfg).root == cfg.path(cfg.store.features_root)
