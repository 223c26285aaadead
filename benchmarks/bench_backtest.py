"""Backtest throughput: workbench.backtest against vectorbt's Portfolio.from_signals.

Two shapes, the same SMA-crossover long-only strategy, the same data and the same costs
(0.5 bps commission, 0.5 bps half-spread as vectorbt ``fees``/``slippage``), decisions at the close
filled at the next bar's open in both engines:

- 1 symbol x 1,000,000 minute bars (390 a session): all-in / all-out (our ``fraction`` 1.0 with
  fractional shares; vectorbt's default ``size=inf``);
- 500 symbols x 2,000 daily bars with one shared cash account: a fixed $150 notional per symbol
  (our ``sizing='notional'``; vectorbt ``size_type='value'`` with ``cash_sharing=True``).

Reported per shape: seconds (best of ``--repeat`` runs, the engines interleaved) and bars/s (symbols x bars / s) for

- ``wb run_backtest`` — the full frame API: validate_bars, target alignment, grid, costs, kernel;
- ``wb run_backtest (validate=False)`` — bars already validated (e.g. read from the store);
- ``wb kernel`` — the numba simulation alone on prepared arrays;
- ``vbt from_signals`` — Portfolio.from_signals(...).final_value() on prepared pandas frames;
- ``wb ... + trades + stats`` — the same plus our trade ledger and statistics (absolute time;
  vectorbt's ``pf.stats()`` is left out: its first call compiles for tens of seconds).

Then the agreement of the two engines' final equity on both shapes, and the first-call time of
``run_backtest`` in a fresh subprocess with a warm numba cache (import and first call separately).

Run: ``.venv/bin/python benchmarks/bench_backtest.py [--repeat 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from workbench.backtest import _kernels as K
from workbench.backtest import run_backtest
from workbench.backtest.costs import CostModel
from workbench.config import BacktestConfig, CostsConfig

BPS = 0.5
COSTS = CostsConfig(commission_bps=BPS, half_spread_bps=BPS)


def sessions(n_days: int, first: datetime) -> np.ndarray:
    out, d = [], first
    while len(out) < n_days:
        if d.weekday() < 5:
            out.append(int(d.timestamp() * 1_000_000))
        d += timedelta(days=1)
    return np.asarray(out, dtype=np.int64)


def make_bars(n_symbols: int, n_bars: int, *, minute: bool, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    if minute:
        days = sessions(n_bars // 390 + 1, datetime(2015, 1, 2, 14, 30, tzinfo=UTC))
        ts = (days[:, None] + np.arange(390)[None, :] * 60_000_000).ravel()[:n_bars]
        vol = 0.0008
    else:
        ts = sessions(n_bars, datetime(2015, 1, 2, 5, tzinfo=UTC))
        vol = 0.015
    r = rng.normal(0, vol, (n_symbols, n_bars))
    close = 100 * np.exp(np.cumsum(r, axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1) * np.exp(
        rng.normal(0, vol / 4, (n_symbols, n_bars))
    )
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, vol / 2, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, vol / 2, close.shape)))
    syms = [f"S{i:03d}" for i in range(n_symbols)]
    return pl.DataFrame(
        {
            "symbol": pl.Series(np.repeat(syms, n_bars)),
            "ts": pl.Series(np.tile(ts, n_symbols)).cast(pl.Datetime("us", "UTC")),
            "open": open_.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": np.full(n_symbols * n_bars, 10_000.0),
            "vwap": ((high + low + close) / 3).ravel(),
            "trade_count": np.full(n_symbols * n_bars, 100, dtype=np.int64),
        }
    )


def sma_state(close: np.ndarray, fast: int, slow: int) -> np.ndarray:
    """``[T x N]`` bool: fast SMA above slow SMA (False until the slow SMA exists)."""
    c = np.vstack([np.zeros((1, close.shape[1])), np.cumsum(close, axis=0)])
    f = np.full(close.shape, np.nan)
    s = np.full(close.shape, np.nan)
    f[fast - 1 :] = (c[fast:] - c[:-fast]) / fast
    s[slow - 1 :] = (c[slow:] - c[:-slow]) / slow
    return np.nan_to_num(f) > np.nan_to_num(s, nan=np.inf)


def interleaved(
    fns: dict[str, Callable[[], object]], repeat: int
) -> dict[str, tuple[float, object]]:
    """Best time and last output of each function, runs interleaved (fair on a shared machine)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, object] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {k: (min(v), outs[k]) for k, v in times.items()}


