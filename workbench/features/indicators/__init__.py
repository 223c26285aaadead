"""Indicator library, split by family. Importing this package registers every indicator."""

from workbench.features.indicators.calendar import day_of_week, time_of_day
from workbench.features.indicators.cross_section import cs_rank, cs_zscore
from workbench.features.indicators.microstructure import spread
from workbench.features.indicators.momentum import returns, rsi
from workbench.features.indicators.trend import adx, ema, ema_slope, macd, sma, trend_strength
from workbench.features.indicators.volatility import atr, bollinger, realized_vol, zscore
from workbench.features.indicators.volume import (
    order_flow_imbalance,
    volume_zscore,
    vwap,
    vwap_zscore,
)

__all__ = [
    "adx",
    "atr",
    "bollinger",
    "cs_rank",
    "cs_zscore",
    "day_of_week",
    "ema",
    "ema_slope",
    "macd",
    "order_flow_imbalance",
    "realized_vol",
    "returns",
    "rsi",
    "sma",
    "spread",
    "time_of_day",
    "trend_strength",
    "volume_zscore",
    "vwap",
    "vwap_zscore",
    "zscore",
]
