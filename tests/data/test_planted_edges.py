"""The simulator's planted edges beyond the last-bar reversal: reversion to the session VWAP and a
multi-day trend. Each signal's measured IC matches its documented expected IC within a few
standard errors; at strength 0 the IC is within noise of 0; the defaults leave the bars as they
were before these edges existed."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal
from statsmodels.tsa.arima_process import arma_acovf

from workbench.config import SimulatorConfig, WorkbenchConfig
from workbench.data.sources import _synthetic_model as model
from workbench.data.sources._synthetic_paths import vwap_plan
from workbench.data.sources.synthetic import (
    SyntheticSource,
    trend_expected_ic,
    vwap_expected_ic,
    vwap_signal,
)
from workbench.errors import ConfigError

NY = "America/New_York"
SYMS = [f"SYN{i:03d}" for i in range(8)]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def session_ic(pairs: pl.DataFrame, x: str, y: str) -> tuple[float, float]:
    """Mean per-session IC (zero-mean form: returns of a martingale have mean 0, and demeaning
    inside one session biases a deviation-from-the-session-mean signal) and its standard error
    (sessions are independent draws)."""
    per = pairs.group_by("day").agg(
        (pl.col(x) * pl.col(y)).sum().alias("xy"),
        (pl.col(x) ** 2).sum().alias("xx"),
        (pl.col(y) ** 2).sum().alias("yy"),
    )
    ics = (per["xy"] / (per["xx"] * per["yy"]).sqrt()).to_numpy()
    return float(ics.mean()), float(ics.std(ddof=1) / math.sqrt(len(ics)))


def vwap_pairs(beta: float) -> pl.DataFrame:
    bars = SyntheticSource(seed=8, vwap_reversion=beta).fetch(
        SYMS, "5Min", utc(2024, 1, 1), utc(2024, 4, 1)
    )
    day = pl.col("ts").dt.convert_time_zone(NY).dt.date()
    return (
        bars.with_columns(sig=vwap_signal(bars), day=day)
        .with_columns(nxt=(pl.col("close").shift(-1) / pl.col("close")).log().over("symbol", "day"))
        .drop_nulls("nxt")
    )


# ----------------------------------------------------------------------------- VWAP reversion


@pytest.mark.parametrize("beta", [0.1, 0.2])
def test_vwap_signal_ic_matches_the_expected_ic(beta: float) -> None:
    pairs = vwap_pairs(beta)
    assert pairs.height > 30_000
    mean, se = session_ic(pairs, "sig", "nxt")
    expected = vwap_expected_ic(beta)
    assert expected == pytest.approx({0.1: 0.0735, 0.2: 0.1248}[beta], abs=5e-4)
    # the bars' own VWAP carries volume noise the planted (expected-volume) anchor does not: it
    # reads the edge a little weaker; within 4 standard errors of the documented IC
    assert abs(mean - expected) < 4 * se, (mean, se, expected)
    assert se < 0.01


def test_vwap_null_has_no_edge() -> None:
    mean, se = session_ic(vwap_pairs(0.0), "sig", "nxt")
    assert abs(mean) < 4 * se and se < 0.01, (mean, se)
    assert vwap_expected_ic(0.0) == 0.0


def test_vwap_plan_ic_is_the_law_of_its_paths() -> None:
    """The expected IC is exact for the planted law: simulate that law with plain numpy (bar
    returns r = m nb) and measure the latent signal's IC."""
    plan = vwap_plan(390, 570, 0.0, 0.2)
    rng = np.random.default_rng(0)
    nb = rng.standard_normal((20_000, len(plan.share))) * np.sqrt(plan.share)
    r = nb @ plan.m.T
    dev = r @ plan.deviation.T
    s, y = -dev[:, :-1].ravel(), r[:, 1:].ravel()
    measured = float(np.sum(s * y) / math.sqrt(np.sum(s * s) * np.sum(y * y)))
    assert measured == pytest.approx(vwap_expected_ic(0.2), abs=0.005)
    # the session keeps the variance share q of a martingale's: what the daily state scales by
    assert float((r.sum(axis=1) ** 2).mean()) == pytest.approx(plan.q, rel=0.03)
    assert 0.2 < plan.q < 0.35


