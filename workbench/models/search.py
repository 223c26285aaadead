"""Optuna search over :class:`LGBMForecaster` hyperparameters, scored by purged cross-validation.

>>> with mlflow.start_run(run_name="search"):  # doctest: +SKIP
...     res = run_search(table, features, splitter=PurgedKFold(5, embargo=...), score="ic",
...                      n_trials=50, seed=7, storage="sqlite:///runs/optuna.db", study_name="s1")
>>> model = refit(res.best_params, table, features)  # doctest: +SKIP

Every trial fits one model per fold of ``splitter`` (the same folds for every trial) and scores it
on the fold's test rows; the trial's value is the mean fold score. A seeded TPE sampler proposes
parameters and a median pruner stops weak trials early: ``optuna_integration.LightGBMPruningCallback``
reports the fold's validation metric every few boosting rounds, fold ``k``'s round ``i`` as step
``k * stride + i`` so one step axis holds all folds. Trials live in persistent storage (SQLite by
default, any RDB URL), so a killed search resumes: ``n_trials`` is the total the study should hold.

MLflow layout: the caller's active run (one is opened if none is) gets the figures, a summary
JSON and ``search_*`` metrics; each trial is a nested run ``trial-<n>`` with its parameters, fold
scores, mean score and the tag ``state`` (``complete``, ``pruned`` or ``failed``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
import polars as pl
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from workbench.errors import ParameterError, SchemaError, WorkbenchError
from workbench.models.binned import BinnedRows
from workbench.models.estimator import (
    VALID_NAME,
    LGBMForecaster,
    check_params,
    estimator_params,
)
from workbench.models.lgbm import feature_matrix
from workbench.models.pruning import cache_completed, inner_pruner

DEFAULT_STORAGE = "sqlite:///optuna.db"
"""Default Optuna storage: an SQLite file in the working directory."""

DEFAULT_SEARCH_SPACE: dict[str, BaseDistribution] = {
    "num_leaves": IntDistribution(4, 64, log=True),
    "learning_rate": FloatDistribution(0.01, 0.3, log=True),
    "min_child_samples": IntDistribution(20, 2000, log=True),
    "feature_fraction": FloatDistribution(0.4, 1.0),
    "bagging_fraction": FloatDistribution(0.4, 1.0),
    "lambda_l2": FloatDistribution(1e-3, 10.0, log=True),
    "num_boost_round": IntDistribution(50, 500, log=True),
}
"""LightGBM defaults: leaves, learning rate, leaf size, column/row subsampling, L2, rounds."""

REPORT_EVERY = 5
"""Boosting rounds between two pruning reports (each report is a storage write)."""

_FIXED_BY_SEARCH = ("objective", "metric", "early_stopping_rounds")
_ATTR = "workbench."  # prefix of the study's user attributes


class SearchError(WorkbenchError):
    """The data, the folds or the stored study do not allow a search (bad arguments raise
    :class:`~workbench.errors.ParameterError`)."""


class Splitter(Protocol):
    """Any scikit-learn-style splitter: ``split(X)`` yields ``(train_idx, test_idx)`` arrays."""

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterable[tuple[Any, Any]]: ...


BacktestFn = Callable[..., float]
"""``backtest_fn(fold_table, predictions) -> Sharpe`` (with a ``decision_space``, also the
keyword ``decision=``: the trial's decision parameters)."""


@dataclass(frozen=True)
class _Score:
    direction: str
    objective: str
    metric: str  # LightGBM ``metric`` parameter
    prune_metric: str  # the metric name LightGBMPruningCallback watches
    binary: bool


SCORES: dict[str, _Score] = {
    "ic": _Score("maximize", "regression", "None", "ic", binary=False),
    "logloss": _Score("minimize", "binary", "binary_logloss", "binary_logloss", binary=True),
    "auc": _Score("maximize", "binary", "auc", "auc", binary=True),
    "sharpe": _Score("maximize", "regression", "None", "ic", binary=False),
}
"""Scores: the study direction, LightGBM objective and the metric pruning watches.

``ic`` is the Pearson correlation of prediction and label on the fold's test rows (0 for a
constant prediction); ``logloss`` and ``auc`` model ``label > 0`` with a binary objective;
``sharpe`` is whatever ``backtest_fn(fold_table, predictions)`` returns (pruning watches the IC).
With another score, a ``backtest_fn`` still backtests every fold: its Sharpe ratios are recorded
(``fold_sharpes``) for :meth:`SearchResult.trial_sharpes`, the input of the deflated Sharpe ratio.
"""


@dataclass(frozen=True)
class SearchResult:
    """The study and what a report or the deflated Sharpe ratio needs from it.

    Attributes
    ----------
    study : optuna.Study
        The study (all trials, including earlier, resumed sessions).
    score, direction : str
        The score name and ``"maximize"`` or ``"minimize"``.
    best_params : dict
        Keyword arguments of :class:`LGBMForecaster` of the best trial (searched and fixed).
    best_score : float
        Mean fold score of the best trial.
    best_trial : int
        Number of the best trial.
    fold_scores : pl.DataFrame
        One row per trial and scored fold: ``trial, state, fold, score``.
    n_trials : int
        Completed trials in the study (pruned and failed ones are counted apart).
    n_pruned, n_failed, n_new : int
        Pruned and failed trials in the study; trials this call ran.
    score_variance : float
        Sample variance (ddof=1) of the completed trials' scores (NaN below two trials).
    figures : dict
        Plotly figures: ``optimization_history``, ``param_importances`` (from two completed
        trials on) and ``fold_scores``.
    """

    study: optuna.Study
    score: str
    direction: str
    best_params: dict[str, Any]
    best_score: float
    best_trial: int
    fold_scores: pl.DataFrame
    n_trials: int
    n_pruned: int
    n_failed: int
    n_new: int
    score_variance: float
    figures: dict[str, Any] = field(repr=False)

    def trial_sharpes(self, *, include_pruned: bool = True) -> dict[int, float]:
        """Return each finished trial's Sharpe ratio: the mean over the folds it backtested.

        Pruned trials count by default (a pruned trial was tried; its Sharpe is the mean of the
        folds it reached). Their Sharpe ratios come from fewer folds, hence are noisier: leave
        them out (``include_pruned=False``) to estimate the spread among configurations, and
        count them in the number of trials. Empty when the search had no ``backtest_fn``.
        """
        out: dict[int, float] = {}
        states = (
            (TrialState.COMPLETE, TrialState.PRUNED) if include_pruned else (TrialState.COMPLETE,)
        )
        for t in self.study.get_trials(deepcopy=False, states=states):
            key = "fold_scores" if self.score == "sharpe" else "fold_sharpes"
            vals = [v for v in t.user_attrs.get(key, []) if math.isfinite(v)]
            if vals:
                out[t.number] = float(np.mean(vals))
        return out

    def top_params(self, k: int) -> list[dict[str, Any]]:
        """Return the :class:`LGBMForecaster` parameters of the ``k`` best completed trials."""
        return [params for params, _ in self.top_candidates(k)]

    def top_candidates(self, k: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Return ``(model parameters, decision parameters)`` of the ``k`` best completed trials
        (decision parameters empty without a ``decision_space``)."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ranked = sorted(complete, key=lambda t: t.value, reverse=self.direction == "maximize")
        return [
            (dict(t.user_attrs["params"]), dict(t.user_attrs.get("decision", {})))
            for t in ranked[:k]
        ]

    @property
    def best_decision(self) -> dict[str, Any]:
        """Decision parameters of the best trial (empty without a ``decision_space``)."""
        return dict(self.study.best_trial.user_attrs.get("decision", {}))


def run_search(
    table: pl.DataFrame,
    features: Sequence[str],
    *,
    splitter: Splitter,
    score: str = "ic",
    n_trials: int,
    seed: int,
    storage: str | optuna.storages.BaseStorage = DEFAULT_STORAGE,
    study_name: str,
    search_space: Mapping[str, BaseDistribution] | None = None,
    params: Mapping[str, Any] | None = None,
    backtest_fn: BacktestFn | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    label: str = "label",
    timeout: float | None = None,
    progress: bool = True,
    workers: int = 1,
    cluster: Any = None,
    decision_space: Mapping[str, BaseDistribution] | None = None,
    jobs: int = 1,
) -> SearchResult:
    """Search LightGBM hyperparameters by the mean ``score`` over the folds of ``splitter``.

    Parameters
    ----------
    table : pl.DataFrame
        Feature table with ``symbol, ts, t1``, ``features`` and ``label``. Rows without a finite
        label are dropped; the rest are ordered by ``(ts, symbol)`` before ``splitter.split``
        sees them (fold indices refer to that order).
    features : sequence of str
        Feature columns.
    splitter : Splitter
        ``split(X)`` reading ``X["ts"]`` and ``X["t1"]`` (``PurgedKFold``, ``WalkForward``...).
    score : {"ic", "logloss", "auc", "sharpe"}, default "ic"
        Fold score (see :data:`SCORES`).
    n_trials : int
        Total number of finished (completed or pruned) trials the study should hold; a resumed
        study runs only the missing ones (none when it already holds ``n_trials``).
    seed : int
        Seed of the TPE sampler (offset by the number of trials already stored, so a resumed
        search does not replay its first proposals) and of every LightGBM fit.
    storage : str or optuna.storages.BaseStorage, default "sqlite:///optuna.db"
        An RDB URL (``sqlite:///path.db``, ``postgresql://...``) or a storage object (e.g. a
        ``JournalStorage``); parallel workers share it.
    study_name : str
        Study to create, or to resume when the storage already holds it.
    search_space : Mapping[str, BaseDistribution], optional
        Optuna distributions keyed by :class:`LGBMForecaster` parameter (default
        :data:`DEFAULT_SEARCH_SPACE`).
    params : Mapping[str, Any], optional
        Fixed :class:`LGBMForecaster` parameters (e.g. ``{"n_jobs": 2}``).
    backtest_fn : callable, optional
        Required for ``score="sharpe"`` (and recorded alongside any other score):
        ``backtest_fn(fold_table, predictions) -> float``, the fold's Sharpe ratio, where
        both frames hold the fold's test rows sorted by ``(symbol, ts)`` and ``predictions`` has
        ``symbol, ts, prediction``.
    pruner : optuna.pruners.BasePruner, optional
        Default ``MedianPruner(n_startup_trials=5, n_warmup_steps=10)``.
    label : str, default "label"
        Label column.
    timeout : float, optional
        Stop starting new trials after this many seconds.
    progress : bool, default True
        Show Optuna's progress bar.
    workers : int, default 1
        Trials run at once on Dask workers sharing ``storage`` (``journal:PATH`` or an RDB URL;
        SQLite is refused), see :mod:`workbench.models.parallel_search`.
    cluster : distributed.Client, address, DaskConfig or None
        Where the workers run (default: a LocalCluster of ``workers`` processes).
    decision_space : Mapping[str, BaseDistribution], optional
        Parameters of the trading decision searched with the model's (e.g. ``{"cost_multiple":
        CategoricalDistribution([1.0, 2.0])}``): each trial draws them and its folds are
        backtested with them (``backtest_fn(fold, preds, decision={...})``), so the score is
        that of what would be traded. Needs a ``backtest_fn``; stored as the trial's user
        attribute ``decision`` (:meth:`SearchResult.top_candidates`, ``best_decision``).
    jobs : int, default 1
        A trial's folds fitted at once, each in a thread (LightGBM lets go of the GIL while it
        trains; each fit keeps its own ``n_jobs``). The pruner sees the folds' reports in the
        serial order, so the trials, their values and the pruning are the same for any
        ``jobs``; only the folds after a pruned one may have been trained for nothing. With
        ``workers > 1`` each worker fits its folds one after another.

    Returns
    -------
    SearchResult
        Best parameters, per-fold scores, trial counts, score variance and figures.

    Raises
    ------
    ParameterError
        When an argument is invalid.
    SearchError
        When a fold is empty or one-class, the stored study was created with other settings, or
        no trial completed.
    SchemaError
        When the table lacks a column.
    """
    import mlflow

    spec = _check_score(score, backtest_fn)
    _check_int("n_trials", n_trials, 1)
    _check_int("seed", seed, 0)
    _check_int("jobs", jobs, 1)
    if workers != 1:  # before anything is created: SQLite cannot take concurrent writers
        from workbench.models.parallel_search import check_parallel_storage

        check_parallel_storage(storage, workers)
    if timeout is not None and not timeout > 0:
        raise ParameterError(
            f"The 'timeout' parameter of run_search must be > 0 seconds or None. Got {timeout!r} "
            "instead. Fix: pass a positive number of seconds."
        )
    space = dict(DEFAULT_SEARCH_SPACE if search_space is None else search_space)
    fixed = _fixed_params(spec, space, params, seed)
    decisions = _decision_space(decision_space, backtest_fn)
    data = _prepare(table, features, label, need_symbol=score == "sharpe")
    x, _ = feature_matrix(data, features)
    y = data[label].to_numpy()
    y = (y > 0).astype(np.float64) if spec.binary else y
    folds = _folds(splitter, data, y if spec.binary else None)

    study = optuna.create_study(
        storage=_storage(storage),
        study_name=study_name,
        direction=spec.direction,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=cache_completed(
            pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10)
        ),
    )
    stride = _check_study(study, score, label, list(features), len(folds), space, fixed)
    stored = len(study.get_trials(deepcopy=False))
    if stored:  # a fresh RNG stream, else the resumed sampler repeats the first proposals
        study.sampler = optuna.samplers.TPESampler(seed=seed + stored)
    remaining = n_trials - _count(study, TrialState.COMPLETE, TrialState.PRUNED)

    own_run = mlflow.active_run() is None
    if own_run:
        mlflow.start_run(run_name=f"search-{study_name}")
    status = "FAILED"
    try:
        mlflow.set_tags(
            {
                "optuna.study_name": study_name,
                "optuna.storage": _redacted(storage),
                "search.score": score,
            }
        )
        objective = _Objective(
            x,
            y,
            folds,
            data,
            spec,
            score,
            fixed,
            space,
            backtest_fn,
            stride,
            study_name,
            decisions=decisions,
            jobs=jobs if workers == 1 else 1,  # a Dask worker runs one trial per thread
        )
        if remaining > 0 and workers > 1:
            from workbench.models.parallel_search import optimize_on_dask

            optimize_on_dask(
                study,
                objective,
                storage=storage,
                n_trials=remaining,
                workers=workers,
                seed=seed + stored,
                cluster=cluster,
                timeout=timeout,
                progress=progress,
            )
        elif remaining > 0:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=timeout,
                show_progress_bar=progress,
                callbacks=[
                    # parallel workers on one storage stop at the shared total
                    optuna.study.MaxTrialsCallback(
                        n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)
                    )
                ],
            )
        result = _result(study, score, spec.direction, stored, seed)
        _log_summary(result, study_name)
        status = "FINISHED"
    finally:
        if own_run:
            mlflow.end_run(status=status)
    return result


