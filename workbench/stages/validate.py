"""Validate stage: out-of-sample backtest of the model's signals with costs, gates, alias.

The evaluation itself is :mod:`workbench.validation.evaluate` (promotion and the divergence report
call the same code); this stage reads the feature table, runs it (and the walk-forward), and acts
on the gates: the gate record and the evaluation window go to the model version, ``challenger``
to a version that passes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from workbench.backtest import BacktestResult
from workbench.config import WorkbenchConfig
from workbench.data.store import frame_fingerprint
from workbench.models.lifecycle import record_gate
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
from workbench.stages.train import trained_decision, trained_metrics
from workbench.validation.baseline import BaselineComparison, compare_with_baseline, daily_returns
from workbench.validation.evaluate import (
    EvaluationWindow,
    WindowUnavailableError,
    default_sectors,
    evaluate_model,
    project_relative,
    reproduce_window,
    sharpe_significance,
    strategy_policy,
    walk_forward_evaluation,
)
from workbench.validation.gates import GateReport, evaluate_gates
from workbench.validation.montecarlo import MonteCarloResult, bootstrap_returns
from workbench.validation.walkforward import WalkForwardResult

__all__ = [
    "ValidateResult",
    "apply_gates",
    "default_sectors",
    "risk_figure",
    "risk_summary",
    "run_validate",
    "sharpe_significance",
    "strategy_policy",
    "walk_forward_returns",
]


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
    table_fingerprint: str = ""
    train_end: datetime | None = None
    search: dict[str, Any] | None = None
    monte_carlo: MonteCarloResult | None = None  # bootstrap of the judged daily returns
    baseline: BaselineComparison | None = None  # the strategy's rule, same window and costs


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
    from workbench.data.store import BarStore

    strat = cfg.strategy(strategy)
    split = datetime.fromisoformat(split_ts)
    table = pl.read_parquet(features_path)
    symbols = sorted(table.filter(pl.col("ts") >= split)["symbol"].unique().to_list())
    bars = BarStore(store_root, cfg.store.partition).read(symbols, timeframe, start=split)
    decision = trained_decision(cfg, strategy, model)  # the thresholds the search chose
    ev = evaluate_model(
        cfg, load_model(model), table, bars, split=split, strategy=strategy, timeframe=timeframe,
        trial_sharpes=trial_sharpes, n_trials=n_trials, trial_correlation=trial_correlation,
        decision=decision,
    )  # fmt: skip
    metrics = dict(ev.metrics)
    metrics["pbo"] = float(pbo)
    # distinct candidates behind the PBO: below gates.pbo_min_distinct it is not measurable
    metrics["pbo_distinct"] = trained_metrics(model).get("pbo_distinct", math.nan)
    train = table.filter(pl.col("ts") < split)
    extra = {
        "table_fingerprint": frame_fingerprint(table),
        "train_end": train["ts"].max() if train.height else None,
        "search": {
            "trial_sharpes": [float(x) for x in trial_sharpes],
            "n_trials": int(n_trials),
            "trial_correlation": float(trial_correlation),
            "pbo": float(pbo),
        },
    }
    if not walk_forward_folds:
        mc, base = _robustness(cfg, ev.backtest, table, bars, split, strategy, timeframe,
                               decision, seed, metrics)  # fmt: skip
        gates = evaluate_gates(metrics, strat.gates)
        return ValidateResult(
            ev.predictions, ev.backtest, metrics, gates, ev.data_fingerprint, None, ev.policy,
            **extra, monte_carlo=mc, baseline=base,
        )  # fmt: skip
    wf = walk_forward_evaluation(
        cfg, ev.policy, table, ev.bars, split, walk_forward_folds, seed, _params(model)
    )
    wf_metrics = dict(wf.metrics)
    wf_metrics["pbo"] = float(pbo)
    wf_metrics["pbo_distinct"] = metrics["pbo_distinct"]
    if wf.backtest is not None:
        wf_metrics.update(
            sharpe_significance(
                wf.backtest.equity["returns"].to_numpy(), trial_sharpes, n_trials, trial_correlation
            )
        )
    judged = wf.backtest if wf.backtest is not None else ev.backtest
    mc, base = _robustness(cfg, judged, table, bars, split, strategy, timeframe, decision, seed,
                           wf_metrics)  # fmt: skip
    metrics.update({f"wf_{k}": v for k, v in wf_metrics.items()})
    return ValidateResult(
        ev.predictions, ev.backtest, metrics, evaluate_gates(wf_metrics, strat.gates),
        ev.data_fingerprint, wf, ev.policy, **extra, monte_carlo=mc, baseline=base,
    )  # fmt: skip


def _robustness(
    cfg: WorkbenchConfig, judged: BacktestResult, table: pl.DataFrame, bars: pl.DataFrame,
    split: datetime, strategy: str, timeframe: str, decision: Any, seed: int,
    into: dict[str, float],
) -> tuple[MonteCarloResult | None, BaselineComparison | None]:  # fmt: skip
    """The stationary bootstrap of the judged backtest's daily returns and the comparison with
    the strategy's rule baseline; their metrics go ``into`` the gates' measurements (NaN when
    there are too few days: a gate on them then fails, the model must prove it)."""
    days = daily_returns(judged)["returns"].to_numpy()
    mc = None
    if len(days) >= 10:
        mc = bootstrap_returns(days, n_draws=1000, horizon=min(21, len(days)), seed=seed)
        into.update(mc.summary())
    else:
        into["sharpe_ci_low"] = math.nan
    base = compare_with_baseline(
        cfg, judged, table, bars, split=split, strategy=strategy, timeframe=timeframe,
        decision=decision,
    )  # fmt: skip
    if base is not None:
        into.update(base.metrics())
    return mc, base


def _params(model: ModelRef) -> dict[str, Any]:
    """The hyperparameters the model version was trained with, minus its seed (walk-forward
    models take the validation seed)."""
    return {k: v for k, v in model_params(model).items() if k != "seed"}


def features_step_window(run_id: str) -> dict[str, Any] | None:
    """The features step's window (``store_root, symbols, timeframe, start, end, strategy``)
    among the sibling runs of ``run_id`` (the same pipeline run); None when run by hand."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    if not parent:
        return None
    found = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.step = 'features'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    p = found[0].data.params
    try:
        symbols = json.loads(p["symbols"]) if p["symbols"].startswith("[") else [p["symbols"]]
        return {
            "store_root": p.get("store_root", ""),
            "symbols": [str(s) for s in symbols],
            "timeframe": p["timeframe"],
            "start": p["start"],
            "end": p["end"],
            "strategy": p.get("strategy", ""),
        }
    except KeyError:
        return None