def wide(bars: pl.DataFrame, col: str, n_symbols: int) -> np.ndarray:
    return np.ascontiguousarray(bars[col].to_numpy().reshape(n_symbols, -1).T)


def run_shape(name: str, bars: pl.DataFrame, n_symbols: int, fast: int, slow: int, repeat: int):
    import pandas as pd
    import vectorbt as vbt

    n_bars = bars.height // n_symbols
    close = wide(bars, "close", n_symbols)
    open_ = wide(bars, "open", n_symbols)
    state = sma_state(close, fast, slow)
    if n_symbols == 1:
        target = state.astype(float)
        cfg = BacktestConfig(sizing="fraction", fractional=True, costs=COSTS)
        vbt_kw: dict = {}
    else:
        target = state * 150.0
        cfg = BacktestConfig(sizing="notional", fractional=True, costs=COSTS)
        vbt_kw = {"size": 150.0, "size_type": "value", "cash_sharing": True, "group_by": True}
    targets = bars.select("symbol", "ts").with_columns(target=pl.Series(target.T.ravel()))

    # vectorbt: entries/exits on the decision bar, shifted one bar so they fill at the next open
    prev = np.vstack([np.zeros((1, n_symbols), bool), state[:-1]])
    entries = state & ~prev
    exits = ~state & prev
    idx = pd.DatetimeIndex(bars["ts"][:n_bars].dt.replace_time_zone(None).to_numpy())
    df = lambda a: pd.DataFrame(a, index=idx)  # noqa: E731
    shift = lambda a: np.vstack([np.zeros((1, n_symbols), bool), a[:-1]])  # noqa: E731
    v_close, v_open = df(close), df(open_)
    v_ent, v_ex = df(shift(entries)), df(shift(exits))

    def vbt_run():
        pf = vbt.Portfolio.from_signals(
            v_close,
            v_ent,
            v_ex,
            price=v_open,
            fees=BPS * 1e-4,
            slippage=BPS * 1e-4,
            init_cash=100_000.0,
            freq="1D" if n_symbols > 1 else "1min",
            **vbt_kw,
        )
        return pf

    def wb_run(validate=True):
        return run_backtest(bars, targets, config=cfg, validate=validate)

    arrays = dict(
        ref=open_,
        close=close,
        target=np.ascontiguousarray(target.astype(float)),
    )
    ca = CostModel.from_config(COSTS).prepare(
        np.empty((0, n_symbols)), np.empty((0, n_symbols)), close, np.empty((0, n_symbols)),
        bars["ts"][:n_bars].dt.epoch("us").to_numpy(), intraday=n_symbols == 1,
    )  # fmt: skip
    params = np.zeros(K.N_PARAMS)
    params[[K.P_CASH, K.P_SIZING, K.P_FRACTIONAL, K.P_ALLOW_SHORT, K.P_LEVERAGE, K.P_BPS]] = [
        100_000.0, K.SIZING_CODES[cfg.sizing], 1.0, 1.0, 1.0, BPS,
    ]  # fmt: skip
    params[K.P_CLIP_TOL] = 0.01
    ones = np.ones(n_symbols, dtype=np.bool_)

    kernel_args = K.frozen(
        arrays["ref"], arrays["close"], arrays["target"], ca.half_spread, ca.sigma,
        ca.volume, ca.slip_row, ca.borrow_row, ones, ones, ones, params,
    )  # fmt: skip

    def kernel():
        return K.simulate_nb(*kernel_args)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbt_run().final_value()  # compile / warm
        wb_run().stats  # noqa: B018
        r = interleaved(
            {
                "vbt": lambda: vbt_run().final_value(),
                "wb": wb_run,
                "wb_trusted": lambda: wb_run(False),
                "kernel": kernel,
                "wb_stats": lambda: wb_run().stats,
            },
            repeat,
        )
    (t_vbt, pf), (t_wb, res) = r["vbt"], r["wb"]
    t_wb_trusted, t_kernel, t_wb_stats = (r[k][0] for k in ("wb_trusted", "kernel", "wb_stats"))

    cells = n_symbols * n_bars
    print(
        f"\n== {name}: {n_symbols} symbol(s) x {n_bars:,} bars = {cells:,} bars; SMA {fast}/{slow}"
    )
    rows = [
        ("vbt from_signals + final_value", t_vbt),
        ("wb run_backtest", t_wb),
        ("wb run_backtest (validate=False)", t_wb_trusted),
        ("wb kernel only", t_kernel),
    ]
    for label, t in rows:
        print(
            f"  {label:<36} {t * 1e3:9.1f} ms  {cells / t / 1e6:8.2f} M bars/s  "
            f"x{t_vbt / t:5.2f} vs vbt"
        )
    label = "wb run_backtest + trades + stats"
    print(f"  {label:<36} {t_wb_stats * 1e3:9.1f} ms  {cells / t_wb_stats / 1e6:8.2f} M bars/s")
    wb_final = res.equity["equity"][-1]
    vbt_final = float(np.asarray(pf).ravel()[0]) if np.ndim(pf) else float(pf)
    rel = abs(wb_final - vbt_final) / abs(vbt_final)
    print(
        f"  agreement: final equity wb {wb_final:,.6f} vs vbt {vbt_final:,.6f} "
        f"(relative difference {rel:.2e}; fills wb {res.fills.height:,})"
    )
    return {"vbt": t_vbt, "wb": t_wb, "wb_trusted": t_wb_trusted, "kernel": t_kernel, "rel": rel}


