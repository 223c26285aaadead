"""Risk: decisions, sizing, pre-trade limits, kill switch, end-of-day flatten, risk metrics.

One policy for every path: ``run_backtest(bars, predictions, risk=RiskPolicy.from_config(cfg,
strategy))`` runs the rules bar by bar inside the kernel, and the trading session's
:class:`RiskEngine` calls the same kernel functions once per bar.

>>> from workbench.risk import RiskPolicy, var, cvar
"""

from __future__ import annotations

from typing import Any

from workbench.risk.decision import DecisionPolicy
from workbench.risk.engine import RiskEngine
from workbench.risk.policy import RULE_NAMES, TRIP_NAMES, RiskPolicy
from workbench.risk.sizing import TradeHistory, target_fraction

__all__ = [
    "RULE_NAMES",
    "TRIP_NAMES",
    "DecisionPolicy",
    "RiskEngine",
    "RiskPolicy",
    "TradeHistory",
    "cvar",
    "target_fraction",
    "var",
]


def __getattr__(name: str) -> Any:
    if name in ("var", "cvar"):
        from workbench.risk import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'workbench.risk' has no attribute {name!r}")
