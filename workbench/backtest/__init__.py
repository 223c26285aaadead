"""Backtest engine: numba kernels, the frame API, costs, ledger, statistics and tearsheet.

>>> from workbench.backtest import run_backtest, signals_to_targets
>>> result = run_backtest(bars, targets, config=cfg.backtest)  # doctest: +SKIP
>>> result.stats["sharpe"], result.trades, result.equity  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from workbench.backtest.costs import CostModel
from workbench.backtest.engine import run_backtest
from workbench.backtest.ledger import TRADE_COLUMNS, trades_from_fills
from workbench.backtest.result import REASONS, BacktestResult
from workbench.backtest.signals import signals_to_targets
from workbench.backtest.stats import STAT_KEYS, compute_stats, returns_stats, trade_stats

__all__ = [
    "REASONS",
    "STAT_KEYS",
    "TRADE_COLUMNS",
    "BacktestResult",
    "CostModel",
    "compute_stats",
    "returns_stats",
    "run_backtest",
    "save_tearsheet",
    "signals_to_targets",
    "tearsheet_figures",
    "trade_stats",
    "trades_from_fills",
]


def __getattr__(name: str) -> Any:
    # plotly is imported only when a tearsheet is asked for (keeps the first backtest fast)
    if name in ("tearsheet_figures", "save_tearsheet"):
        from workbench.backtest import tearsheet

        return getattr(tearsheet, name)
    raise AttributeError(f"module 'workbench.backtest' has no attribute {name!r}")
