"""Bar store layouts: a folder keeps the period it was written with, reads work on any layout."""

from __future__ import annotations

import io
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from workbench.data.integrity import CorruptPartitionError
from workbench.data.store import BarStore

from .conftest import make_bars

T0 = datetime(2024, 1, 30, 14, 30, tzinfo=UTC)


def stems(root: Path, symbol: str) -> list[str]:
    return sorted(p.stem for p in (root / "timeframe=5Min" / f"symbol={symbol}").glob("*.parquet"))


def test_month_store_opened_with_year_partitions_keeps_its_files(tmp_path: Path) -> None:
    df = make_bars(["AAA"], T0, 600)  # Jan and Feb
    BarStore(tmp_path, partition="month").write(df, "5Min")
    store = BarStore(tmp_path, partition="year")
    assert store.read(["AAA"], "5Min").equals(df)
    lo, hi = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC)
    window = store.read(["AAA"], "5Min", lo, hi)
    assert window.height and window.equals(
        df.filter(pl.col("ts").is_between(lo, hi, closed="left"))
    )
    more = make_bars(["AAA"], datetime(2024, 3, 4, 14, 30, tzinfo=UTC), 50, seed=1)
    rep = store.write(pl.concat([df, more]), "5Min")  # an old folder takes month files still
    assert (rep.inserted, rep.unchanged) == (50, 600)
    assert stems(tmp_path, "AAA") == ["2024-01", "2024-02", "2024-03"]
    store.write(make_bars(["BBB"], T0, 600), "5Min")  # a new folder takes the store's layout
    assert stems(tmp_path, "BBB") == ["2024"]
    out = store.read(None, "5Min")
    assert out.equals(pl.concat([df, more, make_bars(["BBB"], T0, 600)]).sort("symbol", "ts"))
    assert store.verify().ok
    assert BarStore(tmp_path, partition="month").read(["BBB"], "5Min", "2024-02-01").height


def test_year_partitions_serve_windows_and_upsert(tmp_path: Path) -> None:
    store = BarStore(tmp_path, partition="year")
    df = make_bars(["AAA", "BBB"], datetime(2023, 12, 29, 14, 30, tzinfo=UTC), 1500)
    store.write(df, "5Min")
    assert stems(tmp_path, "AAA") == ["2023", "2024"]
    lo, hi = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    got = store.read(["AAA", "BBB"], "5Min", lo, hi)
    assert got.equals(df.filter(pl.col("ts").is_between(lo, hi, closed="left")))
    changed = df.slice(700, 10).with_columns(volume=pl.col("volume") + 1)
    rep = store.write(changed, "5Min")
    assert (rep.inserted, rep.updated, rep.unchanged) == (0, 10, 0)
    assert store.read(["AAA", "BBB"], "5Min").slice(700, 10).equals(changed)


def test_folder_with_two_layouts_is_refused_naming_the_fix(tmp_path: Path) -> None:
    df = make_bars(["AAA"], T0, 100)
    BarStore(tmp_path / "m", partition="month").write(df, "5Min")
    BarStore(tmp_path / "y", partition="year").write(df, "5Min")
    folder = tmp_path / "m" / "timeframe=5Min" / "symbol=AAA"
    shutil.copyfile(tmp_path / "y" / "timeframe=5Min" / "symbol=AAA" / "2024.parquet",
                    folder / "2024.parquet")  # fmt: skip
    store = BarStore(tmp_path / "m")
    for call in (lambda: store.read(["AAA"], "5Min"), lambda: store.write(df, "5Min")):
        with pytest.raises(CorruptPartitionError, match="different periods .*Fix: move out"):
            call()
    assert not store.verify().ok


def test_partitions_are_plain_parquet(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    df = make_bars(["AAA"], T0, 50)
    store.write(df, "5Min")
    path = store.partition_path("AAA", "5Min", "2024-01")
    assert pl.read_parquet(path).equals(df)
    assert pl.read_parquet(io.BytesIO(path.read_bytes())).schema == df.schema
