"""Backtest throughput: workbench.backtest against vectorbt at its fastest, on numpy inputs.

Two shapes, the same SMA-crossover long-only strategy, the same data and the same costs
(0.5 bps commission, 0.5 bps half-spread as vectorbt ``fees``/``slippage``), decisions at the close
filled at the next bar's open in both engines:

- 1 symbol x 1,000,000 minute bars (390 a session): all-in / all-out (our ``fraction`` 1.0 with
  fractional shares; vectorbt's default ``size=inf``, or ``targetpercent`` 1/0 for from_orders);
- 500 symbols x 2,000 daily bars with one shared cash account: a fixed $150 notional per symbol
  (our ``sizing='notional'``; vectorbt ``size_type='value'`` / ``'targetvalue'`` with
  ``cash_sharing=True``).

The peer is vectorbt's fastest configuration measured here: ``Portfolio.from_signals`` and
``Portfolio.from_orders`` on plain numpy arrays (no pandas index: a tz-aware index slows it about
40x), numba engine (the rust engine is used when ``vectorbt-rust`` is installed), each
``.final_value()``; the faster of the two is the peer. Timed, interleaved, best of ``--repeat``:

- ``wb run_backtest`` — the default call on bars as ``BarStore.read`` returns them (validated and
  marked; each round gets a fresh marked copy, so nothing derived from the frame is reused);
- ``wb run_backtest, in-memory bars`` — the default call on a frame built in memory (checked in
  full by the fused contract check);
- ``wb run_backtest (validate=False)`` — the caller vouches for the bars;
- ``wb kernel`` — the numba simulation alone on prepared arrays, against a fused loop (the same
  all-in/all-out strategy and costs in one compiled loop that keeps only the equity: the floor of
  what a simulation that records positions, fills and denials can cost);
- the validation share of the default call: the bar check (the store mark's fingerprint, or the
  fused contract check for in-memory bars) plus the whole target check and alignment, timed on
  their own, over the call's time (target <= 20%);
- ``wb ... + trades + stats`` — the same plus our trade ledger and statistics (absolute time).

Then the agreement of the engines' final equity, and the first-call time of ``run_backtest`` in a
fresh subprocess with a warm numba cache. Each row goes to ``benchmarks/RESULTS.md`` through
``_report.report`` when ``run_all.py`` runs this file.

Run: ``.venv/bin/python benchmarks/bench_backtest.py [--repeat 7] [--quick]``.
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
from _report import load_text, report
from numba import njit

from workbench.backtest import _kernels as K
from workbench.backtest import engine as BE
from workbench.backtest import run_backtest
from workbench.backtest.costs import CostModel
from workbench.config import BacktestConfig, CostsConfig
from workbench.data.validated import mark_validated, validated_facts

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
    fns: dict[str, Callable[[], object] | tuple[Callable[[], object], Callable[[object], object]]],
    repeat: int,
) -> dict[str, tuple[float, object]]:
    """Best time and last output of each function, runs interleaved (fair on a shared machine).

    A ``(setup, fn)`` pair times ``fn(setup())`` only (e.g. a fresh input each round).
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, object] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            if isinstance(fn, tuple):
                arg = fn[0]()
                t = time.perf_counter()
                outs[name] = fn[1](arg)
            else:
                t = time.perf_counter()
                outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {k: (min(v), outs[k]) for k, v in times.items()}


def wide(bars: pl.DataFrame, col: str, n_symbols: int) -> np.ndarray:
    return np.ascontiguousarray(bars[col].to_numpy().reshape(n_symbols, -1).T)


@njit(cache=True, nogil=True)
def fused_all_in_nb(open_, close, state, cash0, fee, slip):
    """All-in / all-out on one symbol in one compiled loop: the decision at a bar's close fills
    at the next bar's open (vectorbt's ``size=inf`` arithmetic); returns the equity per bar."""
    n = len(close)
    equity = np.empty(n)
    cash = cash0
    q = 0.0
    pending = -1  # 1 buy, 0 sell
    prev = False
    for t in range(n):
        if pending == 1 and q == 0.0:
            px = open_[t] * (1.0 + slip)
            q = cash / (px * (1.0 + fee))
            cash = 0.0
        elif pending == 0 and q > 0.0:
            px = open_[t] * (1.0 - slip)
            cash += q * px * (1.0 - fee)
            q = 0.0
        pending = -1
        equity[t] = cash + q * close[t]
        s = state[t]
        if s != prev:
            pending = 1 if s else 0
            prev = s
    return equity