def evaluation_window(
    cfg: WorkbenchConfig,
    res: ValidateResult,
    *,
    features_path: str,
    store_root: str,
    split_ts: str,
    strategy: str,
    timeframe: str,
    recipe: dict[str, Any] | None,
) -> dict[str, Any]:
    """The window to record for promotion (:class:`EvaluationWindow` as a dict), checked by
    rebuilding the feature table from the store now; ``{"unreproducible": why}`` otherwise."""
    if recipe is None:
        return {
            "unreproducible": "validated outside a pipeline run: the sessions the feature table "
            f"{features_path} was built from are unknown"
        }
    search = res.search or {}
    window = EvaluationWindow(
        strategy=strategy,
        timeframe=timeframe,
        symbols=tuple(recipe["symbols"]),
        start=str(recipe["start"]),
        end=str(recipe["end"]),
        split_ts=split_ts,
        store=project_relative(cfg, cfg.path(store_root)),
        bars_fingerprint="",
        table_fingerprint=res.table_fingerprint,
        train_end=res.train_end.isoformat() if res.train_end else "",
        trial_sharpes=tuple(search.get("trial_sharpes", ())),
        n_trials=int(search.get("n_trials", 0)),
        trial_correlation=float(search.get("trial_correlation", 0.0)),
        pbo=float(search.get("pbo", math.nan)),
    )
    from workbench.data.ingest import to_window
    from workbench.data.store import BarStore

    lo, hi = to_window(window.start, window.end)
    bars = BarStore(cfg.path(store_root), cfg.store.partition).read(
        list(window.symbols), timeframe, lo, hi
    )
    d = window.to_dict()
    d["bars_fingerprint"] = frame_fingerprint(bars)
    try:
        reproduce_window(cfg, EvaluationWindow.from_dict(d))
    except WindowUnavailableError as exc:
        return {"unreproducible": str(exc)}
    return d


def apply_gates(
    res: ValidateResult,
    model: ModelRef,
    *,
    features_path: str,
    store_root: str,
    split_ts: str,
    timeframe: str,
    strategy: str = "",
    cfg: WorkbenchConfig | None = None,
) -> str:
    """Act on the gate report: tag the active MLflow run; record the gate verdict on the model
    version (with the evaluation window, rebuilt from the store to check it reproduces); when
    every gate passes, point ``challenger`` at it. Return what happened."""
    import mlflow

    from workbench.config import load_config

    cfg = cfg or load_config()
    strategy = strategy or model.name
    mlflow.set_tags(res.gates.tags())
    if res.policy is not None:  # the rules (thresholds resolved) the session must trade under
        set_version_tag(model, RISK_TAG, json.dumps(res.policy.describe(), default=str))
    run = mlflow.active_run()
    run_id = run.info.run_id if run else ""
    window = None
    if res.gates.passed and run_id:
        window = evaluation_window(
            cfg, res, features_path=features_path, store_root=store_root, split_ts=split_ts,
            strategy=strategy, timeframe=timeframe, recipe=features_step_window(run_id),
        )  # fmt: skip
    if run_id:
        record_gate(
            model, passed=res.gates.passed, run_id=run_id, window=window, metrics=res.metrics,
            train_end=res.train_end,
        )  # fmt: skip
    if not res.gates.passed:
        return "gates refused promotion:\n  " + "\n  ".join(res.gates.failures())
    set_alias(model.name, CHALLENGER, model.version)
    note = ""
    if window is not None and "unreproducible" in window:
        note = f"\n  note: promotion cannot re-evaluate it: {window['unreproducible']}"
    return f"gates passed: {model.name} v{model.version} is now '{CHALLENGER}'{note}"


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
