"""Validate stage: out-of-sample backtest of the model's signals with costs, gates, alias."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.backtest import BacktestResult, run_backtest
from workbench.config import WorkbenchConfig
from workbench.data.store import BarStore, frame_fingerprint
from workbench.models.lgbm import predict
from workbench.models.promotion import record_oos_window
from workbench.models.registry import (
    CHALLENGER,
    RISK_TAG,
    ModelRef,
    load_model,
    model_params,
    set_alias,
    set_version_tag,
)
from workbench.risk import RiskPolicy
from workbench.stages.train import feature_columns, ic
from workbench.validation.cv import WalkForward
from workbench.validation.gates import GateReport, evaluate_gates
from workbench.validation.overfitting import dsr_from_returns, effective_trials, psr_from_returns
from workbench.validation.walkforward import WalkForwardResult, walk_forward


@dataclass
class ValidateResult:
    """Out-of-sample predictions, backtest, measurements and the gate report."""

    predictions: pl.DataFrame
    backtest: BacktestResult
    metrics: dict[str, float]
    gates: GateReport
    data_fingerprint: str
    walk_forward: WalkForwardResult | None = None
    policy: RiskPolicy | None = None


def sharpe_significance(
    returns: np.ndarray,
    trial_sharpes: Sequence[float] = (),
    n_trials: int = 0,
    trial_correlation: float = 0.0,
) -> dict[str, float]:
    """Return the PSR (vs 0) and the deflated Sharpe ratio of per-bar returns.

    ``trial_sharpes`` are per-bar Sharpe ratios of the configurations tried in the search that
    produced the model (the selected one included): their variance sets the bar. ``n_trials``
    is how many were tried (at least ``len(trial_sharpes)``; pruned trials count), and
    ``trial_correlation`` the average correlation of the trials' returns: the DSR corrects for
    ``effective_trials(n_trials, trial_correlation)`` independent trials (0: all independent).
    With fewer than two Sharpe ratios there is nothing to deflate for and the DSR equals the PSR
    against zero; the metric ``n_trials`` (the effective count) records which case applied.
    """
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    trials = [float(t) for t in trial_sharpes if np.isfinite(t)]
    count = effective_trials(max(n_trials, len(trials), 1), trial_correlation)
    out = {"psr": float("nan"), "deflated_sharpe": float("nan"), "n_trials": float(count)}
    if len(r) < 3 or r.std() == 0:
        return out  # nothing traded: no evidence either way, and the gates fail on NaN
    out["psr"] = float(psr_from_returns(r, 0.0))
    if len(trials) >= 2:
        out["deflated_sharpe"] = float(dsr_from_returns(r, trials, n_trials=count))
    else:
        out["deflated_sharpe"] = out["psr"]
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
    n_trials: int = 0,
    trial_correlation: float = 0.0,
    pbo: float = math.nan,
    walk_forward_folds: int = 0,
    seed: int = 0,
) -> ValidateResult:
    """Backtest the model's out-of-sample signals (``ts >= split_ts``) with the configured costs.

    ``trial_sharpes`` and ``n_trials`` describe the search that chose the model (the deflated
    Sharpe ratio corrects for them); ``pbo`` is its probability of backtest overfitting (NaN:
    not measured, which fails a ``max_pbo`` gate). With ``walk_forward_folds > 0`` the strategy
    is also validated walk-forward over the same out-of-sample period (the model's
    hyperparameters retrained before each of ``walk_forward_folds`` windows, stitched, backtested
    with costs); then the gates judge the walk-forward measurements (``wf_*`` metrics), not the
    single model's.
    """
    strat = cfg.strategy(strategy)
    split = datetime.fromisoformat(split_ts)
    full = pl.read_parquet(features_path).sort("ts", "symbol")
    table = full.filter(pl.col("ts") >= split).sort("symbol", "ts")
    feats = feature_columns(table)
    lgbm = load_model(model)
    preds = predict(lgbm, table, feats).with_columns(label=table["label"])
    symbols = sorted(table["symbol"].unique().to_list())
    policy = strategy_policy(cfg, strategy, timeframe, lgbm, full, feats, split, symbols)
    bars = BarStore(store_root, cfg.store.partition).read(symbols, timeframe, start=split)
    bt = run_backtest(
        bars, preds.select("symbol", "ts", "prediction"), config=cfg.backtest, risk=policy
    )
    metrics = {k: float(v) for k, v in bt.stats.items() if isinstance(v, int | float)}
    metrics["ic"] = ic(preds["prediction"], preds["label"])
    metrics.update(
        sharpe_significance(
            bt.equity["returns"].to_numpy(), trial_sharpes, n_trials, trial_correlation
        )
    )
    metrics["pbo"] = float(pbo)
    fp = hashlib.sha256((frame_fingerprint(table) + frame_fingerprint(bars)).encode()).hexdigest()
    if not walk_forward_folds:
        return ValidateResult(
            preds, bt, metrics, evaluate_gates(metrics, strat.gates), fp, policy=policy
        )
    wf = _walk_forward(cfg, policy, full, bars, split, walk_forward_folds, seed, _params(model))
    wf_metrics = dict(wf.metrics)
    wf_metrics["pbo"] = float(pbo)
    if wf.backtest is not None:
        wf_metrics.update(
            sharpe_significance(
                wf.backtest.equity["returns"].to_numpy(), trial_sharpes, n_trials, trial_correlation
            )
        )
    metrics.update({f"wf_{k}": v for k, v in wf_metrics.items()})
    return ValidateResult(
        preds, bt, metrics, evaluate_gates(wf_metrics, strat.gates), fp, wf, policy
    )


def strategy_policy(
    cfg: WorkbenchConfig,
    strategy: str,
    timeframe: str,
    model: Any,
    table: pl.DataFrame,
    features: list[str],
    split: datetime,
    symbols: list[str],
) -> RiskPolicy:
    """The strategy's risk policy for this model: quantile thresholds (if any) from the model's
    predictions on its training rows (``ts < split``), sectors from the simulator by default."""
    strat = cfg.strategy(strategy)
    train_preds = None
    if strat.decision.method == "quantile":
        train = table.filter(pl.col("ts") < split)
        train_preds = predict(model, train, features)["prediction"].to_numpy()
    return RiskPolicy.from_config(
        cfg,
        strategy,
        timeframe=timeframe,
        train_predictions=train_preds,
        sectors=default_sectors(cfg, symbols) if strat.risk.limits.sector_cap else None,
    )


def default_sectors(cfg: WorkbenchConfig, symbols: list[str]) -> dict[str, str]:
    """Sectors of the simulator's symbols (``sector<k>``); empty for other sources."""
    if cfg.data.source != "synthetic":
        return {}
    from workbench.data.sources.synthetic import SyntheticSource

    info = SyntheticSource.from_config(cfg).symbol_info(symbols)
    return {s: f"sector{k}" for s, k in info.select("symbol", "sector").iter_rows()}


