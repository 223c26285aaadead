"""Dask clusters: a ``LocalCluster`` the workbench starts and stops, or an existing scheduler.

>>> with open_client(cfg.dask) as client:  # doctest: +SKIP
...     futures = client.map(fn, items)

``dask.address`` (``WB_DASK__ADDRESS=tcp://10.0.0.5:8786``) points at a running scheduler; the
workbench connects to it and leaves it running. Without an address a ``LocalCluster`` is started
on 127.0.0.1 (``dask.n_workers`` processes of ``dask.threads_per_worker`` threads) and closed on
exit. Either way the dashboard address is printed. An address that does not answer fails within
``dask.connect_timeout`` seconds with the address in the message.

Everything that fans out (sweeps, parallel search trials, features over symbols) takes its client
from here, so the same command runs on a laptop and on a cluster.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from workbench.config import DaskConfig
from workbench.errors import WorkbenchError


class ClusterError(WorkbenchError):
    """The Dask scheduler cannot be reached or the cluster cannot start."""


def check_reachable(address: str, timeout: float) -> None:
    """Raise :class:`ClusterError` unless a TCP connection to ``address`` opens in ``timeout`` s."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
        raise ClusterError(
            f"dask.address = {address!r} is not a scheduler address. Fix: tcp://HOST:PORT "
            "(e.g. tcp://10.0.0.5:8786), or unset it (WB_DASK__ADDRESS) for a local cluster."
        )
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"no Dask scheduler answers at {address} ({type(exc).__name__}: {exc}; waited "
            f"{timeout:g} s). Fix: start one there (`dask scheduler` and `dask worker {address}`), "
            "correct dask.address / WB_DASK__ADDRESS, or unset it to use a local cluster."
        ) from None


@contextlib.contextmanager
def open_client(
    cfg: DaskConfig | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool | None = None,
    address: str | None = None,
    echo: Callable[[str], None] | None = print,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` on ``address`` / ``cfg.address`` or on a new LocalCluster.

    Keyword arguments override the matching ``cfg`` fields (for the LocalCluster only). The
    LocalCluster and the client are closed on exit; a remote cluster is left running.

    Raises
    ------
    ClusterError
        When the address is malformed or does not answer within ``cfg.connect_timeout``.
    """
    from distributed import Client, LocalCluster

    cfg = cfg or DaskConfig()
    address = address or cfg.address
    say = echo or (lambda _: None)
    if address:
        check_reachable(address, cfg.connect_timeout)
        try:
            client = Client(address, timeout=f"{cfg.connect_timeout}s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"could not connect a Dask client to {address}: {exc}. Fix: check that the "
                "scheduler there runs the same dask/distributed version."
            ) from None
        say(f"dask: scheduler {address}, dashboard {client.dashboard_link}")
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=n_workers or cfg.n_workers,
        threads_per_worker=threads_per_worker or cfg.threads_per_worker,
        processes=cfg.processes if processes is None else processes,
        host="127.0.0.1",
        protocol="tcp://",  # also for threads (else in-process comms)
        scheduler_port=0,
        dashboard_address=cfg.dashboard_address,
        memory_limit=cfg.memory_limit,
    )
    try:
        client = Client(cluster)
        try:
            n = len(cluster.workers)
            say(f"dask: local cluster of {n} workers, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def n_threads(client: Any) -> int:
    """Return the total worker threads of the client's cluster (at least 1)."""
    return max(1, sum(client.nthreads().values()))
