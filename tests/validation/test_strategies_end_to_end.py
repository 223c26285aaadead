"""Every shipped strategy end to end on the simulator: promoted on its planted edge, refused on
the null market.

The research method runs through the calls the pipeline's steps make: the simulator into a bar
store (ingest), the features step's table, ``run_train`` (the Optuna search scored by purged
K-fold with costs and the strategy's decision policy, the refit, the CPCV PBO among distinct
candidates), the model registered as 03_train registers it (its run holding the train metrics:
the decision thresholds the search chose), then ``run_validate`` with the walk-forward and
``apply_gates``, which points ``challenger`` at the version only when every gate passes. Every
configured gate is on (the deflated Sharpe ratio and the PBO among them); "promoted" means the
gates passed *and* the alias was set.

Sizes are small (a short search, a few symbols) but the method is the pipeline's. The planted
strengths are the tests' (stronger than the simulator's documentation examples where a short
sample needs it to clear the deflated-Sharpe gate): see each case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import pytest

from tests.models.conftest import throwaway_experiment
from workbench.config import WorkbenchConfig, load_config
from workbench.data.schema import KEY
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.validation.evaluate import build_feature_table

REPO = Path(__file__).resolve().parents[2]
TIMEFRAME = "5Min"


@dataclass
class Verdict:
    """What the validate step decided, and the measurements it judged."""

    promoted: bool  # every gate passed and the version is now the challenger
    alias_version: str | None  # the version 'challenger' points at (None: unset)
    version: str
    gates: pl.DataFrame
    metrics: dict[str, float]
    train_metrics: dict[str, float]
    message: str

    def figure(self, gate: str) -> float:
        row = self.gates.filter(pl.col("gate") == gate)
        return float(row["value"][0]) if row.height else math.nan

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "promoted": self.promoted,
            "wf_sharpe": m.get("wf_sharpe"),
            "wf_deflated_sharpe": m.get("wf_deflated_sharpe"),
            "pbo": m.get("pbo"),
            "pbo_distinct": m.get("pbo_distinct"),
            "wf_ic": m.get("wf_ic"),
            "wf_n_trades": m.get("wf_n_trades"),
            "failures": self.message,
        }


def research(
    cfg: WorkbenchConfig,
    work: Path,
    *,
    strategy: str,
    simulator: dict[str, float],
    symbols: int,
    start: datetime,
    end: datetime,
    seed: int = 0,
    n_trials: int = 6,
    walk_forward_folds: int = 4,
) -> Verdict:
    """Run the research method once on the simulator and return the validate step's verdict."""
    from workbench.models.registry import CHALLENGER, log_lightgbm
    from workbench.stages.train import run_train
    from workbench.stages.validate import apply_gates, run_validate

    syms = [f"SYN{i:03d}" for i in range(symbols)]
    tag = "-".join(f"{k}={v}" for k, v in sorted(simulator.items())) or "null"
    bars = SyntheticSource(seed=seed, **simulator).fetch(syms, TIMEFRAME, start, end)
    root = work / f"bars-{strategy}-{tag}"
    BarStore(root, cfg.store.partition).write(bars, TIMEFRAME)
    path = work / f"features-{strategy}-{tag}.parquet"
    build_feature_table(cfg, bars, strategy).sort(list(KEY)).write_parquet(path)

    res = run_train(
        cfg,
        features_path=path,
        store_root=root,
        strategy=strategy,
        timeframe=TIMEFRAME,
        seed=seed,
        n_trials=n_trials,
        storage=f"journal:{work / 'optuna.journal'}",  # a file journal: no SQLite commit per pruning report
        progress=False,
    )
    with mlflow.start_run(run_name=f"train {strategy} {tag}"):
        mlflow.log_metrics({k: v for k, v in res.metrics.items() if math.isfinite(v)})
        ref = log_lightgbm(
            res.model,
            res.split.train.select(res.features).to_pandas(),
            registered_name=strategy,
            tags={"split_ts": res.split.split_ts.isoformat(), "strategy": strategy},
        )
    split_ts = res.split.split_ts.isoformat()
    with mlflow.start_run(run_name=f"validate {strategy} {tag}"):
        val = run_validate(
            cfg,
            features_path=path,
            store_root=str(root),
            model=ref,
            split_ts=split_ts,
            strategy=strategy,
            timeframe=TIMEFRAME,
            trial_sharpes=res.trial_sharpes,
            n_trials=int(res.metrics["search_trials"]),
            trial_correlation=res.metrics["trial_correlation"],
            pbo=res.metrics["pbo"],
            walk_forward_folds=walk_forward_folds,
            seed=seed,
        )
        message = apply_gates(
            val,
            ref,
            features_path=str(path),
            store_root=str(root),
            split_ts=split_ts,
            timeframe=TIMEFRAME,
            strategy=strategy,
            cfg=cfg,
        )
    client = mlflow.MlflowClient()
    try:
        alias = str(client.get_model_version_by_alias(strategy, CHALLENGER).version)
    except mlflow.exceptions.MlflowException:
        alias = None
    return Verdict(
        promoted=val.gates.passed and alias == str(ref.version),
        alias_version=alias,
        version=str(ref.version),
        gates=val.gates.frame,
        metrics=val.metrics,
        train_metrics=res.metrics,
        message=message,
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ----------------------------------------------------------------------------- the cases

# strategy, its planted edge, symbols, window. intraday_reversal's pair is the research
# pipeline's own test (tests/notebooks/test_research_pipeline.py: alpha 0.25 promoted with the
# challenger alias, alpha 0 refused).
CASES = {
    # VWAP reversion 0.25: a next-bar IC of about 0.15 (vwap_expected_ic); a quarter of 3 symbols
    "intraday_mean_reversion": ({"vwap_reversion": 0.25}, 3, utc(2024, 1, 2), utc(2024, 4, 1)),
    # trend 0.4: the 5-session momentum's IC on the next 5 sessions is about 0.29
    # (trend_expected_ic); a daily-scale edge needs months out of sample for the deflated Sharpe
    # gate, so a year of 8 symbols
    "swing_trend_following": ({"trend": 0.4}, 8, utc(2024, 1, 2), utc(2025, 1, 1)),
}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway MLflow store and registry, risk state and feature store for this module."""
    root = tmp_path_factory.mktemp("strategies")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WB_MLFLOW__ARTIFACT_ROOT", str(root / "mlartifacts"))
        mp.setenv("WB_RISK__STATE_URL", f"sqlite:///{root / 'risk.db'}")
        mp.setenv("WB_STORE__FEATURES_ROOT", str(root / "features"))
        mp.setenv("WB_STORE__ROOT", str(root / "bars"))
        with throwaway_experiment(root, "strategies end to end"):
            yield root, load_config(REPO)


def run_case(tracking: tuple, strategy: str, planted: bool) -> Verdict:
    root, cfg = tracking
    sim, symbols, start, end = CASES[strategy]
    work = root / f"{strategy}-{'planted' if planted else 'null'}"
    work.mkdir()
    # a registry of its own per run: the challenger alias can only come from this validation
    with throwaway_experiment(work, f"{strategy} {planted}"):
        return research(
            cfg,
            work,
            strategy=strategy,
            simulator=sim if planted else {},
            symbols=symbols,
            start=start,
            end=end,
        )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CASES))
def test_promoted_on_its_planted_edge(tracking: tuple, strategy: str) -> None:
    v = run_case(tracking, strategy, planted=True)
    detail = (v.summary(), v.gates)
    gates = set(v.gates["gate"])
    assert {"min_deflated_sharpe", "max_pbo", "min_sharpe", "min_ic"} <= gates, detail
    dsr = v.gates.row(by_predicate=pl.col("gate") == "min_deflated_sharpe", named=True)
    pbo = v.gates.row(by_predicate=pl.col("gate") == "max_pbo", named=True)
    # both overfitting gates applied, not waived: PBO measured among >= 3 distinct candidates
    assert dsr["passed"] and dsr["value"] >= 0.95 and dsr["note"] == "", detail
    assert pbo["passed"] and pbo["note"] == "" and 0 <= pbo["value"] <= 0.3, detail
    assert v.metrics["pbo_distinct"] >= 3, detail
    assert v.gates["passed"].all() and v.promoted and v.alias_version == v.version, detail
    assert v.metrics["wf_folds"] == 4 and v.metrics["wf_ic"] > 0.05, detail


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CASES))
def test_refused_on_the_null_market(tracking: tuple, strategy: str) -> None:
    v = run_case(tracking, strategy, planted=False)
    detail = (v.summary(), v.gates)
    assert not v.gates["passed"].all() and not v.promoted, detail
    assert v.alias_version is None, detail  # no challenger was set
    # nothing to find: no out-of-sample Sharpe the deflation (or chance) cannot explain
    dsr = v.gates.row(by_predicate=pl.col("gate") == "min_deflated_sharpe", named=True)
    assert not dsr["passed"], detail


# ----------------------------------------------------------------------------- no look-ahead


@pytest.fixture(scope="module")
def sim_bars() -> pl.DataFrame:
    """Two symbols, 15 sessions: past the swing set's 780-bar warm-up, both edges planted."""
    src = SyntheticSource(seed=4, vwap_reversion=0.2, trend=0.3)
    return src.fetch(["SYN000", "SYN001"], "5Min", utc(2024, 3, 1), utc(2024, 3, 22))


@pytest.mark.parametrize("strategy", sorted(CASES))
def test_strategy_features_and_label_use_only_the_past(sim_bars: pl.DataFrame, strategy: str):
    from workbench.features.lookahead import check_label_causality, check_truncation
    from workbench.features.sets import build_features
    from workbench.labels import build_labels

    cfg = load_config(REPO)
    strat = cfg.strategy(strategy)
    feats = build_features(sim_bars, strat.feature_set, cfg)
    assert feats.drop_nulls().height > 100  # the set is defined on these bars (not all warm-up)
    check_truncation(lambda b: build_features(b, strat.feature_set, cfg), sim_bars, name=strategy)
    labels = build_labels(sim_bars, strat.label)
    assert labels["label"].is_not_null().sum() > 100
    check_label_causality(lambda b: build_labels(b, strat.label), sim_bars, name=strategy)


def test_vwap_mean_reversion_label_fades_the_session_vwap(sim_bars: pl.DataFrame) -> None:
    """The rule's side is minus the sign of the VWAP z-score where it is at least entry_z, and
    the labelled return is the trade's raw return (positive: the price rose)."""
    from workbench.features.indicators import vwap, vwap_zscore
    from workbench.labels import mean_reversion

    lab = mean_reversion(sim_bars, 12, anchor="vwap", entry_z=0.5, sl=2.0)
    z = sim_bars.select(vwap_zscore()).to_series().to_numpy()
    side = lab["side"].to_numpy()
    traded = np.isfinite(side)
    assert traded.sum() > 100
    np.testing.assert_array_equal(side[traded], -np.sign(z[traded]))
    assert (np.abs(z[traded]) >= 0.5).all()
    # a profit-take exits at the session VWAP of the decision bar
    vw = sim_bars.select(vwap()).to_series().to_numpy()
    entry = sim_bars["open"].shift(-1).to_numpy()
    pt = (lab["barrier"] == "pt").fill_null(False).to_numpy() & traded
    gap = lab["ret"].to_numpy()[pt] - (vw[pt] / entry[pt] - 1.0)
    through = np.abs(gap) > 1e-12  # the rest opened beyond the VWAP and exited at that open
    assert pt.sum() > 20 and (~through).mean() > 0.5
    assert (
        lab["meta_label"].to_numpy()[traded] == (side * lab["ret"].to_numpy() > 0)[traded]
    ).all()
