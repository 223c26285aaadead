"""Executors: local (serial) and dask (a LocalCluster the workbench starts and stops, or an
address) return the same outcomes in the same order, failures included; an unreachable or
malformed scheduler address fails fast, naming the address."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from workbench.cluster import ClusterError, open_client
from workbench.config import DaskConfig, load_config
from workbench.errors import PipelineError
from workbench.pipeline.executor import open_executor


def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError(f"no threes ({x})")
    return x * x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_and_dask_give_the_same_outcomes_in_order() -> None:
    items = [1, 2, 3, 4]
    keys = [f"k{i}" for i in items]
    with open_executor("local", DaskConfig(), progress=False) as ex:
        local = ex.map(square_or_fail, items, keys)
    lines: list[str] = []
    cfg = DaskConfig(executor="dask", n_workers=2, processes=False)
    with open_executor(None, cfg, echo=lines.append, progress=False) as ex:
        assert ex.kind == "dask" and ex.workers == 2
        dask = ex.map(square_or_fail, items, keys)
        client = ex.client  # type: ignore[attr-defined]
    assert client.status == "closed"  # the workbench's LocalCluster is gone with the block
    assert "dashboard http://127.0.0.1:" in lines[0] and "local cluster of 2 workers" in lines[0]
    for out in (local, dask):
        assert [o.key for o in out] == keys
        assert [o.value for o in out] == [1, 4, None, 16]
        assert [o.ok for o in out] == [True, True, False, True]
        assert out[2].error == "ValueError: no threes (3)"
        assert "square_or_fail" in out[2].traceback


def test_an_unreachable_address_fails_fast_naming_it() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err, open_client(DaskConfig(address=address), echo=None):
        pass
    assert time.monotonic() - t0 < 10
    assert f"no Dask scheduler answers at {address}" in str(err.value)
    assert "WB_DASK__ADDRESS" in str(err.value)


@pytest.mark.parametrize("address", ["127.0.0.1", "http://host:8786", "tcp://:8786"])
def test_a_malformed_address_is_refused(address: str) -> None:
    with (
        pytest.raises(ClusterError, match="is not a scheduler address. Fix: tcp://HOST:PORT"),
        open_executor("dask", DaskConfig(address=address), echo=None),
    ):
        pass


def test_an_existing_scheduler_is_used_and_left_running() -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        processes=False,
        host="127.0.0.1",
        protocol="tcp://",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        lines: list[str] = []
        cfg = DaskConfig(address=cluster.scheduler_address)
        with open_executor("dask", cfg, echo=lines.append, progress=False) as ex:
            assert [o.value for o in ex.map(square_or_fail, [5], ["a"])] == [25]
        assert lines[0].startswith(f"dask: scheduler {cluster.scheduler_address}")
        assert cluster.status.name == "running"


def test_the_address_comes_from_the_environment(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WB_DASK__ADDRESS", "tcp://10.1.2.3:8786")
    monkeypatch.setenv("WB_DASK__EXECUTOR", "dask")
    cfg = load_config(isolated)
    assert (cfg.dask.address, cfg.dask.executor) == ("tcp://10.1.2.3:8786", "dask")


def test_bad_executor_arguments_are_refused() -> None:
    with (
        pytest.raises(PipelineError, match="executor 'ray' is unknown"),
        open_executor("ray", DaskConfig()),
    ):
        pass
    with (
        pytest.raises(PipelineError, match="--workers 0: need at least 1 worker"),
        open_executor("dask", DaskConfig(), workers=0),
    ):
        pass
