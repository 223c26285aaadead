"""The embedded market simulator: determinism, window independence, calendar, realism, alpha."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

from workbench.config import SimulatorConfig, WorkbenchConfig
from workbench.data import calendar
from workbench.data.schema import BAR_SCHEMA, validate_bars
from workbench.data.sources import _synthetic_model as model
from workbench.data.sources.base import Source, get_source_factory
from workbench.data.sources.synthetic import (
    EPOCH,
    SyntheticSource,
    expected_ic,
    planted_signal,
)
from workbench.errors import ConfigError, SourceError

NY = "America/New_York"
TIMEFRAMES = ["1Min", "5Min", "15Min", "1Hour", "1Day"]
EVERY = {"1Min": "1m", "5Min": "5m", "15Min": "15m", "1Hour": "1h"}
SYMS = [f"SYN{i:03d}" for i in range(4)]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def src() -> SyntheticSource:
    return SyntheticSource(seed=11, alpha=0.1)


@pytest.fixture(scope="module")
def july(src: SyntheticSource) -> pl.DataFrame:
    """One-minute bars over the 2024 Independence Day week (holiday, early close)."""
    return src.fetch(SYMS, "1Min", utc(2024, 6, 28), utc(2024, 7, 10))


def in_session_pairs(bars: pl.DataFrame) -> pl.DataFrame:
    """Attach the planted signal and the next bar's log return within the same session."""
    day = pl.col("ts").dt.convert_time_zone(NY).dt.date()
    return (
        bars.with_columns(sig=planted_signal(bars), day=day)
        .with_columns(
            ret=(pl.col("close") / pl.col("open")).log(),
            nxt=(pl.col("close").shift(-1) / pl.col("close")).log().over("symbol", "day"),
        )
        .drop_nulls("nxt")
    )


def daily_ic(pairs: pl.DataFrame, x: str, y: str) -> tuple[float, float]:
    """Return the mean per-session IC and its standard error (sessions are independent draws)."""
    ics = pairs.group_by("day").agg(pl.corr(x, y).alias("ic"))["ic"].to_numpy()
    return float(ics.mean()), float(ics.std(ddof=1) / math.sqrt(len(ics)))


# ----------------------------------------------------------------------------- contract


def test_registered_and_built_from_config() -> None:
    assert get_source_factory("synthetic") is SyntheticSource
    cfg = WorkbenchConfig(simulator=SimulatorConfig(seed=3, alpha=0.05, n_sectors=2))
    s = SyntheticSource.from_config(cfg)
    assert isinstance(s, Source)
    assert (s.seed, s.alpha, s.n_sectors, s.calendar) == (3, 0.05, 2, "XNYS")
    assert s.planted_ic == 0.05
    prov = s.provenance()
    assert {"source", "seed", "alpha", "generator"} <= set(prov)
    assert all(isinstance(v, str) for v in prov.values())
    assert prov["source"] == "synthetic" and prov["seed"] == "3"
    assert SyntheticSource(seed=4).provenance() != SyntheticSource(seed=3).provenance()


@pytest.mark.parametrize("tf", TIMEFRAMES)
def test_bars_pass_the_contract(src: SyntheticSource, tf: str) -> None:
    bars = src.fetch(SYMS, tf, utc(2024, 6, 28), utc(2024, 7, 10))
    assert dict(bars.schema) == BAR_SCHEMA
    assert_frame_equal(validate_bars(bars), bars)
    assert bars["symbol"].unique().sort().to_list() == SYMS
    assert (bars["vwap"] >= bars["low"]).all() and (bars["vwap"] <= bars["high"]).all()
    assert (bars["volume"] >= 1).all() and (bars["volume"] == bars["volume"].round()).all()
    assert (bars["trade_count"] >= 1).all()
    assert (bars["trade_count"] <= bars["volume"]).all()


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ConfigError, match="'alpha' parameter of SyntheticSource"):
        SyntheticSource(alpha=1.5)
    with pytest.raises(ConfigError, match="'n_sectors'"):
        SyntheticSource(n_sectors=0)
    with pytest.raises(ConfigError, match="XNYS"):
        SyntheticSource(calendar="XNYZ")
    with pytest.raises(SourceError, match="sequence of non-empty strings"):
        SyntheticSource().fetch("SYN000", "5Min", utc(2024, 1, 2), utc(2024, 1, 3))