def refit(
    best_params: Mapping[str, Any],
    table: pl.DataFrame,
    features: Sequence[str],
    *,
    label: str = "label",
) -> LGBMForecaster:
    """Fit the final model with ``best_params`` on every labelled row of ``table``.

    Parameters
    ----------
    best_params : Mapping[str, Any]
        :class:`LGBMForecaster` keyword arguments (``SearchResult.best_params``).
    table : pl.DataFrame
        The full training window; rows without a finite label are dropped.
    features : sequence of str
        Feature columns (the names the model will read at predict time).
    label : str, default "label"
        Label column; a ``binary`` objective models ``label > 0``, as the search did.

    Returns
    -------
    LGBMForecaster
        The fitted model.
    """
    params = dict(best_params)
    check_params("best_params", params, estimator_params())
    data = _prepare(table, features, label, need_symbol=False, need_times=False)
    y = data[label]
    if params.get("objective") == "binary":
        y = (y > 0).cast(pl.Float64)
    return LGBMForecaster(**params).fit(data.select(features), y)


class _FoldSteps:
    """Forward fold ``k``'s boosting round ``i`` to the pruning callback as step ``offset + i``."""

    def __init__(self, inner: Callable[[Any], None], offset: int) -> None:
        self._inner = inner
        self.offset = offset

    def __call__(self, env: Any) -> None:
        self._inner(dataclasses.replace(env, iteration=env.iteration + self.offset))


