"""Bar store: upsert semantics, atomicity under a killed writer, reads, coverage, fingerprints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.data import integrity
from workbench.data.schema import validate_bars
from workbench.data.store import BarStore, frame_fingerprint
from workbench.errors import SchemaError, StoreError

from .conftest import make_bars

T0 = datetime(2024, 1, 30, 14, 30, tzinfo=UTC)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_write_twice_leaves_one_copy(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA", "BBB"], T0, 600)  # spans Jan and Feb partitions
    r1 = store.write(df, "5Min")
    files = snapshot(tmp_path)
    r2 = store.write(df, "5Min")
    assert (r1.inserted, r1.updated) == (1200, 0)
    assert (r2.inserted, r2.updated, r2.unchanged, r2.partitions) == (0, 0, 1200, 0)
    assert snapshot(tmp_path) == files  # an identical re-write touches nothing
    out = store.read(["AAA", "BBB"], "5Min")
    assert out.equals(df.sort("symbol", "ts"))
    assert len(files) == 4  # 2 symbols x 2 months


def test_rewritten_bar_takes_new_values(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA"], T0, 50)
    store.write(df, "5Min")
    changed = df.slice(10, 5).with_columns(close=pl.col("open"), high=pl.col("high") * 1.01)
    rep = store.write(changed, "5Min")
    assert (rep.inserted, rep.updated) == (0, 5)
    out = store.read(["AAA"], "5Min")
    assert out.height == 50
    assert out.slice(10, 5).equals(changed)
    assert out.slice(0, 10).equals(df.slice(0, 10))


@st.composite
def write_plan(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    return draw(
        st.lists(
            st.tuples(st.integers(0, 300), st.integers(1, 120), st.integers(0, 3)),
            min_size=1,
            max_size=5,
        )
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=write_plan())
def test_upsert_equals_last_writer_wins_model(
    tmp_path_factory: pytest.TempPathFactory, plan: list
) -> None:
    """Any sequence of overlapping writes equals a dict model where the last write of a key wins."""
    root = tmp_path_factory.mktemp("store")
    store = BarStore(root, partition="day")
    model: dict[tuple[str, datetime], dict] = {}
    for offset, n, seed in plan:
        df = make_bars(["AAA", "B/USD"], T0 + timedelta(minutes=5 * offset), n, seed=seed)
        store.write(df, "5Min")
        for row in df.iter_rows(named=True):
            model[(row["symbol"], row["ts"])] = row
        store.write(df, "5Min")  # idempotent
    expected = pl.DataFrame(list(model.values())).sort("symbol", "ts")
    got = store.read(None, "5Min")
    assert got.height == len(model)
    assert got.select(expected.columns).equals(expected.select(got.columns).cast(got.schema))


def test_invalid_bars_write_nothing(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    good = make_bars(["AAA"], T0, 20)
    store.write(good, "5Min")
    before = snapshot(tmp_path)
    bad = make_bars(["AAA", "BBB"], T0 + timedelta(days=40), 20).with_columns(
        high=pl.when(pl.col("symbol") == "BBB").then(pl.col("low") * 0.5).otherwise(pl.col("high"))
    )
    with pytest.raises(SchemaError):
        store.write(bad, "5Min")
    assert snapshot(tmp_path) == before


def test_read_window_is_half_open_and_validated(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 100), "5Min")
    lo, hi = T0 + timedelta(minutes=50), T0 + timedelta(minutes=100)
    out = store.read(["AAA"], "5Min", lo, hi)
    assert (
        out["ts"].min() == lo and out["ts"].max() == hi - timedelta(minutes=5) and out.height == 10
    )
    naive = store.read(["AAA"], "5Min", lo.replace(tzinfo=None), hi.replace(tzinfo=None))
    assert naive.equals(out)


def test_read_unknown_symbol_names_the_fix(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 5), "5Min")
    with pytest.raises(StoreError, match=r"no 5Min bars stored for \['ZZZ'\].*wb ingest"):
        store.read(["AAA", "ZZZ"], "5Min")
    assert store.read(["AAA", "ZZZ"], "5Min", strict=False).height == 5


def test_coverage(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    assert store.coverage().is_empty()
    store.write(make_bars(["AAA", "BBB"], T0, 30), "5Min")
    store.write(make_bars(["AAA"], T0, 7, step_min=1), "1Min")
    cov = store.coverage()
    assert cov.select("timeframe", "symbol", "rows").rows() == [
        ("1Min", "AAA", 7),
        ("5Min", "AAA", 30),
        ("5Min", "BBB", 30),
    ]
    row = cov.filter(pl.col("timeframe") == "5Min").row(0, named=True)
    assert row["first_ts"] == T0 and row["last_ts"] == T0 + timedelta(minutes=5 * 29)


def test_fingerprint_hashes_exactly_what_read_returns(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA", "BBB"], T0, 40)
    store.write(df, "5Min")
    fp = store.fingerprint(["AAA", "BBB"], "5Min")
    assert fp == frame_fingerprint(store.read(["AAA", "BBB"], "5Min"))
    assert fp == store.fingerprint(["BBB", "AAA"], "5Min")  # same data, same hash
    assert fp != store.fingerprint(["AAA"], "5Min")
    assert fp != store.fingerprint(["AAA", "BBB"], "5Min", T0 + timedelta(minutes=5))
    store.write(df.head(1).with_columns(volume=pl.col("volume") + 1), "5Min")
    assert fp != store.fingerprint(["AAA", "BBB"], "5Min")


def test_provenance_is_recorded(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 5), "5Min", provenance={"source": "x", "feed": "iex"})
    assert store.provenance("AAA", "5Min") == {"2024-01": {"feed": "iex", "source": "x"}}


def test_bad_partition_argument() -> None:
    with pytest.raises(StoreError, match="'partition' parameter of BarStore must be one of"):
        BarStore("x", partition="week")  # type: ignore[arg-type]


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime
    import polars as pl
    sys.path.insert(0, {tests!r})
    from data.conftest import make_bars
    from workbench.data import store as st
    mode = sys.argv[1]
    real = os.replace
    if mode == "before_rename":  # after the manifest accepts the new checksum
        def boom(src, dst):
            if str(dst).endswith(".parquet"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        st.os.replace = boom
    elif mode == "before_final_manifest":  # the new file is in place, its old checksum pending
        seen = []
        def boom(src, dst):
            if str(dst).endswith("_manifest.json"):
                seen.append(dst)
                if len(seen) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        st.os.replace = boom
    else:  # die while the temporary file is half written
        def half(data, target):
            from workbench.data import integrity
            tmp = integrity.temp_name(target)
            tmp.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        st.write_temp = half
    s = st.BarStore(sys.argv[2])
    new = make_bars(["AAA"], datetime(2024, 1, 30, 14, 30, tzinfo=UTC), 60, seed=9)
    s.write(new, "5Min")
    """
)


