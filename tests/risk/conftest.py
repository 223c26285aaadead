"""Simulator bars over a week with an early close, predictions, and a replayable feature feed."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe

SYMBOLS = ["SYN000", "SYN001", "SYN002", "SYN003"]
# 2024-11-25 .. 2024-12-03: Thanksgiving (closed) and the 13:00 early close on Friday 11-29
START = datetime(2024, 11, 25, tzinfo=UTC)
END = datetime(2024, 12, 4, tzinfo=UTC)


@pytest.fixture(scope="session")
def week_bars() -> pl.DataFrame:
    return SyntheticSource(seed=3, alpha=0.2).fetch(SYMBOLS, Timeframe.parse("5Min"), START, END)


def reversal_predictions(bars: pl.DataFrame, noise: float = 2e-4, seed: int = 0) -> pl.DataFrame:
    """A causal prediction: minus the last bar's return, plus noise (known at each bar's close)."""
    rng = np.random.default_rng(seed)
    out = bars.select(
        "symbol",
        "ts",
        (-(pl.col("close") / pl.col("close").shift(1).over("symbol") - 1)).alias("prediction"),
    )
    return out.with_columns(pl.col("prediction") + rng.normal(0, noise, out.height))


class LookupFeatures:
    """A feature feed that returns each new bar's (symbol, ts) row (predictions are looked up)."""

    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        return bars.select("symbol", "ts")


def lookup_predict(preds: pl.DataFrame):
    table = {(s, t): p for s, t, p in preds.iter_rows()}

    def predict(rows: pl.DataFrame) -> np.ndarray:
        return np.array(
            [table.get((s, t), np.nan) for s, t in rows.select("symbol", "ts").iter_rows()]
        )

    return predict
