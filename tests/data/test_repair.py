"""wb store repair end to end with the embedded simulator: ingest, damage, repair, read equals the
original; bad files are quarantined; what cannot be repaired is reported with the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.data.integrity import MANIFEST
from workbench.data.ledger import LEDGER_NAME
from workbench.data.repair import repair_store, source_from_provenance
from workbench.data.store import BarStore
from workbench.errors import WorkbenchError

runner = CliRunner()
SYMS = "SYN000,SYN001,SYN002"
ARGS = ["--symbols", SYMS, "--timeframe", "15Min", "--start", "2024-01-02", "--end", "2024-03-08"]


@pytest.fixture
def ingested(isolated: Path) -> BarStore:
    root = isolated / "store"
    res = runner.invoke(app, ["ingest", "--store", str(root), "--no-progress", *ARGS])
    assert res.exit_code == 0, res.output
    return BarStore(root)


def _damage(store: BarStore) -> list[Path]:
    flipped = store.partition_path("SYN000", "15Min", "2024-02")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = store.partition_path("SYN001", "15Min", "2024-03")
    truncated.write_bytes(truncated.read_bytes()[:200])
    missing = store.partition_path("SYN002", "15Min", "2024-01")
    missing.unlink()
    wrong = store.partition_path("SYN002", "15Min", "2024-02")
    shutil.copyfile(store.partition_path("SYN001", "15Min", "2024-02"), wrong)
    return [flipped, truncated, missing, wrong]


def test_repair_restores_exactly_what_was_ingested(ingested: BarStore) -> None:
    store = ingested
    original = store.read(None, "15Min")
    bad = _damage(store)
    verify = runner.invoke(app, ["store", "verify", "--store", str(store.root)])
    assert verify.exit_code == 1
    assert all(f"BAD {p}" in verify.output for p in bad), verify.output
    res = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    assert all(f"repaired {p}" in res.output for p in bad), res.output
    assert "4 of 4 bad partition file(s) fixed; store verifies" in res.output
    assert store.read(None, "15Min").equals(original)
    assert runner.invoke(app, ["store", "verify", "--store", str(store.root)]).exit_code == 0
    kept = sorted(p.name for p in (store.root / "_quarantine").rglob("*.parquet"))
    assert kept == ["2024-02.parquet", "2024-02.parquet", "2024-03.parquet"]  # missing: nothing
    again = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert again.exit_code == 0 and "0 of 0" in again.output  # idempotent


def test_repair_rebuilds_a_corrupt_manifest_from_the_ledger(ingested: BarStore) -> None:
    store = ingested
    original = store.read(None, "15Min")
    m = store.partition_path("SYN001", "15Min", "2024-01").parent / MANIFEST
    m.write_text("{not json")
    res = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    assert res.output.count("(manifest)") == 3 and "3 of 3" in res.output  # Jan, Feb, Mar
    assert store.read(None, "15Min").equals(original)
    assert store.verify().ok
    assert list((store.root / "_quarantine").rglob(MANIFEST))


def test_repair_rebuilds_a_corrupt_ledger_from_the_manifests(ingested: BarStore) -> None:
    store = ingested
    (store.root / LEDGER_NAME).write_bytes(b"garbage" * 10)
    res = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    assert "ingest ledger: rebuilt from the store (9 chunk(s), 1 source(s))" in res.output
    again = runner.invoke(app, ["ingest", "--store", str(store.root), "--no-progress", *ARGS])
    assert again.exit_code == 0 and " 0 chunk(s) fetched" in again.output, again.output


def test_a_corrupt_manifest_and_ledger_at_once_are_reported(ingested: BarStore) -> None:
    """Both copies of where a folder came from are gone: repair says so and what to do."""
    store = ingested
    m = store.partition_path("SYN001", "15Min", "2024-01").parent / MANIFEST
    m.write_text("{not json")
    (store.root / LEDGER_NAME).write_bytes(b"garbage" * 10)
    res = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert res.exit_code == 1
    assert "ingest ledger: rebuilt" in res.output
    assert "no source is recorded for it" in res.output and "wb ingest" in res.output
    assert f"still BAD {m}" in res.output


def test_repair_uses_the_recorded_source_not_the_configured_one(
    ingested: BarStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ingested
    original = store.read(None, "15Min")
    _damage(store)
    monkeypatch.setenv("WB_SIMULATOR__SEED", "99")  # today's config would give other bars
    res = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    assert store.read(None, "15Min").equals(original)


def test_a_partition_without_a_rebuildable_source_is_reported(isolated: Path) -> None:
    from datetime import UTC, datetime

    from workbench.data.sources.files import FilesSource
    from workbench.data.sources.synthetic import SyntheticSource

    csv = isolated / "bars.parquet"
    jan = (datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC))
    SyntheticSource(seed=1).fetch(["AAA"], "15Min", *jan).write_parquet(csv)
    store = BarStore(isolated / "store")
    store.write(FilesSource([str(csv)]).fetch(["AAA"], "15Min", *jan), "15Min",
                provenance=FilesSource([str(csv)]).provenance())  # fmt: skip
    f = store.partition_path("AAA", "15Min", "2024-01")
    f.write_bytes(f.read_bytes()[:50])
    before = f.read_bytes()
    res = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert res.exit_code == 1
    assert f"failed {f}" in res.output and "cannot be rebuilt from its provenance" in res.output
    assert "bars.parquet" in res.output and "wb ingest --source files" in res.output
    assert f"still BAD {f}" in res.output
    assert f.read_bytes() == before  # left as it was for the user to decide


def test_source_from_provenance_refuses_a_different_generator() -> None:
    from workbench.data.sources.synthetic import SyntheticSource

    prov = SyntheticSource(seed=3).provenance()
    assert source_from_provenance(prov).provenance() == prov
    with pytest.raises(WorkbenchError, match="differs from the one that wrote"):
        source_from_provenance({**prov, "generator": "workbench-synthetic/0"})


def test_repair_store_library_report(ingested: BarStore) -> None:
    bad = _damage(ingested)
    rep = repair_store(ingested)
    assert rep.ok and sorted(i.path for i in rep.items) == sorted(bad)
    assert {i.status for i in rep.items} == {"repaired"}
    assert rep.frame.height == 4 and json.dumps(rep.frame.to_dicts())


def test_readme_store_commands_exist() -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    used = set(re.findall(r"wb store (verify|repair)((?: --[a-z]+)*)", readme))
    assert {c for c, _ in used} == {"verify", "repair"}
    for cmd, flags in used:
        res = runner.invoke(app, ["store", cmd, "--help"])
        assert res.exit_code == 0
        for flag in [*flags.split(), "--store"]:
            assert flag in res.output, (cmd, flag)


def test_verify_adopt_on_a_store_written_before_checksums(ingested: BarStore) -> None:
    for m in ingested.root.rglob(MANIFEST):
        m.unlink()
    res = runner.invoke(app, ["store", "verify", "--store", str(ingested.root)])
    assert res.exit_code == 0 and "9 without checksum" in res.output, res.output
    assert "Fix: `wb store verify --adopt`" in res.output
    res = runner.invoke(app, ["store", "verify", "--adopt", "--store", str(ingested.root)])
    assert res.exit_code == 0 and res.output.count("adopted ") == 9, res.output
    assert "0 without checksum" in res.output
    assert len(list(ingested.root.rglob(MANIFEST))) == 3
