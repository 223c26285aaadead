"""run_search/refit: determinism, resume, pruning, MLflow layout, scores, figures, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import plotly.graph_objects as go
import polars as pl
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from workbench.backtest import run_backtest, signals_to_targets
from workbench.errors import ParameterError, SchemaError
from workbench.models import search as search_mod
from workbench.models.estimator import LGBMForecaster
from workbench.models.search import SearchError, refit, run_search
from workbench.validation.cv import PurgedKFold

from .conftest import FEATURES, make_table, throwaway_experiment

SPACE = {
    "num_leaves": IntDistribution(3, 15, log=True),
    "learning_rate": FloatDistribution(0.05, 0.3, log=True),
    "min_child_samples": IntDistribution(10, 60),
    "num_boost_round": IntDistribution(5, 20),
}


class TinyPurgedKFold:
    """The splitter protocol at its smallest: contiguous ts blocks, overlapping labels purged."""

    def __init__(self, n_splits: int = 3) -> None:
        self.n_splits = n_splits

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[Any, Any]]:
        ts, t1 = X["ts"].to_numpy(), X["t1"].to_numpy()
        for block in np.array_split(np.unique(ts), self.n_splits):
            lo, hi = block[0], block[-1]
            test = (ts >= lo) & (ts <= hi)
            yield np.flatnonzero((t1 < lo) | (ts > hi)), np.flatnonzero(test)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway SQLite MLflow store; the global tracking state is restored afterwards."""
    with throwaway_experiment(tmp_path_factory.mktemp("mlflow"), "search") as exp:
        yield exp


def _search(tmp: Path, table: pl.DataFrame, **kw: Any) -> search_mod.SearchResult:
    args: dict[str, Any] = {
        "splitter": PurgedKFold(3, embargo=2),
        "n_trials": 4,
        "seed": 11,
        "storage": f"sqlite:///{tmp / 'optuna.db'}",
        "study_name": "s",
        "search_space": SPACE,
        "progress": False,
        **kw,
    }
    return run_search(table, FEATURES, **args)


def _children(parent_id: str) -> Any:
    return mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    ).sort_values("tags.mlflow.runName")


def test_deterministic_with_seed(tmp_path: Path, table: pl.DataFrame, experiment: str) -> None:
    with mlflow.start_run():
        a = _search(tmp_path / "a", table)
        b = _search(tmp_path / "b", table)
    assert a.best_params == b.best_params and a.best_score == b.best_score
    assert a.fold_scores.equals(b.fold_scores)
    assert [t.params for t in a.study.trials] == [t.params for t in b.study.trials]
    assert a.n_trials == 4 and a.n_new == 4 and a.fold_scores.height == 4 * 3
    assert a.best_params["seed"] == 11 and a.best_params["objective"] == "regression"
    values = [t.value for t in a.study.trials if t.state == TrialState.COMPLETE]
    assert a.score_variance == pytest.approx(np.var(values, ddof=1))
    assert a.best_score == pytest.approx(max(values)) and a.best_score > 0.2  # planted signal


