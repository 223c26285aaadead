"""Risk rules deny or cut orders with a recorded reason instead of raising."""

from __future__ import annotations

import polars as pl
import pytest

from workbench.backtest import run_backtest
from workbench.config import BacktestConfig, CostsConfig
from workbench.data.assets import AssetFacts


@pytest.fixture(scope="module")
def one(daily_bars):
    return daily_bars.filter(pl.col("symbol") == "AAA").head(20)


def _targets(bars, values):
    return bars.head(len(values)).select("symbol", "ts").with_columns(target=pl.Series(values))


def test_not_shortable_is_denied_and_flattened(one):
    facts = {"AAA": AssetFacts("AAA", shortable=False)}
    res = run_backtest(one, _targets(one, [0.2, -0.2, 0.1]), assets=facts)
    assert res.fills["position"].to_list()[1] == 0.0  # the short part was refused
    r = res.rejections.filter(pl.col("reason") == "not_shortable")
    assert r.height == 1 and r["allowed_qty"][0] == -res.fills["qty"][0]
    assert (res.positions["shares"] >= 0).all()


def test_short_disabled_by_config(one):
    res = run_backtest(one, _targets(one, [-0.2]), config=BacktestConfig(allow_short=False))
    assert res.fills.height == 0
    assert res.rejections["reason"].to_list() == ["short_disabled"]


def test_not_fractionable_rounds_with_a_record(one):
    cfg = BacktestConfig(fractional=True, costs=CostsConfig())
    free = run_backtest(one, _targets(one, [0.123]), config=cfg)
    assert free.fills["qty"][0] != round(free.fills["qty"][0])
    facts = {"AAA": AssetFacts("AAA", fractionable=False)}
    res = run_backtest(one, _targets(one, [0.123]), config=cfg, assets=facts)
    assert res.fills["qty"][0] == int(free.fills["qty"][0])
    assert res.rejections["reason"].to_list() == ["not_fractionable"]


def test_not_tradable(one):
    res = run_backtest(one, _targets(one, [0.5]), assets={"AAA": AssetFacts("AAA", tradable=False)})
    assert res.fills.height == 0
    assert res.rejections["reason"].to_list() == ["not_tradable"]


def test_buying_power_cut_is_recorded(one):
    res = run_backtest(one, _targets(one, [1.5]), config=BacktestConfig(costs=CostsConfig()))
    r = res.rejections.row(0, named=True)
    assert r["reason"] == "insufficient_buying_power"
    assert r["allowed_qty"] < r["requested_qty"]
    f = res.fills.row(0, named=True)
    assert f["qty"] * f["price"] <= 100_000  # long-only at leverage 1 stays within cash


def test_full_investment_small_cut_is_silent(one):
    res = run_backtest(one, _targets(one, [1.0]), config=BacktestConfig(fractional=True))
    assert res.rejections.height == 0
    assert res.equity["cash"][1] == pytest.approx(0.0, abs=1e-6)