class _Recording:
    """Pass on the rounds a pruning callback reports (fold offset ``offset``) to another
    thread, which replays them: ``replay`` yields each one as it comes, until the fit ends."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def __call__(self, env: Any) -> None:
        self._queue.put(dataclasses.replace(env, model=None))  # without the booster

    def done(self) -> None:
        self._queue.put(None)

    def replay(self) -> Iterator[Any]:
        while True:
            try:  # a timeout: a waiting get() would hold Ctrl-C off
                env = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if env is None:
                return
            yield env


class _Reported:
    """Score the evaluation rows on the rounds the pruning callback reports, and only those.

    LightGBM would evaluate them every round; the callback reads one round in ``REPORT_EVERY``.
    ``feval`` (the IC) is computed through ``Booster.eval_valid`` on exactly those rounds, giving
    the values the per-round evaluation gives there; without one (a LightGBM metric) the
    round's own evaluation is passed on.
    """

    def __init__(self, inner: _FoldSteps | _Recording, feval: Callable[..., Any] | None) -> None:
        self.inner, self.feval = inner, feval

    def __call__(self, env: Any) -> None:
        if (env.iteration + self.inner.offset + 1) % REPORT_EVERY:
            return  # LightGBMPruningCallback reports nothing on this round
        if self.feval is not None:
            env = dataclasses.replace(env, evaluation_result_list=env.model.eval_valid(self.feval))
        self.inner(env)


class _Stopped(Exception):
    """A fold's fit stopped because its trial ended (pruned or failed) in another fold."""