@pytest.mark.parametrize("mode", ["before_rename", "mid_write", "before_final_manifest"])
def test_killed_writer_leaves_old_or_new_partition_verified(tmp_path: Path, mode: str) -> None:
    store = BarStore(tmp_path / "s")
    old = make_bars(["AAA"], T0, 60, seed=1)
    new = make_bars(["AAA"], T0, 60, seed=9)
    store.write(old, "5Min")
    before = snapshot(store.root)
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(tests=str(Path(__file__).resolve().parents[1])))
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(store.root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == -9, proc.stderr
    if mode == "before_final_manifest":
        assert snapshot(store.root) != before  # the new files are in place
        assert store.read(["AAA"], "5Min").equals(new.sort("symbol", "ts"))
    else:
        assert snapshot(store.root) == before  # readers see only the old files
        assert store.read(["AAA"], "5Min").equals(old.sort("symbol", "ts"))
    assert store.verify().ok  # whatever is on disk, the manifest accepts it
    store.write(new, "5Min")  # the next writer cleans up and succeeds
    assert store.read(["AAA"], "5Min").equals(new.sort("symbol", "ts"))
    assert not list(store.root.rglob(".*.tmp-*"))
    man = store.manifest("AAA", "5Min")
    assert man is not None and not any("pending" in r for r in man.partitions.values())


def test_read_serves_proven_partitions_sorted_whatever_the_symbol_order(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["CCC", "AAA", "BBB"], T0, 400)  # Jan and Feb partitions per symbol
    store.write(df.sample(fraction=1.0, shuffle=True, seed=3), "5Min")  # unsorted input
    man = store.manifest("AAA", "5Min")
    assert man is not None and all(r["contract"] == 1 for r in man.partitions.values())
    out = store.read(["BBB", "CCC", "AAA"], "5Min")
    assert out.equals(df.sort("symbol", "ts"))
    assert out.equals(validate_bars(out))  # a valid frame without re-validation
    assert out.get_column("symbol").flags["SORTED_ASC"]
    part = store.read(["CCC", "AAA"], "5Min", T0 + timedelta(days=1), "2024-02-01")
    want = df.filter(pl.col("symbol").is_in(["AAA", "CCC"]))
    want = want.filter(
        (pl.col("ts") >= T0 + timedelta(days=1)) & (pl.col("ts") < datetime(2024, 2, 1, tzinfo=UTC))
    )
    assert part.equals(want.sort("symbol", "ts"))


def test_partition_not_proven_by_its_record_is_validated_on_read(tmp_path: Path) -> None:
    """Checksummed bytes that the store did not validate (no ``contract`` in their record, as
    for adopted legacy files) are checked again: duplicated rows are refused."""
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 20), "5Min")
    path = store.partition_path("AAA", "5Min", "2024-01")
    bad = pl.read_parquet(path)
    bad = pl.concat([bad, bad.head(2)])
    bad.write_parquet(path)
    man = store.manifest("AAA", "5Min")
    assert man is not None
    digest, size = integrity.sha256_file(path)
    man.partitions["2024-01"] = {**man.partitions["2024-01"], "sha256": digest, "bytes": size}
    man.partitions["2024-01"].pop("contract")
    man.save(path.parent)
    with pytest.raises(SchemaError, match=r"unique \(symbol, ts\)"):
        store.read(["AAA"], "5Min")