def test_resume_runs_only_missing_trials(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    with mlflow.start_run():
        first = _search(tmp_path, table, n_trials=3)
        first_params = [t.params for t in first.study.trials]  # the study object stays live
        second = _search(tmp_path, table, n_trials=5)
        third = _search(tmp_path, table, n_trials=5)
    assert (first.n_trials, first.n_new) == (3, 3)
    assert (second.n_trials, second.n_new) == (5, 2) and len(second.study.trials) == 5
    assert (third.n_trials, third.n_new) == (5, 0)
    # completed trials are kept as they were
    kept = second.study.trials[:3]
    assert [t.params for t in kept] == first_params
    # the resumed sampler does not replay the first proposals
    assert second.study.trials[3].params != first_params[0]


def test_resume_after_interruption(
    tmp_path: Path, table: pl.DataFrame, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fit = LGBMForecaster.fit_binned  # what each fold calls
    calls = {"n": 0}

    def fit_then_interrupt(self: LGBMForecaster, *a: Any, **kw: Any) -> LGBMForecaster:
        calls["n"] += 1
        if calls["n"] == 3 * 3 + 2:  # trial 3, fold 1: Ctrl-C
            raise KeyboardInterrupt
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(LGBMForecaster, "fit_binned", fit_then_interrupt)
    with mlflow.start_run() as parent:
        with pytest.raises(KeyboardInterrupt):
            _search(tmp_path, table, n_trials=5)
        monkeypatch.setattr(LGBMForecaster, "fit_binned", real_fit)
        res = _search(tmp_path, table, n_trials=5)
    states = [t.state for t in res.study.trials]
    assert states.count(TrialState.COMPLETE) == 5 and states.count(TrialState.FAIL) == 1
    assert res.n_trials == 5 and res.n_failed == 1 and res.n_new == 2
    runs = _children(parent.info.run_id)
    assert runs["tags.state"].tolist().count("failed") == 1
    assert runs["tags.state"].tolist().count("complete") == 5


def test_pruned_trials_are_recorded(tmp_path: Path, table: pl.DataFrame, experiment: str) -> None:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    with mlflow.start_run() as parent:
        res = _search(tmp_path, table, n_trials=8, seed=1, pruner=pruner)
    pruned = [t for t in res.study.trials if t.state == TrialState.PRUNED]
    assert res.n_pruned == len(pruned) >= 1 and res.n_trials + res.n_pruned == 8
    assert all(t.intermediate_values for t in pruned)  # the LightGBM callback reported
    runs = _children(parent.info.run_id).set_index("tags.mlflow.runName")
    for t in pruned:
        run = runs.loc[f"trial-{t.number}"]
        assert run["tags.state"] == "pruned" and run["status"] == "FINISHED"
    assert set(res.fold_scores["state"]) <= {"complete", "pruned"}


def test_nested_mlflow_runs_layout(tmp_path: Path, table: pl.DataFrame, experiment: str) -> None:
    with mlflow.start_run(run_name="study") as parent:
        res = _search(tmp_path, table, n_trials=3)
    runs = _children(parent.info.run_id)
    assert runs["tags.mlflow.runName"].tolist() == ["trial-0", "trial-1", "trial-2"]
    assert set(runs["experiment_id"]) == {experiment} and set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.state"]) == {"complete"}
    for _, run in runs.iterrows():
        trial = res.study.trials[int(run["tags.optuna.trial_number"])]
        assert int(run["params.num_leaves"]) == trial.params["num_leaves"]
        assert run["params.objective"] == "regression" and run["params.seed"] == "11"
        folds = [run[f"metrics.ic_fold_{k}"] for k in range(3)]
        assert folds == pytest.approx(trial.user_attrs["fold_scores"])
        assert run["metrics.ic_mean"] == pytest.approx(trial.value)
    client = mlflow.MlflowClient()
    top = client.get_run(parent.info.run_id).data
    assert top.tags["optuna.study_name"] == "s" and top.tags["search.score"] == "ic"
    assert top.metrics["search_best_ic"] == pytest.approx(res.best_score)
    assert top.metrics["search_n_trials"] == 3
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "search/s")}
    assert names == {
        "search/s/optimization_history.html",
        "search/s/param_importances.html",
        "search/s/fold_scores.html",
        "search/s/summary.json",
    }
    summary = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/search/s/summary.json")
    assert summary["best_params"] == json.loads(json.dumps(res.best_params))


