"""Shadow sessions: champion and challenger on the same bars keep independent ledgers and
accounts; their paired comparison is scipy's; identical models differ by exactly zero."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from scipy import stats

from workbench.config import (
    CostsConfig,
    DecisionConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe
from workbench.execution.ledger import OrderLedger
from workbench.execution.session import run_session
from workbench.execution.shadow import (
    ShadowArm,
    compare_versions,
    log_shadow_session,
    paired_comparison,
    run_shadow,
    shadow_gate,
    shadow_pairs,
    shadow_sessions,
)
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk import RiskPolicy

COSTS = CostsConfig(commission_per_share=0.005, commission_min=1.0, half_spread_bps=2.0)
START = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)


class Lookup:
    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        return bars.select("symbol", "ts")


def model(bars: pl.DataFrame, sign: float):
    """A causal reversal (sign 1) or momentum (sign -1) model, looked up by (symbol, ts)."""
    p = bars.select(
        "symbol", "ts",
        (-sign * (pl.col("close") / pl.col("close").shift(1).over("symbol") - 1)).alias("p"),
    )  # fmt: skip
    table = {(s, t): v for s, t, v in p.iter_rows()}
    return lambda rows: np.array(
        [table.get((s, t), np.nan) for s, t in rows.select("symbol", "ts").iter_rows()]
    )


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return SyntheticSource(seed=4, alpha=0.2).fetch(
        ["SYN000", "SYN001"], Timeframe.parse("5Min"),
        datetime(2024, 11, 25, tzinfo=UTC), datetime(2024, 11, 27, tzinfo=UTC),
    )  # fmt: skip


def policy() -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x", type="intraday", decision=DecisionConfig(long=2e-4, short=-2e-4),
        sizing=SizingConfig(fraction=0.3), risk=StrategyRiskConfig(eod_flatten_minutes=10),
    )  # fmt: skip
    return RiskPolicy.from_strategy(strat, name="ab", timeframe="5Min")


def arm(role: str, predict) -> ShadowArm:
    return ShadowArm(role, predict, Lookup, (), policy(), lambda: SimulatedBroker(100_000, COSTS))


def test_arms_keep_independent_ledgers_and_accounts(bars, tmp_path) -> None:
    res = run_shadow(
        bars, START, arm("champion", model(bars, 1.0)), arm("challenger", model(bars, -1.0)),
        ledger_root=tmp_path,
    )  # fmt: skip
    assert res.champion.fills.height > 10 and res.challenger.fills.height > 10
    # each arm alone gives the same session: nothing of the other leaks in
    alone = run_session(bars, START, engine=Lookup(), predict=model(bars, 1.0), features=[],
                        policy=policy(), broker=SimulatedBroker(100_000, COSTS))  # fmt: skip
    assert_frame_equal(res.champion.orders, alone.orders)
    assert_frame_equal(
        res.champion.fills.drop("client_order_id", "execution_id"),
        alone.fills.drop("client_order_id", "execution_id"),
    )
    # two ledgers, each holding only its own arm's orders
    for role, r in (("champion", res.champion), ("challenger", res.challenger)):
        led = OrderLedger(f"sqlite:///{tmp_path / f'{role}.db'}")
        try:
            (sid,) = [s.session_id for s in led.sessions()]
            assert led.frames(sid)["fills"].height == r.fills.height
        finally:
            led.close()
    assert res.champion.net_pnl != res.challenger.net_pnl
    assert res.session_return("champion") == pytest.approx(res.champion.net_pnl / 100_000)


def test_identical_models_differ_by_exactly_zero(bars) -> None:
    champion, challenger = {}, {}
    for key, sign in (("reversal", 1.0), ("momentum", -1.0)):  # two sessions, two models
        m = model(bars, sign)
        res = run_shadow(bars, START, arm("champion", m), arm("challenger", m))
        assert_frame_equal(res.champion.pnl, res.challenger.pnl)
        assert res.champion.fills.height > 10
        champion[key], challenger[key] = (
            res.session_return("champion"),
            res.session_return("challenger"),
        )
    assert champion["reversal"] != champion["momentum"]  # the sessions themselves differ
    cmp = paired_comparison(champion, challenger)
    assert cmp["n"] == 2 and cmp["mean_champion"] == cmp["mean_challenger"] != 0.0
    assert cmp["mean_diff"] == 0.0 and cmp["sd_diff"] == 0.0 and cmp["p_value"] == 1.0
    assert "no significant difference" in cmp["verdict"]


def test_paired_comparison_is_scipys_paired_test() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 0.01, 12)
    b = a + rng.normal(0.004, 0.003, 12)
    days = [f"2024-01-{i + 2:02d}" for i in range(12)]
    cmp = paired_comparison(dict(zip(days, a, strict=True)), dict(zip(days, b, strict=True)))
    t = stats.ttest_rel(b, a)
    assert cmp["n"] == 12
    assert cmp["t_stat"] == pytest.approx(t.statistic) and cmp["p_value"] == pytest.approx(t.pvalue)
    assert cmp["wilcoxon_p"] == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert cmp["mean_diff"] == pytest.approx(float(np.mean(b - a)))
    assert cmp["verdict"].startswith("challenger better")
    # only common sessions pair up
    assert paired_comparison({"x": 1.0, "y": 2.0}, {"y": 2.5})["n"] == 1


def test_shadow_runs_in_mlflow_pair_up_and_gate_promotion(isolated) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{isolated / 'mlflow.db'}")
    mlflow.set_experiment("shadow")
    day0 = datetime(2024, 1, 2)
    for i in range(3):
        d = (day0 + timedelta(days=i)).date().isoformat()
        log_shadow_session(model_name="m", version="1", role="champion", strategy="s",
                           session_date=d, session_return=0.001 * i, net_pnl=100.0 * i,
                           divergence={"pnl_diff": -1.0})  # fmt: skip
        log_shadow_session(model_name="m", version="2", role="challenger", strategy="s",
                           session_date=d, session_return=0.001 * i + 0.002, net_pnl=1.0,
                           divergence={"pnl_diff": -3.0})  # fmt: skip
    s = shadow_sessions("m")
    assert s.height == 6
    cmp = compare_versions(s, "1", "2")
    assert cmp["n"] == 3 and cmp["mean_diff"] == pytest.approx(0.002)
    assert cmp["divergence_champion"] == -1.0 and cmp["divergence_challenger"] == -3.0
    pairs = shadow_pairs(s, "1", "2")
    assert pairs == [(pytest.approx(0.001 * i), pytest.approx(0.001 * i + 0.002)) for i in range(3)]
    assert shadow_gate(s, "2", 3)[0] and not shadow_gate(s, "2", 5)[0]
    assert "promotion needs 5" in shadow_gate(s, "2", 5)[1]
