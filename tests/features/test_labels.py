"""Labels on hand-built paths: values, barriers, t1 conventions and nulls at the data end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from workbench.config import LabelConfig
from workbench.errors import ConfigError, SchemaError
from workbench.labels import (
    build_labels,
    forward_return,
    label_names,
    label_params,
    mean_reversion,
    trend,
    triple_barrier,
)

T0 = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)


def mk(rows: list[tuple[float, float, float, float]], symbol: str = "A") -> pl.DataFrame:
    o, h, lo, c = (list(x) for x in zip(*rows, strict=True))
    n = len(rows)
    return pl.DataFrame(
        {
            "symbol": [symbol] * n,
            "ts": [T0 + timedelta(minutes=5 * i) for i in range(n)],
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": [1000.0] * n,
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))


FLAT = [(100.0, 100.5, 99.5, 100.0)] * 5  # ATR(2) = 1.0 at row 4


def path(*after: tuple[float, float, float, float]) -> pl.DataFrame:
    quiet = (100.0, 100.3, 99.8, 100.0)
    rows = FLAT + list(after)
    rows += [quiet] * (9 - len(rows))
    return mk(rows)


def row(df: pl.DataFrame, i: int) -> dict:
    return df.row(i, named=True)


def tb(bars: pl.DataFrame, **kw) -> pl.DataFrame:
    return triple_barrier(bars, 3, pt=2.0, sl=1.0, unit="atr", window=2, **kw)


def test_forward_return_values_t1_and_nulls():
    bars = mk([(10.0 + i, 10.5 + i, 9.5 + i, 10.0 + i) for i in range(6)])
    out = forward_return(bars, 2)
    assert out.columns == ["symbol", "ts", "t1", "ret", "label"]
    assert row(out, 0)["ret"] == pytest.approx(13 / 11 - 1)
    assert row(out, 0)["t1"] == bars["ts"][3]
    assert row(out, 2)["t1"] == bars["ts"][5]
    assert out["ret"][3:].null_count() == 3 and out["t1"][3:].null_count() == 3
    logged = forward_return(bars, 2, log=True)
    assert row(logged, 1)["label"] == pytest.approx(np.log(14 / 12))


def test_profit_take_touched_intrabar_exits_at_the_barrier_known_next_bar():
    bars = path((100.0, 101.0, 99.6, 100.8), (100.8, 102.2, 100.5, 101.0))
    r = row(tb(bars), 4)
    assert (r["barrier"], r["label"]) == ("pt", 1.0)
    assert r["ret"] == pytest.approx(0.02)
    assert r["t1"] == bars["ts"][7]  # touched in bar 6, known at the start of bar 7


def test_gap_through_the_stop_exits_at_the_open():
    bars = path((100.0, 100.4, 99.7, 100.1), (98.0, 98.5, 97.5, 98.2))
    r = row(tb(bars), 4)
    assert (r["barrier"], r["label"]) == ("sl", -1.0)
    assert r["ret"] == pytest.approx(-0.02)
    assert r["t1"] == bars["ts"][6]  # an open is known at its bar's start


def test_both_barriers_in_one_bar_assume_the_stop_first():
    bars = path((100.0, 100.4, 99.7, 100.1), (100.1, 102.5, 98.5, 100.0))
    r = row(tb(bars), 4)
    assert r["barrier"] == "sl" and r["ret"] == pytest.approx(-0.01)


def test_vertical_barrier_exits_at_the_open_after_the_horizon():
    bars = path(
        (100.0, 100.4, 99.7, 100.3),
        (100.3, 100.6, 100.1, 100.5),
        (100.5, 100.7, 100.2, 100.6),
        (100.6, 100.9, 100.4, 100.8),
    )
    r = row(tb(bars), 4)
    assert r["barrier"] == "vertical"
    assert r["t1"] == bars["ts"][8]
    assert r["ret"] == pytest.approx(100.6 / 100.0 - 1)
    assert r["label"] == 1.0
    assert row(tb(bars, vertical="zero"), 4)["label"] == 0.0
    out = tb(bars)
    assert out["t1"][6:].null_count() == 3  # rows 6..8: bar i+1+3 is not in the data
    assert out["t1"][:2].null_count() == 2  # rows 0..1: ATR(2) not known yet


def test_meta_labels_with_a_short_primary_side():
    stop = path((100.0, 100.4, 99.7, 100.1), (100.1, 101.2, 99.9, 101.0))
    take = path((100.0, 100.4, 99.7, 100.1), (100.1, 100.3, 97.9, 98.5))
    for bars, barrier, meta in ((stop, "sl", 0.0), (take, "pt", 1.0)):
        sided = bars.with_columns(pl.lit(-1.0).alias("side"))
        r = row(tb(sided, side="side"), 4)
        assert (r["barrier"], r["label"], r["side"]) == (barrier, meta, -1.0)
        assert np.sign(r["ret"]) == (1 if meta else -1)
    flat = stop.with_columns(pl.lit(0.0).alias("side"))
    assert row(tb(flat, side="side"), 4)["label"] is None
    frame = stop.select("symbol", "ts", pl.lit(-1.0).alias("side"))
    assert row(tb(stop, side=frame), 4)["barrier"] == "sl"


def test_mean_reversion_takes_profit_at_the_mean():
    rows = [(100.0, 100.5, 99.5, 100.0)] * 4 + [(100.0, 100.2, 96.8, 97.0)]
    rows += [(97.2, 98.0, 97.0, 97.8), (97.8, 99.5, 97.6, 99.2)] + [(99.0, 99.3, 98.8, 99.0)] * 3
    bars = mk(rows)
    out = mean_reversion(bars, 3, window=3, sl=2.0, unit="atr", unit_window=2)
    r = row(out, 4)
    assert r["side"] == 1.0 and r["barrier"] == "pt"
    assert r["ret"] == pytest.approx(99.0 / 97.2 - 1) and r["label"] == r["ret"]
    assert r["t1"] == bars["ts"][7] and r["meta_label"] == 1.0
    high_z = mean_reversion(bars, 3, window=3, entry_z=5.0, unit_window=2)
    assert row(high_z, 4)["label"] is None


def test_trend_scanning_on_a_straight_line_and_against_numpy_ols():
    line = mk([(100 * np.exp(0.01 * i),) * 4 for i in range(30)])
    out = trend(line, 10, min_window=4, t_max=20.0)
    r = row(out, 0)
    assert r["label"] == 20.0 and r["side"] == 1.0 and r["window"] == 4
    assert r["t1"] == line["ts"][11]
    assert r["ret"] == pytest.approx(np.exp(0.04) - 1)
    assert out["label"][30 - 11 :].null_count() == 11

    rng = np.random.default_rng(5)
    o = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 40)))
    noisy = mk([(x, x * 1.01, x * 0.99, x) for x in o])
    got = row(trend(noisy, 12, min_window=3, t_max=1e9), 2)
    y = np.log(o[3:])
    ts_ = []
    for L in range(3, 13):
        k = np.arange(L + 1.0)
        X = np.c_[np.ones_like(k), k]
        beta, res, *_ = np.linalg.lstsq(X, y[: L + 1] - y[0], rcond=None)
        se = np.sqrt(res[0] / (L - 1) / ((k - k.mean()) ** 2).sum())
        ts_.append(beta[1] / se)
    best = int(np.argmax(np.abs(ts_)))
    assert got["label"] == pytest.approx(ts_[best], rel=1e-9)
    assert got["window"] == best + 3


def test_build_labels_from_config_and_registry():
    bars = mk([(10.0 + i, 10.5 + i, 9.5 + i, 10.0 + i) for i in range(20)])
    a = build_labels(bars, LabelConfig(kind="forward_return", horizon=3))
    assert a.equals(forward_return(bars, 3))
    b = build_labels(bars, "triple_barrier", 4, pt=1.0, sl=1.0, window=3)
    assert b.equals(triple_barrier(bars, 4, pt=1.0, sl=1.0, window=3))
    assert set(label_names()) >= {"forward_return", "triple_barrier", "mean_reversion", "trend"}
    assert label_params("trend")["min_window"] == 6
    with pytest.raises(ConfigError, match=r"unknown label 'trnd' \(did you mean 'trend'\?\)"):
        build_labels(bars, "trnd")


def test_label_errors_name_the_parameter_and_value(bars):
    with pytest.raises(
        ConfigError, match="The 'horizon' parameter of forward_return must be an int >= 1. Got 0"
    ):
        forward_return(bars, 0)
    with pytest.raises(ConfigError, match="The 'unit' parameter of triple_barrier must be one of"):
        triple_barrier(bars, 5, unit="sigma")
    with pytest.raises(SchemaError, match="names column 'sid'"):
        triple_barrier(bars, 5, side="sid")
    with pytest.raises(SchemaError, match="missing column"):
        forward_return(bars.drop("open"), 5)


def test_labels_on_many_symbols_keep_one_row_per_bar(bars):
    for name in label_names():
        out = build_labels(bars, name, 12)
        assert out.select("symbol", "ts").equals(bars.select("symbol", "ts"))
        known = out.filter(pl.col("t1").is_not_null())
        assert known["ret"].null_count() == 0 and known["label"].null_count() == 0
        assert (known["t1"] > known["ts"]).all()