def _walk_forward(
    cfg: WorkbenchConfig,
    policy: RiskPolicy,
    full: pl.DataFrame,
    bars: pl.DataFrame,
    split: datetime,
    folds: int,
    seed: int,
    params: dict[str, Any],
) -> WalkForwardResult:
    """Retrain the model (``params``) per window from ``split`` on, ``folds`` windows, costs on."""
    n_train = full.filter(pl.col("ts") < split)["ts"].n_unique()
    n_test = full.filter(pl.col("ts") >= split)["ts"].n_unique()
    splitter = WalkForward(train_size=n_train, test_size=max(1, n_test // folds), embargo=1)
    return walk_forward(
        full,
        feature_columns(full),
        splitter=splitter,
        params=params,
        seed=seed,
        bars=bars,
        risk=policy,
        backtest=cfg.backtest,
    )


def _params(model: ModelRef) -> dict[str, Any]:
    """The hyperparameters the model version was trained with, minus its seed (walk-forward
    models take the validation seed)."""
    return {k: v for k, v in model_params(model).items() if k != "seed"}


def apply_gates(
    res: ValidateResult,
    model: ModelRef,
    *,
    features_path: str,
    store_root: str,
    split_ts: str,
    timeframe: str,
) -> str:
    """Act on the gate report: tag the active MLflow run; when every gate passes, record the
    out-of-sample window on the model version and point ``challenger`` at it. Return what happened."""
    import mlflow

    mlflow.set_tags(res.gates.tags())
    if res.policy is not None:  # the rules (thresholds resolved) the session must trade under
        set_version_tag(model, RISK_TAG, json.dumps(res.policy.describe(), default=str))
    if not res.gates.passed:
        return "gates refused promotion:\n  " + "\n  ".join(res.gates.failures())
    record_oos_window(
        model.name,
        model.version,
        features_path=features_path,
        store_root=store_root,
        split_ts=split_ts,
        timeframe=timeframe,
        sharpe=res.metrics["sharpe"],
    )
    set_alias(model.name, CHALLENGER, model.version)
    return f"gates passed: {model.name} v{model.version} is now '{CHALLENGER}'"


def walk_forward_returns(res: ValidateResult) -> pl.DataFrame:
    """Per-bar returns of the walk-forward backtest (``ts, returns``): what 06_portfolio allocates
    across strategies (logged as ``tables/walk_forward_returns.json``); empty without one."""
    wf = res.walk_forward
    if wf is None or wf.backtest is None:
        return pl.DataFrame(schema={"ts": pl.Datetime("us", "UTC"), "returns": pl.Float64})
    return wf.backtest.equity.select("ts", "returns")


def risk_summary(bt: BacktestResult) -> pl.DataFrame:
    """Denials by rule (``reason, denials, cut, denied``) of a risk-policy backtest."""
    rej = bt.rejections
    if rej.is_empty():
        return pl.DataFrame(
            schema={
                "reason": pl.String,
                "denials": pl.UInt32,
                "cut": pl.UInt32,
                "denied": pl.UInt32,
            }
        )
    return (
        rej.group_by("reason")
        .agg(
            pl.len().alias("denials"),
            (pl.col("allowed_qty") != 0).sum().alias("cut"),
            (pl.col("allowed_qty") == 0).sum().alias("denied"),
        )
        .sort("denials", descending=True)
    )


def risk_figure(bt: BacktestResult, title: str = "Risk denials by rule") -> Any:
    """Bar chart of denials (cut vs denied) by rule, from :func:`risk_summary`."""
    import plotly.graph_objects as go

    s = risk_summary(bt)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=s["reason"].to_list(), y=s["cut"].to_list(), name="cut"))
    fig.add_trace(go.Bar(x=s["reason"].to_list(), y=s["denied"].to_list(), name="denied"))
    fig.update_layout(barmode="stack", title=title, yaxis_title="orders", height=380)
    return fig


def oos_sharpe(
    cfg: WorkbenchConfig, strategy: str
) -> Callable[[ModelRef, Mapping[str, str]], float]:
    """Return the promotion comparison: a model version's Sharpe ratio on a recorded
    out-of-sample window (``oos.*`` version tags), validated as 04_validate does, risk policy on."""

    def evaluate(ref: ModelRef, window: Mapping[str, str]) -> float:
        res = run_validate(
            cfg,
            features_path=window["oos.features_path"],
            store_root=window["oos.store_root"],
            model=ref,
            split_ts=window["oos.split_ts"],
            strategy=strategy,
            timeframe=window["oos.timeframe"],
        )
        return float(res.metrics["sharpe"])

    return evaluate
