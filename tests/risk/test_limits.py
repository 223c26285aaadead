"""Pre-trade limits: caps never exceeded (hypothesis), every denial carries its rule and values,
rules-off equivalence with the targets path, and bad configuration refused with the fix."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.backtest import run_backtest
from workbench.config import (
    BacktestConfig,
    CostsConfig,
    DecisionConfig,
    ExposureCaps,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
    load_config,
)
from workbench.data.assets import AssetFacts
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError
from workbench.risk import RiskPolicy

SYMS = ["SYN000", "SYN001", "SYN002", "SYN003", "SYN004"]
BARS = SyntheticSource(seed=11, alpha=0.0).fetch(
    SYMS,
    Timeframe.parse("5Min"),
    datetime(2024, 3, 4, tzinfo=UTC),
    datetime(2024, 3, 7, tzinfo=UTC),
)


def _policy(fraction, max_pos, gross, net, max_open=None, **kw) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x",
        type="swing",
        decision=DecisionConfig(long=0.0, short=0.0),
        sizing=SizingConfig(fraction=fraction),
        risk=StrategyRiskConfig(
            limits=LimitsConfig(max_position=max_pos, max_open_positions=max_open, **kw),
            eod_flatten_minutes=None,
        ),
    )
    return RiskPolicy.from_strategy(
        strat, timeframe="5Min", exposure=ExposureCaps(max_gross=gross, max_net=net)
    )


def _preds(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, BARS.height)
    x[rng.random(BARS.height) < 0.3] = np.nan  # some bars without a decision
    return BARS.select("symbol", "ts").with_columns(prediction=pl.Series(x).fill_nan(None))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    fraction=st.floats(0.05, 1.5),
    max_pos=st.floats(0.05, 1.0),
    gross=st.floats(0.2, 2.0),
    net=st.floats(0.1, 1.5),
    max_open=st.one_of(st.none(), st.integers(1, 4)),
)
def test_caps_are_never_exceeded_by_an_order(seed, fraction, max_pos, gross, net, max_open):
    """An order that adds exposure never takes a position, gross or net exposure (at decision
    prices) above its cap; reductions always pass."""
    res = run_backtest(BARS, _preds(seed), risk=_policy(fraction, max_pos, gross, net, max_open))
    q = res.sim.positions
    close = res._close
    eq = res.sim.equity
    for t in range(len(eq) - 1):
        before, after = q[t] * close[t], q[t + 1] * close[t]  # the orders decided at t, priced at t
        if (np.abs(after) > np.abs(before) + 1e-9).any():  # some order added exposure
            added = np.abs(after) > np.abs(before) + 1e-9
            assert (np.abs(after[added]) <= max_pos * eq[t] + 1e-6).all()
            assert np.abs(after).sum() <= max(gross * eq[t], np.abs(before).sum()) + 1e-6
            # a reduction always passes and may move net exposure by its own size
            reduced = (np.abs(after) < np.abs(before) - 1e-9) & (after * before >= 0)
            slack = np.abs(after - before)[reduced].sum()
            assert abs(after.sum()) <= max(net * eq[t], abs(before.sum())) + slack + 1e-6
            if max_open is not None:
                assert (q[t + 1] != 0).sum() <= max(max_open, (q[t] != 0).sum())
    rej = res.rejections
    assert rej["reason"].null_count() == 0 and rej["detail"].null_count() == 0
    caps = rej.filter(pl.col("reason").is_in(["max_position", "max_gross", "max_net"]))
    assert caps["value"].null_count() == 0 and caps["limit"].null_count() == 0
    assert (caps["value"] > caps["limit"]).all()  # the measured value broke the limit


def test_rules_off_equals_the_targets_path_in_shares() -> None:
    """With every rule off, the policy's orders traded as share targets through the targets
    path give the same fills and equity: the risk kernel adds decisions, never other fills."""
    pol = RiskPolicy.permissive(DecisionConfig(long=0.3, short=-0.3), SizingConfig(fraction=0.2))
    costs = BacktestConfig(costs=CostsConfig(commission_bps=1.0, half_spread_bps=2.0))
    res = run_backtest(BARS, _preds(1), config=costs, risk=pol)
    shares = res.orders.with_columns(pl.col("qty").cum_sum().over("symbol").alias("target")).select(
        "symbol", pl.col("decision_ts").alias("ts"), "target"
    )
    old = run_backtest(
        BARS, shares, config=costs.model_copy(update={"sizing": "shares", "max_leverage": 100.0})
    )
    cols = ["ts", "symbol", "qty", "price", "commission"]
    assert res.fills.height > 50
    # the targets path books reductions before additions within a bar: compare as sets
    assert (
        res.fills.select(cols)
        .sort("ts", "symbol")
        .equals(old.fills.select(cols).sort("ts", "symbol"))
    )
    np.testing.assert_allclose(res.sim.equity, old.sim.equity, rtol=0, atol=1e-6)


def test_asset_facts_and_wash_trade_rules() -> None:
    assets = {
        "SYN000": AssetFacts("SYN000", shortable=False),
        "SYN001": AssetFacts("SYN001", easy_to_borrow=False),  # shortable but hard to borrow
        "SYN002": AssetFacts("SYN002", tradable=False),
    }
    pol = _policy(0.1, None, None, None)
    res = run_backtest(BARS, _preds(2), risk=pol, assets=assets)
    rej = res.rejections
    held = res.positions
    assert (held.filter(pl.col("symbol").is_in(["SYN000", "SYN001"]))["shares"] >= 0).all()
    assert (held.filter(pl.col("symbol") == "SYN002")["shares"] == 0).all()
    assert set(rej.filter(pl.col("symbol") == "SYN000")["reason"]) == {"not_shortable"}
    assert "not_tradable" in set(rej.filter(pl.col("symbol") == "SYN002")["reason"])


def test_sector_cap_needs_every_symbol_and_binds() -> None:
    pol = _policy(0.3, None, None, None, sector_cap=0.35)
    with pytest.raises(ConfigError, match=r"sector_cap = 0.35 needs a sector for every symbol"):
        run_backtest(BARS, _preds(3), risk=pol)
    sectors = {s: ("tech" if i < 3 else "energy") for i, s in enumerate(SYMS)}
    pol = RiskPolicy(**{**pol.__dict__, "sectors": sectors})
    res = run_backtest(BARS, _preds(3), risk=pol)
    assert "sector_cap" in set(res.rejections["reason"])
    q, close, eq = res.sim.positions, res._close, res.sim.equity
    tech = np.abs(q[1:, :3] * close[:-1, :3]).sum(axis=1)
    before = np.abs(q[:-1, :3] * close[:-1, :3]).sum(axis=1)
    assert (tech <= np.maximum(0.35 * eq[:-1], before) + 1e-6).all()


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("sizing: {method: kely}", "strategies.bad.sizing.method = 'kely'"),
        ("sizing: {method: kely}", "'fixed_fraction', 'atr_risk', 'vol_target' or 'kelly'"),
        ("decision: {method: quantiles}", "'threshold', 'quantile' or 'probability'"),
        ("risk: {limits: {max_position: -0.1}}", "strategies.bad.risk.limits.max_position = -0.1"),
        ("sizing: {method: kelly, kelly_fraction: 1.5}", "kelly_fraction = 1.5"),
        ("risk: {limits: {heat_max: 0}}", "strategies.bad.risk.limits.heat_max = 0"),
        ("risk: {limits: {max_postion: 0.1}}", "did you mean 'max_position'"),
        ("decision: {long: -1, short: 1}", "short (1.0) must be <= long (-1.0)"),
        ("risk: {killswitch: {daily_loss: 1.5}}", "daily_loss = 1.5"),
    ],
)
def test_bad_risk_config_names_field_value_and_fix(tmp_path: Path, yaml_text, needle) -> None:
    (tmp_path / "config" / "strategies").mkdir(parents=True)
    (tmp_path / "config" / "workbench.yaml").write_text(
        "feature_sets:\n  f:\n    - {name: returns, params: {periods: 1}}\n"
    )
    (tmp_path / "config" / "strategies" / "bad.yaml").write_text(f"feature_set: f\n{yaml_text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert needle in str(err.value)
    assert "bad.yaml" in str(err.value)  # where it was found


def test_pattern_day_trader_rule_is_off_by_default_and_denies_the_fourth() -> None:
    one = BARS.filter(pl.col("symbol") == "SYN000").head(40)
    on_off = np.where((np.arange(40) // 2) % 2 == 0, 1.0, 0.0)  # long 2 bars, flat 2 bars
    preds = one.select("symbol", "ts").with_columns(prediction=pl.Series(on_off))
    small = BacktestConfig(initial_cash=10_000)
    free = run_backtest(one, preds, config=small, risk=_policy(0.5, None, None, None))
    assert "pattern_day_trader" not in set(free.rejections["reason"])  # off by default
    pdt = run_backtest(one, preds, config=small, risk=_policy(0.5, None, None, None, pdt=True))
    rej = pdt.rejections.filter(pl.col("reason") == "pattern_day_trader")
    assert rej.height >= 1
    first = rej["decision_ts"][0]
    exits_before = pdt.orders.filter((pl.col("decision_ts") < first) & (pl.col("target") == 0))
    assert exits_before.height == 3  # three day trades allowed, the fourth exit refused
    assert rej["value"][0] == 3 and rej["limit"][0] == 3