def test_vwap_signal_uses_only_the_past() -> None:
    bars = SyntheticSource(seed=3, vwap_reversion=0.2).fetch(
        SYMS[:1], "5Min", utc(2024, 7, 1), utc(2024, 7, 4)
    )
    sig = vwap_signal(bars)
    for n in (1, 50, 100, 150):
        assert_series_equal(vwap_signal(bars.head(n)), sig.head(n))
    with pytest.raises(ConfigError, match="vwap"):
        vwap_signal(bars.drop("vwap"))


# ----------------------------------------------------------------------------- multi-day trend


def momentum_pairs(trend: float, lookback: int = 5, horizon: int = 5) -> pl.DataFrame:
    closes = SyntheticSource(seed=8, trend=trend).daily_closes([f"SYN{i:03d}" for i in range(30)])
    lc = pl.col("close").log()
    return (
        closes.filter(pl.col("session") < pl.date(2025, 1, 1))
        .with_columns(
            m=(lc - lc.shift(lookback)).over("symbol"),
            f=(lc.shift(-horizon) - lc).over("symbol"),
        )
        .drop_nulls()
    )


def symbol_ic(pairs: pl.DataFrame) -> tuple[float, float]:
    """Mean per-symbol IC and its standard error (each symbol's drift is its own)."""
    ics = pairs.group_by("symbol").agg(pl.corr("m", "f").alias("ic"))["ic"].to_numpy()
    return float(ics.mean()), float(ics.std(ddof=1) / math.sqrt(len(ics)))


@pytest.mark.parametrize("trend", [0.2, 0.3])
def test_momentum_ic_matches_the_expected_ic(trend: float) -> None:
    pairs = momentum_pairs(trend)
    assert pairs.height > 50_000  # 30 symbols x ten years
    mean, se = symbol_ic(pairs)
    expected = trend_expected_ic(trend, 5, 5)
    assert abs(mean - expected) < 4 * se and se < 0.012, (mean, se, expected)
    pooled = float(np.corrcoef(pairs["m"], pairs["f"])[0, 1])
    assert abs(pooled - expected) < 4 * se


def test_trend_null_has_no_edge() -> None:
    mean, se = symbol_ic(momentum_pairs(0.0))
    assert abs(mean) < 4 * se and se < 0.012, (mean, se)
    assert trend_expected_ic(0.0) == 0.0


@pytest.mark.parametrize(("lookback", "horizon"), [(5, 5), (1, 1), (10, 3)])
def test_trend_expected_ic_against_statsmodels_autocovariance(lookback: int, horizon: int) -> None:
    """Independent oracle: the AR(1) drift's autocovariance from statsmodels, summed over the
    signal's and the target's windows, plus unit-variance white noise."""
    phi, trend = model.TREND_PERSISTENCE, 0.3
    n = lookback + horizon
    acov = arma_acovf([1.0, -phi], [1.0], nobs=n, sigma2=(1 - phi * phi) * trend * trend)
    cov_mu = acov[np.abs(np.subtract.outer(np.arange(n), np.arange(n)))]
    cov = cov_mu + np.eye(n)  # R_t = mu_t + e_t
    a = np.r_[np.ones(lookback), np.zeros(horizon)]  # R_{t-N+1} .. R_t
    b = np.r_[np.zeros(lookback), np.ones(horizon)]  # R_{t+1} .. R_{t+H}
    oracle = (a @ cov @ b) / math.sqrt((a @ cov @ a) * (b @ cov @ b))
    assert trend_expected_ic(trend, lookback, horizon) == pytest.approx(oracle, rel=1e-12)