class _Stop:
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, env: Any) -> None:
        if self.event.is_set():
            raise _Stopped


class _Objective:
    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        folds: list[tuple[np.ndarray, np.ndarray]],
        data: pl.DataFrame,
        spec: _Score,
        score: str,
        fixed: dict[str, Any],
        space: dict[str, BaseDistribution],
        backtest_fn: BacktestFn | None,
        stride: int,
        study_name: str,
        *,
        decisions: dict[str, BaseDistribution] | None = None,
        jobs: int = 1,
    ) -> None:
        self.x, self.y, self.folds, self.data = x, y, folds, data
        self.jobs = jobs
        self.spec, self.score, self.fixed, self.space = spec, score, fixed, space
        self.backtest_fn, self.stride, self.study_name = backtest_fn, stride, study_name
        self.decisions = dict(decisions or {})
        self._rows: list[BinnedRows | None] = [None] * len(folds)

    def __getstate__(self) -> dict[str, Any]:  # shipped to Dask workers without its Datasets
        return {**self.__dict__, "_rows": [None] * len(self.folds)}

    def _binned(self, k: int) -> BinnedRows:
        """Fold ``k``'s rows, binned once for every trial (:mod:`workbench.models.binned`)."""
        rows = self._rows[k]
        if rows is None:
            train, test = self.folds[k]
            rows = BinnedRows(
                self.x[train],
                self.y[train],
                eval_x=self.x[test],
                eval_y=self.y[test],
                max_min_data=_largest(self.space, self.fixed, "min_child_samples", 20),
            )
            self._rows[k] = rows
        return rows

    def __call__(self, trial: optuna.Trial) -> float:
        import mlflow

        params = {**self.fixed, **{k: _suggest(trial, k, d) for k, d in self.space.items()}}
        trial.set_user_attr("params", params)
        decision = None
        if self.decisions:  # drawn under their own names: never confused with model parameters
            decision = {k: _suggest(trial, f"decision.{k}", d) for k, d in self.decisions.items()}
            trial.set_user_attr("decision", decision)
        scores: list[float] = []
        sharpes: list[float] = []
        pruned: optuna.TrialPruned | None = None
        value = math.nan
        parent = mlflow.active_run()
        assert parent is not None  # run_search opened or found it
        # the parent's experiment, not the active one (they differ when the caller passed
        # experiment_id= to its start_run)
        with mlflow.start_run(
            run_name=f"trial-{trial.number}",
            nested=True,
            experiment_id=parent.info.experiment_id,
        ):
            mlflow.set_tags(
                {
                    "optuna.study_name": self.study_name,
                    "optuna.trial_number": str(trial.number),
                    "state": "running",
                }
            )
            mlflow.log_params(_loggable(params))
            if decision is not None:
                mlflow.log_params({f"decision.{k}": str(v) for k, v in decision.items()})
            # without a pruner nothing reads the per-round scores: no callback, no journal writes
            prunes = not isinstance(inner_pruner(trial.study.pruner), optuna.pruners.NopPruner)

            def record(k: int, s: float, sr: float | None) -> None:
                scores.append(s)
                trial.set_user_attr("fold_scores", scores)
                if math.isfinite(s):
                    mlflow.log_metric(f"{self.score}_fold_{k}", s)
                if sr is not None:
                    sharpes.append(sr)
                    trial.set_user_attr("fold_sharpes", sharpes)
                    if self.score != "sharpe" and math.isfinite(sr):
                        mlflow.log_metric(f"sharpe_fold_{k}", sr)

            try:
                self._run_folds(trial, params, prunes, decision, record)
            except optuna.TrialPruned as exc:
                # end the MLflow run as FINISHED with state=pruned; Optuna gets the exception below
                pruned = exc
                mlflow.set_tags({"state": "pruned", "pruned_after_folds": str(len(scores))})
            except BaseException:
                mlflow.set_tag("state", "failed")
                raise
            else:
                value = float(np.mean(scores))
                ok = math.isfinite(value)  # Optuna marks a non-finite value FAIL
                if ok:
                    mlflow.log_metrics(
                        {f"{self.score}_mean": value, f"{self.score}_std": float(np.std(scores))}
                    )
                mlflow.set_tag("state", "complete" if ok else "failed")
        if pruned is not None:
            raise pruned
        return value

    def _pruning(self, trial: optuna.Trial, k: int) -> _FoldSteps:
        from optuna_integration import LightGBMPruningCallback

        pruning = LightGBMPruningCallback(
            trial, self.spec.prune_metric, valid_name=VALID_NAME, report_interval=REPORT_EVERY
        )
        return _FoldSteps(pruning, k * self.stride)

    def _run_folds(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        prunes: bool,
        decision: dict[str, Any] | None,
        record: Callable[[int, float, float | None], None],
    ) -> None:
        """Fit, score and ``record`` every fold in order; raise ``TrialPruned`` where pruned.

        With ``jobs > 1`` the folds train at once in threads, each passing on its pruning reports;
        they are replayed through the pruning callback fold after fold as they come (a fold's
        once every fold before it is done), the order a serial search makes them in, so the
        pruner sees the same values at the same steps and stops the trial at the same fold and
        round (the fold training then stops; those after it are stopped and dropped).
        """
        n = len(self.folds)
        if self.jobs <= 1 or n == 1:
            for k in range(n):
                steps = self._pruning(trial, k) if prunes else None
                record(k, *self._score(k, self._fit(params, k, steps, None), decision))
            return
        from concurrent.futures import ThreadPoolExecutor

        stop = threading.Event()
        recordings = [_Recording(k * self.stride) if prunes else None for k in range(n)]

        def fit(k: int) -> np.ndarray:
            try:
                return self._fit(params, k, recordings[k], stop)
            finally:
                if recordings[k] is not None:
                    recordings[k].done()

        with ThreadPoolExecutor(min(self.jobs, n), thread_name_prefix="search-fold") as pool:
            futures = [pool.submit(fit, k) for k in range(n)]
            try:
                for k, future in enumerate(futures):
                    rec = recordings[k]
                    if rec is not None:  # fold k's reports as they come (folds before it: done)
                        steps = self._pruning(trial, k)
                        for env in rec.replay():
                            steps(env)  # raises TrialPruned where the live callback would
                    record(k, *self._score(k, future.result(), decision))
            finally:  # pruned or failed: the folds not started are dropped, the others stop
                for future in futures:
                    future.cancel()
                stop.set()

    def _fit(
        self,
        params: dict[str, Any],
        k: int,
        pruning: _FoldSteps | _Recording | None,
        stop: threading.Event | None,
    ) -> np.ndarray:
        """Fit fold ``k`` and return its test predictions.

        Without ``pruning`` (and without early stopping) the test rows are not scored every
        boosting round: LightGBM's trees do not depend on them, so the model is the same. With
        it, the IC is computed only on the rounds the pruning callback reports. The fold's rows
        are binned once for all trials (the same trees as binning them per fit).
        """
        rows = self._binned(k)
        assert rows.eval_x is not None
        est = LGBMForecaster(**params)
        callbacks: list[Callable[[Any], None]] = [] if stop is None else [_Stop(stop)]
        if est.early_stopping_rounds is not None:  # every round scored: the stopping rule reads it
            model = est.fit_binned(
                rows,
                evaluate=True,
                eval_metric=_ic_feval if self.spec.metric == "None" else None,
                callbacks=[*callbacks, *([] if pruning is None else [pruning])],
            )
        elif pruning is None:
            model = est.fit_binned(rows, callbacks=callbacks)
        else:
            feval = _ic_feval if self.spec.metric == "None" else None
            callbacks.append(_Reported(pruning, feval))
            model = est.fit_binned(rows, evaluate=True, callbacks=callbacks)
        return model.predict(rows.eval_x)

    def _score(
        self, k: int, pred: np.ndarray, decision: dict[str, Any] | None
    ) -> tuple[float, float | None]:
        """Return fold ``k``'s score and, with a ``backtest_fn``, its backtest Sharpe ratio."""
        test = self.folds[k][1]
        y_test = self._binned(k).eval_y
        assert y_test is not None
        sharpe = None if self.backtest_fn is None else self._sharpe(test, pred, decision)
        if self.score == "ic":
            return _pearson(pred, y_test), sharpe
        if self.score == "logloss":
            from sklearn.metrics import log_loss

            return float(log_loss(y_test, pred, labels=[0.0, 1.0])), sharpe
        if self.score == "auc":
            from sklearn.metrics import roc_auc_score

            return float(roc_auc_score(y_test, pred)), sharpe
        assert sharpe is not None  # _check_score requires a backtest_fn for score="sharpe"
        return sharpe, sharpe

    def _sharpe(
        self, test: np.ndarray, pred: np.ndarray, decision: dict[str, Any] | None = None
    ) -> float:
        rows = self.data[test].with_columns(prediction=pl.Series(pred)).sort("symbol", "ts")
        assert self.backtest_fn is not None
        fold, preds = rows.drop("prediction"), rows.select("symbol", "ts", "prediction")
        if decision is not None:
            out = self.backtest_fn(fold, preds, decision=dict(decision))
        else:
            out = self.backtest_fn(fold, preds)
        try:
            return float(out)
        except (TypeError, ValueError):
            raise ParameterError(
                f"The 'backtest_fn' parameter of run_search must return the fold's Sharpe ratio "
                f"as a float. Got {type(out).__name__} {out!r} instead. Fix: return "
                "result.stats['sharpe'] from your backtest."
            ) from None


