"""The research method is honest on the simulator: it finds nothing in a martingale, and finds the
planted edge (with roughly the planted IC) when there is one. Walk-forward, costs on, gates from config."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

import numpy as np
import polars as pl
import pytest
from scipy import stats

from workbench.backtest import run_backtest, signals_to_targets
from workbench.config import GatesConfig, StrategyConfig, load_config
from workbench.data.schema import KEY
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe
from workbench.features.sets import build_features
from workbench.labels import forward_return
from workbench.risk import RiskPolicy
from workbench.validation.cv import WalkForward
from workbench.validation.gates import evaluate_gates
from workbench.validation.walkforward import walk_forward

SYMBOLS = ["SYN000", "SYN001", "SYN002"]


@cache
def strategy() -> StrategyConfig:
    return load_config().strategy("intraday_reversal")


def run(seed: int, alpha: float) -> dict[str, float]:
    cfg = load_config()
    strat = strategy()
    bars = SyntheticSource(seed=seed, alpha=alpha).fetch(
        SYMBOLS,
        Timeframe.parse("5Min"),
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    )
    feats = build_features(bars, strat.feature_set, cfg)
    table = (
        feats.drop_nulls()
        .join(forward_return(bars, 1).select(*KEY, "label", "t1"), on=list(KEY))
        .sort("ts", "symbol")
    )
    cols = [c for c in feats.columns if c not in KEY]
    wf = WalkForward(train_size=78 * 20, test_size=78 * 10, embargo=1)
    res = walk_forward(
        table,
        cols,
        splitter=wf,
        params=dict(strat.model),
        seed=seed,
        bars=bars,
        risk=RiskPolicy.from_config(cfg, "intraday_reversal", timeframe="5Min"),
        backtest=cfg.backtest,
    )
    gates = evaluate_gates(
        # no search here, so nothing to deflate for and no PBO: the pipeline tests cover those
        res.metrics,
        GatesConfig(**{**strat.gates.model_dump(), "min_deflated_sharpe": None, "max_pbo": None}),
    )
    # gross predictive edge: always positioned by the sign of the prediction, no costs
    gross = signals_to_targets(res.predictions.rename({"prediction": "score"}), max_position=0.2)
    free = cfg.backtest.model_copy(update={"costs": type(cfg.backtest.costs)(half_spread_bps=0.0)})
    g = run_backtest(bars.filter(pl.col("ts") >= res.predictions["ts"].min()), gross, config=free)
    return {
        "ic": res.metrics["ic"],
        "passed": float(gates.passed),
        "gross_sharpe": float(g.stats["sharpe"]),
    }


@pytest.mark.slow
def test_null_market_is_refused_and_has_no_edge() -> None:
    runs = [run(seed, 0.0) for seed in range(10)]
    passed = sum(r["passed"] for r in runs)
    assert passed <= 1, runs  # the gates reject the model in at least 9 of 10 null markets
    sharpes = np.array([r["gross_sharpe"] for r in runs])
    t = stats.ttest_1samp(sharpes, 0.0)
    assert t.pvalue > 0.01, (
        sharpes,
        t,
    )  # the mean out-of-sample Sharpe is indistinguishable from zero
    assert abs(np.mean([r["ic"] for r in runs])) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_alpha_is_found_and_promoted(seed: int) -> None:
    alpha = 0.25
    r = run(seed, alpha)
    expected = SyntheticSource(alpha=alpha).expected_ic(1)
    assert abs(r["ic"] - expected) <= 0.3 * expected, (r, expected)
    assert r["passed"] == 1.0, r
