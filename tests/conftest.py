"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point config, stores and MLflow at ``tmp_path`` (nothing lands in the repository)."""
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(k)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WB_MLFLOW__ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))
    monkeypatch.setenv("WB_STORE__ROOT", str(tmp_path / "data" / "bars"))
    monkeypatch.setenv("WB_STORE__FEATURES_ROOT", str(tmp_path / "data" / "features"))
    return tmp_path


# Modules whose tests take minutes (a pipeline run behind a module fixture, the SIGKILL trials)
HEAVY = ("tests/execution/test_crash_safety.py", "tests/pipeline/test_runner.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (`make test`: -n 2 --dist loadscope --no-loadscope-reorder, a module or class
    at a time per worker), hand out the longest modules first: started last, one of them would
    leave the other worker idle at the end. A plain `pytest` keeps the collection order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    rank: dict[str, int] = {}
    for item in items:
        r = (
            0
            if item.get_closest_marker("slow")
            else 1
            if item.get_closest_marker("notebook") or module(item) in HEAVY
            else 2
        )
        rank[module(item)] = min(r, rank.get(module(item), 2))
    items.sort(key=lambda item: rank[module(item)])  # stable: same order on every worker


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 for this test run (:mod:`tests.pg_server`);
    ``postgres.database()`` gives a new, empty database URL. Skipped without the binaries."""
    from tests.pg_server import PostgresServer

    try:
        server = PostgresServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"PostgreSQL is not available here: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dask_client():
    """A Dask ``LocalCluster`` of 2 single-threaded worker processes on 127.0.0.1 and its client,
    closed after the module (worker processes: GIL-free, one LightGBM network each)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