def test_empty_windows(src: SyntheticSource) -> None:
    assert src.fetch(SYMS, "5Min", utc(2024, 7, 6), utc(2024, 7, 7)).height == 0  # Saturday
    assert src.fetch(SYMS, "5Min", utc(2024, 7, 9), utc(2024, 7, 8)).height == 0
    assert src.fetch([], "5Min", utc(2024, 7, 8), utc(2024, 7, 9)).height == 0
    before = src.fetch(SYMS, "1Day", utc(2014, 12, 1), utc(2015, 1, 8))
    assert before["ts"].min().date() >= EPOCH


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bars_different_seed_different_bars() -> None:
    args = (["SYN000", "SYN001"], "5Min", utc(2024, 3, 1), utc(2024, 3, 5))
    a = SyntheticSource(seed=1).fetch(*args)
    assert_frame_equal(a, SyntheticSource(seed=1).fetch(*args))
    b = SyntheticSource(seed=2).fetch(*args)
    assert a.height == b.height
    assert not np.allclose(a["close"].to_numpy(), b["close"].to_numpy())


@settings(max_examples=15, deadline=None)
@given(
    tf=st.sampled_from(TIMEFRAMES),
    cut=st.integers(0, 12 * 24 * 60 - 1),
)
def test_window_independence(src: SyntheticSource, tf: str, cut: int) -> None:
    lo, hi = utc(2024, 6, 28), utc(2024, 7, 10)
    mid = lo + timedelta(minutes=cut)
    whole = src.fetch(SYMS[:2], tf, lo, hi)
    parts = pl.concat([src.fetch(SYMS[:2], tf, lo, mid), src.fetch(SYMS[:2], tf, mid, hi)]).sort(
        "symbol", "ts"
    )
    assert_frame_equal(parts, whole)


_SYMBOL = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-Ä", min_size=1, max_size=6)


@settings(max_examples=15, deadline=None)
@given(
    tf=st.sampled_from(TIMEFRAMES), symbols=st.lists(_SYMBOL, min_size=2, max_size=4, unique=True)
)
def test_symbol_independence(tf: str, symbols: list[str]) -> None:
    lo, hi = utc(2024, 7, 1), utc(2024, 7, 4)
    together = SyntheticSource(seed=5, alpha=0.2).fetch(symbols, tf, lo, hi)
    alone = SyntheticSource(seed=5, alpha=0.2).fetch(symbols[:1], tf, lo, hi)
    assert alone.height > 0
    assert_frame_equal(alone, together.filter(pl.col("symbol") == symbols[0]))


def test_later_epoch_state_is_independent_of_the_first_request() -> None:
    late = SyntheticSource(seed=9).fetch(["X"], "5Min", utc(2023, 5, 1), utc(2023, 5, 2))
    s = SyntheticSource(seed=9)
    s.fetch(["X", "Y"], "1Day", utc(2016, 1, 1), utc(2016, 2, 1))
    assert_frame_equal(s.fetch(["X"], "5Min", utc(2023, 5, 1), utc(2023, 5, 2)), late)


# ----------------------------------------------------------------------------- calendar


@pytest.mark.parametrize("tf", TIMEFRAMES)
def test_bar_stamps_match_the_calendar(src: SyntheticSource, tf: str) -> None:
    bars = src.fetch(SYMS[:2], tf, utc(2024, 3, 6), utc(2024, 3, 14))
    expected = calendar.bar_starts(tf, date(2024, 3, 6), date(2024, 3, 13))
    for sym in SYMS[:2]:
        assert_series_equal(bars.filter(pl.col("symbol") == sym)["ts"], expected)


