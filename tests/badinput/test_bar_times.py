"""Bad input: bars that break their timeframe or the calendar, imported with `wb ingest --source
files`. Each case: exit 2, a message naming the rule, the rows and the fix, nothing written."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from workbench.data.sources.synthetic import SyntheticSource

from .conftest import assert_clean_message, fingerprint, wb

DAY = (datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC))


def _good(tf: str = "1Min") -> pl.DataFrame:
    return SyntheticSource(seed=5).fetch(["SYN000"], tf, *DAY)


def _shift_one(df: pl.DataFrame, to: datetime) -> pl.DataFrame:
    return df.with_columns(
        ts=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(to)).otherwise(pl.col("ts"))
    ).with_columns(pl.col("ts").dt.cast_time_unit("us").dt.convert_time_zone("UTC"))


CASES = {
    "1Min bars ingested as 5Min": (lambda: _good("1Min"), "5Min", "ts on the 5Min grid", "row=1"),
    "timestamps 17 s off the grid": (
        lambda: _good("5Min").with_columns(pl.col("ts") + pl.duration(seconds=17)),
        "5Min",
        "ts on the 5Min grid",
        "14:30:17",
    ),
    "a Sunday 03:00 bar": (
        lambda: _shift_one(_good("5Min"), datetime(2024, 1, 7, 8, tzinfo=UTC)),
        "5Min",
        "bar inside a XNYS regular session",
        "ts_local=2024-01-07 03:00:00-05:00",
    ),
    "daily bars stamped at 15:00 UTC": (
        lambda: _good("1Day").with_columns(pl.col("ts") + pl.duration(hours=10)),
        "1Day",
        "ts on the 1Day grid",
        "15:00:00",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bars_breaking_time_are_refused(isolated: Path, case: str) -> None:
    make, tf, rule, row = CASES[case]
    src = isolated / "bars.parquet"
    make().write_parquet(src)
    store = isolated / "store"
    before = fingerprint(store)
    res = wb("ingest", "--store", str(store), "--no-progress", "--source", "files",
             "--path", str(src), "--symbols", "SYN000", "--timeframe", tf,
             "--start", "2024-01-02", "--end", "2024-01-09")  # fmt: skip
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output, "bars rejected", rule, row, "Fix:")
    assert fingerprint(store) == before == {}  # not even a ledger or a lock file


def test_good_file_of_the_same_shape_is_accepted(isolated: Path) -> None:
    """The control: the same import with valid bars succeeds (the refusals are about time)."""
    src = isolated / "bars.parquet"
    _good("5Min").write_parquet(src)
    store = isolated / "store"
    res = wb("ingest", "--store", str(store), "--no-progress", "--source", "files",
             "--path", str(src), "--symbols", "SYN000", "--timeframe", "5Min",
             "--start", "2024-01-03", "--end", "2024-01-03")  # fmt: skip
    assert "bars rejected" not in res.output, res.output
    assert len(list(store.rglob("*.parquet"))) == 1