def test_daily_closes_are_the_1day_bars() -> None:
    for kw in ({"trend": 0.3}, {"vwap_reversion": 0.2}, {}):
        src = SyntheticSource(seed=8, **kw)
        daily = src.fetch(SYMS[:2], "1Day", utc(2024, 3, 1), utc(2024, 3, 15))
        closes = src.daily_closes(SYMS[:2]).filter(
            pl.col("session").is_between(pl.date(2024, 3, 1), pl.date(2024, 3, 14))
        )
        assert closes.height == daily.height
        np.testing.assert_allclose(
            daily["close"].to_numpy(), closes["close"].to_numpy(), rtol=1e-12
        )


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("kw", [{"vwap_reversion": 0.2}, {"trend": 0.3}])
def test_planted_edges_keep_window_and_symbol_independence(kw: dict[str, float]) -> None:
    src = SyntheticSource(seed=5, **kw)
    full = src.fetch(SYMS[:3], "5Min", utc(2024, 2, 1), utc(2024, 2, 15))
    part = SyntheticSource(seed=5, **kw).fetch(SYMS[1:2], "5Min", utc(2024, 2, 6), utc(2024, 2, 9))
    inner = full.filter(
        (pl.col("symbol") == SYMS[1]) & pl.col("ts").is_between(utc(2024, 2, 6), utc(2024, 2, 9))
    )
    assert_frame_equal(part, inner.filter(pl.col("ts") < utc(2024, 2, 9)))


def test_default_bars_are_unchanged_by_the_new_edges() -> None:
    """Strengths 0 are the simulator from before the new edges (a reference fetch made with the
    code before they existed), and the provenance of old stores still matches.

    The reference holds every 13th row of each column and each column's sum. The tolerance is a
    few ulps of compounding, not a model error: numpy's exp/log kernels differ in the last bit
    between CPUs (AVX2 vs AVX-512 dispatch), so a byte digest of the bars is machine-dependent;
    on any one machine old and new code give the same bytes.
    """
    ref = json.loads((FIXTURES / "synthetic_default_bars.json").read_text())
    step = ref["rows_every"]
    for alpha in (0.0, 0.25):
        bars = SyntheticSource(seed=3, alpha=alpha).fetch(
            ["SYN000", "SYN001"], "5Min", utc(2024, 1, 2), utc(2024, 1, 20)
        )
        assert bars.height == ref["n_rows"]
        for c in ("open", "high", "low", "close", "volume", "vwap"):
            key = f"{alpha}_{c}"
            got = bars[c].to_numpy()
            atol = 1.0 if c == "volume" else 0.0  # whole shares: a last-bit change may round once
            np.testing.assert_allclose(got[::step], ref["values"][key], rtol=1e-10, atol=atol,
                                       err_msg=key)  # fmt: skip
            np.testing.assert_allclose(got.sum(), ref["sums"][key], rtol=1e-10, err_msg=key)
    prov = SyntheticSource(seed=3).provenance()
    assert "vwap_reversion" not in prov and "trend" not in prov
    planted = SyntheticSource(seed=3, vwap_reversion=0.1, trend=0.2).provenance()
    assert planted["vwap_reversion"] == "0.1" and planted["trend"] == "0.2"


FIXTURES = Path(__file__).parent / "fixtures"


def test_bad_strengths_are_named() -> None:
    with pytest.raises(ConfigError, match="'vwap_reversion' parameter"):
        SyntheticSource(vwap_reversion=1.2)
    with pytest.raises(ConfigError, match="'trend' parameter"):
        SyntheticSource(trend=-0.1)
    with pytest.raises(ConfigError, match="alpha\\^2 \\+ vwap_reversion\\^2"):
        SyntheticSource(alpha=0.8, vwap_reversion=0.7)
    with pytest.raises(ConfigError, match="lookback"):
        trend_expected_ic(0.2, 0, 5)


def test_built_from_config() -> None:
    cfg = WorkbenchConfig(simulator=SimulatorConfig(seed=3, vwap_reversion=0.15, trend=0.25))
    s = SyntheticSource.from_config(cfg)
    assert (s.vwap_reversion, s.trend) == (0.15, 0.25)
    assert s.planted_vwap_ic == pytest.approx(vwap_expected_ic(0.15))
    assert s.trend_expected_ic(5, 5) == pytest.approx(trend_expected_ic(0.25, 5, 5))
