"""The pruner wrapper reads completed trials once per trial and decides as its inner pruner does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import optuna
import polars as pl
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from workbench.models import search as search_mod
from workbench.models.pruning import CompletedTrialsCache, cache_completed, inner_pruner

from .conftest import throwaway_experiment
from .test_search import _search


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with throwaway_experiment(tmp_path_factory.mktemp("mlflow"), "pruning") as exp:
        yield exp


class _Counting:
    """A study proxy that counts reads of the completed trials."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.reads = study, 0

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        self.reads += 1
        return self.study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.study, name)


def _study_with_history(n: int = 6, steps: int = 30) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for k in range(n):  # completed trials whose curves rise at different speeds
        inter = {s: (k + 1) * s / steps for s in range(steps)}
        study.add_trial(create_trial(params={"x": k / n}, distributions=dist, value=inter[steps - 1],
                                     intermediate_values=inter))  # fmt: skip
    return study


def test_same_decisions_and_one_read_per_trial() -> None:
    study = _study_with_history()
    inner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)
    wrapped = CompletedTrialsCache(inner)
    counting = _Counting(study)
    decided = []
    for number, speed in ((100, 0.5), (101, 6.0)):  # a slow trial (pruned) and a fast one
        for step in range(30):
            trial = create_trial(state=TrialState.RUNNING, params={}, distributions={},
                                 intermediate_values={s: speed * s / 30 for s in range(step + 1)})  # fmt: skip
            trial.number = number
            a, b = wrapped.prune(counting, trial), inner.prune(study, trial)
            assert a == b, (number, step)
            decided.append(a)
    assert counting.reads == 2  # once per trial, not once per report (60 reports)
    assert True in decided and False in decided  # both kinds of decision were exercised


def test_wrapping_is_idempotent_and_transparent() -> None:
    nop = optuna.pruners.NopPruner()
    assert cache_completed(nop) is nop and inner_pruner(nop) is nop
    med = optuna.pruners.MedianPruner()
    w = cache_completed(med)
    assert isinstance(w, CompletedTrialsCache) and cache_completed(w) is w
    assert inner_pruner(w) is med


def test_search_prunes_exactly_as_without_the_cache(
    tmp_path: Path, table: pl.DataFrame, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(folder: str) -> list[tuple[TrialState, float | None, dict]]:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        with mlflow.start_run():
            res = _search(tmp_path / folder, table, n_trials=8, seed=1, pruner=pruner)
        return [(t.state, t.value, t.intermediate_values) for t in res.study.trials]

    cached = run("cached")
    monkeypatch.setattr(search_mod, "cache_completed", lambda p: p)
    plain = run("plain")
    assert cached == plain
    assert any(state == TrialState.PRUNED for state, _, _ in cached)
