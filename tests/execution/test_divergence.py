"""Divergence report: a session that is its backtest diverges by exactly zero; latency,
slippage and a venue denial each land in their own bucket with the right sign and size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.config import (
    CostsConfig,
    DecisionConfig,
    ExecutionPolicyConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe
from workbench.execution.divergence import BUCKETS, divergence, replay_backtest
from workbench.execution.policy import ExecutionPolicy
from workbench.execution.session import run_session
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk import RiskPolicy

COSTS = CostsConfig(
    commission_per_share=0.005, commission_min=1.0, half_spread_bps=2.0, slippage_bps=1.0
)
START = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)  # day 2 of the bars (day 1 warms up)


class Lookup:
    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        return bars.select("symbol", "ts")


def lookup(preds: pl.DataFrame):
    table = {(s, t): p for s, t, p in preds.iter_rows()}
    return lambda rows: np.array(
        [table.get((s, t), np.nan) for s, t in rows.select("symbol", "ts").iter_rows()]
    )


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return SyntheticSource(seed=3, alpha=0.2).fetch(
        ["SYN000", "SYN001", "SYN002"], Timeframe.parse("5Min"),
        datetime(2024, 11, 25, tzinfo=UTC), datetime(2024, 11, 27, tzinfo=UTC),
    )  # fmt: skip


def reversal(bars: pl.DataFrame) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    out = bars.select(
        "symbol", "ts",
        (-(pl.col("close") / pl.col("close").shift(1).over("symbol") - 1)).alias("prediction"),
    )  # fmt: skip
    return out.with_columns(pl.col("prediction") + rng.normal(0, 2e-4, out.height))


def policy(fraction: float = 0.3, max_position: float | None = 0.25) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x", type="intraday",
        decision=DecisionConfig(long=2e-4, short=-2e-4), sizing=SizingConfig(fraction=fraction),
        risk=StrategyRiskConfig(limits=LimitsConfig(max_position=max_position),
                                eod_flatten_minutes=15),
    )  # fmt: skip
    return RiskPolicy.from_strategy(strat, name="div", timeframe="5Min")


def both(bars, preds, pol, broker, costs=COSTS):
    bt = replay_backtest(bars, preds, pol, START, costs=costs, initial_cash=100_000)
    patient = ExecutionPolicy(ExecutionPolicyConfig(stale_after_seconds=None), broker.capabilities)
    ses = run_session(
        bars, START, engine=Lookup(), predict=lookup(preds), features=[], policy=pol,
        broker=broker, execution=patient,
    )  # fmt: skip
    return divergence(ses, bt, bars, START, backtest_predictions=preds), bt, ses


def test_zero_latency_and_the_backtests_costs_diverge_by_exactly_zero(bars) -> None:
    preds = reversal(bars)
    rep, _, _ = both(bars, preds, policy(), SimulatedBroker(100_000, COSTS))
    m = rep.metrics
    assert m["trades_backtest"] > 20 and m["denials_backtest"] > 0  # a busy day with cuts
    assert m["pnl_diff"] == 0.0 and m["pnl_session"] == m["pnl_backtest"] != 0.0
    assert all(v == 0.0 for v in rep.attribution.values())
    assert (m["missed_trades"], m["extra_trades"], m["partial_fills"]) == (0, 0, 0)
    assert m["fill_error_bps_p50"] == 0.0 and m["fill_error_bps_p90"] == 0.0
    assert m["lag_seconds_p90"] == m["lag_backtest_seconds_p50"] == 300.0  # the next bar
    assert (rep.decisions["status"].is_in(["matched", "no_trade"])).all()
    assert rep.table()["pnl"].abs().max() == 0.0
    fig = rep.figure()
    assert len(fig.data) == 3


def one_symbol(bars: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """SYN000 with a constant long signal: one entry at the first decision, one flatten."""
    b = bars.filter(pl.col("symbol") == "SYN000")
    return b, b.select("symbol", "ts").with_columns(pl.lit(1.0).alias("prediction"))


def _session_bars(b: pl.DataFrame) -> pl.DataFrame:
    return b.filter(pl.col("ts") >= START).sort("ts")


def test_latency_lands_in_timing_with_its_exact_size(bars) -> None:
    b, preds = one_symbol(bars)
    pol = policy(fraction=0.5, max_position=None)
    rep, bt, ses = both(b, preds, pol, SimulatedBroker(100_000, COSTS, latency_bars=1))
    opens = dict(zip(b["ts"].to_list(), b["open"].to_list(), strict=True))
    step = timedelta(minutes=5)
    # each fill came one bar later: timing = sum q * (open at t+1 - open at t+2)
    want = sum(
        r["qty"] * (opens[r["decision_ts"] + step] - opens[r["decision_ts"] + 2 * step])
        for r in bt.fills.iter_rows(named=True)
    )
    assert bt.fills.height == 2 and ses.fills.height == 2
    assert rep.attribution["timing"] == pytest.approx(want, rel=1e-9, abs=1e-6)
    assert abs(want) > 1.0
    for k in ("signal", "denials", "other"):
        assert rep.attribution[k] == 0.0
    assert rep.metrics["lag_seconds_p50"] == 600.0  # two bars after the decision
    assert rep.metrics["residual"] == pytest.approx(0.0, abs=1e-6)
    # the same size on a cost kernel that depends on nothing but the price: execution is
    # the cost difference of the later fill prices only
    assert abs(rep.attribution["execution"]) < 0.05 * abs(want)


def test_extra_slippage_lands_in_execution_negative_and_exact(bars) -> None:
    b, preds = one_symbol(bars)
    pol = policy(fraction=0.5, max_position=None)
    worse = COSTS.model_copy(update={"slippage_bps": 10.0})
    rep, _, ses = both(b, preds, pol, SimulatedBroker(100_000, worse))
    want = -sum(abs(r["qty"]) * r["ref_price"] * 9e-4 for r in ses.fills.iter_rows(named=True))
    assert rep.attribution["execution"] == pytest.approx(want, rel=1e-9)
    assert rep.attribution["execution"] < 0
    assert rep.attribution["timing"] == 0.0 and rep.attribution["denials"] == 0.0
    assert rep.attribution["signal"] == 0.0
    assert rep.metrics["fill_error_bps_p50"] == pytest.approx(9.0, rel=1e-3)  # 10 bps vs 1
    assert rep.metrics["residual"] == pytest.approx(0.0, abs=1e-6)


def test_a_venue_denial_lands_in_denials_with_the_backtests_trade_pnl(bars) -> None:
    b, preds = one_symbol(bars)
    pol = policy(fraction=0.5, max_position=None)
    rep, bt, ses = both(b, preds, pol, SimulatedBroker(100_000, COSTS, halted=["SYN000"]))
    assert ses.fills.height == 0 and bt.fills.height == 2
    marks = float(_session_bars(b)["close"][-1])
    trade_pnl = sum(
        r["qty"] * (marks - r["price"]) - r["commission"] for r in bt.fills.iter_rows(named=True)
    )  # the round trip the backtest made and the session could not
    assert rep.attribution["denials"] == pytest.approx(-trade_pnl, rel=1e-9)
    assert rep.attribution["denials"] != 0.0
    for k in ("signal", "timing", "execution", "other"):
        assert rep.attribution[k] == 0.0
    assert rep.metrics["missed_trades"] == 2
    assert rep.metrics["pnl_diff"] == pytest.approx(-rep.metrics["pnl_backtest"], rel=1e-9)


def test_a_different_signal_lands_in_signal(bars) -> None:
    b, preds = one_symbol(bars)
    pol = policy(fraction=0.5, max_position=None)
    bt = replay_backtest(b, preds, pol, START, costs=COSTS)
    flipped = preds.with_columns(-pl.col("prediction"))  # the session's model says short
    ses = run_session(b, START, engine=Lookup(), predict=lookup(flipped), features=[],
                      policy=pol, broker=SimulatedBroker(100_000, COSTS))  # fmt: skip
    rep = divergence(ses, bt, b, START, backtest_predictions=preds)
    assert rep.metrics["pnl_diff"] != 0.0
    assert rep.attribution["signal"] == pytest.approx(rep.metrics["pnl_diff"], rel=1e-9)
    assert sum(abs(rep.attribution[k]) for k in BUCKETS if k != "signal") < 1e-6


def test_the_report_is_an_mlflow_run_linked_to_the_model_version(bars, isolated) -> None:
    import mlflow

    from workbench.execution.divergence import log_divergence
    from workbench.models.registry import ModelRef

    mlflow.set_tracking_uri(f"sqlite:///{isolated / 'mlflow.db'}")
    mlflow.set_experiment("divergence")
    client = mlflow.MlflowClient()
    logged = mlflow.create_external_model(name="m")
    client.create_registered_model("m")
    mv = client.create_model_version("m", f"models:/{logged.model_id}", model_id=logged.model_id)
    ref = ModelRef("m", str(mv.version), "champion", "", "models:/m@champion")
    b, preds = one_symbol(bars)
    rep, _, _ = both(b, preds, policy(fraction=0.5, max_position=None),
                     SimulatedBroker(100_000, COSTS.model_copy(update={"slippage_bps": 5.0})))  # fmt: skip
    with mlflow.start_run(run_name="trade_session") as parent:
        run_id = log_divergence(rep, ref, session_id="s:2024-11-26", session_date="2024-11-26")
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert {k: run.data.tags[k] for k in ("model_name", "model_version", "model_alias")} == {
        "model_name": "m",
        "model_version": str(mv.version),
        "model_alias": "champion",
    }
    assert run.data.metrics["attr_execution"] == pytest.approx(rep.attribution["execution"])
    arts = {a.path for a in client.list_artifacts(run_id, "divergence")}
    assert arts == {"divergence/divergence.html", "divergence/attribution.json",
                    "divergence/decisions.json"}  # fmt: skip
    tags = client.get_model_version("m", mv.version).tags
    assert tags["workbench.divergence.run_id"] == run_id
    assert float(tags["workbench.divergence.attr_execution"]) == pytest.approx(
        rep.attribution["execution"], rel=1e-5)  # fmt: skip
    linked = {m.key: m.run_id for m in mlflow.get_logged_model(logged.model_id).metrics}
    assert linked["divergence_pnl_diff"] == run_id


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    latency=st.integers(0, 2),
    slip=st.floats(0.0, 20.0),
    commission=st.floats(0.0, 0.02),
    participation=st.sampled_from([None, 0.01]),
)
def test_the_buckets_always_add_up_to_the_pnl_difference(
    bars, latency, slip, commission, participation
) -> None:
    preds = reversal(bars)
    venue = COSTS.model_copy(update={"slippage_bps": slip, "commission_per_share": commission})
    broker = SimulatedBroker(100_000, venue, latency_bars=latency, participation=participation)
    rep, _, _ = both(bars, preds, policy(), broker)
    total = sum(rep.attribution.values())
    assert total == pytest.approx(rep.metrics["pnl_diff"], abs=1e-6 * (1 + abs(total)))
    assert rep.metrics["residual"] == pytest.approx(0.0, abs=1e-6 * (1 + abs(total)))
    # each side's equity change is the sum of its decisions' q * (last close - price) - fees
    # (no borrow, flat at both ends): the decision table accounts for every dollar
    assert rep.meta["carry_session"] == pytest.approx(0.0, abs=1e-6)
    assert rep.meta["carry_backtest"] == pytest.approx(0.0, abs=1e-6)
    if latency == 0 and participation is None and slip == 1.0 and commission == 0.005:
        assert rep.metrics["pnl_diff"] == 0.0
