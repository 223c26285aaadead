"""Walk-forward windows fanned out over a LocalCluster (2 worker processes) equal the in-process
walk-forward exactly: predictions, per-window facts, the backtest and its metrics; with
``dask.executor: dask`` the validation's walk-forward takes that path by itself."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from workbench.config import (
    DaskConfig,
    DecisionConfig,
    SizingConfig,
    StrategyConfig,
    WorkbenchConfig,
)
from workbench.data.schema import KEY
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe
from workbench.features.sets import build_features
from workbench.labels import forward_return
from workbench.risk import RiskPolicy
from workbench.validation import evaluate
from workbench.validation.cv import WalkForward
from workbench.validation.walkforward import WalkForwardResult, walk_forward

SPECS = [
    {"name": "returns", "params": {"periods": 1}, "alias": "ret_1"},
    {"name": "returns", "params": {"periods": 3}, "alias": "ret_3"},
    {"name": "time_of_day", "params": {}, "alias": "tod"},
]
FEATURES = ["ret_1", "ret_3", "tod"]
PARAMS = {"num_boost_round": 30, "num_leaves": 4, "min_child_samples": 200, "learning_rate": 0.1}
POLICY = RiskPolicy.from_strategy(
    StrategyConfig(
        feature_set="x",
        decision=DecisionConfig(long=0.0003, short=-0.0003),
        sizing=SizingConfig(fraction=0.2),
    ),
    timeframe="5Min",
)


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame]:
    bars = SyntheticSource(seed=5, alpha=0.3).fetch(
        ["SYN000", "SYN001"],
        Timeframe.parse("5Min"),
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 2, 15, tzinfo=UTC),
    )
    feats = build_features(bars, SPECS)
    lab = forward_return(bars, 1).select(*KEY, "label", "t1")
    return feats.drop_nulls().join(lab, on=list(KEY)).sort("ts", "symbol"), bars


@pytest.fixture(scope="module")
def client(dask_client: Any) -> Any:
    return dask_client


def assert_same(a: WalkForwardResult, b: WalkForwardResult) -> None:
    assert_frame_equal(a.predictions, b.predictions)
    assert_frame_equal(a.folds, b.folds)
    assert a.metrics == pytest.approx(b.metrics, rel=0, abs=0, nan_ok=True)
    assert a.backtest is not None and b.backtest is not None
    assert_frame_equal(a.backtest.equity, b.backtest.equity)
    assert_frame_equal(a.backtest.fills, b.backtest.fills)


def test_windows_on_dask_equal_the_in_process_walk_forward(data: tuple, client: Any) -> None:
    table, bars = data
    splitter = WalkForward(train_size=78 * 8, test_size=78 * 4)
    kw = dict(splitter=splitter, params=PARAMS, seed=2, bars=bars, risk=POLICY)
    local = walk_forward(table, FEATURES, **kw)
    on_dask = walk_forward(table, FEATURES, client=client, **kw)
    assert local.folds.height >= 4  # several windows, so several tasks ran
    assert_same(on_dask, local)
    # the windows really ran on the workers: the scheduler knows the window task
    assert "fold" in client.run_on_scheduler(_task_prefixes)


def _task_prefixes(dask_scheduler: Any = None) -> list[str]:
    return list(dask_scheduler.task_prefixes)


def test_dask_executor_sends_the_validation_walk_forward_to_the_cluster(
    data: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, bars = data
    split = table["ts"].unique().sort()[78 * 10]
    opened: list[DaskConfig] = []
    real = __import__("workbench.cluster", fromlist=["open_client"]).open_client

    def spy(cfg: DaskConfig, **kw: Any) -> Any:
        opened.append(cfg)
        return real(cfg, echo=None, **kw)

    monkeypatch.setattr("workbench.cluster.open_client", spy)
    args = (POLICY, table, bars, split, 3, 2, PARAMS)
    local = evaluate.walk_forward_evaluation(WorkbenchConfig(), *args)
    assert opened == []  # the default executor is local
    cfg = WorkbenchConfig(dask=DaskConfig(executor="dask", n_workers=2))
    on_dask = evaluate.walk_forward_evaluation(cfg, *args)
    assert opened == [cfg.dask]
    assert_same(on_dask, local)
