"""Volatility indicators: ATR, Bollinger bands, rolling z-score and realized volatility."""

from __future__ import annotations

import numpy as np
import polars as pl

from workbench.features import _kernels
from workbench.features._expr import (
    check_float,
    check_int,
    check_str,
    kernel,
    kernel_struct,
    settle,
)
from workbench.features.registry import register_feature


@register_feature(warmup=lambda p, tf: p["window"] + settle(1.0 - 1.0 / p["window"]))
def atr(
    *,
    high: str = "high",
    low: str = "low",
    close: str = "close",
    window: int = 14,
    relative: bool = False,
    by: str = "symbol",
) -> pl.Expr:
    """Return the average true range with Wilder smoothing (TA-Lib's ATR).

    ``TR_t = max(h_t, c_{t-1}) - min(l_t, c_{t-1})`` (undefined on a symbol's first row);
    ``ATR = mean(TR_1..TR_window)`` at row ``window``, then
    ``ATR_t = (ATR_{t-1} (window - 1) + TR_t) / window``. With ``relative=True`` the result is
    divided by ``close_t`` (a fraction of price, comparable across symbols). Warm-up: ``window``
    plus the bars until the seed's weight ``(1 - 1/window)^k`` is below 1e-12. Matches
    ``talib.ATR``.

    Parameters
    ----------
    high, low, close : str
        Input columns.
    window : int
        Wilder period (>= 1).
    relative : bool
        Divide by the close.
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``atr``.
    """
    for name, col in (("high", high), ("low", low), ("close", close)):
        check_str("atr", name, col)
    window = check_int("atr", "window", window, 1)
    out = kernel(
        _kernels.atr, [pl.col(high), pl.col(low), pl.col(close)], window, by=by, name="atr"
    )
    return (out / pl.col(close)).alias("atr") if relative else out


def _bbands(gid, x, n, k):
    mean, std = _kernels.rolling_moments(gid, x, n, 0)
    upper = mean + k * std
    lower = mean - k * std
    width = upper - lower
    pct_b = np.full(x.shape[0], np.nan)
    np.divide(x - lower, width, out=pct_b, where=width > 0)
    return lower, mean, upper, pct_b


@register_feature(
    warmup=lambda p, tf: p["window"] - 1, fields=("lower", "middle", "upper", "pct_b")
)
def bollinger(
    *, column: str = "close", window: int = 20, k: float = 2.0, by: str = "symbol"
) -> pl.Expr:
    """Return the Bollinger bands and %b (TA-Lib's BBANDS with an SMA middle band).

    ``middle = SMA_window``, ``upper/lower = middle ± k σ`` with the population standard
    deviation over the window, ``pct_b = (x - lower) / (upper - lower)`` (null when the bands
    collapse). Warm-up: ``window - 1`` bars (exact). Matches ``talib.BBANDS(matype=0)``.

    Parameters
    ----------
    column : str
        Input column.
    window : int
        Bars (>= 2).
    k : float
        Band width in standard deviations (> 0).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Struct expression named ``bollinger`` with fields ``lower``, ``middle``, ``upper``,
        ``pct_b``.
    """
    check_str("bollinger", "column", column)
    window = check_int("bollinger", "window", window, 2)
    k = check_float("bollinger", "k", k)
    return kernel_struct(
        _bbands,
        [pl.col(column)],
        window,
        k,
        fields=("lower", "middle", "upper", "pct_b"),
        by=by,
        name="bollinger",
    )


@register_feature(warmup=lambda p, tf: p["window"] - 1)
def zscore(*, column: str = "close", window: int = 20, by: str = "symbol") -> pl.Expr:
    """Return the rolling z-score.

    ``(x_t - mean_window) / std_window`` with the population standard deviation over the last
    ``window`` rows including ``t``; null when the window is flat. Warm-up: ``window - 1`` bars
    (exact). Equals ``(x - talib.SMA) / talib.STDDEV``.

    Parameters
    ----------
    column : str
        Input column.
    window : int
        Bars (>= 2).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``zscore``.
    """
    check_str("zscore", "column", column)
    window = check_int("zscore", "window", window, 2)
    return kernel(_kernels.rolling_zscore, [pl.col(column)], window, 0, by=by, name="zscore")


@register_feature(warmup=lambda p, tf: p["window"])
def realized_vol(*, column: str = "close", window: int = 20, by: str = "symbol") -> pl.Expr:
    """Return the realized volatility over a window of log returns.

    ``sqrt(sum_{k=t-window+1..t} ln(x_k / x_{k-1})^2)`` (not annualised, not de-meaned).
    Warm-up: ``window`` bars (exact).

    Parameters
    ----------
    column : str
        Price column.
    window : int
        Bars (>= 1).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``realized_vol``.
    """
    check_str("realized_vol", "column", column)
    window = check_int("realized_vol", "window", window, 1)
    x = pl.col(column).cast(pl.Float64)
    r2 = (x / x.shift(1)).log().pow(2)
    return r2.rolling_sum(window_size=window).sqrt().over(by).alias("realized_vol")