def _largest(
    space: Mapping[str, BaseDistribution], fixed: Mapping[str, Any], name: str, default: int
) -> int | None:
    """The largest value ``name`` takes in a search (None when it cannot be told)."""
    dist = space.get(name)
    if dist is None:
        value = fixed.get(name, default)
        return int(value) if isinstance(value, Integral) else None
    if isinstance(dist, IntDistribution | FloatDistribution):
        return math.ceil(dist.high)
    if isinstance(dist, CategoricalDistribution):
        ints = [c for c in dist.choices if isinstance(c, Integral | float)]
        return math.ceil(max(ints)) if len(ints) == len(dist.choices) else None
    return None


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = float(np.std(a)), float(np.std(b))
    if sa == 0.0 or sb == 0.0:
        return 0.0  # a constant prediction ranks nothing
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def _ic_feval(preds: np.ndarray, data: Any) -> tuple[str, float, bool]:
    return "ic", _pearson(preds, data.get_label()), True


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise ParameterError(  # _fixed_params checked the types; a new distribution class lands here
        f"search_space[{name!r}] is a {type(dist).__name__}; use FloatDistribution, "
        "IntDistribution or CategoricalDistribution."
    )


def _check_score(score: str, backtest_fn: BacktestFn | None) -> _Score:
    if score not in SCORES:
        hint = difflib.get_close_matches(str(score), list(SCORES), n=1)
        raise ParameterError(
            f"The 'score' parameter of run_search must be one of {list(SCORES)}. Got {score!r} "
            f"instead." + (f" Did you mean {hint[0]!r}?" if hint else "")
        )
    if score == "sharpe" and backtest_fn is None:
        raise ParameterError(
            "The 'backtest_fn' parameter of run_search is required with score='sharpe'. Got None. "
            "Fix: pass backtest_fn=lambda fold, preds: run_backtest(...).stats['sharpe']."
        )
    return SCORES[score]


