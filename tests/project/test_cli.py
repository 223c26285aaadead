"""The wb command: help a newcomer can follow, masked secrets, idempotent ingest, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app

runner = CliRunner()
ARGS = [
    "--symbols",
    "SYN000,SYN001",
    "--timeframe",
    "15Min",
    "--start",
    "2024-01-02",
    "--end",
    "2024-01-12",
]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_help_lists_commands_with_examples() -> None:
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("ingest", "coverage", "config", "run"):
        assert cmd in out
    assert "Example: wb ingest" in runner.invoke(app, ["ingest", "--help"]).output
    assert "Example: wb run research" in runner.invoke(app, ["run", "--help"]).output


def test_config_show_masks_secrets(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", "PKSHOULDNOTAPPEAR01")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "very-secret-value-xyz")
    res = runner.invoke(app, ["config", "show"])
    assert res.exit_code == 0
    assert "PKSHOULDNOTAPPEAR01" not in res.output and "very-secret-value-xyz" not in res.output
    assert "********" in res.output and "config_hash:" in res.output


def test_ingest_twice_leaves_exactly_the_same_rows(isolated: Path) -> None:
    import polars as pl

    store = isolated / "store"
    first = runner.invoke(app, ["ingest", "--store", str(store), "--no-progress", *ARGS])
    assert first.exit_code == 0, first.output
    # 2024-01-02..12: 9 NYSE sessions (no holiday) x 26 15-minute bars x 2 symbols
    sessions = ["02", "03", "04", "05", "08", "09", "10", "11", "12"]
    n = 2 * len(sessions) * 26
    said = " ".join(first.output.split())  # the console wraps long lines
    assert f"1 chunk(s) fetched, 0 skipped, {n} bars ({n} new, 0 updated)" in said, said
    snap = files(store)
    rows = pl.concat([pl.read_parquet(store / f) for f in snap])
    assert rows.height == n and rows.select("symbol", "ts").n_unique() == n
    assert sorted(rows["symbol"].unique()) == ["SYN000", "SYN001"]
    days = rows["ts"].dt.convert_time_zone("America/New_York").dt.strftime("%d").unique()
    assert sorted(days) == sessions
    second = runner.invoke(app, ["ingest", "--store", str(store), "--no-progress", *ARGS])
    assert second.exit_code == 0, second.output
    said = " ".join(second.output.split())
    assert "0 chunk(s) fetched, 1 skipped, 0 bars (0 new, 0 updated)" in said, said
    assert files(store) == snap  # the same files, byte for byte
    cov = runner.invoke(app, ["coverage", "--store", str(store)])
    assert "SYN000" in cov.output and "SYN001" in cov.output


def test_coverage_of_an_empty_store_says_what_to_do(isolated: Path) -> None:
    out = runner.invoke(app, ["coverage", "--store", str(isolated / "nothing")]).output
    assert "empty" in out and "wb ingest" in out


def test_bad_input_exits_with_the_fix(isolated: Path) -> None:
    res = runner.invoke(
        app, ["ingest", "--store", str(isolated / "s"), "--timeframe", "5min", "--no-progress"]
    )
    assert res.exit_code == 2 and "Did you mean '5Min'" in res.output
    res = runner.invoke(app, ["ingest", "--source", "alpacca", "--store", str(isolated / "s")])
    assert res.exit_code == 2 and "alpaca" in res.output
    res = runner.invoke(app, ["run", "research", "-p", "alpah=0.1"])
    assert res.exit_code == 2 and "no parameter 'alpah'" in res.output
