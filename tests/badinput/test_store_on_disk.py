"""Bad input: the bar store on disk (bit flips, truncation, wrong files, missing files, bad
manifests, a garbage ingest ledger, a read-only folder).

Each case: (1) the library's error type or a non-zero exit, (2) a message naming the file, the
bad value and the fix, (3) the store unchanged, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from workbench.data.ingest import ingest
from workbench.data.integrity import MANIFEST, CorruptPartitionError
from workbench.data.ledger import LEDGER_NAME, ChunkLedger, LedgerCorruptError
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.errors import StoreError

from .conftest import (
    END,
    START,
    SYMS,
    TF,
    assert_clean_message,
    fingerprint,
    flip_bit,
    part,
    truncate,
    wb,
    wb_unprivileged,
)

FIX = "wb store repair"
INGEST = ["--symbols", ",".join(SYMS), "--timeframe", TF, "--start", str(START), "--end", str(END)]


def _drop_manifests(store: BarStore) -> None:
    """Make the store look like one written before checksums existed."""
    for m in store.root.rglob(MANIFEST):
        m.unlink()


# ------------------------------------------------------------------------------- bit flips


@pytest.mark.parametrize("at", [0.05, 0.3, 0.5, 0.7, 0.97])
def test_bit_flip_is_never_served(store: BarStore, at: float) -> None:
    """The finding: one flipped bit read back as wrong data in 3 of 5 trials. Now 5 of 5 refused."""
    f = part(store)
    flip_bit(f, at)
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(SYMS, TF)
    assert_clean_message(str(err.value), str(f), "sha256 is", "recorded", FIX)
    assert [p.path for p in err.value.problems] == [f]
    with pytest.raises(CorruptPartitionError):
        store.scan(["SYN000"], TF)  # the lazy path refuses too
    assert fingerprint(store.root) == before


def test_bit_flip_coverage_exits_2_naming_the_file(store: BarStore) -> None:
    f = part(store, "SYN001", "2024-02")
    flip_bit(f)
    before = fingerprint(store.root)
    res = wb("coverage", "--store", str(store.root))
    assert res.exit_code == 2
    assert_clean_message(res.output, str(f), "bytes changed on disk", FIX)
    assert fingerprint(store.root) == before


def test_bit_flip_store_verify_exits_1_naming_only_the_bad_file(store: BarStore) -> None:
    f = part(store)
    flip_bit(f)
    before = fingerprint(store.root)
    res = wb("store", "verify", "--store", str(store.root))
    assert res.exit_code == 1
    assert_clean_message(
        res.output, f"BAD {f}", "sha256 is", FIX, "4 partition(s) checked", "1 bad"
    )
    assert res.output.count("BAD ") == 1
    assert fingerprint(store.root) == before


def test_write_into_a_bit_flipped_partition_is_refused(store: BarStore) -> None:
    f = part(store)
    flip_bit(f)
    new = store.read(["SYN001"], TF).with_columns(symbol=pl.lit("SYN000"))  # valid bars
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.write(new, TF)
    assert_clean_message(str(err.value), str(f), FIX)
    assert fingerprint(store.root) == before


# ------------------------------------------------------------------------------- truncation


def test_truncated_partition_coverage_names_the_file(store: BarStore) -> None:
    """The finding: a 46-line traceback naming no file. Now one message with file, size and fix."""
    f = part(store)
    truncate(f)
    before = fingerprint(store.root)
    res = wb("coverage", "--store", str(store.root))
    assert res.exit_code == 2
    size = f.stat().st_size
    assert_clean_message(res.output, str(f), f"size is {size} bytes", "truncated", FIX)
    assert fingerprint(store.root) == before


def test_truncated_partition_of_another_source_stops_ingest_before_work(
    store: BarStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest re-fetches bad partitions of its own source; another source's are refused."""
    f = part(store)
    truncate(f)
    before = fingerprint(store.root)
    monkeypatch.setenv("WB_SIMULATOR__SEED", "8")  # another simulator: other bars
    res = wb("ingest", "--store", str(store.root), "--no-progress", *INGEST)
    assert res.exit_code == 2
    assert_clean_message(res.output, str(f), "truncated", "another source", FIX)
    assert fingerprint(store.root) == before


