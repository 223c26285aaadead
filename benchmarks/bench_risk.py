"""Risk-layer throughput: the backtest under the whole risk policy, pre-trade checks, correlations.

Three parts, each side by side in one process (best of ``--repeat`` runs, the contenders
interleaved so a shared machine slows them alike):

a. **Backtest under a risk policy** — 1 symbol x 1,000,000 minute bars (bench_backtest's data),
   a 50/200 SMA crossover as a prediction (+1 fast above slow, -1 otherwise, null while the slow
   SMA warms up), decided with thresholds long 0.5 / short -0.5, under a ``StrategyConfig``
   with every rule on: sizing (fixed_fraction 1.0, or vol_target with a volatility regime and
   a 2% min_trade; and again with min_trade 0, which re-sizes on almost every bar),
   max_position 1.0, leverage 1.0, heat_max, max_open_positions, gross/net caps, the kill
   switch (daily_loss, max_drawdown, max_violations; loose: whether it tripped is printed) and
   the intraday end-of-day flatten (5 minutes). Timed: ``run_backtest(bars, predictions,
   config=..., risk=policy)`` (full frame API) and with ``validate=False``; against our risk-off
   ``run_backtest(bars, targets)`` of the same crossover (targets +1.0 / -1.0) and vectorbt's
   fastest configuration, ``Portfolio.from_signals(...).final_value()`` on numpy arrays (long and
   short entries from the crossover, 0.5 bps fees and slippage as in bench_backtest), with each
   installed engine (``engine='numba'``; ``'rust'`` when vectorbt-rust is installed) and the
   better one kept. Then where the risk-on time goes (validation, grid, costs, calendar, risk
   inputs, kernel, log frames), measured part by part.
b. **A live risk engine over 50 open positions** — a :class:`~workbench.risk.engine.RiskEngine`
   over 51 symbols (50 held long after a warm-up of 300 five-minute bars fed through
   ``on_bar``, predictions from bar 100 on, orders filled at the next open; plus one flat) with max_position, max_open_positions,
   sector_cap (5 sectors), max_correlation, heat_max, gross/net and leverage on. ``check(symbol,
   qty, price)`` timed per call (``perf_counter_ns``) for an add to a held position, a new
   position on the flat symbol (every rule, the correlation against all 50 held) and an order
   cut by max_position; then ``on_bar`` for all 51 symbols with 10% of the predictions flipping
   each bar. p50/p99/max per call, and the parts of each call timed on their own.
c. **Rolling correlation matrices** — 50 symbols x a year of 5-minute bars (252 x 78 rows):
   ``rolling_correlation(returns, window=390, every=78)`` (one matrix per session) and
   ``every=1`` (every row), against ``np.corrcoef`` per session in a loop and pandas'
   ``DataFrame.rolling(390).corr()`` (which computes every row), with their agreement.

Run: ``.venv/bin/python benchmarks/bench_risk.py [--repeat 3] [--quick]`` (``--quick``: 1/10 of
the minute bars, fewer calls and a quarter of the year; a smoke run well under two minutes).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from _report import report
from bench_backtest import BPS, COSTS, interleaved, make_bars, sessions, wide

from workbench.backtest import _kernels as BK
from workbench.backtest import engine as BE
from workbench.backtest import run_backtest
from workbench.backtest.costs import CostModel
from workbench.config import (
    BacktestConfig,
    DecisionConfig,
    ExposureCaps,
    KillSwitchConfig,
    LimitsConfig,
    RegimeConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.risk import RiskPolicy
from workbench.risk import _kernel as K
from workbench.risk import engine as RE
from workbench.risk.correlation import rolling_correlation
from workbench.risk.engine import FillEvent, RiskEngine
from workbench.risk.policy import BKfrozen, denials_frame, orders_frame, trips_frame

FAST, SLOW = 50, 200
CASH = 100_000.0


def pct_us(ns: np.ndarray) -> str:
    p50, p99 = np.percentile(ns, [50, 99]) / 1e3
    return f"p50 {p50:8.1f} µs  p99 {p99:8.1f} µs  max {ns.max() / 1e3:9.1f} µs"


# ==================================================================================== part a
def crossover_side(close: np.ndarray) -> np.ndarray:
    """``[T]``: +1 where the fast SMA is above the slow one, -1 otherwise, NaN while warming up."""
    c = np.concatenate([[0.0], np.cumsum(close)])
    fast = (c[FAST:] - c[:-FAST]) / FAST  # rows FAST-1 ..
    slow = (c[SLOW:] - c[:-SLOW]) / SLOW  # rows SLOW-1 ..
    side = np.full(len(close), np.nan)
    side[SLOW - 1 :] = np.where(fast[SLOW - FAST :] > slow, 1.0, -1.0)
    return side


def strategy(sizing: SizingConfig) -> StrategyConfig:
    return StrategyConfig(
        feature_set="bench",
        type="intraday",
        decision=DecisionConfig(method="threshold", long=0.5, short=-0.5),
        sizing=sizing,
        risk=StrategyRiskConfig(
            limits=LimitsConfig(
                max_position=1.0,
                leverage=1.0,
                heat_max=0.25,  # stop distance x shares / equity: ~0.003 at full size here
                max_open_positions=1,
            ),
            killswitch=KillSwitchConfig(daily_loss=0.5, max_drawdown=0.5, max_violations=50),
            eod_flatten_minutes=5,
        ),
    )


VOL_TARGET = SizingConfig(
    method="vol_target",
    vol_target=0.15,
    vol_window=20,
    max_leverage=1.0,
    regime=RegimeConfig(window=20, lookback=780),
)
SIZINGS = {
    "fixed_fraction 1.0": SizingConfig(method="fixed_fraction", fraction=1.0),
    # hysteresis on, as the intraday strategies configure it: no order under 2% of equity
    "vol_target + regime": VOL_TARGET.model_copy(update={"min_trade": 0.02}),
    # min_trade 0: the 20-bar volatility moves the target on every bar, so it re-sizes on
    # (almost) every bar; the worst case of the policy, not a realistic one
    "vol_target, min_trade 0": VOL_TARGET,
}


def vbt_engines() -> tuple[list[str], str]:
    """Engines of the installed vectorbt's ``from_signals`` and a note on the rust one."""
    import inspect

    import vectorbt as vbt

    if "engine" not in inspect.signature(vbt.Portfolio.from_signals).parameters:
        return [""], f"vectorbt {vbt.__version__}: no engine= option (numba only)"
    from vectorbt._engine import is_rust_available

    if is_rust_available():
        return ["numba", "rust"], f"vectorbt {vbt.__version__}: engine= numba and rust tried"
    return ["numba"], (
        f"vectorbt {vbt.__version__} has engine='rust' but vectorbt-rust is not installed "
        "(pip install vectorbt-rust): numba only"
    )


