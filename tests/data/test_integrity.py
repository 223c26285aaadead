"""Store integrity: checksums recorded with each partition, ingest never skips a bad chunk, legacy
stores keep working and are adopted, the ingest ledger is rebuilt exactly from the manifests."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from workbench.data.ingest import ingest
from workbench.data.integrity import MANIFEST, CorruptPartitionError, Manifest
from workbench.data.ledger import LEDGER_NAME, ChunkLedger, LedgerCorruptError, rebuild_ledger
from workbench.data.store import BarStore
from workbench.data.timeframe import Timeframe

from .conftest import CountingSource, make_bars

T0 = datetime(2024, 1, 30, 14, 30, tzinfo=UTC)
SYMS = ["S00", "S01", "S02"]


def run(store: BarStore, src: CountingSource, **kw: object):
    args = {"chunk_days": 10, "chunk_symbols": 2, "progress": False}
    args.update(kw)
    return ingest(src, store, SYMS, "1Day", date(2024, 1, 1), date(2024, 2, 29), **args)


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def chunk_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as con:
        rows = con.execute(
            'SELECT source_key, timeframe, symbol, start, "end", rows, complete FROM chunks '
            'ORDER BY source_key, timeframe, symbol, start, "end"'
        ).fetchall()
    con.close()
    return rows


def test_manifest_records_the_sha256_of_every_partition(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA"], T0, 600)  # Jan and Feb
    store.write(df, "5Min", provenance={"source": "x"})
    d = tmp_path / "timeframe=5Min" / "symbol=AAA"
    man = Manifest.load(d, root=tmp_path)
    assert man is not None and sorted(man.partitions) == ["2024-01", "2024-02"]
    for period, rec in man.partitions.items():
        data = (d / f"{period}.parquet").read_bytes()
        assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["bytes"] == len(data)
        assert rec["provenance"] == {"source": "x"} and "pending" not in rec
    assert sum(r["rows"] for r in man.partitions.values()) == 600
    raw = json.loads((d / MANIFEST).read_text())
    assert raw["symbol"] == "AAA" and raw["timeframe"] == "5Min" and raw["manifest_sha256"]


def test_a_rewrite_records_the_new_checksum(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA"], T0, 50)
    store.write(df, "5Min")
    store.write(df.head(3).with_columns(volume=pl.col("volume") + 1), "5Min")
    assert store.verify().ok
    assert store.read(["AAA"], "5Min")["volume"].head(3).equals(df["volume"].head(3) + 1)


def test_ingest_refetches_a_bit_flipped_chunk_instead_of_skipping_it(tmp_path: Path) -> None:
    """The finding: re-ingesting skipped the corrupt chunk as 'done'."""
    store = BarStore(tmp_path)
    run(store, CountingSource())
    original = store.read(SYMS, "1Day")
    flip(store.partition_path("S01", "1Day", "2024-02"))
    src = CountingSource()
    rep = run(store, src)
    assert {s for call in src.calls for s in call[0]} == {"S01"}
    assert [c["status"] for c in rep.chunks if c["status"] != "skipped"] == ["repaired"]
    assert store.verify().ok
    assert store.read(SYMS, "1Day").equals(original)


def test_ingest_repairs_a_truncated_partition(tmp_path: Path) -> None:
    """The finding: ingest crashed on a truncated partition and could not repair it."""
    store = BarStore(tmp_path)
    run(store, CountingSource())
    original = store.read(SYMS, "1Day")
    f = store.partition_path("S02", "1Day", "2024-01")
    f.write_bytes(f.read_bytes()[:100])
    run(store, CountingSource())
    assert store.read(SYMS, "1Day").equals(original)
    assert list((tmp_path / "_quarantine").rglob("2024-01.parquet"))  # the bad file is kept


def test_chunks_are_recorded_in_the_manifest_with_the_bars(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    run(store, CountingSource())
    ledger = chunk_rows(tmp_path / LEDGER_NAME)
    from_manifests = sorted(
        (
            c["source_key"],
            m.timeframe,
            m.symbol,
            c["start"],
            c["end"],
            c["rows"],
            int(c["complete"]),
        )
        for _, m, _ in store.manifests()
        for c in m.chunks
    )
    assert ledger and from_manifests == ledger


def test_corrupt_ledger_is_rebuilt_exactly_from_the_store(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    run(store, CountingSource())
    path = tmp_path / LEDGER_NAME
    expected = chunk_rows(path)
    path.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(LedgerCorruptError, match="wb store repair"):
        ChunkLedger(path)
    rb = rebuild_ledger(store)
    assert rb.chunks == len(expected) and rb.kept_as is not None and rb.kept_as.exists()
    assert chunk_rows(path) == expected
    src = CountingSource()
    rep = run(store, src)
    assert src.calls == [] and rep.fetched == 0  # the rebuilt ledger skips what is stored
    assert ChunkLedger(path).source(chunk_rows(path)[0][0]) == src.provenance()


def test_legacy_store_reads_then_is_adopted(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA", "BBB"], T0, 600)
    store.write(df, "5Min")
    for m in tmp_path.rglob(MANIFEST):
        m.unlink()  # as written before checksums existed
    assert store.read(None, "5Min").equals(df.sort("symbol", "ts"))
    rep = store.verify()
    assert rep.ok and len(rep.unverified) == 4 and not rep.adopted
    rep = store.verify(adopt=True)
    assert rep.ok and len(rep.adopted) == 4 and not rep.unverified
    assert store.verify().unverified == []
    flip(store.partition_path("AAA", "5Min", "2024-01"))
    with pytest.raises(CorruptPartitionError, match="sha256 is"):
        store.read(["AAA"], "5Min")


def test_legacy_provenance_survives_adoption(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 20), "5Min", provenance={"source": "old"})
    d = tmp_path / "timeframe=5Min" / "symbol=AAA"
    (d / MANIFEST).unlink()
    (d / "_provenance.json").write_text(json.dumps({"2024-01": {"source": "old"}}))
    assert store.provenance("AAA", "5Min") == {"2024-01": {"source": "old"}}
    store.verify(adopt=True)
    man = store.manifest("AAA", "5Min")
    assert man is not None and man.partitions["2024-01"]["provenance"] == {"source": "old"}


def test_first_write_into_a_legacy_folder_adopts_its_other_partitions(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 600), "5Min")  # Jan + Feb
    (tmp_path / "timeframe=5Min" / "symbol=AAA" / MANIFEST).unlink()
    store.write(make_bars(["AAA"], T0 + timedelta(days=40), 5, seed=3), "5Min")  # March only
    man = store.manifest("AAA", "5Min")
    assert man is not None and sorted(man.partitions) == ["2024-01", "2024-02", "2024-03"]
    assert store.verify().ok and not store.verify().unverified


def test_legacy_folder_with_a_bad_partition_refuses_the_write(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 600), "5Min")
    d = tmp_path / "timeframe=5Min" / "symbol=AAA"
    (d / MANIFEST).unlink()
    (d / "2024-01.parquet").write_bytes(b"PAR1 broken")
    before = {p: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(CorruptPartitionError, match="2024-01.parquet: not a readable parquet"):
        store.write(make_bars(["AAA"], T0 + timedelta(days=40), 5), "5Min")
    assert {p: p.read_bytes() for p in d.iterdir()} == before


def test_reader_accepts_a_pending_checksum(tmp_path: Path) -> None:
    """A reader that races a writer sees the old or the new file; the manifest accepts both."""
    store = BarStore(tmp_path)
    store.write(make_bars(["AAA"], T0, 50), "5Min")
    d = tmp_path / "timeframe=5Min" / "symbol=AAA"
    man = Manifest.load(d, root=tmp_path)
    assert man is not None
    old = man.partitions["2024-01"]
    man.partitions["2024-01"] = {**old, "pending": [{**old, "sha256": "0" * 64}]}
    man.save(d)
    assert store.verify().ok  # the old file is still accepted
    store.write(make_bars(["AAA"], T0, 50), "5Min")  # an identical write settles the manifest
    assert "pending" not in store.manifest("AAA", "5Min").partitions["2024-01"]


@pytest.mark.parametrize(
    ("tf", "ts", "off"),
    [
        ("5Min", datetime(2024, 1, 2, 14, 35, tzinfo=UTC), False),
        ("5Min", datetime(2024, 1, 2, 14, 36, tzinfo=UTC), True),
        ("5Min", datetime(2024, 1, 2, 14, 35, 17, tzinfo=UTC), True),
        ("1Hour", datetime(2024, 1, 2, 14, 0, tzinfo=UTC), False),
        ("1Hour", datetime(2024, 1, 2, 14, 30, tzinfo=UTC), True),
        ("1Day", datetime(2024, 1, 2, 5, 0, tzinfo=UTC), False),
        ("1Day", datetime(2024, 1, 2, 5, 30, tzinfo=UTC), True),
    ],
)
def test_timeframe_grid(tf: str, ts: datetime, off: bool) -> None:
    s = pl.DataFrame({"ts": [ts]}).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    assert s.select(Timeframe.parse(tf).off_grid(pl.col("ts"))).item() is off
