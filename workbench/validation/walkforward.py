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


def _fold(
    data: pl.DataFrame,
    tr: np.ndarray,
    te: np.ndarray,
    k: int,
    features: list[str],
    params: Mapping[str, Any] | None,
    seed: int,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One window: fit on ``tr``, predict ``te``; the predictions and the window's facts."""
    train, test = data[tr], data[te]
    model = fit_lgbm(train, features, params=params, seed=seed)
    p = predict(model, test, features).with_columns(
        label=test["label"], fold=pl.lit(k, dtype=pl.Int32)
    )
    facts = {
        "fold": k,
        "train_rows": train.height,
        "train_end_t1": train["t1"].max(),
        "test_start": test["ts"].min(),
        "test_end": test["ts"].max(),
        "test_rows": test.height,
        "ic": _ic(p["prediction"].to_numpy(), p["label"].to_numpy()),
    }
    return p, facts


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
    client: Any = None,
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
    client : distributed.Client, optional
        Fit and predict the windows on Dask workers (:func:`workbench.cluster.open_client`), one
        task per window; the result equals the in-process one exactly (LightGBM runs with
        ``n_jobs=1`` and the same seed wherever it runs).
    """
    data = table.sort("ts", "symbol")
    windows = list(splitter.split(data))
    features = list(features)
    if client is None:
        done = [
            _fold(data, tr, te, k, features, params, seed) for k, (tr, te) in enumerate(windows)
        ]
    else:  # the table goes to the workers once; each window is one task
        (shared,) = client.scatter([data], broadcast=True)
        futures = [
            client.submit(_fold, shared, tr, te, k, features, params, seed, pure=False)
            for k, (tr, te) in enumerate(windows)
        ]
        done = client.gather(futures)
    preds = [p for p, _ in done]
    folds = [f for _, f in done]
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