def test_truncated_legacy_partition_names_the_file(store: BarStore) -> None:
    _drop_manifests(store)
    f = part(store)
    truncate(f, 0.4)
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(SYMS, TF)
    assert_clean_message(str(err.value), str(f), "not a readable parquet file", FIX)
    res = wb("coverage", "--store", str(store.root))
    assert res.exit_code == 2 and str(f) in res.output
    assert fingerprint(store.root) == before


# ------------------------------------------------------------------------------- wrong files


def test_other_symbols_file_copied_over_a_partition(store: BarStore) -> None:
    """The finding: SYN001's file copied into SYN000's folder was served as SYN000."""
    f = part(store, "SYN000")
    shutil.copyfile(part(store, "SYN001"), f)
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(["SYN000"], TF)
    assert_clean_message(str(err.value), str(f), "sha256 is", FIX)
    res = wb("store", "verify", "--store", str(store.root))
    assert res.exit_code == 1 and f"BAD {f}" in res.output
    assert fingerprint(store.root) == before


def test_other_symbols_file_copied_in_as_a_new_period(store: BarStore) -> None:
    f = part(store, "SYN000", "2023-12")
    shutil.copyfile(part(store, "SYN001"), f)
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(["SYN000"], TF)
    assert_clean_message(str(err.value), str(f), "not in its folder's manifest", "remove it")
    assert fingerprint(store.root) == before


def test_other_symbols_file_in_a_legacy_folder_is_caught_by_its_rows(store: BarStore) -> None:
    _drop_manifests(store)
    f = part(store, "SYN000")
    shutil.copyfile(part(store, "SYN001"), f)
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(["SYN000"], TF)
    assert_clean_message(
        str(err.value), str(f), "carry symbol(s) ['SYN001']", "folder is symbol=SYN000", FIX
    )
    assert fingerprint(store.root) == before


def test_other_timeframes_file_in_a_legacy_folder_is_caught_by_its_grid(store: BarStore) -> None:
    jan = (datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC))
    one_min = SyntheticSource(seed=7).fetch(["SYN000"], "1Min", *jan)
    _drop_manifests(store)
    f = part(store)
    one_min.write_parquet(f)
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(["SYN000"], TF)
    assert_clean_message(str(err.value), str(f), "off the 5Min grid", "timeframe=5Min")
    assert fingerprint(store.root) == before


def test_manifest_copied_from_another_folder(store: BarStore) -> None:
    m = part(store, "SYN000").parent / MANIFEST
    shutil.copyfile(part(store, "SYN001").parent / MANIFEST, m)
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(["SYN000"], TF)
    assert_clean_message(str(err.value), str(m), "manifest is for symbol 'SYN001'", FIX)
    assert fingerprint(store.root) == before


def test_edited_manifest_fails_its_own_checksum(store: BarStore) -> None:
    m = part(store).parent / MANIFEST
    data = json.loads(m.read_text())
    data["partitions"]["2024-01"]["rows"] += 1
    m.write_text(json.dumps(data))
    before = fingerprint(store.root)
    res = wb("coverage", "--store", str(store.root))
    assert res.exit_code == 2
    assert_clean_message(res.output, str(m), "fails its checksum", FIX)
    assert fingerprint(store.root) == before


# ------------------------------------------------------------------------------- missing files


def test_missing_partition_is_named(store: BarStore) -> None:
    f = part(store, "SYN001", "2024-01")
    f.unlink()
    before = fingerprint(store.root)
    with pytest.raises(CorruptPartitionError) as err:
        store.read(SYMS, TF)
    assert_clean_message(str(err.value), str(f), "is missing", "rows", FIX)
    res = wb("store", "verify", "--store", str(store.root))
    assert res.exit_code == 1 and f"BAD {f}" in res.output
    assert fingerprint(store.root) == before


def test_verify_of_a_missing_store_folder(isolated: Path) -> None:
    res = wb("store", "verify", "--store", str(isolated / "nowhere"))
    assert res.exit_code == 2
    assert_clean_message(res.output, str(isolated / "nowhere"), "no bar store", "--store")
    assert not (isolated / "nowhere").exists()


# ------------------------------------------------------------------------------- ingest ledger