def test_holiday_and_early_close(july: pl.DataFrame) -> None:
    local = july.with_columns(t=pl.col("ts").dt.convert_time_zone(NY))
    days = local["t"].dt.date().unique().sort().to_list()
    assert date(2024, 7, 4) not in days
    assert all(d.weekday() < 5 for d in days)
    early = local.filter(pl.col("t").dt.date() == date(2024, 7, 3))
    assert early["ts"].max() == utc(2024, 7, 3, 16, 59)  # closes 13:00 ET
    assert early.height == 4 * 210


# ----------------------------------------------------------------------------- aggregation


def aggregate_minutes(minutes: pl.DataFrame, tf: str) -> pl.DataFrame:
    local = pl.col("ts").dt.convert_time_zone(NY)
    if tf == "1Day":
        key = local.dt.date().cast(pl.Datetime("us")).dt.replace_time_zone(NY)
    else:
        key = local.dt.truncate(EVERY[tf])
    return (
        minutes.group_by("symbol", key.dt.convert_time_zone("UTC").alias("ts"), maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
            ((pl.col("vwap") * pl.col("volume")).sum() / pl.col("volume").sum()).alias("vwap"),
            pl.col("trade_count").sum(),
        )
        .sort("symbol", "ts")
    )


@pytest.mark.parametrize("tf", ["5Min", "15Min", "1Hour", "1Day"])
def test_coarser_timeframes_aggregate_the_minute_path(
    src: SyntheticSource, july: pl.DataFrame, tf: str
) -> None:
    got = src.fetch(SYMS, tf, utc(2024, 6, 28), utc(2024, 7, 10))
    want = aggregate_minutes(july, tf)
    assert_frame_equal(got.drop("vwap"), want.drop("vwap").cast(got.drop("vwap").schema))
    np.testing.assert_allclose(got["vwap"].to_numpy(), want["vwap"].to_numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------- realism


def test_intraday_u_shapes(july: pl.DataFrame) -> None:
    full_days = july.filter(pl.col("ts").dt.date() != date(2024, 7, 3))
    t = pl.col("ts").dt.convert_time_zone(NY)
    minute = t.dt.hour().cast(pl.Int32) * 60 + t.dt.minute().cast(pl.Int32)
    part = (
        pl.when(minute < 10 * 60)
        .then(pl.lit("open"))
        .when(minute >= 15 * 60 + 30)
        .then(pl.lit("close"))
        .when((minute >= 12 * 60) & (minute < 14 * 60))
        .then(pl.lit("midday"))
    )
    stats = (
        full_days.with_columns(
            part=part,
            absret=(pl.col("close") / pl.col("open")).log().abs(),
            range_=(pl.col("high") / pl.col("low")).log(),
        )
        .drop_nulls("part")
        .group_by("part")
        .agg(pl.col("volume", "absret", "range_").mean())
    )
    s = {r["part"]: r for r in stats.iter_rows(named=True)}
    for col in ("volume", "absret", "range_"):
        assert s["open"][col] > 1.3 * s["midday"][col], col
        assert s["close"][col] > 1.1 * s["midday"][col], col


def test_overnight_gaps_and_volatility_clustering() -> None:
    daily = SyntheticSource(seed=3).fetch(["AAA", "BBB"], "1Day", utc(2018, 1, 1), utc(2023, 1, 1))
    d = daily.with_columns(
        cc=(pl.col("close") / pl.col("close").shift(1)).log().over("symbol"),
        gap=(pl.col("open") / pl.col("close").shift(1)).log().over("symbol"),
    ).drop_nulls()
    share = d["gap"].var() / d["cc"].var()
    assert 0.05 < share < 0.35
    ann_vol = d["cc"].std() * math.sqrt(252)
    assert 0.12 < ann_vol < 0.5
    absr = d.with_columns(prev=pl.col("cc").abs().shift(1).over("symbol")).drop_nulls()
    clustering = np.corrcoef(absr["cc"].abs(), absr["prev"])[0, 1]
    assert clustering > 0.05  # GARCH and regimes: big moves follow big moves
    lag1 = np.corrcoef(absr["cc"], absr["cc"].shift(1).fill_null(0.0))[0, 1]
    assert abs(lag1) < 0.08  # but direction is not predictable


def test_regimes_switch_and_scale_market_variance() -> None:
    f = model.factor_paths(seed=1, n_days=2500, n_sectors=3, annual_vol=0.25)
    share = f.regime.mean()
    assert 0.05 < share < 0.45
    calm, vol = f.var[f.regime == 0, 0].mean(), f.var[f.regime == 1, 0].mean()
    assert vol > 2 * calm


def test_market_factor_correlates_the_cross_section() -> None:
    s = SyntheticSource(seed=21, n_sectors=2)
    syms = [f"S{i:02d}" for i in range(10)]
    bars = s.fetch(syms, "5Min", utc(2024, 2, 1), utc(2024, 3, 1))
    wide = (
        bars.with_columns(r=(pl.col("close") / pl.col("open")).log())
        .pivot(on="symbol", index="ts", values="r")
        .sort("ts")
    )
    corr = np.corrcoef(wide.select(syms).to_numpy().T)
    sector = s.symbol_info(syms)["sector"].to_numpy()
    same = sector[:, None] == sector[None, :]
    off = ~np.eye(len(syms), dtype=bool)
    assert corr[off].mean() > 0.1
    assert corr[off & same].mean() > corr[off & ~same].mean()


# ----------------------------------------------------------------------------- planted alpha


def test_planted_signal_uses_only_the_bar_itself(src: SyntheticSource) -> None:
    bars = src.fetch(SYMS[:2], "5Min", utc(2024, 7, 1), utc(2024, 7, 3))
    before = bars.clone()
    sig = planted_signal(bars)
    assert_frame_equal(bars, before)  # input untouched
    assert sig.len() == bars.height and sig.name == "planted_signal"
    truncated = planted_signal(bars.head(100))
    assert_series_equal(truncated, sig.head(100))  # no look-ahead
    with pytest.raises(ConfigError, match="open"):
        planted_signal(bars.drop("open"))


def test_expected_ic() -> None:
    assert expected_ic(0.2, 1) == pytest.approx(0.2)
    assert expected_ic(0.0, 12) == 0.0
    assert 0 < expected_ic(0.2, 12) < expected_ic(0.2, 1)
    with pytest.raises(ConfigError, match="horizon"):
        expected_ic(0.1, 0)


@pytest.fixture(scope="module")
def alpha_bars() -> dict[float, pl.DataFrame]:
    syms = [f"SYN{i:03d}" for i in range(12)]
    return {
        a: in_session_pairs(
            SyntheticSource(seed=8, alpha=a).fetch(syms, "5Min", utc(2024, 1, 1), utc(2024, 4, 1))
        )
        for a in (0.0, 0.2)
    }


def test_planted_ic_is_recovered(alpha_bars: dict[float, pl.DataFrame]) -> None:
    pairs = alpha_bars[0.2]
    assert pairs.height > 50_000
    pooled = np.corrcoef(pairs["sig"], pairs["nxt"])[0, 1]
    assert pooled == pytest.approx(0.2, abs=0.03)
    mean, se = daily_ic(pairs, "sig", "nxt")
    assert abs(mean - 0.2) < max(4 * se, 0.02)


def test_alpha_zero_is_a_martingale(alpha_bars: dict[float, pl.DataFrame]) -> None:
    pairs = alpha_bars[0.0]
    # the planted signal is minus the bar's return: its IC is minus the lag-1 autocorrelation
    mean, se = daily_ic(pairs, "sig", "nxt")
    assert abs(mean) < 4 * se
    assert abs(np.corrcoef(pairs["sig"], pairs["nxt"])[0, 1]) < 0.02


@pytest.mark.parametrize("tf", ["1Min", "15Min"])
def test_alpha_zero_returns_are_uncorrelated_at_other_timeframes(tf: str) -> None:
    bars = SyntheticSource(seed=8).fetch(SYMS, tf, utc(2024, 1, 1), utc(2024, 3, 1))
    mean, se = daily_ic(in_session_pairs(bars), "ret", "nxt")
    assert abs(mean) < 4 * se


def test_docstring_examples_run() -> None:
    import doctest

    from workbench.data.sources import synthetic

    result = doctest.testmod(synthetic, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