BARS_2D = ("close", "open", "high", "low", "volume")


def risk_profile(bars, preds, cfg, policy, repeat) -> dict[str, float]:
    """Time the steps of ``run_backtest(..., risk=policy)`` one by one, interleaved with the
    whole call (``"total"``), best of ``repeat``."""
    grid = BE._Grid.build(bars)

    def align():
        g = BE._Grid.build(bars)
        tv = BE._align_targets(bars, preds, "prediction")
        return [g.to_2d(v) for v in (tv, *(bars[c].to_numpy() for c in BARS_2D))]

    target, close, ref, high, low, volume = align()
    model = CostModel.from_config(cfg.costs)

    def costs():
        return model.prepare(high, low, close, volume, grid.ts_us, intraday=grid.intraday)

    ca = costs()
    day, eod = policy.calendar_rows(grid.ts_us)
    # as RiskPolicy.simulate: compact inputs, an ATR read only at order rows measured there
    atr, vol, sma, ret, regime = policy.inputs(high, low, close, day, compact=True)
    tradable, shortable, fractionable = policy.facts(grid.symbols, None)
    sector, n_sectors = policy.sector_codes(grid.symbols)
    params = np.zeros(BK.N_PARAMS)
    params[[BK.P_CASH, BK.P_SIZING, BK.P_FRACTIONAL, BK.P_ALLOW_SHORT, BK.P_LEVERAGE]] = [
        cfg.initial_cash, BK.SIZING_CODES[cfg.sizing], 1.0, 1.0, cfg.max_leverage,
    ]  # fmt: skip
    params[BK.P_BPS] = cfg.costs.commission_bps
    params[BK.P_CLIP_TOL] = BE.CLIP_TOLERANCE
    rp = policy.params()
    if policy.atr_on_demand():
        rp[K.R_ATR_ON_DEMAND] = policy.sizing.atr_window

    def kernel():
        s, g, v = K.new_state(grid.n_symbols, cfg.initial_cash, policy.n_violations)
        args = (
            *BKfrozen(ref, close, high, low, target, atr, vol, sma, regime, ret),
            *BKfrozen(ca.half_spread, ca.sigma, ca.volume, ca.slip_row, ca.borrow_row),
            *BKfrozen(grid.ts_us, day, eod, tradable, shortable, fractionable, sector),
        )
        return K.simulate_risk_nb(*args, n_sectors, *BKfrozen(params, rp), s, g, v), g

    (_, _, _, den, _, _, orders), g = kernel()

    def logs():
        orders_frame(orders, grid.symbols, grid.ts_us)
        denials_frame(den, grid.symbols, grid.ts_us)
        trips_frame(g, grid.ts_us)

    fns = {
        "total": lambda: run_backtest(bars, preds, config=cfg, risk=policy),
        "validation (_conforms)": lambda: BE._conforms(bars),
        "grid + align + to_2d": align,
        "costs.prepare": costs,
        "calendar_rows": lambda: policy.calendar_rows(grid.ts_us),
        "risk inputs (ATR, vol, regime)": lambda: policy.inputs(
            high, low, close, day, compact=True
        ),
        "simulate_risk_nb (kernel)": kernel,
        "log frames (orders, denials, trip)": logs,
    }
    return {k: v[0] for k, v in interleaved(fns, repeat).items()}


