"""Bad input: files imported with `wb ingest --source files` (and the FilesSource behind it).

Each case: exit 2 (or SourceError), a message naming the file, the bad value and the fix, and no
store written. One good case first: stamps with a UTC offset are read as those instants.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from workbench.data.sources.files import FilesSource
from workbench.errors import SourceError

from .conftest import assert_clean_message, fingerprint, wb

HEAD = "symbol,ts,open,high,low,close,volume\n"
WINDOW = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 6, tzinfo=UTC))


def _csv(path: Path, *stamps: str, head: str = HEAD) -> Path:
    rows = "".join(f"AAA,{ts},10,11,9,10.5,100\n" for ts in stamps)
    path.write_text(head + rows)
    return path


@pytest.mark.parametrize(
    "stamps",
    [
        ("2024-01-03T14:30:00+00:00", "2024-01-03T14:35:00+00:00"),
        ("2024-01-03T14:30:00Z", "2024-01-03T14:35:00Z"),
        ("2024-01-03 09:30:00-05:00", "2024-01-03 09:35:00-05:00"),  # New York, in winter
    ],
)
def test_stamps_with_an_offset_are_those_instants(tmp_path: Path, stamps: tuple) -> None:
    """The reported crash: a tz-aware CSV. Whatever ``timezone`` says, an offset decides."""
    f = _csv(tmp_path / "aware.csv", *stamps)
    for tz in ("UTC", "America/New_York"):
        got = FilesSource(str(f), timezone=tz).fetch(["AAA"], "5Min", *WINDOW)["ts"].to_list()
        assert got == [
            datetime(2024, 1, 3, 14, 30, tzinfo=UTC),
            datetime(2024, 1, 3, 14, 35, tzinfo=UTC),
        ]


def test_naive_stamps_take_the_given_timezone(tmp_path: Path) -> None:
    f = _csv(tmp_path / "naive.csv", "2024-01-03 09:30:00")
    got = FilesSource(str(f), timezone="America/New_York").fetch(["AAA"], "5Min", *WINDOW)
    assert got["ts"].to_list() == [datetime(2024, 1, 3, 14, 30, tzinfo=UTC)]


def _ingest_files(path: Path, store: Path) -> object:
    return wb(
        "ingest", "--source", "files", "--path", str(path), "--symbols", "AAA", "--timeframe",
        "5Min", "--start", "2024-01-02", "--end", "2024-01-05", "--store", str(store),
        "--no-progress",
    )  # fmt: skip


BAD_FILES = {
    "stamps with and without an offset": (
        lambda d: _csv(d / "mixed.csv", "2024-01-03T14:30:00Z", "2024-01-03 09:35:00"),
        ["mixed.csv", "row 2", "'2024-01-03 09:35:00'", "Fix:"],
    ),
    "unparseable stamps": (
        lambda d: _csv(d / "garbled.csv", "yesterday at noon"),
        ["garbled.csv", "not parseable", "Fix:", "ts_format"],
    ),
    "no ts column": (
        lambda d: _csv(d / "nots.csv", "2024-01-03T14:30:00Z", head=HEAD.replace(",ts,", ",when,")),
        ["nots.csv", "no 'ts' column", "'when'", "Fix:"],
    ),
    "a file type that is not csv or parquet": (
        lambda d: (d / "bars.xlsx").write_text("x") and d / "bars.xlsx",
        ["bars.xlsx", "unsupported file type", ".csv or .parquet"],
    ),
    "a path that matches nothing": (
        lambda d: d / "nothing-here-*.csv",
        ["nothing-here-*.csv", "no files match", "Fix:"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_exits_2_and_writes_nothing(case: str, isolated: Path) -> None:
    make, must = BAD_FILES[case]
    path = make(isolated)
    store = isolated / "store"
    res = _ingest_files(path, store)
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", ""), *must)
    assert fingerprint(store) == {}


def test_column_map_to_an_unknown_column_is_refused(tmp_path: Path) -> None:
    f = _csv(tmp_path / "a.csv", "2024-01-03T14:30:00Z")
    with pytest.raises(SourceError) as err:
        FilesSource(str(f), column_map={"Close": "closing_price"})
    assert_clean_message(str(err.value), "'closing_price'", "valid targets")