def _decision_space(
    space: Mapping[str, BaseDistribution] | None, backtest_fn: BacktestFn | None
) -> dict[str, BaseDistribution]:
    out = dict(space or {})
    if out and backtest_fn is None:
        raise ParameterError(
            f"The 'decision_space' parameter of run_search ({sorted(out)}) needs a backtest_fn "
            "to trade each trial's decision. Got backtest_fn=None. Fix: pass backtest_fn, or "
            "drop decision_space."
        )
    for name, dist in out.items():
        if not isinstance(dist, FloatDistribution | IntDistribution | CategoricalDistribution):
            raise ParameterError(
                f"The 'decision_space' parameter must map names to Optuna distributions. Got "
                f"{name!r}: {dist!r}. Fix: e.g. CategoricalDistribution([1.0, 1.5, 2.0])."
            )
    return out


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise ParameterError(
            f"The '{name}' parameter of run_search must be an int >= {low}. Got {value!r} "
            f"instead. Fix: pass a whole number >= {low}."
        )


def _fixed_params(
    spec: _Score,
    space: dict[str, BaseDistribution],
    params: Mapping[str, Any] | None,
    seed: int,
) -> dict[str, Any]:
    allowed = [p for p in estimator_params() if p not in _FIXED_BY_SEARCH]
    fixed = dict(params or {})
    check_params("search_space", space, allowed)
    check_params("params", fixed, allowed)
    for name, dist in space.items():
        if not isinstance(dist, FloatDistribution | IntDistribution | CategoricalDistribution):
            raise ParameterError(
                f"The 'search_space' parameter must map names to Optuna distributions. Got "
                f"{name!r}: {dist!r}. Fix: use optuna.distributions.FloatDistribution(low, high), "
                "IntDistribution or CategoricalDistribution, or put fixed values in params=."
            )
    both = sorted(set(space) & set(fixed))
    if both:
        raise ParameterError(
            f"The 'params' and 'search_space' parameters both set {both}. Fix: fix a value in "
            "params= or search it in search_space=, not both."
        )
    base = {"seed": seed, "n_jobs": 1, "deterministic": True, "bagging_freq": 1}
    return {**base, **fixed, "objective": spec.objective, "metric": spec.metric}


