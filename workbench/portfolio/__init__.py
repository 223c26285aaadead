"""Portfolio layer: allocation across assets or strategies, rebalancing, performance tracking."""

from workbench.portfolio.allocation import METHODS, RebalancePlan, allocate, rebalance_check
from workbench.portfolio.performance import performance_summary, rolling_sharpe
from workbench.portfolio.sources import strategy_returns_from_mlflow

__all__ = [
    "METHODS",
    "RebalancePlan",
    "allocate",
    "performance_summary",
    "rebalance_check",
    "rolling_sharpe",
    "strategy_returns_from_mlflow",
]
