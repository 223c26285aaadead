"""The backtest kernel's fast paths decide exactly what the plain path decides.

``simulate_risk_nb`` skips ``decide_row_nb`` on rows where it would record nothing, reads inputs
no rule needs on every bar from one NaN row (``compact``), and measures an ATR that only the
heat limit reads at order rows (``atr_cell_nb``). Each shortcut is checked against the plain
path, the one the trading session takes: every input a full grid, ``decide_row_nb`` on every row.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from workbench.backtest import _kernels as BK
from workbench.backtest.costs import CostModel
from workbench.config import (
    CostsConfig,
    DecisionConfig,
    KillSwitchConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.data.calendar import session_bounds_us
from workbench.risk import RiskPolicy
from workbench.risk import _kernel as K
from workbench.risk.policy import BKfrozen, denials_frame, orders_frame

T0 = int(datetime(2024, 11, 26, 14, 30, tzinfo=UTC).timestamp() * 1e6)  # two 5Min sessions
STEP = 300_000_000
COSTS = CostsConfig(commission_bps=1.0, half_spread_bps=2.0, slippage_bps=1.0)


def _grid(n_s: int, n_days: int, seed: int, gaps: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    days = [T0 + d * 86_400_000_000 for d in range(n_days)]
    ts = np.concatenate([d + np.arange(78) * STEP for d in days])
    n_t = len(ts)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.004, (n_t, n_s)), axis=0))
    ref = close * np.exp(rng.normal(0, 0.001, (n_t, n_s)))
    high = np.maximum(ref, close) * (1 + np.abs(rng.normal(0, 0.002, (n_t, n_s))))
    low = np.minimum(ref, close) * (1 - np.abs(rng.normal(0, 0.002, (n_t, n_s))))
    miss = rng.random((n_t, n_s)) < gaps
    miss[0] = False
    for a in (close, ref, high, low):
        a[miss] = np.nan
    side = np.sign(rng.normal(0, 1, (n_t, n_s)))
    keep = rng.random((n_t, n_s)) < 0.9  # predictions persist: most rows repeat the last one
    for t in range(1, n_t):
        side[t] = np.where(keep[t], side[t - 1], side[t])
    pred = np.where(rng.random((n_t, n_s)) < 0.1, np.nan, side * 0.8)
    pred[miss] = np.nan
    return {"ts": ts, "close": close, "ref": ref, "high": high, "low": low, "pred": pred}


def _policy(draw: st.DrawFn) -> RiskPolicy:
    method = draw(st.sampled_from(["fixed_fraction", "vol_target", "atr_risk"]))
    strat = StrategyConfig(
        feature_set="x",
        type="intraday",
        decision=DecisionConfig(long=0.5, short=-0.5),
        sizing=SizingConfig(
            method=method,
            fraction=draw(st.sampled_from([0.2, 0.45])),
            vol_target=0.3,
            risk_pct=0.002,
            atr_window=draw(st.sampled_from([3, 14])),
            min_trade=draw(st.sampled_from([0.0, 0.02])),
        ),
        risk=StrategyRiskConfig(
            limits=LimitsConfig(
                max_position=draw(st.sampled_from([None, 0.3])),
                heat_max=draw(st.sampled_from([None, 0.004, 0.05])),
                max_open_positions=draw(st.sampled_from([None, 2])),
                leverage=1.0,
            ),
            killswitch=KillSwitchConfig(
                daily_loss=draw(st.sampled_from([None, 0.004])),
                max_violations=draw(st.sampled_from([None, 3])),
            ),
            eod_flatten_minutes=draw(st.sampled_from([None, 10.0])),
        ),
    )
    return RiskPolicy.from_strategy(
        strat, name="p", timeframe="5Min", fractional=draw(st.booleans())
    )


def _params(cash: float) -> np.ndarray:
    p = np.zeros(BK.N_PARAMS)
    p[BK.P_CASH] = cash
    p[BK.P_FRACTIONAL] = 1.0
    p[BK.P_ALLOW_SHORT] = 1.0
    p[BK.P_LEVERAGE] = 1.0
    p[BK.P_BPS] = COSTS.commission_bps
    return p


def _plain(policy: RiskPolicy, grid: dict, costs, params: np.ndarray, symbols: list[str]):
    """The session's path: full input grids, decide_row_nb on every row, fills as the kernel."""
    close, high, low, ref, pred, ts = (
        grid[k] for k in ("close", "high", "low", "ref", "pred", "ts")
    )
    n_t, n_s = close.shape
    day, eod = policy.calendar_rows(ts)
    atr, vol, sma, ret, regime = policy.inputs(high, low, close, day)
    facts = policy.facts(symbols, None)
    sector, _ = policy.sector_codes(symbols)
    rp = policy.params()
    s, g, v = K.new_state(n_s, params[BK.P_CASH], policy.n_violations)
    fz = BKfrozen(pred, close, high, low, atr, vol, sma, regime, ret, *facts, sector, rp)
    pred_f, close_f, high_f, low_f, atr_f, vol_f, sma_f, reg_f, ret_f = fz[:9]
    trad, short, frac, sector_f, rp_f = fz[9:]
    cost_f = BKfrozen(costs.half_spread, costs.sigma, costs.volume, costs.slip_row, params)
    sec = np.zeros(1)
    out = np.zeros(n_s)
    orders, n_ord = np.empty((4, K.N_ORDER)), 0
    den, n_den = np.empty((4, K.N_DENIAL)), 0
    fills, equity, positions = [], np.empty(n_t), np.empty((n_t, n_s))
    for t in range(n_t):
        for j in range(n_s):
            d = s[j, K.S_PEND]
            if d == 0.0 or np.isnan(close[t, j]):
                continue
            dec = int(s[j, K.S_PEND_ROW])
            px, comm, *_ = BK.fill_cost_nb(ref[t, j], d, dec, j, t, *cost_f)
            K.apply_fill_nb(s, g, j, d, px, comm, day[t])
            fills.append((t, j, d, px, s[j, K.S_QTY]))
        equity[t] = K.mark_nb(s, g, close_f, t, 0.0)
        K.killswitch_nb(s, g, t, day[t], rp_f)
        orders = K.room(orders, n_ord, K.ORD_PER_ROW * n_s)
        den = K.room(den, n_den, K.DEN_PER_ORDER * n_s)
        n_ord, n_den = K.decide_row_nb(
            t, float(ts[t]), day[t], bool(eod[t]), pred_f, close_f, high_f, low_f, atr_f, vol_f,
            sma_f, reg_f, ret_f, trad, short, frac, sector_f, sec, rp_f, s, g, v, out, orders,
            n_ord, den, n_den,
        )  # fmt: skip
        positions[t] = s[:, K.S_QTY]
    return equity, positions, fills, orders[:n_ord], den[:n_den]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    n_s=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    gaps=st.sampled_from([0.0, 0.15]),
)
def test_fast_paths_decide_what_the_plain_path_decides(data, n_s: int, seed: int, gaps: float):
    policy = data.draw(st.composite(lambda draw: _policy(draw))())
    grid = _grid(n_s, 2, seed, gaps)
    symbols = [f"S{j}" for j in range(n_s)]
    nan = np.full((0, n_s), np.nan)
    costs = CostModel.from_config(COSTS).prepare(
        nan, nan, grid["close"], nan, grid["ts"], intraday=True
    )
    params = _params(100_000.0)
    (eq, pos, fills, _, _, _), log = policy.simulate(
        symbols=symbols, ts_us=grid["ts"], ref=grid["ref"], close=grid["close"],
        high=grid["high"], low=grid["low"], pred=grid["pred"], cost_arrays=costs, params=params,
        assets=None, initial_cash=100_000.0,
    )  # fmt: skip
    p_eq, p_pos, p_fills, p_orders, p_den = _plain(policy, grid, costs, params, symbols)
    np.testing.assert_array_equal(eq, p_eq)
    np.testing.assert_array_equal(pos, p_pos)
    got = [tuple(r) for r in fills[:, [BK.F_ROW, BK.F_COL, BK.F_QTY, BK.F_PX, BK.F_POS]]]
    assert got == [tuple(float(x) for x in r) for r in p_fills]
    assert_frame_equal(log["orders"], orders_frame(p_orders, symbols, grid["ts"]))
    rej = log["rejections"].filter(pl.col("reason") != "end_of_data")
    assert_frame_equal(rej, denials_frame(p_den, symbols, grid["ts"]))


