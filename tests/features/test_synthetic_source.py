"""End to end on the embedded simulator: the planted edge shows up only with correct timing."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

synthetic = pytest.importorskip("workbench.data.sources.synthetic")

from workbench.data.timeframe import Timeframe  # noqa: E402
from workbench.features import build_features  # noqa: E402
from workbench.features.diagnostics import ic_summary  # noqa: E402
from workbench.features.lookahead import check_truncation  # noqa: E402
from workbench.labels import forward_return  # noqa: E402

ALPHA = 0.2


@pytest.fixture(scope="module")
def sim_bars() -> pl.DataFrame:
    src = synthetic.SyntheticSource(seed=7, alpha=ALPHA)
    return src.fetch(
        [f"SYN{i:03d}" for i in range(6)],
        Timeframe.parse("5Min"),
        datetime(2024, 3, 4, tzinfo=UTC),
        datetime(2024, 3, 20, tzinfo=UTC),
    )


def test_planted_reversal_is_found_by_the_last_bar_return_against_the_next_open_label(sim_bars):
    feats = build_features(sim_bars, [{"name": "returns", "params": {"periods": 1}, "alias": "r1"}])
    label = forward_return(sim_bars, 1)  # open_{t+1} -> open_{t+2}: the next bar's move
    ic = ic_summary(feats, label, by=None).row(0, named=True)["ic"]
    assert -1.3 * ALPHA < ic < -0.6 * ALPHA
    # a label entered one bar later (open_{t+2} -> open_{t+3}) only keeps the alpha^2 echo
    late = label.with_columns(pl.col("label").shift(-1).over("symbol"))
    ic_late = ic_summary(feats, late, by=None).row(0, named=True)["ic"]
    assert abs(ic_late) < 0.5 * abs(ic)


def test_configured_sets_are_causal_on_simulated_bars(sim_bars):
    for name in ("intraday_mean_reversion", "swing_trend_following"):
        check_truncation(lambda b, n=name: build_features(b, n), sim_bars, name=name)
