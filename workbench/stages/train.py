"""Train stage: hyperparameter search by purged K-fold, refit, and PBO from CPCV.

On the training part of a chronological split (rows whose label ends after the split are
purged), an Optuna study searches the strategy's LightGBM hyperparameters, each trial scored by
purged K-fold with embargo (the per-bar Sharpe of a costed backtest of each fold's predictions, or
the IC). Every fold is backtested whatever the score, so each trial has a Sharpe ratio: those are
what the deflated Sharpe ratio in validation corrects for. The best configuration is refit on the
whole training window. The best few configurations are then re-run on combinatorial purged CV
paths, whose backtests give the probability of backtest overfitting (PBO) of picking among them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from workbench.backtest import run_backtest
from workbench.config import ParamRange, WorkbenchConfig
from workbench.data.store import BarStore, frame_fingerprint
from workbench.errors import ParameterError
from workbench.features.lookahead import check_feature_set
from workbench.models.estimator import LGBMForecaster
from workbench.models.lgbm import Split, chronological_split, importance_frame, predict
from workbench.models.search import DEFAULT_SEARCH_SPACE, SearchResult, refit, run_search
from workbench.monitoring.reference import reference_frame
from workbench.risk import RiskPolicy
from workbench.risk.decision import DecisionPolicy
from workbench.validation.cpcv import CPCVResult, cpcv_pbo
from workbench.validation.cv import CombinatorialPurgedKFold, PurgedKFold
from workbench.validation.evaluate import (  # noqa: F401
    NON_FEATURES,
    default_sectors,
    feature_columns,
    ic,
)
from workbench.validation.overfitting import effective_trials, sharpe_per_period

_NOT_SEARCHED = ("objective", "metric", "seed", "early_stopping_rounds")


@dataclass
class TrainResult:
    """The refit model, its split, the search and the PBO measurement."""

    model: LGBMForecaster
    features: list[str]
    split: Split
    importance: pl.DataFrame
    metrics: dict[str, float]
    data_fingerprint: str
    search: SearchResult
    cpcv: CPCVResult | None
    trial_sharpes: list[float]
    study_name: str
    reference: pl.DataFrame | None = None  # drift reference: train features, valid predictions
    decision: DecisionPolicy | None = None  # the thresholds chosen on the training window


class StrategyBacktest:
    """Backtest a strategy's predictions on a bar window under its risk policy, with costs.

    ``returns(preds, start, end)`` trades ``preds`` (``symbol, ts, prediction``) on the bars with
    ``start <= ts <= end`` through the strategy's :class:`~workbench.risk.RiskPolicy` (the one
    validation and the session use), and returns the per-bar portfolio returns (0 where flat),
    one per bar timestamp of the window.
    """

    def __init__(self, cfg: WorkbenchConfig, policy: RiskPolicy, bars: pl.DataFrame) -> None:
        self.cfg, self.policy, self.bars = cfg, policy, bars

    def with_decision(self, decision: Mapping[str, Any] | None) -> RiskPolicy:
        """The policy trading a search trial's decision parameters (``cost_multiple``)."""
        if not decision:
            return self.policy
        d = DecisionPolicy.at_cost_multiple(
            self.policy.decision.config, self.cfg.backtest.costs, float(decision["cost_multiple"])
        )
        return dataclasses.replace(self.policy, decision=d)

    def returns(
        self,
        preds: pl.DataFrame,
        start: datetime,
        end: datetime,
        decision: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        window = self.bars.filter(pl.col("ts").is_between(start, end))
        p = preds.select("symbol", "ts", "prediction").filter(pl.col("ts") <= end)
        bt = run_backtest(window, p, config=self.cfg.backtest, risk=self.with_decision(decision))
        return np.nan_to_num(bt.equity["returns"].to_numpy().astype(float))

    def fold_sharpe(
        self, fold: pl.DataFrame, preds: pl.DataFrame, decision: Mapping[str, Any] | None = None
    ) -> float:
        """``run_search``'s ``backtest_fn``: per-bar Sharpe over the fold's time span, costs on,
        trading the trial's decision (``decision``) with the strategy's sizing and limits."""
        return sharpe_per_period(self.returns(preds, fold["ts"].min(), fold["ts"].max(), decision))


def fit_jobs(configs: list[dict[str, Any]]) -> int:
    """LightGBM fits to run at once: one per core when every fit uses one thread, else 1."""
    if any(int(c.get("n_jobs", 1)) != 1 for c in configs):
        return 1  # each fit already uses several threads
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def search_space(space: dict[str, ParamRange]) -> dict[str, BaseDistribution]:
    """Turn the strategy's ``search.space`` into Optuna distributions (empty: the default)."""
    if not space:
        return dict(DEFAULT_SEARCH_SPACE)
    out: dict[str, BaseDistribution] = {}
    for name, r in space.items():
        if r.choices is not None:
            out[name] = CategoricalDistribution(list(r.choices))
        elif r.integer:
            out[name] = IntDistribution(int(r.low or 0), int(r.high or 0), log=r.log)
        else:
            out[name] = FloatDistribution(float(r.low or 0), float(r.high or 0), log=r.log)
    return out


def storage_url(cfg: WorkbenchConfig, url: str) -> str:
    """Resolve a relative SQLite or ``journal:`` path of an Optuna storage against the project."""
    from sqlalchemy.engine import make_url

    if url.startswith("journal:"):  # a journal file every local worker shares
        from workbench.models.parallel_search import journal_path

        return f"journal:{cfg.path(journal_path(url)).resolve()}"

    u = make_url(url)
    if u.drivername.startswith("sqlite") and u.database not in (None, "", ":memory:"):
        path = Path(u.database)
        if not path.is_absolute():
            return u.set(database=str(cfg.path(path).resolve())).render_as_string(
                hide_password=False
            )
    return url


def run_train(
    cfg: WorkbenchConfig,
    *,
    features_path: str | Path,
    store_root: str | Path,
    strategy: str,
    timeframe: str,
    seed: int,
    train_frac: float = 0.6,
    n_trials: int = 0,
    n_folds: int = 0,
    pbo_configs: int = 0,
    storage: str = "",
    progress: bool = True,
) -> TrainResult:
    """Search, refit and measure PBO on the training window of the feature table.

    ``n_trials``, ``n_folds``, ``pbo_configs`` and ``storage`` override the strategy's ``search``
    settings when set (0 or empty: the strategy's). The Optuna study is named after everything
    that makes its trials comparable (strategy, training data, features, settings, seed), so a
    re-run resumes it (only missing trials run) and a changed input starts a new one.
    """
    strat = cfg.strategy(strategy)
    sc = strat.search
    n_trials, n_folds = n_trials or sc.n_trials, n_folds or sc.n_folds
    pbo_configs = pbo_configs or sc.pbo_configs
    for name, value in (("n_trials", n_trials), ("n_folds", n_folds), ("pbo_configs", pbo_configs)):
        if value < 0:
            raise ParameterError(
                f"The '{name}' parameter of run_train must be >= 0 (0: the strategy's setting). "
                f"Got {value}."
            )
    table = pl.read_parquet(features_path)
    feats = feature_columns(table)
    split = chronological_split(table, train_frac=train_frac)
    train = split.train.sort("ts", "symbol")
    symbols = sorted(train["symbol"].unique().to_list())
    start, end = train["ts"].min(), train["ts"].max()
    bars = (
        BarStore(store_root, cfg.store.partition)
        .read(symbols, timeframe, start=start)
        .filter(pl.col("ts") <= end)
    )
    # run-time look-ahead guard: the feature columns trained on, on a sample of the training bars
    lookahead_checked = check_feature_set(
        strat.feature_set, bars, columns=feats, cfg=cfg, seed=seed
    )
    if strat.decision.method == "quantile":
        raise ParameterError(
            f"strategies.{strategy}.decision.method 'quantile' is not searchable yet: each trial's "
            "thresholds would need its fold models' training predictions. Fix: search with "
            "method: threshold, then validate the registered model with quantile thresholds."
        )
    # the sectors the validation and the session give a sector cap (the simulator's, by default)
    sectors = None
    if strat.risk.limits.sector_cap:
        sectors = default_sectors(cfg, bars["symbol"].unique(maintain_order=True).to_list())
    policy = RiskPolicy.from_config(cfg, strategy, timeframe=timeframe, sectors=sectors)
    bt = StrategyBacktest(cfg, policy, bars)

    space = search_space(sc.space)
    # cost-aware thresholds: the multiple of the round-trip cost is drawn by each trial and its
    # folds are backtested with it, so purged CV on the training window chooses it
    multiples = strat.decision.cost_multiples
    decisions = {"cost_multiple": CategoricalDistribution(list(multiples))} if multiples else None
    fixed = {k: v for k, v in strat.model.items() if k not in space and k not in _NOT_SEARCHED}
    distributed = bool(fixed.pop("distributed", False))  # model.distributed: refit on Dask
    key = {
        "strategy": strategy,
        "data": frame_fingerprint(train),
        "bars": frame_fingerprint(bars),
        "features": feats,
        "search": sc.model_dump(mode="json", exclude={"n_trials", "storage", "pbo_configs"}),
        "n_folds": n_folds,
        "fixed": fixed,
        "seed": seed,
        "costs": cfg.backtest.model_dump(mode="json"),
        "risk": policy.describe(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    study_name = f"{strategy}-{digest[:12]}"
    res = run_search(
        train,
        feats,
        splitter=PurgedKFold(n_folds, embargo=sc.embargo),
        score=sc.score,
        n_trials=n_trials,
        seed=seed,
        storage=storage_url(cfg, storage or sc.storage),
        study_name=study_name,
        search_space=space,
        params=fixed,
        backtest_fn=bt.fold_sharpe,
        progress=progress,
        decision_space=decisions,
        workers=sc.workers,  # > 1: trials on Dask workers (dask.address or a LocalCluster)
        cluster=cfg.dask,
        jobs=fit_jobs([fixed]),  # a trial's folds at once, one per core
    )
    if distributed:  # lightgbm.dask on cfg.dask's cluster (a LocalCluster by default)
        from workbench.cluster import open_client
        from workbench.models.lgbm_dask import fit_on_dask

        with open_client(cfg.dask) as client:
            model = fit_on_dask(train, feats, client=client, params=res.best_params)
    else:
        model = refit(res.best_params, train, feats)
    decision = bt.with_decision(res.best_decision if decisions else None).decision
    # the spread among configurations from completed trials (all folds); every trial counts in N
    trial_sharpes = list(res.trial_sharpes(include_pruned=False).values())
    n_tried = res.n_trials + res.n_pruned

    candidates = res.top_candidates(pbo_configs)
    configs = [params for params, _ in candidates]
    cpcv = None
    if len(configs) >= 2:
        cpcv = cpcv_pbo(
            train,
            feats,
            configs=configs,
            splitter=CombinatorialPurgedKFold(
                sc.cpcv_groups, sc.cpcv_test_groups, embargo=sc.embargo
            ),
            returns_fn=[
                (lambda preds, d=d: bt.returns(preds, start, end, d or None)) for _, d in candidates
            ],
            n_splits=sc.pbo_splits,
            progress=progress,
            duplicate_correlation=sc.pbo_duplicate_correlation,
            min_distinct=strat.gates.pbo_min_distinct,
            jobs=fit_jobs(configs),
        )

    rho = cpcv.correlation if cpcv else 0.0  # no CPCV: treat the trials as independent
    p_train = predict(model, train, feats)["prediction"]
    p_valid = predict(model, split.valid, feats)["prediction"]
    metrics = {
        "train_rows": float(train.height),
        "valid_rows": float(split.valid.height),
        "purged_rows": float(split.purged),
        "ic_train": ic(p_train, train["label"]),
        "ic_valid": ic(p_valid, split.valid["label"]),
        "search_best_score": res.best_score,
        "search_trials": float(n_tried),
        "search_completed": float(res.n_trials),
        "search_pruned": float(res.n_pruned),
        "trial_correlation": rho,
        "effective_trials": float(effective_trials(n_tried, rho)),
        "trial_sharpe_var": float(np.var(trial_sharpes, ddof=1))
        if len(trial_sharpes) >= 2
        else math.nan,
        "pbo": cpcv.value if cpcv else math.nan,  # NaN also when not measurable (pbo_distinct)
        "pbo_configs": float(len(configs)),
        "pbo_distinct": float(cpcv.n_distinct) if cpcv else math.nan,
        "pbo_std": cpcv.pbo.pbo_std if cpcv else math.nan,
        "pbo_prob_oos_loss": cpcv.pbo.prob_oos_loss if cpcv else math.nan,
        "lookahead_checked_features": float(lookahead_checked),
        "decision_long": decision.long,
        "decision_short": decision.short,
        "decision_cost_multiple": float(res.best_decision.get("cost_multiple", math.nan))
        if decisions
        else math.nan,
    }
    return TrainResult(
        model,
        feats,
        split,
        importance_frame(model, feats),
        metrics,
        frame_fingerprint(table),
        res,
        cpcv,
        trial_sharpes,
        study_name,
        reference_frame(
            train,
            p_valid.to_numpy(),
            columns=feats,
            max_rows=cfg.monitoring.reference_rows,
            seed=seed,
        ),
        decision,
    )


def trained_metrics(ref: Any) -> dict[str, float]:
    """The metrics of the train step's run that registered a model version (``ref``: a
    :class:`~workbench.models.registry.ModelRef`); empty when the version has no run."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = ref.run_id or (client.get_model_version(ref.name, str(ref.version)).run_id or "")
    return dict(client.get_run(run_id).data.metrics) if run_id else {}


def trained_decision(cfg: WorkbenchConfig, strategy: str, ref: Any) -> DecisionPolicy | None:
    """The decision thresholds the train step chose for a version (cost-aware decisions: its
    run's ``decision_long`` and ``decision_short``); None when they come from the config."""
    strat = cfg.strategy(strategy)
    if not strat.decision.cost_multiples:
        return None
    m = trained_metrics(ref)
    if not {"decision_long", "decision_short"} <= set(m):
        raise ParameterError(
            f"strategies.{strategy}.decision.cost_multiples is set, but {ref.name} "
            f"v{ref.version}'s training run has no decision_long/decision_short metrics (the "
            "thresholds its search chose). Fix: train the version with 03_train (run_train), "
            "or drop cost_multiples to trade the configured long/short."
        )
    return DecisionPolicy(strat.decision, float(m["decision_long"]), float(m["decision_short"]))


def loggable_params(model: LGBMForecaster) -> dict[str, Any]:
    """Return the model's parameters as MLflow params (``lgbm.<name>``)."""
    return {f"lgbm.{k}": v for k, v in model.get_params().items() if v is not None}


def importance_figure(importance: pl.DataFrame) -> go.Figure:
    """Return a horizontal bar chart of gain importance."""
    df = importance.sort("gain")
    fig = go.Figure(go.Bar(x=df["gain"].to_list(), y=df["feature"].to_list(), orientation="h"))
    fig.update_layout(
        title="Feature importance (gain)", height=max(300, 28 * df.height), xaxis_title="total gain"
    )
    return fig
