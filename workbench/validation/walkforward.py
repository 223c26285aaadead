"""Walk-forward validation: retrain per window, predict the next, stitch, backtest with costs.

The stitched out-of-sample predictions are what promotion gates should judge: every prediction
comes from a model trained only on rows whose labels were known (``t1``) before its test window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from workbench.backtest import BacktestResult, run_backtest
from workbench.config import BacktestConfig
from workbench.models.lgbm import fit_lgbm, predict


@dataclass
class WalkForwardResult:
    """Stitched out-of-sample predictions, per-fold facts, the backtest and its measurements."""

    predictions: pl.DataFrame
    folds: pl.DataFrame
    backtest: BacktestResult | None
    metrics: dict[str, float]


def _ic(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def walk_forward(
    table: pl.DataFrame,
    features: Sequence[str],
    *,
    splitter: Any,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    bars: pl.DataFrame | None = None,
    risk: Any = None,
    backtest: BacktestConfig | None = None,
) -> WalkForwardResult:
    """Fit on each training window, predict its test window, stitch the predictions and backtest them.

    Parameters
    ----------
    table : pl.DataFrame
        Feature table sorted by ``ts`` (``symbol, ts, <features>, label, t1``).
    features : sequence of str
        Feature columns.
    splitter : WalkForward or any splitter with ``split(table)``
        Yields (train_idx, test_idx); training rows are purged by ``t1`` by the splitter.
    params : mapping, optional
        LightGBM parameters.
    bars, risk, backtest : optional
        With ``bars`` and ``risk`` (the strategy's :class:`workbench.risk.RiskPolicy`), the
        stitched predictions are backtested under that policy (decisions, sizing, limits, kill
        switch, end-of-day flatten) with costs; the backtest's statistics join the metrics.
    """
    data = table.sort("ts", "symbol")
    preds, folds = [], []
    for k, (tr, te) in enumerate(splitter.split(data)):
        train, test = data[tr], data[te]
        model = fit_lgbm(train, features, params=params, seed=seed)
        p = predict(model, test, features).with_columns(
            label=test["label"], fold=pl.lit(k, dtype=pl.Int32)
        )
        preds.append(p)
        folds.append(
            {
                "fold": k,
                "train_rows": train.height,
                "train_end_t1": train["t1"].max(),
                "test_start": test["ts"].min(),
                "test_end": test["ts"].max(),
                "test_rows": test.height,
                "ic": _ic(p["prediction"].to_numpy(), p["label"].to_numpy()),
            }
        )
    if not preds:
        raise ValueError("the splitter produced no fold; use fewer/shorter windows or more data.")
    stitched = pl.concat(preds).sort("symbol", "ts")
    metrics = {
        "ic": _ic(stitched["prediction"].to_numpy(), stitched["label"].to_numpy()),
        "folds": float(len(folds)),
        "oos_rows": float(stitched.height),
    }
    bt = None
    if bars is not None and risk is not None:
        cfg = backtest or BacktestConfig()
        oos_bars = bars.filter(pl.col("ts") >= stitched["ts"].min())
        bt = run_backtest(
            oos_bars, stitched.select("symbol", "ts", "prediction"), config=cfg, risk=risk
        )
        metrics.update({k: float(v) for k, v in bt.stats.items() if isinstance(v, int | float)})
    return WalkForwardResult(stitched, pl.DataFrame(folds), bt, metrics)
