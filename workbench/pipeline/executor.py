"""Executors: run independent tasks one after another (``local``) or on Dask (``dask``).

>>> with open_executor("dask", cfg, workers=2) as ex:  # doctest: +SKIP
...     outcomes = ex.map(run_variant, variants, keys=["v0", "v1"])

``local`` is the serial, in-process path. ``dask`` takes its client from
:func:`workbench.cluster.open_client`: a ``LocalCluster`` started and stopped here by default
(worker processes, so each task has its own process, environment and kernels), or the scheduler
at ``dask.address`` / ``WB_DASK__ADDRESS``. A task that raises becomes an :class:`Outcome` with
the error and the others finish; outcomes come back in the order of ``items``.
"""

from __future__ import annotations

import contextlib
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from workbench.cluster import n_threads, open_client
from workbench.config import DaskConfig, WorkbenchConfig
from workbench.errors import PipelineError

Kind = Literal["local", "dask"]
KINDS = ("local", "dask")


@dataclass
class Outcome:
    """What one task returned, or how it failed."""

    key: str
    value: Any = None
    error: str = ""  # "ExceptionType: message" when the task raised
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class Executor(Protocol):
    """Runs ``fn(item)`` for every item and returns one :class:`Outcome` per item, in order."""

    kind: str
    workers: int

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], keys: Sequence[str]
    ) -> list[Outcome]: ...


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", leave=False)


def _failed(key: str, exc: BaseException, tb: Any = None) -> Outcome:
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return Outcome(key, error=f"{type(exc).__name__}: {exc}", traceback=text)


class LocalExecutor:
    """The serial path: each task in this process, one after another."""

    kind = "local"
    workers = 1

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], keys: Sequence[str]
    ) -> list[Outcome]:
        out: list[Outcome] = []
        bar = _progress(len(items), "local") if self.progress else None
        for key, item in zip(keys, items, strict=True):
            try:
                out.append(Outcome(key, fn(item)))
            except Exception as exc:
                out.append(_failed(key, exc))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        return out


class DaskExecutor:
    """Tasks on a ``distributed.Client`` (any number at once, as the workers' threads allow)."""

    kind = "dask"

    def __init__(self, client: Any, progress: bool = True) -> None:
        self.client = client
        self.progress = progress

    @property
    def workers(self) -> int:
        return n_threads(self.client)

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], keys: Sequence[str]
    ) -> list[Outcome]:
        from distributed import as_completed

        tag = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(fn, item, key=f"{key}-{tag}", pure=False)
            for key, item in zip(keys, items, strict=True)
        ]
        which = {f.key: k for f, k in zip(futures, keys, strict=True)}
        done: dict[str, Outcome] = {}
        bar = _progress(len(futures), "dask") if self.progress else None
        for fut in as_completed(futures):
            key = which[fut.key]
            if fut.status == "finished":
                done[key] = Outcome(key, fut.result())
            elif fut.status == "error":
                done[key] = _failed(key, fut.exception(), fut.traceback())
            else:  # cancelled: the cluster went away or the task was cancelled
                done[key] = Outcome(key, error=f"task {fut.status} on the cluster (no result)")
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        return [done[k] for k in keys]


def resolve_kind(kind: str | None, cfg: DaskConfig) -> str:
    """Return ``kind`` or ``dask.executor``; an unknown name is refused with the valid ones."""
    kind = kind or cfg.executor
    if kind not in KINDS:
        raise PipelineError(
            f"executor {kind!r} is unknown. Fix: --executor local (serial, in this process) or "
            "--executor dask (a local cluster, or dask.address / WB_DASK__ADDRESS)."
        )
    return kind


@contextlib.contextmanager
def open_executor(
    kind: str | None,
    cfg: WorkbenchConfig | DaskConfig,
    *,
    workers: int | None = None,
    echo: Callable[[str], None] | None = print,
    progress: bool = True,
) -> Iterator[Executor]:
    """Yield a local or Dask executor (a LocalCluster of ``workers`` processes is closed on exit).

    Raises
    ------
    PipelineError
        When ``kind`` is unknown or ``workers`` < 1.
    workbench.cluster.ClusterError
        When ``dask.address`` does not answer (before any task runs).
    """
    dask_cfg = cfg.dask if isinstance(cfg, WorkbenchConfig) else cfg
    kind = resolve_kind(kind, dask_cfg)
    if workers is not None and workers < 1:
        raise PipelineError(f"--workers {workers}: need at least 1 worker. Fix: --workers 2.")
    if kind == "local":
        yield LocalExecutor(progress)
        return
    with open_client(dask_cfg, n_workers=workers, echo=echo) as client:
        yield DaskExecutor(client, progress)
