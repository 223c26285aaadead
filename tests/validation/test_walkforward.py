"""Walk-forward validation on the simulator: honest by construction, finds planted alpha, not noise."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from workbench.config import DecisionConfig, SizingConfig, StrategyConfig
from workbench.data.schema import KEY
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe
from workbench.features.sets import build_features
from workbench.labels import forward_return
from workbench.risk import RiskPolicy
from workbench.validation.cv import WalkForward
from workbench.validation.walkforward import walk_forward

SPECS = [
    {"name": "returns", "params": {"periods": 1}, "alias": "ret_1"},
    {"name": "returns", "params": {"periods": 3}, "alias": "ret_3"},
    {"name": "time_of_day", "params": {}, "alias": "tod"},
]
PARAMS = {"num_boost_round": 60, "num_leaves": 4, "min_child_samples": 300, "learning_rate": 0.05}


def table_for(alpha: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    bars = SyntheticSource(seed=3, alpha=alpha).fetch(
        ["SYN000", "SYN001", "SYN002"],
        Timeframe.parse("5Min"),
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    )
    feats = build_features(bars, SPECS)
    lab = forward_return(bars, 1).select(*KEY, "label", "t1")
    return feats.drop_nulls().join(lab, on=list(KEY)).sort("ts", "symbol"), bars


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_walk_forward_is_out_of_sample_and_finds_only_planted_signal(alpha: float) -> None:
    table, bars = table_for(alpha)
    wf = WalkForward(train_size=78 * 10, test_size=78 * 5)
    strat = StrategyConfig(
        feature_set="x",
        decision=DecisionConfig(long=0.0003, short=-0.0003),
        sizing=SizingConfig(fraction=0.2),
    )
    res = walk_forward(
        table,
        ["ret_1", "ret_3", "tod"],
        splitter=wf,
        params=PARAMS,
        seed=1,
        bars=bars,
        risk=RiskPolicy.from_strategy(strat, timeframe="5Min"),
    )
    folds = res.folds
    assert folds.height >= 4
    assert (
        folds["train_end_t1"] < folds["test_start"]
    ).all()  # no training label ends inside its test window
    first_test = folds["test_start"].min()
    assert res.predictions["ts"].min() == first_test  # nothing predicted in-sample
    assert res.predictions.select(pl.struct(KEY).is_duplicated().any()).item() is False
    if alpha == 0.0:
        assert abs(res.metrics["ic"]) < 0.04
        assert not (res.metrics.get("sharpe", 0.0) > 1.0)
    else:
        assert 0.2 < res.metrics["ic"] < 0.33  # planted IC 0.3, about 0.9x of it visible at 5Min
        assert res.metrics["sharpe"] > 1.0 and res.metrics["n_trades"] > 50
