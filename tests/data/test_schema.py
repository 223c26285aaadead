"""Bar contract: one test per rejection, and properties of validate_bars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.data.schema import BAR_COLUMNS, BAR_SCHEMA, validate_bars
from workbench.errors import SchemaError

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def bars(n: int = 5, symbol: str = "AAA") -> pl.DataFrame:
    ts = [T0 + timedelta(minutes=5 * i) for i in range(n)]
    px = [100.0 + i for i in range(n)]
    return pl.DataFrame(
        {
            "symbol": [symbol] * n,
            "ts": ts,
            "open": px,
            "high": [p + 1 for p in px],
            "low": [p - 1 for p in px],
            "close": [p + 0.5 for p in px],
            "volume": [1000.0] * n,
            "vwap": [p + 0.2 for p in px],
            "trade_count": [10] * n,
        }
    )


def test_valid_bars_pass_and_keep_contract() -> None:
    out = validate_bars(bars())
    assert out.schema == pl.Schema(BAR_SCHEMA)
    assert out.columns == list(BAR_COLUMNS)


def test_input_is_not_mutated_and_output_sorted() -> None:
    df = bars().reverse()
    before = df.clone()
    out = validate_bars(df)
    assert df.equals(before)
    assert out["ts"].is_sorted()


def test_optional_columns_may_be_absent() -> None:
    out = validate_bars(bars().drop("vwap", "trade_count"))
    assert out["vwap"].null_count() == 5


@pytest.mark.parametrize("col", ["symbol", "ts", "open", "high", "low", "close", "volume"])
def test_missing_column(col: str) -> None:
    with pytest.raises(SchemaError, match=rf"missing column\(s\) \['{col}'\].*Fix"):
        validate_bars(bars().drop(col))


def test_mistyped_price_column() -> None:
    df = bars().with_columns(pl.col("close").cast(pl.String))
    with pytest.raises(SchemaError, match=r"column 'close' has type String.*Fix"):
        validate_bars(df)


def test_mistyped_ts() -> None:
    df = bars().with_columns(pl.col("ts").dt.strftime("%Y-%m-%d %H:%M"))
    with pytest.raises(SchemaError, match=r"'ts' has type String.*str.to_datetime"):
        validate_bars(df)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_non_finite_price(bad: float | None) -> None:
    df = bars().with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(bad).otherwise(pl.col("open")).alias("open")
    )
    with pytest.raises(SchemaError) as err:
        validate_bars(df)
    assert (
        "open is finite" in str(err.value) and "row=2" in str(err.value) and "Fix" in str(err.value)
    )
    assert err.value.n_rows == 1


def test_non_positive_price() -> None:
    df = bars().with_columns(low=pl.lit(0.0))
    with pytest.raises(SchemaError, match=r"5 row\(s\) violate 'low > 0'"):
        validate_bars(df)


def test_high_below_open_or_close() -> None:
    df = bars().with_columns(high=pl.col("close") - 0.1)
    with pytest.raises(SchemaError, match=r"high >= max\(open, close\)"):
        validate_bars(df)


def test_low_above_open_or_close() -> None:
    df = bars().with_columns(low=pl.col("open") + 0.1)
    with pytest.raises(SchemaError, match=r"low <= min\(open, close\)"):
        validate_bars(df)


def test_negative_volume() -> None:
    df = bars().with_columns(volume=pl.lit(-1.0))
    with pytest.raises(SchemaError, match="volume >= 0"):
        validate_bars(df)


def test_duplicate_keys_report_count_and_first_rows() -> None:
    df = pl.concat([bars(8), bars(8)])
    with pytest.raises(SchemaError) as err:
        validate_bars(df)
    assert "16 row(s) violate 'unique (symbol, ts)' (showing first 5)" in str(err.value)
    assert "df.unique(subset=['symbol', 'ts']" in str(err.value)


def test_naive_timestamps() -> None:
    df = bars().with_columns(pl.col("ts").dt.replace_time_zone(None))
    with pytest.raises(SchemaError, match=r"naive datetime.*replace_time_zone\('UTC'\)"):
        validate_bars(df)


def test_non_utc_timestamps() -> None:
    df = bars().with_columns(pl.col("ts").dt.convert_time_zone("America/New_York"))
    with pytest.raises(SchemaError, match=r"'America/New_York'.*convert_time_zone\('UTC'\)"):
        validate_bars(df)


def test_bad_vwap_and_trade_count() -> None:
    with pytest.raises(SchemaError, match="vwap"):
        validate_bars(bars().with_columns(vwap=pl.lit(float("nan"))))
    with pytest.raises(SchemaError, match="trade_count >= 0"):
        validate_bars(bars().with_columns(trade_count=pl.lit(-3)))


price = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def bar_rows(draw: st.DrawFn) -> dict:
    o, c = draw(price), draw(price)
    hi = max(o, c) * draw(st.floats(1.0, 1.1))
    lo = min(o, c) * draw(st.floats(0.9, 1.0))
    return {"open": o, "close": c, "high": hi, "low": lo, "volume": draw(st.floats(0, 1e9))}


@settings(max_examples=60, deadline=None)
@given(st.lists(bar_rows(), min_size=1, max_size=30), st.data())
def test_consistent_bars_always_pass_and_one_broken_row_is_always_caught(
    rows: list[dict], data: st.DataObject
) -> None:
    n = len(rows)
    df = pl.DataFrame(rows).with_columns(
        symbol=pl.lit("S"),
        ts=pl.datetime_range(T0, T0 + timedelta(minutes=n - 1), "1m", eager=True, time_zone="UTC"),
    )
    assert validate_bars(df).height == n
    i = data.draw(st.integers(0, n - 1))
    kind = data.draw(st.sampled_from(["high", "low", "volume", "open"]))
    fix = {
        "high": pl.min_horizontal("open", "close") * 0.5,
        "low": pl.max_horizontal("open", "close") * 2,
        "volume": pl.lit(-1.0),
        "open": pl.lit(float("nan")),
    }[kind]
    broken = df.with_columns(
        pl.when(pl.int_range(pl.len()) == i).then(fix).otherwise(pl.col(kind)).alias(kind)
    )
    with pytest.raises(SchemaError) as err:
        validate_bars(broken)
    assert f"row={i}" in str(err.value)