@settings(max_examples=40, deadline=None)
@given(
    n_t=st.integers(1, 60),
    w=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    gaps=st.sampled_from([0.0, 0.3]),
)
def test_inputs_equal_a_plain_window_sum_and_the_on_demand_atr(n_t, w, seed, gaps) -> None:
    rng = np.random.default_rng(seed)
    close = 20 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_t, 2)), axis=0))
    close[rng.random(close.shape) < gaps] = np.nan
    high = close * (1 + rng.random(close.shape) * 0.01)
    low = close * (1 - rng.random(close.shape) * 0.01)
    hi, lo, cl = BKfrozen(high, low, close)
    atr, vol, sma, _ = K.risk_inputs_nb(
        hi, lo, cl, w, max(w, 2), w, True, True, True, True, 0, False
    )
    for j in range(2):
        rows = np.flatnonzero(~np.isnan(close[:, j]))
        c = close[rows, j]
        tr = np.full(len(rows), np.nan)
        tr[1:] = np.maximum(high[rows[1:], j], c[:-1]) - np.minimum(low[rows[1:], j], c[:-1])
        lr = np.full(len(rows), np.nan)
        lr[1:] = np.log(c[1:] / c[:-1])
        vw = max(w, 2)
        for k, t in enumerate(rows):
            acc = 0.0
            for x in tr[k - w + 1 : k + 1] if k >= w else []:
                acc += x
            want_atr = acc / w if k >= w else np.nan
            assert np.array_equal(atr[t, j], want_atr, equal_nan=True)
            assert np.array_equal(K.atr_cell_nb(hi, lo, cl, t, j, w), want_atr, equal_nan=True)
            acc = 0.0
            for x in c[k - w + 1 : k + 1] if k >= w - 1 else []:
                acc += x
            assert np.array_equal(sma[t, j], acc / w if k >= w - 1 else np.nan, equal_nan=True)
            if k >= vw:  # logs: numpy's and the kernel's may differ in the last bit
                win = lr[k - vw + 1 : k + 1]
                np.testing.assert_allclose(vol[t, j], win.std(ddof=1), rtol=1e-12)
            else:
                assert np.isnan(vol[t, j])
        assert np.isnan(K.atr_cell_nb(hi, lo, cl, 0, j, w))
    for t in range(n_t):  # the session asks for its last row only: the same values
        row = K.risk_inputs_nb(hi, lo, cl, w, max(w, 2), w, True, True, True, True, t, False)
        for full, one in zip((atr, vol, sma), row[:3], strict=True):
            np.testing.assert_array_equal(one[t], full[t])
    compact = K.risk_inputs_nb(hi, lo, cl, w, max(w, 2), w, True, False, False, False, 0, True)
    np.testing.assert_array_equal(compact[0], atr)
    assert all(a.shape == (1, 2) and np.isnan(a).all() for a in compact[1:])


