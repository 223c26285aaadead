"""The cost model: commission shapes, spread estimate, U-shaped and size/volatility slippage, borrow."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from workbench.backtest import CostModel, run_backtest
from workbench.backtest.costs import borrow_by_row, u_shape
from workbench.config import BacktestConfig, CostsConfig


def _us(*dts: datetime) -> np.ndarray:
    return np.array([int(d.timestamp() * 1_000_000) for d in dts], dtype=np.int64)


def test_commission_shapes():
    per_share = CostModel.from_config(CostsConfig(commission_per_share=0.005, commission_min=1.0))
    assert per_share.commission(100, 50.0) == 1.0  # 0.50 lifted to the minimum
    assert per_share.commission(-1000, 50.0) == pytest.approx(5.0)
    bps = CostModel.from_config(CostsConfig(commission_bps=10.0, commission_flat=2.0))
    assert bps.commission(100, 50.0) == pytest.approx(5.0 + 2.0)
    np.testing.assert_allclose(per_share.commission(np.array([0, 400]), 10.0), [1.0, 2.0])


def test_u_shape_is_one_at_the_edges_and_zero_at_midday():
    winter = _us(
        datetime(2024, 1, 2, 14, 30, tzinfo=UTC),  # 09:30 New York
        datetime(2024, 1, 2, 17, 45, tzinfo=UTC),  # 12:45, mid-session
        datetime(2024, 1, 2, 21, 0, tzinfo=UTC),  # 16:00
        datetime(2024, 1, 2, 23, 0, tzinfo=UTC),  # after hours
    )
    np.testing.assert_allclose(u_shape(winter), [1.0, 0.0, 1.0, 1.0])
    summer = _us(datetime(2024, 7, 1, 13, 30, tzinfo=UTC))  # 09:30 EDT
    assert u_shape(summer)[0] == pytest.approx(1.0)


def test_borrow_accrues_calendar_days_act_360():
    grid = _us(
        datetime(2024, 1, 4, 5, tzinfo=UTC),  # Thu
        datetime(2024, 1, 5, 5, tzinfo=UTC),  # Fri
        datetime(2024, 1, 8, 5, tzinfo=UTC),  # Mon: weekend accrues 3 days
    )
    np.testing.assert_allclose(borrow_by_row(grid, 360.0), [1e-4, 1e-4, 3e-4])
    assert not borrow_by_row(grid, 0.0).any()


def test_spread_from_bars_tracks_the_bar_range(bars_factory):
    wide = bars_factory(("A",), 80, seed=3, vol=0.02)
    narrow = bars_factory(("A",), 80, seed=3, vol=0.002)
    model = CostModel.from_config(CostsConfig(spread_from_bars=True, half_spread_bps=7.0))

    def est(b):
        a = {c: b[c].to_numpy()[:, None].copy() for c in ("high", "low", "close", "volume")}
        grid = b["ts"].dt.epoch("us").to_numpy()
        return model.prepare(a["high"], a["low"], a["close"], a["volume"], grid, intraday=False)

    w, n = est(wide).half_spread[:, 0], est(narrow).half_spread[:, 0]
    assert w[0] == n[0] == pytest.approx(7e-4)  # no estimate on the first bar: config fallback
    assert np.all(w >= 0) and np.nanmean(w[10:]) > np.nanmean(n[10:])


def _one_trade(bars, qty, costs, at=0):
    tg = bars.slice(at, 1).select("symbol", "ts", target=pl.lit(qty))
    res = run_backtest(bars, tg, config=BacktestConfig(sizing="shares", costs=costs))
    return res.fills.row(0, named=True)


def test_impact_grows_with_size_and_volatility(bars_factory):
    costs = CostsConfig(half_spread_bps=0.0, impact_coef=1.0)
    calm = bars_factory(("A",), 30, seed=4, vol=0.005)
    wild = bars_factory(("A",), 30, seed=4, vol=0.03)
    # the first bar has no volatility estimate yet: decide on the 10th bar
    small = _one_trade(calm, 10, costs, at=9)
    big = _one_trade(calm, 1000, costs, at=9)
    per_share = lambda f: f["slippage_cost"] / abs(f["qty"])  # noqa: E731
    assert per_share(big) > per_share(small) > 0
    assert per_share(_one_trade(wild, 100, costs, 9)) > per_share(_one_trade(calm, 100, costs, 9))


def test_intraday_slippage_is_u_shaped(bars_factory):
    bars = bars_factory(("A",), 78, timeframe="5Min", seed=5)
    costs = CostsConfig(half_spread_bps=0.0, slippage_bps=10.0, intraday_u_shape=1.0)
    first = _one_trade(bars, 100, costs)  # decided 09:30, fills 09:35 (near the open)
    mid = _one_trade(bars, 100, costs, at=38)  # fills around 12:45
    assert (
        first["slippage_cost"] / first["ref_price"] > 1.8 * mid["slippage_cost"] / mid["ref_price"]
    )
    assert mid["slippage_cost"] / mid["ref_price"] / 100 == pytest.approx(1e-3, rel=0.01)


@pytest.mark.parametrize(
    "costs, intraday",
    [
        (CostsConfig(slippage_bps=2.0, intraday_u_shape=1.0), True),
        (CostsConfig(slippage_bps=2.0, intraday_u_shape=1.0), False),
        (CostsConfig(slippage_bps=2.0), True),
        (CostsConfig(borrow_bps_annual=40.0), False),
        (CostsConfig(), True),
    ],
)
def test_constant_rows_are_exactly_the_rows_that_hold_one_value(costs, intraday):
    """The kernel reads a one-row view of the rows this calls constant: it must never be wrong."""
    grid = _us(
        datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
        datetime(2024, 1, 2, 17, 45, tzinfo=UTC),
        datetime(2024, 1, 3, 21, 0, tzinfo=UTC),
        datetime(2024, 1, 8, 23, 0, tzinfo=UTC),
    )
    model = CostModel.from_config(costs)
    close = np.full((4, 1), 10.0)
    ca = model.prepare(close, close, close, close, grid, intraday=intraday)
    slip_const, borrow_const = model.constant_rows(intraday=intraday)
    assert not slip_const or np.all(ca.slip_row == ca.slip_row[0])  # constant: truly one value
    assert not borrow_const or np.all(ca.borrow_row == ca.borrow_row[0])
    assert slip_const == (costs.slippage_bps == 0 or not intraday or costs.intraday_u_shape == 0)
    assert borrow_const == (costs.borrow_bps_annual == 0)


def test_one_row_cost_views_give_the_same_backtest(daily_bars):
    from workbench.backtest import _kernels as K

    n_s = daily_bars["symbol"].n_unique()
    close = daily_bars["close"].to_numpy().reshape(n_s, -1).T.copy()
    ref = daily_bars["open"].to_numpy().reshape(n_s, -1).T.copy()
    rng = np.random.default_rng(3)
    target = np.where(
        rng.random(close.shape) < 0.2, rng.choice([-0.3, 0.0, 0.4], close.shape), np.nan
    )
    params = np.zeros(K.N_PARAMS)
    params[[K.P_CASH, K.P_FRACTIONAL, K.P_ALLOW_SHORT, K.P_LEVERAGE, K.P_BPS]] = 1e5, 1, 1, 1.5, 1
    ones = np.ones(n_s, dtype=np.bool_)
    half = np.full((1, 1), 2e-4)
    nan11 = np.full((1, 1), np.nan)
    slip, borrow = np.full(len(close), 1e-4), np.full(len(close), 3e-6)
    full = K.simulate_nb(
        *K.frozen(ref, close, target, half, nan11, nan11, slip, borrow, ones, ones, ones, params)
    )
    one = K.simulate_nb(
        *K.frozen(
            ref, close, target, half, nan11, nan11, slip[:1], borrow[:1], ones, ones, ones, params
        )
    )
    for a, b in zip(full, one, strict=True):
        np.testing.assert_array_equal(a, b)