def test_opens_its_own_parent_run_when_none_is_active(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    assert mlflow.active_run() is None
    _search(tmp_path, table, n_trials=2, study_name="solo")
    assert mlflow.active_run() is None
    parent = mlflow.search_runs([experiment], filter_string="tags.mlflow.runName = 'search-solo'")
    assert len(parent) == 1 and parent["status"][0] == "FINISHED"
    assert len(_children(parent["run_id"][0])) == 2


def test_storage_password_is_not_logged() -> None:
    shown = search_mod._redacted("postgresql://optuna:hunter2@db.local:5432/optuna")
    assert "hunter2" not in shown and shown.startswith("postgresql://optuna:***@db.local")


def _bars_and_table(n: int = 400, h: int = 3) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(3)
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    ts = [start + timedelta(minutes=5 * i) for i in range(n)]
    bars, tables = [], []
    for sym in ("AAA", "BBB", "CCC"):
        c = 100 * np.cumprod(1 + rng.normal(0, 0.002, n))
        o = np.r_[100.0, c[:-1]]
        bars.append(
            pl.DataFrame(
                {"symbol": sym, "ts": ts, "open": o, "high": np.maximum(o, c) * 1.0005,
                 "low": np.minimum(o, c) * 0.9995, "close": c, "volume": 1e4,
                 "vwap": (o + c) / 2, "trade_count": 10}
            )
        )  # fmt: skip
        fwd = np.r_[c[h:] / c[:-h] - 1, [np.nan] * h]
        x = rng.normal(size=(n, len(FEATURES)))
        x[:, 0] = np.nan_to_num(fwd) * 300 + x[:, 0]  # a strong planted signal
        tables.append(
            pl.DataFrame(
                {"symbol": sym, "ts": ts, **dict(zip(FEATURES, x.T, strict=True))}
            ).with_columns(label=pl.Series(fwd).fill_nan(None), t1=pl.col("ts").shift(-h))
        )
    return pl.concat(bars), pl.concat(tables)


def test_sharpe_score_calls_backtest_fn(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    bars, feats = _bars_and_table()
    calls: list[tuple[pl.DataFrame, pl.DataFrame]] = []

    def sharpe(fold: pl.DataFrame, preds: pl.DataFrame) -> float:
        calls.append((fold, preds))
        window = bars.join(fold.select("symbol", "ts"), on=["symbol", "ts"])
        return run_backtest(window, signals_to_targets(preds, score_col="prediction")).stats[
            "sharpe"
        ]

    with mlflow.start_run():
        res = _search(
            tmp_path, feats, score="sharpe", backtest_fn=sharpe, n_trials=2,
            pruner=optuna.pruners.NopPruner(),
        )  # fmt: skip
    assert len(calls) == 2 * 3 and res.direction == "maximize"
    fold, preds = calls[0]
    assert preds.columns == ["symbol", "ts", "prediction"]
    assert fold.select("symbol", "ts").equals(preds.select("symbol", "ts"))
    assert fold.equals(fold.sort("symbol", "ts")) and fold["label"].is_not_null().all()
    assert res.fold_scores["score"].to_list() == pytest.approx(
        [s for t in res.study.trials for s in t.user_attrs["fold_scores"]]
    )
    assert res.best_score > 0  # the planted signal trades profitably


def test_backtest_fn_beside_another_score_records_trial_sharpes(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    seen: list[int] = []

    def sharpe(fold: pl.DataFrame, preds: pl.DataFrame) -> float:
        seen.append(fold.height)
        return float(len(seen))  # fold k of trial t returns 3 * t + k + 1

    with mlflow.start_run() as parent:
        res = _search(
            tmp_path, table, score="ic", backtest_fn=sharpe, n_trials=3,
            pruner=optuna.pruners.NopPruner(),
        )  # fmt: skip
    assert len(seen) == 3 * 3
    # the score is still the IC; each trial's Sharpe is the mean of its folds' backtests
    assert res.trial_sharpes() == {0: 2.0, 1: 5.0, 2: 8.0}
    ic_scores = [t.value for t in res.study.trials]
    assert all(-1 <= v <= 1 for v in ic_scores) and res.best_score == max(ic_scores)
    trial1 = _children(parent.info.run_id).iloc[1]
    assert trial1["metrics.sharpe_fold_2"] == 6.0 and "metrics.ic_fold_2" in trial1
    top = res.top_params(2)
    ranked = sorted(res.study.trials, key=lambda t: t.value, reverse=True)
    assert top == [t.user_attrs["params"] for t in ranked[:2]]
    assert top[0] == res.best_params


def test_trial_sharpes_count_pruned_trials_and_skip_without_backtest(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    with mlflow.start_run():
        plain = _search(tmp_path, table, n_trials=2, study_name="plain")
    assert plain.trial_sharpes() == {}

    class OddTrialsAfterFirstFold(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            step = trial.last_step or 0
            return trial.number % 2 == 1 and step >= 100  # fold 1 starts at step 100

    calls: list[float] = []

    def sharpe(fold: pl.DataFrame, preds: pl.DataFrame) -> float:
        calls.append(float(len(calls)))
        return calls[-1]

    with mlflow.start_run():
        res = _search(
            tmp_path, table, n_trials=4, study_name="pruned", backtest_fn=sharpe,
            pruner=OddTrialsAfterFirstFold(),
        )  # fmt: skip
    states = [t.state for t in res.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED] * 2
    # complete trials average 3 folds; pruned ones the single fold they backtested
    assert res.trial_sharpes() == {0: 1.0, 1: 3.0, 2: 5.0, 3: 7.0}
    assert res.n_trials == 2 and len(res.trial_sharpes()) == 4


@pytest.mark.parametrize("score", ["logloss", "auc"])
def test_binary_scores(tmp_path: Path, table: pl.DataFrame, experiment: str, score: str) -> None:
    with mlflow.start_run():
        res = _search(tmp_path, table, score=score, n_trials=2, splitter=TinyPurgedKFold(3))
    assert res.best_params["objective"] == "binary"
    if score == "logloss":
        assert res.direction == "minimize" and 0.3 < res.best_score < 0.7
    else:
        assert res.direction == "maximize" and 0.55 < res.best_score <= 1
    p = refit(res.best_params, table, FEATURES).predict(table)
    assert ((p > 0) & (p < 1)).all()


def test_refit_on_full_window(tmp_path: Path, table: pl.DataFrame, experiment: str) -> None:
    with mlflow.start_run():
        res = _search(tmp_path, table, n_trials=2)
    gappy = table.with_columns(label=pl.when(pl.col("ts") == pl.col("ts").max()).then(None)
                               .otherwise(pl.col("label")))  # fmt: skip
    model = refit(res.best_params, gappy, FEATURES)
    assert isinstance(model, LGBMForecaster) and model.feature_names_ == FEATURES
    labelled = gappy.drop_nulls("label")
    twin = LGBMForecaster(**res.best_params).fit(labelled.select(FEATURES), labelled["label"])
    np.testing.assert_array_equal(model.predict(table), twin.predict(table))


def test_figures(tmp_path: Path, table: pl.DataFrame, experiment: str) -> None:
    with mlflow.start_run():
        one = _search(tmp_path, table, n_trials=1, study_name="one")
        two = _search(tmp_path, table, n_trials=3, study_name="two")
    assert set(one.figures) == {"optimization_history", "fold_scores"}  # importances need 2
    assert set(two.figures) == {"optimization_history", "param_importances", "fold_scores"}
    assert all(isinstance(f, go.Figure) for f in two.figures.values())
    imp = two.figures["param_importances"].data[0]
    assert set(imp.y) == set(SPACE)
    boxes = two.figures["fold_scores"].data
    assert boxes[0].name == "complete" and len(boxes[0].y) == 3 * 3


def test_argument_errors(tmp_path: Path, table: pl.DataFrame) -> None:
    with pytest.raises(ParameterError, match="'score'.*Got 'sharp'.*Did you mean 'sharpe'"):
        _search(tmp_path, table, score="sharp")
    with pytest.raises(ParameterError, match="'backtest_fn'.*required with score='sharpe'"):
        _search(tmp_path, table, score="sharpe")
    with pytest.raises(ParameterError, match="'num_leafs'.*Did you mean 'num_leaves'"):
        _search(tmp_path, table, search_space={"num_leafs": IntDistribution(2, 8)})
    with pytest.raises(ParameterError, match="must map names to Optuna distributions"):
        _search(tmp_path, table, search_space={"num_leaves": 8})
    with pytest.raises(ParameterError, match=r"both set \['num_leaves'\]"):
        _search(tmp_path, table, params={"num_leaves": 8})
    with pytest.raises(ParameterError, match="'objective'"):
        _search(tmp_path, table, params={"objective": "huber"})
    with pytest.raises(ParameterError, match="'n_trials'.*int >= 1. Got 0"):
        _search(tmp_path, table, n_trials=0)
    with pytest.raises(SchemaError, match=r"no column\(s\) \['t1'\]"):
        _search(tmp_path, table.drop("t1"))
    with pytest.raises(ParameterError, match="'splitter'.*split\\(X\\)"):
        _search(tmp_path, table, splitter=object())
    with pytest.raises(ParameterError, match="'best_params'.*'num_leafs'"):
        refit({"num_leafs": 3}, table, FEATURES)


def test_study_errors(tmp_path: Path, table: pl.DataFrame, experiment: str) -> None:
    class Empty:
        def split(self, X: Any) -> Iterator[tuple[Any, Any]]:
            yield np.arange(10), np.array([], dtype=np.int64)

    with pytest.raises(SearchError, match="fold 0 of Empty has 10 train and 0 test rows"):
        _search(tmp_path, table, splitter=Empty())
    with mlflow.start_run():
        _search(tmp_path, table, n_trials=1)
        with pytest.raises(SearchError, match="created with features=.*new study_name"):
            run_search(
                table, FEATURES[:2], splitter=PurgedKFold(3, embargo=2), n_trials=2, seed=11,
                storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s",
                search_space=SPACE, progress=False,
            )  # fmt: skip
        with pytest.raises(SearchError, match="created with score='ic'"):
            _search(tmp_path, table, score="auc", n_trials=2)


def test_input_table_unchanged(tmp_path: Path, experiment: str) -> None:
    table = make_table(n_ts=200, seed=5)
    before = table.clone()
    with mlflow.start_run():
        _search(tmp_path, table, n_trials=1)
    assert table.equals(before)


def test_decision_space_is_searched_with_the_model_and_traded_by_the_folds(
    tmp_path: Path, experiment: str
) -> None:
    """Each trial draws its decision parameters; every fold's backtest trades them, so the
    trial's score is that of what is traded, and the best trial's decision is the chosen one."""
    from optuna.distributions import CategoricalDistribution

    _, feats = _bars_and_table()
    value = {0.5: 0.1, 1.5: 0.3, 3.0: 0.2}  # the fold's Sharpe depends on the decision only
    calls: list[dict[str, Any]] = []

    def sharpe(fold: pl.DataFrame, preds: pl.DataFrame, *, decision: dict[str, Any]) -> float:
        calls.append(decision)
        return value[decision["cost_multiple"]]

    space = {"cost_multiple": CategoricalDistribution([0.5, 1.5, 3.0])}
    with mlflow.start_run():
        res = _search(
            tmp_path, feats, score="sharpe", backtest_fn=sharpe, n_trials=8, decision_space=space,
            pruner=optuna.pruners.NopPruner(),
        )  # fmt: skip
    trials = res.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(calls) == 8 * 3  # every fold of every trial, with the trial's own decision
    assert calls == [t.user_attrs["decision"] for t in trials for _ in range(3)]
    assert all(
        t.params["decision.cost_multiple"] == t.user_attrs["decision"]["cost_multiple"]
        for t in trials
    )
    assert all(
        t.value == pytest.approx(value[t.user_attrs["decision"]["cost_multiple"]]) for t in trials
    )
    best = max(trials, key=lambda t: t.value)
    assert res.best_decision == best.user_attrs["decision"] == {"cost_multiple": 1.5}
    assert "cost_multiple" not in res.best_params  # decision parameters never reach the model
    top = res.top_candidates(3)
    assert top[0] == (res.best_params, {"cost_multiple": 1.5})
    assert res.top_params(3) == [p for p, _ in top]
    with pytest.raises(ParameterError, match="'decision_space'.*needs a backtest_fn"):
        _search(tmp_path / "x", feats, decision_space=space)


def test_cost_aware_thresholds_are_multiples_of_the_round_trip_cost() -> None:
    """Hand-computed: 2 x (half spread 2 + commission 0.5 + slippage 1) bps = 7 bps a round trip."""
    from workbench.config import CostsConfig, DecisionConfig
    from workbench.risk.decision import DecisionPolicy, round_trip_cost

    costs = CostsConfig(half_spread_bps=2.0, commission_bps=0.5, slippage_bps=1.0)
    assert round_trip_cost(costs) == pytest.approx(7e-4)
    cfg = DecisionConfig(method="threshold", cost_multiples=(1.0, 2.0))
    pol = DecisionPolicy.at_cost_multiple(cfg, costs, 2.0)
    assert pol.thresholds() == pytest.approx({"long": 1.4e-3, "short": -1.4e-3})
    side, _ = pol.decide(np.array([1.5e-3, 1.3e-3, -1.3e-3, -1.5e-3, np.nan]))
    assert side.tolist() == [1, 0, 0, -1, 0]  # the predicted edge must beat twice the cost
    with pytest.raises(ParameterError, match="cost multiple"):
        DecisionPolicy.at_cost_multiple(cfg, costs, -1.0)
    with pytest.raises(ValueError, match="cost_multiples .* need method: threshold"):
        DecisionConfig(method="quantile", long=0.8, short=0.2, cost_multiples=(1.0,))


class _NeverPrune(optuna.pruners.BasePruner):
    """A pruner that reads every report and never prunes: the search's work with reports on."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return False


def test_without_a_pruner_no_round_is_reported_and_the_trials_are_the_same(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    with mlflow.start_run():
        nop = _search(tmp_path / "nop", table, pruner=optuna.pruners.NopPruner())
    with mlflow.start_run():
        reads = _search(tmp_path / "reads", table, pruner=_NeverPrune())
    a, b = nop.study.trials, reads.study.trials
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == [t.value for t in b]  # the same models, exactly
    assert all(t.intermediate_values for t in b)  # a pruner gets its per-round reports
    assert not any(t.intermediate_values for t in a)  # nothing reads them: none written


def test_an_sqlite_study_is_kept_in_wal_mode_and_resumes_from_a_plain_url(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    """SQLite storage runs in WAL mode with normal sync (a commit per pruning report would
    otherwise cost several fsyncs); the file is an ordinary Optuna database."""
    import sqlite3

    with mlflow.start_run():
        res = _search(tmp_path, table)
    with sqlite3.connect(tmp_path / "optuna.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.value for t in again.trials] == [t.value for t in res.study.trials]
    conn = search_mod.sqlite_storage(f"sqlite:///{tmp_path / 'optuna.db'}").engine.raw_connection()
    try:
        assert conn.cursor().execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        conn.close()


def test_folds_fitted_in_threads_give_the_same_study(
    tmp_path: Path, table: pl.DataFrame, experiment: str
) -> None:
    """The folds' reports are replayed in the serial order: the same pruning, values, reports."""

    def trials(res: search_mod.SearchResult) -> list[tuple[Any, ...]]:
        return [
            (t.state, t.value, t.params, t.intermediate_values, t.user_attrs)
            for t in res.study.trials
        ]

    def pruner() -> optuna.pruners.BasePruner:
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)

    with mlflow.start_run():
        serial = _search(tmp_path / "serial", table, n_trials=8, seed=1, pruner=pruner())
        threads = _search(tmp_path / "threads", table, n_trials=8, seed=1, pruner=pruner(), jobs=2)
        nop = [
            _search(tmp_path / f"nop{j}", table, pruner=optuna.pruners.NopPruner(), jobs=j)
            for j in (1, 2)
        ]
    assert serial.n_pruned >= 1  # some trials stop part-way, at the same fold and round
    assert trials(threads) == trials(serial)
    assert threads.fold_scores.equals(serial.fold_scores)
    assert trials(nop[1]) == trials(nop[0])
    with pytest.raises(ParameterError, match="'jobs' parameter of run_search must be an int >= 1"):
        _search(tmp_path / "bad", table, jobs=0)