def vbt_peers(close, open_, state, n_symbols):
    """vectorbt's candidate configurations on numpy inputs, name -> callable (final value)."""
    import vectorbt as vbt

    prev = np.vstack([np.zeros((1, n_symbols), bool), state[:-1]])
    shift = lambda a: np.vstack([np.zeros((1, n_symbols), bool), a[:-1]])  # noqa: E731
    ent, ex = shift(state & ~prev), shift(~state & prev)  # fill at the next bar's open
    kw = dict(price=open_, fees=BPS * 1e-4, slippage=BPS * 1e-4, init_cash=100_000.0)
    if n_symbols == 1:
        sig_kw: dict = {}
        size = np.where(ent, 1.0, np.where(ex, 0.0, np.nan))
        ord_kw = {"size": size, "size_type": "targetpercent"}
    else:
        kw.update(cash_sharing=True, group_by=True)
        sig_kw = {"size": 150.0, "size_type": "value"}
        size = np.where(ent, 150.0, np.where(ex, 0.0, np.nan))
        ord_kw = {"size": size, "size_type": "targetvalue"}

    def final(pf) -> float:
        return float(np.asarray(pf.final_value()).ravel()[0])

    return {
        "vbt from_signals (numpy)": lambda: final(
            vbt.Portfolio.from_signals(close, ent, ex, **sig_kw, **kw)
        ),
        "vbt from_orders (numpy)": lambda: final(vbt.Portfolio.from_orders(close, **ord_kw, **kw)),
    }


def vbt_engine_note() -> str:
    import vectorbt as vbt

    try:
        from vectorbt._engine import is_rust_available

        rust = is_rust_available()
    except ImportError:
        rust = False
    return f"vectorbt {vbt.__version__}, " + (
        "rust engine available (used)" if rust else "numba engine (vectorbt-rust not installed)"
    )