@settings(max_examples=30, deadline=None)
@given(ts=st.lists(st.integers(10**15, 2 * 10**15), min_size=1, max_size=40), sort=st.booleans())
def test_calendar_rows_equal_a_search_per_bar(ts: list[int], sort: bool) -> None:
    policy = RiskPolicy.from_strategy(
        StrategyConfig(feature_set="x", type="intraday"), timeframe="5Min"
    )
    x = np.array(sorted(ts) if sort else ts, dtype=np.int64)
    _, closes = session_bounds_us(policy.calendar)
    idx = np.minimum(np.searchsorted(closes, x, side="right"), len(closes) - 1)
    eod = x + STEP >= closes[idx] - int(policy.eod_flatten_minutes * 60e6)
    day, flag = policy.calendar_rows(x)
    np.testing.assert_array_equal(day, idx)
    np.testing.assert_array_equal(flag, eod)


@given(st.lists(st.integers(-(10**13), 10**13), max_size=50))
def test_day_changes_count_the_changes_of_date(ts: list[int]) -> None:
    x = np.array(sorted(ts), dtype=np.int64)
    days = (x - 14_400_000_000) // 86_400_000_000
    assert BK.day_changes_nb(x, 14_400_000_000, 86_400_000_000) == np.count_nonzero(np.diff(days))
