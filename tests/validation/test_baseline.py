"""The model against its strategy's rule baseline: same window, costs and decision policy."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from workbench.config import BaselineConfig, GatesConfig, load_config
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.models.baselines import RuleBaseline
from workbench.models.estimator import LGBMForecaster
from workbench.models.lgbm import chronological_split
from workbench.stages.features import run_features
from workbench.validation.baseline import compare_with_baseline, daily_returns
from workbench.validation.evaluate import evaluate_model, feature_columns
from workbench.validation.gates import evaluate_gates

REPO = Path(__file__).resolve().parents[2]
STRAT = "intraday_reversal"
SYMBOLS = ["SYN000", "SYN001"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Six weeks of a planted last-bar reversal, its features, the strategy with a baseline."""
    tmp = tmp_path_factory.mktemp("baseline")
    conf = tmp / "config"
    shutil.copytree(REPO / "config", conf)
    path = conf / "strategies" / f"{STRAT}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["decision"] = {"method": "threshold", "long": 0.0003, "short": -0.0003}
    spec["baseline"] = {"rule": "mean_reversion"}
    path.write_text(yaml.safe_dump(spec))
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    mp.setenv("WB_CONFIG_DIR", str(conf))
    mp.setenv("WB_STORE__FEATURES_ROOT", str(tmp / "features"))
    mp.setenv("WB_BACKTEST__COSTS__HALF_SPREAD_BPS", "0.5")
    mp.setenv("WB_BACKTEST__COSTS__COMMISSION_BPS", "0")
    root = tmp / "project"
    (root / "data").mkdir(parents=True)
    cfg = load_config(root)
    store = root / "data" / "sim"
    bars = SyntheticSource(seed=5, alpha=0.25).fetch(
        SYMBOLS, "5Min", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 2, 16, tzinfo=UTC)
    )
    BarStore(store).write(bars, "5Min")
    out = root / "runs"
    out.mkdir()
    table = run_features(cfg, store_root=str(store), symbols=SYMBOLS, timeframe="5Min",
                         start="2024-01-02", end="2024-02-15", strategy=STRAT,
                         out_dir=out).table.drop_nulls("label")  # fmt: skip
    split = chronological_split(table, train_frac=0.6).split_ts
    yield {"cfg": cfg, "table": table, "bars": bars, "split": split}
    mp.undo()


def _evaluate(p: dict, model) -> object:
    return evaluate_model(p["cfg"], model, p["table"], p["bars"], split=p["split"],
                          strategy=STRAT, timeframe="5Min")  # fmt: skip


def _compare(p: dict, backtest):
    return compare_with_baseline(p["cfg"], backtest, p["table"], p["bars"], split=p["split"],
                                 strategy=STRAT, timeframe="5Min")  # fmt: skip


def test_the_rule_itself_ties_its_baseline_exactly(project: dict) -> None:
    train = project["table"].filter(pl.col("ts") < project["split"])
    rule = RuleBaseline("mean_reversion").fit(train.select(feature_columns(train)), train["label"])
    ev = _evaluate(project, rule)
    cmp = _compare(project, ev.backtest)
    assert cmp.rule == "mean_reversion" and cmp.fitted["baseline_feature"] == rule.feature_
    assert ev.backtest.stats["n_trades"] > 20
    assert (cmp.days["model"] == cmp.days["baseline"]).all()
    assert cmp.test.mean_diff == 0.0 and cmp.test.p_value == 1.0
    m = cmp.metrics()
    assert m["baseline_p_value"] == 1.0 and m["baseline_days"] == cmp.days.height
    gates = GatesConfig(min_sharpe=None, max_drawdown=None, min_trades=None, beats_baseline=0.05)
    report = evaluate_gates(m, gates)
    assert not report.passed and report.failures()[0].startswith("beats_baseline:")


def test_a_model_that_trades_the_edge_beats_a_rule_that_fights_it(project: dict) -> None:
    """The planted edge is a reversal: a momentum rule fitted on the training rows finds no
    positive correlation and stays flat, or trades against the edge; the model earns it."""
    p = project
    train = p["table"].filter(pl.col("ts") < p["split"])
    feats = feature_columns(train)
    model = LGBMForecaster(num_boost_round=60, learning_rate=0.05, num_leaves=4,
                           min_child_samples=200, seed=3).fit(train.select(feats), train["label"])  # fmt: skip
    ev = _evaluate(p, model)
    cfg = p["cfg"]
    strat = cfg.strategies[STRAT].model_copy(update={"baseline": BaselineConfig(rule="momentum")})
    momentum_cfg = cfg.model_copy(update={"strategies": {**cfg.strategies, STRAT: strat}})
    cmp = compare_with_baseline(momentum_cfg, ev.backtest, p["table"], p["bars"],
                                split=p["split"], strategy=STRAT, timeframe="5Min")  # fmt: skip
    assert cmp.rule == "momentum"
    assert cmp.test.mean_diff > 0 and cmp.test.p_value < 0.05
    # the daily returns compared are each backtest's own, compounded per session day
    mine = daily_returns(ev.backtest)
    assert np.allclose(
        cmp.days.join(mine, on="date")["model"].to_numpy(),
        cmp.days.join(mine, on="date")["returns"].to_numpy(),
    )
    gates = GatesConfig(min_sharpe=None, max_drawdown=None, min_trades=None, beats_baseline=0.05)
    assert evaluate_gates(cmp.metrics(), gates).passed
    assert len(cmp.figure().data) == 2


def test_no_baseline_section_no_comparison(project: dict) -> None:
    cfg = project["cfg"]
    strat = cfg.strategies[STRAT].model_copy(update={"baseline": None})
    bare = cfg.model_copy(update={"strategies": {**cfg.strategies, STRAT: strat}})
    train = project["table"].filter(pl.col("ts") < project["split"])
    rule = RuleBaseline("momentum", feature="ret_1").fit(train.select(["ret_1"]), train["label"])
    ev = _evaluate(project, rule)
    assert compare_with_baseline(bare, ev.backtest, project["table"], project["bars"],
                                 split=project["split"], strategy=STRAT,
                                 timeframe="5Min") is None  # fmt: skip
