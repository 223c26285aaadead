"""Indicators without a TA-Lib counterpart, checked against direct numpy/polars formulas."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from workbench.errors import ConfigError
from workbench.features import indicators as ind


def _arr(df: pl.DataFrame, col: str) -> np.ndarray:
    return df.get_column(col).cast(pl.Float64).fill_null(np.nan).to_numpy()


def _one(bars: pl.DataFrame, symbol: str = "SYM01") -> pl.DataFrame:
    return bars.filter(pl.col("symbol") == symbol)


def test_returns_simple_and_log(bars):
    out = bars.with_columns(
        ind.returns(periods=3).alias("r"), ind.returns(periods=3, log=True).alias("lr")
    )
    one = _one(out)
    c = _arr(one, "close")
    np.testing.assert_allclose(_arr(one, "r")[3:], c[3:] / c[:-3] - 1, rtol=1e-12)
    np.testing.assert_allclose(_arr(one, "lr")[3:], np.log(c[3:] / c[:-3]), rtol=1e-12)
    assert np.isnan(_arr(one, "r")[:3]).all()


def test_session_vwap_resets_each_new_york_session(bars):
    out = bars.with_columns(ind.vwap().alias("v"), ind.vwap_zscore().alias("z"))
    local = pl.col("ts").dt.convert_time_zone("America/New_York")
    ref = bars.with_columns(local.dt.date().alias("d")).with_columns(
        ((pl.col("vwap") * pl.col("volume")).cum_sum() / pl.col("volume").cum_sum())
        .over("symbol", "d")
        .alias("v_ref")
    )
    np.testing.assert_allclose(_arr(out, "v"), _arr(ref, "v_ref"), rtol=1e-12)
    first = ref.with_columns(pl.col("ts").rank("ordinal").over("symbol", "d").alias("k"))
    opening = out.filter(first.get_column("k") == 1)
    # every session's first bar: VWAP is that bar's price and the z-score is undefined
    np.testing.assert_allclose(_arr(opening, "v"), _arr(opening, "vwap"), rtol=1e-12)
    assert opening.get_column("z").null_count() == opening.height
    assert opening.height == 4 * 10  # 4 symbols x 10 sessions, across the DST change


def test_vwap_falls_back_to_typical_price_when_bar_vwap_is_null(bars):
    no_vwap = bars.with_columns(pl.lit(None, dtype=pl.Float64).alias("vwap"))
    out = no_vwap.with_columns(ind.vwap().alias("v"))
    tp = (pl.col("high") + pl.col("low") + pl.col("close")) / 3
    ref = no_vwap.with_columns(tp.alias("vwap")).with_columns(ind.vwap().alias("v"))
    np.testing.assert_allclose(_arr(out, "v"), _arr(ref, "v"), rtol=1e-12)


def test_vwap_zscore_matches_session_band_formula(bars):
    one = _one(bars).with_columns(ind.vwap_zscore().alias("z"))
    day = one.get_column("ts").dt.convert_time_zone("America/New_York").dt.date().to_numpy()
    p, v, c, z = (_arr(one, k) for k in ("vwap", "volume", "close", "z"))
    for d in np.unique(day)[:3]:
        idx = np.flatnonzero(day == d)
        for j in range(1, len(idx)):
            w = idx[: j + 1]
            m = np.average(p[w], weights=v[w])
            sd = np.sqrt(np.average((p[w] - m) ** 2, weights=v[w]))
            assert z[idx[j]] == pytest.approx((c[idx[j]] - m) / sd, rel=1e-8)


def test_time_of_day_and_day_of_week_follow_new_york_clock():
    ts = [
        datetime(2024, 3, 8, 14, 30, tzinfo=UTC),  # Fri 09:30 EST
        datetime(2024, 3, 11, 13, 30, tzinfo=UTC),  # Mon 09:30 EDT (after the DST change)
        datetime(2024, 3, 11, 19, 55, tzinfo=UTC),  # Mon 15:55 EDT
        datetime(2024, 3, 10, 4, 30, tzinfo=UTC),  # Sat 23:30 EST
    ]
    df = pl.DataFrame({"ts": ts}).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    out = df.with_columns(ind.time_of_day().alias("tod"), ind.day_of_week().alias("dow"))
    assert out.get_column("tod").to_list() == [570.0, 570.0, 955.0, 1410.0]
    assert out.get_column("dow").to_list() == [4.0, 0.0, 0.0, 5.0]


def _cs_reference(h, lo, c, window):
    s = np.full(c.size, np.nan)
    for t in range(1, c.size):
        shift = 0.0
        if lo[t] > c[t - 1]:
            shift = lo[t] - c[t - 1]
        elif h[t] < c[t - 1]:
            shift = h[t] - c[t - 1]
        ht, lt = h[t] - shift, lo[t] - shift
        beta = np.log(h[t - 1] / lo[t - 1]) ** 2 + np.log(ht / lt) ** 2
        gamma = np.log(max(h[t - 1], ht) / min(lo[t - 1], lt)) ** 2
        k = 3 - 2 * np.sqrt(2)
        alpha = (np.sqrt(2 * beta) - np.sqrt(beta)) / k - np.sqrt(gamma / k)
        s[t] = max(0.0, 2 * (np.exp(alpha) - 1) / (1 + np.exp(alpha)))
    out = np.full(c.size, np.nan)
    for t in range(window, c.size):
        out[t] = s[t - window + 1 : t + 1].mean()
    return out


def test_spread_matches_corwin_schultz_reference(bars):
    one = _one(bars).with_columns(ind.spread(window=10).alias("s"))
    want = _cs_reference(_arr(one, "high"), _arr(one, "low"), _arr(one, "close"), 10)
    got = _arr(one, "s")
    np.testing.assert_allclose(got[10:], want[10:], rtol=1e-10, atol=1e-15)
    assert np.isnan(got[:10]).all() and (got[10:] >= 0).all()


def test_order_flow_imbalance_bounds_and_extremes():
    df = pl.DataFrame(
        {
            "symbol": ["A"] * 6,
            "high": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
            "low": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            "close": [2.0, 2.0, 1.0, 1.0, 1.5, 2.0],
            "volume": [10.0, 10.0, 10.0, 30.0, 10.0, 0.0],
        }
    )
    out = df.with_columns(ind.order_flow_imbalance(window=2).alias("o"))
    assert out.get_column("o").to_list() == [None, 1.0, 0.0, -1.0, -0.75, 0.0]


def test_trend_strength_is_plus_minus_one_on_straight_lines_and_bounded(bars):
    df = pl.DataFrame(
        {"symbol": ["A"] * 10 + ["B"] * 10, "close": [*range(1, 11), *range(10, 0, -1)]}
    ).with_columns(pl.col("close").cast(pl.Float64))
    out = df.with_columns(ind.trend_strength(window=4).alias("t"))
    vals = out.get_column("t").to_list()
    assert vals[:4] == [None] * 4 and set(vals[4:10]) == {1.0}
    assert vals[10:14] == [None] * 4 and set(vals[14:]) == {-1.0}
    real = bars.with_columns(ind.trend_strength().alias("t")).get_column("t").drop_nulls()
    assert real.abs().max() <= 1.0


def test_realized_vol_and_ema_slope_formulas(bars):
    one = _one(bars).with_columns(
        ind.realized_vol(window=5).alias("rv"),
        ind.ema_slope(window=10, lag=3).alias("es"),
        ind.ema(window=10).alias("e"),
    )
    c = _arr(one, "close")
    r = np.log(c[1:] / c[:-1])
    want = np.sqrt(np.convolve(r**2, np.ones(5), "valid"))
    np.testing.assert_allclose(_arr(one, "rv")[5:], want, rtol=1e-12)
    e = _arr(one, "e")
    np.testing.assert_allclose(_arr(one, "es")[12:], (e[12:] / e[9:-3] - 1) / 3, rtol=1e-12)


def test_cross_sectional_rank_and_zscore(bars):
    out = bars.with_columns(
        ind.cs_rank(periods=6).alias("rk"),
        ind.cs_zscore(periods=6).alias("z"),
        ind.returns(periods=6).alias("r"),
    ).drop_nulls(["r"])
    stats = out.group_by("ts").agg(
        pl.col("rk").min().alias("lo"),
        pl.col("rk").max().alias("hi"),
        pl.col("z").mean().alias("zm"),
        pl.col("z").std().alias("zs"),
        pl.corr(pl.col("rk"), pl.col("r"), method="spearman").alias("rho"),
    )
    assert (stats["lo"] == 0.0).all() and (stats["hi"] == 1.0).all()
    np.testing.assert_allclose(stats["zm"].to_numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(stats["zs"].to_numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(stats["rho"].to_numpy(), 1.0, rtol=1e-12)


def test_kernels_respect_symbol_boundaries(bars):
    """A symbol's values do not depend on the symbol before it in the frame."""
    both = bars.filter(pl.col("symbol").is_in(["SYM00", "SYM01"]))
    alone = bars.filter(pl.col("symbol") == "SYM01")
    exprs = [
        ind.ema().alias("e"),
        ind.rsi().alias("r"),
        ind.adx().alias("a"),
        ind.vwap().alias("v"),
    ]
    a = both.with_columns(exprs).filter(pl.col("symbol") == "SYM01")
    b = alone.with_columns(exprs)
    assert a.equals(b)


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (
            ind.rsi,
            {"window": 1},
            "The 'window' parameter of rsi must be an int >= 2. Got 1 instead.",
        ),
        (ind.ema, {"window": 2.5}, "The 'window' parameter of ema must be an int >= 1. Got 2.5"),
        (ind.sma, {"window": True}, "The 'window' parameter of sma must be an int >= 1. Got True"),
        (ind.macd, {"fast": 30, "slow": 26}, "The 'fast' parameter of macd must be smaller"),
        (ind.bollinger, {"k": -1.0}, "The 'k' parameter of bollinger must be a finite number > 0"),
        (ind.zscore, {"column": ""}, "The 'column' parameter of zscore must be a column name"),
        (ind.cs_rank, {"periods": -1}, "The 'periods' parameter of cs_rank must be an int >= 0"),
    ],
)
def test_bad_parameters_name_parameter_value_and_fix(factory, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        factory(**kwargs)