def part_a(n_bars: int, repeat: int) -> dict[str, Any]:
    import vectorbt as vbt

    bars = make_bars(1, n_bars, minute=True, seed=1)
    close, open_ = wide(bars, "close", 1), wide(bars, "open", 1)
    side = crossover_side(close[:, 0])
    keys = bars.select("symbol", "ts")
    preds = keys.with_columns(prediction=pl.Series(side).fill_nan(None))
    targets = keys.with_columns(target=pl.Series(side).fill_nan(None))
    cfg = BacktestConfig(initial_cash=CASH, sizing="fraction", fractional=True, costs=COSTS)
    policies = {
        name: RiskPolicy.from_strategy(strategy(s), name=name, timeframe="1Min", fractional=True)
        for name, s in SIZINGS.items()
    }

    # vectorbt: the same sides; an entry on the bar after a change of side, at its open
    prev = np.concatenate([[0.0], side[:-1]])
    long_in = (side == 1.0) & (prev != 1.0)
    short_in = (side == -1.0) & (prev != -1.0)
    shift = lambda a: np.concatenate([[False], a[:-1]])[:, None]  # noqa: E731
    v_long, v_short = shift(long_in), shift(short_in)
    engines, vbt_note = vbt_engines()

    def vbt_run(engine: str):
        kw = {"engine": engine} if engine else {}
        pf = vbt.Portfolio.from_signals(
            close, v_long, np.zeros_like(v_long), short_entries=v_short,
            short_exits=np.zeros_like(v_short), price=open_, fees=BPS * 1e-4,
            slippage=BPS * 1e-4, init_cash=CASH, **kw,
        )  # fmt: skip
        return float(np.asarray(pf.final_value()).ravel()[0])

    fns: dict[str, Callable[[], object]] = {}
    for e in engines:
        fns[f"vbt:{e}"] = lambda e=e: vbt_run(e)
    fns["off"] = lambda: run_backtest(bars, targets, config=cfg)
    fns["off_trusted"] = lambda: run_backtest(bars, targets, config=cfg, validate=False)
    for name, pol in policies.items():
        fns[f"on:{name}"] = lambda pol=pol: run_backtest(bars, preds, config=cfg, risk=pol)
        fns[f"on_trusted:{name}"] = lambda pol=pol: run_backtest(
            bars, preds, config=cfg, validate=False, risk=pol
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in fns.values():
            fn()  # compile / warm
        r = interleaved(fns, repeat)

    vbt_best = min((k for k in fns if k.startswith("vbt:")), key=lambda k: r[k][0])
    t_vbt, vbt_final = r[vbt_best]
    t_off, res_off = r["off"]
    print(f"\n== a. 1 symbol x {n_bars:,} minute bars; SMA {FAST}/{SLOW} crossover, long/short")
    print(f"  {vbt_note}")
    rows = [(f"vbt from_signals numpy ({k[4:] or 'default'})", r[k][0]) for k in fns if "vbt" in k]
    rows += [("wb risk-off run_backtest", t_off)]
    rows += [("wb risk-off (validate=False)", r["off_trusted"][0])]
    for name in policies:
        rows += [(f"wb risk-on {name}", r[f"on:{name}"][0])]
        rows += [(f"wb risk-on {name} (validate=False)", r[f"on_trusted:{name}"][0])]
    for label, t in rows:
        print(
            f"  {label:<46} {t * 1e3:8.1f} ms {n_bars / t / 1e6:6.2f} M bars/s  "
            f"x{t_vbt / t:5.2f} vs vbt  x{t_off / t:5.2f} vs risk-off"
        )
    print(f"  agreement (final equity; fills): vbt {vbt_final:,.2f}; risk-off ", end="")
    print(f"{res_off.equity['equity'][-1]:,.2f} ({res_off.fills.height:,} fills)")
    for name in policies:
        res = r[f"on:{name}"][1]
        reasons = res.rejections["reason"].value_counts().sort("reason").rows()
        print(
            f"    risk-on {name}: equity {res.equity['equity'][-1]:,.2f}, "
            f"{res.fills.height:,} fills, {res.orders.height:,} orders, kill switch "
            f"{'TRIPPED ' + res.kill_switch['reason'][0] if res.kill_switch.height else 'not tripped'}"
            f"; denials {dict(reasons)}"
        )
    out: dict[str, Any] = {"vbt": t_vbt, "off": t_off, "off_trusted": r["off_trusted"][0]}
    out["n_bars"] = n_bars
    out["vbt_label"] = f"vectorbt from_signals, numpy ({vbt_best[4:] or 'default'})"
    for name in policies:
        out[f"on:{name}"] = r[f"on:{name}"][0]
        out[f"on_trusted:{name}"] = r[f"on_trusted:{name}"][0]
    for name, pol in policies.items():
        parts = risk_profile(bars, preds, cfg, pol, repeat)
        t_on = parts.pop("total")
        print(f"  where risk-on {name} time goes (parts timed alone, interleaved with the call):")
        for label, t in parts.items():
            print(f"    {label:<40} {t * 1e3:8.1f} ms  {t / t_on:6.1%}")
        rest = t_on - sum(parts.values())
        print(
            f"    {'rest (facts, params, result object)':<40} {rest * 1e3:8.1f} ms  {rest / t_on:6.1%}"
        )
        print(f"    {'= run_backtest(..., risk=policy)':<40} {t_on * 1e3:8.1f} ms")
    return out


# ==================================================================================== part b
N_HELD = 50
SECTORS = 5


def five_minute_bars(n_symbols: int, n_bars: int, seed: int) -> pl.DataFrame:
    """``n_bars`` regular-session 5-minute bars per symbol from 2015-01-02 (all EST sessions)."""
    days = sessions(n_bars // 78 + 1, datetime(2015, 1, 2, 14, 30, tzinfo=UTC))
    ts = (days[:, None] + np.arange(78)[None, :] * 300_000_000).ravel()[:n_bars]
    rng = np.random.default_rng(seed)
    r = rng.normal(0, 0.002, (n_bars, n_symbols)) + rng.normal(0, 0.001, (n_bars, 1))
    close = 50 * np.exp(np.cumsum(r, axis=0))
    open_ = np.vstack([close[:1], close[:-1]])
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    syms = [f"S{j:03d}" for j in range(n_symbols)]
    return pl.DataFrame(
        {
            "symbol": np.tile(syms, n_bars),
            "ts": pl.Series(np.repeat(ts, n_symbols)).cast(pl.Datetime("us", "UTC")),
            "open": open_.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": np.full(n_bars * n_symbols, 1e5),
        }
    )


def live_policy(symbols: list[str]) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="bench",
        type="swing",  # no end-of-day flatten: the book stays open across the warm-up
        decision=DecisionConfig(long=0.5, short=-0.5),
        sizing=SizingConfig(method="fixed_fraction", fraction=0.015),
        risk=StrategyRiskConfig(
            limits=LimitsConfig(
                max_position=0.05,
                max_open_positions=60,
                sector_cap=0.25,
                sectors={s: f"SEC{i % SECTORS}" for i, s in enumerate(symbols)},
                max_correlation=0.95,
                correlation_window=78,
                heat_max=0.5,
                leverage=1.0,
            ),
            killswitch=KillSwitchConfig(daily_loss=0.2, max_drawdown=0.2, max_violations=1000),
        ),
    )
    return RiskPolicy.from_strategy(
        strat, name="live", timeframe="5Min", exposure=ExposureCaps(max_gross=1.0, max_net=1.0)
    )


class Replay:
    """Feed bars to a RiskEngine one timestamp at a time, filling its orders at the next open."""

    def __init__(self, engine: RiskEngine, bars: pl.DataFrame) -> None:
        self.engine = engine
        self.groups = [
            (ts, g) for (ts,), g in bars.sort("ts", "symbol").group_by(["ts"], maintain_order=True)
        ]
        self.i = 0
        self.pending: dict[str, float] = {}

    def step(self, preds: dict[str, float]) -> int:
        ts, g = self.groups[self.i]
        self.i += 1
        if self.pending:
            opens = dict(g.select("symbol", "open").iter_rows())
            fills = [FillEvent(s, q, opens[s], 0.0) for s, q in self.pending.items()]
            self.engine.on_fills(fills, ts)
        t0 = time.perf_counter_ns()
        self.pending = self.engine.on_bar(ts, g, preds)
        return time.perf_counter_ns() - t0


def check_parts(
    engine: RiskEngine, symbol: str, qty: float, price: float, n: int
) -> tuple[dict[str, float], int]:
    """Time the steps of ``RiskEngine.check`` on their own (median ns) and count its denials."""
    j = engine.col[symbol]
    t = max(engine._n, 1) - 1
    ret = engine._last_ret
    qe = engine.s[j, K.S_QTY] + engine.s[j, K.S_PEND]

    def agg():
        return K.aggregates_nb(engine.s, engine.sector, engine.n_sectors)

    buf = np.empty((K.DEN_PER_ORDER, K.N_DENIAL))

    def lim():
        gross, net, heat, n_open, sec = agg()
        return K.limits_nb(
            min(t, ret.shape[0] - 1), j, float(engine.g[K.G_DAY]), np.nan, qe, float(qty),
            float(price), engine.equity, engine._last_atr[j], ret, engine.tradable,
            engine.shortable, engine.fractionable, engine.sector, sec, gross, net, heat, n_open,
            engine.rp, engine.s, engine.g, buf, 0,
        )  # fmt: skip

    _, n_den, _ = lim()
    den = buf[:n_den].copy()
    den[:, BK.D_DEC] = np.arange(n_den)  # rows of the ts array passed below

    def frame():
        rows = denials_frame(den, engine.symbols, np.zeros(n_den, dtype=np.int64))
        return rows.select("reason", "value", "limit", "detail").to_dicts()

    out = {}
    steps = {"aggregates_nb": agg, "+ limits_nb": lim, "(rejections() frame, not in check)": frame}
    for label, fn in steps.items():
        ns = np.empty(n, dtype=np.int64)
        for i in range(n):
            t0 = time.perf_counter_ns()
            fn()
            ns[i] = time.perf_counter_ns() - t0
        out[label] = float(np.median(ns))
    return out, n_den


def on_bar_parts(engine: RiskEngine, ts: datetime, g: pl.DataFrame, n: int) -> dict[str, float]:
    """Time the steps of ``RiskEngine.on_bar`` on their own, on the engine's current buffers."""
    pol = engine.policy
    m = engine._n
    ts_us = RE._us(ts)
    e = copy.deepcopy(engine)
    day, eod = pol.calendar_rows(np.array([ts_us]))
    atr, vol, sma, ret, regime = pol.inputs(e._hi[:m], e._lo[:m], e._cl[:m], e._day[:m], m - 1)

    n = len(e.symbols)
    orders = K.room(e._orders, e._n_ord, K.ORD_PER_ROW * n)
    den = K.room(e._den, e._n_den, K.DEN_PER_ORDER * n)

    def decide():
        s, gg, v = e.s.copy(), e.g.copy(), e.v.copy()
        K.decide_row_nb(
            m - 1, float(ts_us), int(day[0]), bool(eod[0]), e._pred[:m], e._cl[:m], e._hi[:m],
            e._lo[:m], atr, vol, sma, regime, ret, e.tradable, e.shortable, e.fractionable, e.sector, e._sec,
            e.rp, s, gg, v, e._out, orders, e._n_ord, den, e._n_den,
        )  # fmt: skip

    def rows():  # what RiskEngine._append does with the bar, without moving the buffers
        cols = [e.col[sym] for sym in g["symbol"].to_list()]
        return cols, g["high"].to_numpy(), g["low"].to_numpy(), g["close"].to_numpy()

    steps = {
        "_us(ts)": lambda: RE._us(ts),
        "_append: the bar into the buffers": rows,
        "calendar_rows (x2 with on_fills)": lambda: pol.calendar_rows(np.array([ts_us])),
        "policy.inputs: risk_inputs_nb + regime": lambda: pol.inputs(
            e._hi[:m], e._lo[:m], e._cl[:m], e._day[:m], m - 1
        ),
        "decide_row_nb (limits, correlation)": decide,
        "result dict": lambda: {
            s: float(e._out[i]) for i, s in enumerate(e.symbols) if e._out[i] != 0.0
        },
    }
    out = {}
    for label, fn in steps.items():
        ns = np.empty(n, dtype=np.int64)
        for i in range(n):
            t0 = time.perf_counter_ns()
            fn()
            ns[i] = time.perf_counter_ns() - t0
        out[label] = float(np.median(ns))
    return out


def part_b(n_checks: int, n_live: int) -> dict[str, float]:
    n_sym = N_HELD + 1
    warm = 300
    bars = five_minute_bars(n_sym, warm + n_live + 1, seed=5)
    symbols = sorted(bars["symbol"].unique().to_list())
    flat = symbols[-1]
    policy = live_policy(symbols)
    engine = RiskEngine(policy, symbols, initial_cash=CASH)
    replay = Replay(engine, bars)
    hold = {s: 1.0 for s in symbols if s != flat}
    for i in range(warm):  # inputs first (ATR, returns: an entry without them is denied), then
        replay.step(hold if i >= 100 else {})  # the predictions open the 50 positions
    replay.step(hold)  # fills the last warm-up orders
    n_open = sum(1 for q in engine.positions().values() if q != 0.0)
    held = symbols[0]
    price = float(engine.s[engine.col[held], K.S_LAST])
    pos = engine.position(held)
    cases = {
        f"add 10 sh to a held long ({held})": (held, 10.0, price),
        f"new long on the flat {flat} (all rules)": (
            flat, 10.0, float(engine.s[engine.col[flat], K.S_LAST]),
        ),
        "cut by max_position (1 denial record)": (held, 5 * pos, price),
    }  # fmt: skip
    print(
        f"\n== b. RiskEngine over {n_sym} symbols, {n_open} open positions after {warm} bars "
        f"(5Min); equity {engine.equity:,.0f}, limits: max_position, max_open, sector_cap, "
        "max_correlation, heat_max, gross/net, leverage"
    )
    out = {}
    for label, (sym, qty, px) in cases.items():
        parts, n_den = check_parts(engine, sym, qty, px, min(n_checks, 2000))
        detail = f"    parts (median; {n_den} denial rows): " + ", ".join(
            f"{k} {v / 1e3:.1f} µs" for k, v in parts.items()
        )
        try:
            engine.check(sym, qty, px)
        except IndexError as exc:  # RiskEngine.check indexes ts_us by the bar row (engine.py)
            print(f"  check: {label:<44} FAILS: IndexError {exc} (a check that records a denial)")
            print(detail + " (denial rows re-indexed here)")
            out[label] = parts["+ limits_nb"] / 1e3
            continue
        for _ in range(200):
            engine.check(sym, qty, px)  # warm
        ns = np.empty(n_checks, dtype=np.int64)
        for i in range(n_checks):
            t0 = time.perf_counter_ns()
            res = engine.check(sym, qty, px)
            ns[i] = time.perf_counter_ns() - t0
        out[label] = float(np.percentile(ns, 99)) / 1e3
        print(f"  check: {label:<44} {pct_us(ns)}  -> {res['status']}")
        print(detail)
    # per-bar decisions: 10% of the predictions flip each bar
    rng = np.random.default_rng(7)
    preds = dict(hold)
    ns = np.empty(n_live, dtype=np.int64)
    n_orders = 0
    for i in range(n_live):
        for s in symbols:
            if rng.random() < 0.1:
                preds[s] = -preds.get(s, 1.0)
        ns[i] = replay.step(dict(preds))
        n_orders += len(replay.pending)
    p50, p99 = np.percentile(ns, [50, 99]) / 1e6
    out["on_bar p99 ms"] = p99
    print(
        f"  on_bar ({n_sym} symbols, {n_orders / n_live:.1f} orders/bar): p50 {p50:.2f} ms  "
        f"p99 {p99:.2f} ms  max {ns.max() / 1e6:.2f} ms (target p99 < 5 ms)"
    )
    ts, g = replay.groups[replay.i - 1]
    parts = on_bar_parts(engine, ts, g, 200)
    for label, v in parts.items():
        print(f"    {label:<44} {v / 1e3:8.1f} µs  ({v / 1e6 / p50:5.1%} of p50)")
    return out


# ==================================================================================== part c
def part_c(n_days: int, repeat: int) -> dict[str, float]:
    import pandas as pd

    window, every = 390, 78
    rng = np.random.default_rng(11)
    x = rng.normal(0, 1e-3, (n_days * 78, 50)) + rng.normal(0, 5e-4, (n_days * 78, 1))
    x_nan = x.copy()
    x_nan[rng.random(x.shape) < 0.01] = np.nan
    ends = np.arange(window - 1, x.shape[0], every)

    def np_loop():
        return np.stack([np.corrcoef(x[e - window + 1 : e + 1].T) for e in ends])

    def pd_roll():
        return pd.DataFrame(x).rolling(window).corr()

    fns = {
        "ours78": lambda: rolling_correlation(x, window, every=every),
        "ours78_nan": lambda: rolling_correlation(x_nan, window, every=every),
        "numpy78": np_loop,
        "ours1": lambda: rolling_correlation(x, window, every=1),
        "pandas": pd_roll,
    }
    for k in ("ours78", "ours78_nan", "ours1"):
        fns[k]()  # compile / warm
    r = interleaved(fns, repeat)
    m78, m1, ref = r["ours78"][1], r["ours1"][1], r["numpy78"][1]
    pdm = r["pandas"][1]
    rows_pd = pdm.to_numpy().reshape(x.shape[0], 50, 50)
    k1 = np.arange(window - 1, x.shape[0])
    print(f"\n== c. rolling correlation: 50 symbols x {x.shape[0]:,} 5Min rows ({n_days} days)")
    t78, t1 = r["ours78"][0], r["ours1"][0]
    table = [
        (f"wb rolling_correlation every=78 ({m78.shape[0]} matrices)", t78, None),
        ("  same with 1% missing bars (pairwise deletion)", r["ours78_nan"][0], None),
        ("np.corrcoef per session (loop)", r["numpy78"][0], t78),
        (f"wb rolling_correlation every=1 ({m1.shape[0]:,} matrices)", t1, None),
        ("pandas rolling(390).corr() (every row)", r["pandas"][0], t1),
    ]
    for label, t, ours in table:
        ratio = f"  wb x{t / ours:6.1f} faster" if ours else ""
        print(f"  {label:<56} {t * 1e3:9.1f} ms{ratio}")
    print(
        f"  memory: every=78 {m78.nbytes / 1e6:.1f} MB, every=1 {m1.nbytes / 1e6:.0f} MB "
        f"(pandas' frame {pdm.memory_usage(deep=True).sum() / 1e6:.0f} MB); target < 100 ms"
    )
    print(
        f"  agreement: max |wb - np.corrcoef| {np.abs(m78 - ref).max():.1e}; max |wb every=1 - "
        f"pandas| {np.nanmax(np.abs(m1 - rows_pd[k1])):.1e}"
    )
    return {"ours78": t78, "ours1": t1, "n_rows": x.shape[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller shapes (smoke run)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    ra = part_a(100_000 if a.quick else 1_000_000, a.repeat)
    rb = part_b(2_000 if a.quick else 10_000, 60 if a.quick else 300)
    rc = part_c(63 if a.quick else 252, a.repeat)
    print("\n== summary (throughput ratios, higher is better; 2 shared cores)")
    n_bars = ra["n_bars"]
    mbs = lambda t: n_bars / t / 1e6  # noqa: E731
    shape = f"1 x {n_bars:,} minute bars, SMA {FAST}/{SLOW}"
    for name in SIZINGS:
        on, on_t = ra[f"on:{name}"], ra[f"on_trusted:{name}"]
        print(
            f"  a. risk-on {name:<20} / vbt x{ra['vbt'] / on:.2f} (validate=False "
            f"x{ra['vbt'] / on_t:.2f}; target >= 2); / risk-off x{ra['off'] / on:.2f} "
            f"(validate=False x{ra['off_trusted'] / on_t:.2f}; target >= 0.5)"
        )
        label = f"run_backtest(..., risk=policy), {name}"
        report(f"risk-on backtest vs vectorbt, {shape}, {name}", mbs(on), mbs(ra["vbt"]),
               unit="M bars/s", ours_label=label, peer_label=ra["vbt_label"], target=2.0,
               note=f"validate=False: {mbs(on_t):.3g} M bars/s")  # fmt: skip
        report(f"risk-on backtest vs our risk-off, {shape}, {name}", mbs(on), mbs(ra["off"]),
               unit="M bars/s", ours_label=label, peer_label="run_backtest(bars, targets)",
               target=0.5, note=f"validate=False: {mbs(on_t):.3g} vs {mbs(ra['off_trusted']):.3g}"
               " M bars/s")  # fmt: skip
    checks = {k: v for k, v in rb.items() if k != "on_bar p99 ms"}
    worst = max(checks, key=checks.get)
    print(
        f"  b. check p99 worst case {checks[worst]:.1f} µs (target < 50); on_bar p99 "
        f"{rb['on_bar p99 ms']:.2f} ms (target < 5)"
    )
    report(f"risk pre-trade check p99, {N_HELD} open positions", checks[worst], unit="µs",
           ours_label=f"RiskEngine.check, worst case: {worst}", target=50.0, kind="max",
           note=", ".join(f"{k} {v:.1f} µs" for k, v in checks.items()))  # fmt: skip
    report(f"risk on_bar p99, {N_HELD + 1} symbols", rb["on_bar p99 ms"], unit="ms",
           ours_label="RiskEngine.on_bar", target=5.0, kind="max")  # fmt: skip
    print(
        f"  c. rolling_correlation every=78 {rc['ours78'] * 1e3:.1f} ms (target < 100); "
        f"every=1 {rc['ours1'] * 1e3:.0f} ms"
    )
    report(f"rolling correlation, 50 symbols x {rc['n_rows']:,} 5Min rows, one matrix per session",
           rc["ours78"] * 1e3, unit="ms", ours_label="rolling_correlation(every=78)",
           target=100.0, kind="max")  # fmt: skip
    print(f"  benchmark wall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