FIRST_CALL = textwrap.dedent(
    """
    import time
    t0 = time.perf_counter()
    import numpy as np, polars as pl
    from workbench.backtest import run_backtest
    from workbench.config import BacktestConfig, CostsConfig
    t1 = time.perf_counter()
    n = 2000
    ts = pl.datetime_range(pl.datetime(2024, 1, 2, 14, 30, time_zone="UTC"),
                           pl.datetime(2024, 1, 2, 14, 30, time_zone="UTC") + pl.duration(minutes=n - 1),
                           "1m", eager=True)
    c = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 1e-3, n)))
    bars = pl.DataFrame({"symbol": ["A"] * n, "ts": ts, "open": c, "high": c * 1.001, "low": c * 0.999,
                         "close": c, "volume": np.full(n, 1e4)})
    tg = bars.select("symbol", "ts", target=(pl.col("close") > pl.col("close").rolling_mean(20)).cast(pl.Float64))
    cfg = BacktestConfig(costs=CostsConfig(commission_per_share=0.005, commission_min=1.0, spread_from_bars=True,
                                           slippage_bps=1.0, impact_coef=0.1, intraday_u_shape=1.0,
                                           borrow_bps_annual=30.0))
    t2 = time.perf_counter()
    res = run_backtest(bars, tg, config=cfg)
    t3 = time.perf_counter()
    res.stats
    t4 = time.perf_counter()
    print(f"{t1 - t0:.3f} {t3 - t2:.3f} {t4 - t3:.3f}")
    """
)


def first_call() -> None:
    subprocess.run([sys.executable, "-c", FIRST_CALL], check=True, capture_output=True)  # warm
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALL], check=True, capture_output=True, text=True
    ).stdout.split()
    imp, call, stats = (float(x) for x in out)
    print(
        "\n== first call in a fresh process (warm numba cache): "
        f"import {imp:.3f} s, run_backtest {call:.3f} s, trades+stats {stats:.3f} s "
        f"(first call total {call + stats:.3f} s; with imports {imp + call + stats:.3f} s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1/10 of the bars (smoke run)")
    a = ap.parse_args()
    div = 10 if a.quick else 1
    t0 = time.perf_counter()
    minute = make_bars(1, 1_000_000 // div, minute=True, seed=1)
    r1 = run_shape("minute", minute, 1, 50, 200, a.repeat)
    daily = make_bars(500 // div, 2_000, minute=False, seed=2)
    r2 = run_shape("daily", daily, 500 // div, 10, 50, a.repeat)
    first_call()
    print("\n== summary (throughput ratio wb / vbt, higher is better)")
    for name, r in (("1 x 1,000,000 minute", r1), ("500 x 2,000 daily", r2)):
        print(
            f"  {name:<22} run_backtest x{r['vbt'] / r['wb']:.2f}, validate=False "
            f"x{r['vbt'] / r['wb_trusted']:.2f}, kernel x{r['vbt'] / r['kernel']:.2f}; "
            f"final equity rel. diff {r['rel']:.1e}"
        )
    print(f"  benchmark wall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
