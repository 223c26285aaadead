"""Validate stage: out-of-sample backtest of the model's signals with costs, gates, alias."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from workbench.backtest import BacktestResult, run_backtest, signals_to_targets
from workbench.config import WorkbenchConfig
from workbench.data.store import BarStore, frame_fingerprint
from workbench.models.lgbm import predict
from workbench.models.registry import ModelRef, load_model
from workbench.stages.train import feature_columns, ic
from workbench.validation.gates import GateReport, evaluate_gates
from workbench.validation.overfitting import dsr_from_returns, psr_from_returns


@dataclass
class ValidateResult:
    """Out-of-sample predictions, backtest, measurements and the gate report."""

    predictions: pl.DataFrame
    backtest: BacktestResult
    metrics: dict[str, float]
    gates: GateReport
    data_fingerprint: str


def sharpe_significance(
    returns: np.ndarray, trial_sharpes: Sequence[float] = ()
) -> dict[str, float]:
    """Return the PSR (vs 0) and the deflated Sharpe ratio of per-bar returns.

    ``trial_sharpes`` are the per-bar Sharpe ratios of every configuration tried in the search that
    produced the model (the selected one included). With fewer than two trials there is nothing to
    deflate for and the DSR equals the PSR against zero; ``n_trials`` records which case applied.
    """
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    out = {
        "psr": float("nan"),
        "deflated_sharpe": float("nan"),
        "n_trials": float(max(len(trial_sharpes), 1)),
    }
    if len(r) < 3 or r.std() == 0:
        return out  # nothing traded: no evidence either way, and the gates fail on NaN
    out["psr"] = float(psr_from_returns(r, 0.0))
    trials = [t for t in trial_sharpes if np.isfinite(t)]
    out["deflated_sharpe"] = float(dsr_from_returns(r, trials)) if len(trials) >= 2 else out["psr"]
    return out


def run_validate(
    cfg: WorkbenchConfig,
    *,
    features_path: str | Path,
    store_root: str,
    model: ModelRef,
    split_ts: str,
    strategy: str,
    timeframe: str,
    trial_sharpes: Sequence[float] = (),
) -> ValidateResult:
    """Backtest the model's out-of-sample signals (``ts >= split_ts``) with the configured costs."""
    strat = cfg.strategy(strategy)
    split = datetime.fromisoformat(split_ts)
    table = pl.read_parquet(features_path).filter(pl.col("ts") >= split)
    feats = feature_columns(table)
    lgbm = load_model(model)
    preds = predict(lgbm, table, feats).with_columns(label=table["label"])
    targets = signals_to_targets(
        preds.rename({"prediction": "score"}),
        long_threshold=strat.long_threshold,
        short_threshold=strat.short_threshold,
        max_position=strat.max_position,
        allow_short=cfg.backtest.allow_short,
    )
    symbols = sorted(table["symbol"].unique().to_list())
    bars = BarStore(store_root, cfg.store.partition).read(symbols, timeframe, start=split)
    bt = run_backtest(bars, targets, config=cfg.backtest)
    metrics = {k: float(v) for k, v in bt.stats.items() if isinstance(v, int | float)}
    metrics["ic"] = ic(preds["prediction"], preds["label"])
    metrics.update(sharpe_significance(bt.equity["returns"].to_numpy(), trial_sharpes))
    fp = hashlib.sha256((frame_fingerprint(table) + frame_fingerprint(bars)).encode()).hexdigest()
    return ValidateResult(preds, bt, metrics, evaluate_gates(metrics, strat.gates), fp)