def test_identical_and_partial_rewrites_count_and_touch_only_changed_files(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA", "BBB"], T0, 400)
    store.write(df, "5Min")
    before = snapshot(tmp_path)
    man_before = (tmp_path / "timeframe=5Min" / "symbol=AAA" / "_manifest.json").read_bytes()
    sub = df.filter(pl.col("symbol") == "AAA").head(30)  # a part of one partition, unchanged
    rep = store.write(sub, "5Min")
    assert (rep.inserted, rep.updated, rep.unchanged, rep.partitions) == (0, 0, 30, 0)
    one = sub.head(1).with_columns(volume=pl.col("volume") + 1)
    rep = store.write(pl.concat([one, sub.slice(1)]), "5Min")
    assert (rep.inserted, rep.updated, rep.unchanged, rep.partitions) == (0, 1, 29, 1)
    after = snapshot(tmp_path)
    changed = sorted(k for k in after if after[k] != before[k])
    assert changed == ["timeframe=5Min/symbol=AAA/2024-01.parquet"]
    assert (
        tmp_path / "timeframe=5Min" / "symbol=AAA" / "_manifest.json"
    ).read_bytes() != man_before
    assert store.verify().ok


def test_identical_rewrite_still_detects_a_damaged_partition(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA"], T0, 20)
    store.write(df, "5Min")
    path = store.partition_path("AAA", "5Min", "2024-01")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(integrity.CorruptPartitionError, match="2024-01.parquet"):
        store.write(df, "5Min")


def test_new_folders_are_flushed_to_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new timeframe or symbol folder is fsynced into its parent, so a crash cannot forget
    the folder (and the files committed inside it); an existing folder costs no extra flush."""
    import workbench.data.store as store_mod

    flushed: list[Path] = []
    real = store_mod.fsync_dir
    monkeypatch.setattr(store_mod, "fsync_dir", lambda d: (flushed.append(Path(d)), real(d)))
    t0 = datetime(2024, 1, 30, 14, 30, tzinfo=UTC)
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], t0, 50), "5Min")
    tf = tmp_path / "timeframe=5Min"
    assert tmp_path in flushed and tf in flushed  # entries of timeframe=5Min and symbol=AAA
    flushed.clear()
    store.write(make_bars(["AAA", "BBB"], t0, 60, seed=2), "5Min")
    assert tf in flushed and tmp_path not in flushed  # symbol=BBB is new, timeframe=5Min is not
    flushed.clear()
    store.write(make_bars(["AAA"], t0, 70, seed=3), "5Min")
    assert tf not in flushed and tmp_path not in flushed