def _prepare(
    table: pl.DataFrame,
    features: Sequence[str],
    label: str,
    *,
    need_symbol: bool,
    need_times: bool = True,
) -> pl.DataFrame:
    if not isinstance(table, pl.DataFrame):
        pd = _pandas()
        if pd is None or not isinstance(table, pd.DataFrame):
            raise ParameterError(
                f"The 'table' parameter must be a polars DataFrame. Got {type(table).__name__} "
                "instead. Fix: pass the feature table (pl.read_parquet(...))."
            )
        table = pl.from_pandas(table)
    need = [*features, label]
    need += ["ts", "t1"] if need_times else []
    need += ["symbol"] if need_symbol else []
    missing = [c for c in dict.fromkeys(need) if c not in table.columns]
    if missing:
        raise SchemaError(
            f"feature table has no column(s) {missing} (columns: {table.columns}). Fix: build it "
            "with workbench.stages.features (labels carry t1) or pass the right names.",
            rule="missing column",
        )
    if not features:
        raise ParameterError("The 'features' parameter is empty. Fix: pass the feature columns.")
    data = table.filter(pl.col(label).is_not_null() & pl.col(label).cast(pl.Float64).is_finite())
    order = [c for c in ("ts", "symbol") if c in data.columns]
    return data.sort(order, maintain_order=True) if need_times else data


