"""Bad input: command-line flags and arguments, and what `wb` does with an error it did not expect.

Each bad-input case: exit 2, a message naming the flag (or argument), the bad value and the fix,
and nothing written (no store, no MLflow store, no run folder). An unexpected error prints one
line and the path of a log holding the traceback, never the traceback itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench import cli_errors

from .conftest import assert_clean_message, fingerprint, nothing_written, wb

WINDOW = ("--start", "2024-01-02", "--end", "2024-01-05")
FLAGS = {
    "empty --symbols": (
        ["ingest", "--symbols", "", *WINDOW],
        ["--symbols ''", "names no symbol", "Fix: pass symbols"],
    ),
    "--symbols of commas only": (
        ["ingest", "--symbols", " , ", *WINDOW],
        ["--symbols ' , '", "names no symbol", "Fix"],
    ),
    "--timeframe in the wrong case": (
        ["ingest", "--symbols", "SYN000", "--timeframe", "5min", *WINDOW],
        ["'5min'", "valid timeframes", "Did you mean '5Min'"],
    ),
    "impossible --start": (
        ["ingest", "--symbols", "SYN000", "--start", "2024-02-30"],
        ["--start '2024-02-30'", "day is out of range for month", "Fix: a real date"],
    ),
    "--end in another format": (
        ["ingest", "--symbols", "SYN000", "--start", "2024-01-02", "--end", "01/05/2024"],
        ["--end '01/05/2024'", "not a date", "YYYY-MM-DD"],
    ),
    "--end before --start": (
        ["ingest", "--symbols", "SYN000", "--start", "2024-02-10", "--end", "2024-02-01"],
        ["2024-02-10", "is not before end", "Fix: pass an end on or after the start"],
    ),
    "misspelt --source": (
        ["ingest", "--source", "alpacca", "--symbols", "SYN000", *WINDOW],
        ["unknown data source 'alpacca'", "Did you mean 'alpaca'"],
    ),
    "empty run id": (["reproduce", ""], ["run id ''", "not an MLflow run id", "Fix: copy"]),
    "malformed run id": (["reproduce", "run-42"], ["'run-42'", "32 hexadecimal characters", "Fix"]),
    "unknown run id": (["reproduce", "f" * 32], [f"no run '{'f' * 32}'", "Fix: point"]),
    "a store folder that does not exist": (
        ["store", "verify", "--store", "/nonexistent/bars"],
        ["/nonexistent/bars", "no bar store", "Fix: pass --store"],
    ),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_bad_flag_exits_2_naming_it(case: str, project: Path, isolated: Path) -> None:
    args, must = FLAGS[case]
    before = fingerprint(isolated)
    res = wb(*args, *(["--no-progress"] if args[0] == "ingest" else []))
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", " "), *must)
    nothing_written(isolated, before)


def test_unexpected_error_prints_one_line_and_the_log_path(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (here: a TypeError deep in a command) is not a bad input: one summary line, the
    traceback in a log file under runs/logs, exit 1."""

    def broken(*_a: object, **_k: object) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr("workbench.config.config_hash", broken)
    monkeypatch.setattr("workbench.cli.config_hash", broken)
    res = wb("config", "hash")
    assert res.exit_code == cli_errors.UNEXPECTED_EXIT == 1
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "unexpected error TypeError: unsupported operand"
    )
    logs = sorted((project / "runs" / "logs").glob("wb-*.log"))
    assert len(logs) == 1 and str(logs[0]) in res.output
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "def broken" not in res.output
    assert "TypeError: unsupported operand" in text


def test_expected_errors_of_other_kinds_are_one_message(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file that reaches the top (not wrapped by the command) is still one message."""

    def missing(*_a: object, **_k: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/data/nothing.parquet")

    monkeypatch.setattr("workbench.cli.config_hash", missing)
    res = wb("config", "hash")
    assert res.exit_code == 2
    assert_clean_message(
        res.output.replace("\n", " "), "/data/nothing.parquet", "Fix: check the path"
    )
    assert not (project / "runs").exists()
