"""Files source: CSV/parquet import with a column mapping and time-zone handling."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from workbench.data.sources.base import get_source_factory, source_names
from workbench.data.sources.files import FilesSource
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, SchemaError, SourceError

CSV = """Date,Open,High,Low,Close,Volume
2024-03-08 09:30:00,10,11,9,10.5,100
2024-03-08 09:35:00,10.5,11,10,10.8,120
2024-03-11 09:30:00,11,12,10.5,11.5,90
"""


def test_csv_with_mapping_and_exchange_local_time(tmp_path: Path) -> None:
    f = tmp_path / "AAPL.csv"
    f.write_text(CSV)
    src = FilesSource(
        str(f),
        column_map={
            "Date": "ts",
            "Open": "open",
            "High": "high",
            "Low": "low",
            "Close": "close",
            "Volume": "volume",
        },
        timezone="America/New_York",
        symbol="AAPL",
    )
    out = src.fetch(
        ["AAPL"],
        Timeframe.parse("5Min"),
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(2024, 4, 1, tzinfo=UTC),
    )
    # 09:30 New York is 14:30 UTC before the DST change (Mar 10 2024) and 13:30 UTC after it
    assert out["ts"].to_list() == [
        datetime(2024, 3, 8, 14, 30, tzinfo=UTC),
        datetime(2024, 3, 8, 14, 35, tzinfo=UTC),
        datetime(2024, 3, 11, 13, 30, tzinfo=UTC),
    ]
    assert out["volume"].dtype == pl.Float64 and out["vwap"].null_count() == 3


def test_parquet_with_symbol_column_and_window(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {
            "symbol": ["A", "B"],
            "ts": [datetime(2024, 1, 2, 15, tzinfo=UTC)] * 2,
            "open": [1.0, 2.0],
            "high": [1.0, 2.0],
            "low": [1.0, 2.0],
            "close": [1.0, 2.0],
            "volume": [0.0, 1.0],
        }
    )
    df.write_parquet(tmp_path / "x.parquet")
    src = FilesSource(str(tmp_path / "*.parquet"))
    out = src.fetch(
        ["B"],
        Timeframe.parse("1Min"),
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 1, 3, tzinfo=UTC),
    )
    assert out["symbol"].to_list() == ["B"]
    assert src.fetch(
        ["B"],
        Timeframe.parse("1Min"),
        datetime(2024, 1, 3, tzinfo=UTC),
        datetime(2024, 1, 4, tzinfo=UTC),
    ).is_empty()


def test_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no files match"):
        FilesSource(str(tmp_path / "none*.csv"))
    (tmp_path / "a.csv").write_text(CSV)
    with pytest.raises(SourceError, match="column_map targets \\['Close'\\]"):
        FilesSource(str(tmp_path / "a.csv"), column_map={"Close": "Close"})
    src = FilesSource(str(tmp_path / "a.csv"), column_map={"Date": "ts"})
    with pytest.raises(SourceError, match="no 'symbol' column"):
        src.fetch(
            ["A"],
            Timeframe.parse("5Min"),
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2025, 1, 1, tzinfo=UTC),
        )
    src = FilesSource(str(tmp_path / "a.csv"), column_map={"Date": "ts"}, symbol="A")
    with pytest.raises(SchemaError, match="missing column"):
        src.fetch(
            ["A"],
            Timeframe.parse("5Min"),
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2025, 1, 1, tzinfo=UTC),
        )


def test_registry_knows_files_and_suggests() -> None:
    assert "files" in source_names()
    with pytest.raises(ConfigError, match="Did you mean .files."):
        get_source_factory("filez")
