"""Diagnostics on constructed data with known IC, rank IC, ICIR and deciles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest

from workbench.features.diagnostics import (
    decile_returns,
    diagnostics_figures,
    feature_correlation,
    ic_series,
    ic_summary,
)

N_SYM, N_TS = 50, 40
RHO = np.where(np.arange(N_TS) % 2 == 0, 0.2, 0.4)  # per-period IC alternates 0.2 / 0.4


def _std(v: np.ndarray) -> np.ndarray:
    v = v - v.mean()
    return v / np.sqrt((v**2).mean())


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(11)
    t0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    rows_f, rows_l = [], []
    for t in range(N_TS):
        y = _std(rng.normal(size=N_SYM))
        e = rng.normal(size=N_SYM)
        e = _std(e - (e @ y) / (y @ y) * y)  # orthogonal to y: Pearson IC is exactly RHO[t]
        x = RHO[t] * y + np.sqrt(1 - RHO[t] ** 2) * e
        ts = t0 + timedelta(minutes=5 * t)
        for s in range(N_SYM):
            rows_f.append(
                {
                    "symbol": f"S{s:02d}",
                    "ts": ts,
                    "signal": x[s],
                    "same": y[s],
                    "mono": float(np.exp(3 * y[s])),
                    "flip": -y[s],
                    "const": 1.0,
                }
            )
            rows_l.append({"symbol": f"S{s:02d}", "ts": ts, "label": y[s]})
    return pl.DataFrame(rows_f), pl.DataFrame(rows_l)


def test_ic_summary_recovers_known_ic_and_icir(frames):
    feats, labels = frames
    s = ic_summary(feats, labels, columns=["signal", "same", "mono", "flip"], by="ts")
    row = {r["feature"]: r for r in s.iter_rows(named=True)}
    assert row["signal"]["ic"] == pytest.approx(0.3, abs=1e-12)
    assert row["signal"]["ic_std"] == pytest.approx(np.std(RHO, ddof=1), abs=1e-12)
    assert row["signal"]["icir"] == pytest.approx(0.3 / np.std(RHO, ddof=1), rel=1e-10)
    assert row["same"]["ic"] == pytest.approx(1.0) and row["same"]["rank_ic"] == pytest.approx(1.0)
    assert row["flip"]["rank_ic"] == pytest.approx(-1.0)
    assert row["mono"]["rank_ic"] == pytest.approx(1.0) and row["mono"]["ic"] < 0.95
    assert row["signal"]["n_periods"] == N_TS
    assert s["feature"][0] in ("same", "mono", "flip")  # sorted by |rank IC|


def test_ic_series_has_one_row_per_period_and_skips_constant_features(frames):
    feats, labels = frames
    series = ic_series(feats, labels, columns=["signal", "const"], method="pearson")
    assert series.filter(pl.col("feature") == "signal").height == N_TS
    assert series.filter(pl.col("feature") == "const").height == 0
    np.testing.assert_allclose(series.filter(pl.col("feature") == "signal")["ic"], RHO, atol=1e-12)
    pooled = ic_series(feats, labels, columns=["same"], by=None)
    assert pooled.height == 1 and pooled["n"][0] == N_SYM * N_TS


def test_decile_returns_on_a_perfect_feature():
    ts = datetime(2024, 1, 2, tzinfo=UTC)
    feats = pl.DataFrame(
        {"symbol": [f"S{i}" for i in range(100)], "ts": [ts] * 100, "f": np.arange(100.0)}
    )
    labels = feats.select("symbol", "ts", pl.col("f").alias("label"))
    d = decile_returns(feats, labels, "f", n_bins=10)
    assert d["bin"].to_list() == list(range(1, 11))
    assert d["count"].to_list() == [10] * 10
    np.testing.assert_allclose(d["mean"], np.arange(10) * 10 + 4.5)


def test_feature_correlation_matrix(frames):
    feats, _ = frames
    corr = feature_correlation(feats, ["same", "mono", "flip", "const"])
    m = corr.select("same", "mono", "flip").head(3).to_numpy()
    np.testing.assert_allclose(m, [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-12)
    assert corr["const"].null_count() == 4
    pearson = feature_correlation(feats, ["same", "mono"], method="pearson")
    assert pearson["mono"][0] < 0.95


def test_figures_are_plotly_figures_with_the_data(frames):
    feats, labels = frames
    figs = diagnostics_figures(feats, labels, columns=["signal", "same"], n_bins=5)
    assert set(figs) == {"ic_summary", "ic_series", "correlation", "deciles_signal", "deciles_same"}
    assert all(isinstance(f, go.Figure) for f in figs.values())
    bars = figs["ic_summary"].data
    assert [t.name for t in bars] == ["IC", "rank IC"]
    assert list(figs["deciles_same"].data[0].x) == [1, 2, 3, 4, 5]
    assert figs["correlation"].data[0].type == "heatmap"


def test_errors_name_the_missing_column(frames):
    feats, labels = frames
    with pytest.raises(Exception, match="did you mean 'label'"):
        ic_summary(feats, labels, label="lable")
