"""Optuna trials on Dask workers sharing one storage (``run_search(..., workers=N)``).

>>> run_search(table, feats, splitter=..., n_trials=32, seed=7, study_name="s",  # doctest: +SKIP
...            storage="journal:runs/optuna.journal", workers=2)

Storages that many processes can share:

* ``journal:PATH`` — an Optuna ``JournalStorage`` on a ``JournalFileBackend`` (one host: every
  worker sees the same file);
* an RDB URL such as ``postgresql://user@host/optuna`` — many hosts.

SQLite is refused for more than one worker (its writers lock each other out; Optuna's own docs
advise against it for parallel optimization), and so is any in-memory storage.

Each trial is one Dask task: it loads the study from the shared storage, asks one trial from a
TPE sampler seeded ``seed + i`` (``i``: the task's index), runs the same objective as the serial
search, and logs the trial as a nested MLflow run of the caller's run (the train step). At most
``workers`` tasks run at once. Exactly ``n_trials`` tasks run, so the study ends with exactly
the trials asked for; a task whose worker died is run again by Dask on another worker, and the
trial the dead worker left ``RUNNING`` is marked ``FAIL`` once every task is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from workbench.errors import ParameterError

JOURNAL = "journal:"
_STORAGES: dict[str, Any] = {}  # per process: one storage object per URL (a worker reuses it)


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL)


def journal_path(url: str) -> Path:
    """The file of a ``journal:PATH`` URL (``journal:///abs`` and ``journal:/abs`` are absolute)."""
    raw = url[len(JOURNAL) :]
    if raw.startswith("///"):
        raw = raw[2:]
    return Path(raw)


def journal_storage(url: str) -> optuna.storages.JournalStorage:
    """An Optuna ``JournalStorage`` on the file of ``journal:PATH`` (its folder is created)."""
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = journal_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(
        JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    )


def open_storage(url: str) -> Any:
    """The storage object of a URL, cached in this process (workers open it once)."""
    if url not in _STORAGES:
        _STORAGES[url] = journal_storage(url) if is_journal(url) else url
    return _STORAGES[url]


def check_parallel_storage(storage: Any, workers: int) -> str:
    """Return the storage URL that ``workers`` > 1 processes can share, or raise naming the fix.

    Raises
    ------
    ParameterError
        For SQLite, in-memory storage, a storage object instead of a URL, or ``workers`` < 1.
    """
    fix = (
        "Fix: storage='journal:runs/optuna.journal' (one host) or "
        "storage='postgresql://user@host/optuna' (many hosts), or workers=1."
    )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParameterError(
            f"The 'workers' parameter of run_search must be an int >= 1. Got {workers!r}."
        )
    if not isinstance(storage, str):
        raise ParameterError(
            f"workers={workers} needs a storage URL every worker can open; got a "
            f"{type(storage).__name__} object. {fix}"
        )
    if storage.startswith("sqlite") or storage in ("", ":memory:"):
        raise ParameterError(
            f"workers={workers} cannot share the storage {storage!r}: SQLite is not for "
            f"concurrent writers. {fix}"
        )
    return storage


def _run_trial(
    objective: Callable[[optuna.Trial], float],
    url: str,
    study_name: str,
    seed: int,
    pruner: optuna.pruners.BasePruner,
    tracking_uri: str,
    parent_run_id: str,
) -> int:
    """One Dask task: one trial of the shared study, logged under the caller's MLflow run."""
    import mlflow

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name,
        storage=open_storage(url),
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.start_run(run_id=parent_run_id)  # the objective nests its trial run under it
    try:
        study.optimize(objective, n_trials=1, show_progress_bar=False)
    finally:
        mlflow.end_run(status="RUNNING")  # the caller ends its own run
    return len(study.get_trials(deepcopy=False))


def _client(cluster: Any, workers: int) -> tuple[Any, Any]:
    """Return ``(client, context)``: the given client, or one from ``open_client`` to close."""
    from workbench.cluster import open_client
    from workbench.config import DaskConfig

    if cluster is not None and hasattr(cluster, "submit"):
        return cluster, None
    if isinstance(cluster, str):
        ctx = open_client(DaskConfig(), address=cluster, echo=None)
    else:
        ctx = open_client(cluster or DaskConfig(), n_workers=workers, echo=print)
    return ctx.__enter__(), ctx


def optimize_on_dask(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    storage: str,
    n_trials: int,
    workers: int,
    seed: int,
    cluster: Any = None,
    timeout: float | None = None,
    progress: bool = True,
) -> None:
    """Run ``n_trials`` trials of ``study`` on Dask, at most ``workers`` at once.

    Parameters
    ----------
    storage : str
        The study's shared storage URL (see :func:`check_parallel_storage`).
    seed : int
        Task ``i`` samples with ``TPESampler(seed=seed + i)``.
    cluster : distributed.Client, str, DaskConfig or None
        A client, a scheduler address, or the config of the LocalCluster to start (default: a
        LocalCluster of ``workers`` processes, closed afterwards).
    timeout : float, optional
        Start no trial after this many seconds.
    """
    import mlflow
    from distributed import wait

    url = check_parallel_storage(storage, workers)
    parent = mlflow.active_run()
    if parent is None:
        raise ParameterError("optimize_on_dask needs an active MLflow run (run_search opens one).")
    client, ctx = _client(cluster, workers)
    bar = None
    try:
        obj = client.scatter(objective, broadcast=True)  # shipped once per worker, not per trial
        args = (url, study.study_name)
        t0 = time.monotonic()
        pending: set[Any] = set()
        errors: list[BaseException] = []
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_trials, desc=f"trials on {workers} workers", unit="trial")
        for i in range(n_trials):
            if timeout is not None and time.monotonic() - t0 > timeout:
                break
            while len(pending) >= workers:
                done, pending = wait(pending, return_when="FIRST_COMPLETED")
                errors += [f.exception() for f in done if f.status == "error"]
                if bar is not None:
                    bar.update(len(done))
            pending.add(
                client.submit(
                    _run_trial,
                    obj,
                    *args,
                    seed + i,
                    study.pruner,
                    mlflow.get_tracking_uri(),
                    parent.info.run_id,
                    pure=False,
                )
            )
        done, _ = wait(pending)
        errors += [f.exception() for f in done if f.status == "error"]
        if bar is not None:
            bar.update(len(done))
    finally:
        if bar is not None:
            bar.close()
        if ctx is not None:
            ctx.__exit__(None, None, None)
    fail_stale_trials(url, study.study_name)
    if errors:
        raise errors[0]


def fail_stale_trials(url: str, study_name: str) -> list[int]:
    """Mark ``FAIL`` the trials left ``RUNNING`` by a dead worker; return their numbers.

    Call it only when no worker runs a trial of the study any more.
    """
    storage = open_storage(url)
    if isinstance(storage, str):
        storage = optuna.storages.RDBStorage(storage)
    study_id = storage.get_study_id_from_name(study_name)
    stale = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return [t.number for t in stale]
