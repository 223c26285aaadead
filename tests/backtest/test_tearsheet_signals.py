"""Tearsheet figures and HTML file; signals_to_targets; the committed config block."""

from __future__ import annotations

from pathlib import Path

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
    res = run_backtest(daily_bars, tg)
    assert res.fills.height > 0


def test_committed_config_block_loads():
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root)
    assert isinstance(cfg.backtest, BacktestConfig)
    assert cfg.backtest.rebalance in ("on_change", "every_bar")