def run_shape(name: str, bars: pl.DataFrame, n_symbols: int, fast: int, slow: int, repeat: int):
    n_bars = bars.height // n_symbols
    cells = n_symbols * n_bars
    shape = f"{n_symbols} x {n_bars:,} {'minute' if n_symbols == 1 else 'daily'} bars"
    close = wide(bars, "close", n_symbols)
    open_ = wide(bars, "open", n_symbols)
    state = sma_state(close, fast, slow)
    if n_symbols == 1:
        target = state.astype(float)
        cfg = BacktestConfig(sizing="fraction", fractional=True, costs=COSTS)
    else:
        target = state * 150.0
        cfg = BacktestConfig(sizing="notional", fractional=True, costs=COSTS)
    targets = bars.select("symbol", "ts").with_columns(target=pl.Series(target.T.ravel()))

    def store_read_copy() -> pl.DataFrame:
        b = bars.clone()  # a new frame object over the same memory, as BarStore.read returns
        mark_validated(b)  # what BarStore.read does after validating
        return b

    def wb_run(b: pl.DataFrame, validate: bool = True):
        return run_backtest(b, targets, config=cfg, validate=validate)

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
        open_, close, np.ascontiguousarray(target.astype(float)), ca.half_spread, ca.sigma,
        ca.volume, ca.slip_row, ca.borrow_row, ones, ones, ones, params,
    )  # fmt: skip
    fused_args = (open_[:, 0].copy(), close[:, 0].copy(), state[:, 0].copy(), 100_000.0)
    fused_args += (BPS * 1e-4, BPS * 1e-4)

    def validation_marked(b: pl.DataFrame):
        validated_facts(b)
        return BE._align_targets(b, targets)

    def validation_plain(b: pl.DataFrame):
        BE._conformed_runs(b)
        return BE._align_targets(b, targets)

    peers = vbt_peers(close, open_, state, n_symbols)
    fns: dict = {k: v for k, v in peers.items()}
    fns |= {
        "wb": (store_read_copy, wb_run),
        "wb_plain": (bars.clone, wb_run),
        "wb_trusted": (store_read_copy, lambda b: wb_run(b, False)),
        "kernel": lambda: K.simulate_nb(*kernel_args),
        "val_marked": (store_read_copy, validation_marked),
        "val_plain": (bars.clone, validation_plain),
        "wb_stats": (store_read_copy, lambda b: wb_run(b).stats),
    }
    if n_symbols == 1:
        fns["fused"] = lambda: fused_all_in_nb(*fused_args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in fns.values():  # compile / warm
            f[1](f[0]()) if isinstance(f, tuple) else f()
        r = interleaved(fns, repeat)
    t = {k: v[0] for k, v in r.items()}
    peer = min(peers, key=lambda k: t[k])
    t_vbt = t[peer]
    print(f"\n== {name}: {shape} = {cells:,} bars; SMA {fast}/{slow}; {vbt_engine_note()}")
    labels = [
        *((k, k) for k in peers),
        ("wb", "wb run_backtest (store-read bars)"),
        ("wb_plain", "wb run_backtest (in-memory bars)"),
        ("wb_trusted", "wb run_backtest (validate=False)"),
        ("kernel", "wb kernel only"),
        *((("fused", "fused compiled loop (equity only)"),) if "fused" in t else ()),
        ("val_marked", "validation (store-read bars)"),
        ("val_plain", "validation (in-memory bars)"),
    ]
    for key, label in labels:
        print(
            f"  {label:<36} {t[key] * 1e3:9.1f} ms  {cells / t[key] / 1e6:8.2f} M bars/s  "
            f"x{t_vbt / t[key]:5.2f} vs {peer}"
        )
    label = "wb run_backtest + trades + stats"
    print(
        f"  {label:<36} {t['wb_stats'] * 1e3:9.1f} ms  {cells / t['wb_stats'] / 1e6:8.2f} M bars/s"
    )
    res = r["wb"][1]
    wb_final = res.equity["equity"][-1]
    finals = {k: r[k][1] for k in peers}
    rel = max(abs(wb_final - v) / abs(v) for v in finals.values())
    print(
        f"  agreement: final equity wb {wb_final:,.6f} vs "
        + ", ".join(f"{k} {v:,.6f}" for k, v in finals.items())
        + f" (largest relative difference {rel:.2e}; fills wb {res.fills.height:,})"
    )
    mbs = lambda key: cells / t[key] / 1e6  # noqa: E731
    note = f"peer: {peer}, {vbt_engine_note()}; final equity agrees to {rel:.1e}"
    report(f"backtest default call, {shape}", mbs("wb"), mbs(peer), unit="M bars/s",
           ours_label="run_backtest, store-read bars", peer_label=peer, target=2.0,
           note=note)  # fmt: skip
    report(f"backtest default call, {shape}, in-memory bars", mbs("wb_plain"), mbs(peer),
           unit="M bars/s", ours_label="run_backtest, full contract check", peer_label=peer,
           target=2.0)  # fmt: skip
    for key, kind in (("val_marked", "store-read bars"), ("val_plain", "in-memory bars")):
        call = "wb" if key == "val_marked" else "wb_plain"
        report(f"backtest validation share of the default call, {shape}, {kind}",
               100 * t[key] / t[call], None, unit="% of the call", ours_label="bars + targets check",
               target=20.0, kind="max")  # fmt: skip
    report(f"backtest validate=False on validated bars, {shape}", mbs("wb_trusted"), mbs(peer),
           unit="M bars/s", ours_label="run_backtest(validate=False)", peer_label=peer)  # fmt: skip
    if "fused" in t:
        eq = r["fused"][1][-1]
        report(f"backtest kernel alone, {shape}", mbs("kernel"), mbs("fused"), unit="M bars/s",
               ours_label="simulate_nb", peer_label="fused compiled loop (equity only)",
               note=f"fused loop final equity {eq:,.6f} vs kernel "
                    f"{r['kernel'][1][0][-1]:,.6f}")  # fmt: skip
    else:
        report(f"backtest kernel alone, {shape}", mbs("kernel"), mbs(peer), unit="M bars/s",
               ours_label="simulate_nb", peer_label=peer)  # fmt: skip
    return {"vbt": t_vbt, "peer": peer, "rel": rel, **t}


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
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1/10 of the bars (smoke run)")
    a = ap.parse_args()
    div = 10 if a.quick else 1
    t0 = time.perf_counter()
    print(f"load before: {load_text()}")
    minute = make_bars(1, 1_000_000 // div, minute=True, seed=1)
    r1 = run_shape("minute", minute, 1, 50, 200, a.repeat)
    daily = make_bars(500 // div, 2_000, minute=False, seed=2)
    r2 = run_shape("daily", daily, 500 // div, 10, 50, a.repeat)
    first_call()
    print("\n== summary (throughput ratio wb / vectorbt's fastest, higher is better)")
    for name, r in (("1 x 1,000,000 minute", r1), ("500 x 2,000 daily", r2)):
        print(
            f"  {name:<22} run_backtest x{r['vbt'] / r['wb']:.2f} (in-memory bars "
            f"x{r['vbt'] / r['wb_plain']:.2f}), validate=False x{r['vbt'] / r['wb_trusted']:.2f}, "
            f"kernel x{r['vbt'] / r['kernel']:.2f}; validation {100 * r['val_marked'] / r['wb']:.0f}% "
            f"of the call ({100 * r['val_plain'] / r['wb_plain']:.0f}% in memory); "
            f"final equity rel. diff {r['rel']:.1e} (peer {r['peer']})"
        )
    print(f"  benchmark wall time {time.perf_counter() - t0:.1f} s; load after: {load_text()}")


if __name__ == "__main__":
    main()