def _folds(
    splitter: Splitter, data: pl.DataFrame, binary_y: np.ndarray | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    if not callable(getattr(splitter, "split", None)):
        raise ParameterError(
            f"The 'splitter' parameter of run_search must have a split(X) method. Got "
            f"{type(splitter).__name__}. Fix: pass PurgedKFold, WalkForward or any object whose "
            "split(X) yields (train_idx, test_idx)."
        )
    folds = []
    for k, (train, test) in enumerate(splitter.split(data)):
        tr, te = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
        if tr.size == 0 or te.size == 0:
            raise SearchError(
                f"fold {k} of {type(splitter).__name__} has {tr.size} train and {te.size} test "
                f"rows. Fix: use fewer splits, a shorter embargo or more rows ({data.height})."
            )
        if min(tr.min(), te.min()) < 0 or max(tr.max(), te.max()) >= data.height:
            raise SearchError(
                f"fold {k} of {type(splitter).__name__} indexes outside the table's "
                f"{data.height} rows. Fix: return positional indices of split(X)'s X."
            )
        if binary_y is not None:
            for part, idx in (("train", tr), ("test", te)):
                if np.unique(binary_y[idx]).size < 2:
                    raise SearchError(
                        f"fold {k} {part} rows hold one class only (label > 0 is all "
                        f"{bool(binary_y[idx][0])}). Fix: use larger folds or score='ic'."
                    )
        folds.append((tr, te))
    if not folds:
        raise SearchError(
            f"{type(splitter).__name__}.split yielded no fold. Fix: check n_splits and the table."
        )
    return folds


def _storage(storage: str | optuna.storages.BaseStorage) -> str | optuna.storages.BaseStorage:
    if isinstance(storage, str) and storage.startswith("journal:"):
        from workbench.models.parallel_search import open_storage

        return open_storage(storage)
    if isinstance(storage, str):
        from sqlalchemy.engine import make_url

        url = make_url(storage)
        if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            return sqlite_storage(storage)
    return storage


def _fast_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def sqlite_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on an SQLite file in WAL mode with ``synchronous=NORMAL``.

    Every pruning report and trial update is a commit; with SQLite's default rollback journal
    and full sync each one costs several fsyncs (about 14 ms here; 0.1 ms in WAL with normal
    sync), which made the storage a third of a search's time. WAL with normal sync survives a
    crash of the process without losing a commit; only a power cut can lose the last ones (the
    study is then resumed with those trials run again). The file stays an ordinary SQLite
    database that Optuna's own tools and a plain URL open.
    """
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url)
    sqlalchemy.event.listen(storage.engine, "connect", _fast_sqlite)
    storage.engine.dispose()  # connections made while Optuna set up the schema: reopen with it
    return storage


def _redacted(storage: str | optuna.storages.BaseStorage) -> str:
    if isinstance(storage, str) and storage.startswith("journal:"):
        return storage
    if isinstance(storage, str):
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    return type(storage).__name__


def _check_study(
    study: optuna.Study,
    score: str,
    label: str,
    features: list[str],
    n_folds: int,
    space: dict[str, BaseDistribution],
    fixed: dict[str, Any],
) -> int:
    rounds = [fixed.get("num_boost_round", 100)]
    if (d := space.get("num_boost_round")) is not None:
        rounds.append(max(d.choices) if isinstance(d, CategoricalDistribution) else d.high)
    stride = 10 ** len(str(int(max(rounds))))  # fold k, round i -> step k * stride + i
    want = {"score": score, "label": label, "features": features, "n_folds": n_folds}
    attrs = study.user_attrs
    if _ATTR + "score" not in attrs:
        for k, v in {**want, "step_stride": stride}.items():
            study.set_user_attr(_ATTR + k, v)
        return stride
    for k, v in want.items():
        if attrs.get(_ATTR + k) != v:
            raise SearchError(
                f"study {study.study_name!r} was created with {k}={attrs.get(_ATTR + k)!r}; this "
                f"call has {k}={v!r}, and its trials would not be comparable. Fix: pass the "
                "original value or a new study_name."
            )
    if stride > attrs[_ATTR + "step_stride"]:
        raise SearchError(
            f"num_boost_round up to {max(rounds)} does not fit study {study.study_name!r}, whose "
            f"folds report pruning steps {attrs[_ATTR + 'step_stride']} apart. Fix: keep "
            "num_boost_round below that or use a new study_name."
        )
    return int(attrs[_ATTR + "step_stride"])


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _result(
    study: optuna.Study, score: str, direction: str, stored: int, seed: int
) -> SearchResult:
    trials = study.get_trials(deepcopy=False)
    rows = [
        {"trial": t.number, "state": t.state.name.lower(), "fold": k, "score": float(s)}
        for t in trials
        for k, s in enumerate(t.user_attrs.get("fold_scores", []))
    ]
    fold_scores = pl.DataFrame(
        rows, schema={"trial": pl.Int64, "state": pl.String, "fold": pl.Int64, "score": pl.Float64}
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise SearchError(
            f"study {study.study_name!r} has no completed trial ({len(trials)} trials: "
            f"{_count(study, TrialState.PRUNED)} pruned, {_count(study, TrialState.FAIL)} failed). "
            "Fix: raise n_trials, or pass a gentler pruner (e.g. MedianPruner(n_startup_trials=10))."
        )
    values = np.array([t.value for t in complete], dtype=np.float64)
    best = study.best_trial
    return SearchResult(
        study=study,
        score=score,
        direction=direction,
        best_params=dict(best.user_attrs["params"]),
        best_score=float(best.value),
        best_trial=best.number,
        fold_scores=fold_scores,
        n_trials=len(complete),
        n_pruned=_count(study, TrialState.PRUNED),
        n_failed=_count(study, TrialState.FAIL),
        n_new=len(trials) - stored,
        score_variance=float(np.var(values, ddof=1)) if values.size >= 2 else math.nan,
        figures=_figures(study, fold_scores, score, seed),
    )


def _figures(
    study: optuna.Study, fold_scores: pl.DataFrame, score: str, seed: int
) -> dict[str, Any]:
    import plotly.graph_objects as go
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import plot_optimization_history, plot_param_importances

    figs: dict[str, Any] = {"optimization_history": plot_optimization_history(study)}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = {float(t.value) for t in complete if t.value is not None}
    if len(complete) >= 2 and complete[0].params and len(values) >= 2:  # fANOVA needs variance
        # fANOVA, named explicitly: Optuna 5's default evaluator is PED-ANOVA; fANOVA fits a
        # scikit-learn random forest locally (seeded, so the figure is reproducible)
        figs["param_importances"] = plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=seed)
        )
    fig = go.Figure()
    colors = {"complete": "#1f77b4", "pruned": "#ff7f0e", "fail": "#d62728"}
    for (state,), part in fold_scores.group_by("state", maintain_order=True):
        fig.add_trace(
            go.Box(
                x=part["trial"].to_list(),
                y=part["score"].to_list(),
                name=str(state),
                boxpoints="all",
                marker_color=colors.get(str(state)),
            )
        )
    fig.update_layout(
        title=f"Fold scores per trial ({score})",
        xaxis_title="trial",
        yaxis_title=score,
        boxmode="overlay",
    )
    figs["fold_scores"] = fig
    return figs


def _log_summary(result: SearchResult, study_name: str) -> None:
    import mlflow

    prefix = f"search/{study_name}"
    for name, fig in result.figures.items():
        mlflow.log_figure(fig, f"{prefix}/{name}.html")
    mlflow.log_dict(
        {
            "study_name": study_name,
            "score": result.score,
            "direction": result.direction,
            "best_trial": result.best_trial,
            "best_score": result.best_score,
            "best_params": result.best_params,
            "n_trials": result.n_trials,
            "n_pruned": result.n_pruned,
            "n_failed": result.n_failed,
            "score_variance": result.score_variance,
        },
        f"{prefix}/summary.json",
    )
    metrics = {
        f"search_best_{result.score}": result.best_score,
        "search_n_trials": float(result.n_trials),
        "search_n_pruned": float(result.n_pruned),
        "search_n_failed": float(result.n_failed),
        "search_score_variance": result.score_variance,
    }
    mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})


def _loggable(params: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if k == "extra_params":
            out.update({f"extra.{ek}": str(ev) for ek, ev in dict(v or {}).items()})
        else:
            out[k] = str(v)
    return out


def _pandas() -> Any:
    import sys

    return sys.modules.get("pandas")