def test_garbage_ledger_stops_ingest_before_any_work(store: BarStore) -> None:
    """The finding: a sqlite3.DatabaseError traceback. Now the file and the fix."""
    ledger = store.root / LEDGER_NAME
    ledger.write_bytes(b"this is not a database" * 100)
    before = fingerprint(store.root)
    res = wb("ingest", "--store", str(store.root), "--no-progress", *INGEST)
    assert res.exit_code == 2
    assert_clean_message(res.output, str(ledger), "corrupt", "file is not a database", FIX)
    assert "DatabaseError" not in res.output
    assert fingerprint(store.root) == before


def test_garbage_ledger_library_error_type(store: BarStore) -> None:
    ledger = store.root / LEDGER_NAME
    ledger.write_bytes(os.urandom(4096))
    before = fingerprint(store.root)
    with pytest.raises(LedgerCorruptError) as err:
        ingest(SyntheticSource(seed=7), store, SYMS, TF, START, END, progress=False)
    assert isinstance(err.value, StoreError)
    assert_clean_message(str(err.value), str(ledger), FIX, "rebuild")
    assert fingerprint(store.root) == before


def test_truncated_ledger_is_reported(store: BarStore) -> None:
    ledger = store.root / LEDGER_NAME
    with sqlite3.connect(ledger) as con:  # make it big enough that half of it is not a database
        con.executemany(
            "INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?)",
            [(f"k{i}", TF, "X", f"s{i}", "e", 1, 1, "t") for i in range(3000)],
        )
    con.close()
    truncate(ledger, 0.5)
    before = fingerprint(store.root)
    with pytest.raises(LedgerCorruptError) as err:
        ChunkLedger(ledger)
    assert_clean_message(str(err.value), str(ledger), "malformed", FIX)
    res = wb("store", "verify", "--store", str(store.root))
    assert res.exit_code == 1
    assert_clean_message(res.output, f"BAD the ingest ledger {ledger}", FIX)
    assert fingerprint(store.root) == before


# ------------------------------------------------------------------------------- read-only folder


@pytest.fixture
def read_only(store: BarStore) -> BarStore:
    dirs = [store.root, *(p for p in store.root.rglob("*") if p.is_dir())]
    for d in [*dirs, *store.root.rglob("*")]:
        mode = d.stat().st_mode
        d.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    # the unprivileged child must be able to traverse the tmp folders above the store
    for parent in store.root.parents:
        if str(parent) in ("/", "/tmp"):
            break
        parent.chmod(parent.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
    yield store
    for d in [store.root, *store.root.rglob("*")]:
        d.chmod(d.stat().st_mode | stat.S_IWUSR)


def test_ingest_into_a_read_only_store_is_refused_before_work(read_only: BarStore) -> None:
    before = fingerprint(read_only.root)
    res = wb_unprivileged("ingest", "--store", str(read_only.root), "--no-progress",
                          "--end", "2024-02-20", *INGEST[:-2])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output, str(read_only.root), "cannot write", "writable")
    assert fingerprint(read_only.root) == before


def test_a_read_only_store_still_reads_and_verifies(read_only: BarStore) -> None:
    before = fingerprint(read_only.root)
    res = wb_unprivileged("store", "verify", "--store", str(read_only.root))
    assert res.exit_code == 0, res.output
    assert "0 bad" in res.output
    res = wb_unprivileged("coverage", "--store", str(read_only.root))
    assert res.exit_code == 0 and "SYN001" in res.output
    assert fingerprint(read_only.root) == before


def test_repair_of_a_read_only_store_is_refused(read_only: BarStore) -> None:
    for d in [read_only.root, *read_only.root.rglob("*")]:
        d.chmod(d.stat().st_mode | stat.S_IWUSR)
    f = part(read_only)
    flip_bit(f)
    for d in [read_only.root, *read_only.root.rglob("*")]:
        d.chmod(d.stat().st_mode & ~stat.S_IWUSR)
    before = fingerprint(read_only.root)
    res = wb_unprivileged("store", "repair", "--store", str(read_only.root))
    assert res.exit_code != 0, res.output
    assert_clean_message(res.output, str(read_only.root), "writable")
    assert fingerprint(read_only.root) == before
