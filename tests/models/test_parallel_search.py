"""Parallel Optuna on Dask: 2 workers on one journal storage complete exactly n_trials (nested
MLflow runs of the caller's run), survive a worker killed mid-trial, and find a best value within
the serial search's spread over seeds; SQLite (or an in-memory storage) with workers > 1 is
refused before anything is created."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import polars as pl
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from scipy.stats import ks_2samp

from workbench.config import SearchConfig
from workbench.errors import ParameterError
from workbench.models.parallel_search import check_parallel_storage
from workbench.models.search import run_search
from workbench.validation.cv import PurgedKFold

from .conftest import FEATURES, make_table, throwaway_experiment

SPACE = {
    "num_leaves": IntDistribution(3, 15, log=True),
    "learning_rate": FloatDistribution(0.05, 0.3, log=True),
    "min_child_samples": IntDistribution(10, 60),
    "num_boost_round": IntDistribution(5, 20),
}
N = 6
pytestmark = pytest.mark.slow  # LocalCluster processes and full searches: handed out first


@pytest.fixture(scope="module")
def table() -> pl.DataFrame:
    return make_table(n_ts=150)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway SQLite MLflow store; the global tracking state is restored afterwards."""
    with throwaway_experiment(tmp_path_factory.mktemp("mlflow"), "psearch") as exp:
        yield exp


@pytest.fixture(scope="module")
def client(experiment: str, dask_client: Any) -> Any:
    """A LocalCluster of 2 worker processes on 127.0.0.1, closed after the module."""
    return dask_client  # the MLflow store is set before the workers start


def _search(table: pl.DataFrame, storage: str, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "splitter": PurgedKFold(3, embargo=2),
        "n_trials": N,
        "seed": 0,
        "storage": storage,
        "study_name": "s",
        "search_space": SPACE,
        "progress": False,
        **kw,
    }
    return run_search(table, FEATURES, **args)


def kill_once(marker: Path) -> Any:
    """A fold backtest that SIGKILLs its worker process the first time it runs (marker file).

    A closure, so that it travels to the workers by value (cloudpickle), not as an import."""

    def backtest(fold: pl.DataFrame, preds: pl.DataFrame) -> float:
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return 0.0

    return backtest


def test_two_workers_complete_exactly_n_trials_as_nested_runs(
    tmp_path: Path, table: pl.DataFrame, client: Any, experiment: str
) -> None:
    with mlflow.start_run(run_name="train") as parent:
        res = _search(table, f"journal:{tmp_path / 'optuna.journal'}", workers=2, cluster=client)
    states = [t.state for t in res.study.get_trials()]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == N
    assert len(states) == N  # exactly n_trials, no overshoot
    assert res.n_new == N
    kids = mlflow.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(kids["tags.mlflow.runName"]) == [f"trial-{i}" for i in range(N)]
    assert set(kids["status"]) == {"FINISHED"}
    run = mlflow.MlflowClient().get_run(parent.info.run_id)
    assert run.info.status == "FINISHED"  # the workers left the caller's run to the caller
    assert run.data.tags["optuna.storage"].startswith("journal:")
    # a second call resumes the study: nothing is missing, nothing runs
    again = _search(table, f"journal:{tmp_path / 'optuna.journal'}", workers=2, cluster=client)
    assert again.n_new == 0 and len(again.study.trials) == N


def test_a_killed_worker_is_replaced_and_the_study_still_gets_n_trials(
    tmp_path: Path, table: pl.DataFrame, client: Any
) -> None:
    marker = tmp_path / "killed"
    res = _search(
        table,
        f"journal:{tmp_path / 'optuna.journal'}",
        workers=2,
        cluster=client,
        backtest_fn=kill_once(marker),
        study_name="killed",
    )
    assert marker.exists()  # a worker died mid-trial
    states = [t.state for t in res.study.get_trials()]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == N
    assert states.count(TrialState.FAIL) == 1  # the dead worker's trial, marked failed
    assert TrialState.RUNNING not in states


def test_parallel_trials_come_from_the_serial_search_distribution(
    tmp_path: Path, table: pl.DataFrame, client: Any
) -> None:
    # no pruning: a pruning decision depends on which trials finished first, on Dask by timing
    nop = optuna.pruners.NopPruner()

    def values(seed: int, tag: str = "", **kw: Any) -> list[float]:
        res = _search(
            table,
            f"journal:{tmp_path / 'j.journal'}",
            seed=seed,
            pruner=nop,
            study_name=f"{seed}-{kw.get('workers', 1)}{tag}",
            **kw,
        )
        return [t.value for t in res.study.trials]

    serial = [values(s) for s in (0, 1)]
    par = [values(s, workers=2, cluster=client) for s in (0, 1)]
    # trial scores: one distribution (two-sample Kolmogorov-Smirnov), best values alike
    assert ks_2samp(np.ravel(serial), np.ravel(par)).pvalue > 0.05
    s_best, p_best = np.max(serial, axis=1), np.max(par, axis=1)
    spread = np.ptp(np.ravel(serial))
    assert abs(p_best.mean() - s_best.mean()) < spread / 2, (s_best, p_best)
    # seeded: task i samples with seed + i, so a parallel search repeats itself
    assert sorted(values(0, "again", workers=2, cluster=client)) == sorted(par[0])


@pytest.mark.parametrize(
    ("storage", "fragment"),
    [
        ("sqlite:///x.db", "SQLite is not for concurrent writers"),
        (":memory:", "SQLite is not for concurrent writers"),
        (optuna.storages.InMemoryStorage(), "got a InMemoryStorage object"),
    ],
)
def test_sqlite_or_an_object_with_workers_is_refused_before_anything(
    tmp_path: Path, table: pl.DataFrame, storage: Any, fragment: str
) -> None:
    with pytest.raises(ParameterError) as err:
        _search(table, storage, workers=2)
    assert fragment in str(err.value)
    assert "journal:runs/optuna.journal" in str(err.value) and "postgresql://" in str(err.value)
    assert check_parallel_storage("journal:/tmp/x.journal", 2) == "journal:/tmp/x.journal"


def test_the_config_refuses_sqlite_for_search_workers() -> None:
    with pytest.raises(ValueError, match="cannot share the SQLite storage") as err:
        SearchConfig(workers=2)
    assert "journal:runs/optuna.journal" in str(err.value)
    assert SearchConfig(workers=2, storage="journal:runs/optuna.journal").workers == 2
