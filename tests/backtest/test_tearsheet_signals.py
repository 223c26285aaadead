"""Tearsheet figures and HTML file; signals_to_targets; the committed config block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from workbench.backtest import run_backtest, signals_to_targets
from workbench.config import BacktestConfig, load_config
from workbench.errors import SchemaError


@pytest.fixture(scope="module")
def result(daily_bars, targets_factory):
    return run_backtest(daily_bars, targets_factory(daily_bars, 8, low=-0.3, high=0.3))


def test_figures(result):
    figs = result.figures()
    assert list(figs) == ["equity", "drawdown", "monthly_returns", "trade_pnl", "rolling_sharpe"]
    assert [tr.name for tr in figs["equity"].data] == ["strategy", "buy & hold"]
    heat = figs["monthly_returns"].data[0]
    assert len(heat.x) == 12 and len(heat.y) >= 2
    assert len(figs["trade_pnl"].data[0].x) == result.stats["n_trades"]


def test_lazy_reexports_and_flat_runs(daily_bars, tmp_path: Path):
    from workbench.backtest import save_tearsheet, tearsheet_figures

    flat = run_backtest(daily_bars, daily_bars.select("symbol", "ts", target=pl.lit(0.0)))
    assert len(tearsheet_figures(flat)["rolling_sharpe"].data[0].x) == 0  # undefined, not inf
    assert save_tearsheet(flat, tmp_path / "flat.html").stat().st_size > 100_000


def test_kernels_are_cached_on_disk():
    from numba.core.caching import NullCache

    from workbench.backtest import _kernels as K

    for name in ("simulate_nb", "trades_nb", "estimates_nb"):
        assert not isinstance(getattr(K, name)._cache, NullCache), name


def test_save_tearsheet_is_self_contained(result, tmp_path: Path):
    out = result.save_tearsheet(tmp_path / "deep" / "tearsheet.html", title="SMA <test>")
    text = out.read_text()
    assert text.count("<script src=") == 0  # plotly.js inlined, opens offline
    assert text.count("Plotly.newPlot") == 5
    assert "SMA &lt;test&gt;" in text and "sharpe" in text


def test_signals_to_targets():
    scores = pl.DataFrame(
        {"symbol": ["A"] * 5, "ts": list(range(5)), "score": [0.5, -0.5, 0.0, None, float("nan")]}
    )
    t = signals_to_targets(scores, long_threshold=0.1, short_threshold=-0.1, max_position=0.2)
    assert t.columns == ["symbol", "ts", "target"]
    assert t["target"].to_list() == [0.2, -0.2, 0.0, None, None]
    flat = signals_to_targets(scores, max_position=0.2, allow_short=False)
    assert flat["target"].to_list()[:3] == [0.2, 0.0, 0.0]
    with pytest.raises(SchemaError, match="short_threshold must be <= long_threshold"):
        signals_to_targets(scores, long_threshold=-1, short_threshold=1)
    with pytest.raises(SchemaError, match="score_col"):
        signals_to_targets(scores.rename({"score": "pred"}))


def test_signals_feed_the_engine(daily_bars):
    scores = daily_bars.select(
        "symbol", "ts", score=pl.col("close").pct_change().over("symbol").fill_null(0.0)
    )
    tg = signals_to_targets(scores, long_threshold=0.0, short_threshold=0.0, max_position=0.3)
    # the targets are the rule's: +-0.3 by the score's sign, 0 on a zero score
    got = scores.join(tg, on=["symbol", "ts"])
    assert got.height == scores.height
    np.testing.assert_array_equal(got["target"], 0.3 * np.sign(got["score"].to_numpy()))
    res = run_backtest(daily_bars, tg)
    # the engine trades exactly where a symbol's target changes, at the next bar, to that target
    last_ts = daily_bars["ts"].max()
    changes = got.sort("symbol", "ts").with_columns(
        prev=pl.col("target").shift(1, fill_value=0.0).over("symbol")
    )
    want = changes.filter((pl.col("target") != pl.col("prev")) & (pl.col("ts") < last_ts))
    fills = res.fills.sort("symbol", "decision_ts")
    assert want.height > 100
    assert fills.select("symbol", "decision_ts").rows() == want.select("symbol", "ts").rows()
    nxt = daily_bars.sort("symbol", "ts").with_columns(nxt=pl.col("ts").shift(-1).over("symbol"))
    at = dict(zip(zip(nxt["symbol"], nxt["ts"], strict=True), nxt["nxt"], strict=True))
    assert [at[(s, t)] for s, t in fills.select("symbol", "decision_ts").rows()] == fills[
        "ts"
    ].to_list()
    # sized as the engine documents: target x equity at the fill bar's open (the decision bar's
    # equity re-marked from its closes to the opens), in whole shares toward zero
    equity = dict(res.equity.select("ts", "equity").rows())
    held = dict(
        zip(
            zip(res.positions["ts"], res.positions["symbol"], strict=True),
            res.positions["shares"],
            strict=True,
        )
    )
    px = {
        (s, t): (o, c) for s, t, o, c in daily_bars.select("symbol", "ts", "open", "close").rows()
    }
    syms = sorted(set(daily_bars["symbol"]))
    for sym, dec, ts, pos, ref, target in (
        fills.join(want.rename({"ts": "decision_ts"}), on=["symbol", "decision_ts"])
        .select("symbol", "decision_ts", "ts", "position", "ref_price", "target")
        .rows()
    ):
        e_open = equity[dec] + sum(
            held[(dec, s)] * (px[(s, ts)][0] - px[(s, dec)][1]) for s in syms
        )
        assert ref == px[(sym, ts)][0]
        assert pos == np.trunc(target * e_open / ref), (sym, dec, pos, target)


def test_committed_config_block_loads():
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root)
    assert isinstance(cfg.backtest, BacktestConfig)
    assert cfg.backtest.rebalance in ("on_change", "every_bar")
