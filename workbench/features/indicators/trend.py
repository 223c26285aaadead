"""Trend indicators: SMA, EMA, MACD, EMA slope, ADX and trend strength.

Every function returns a polars expression evaluated per symbol on a frame sorted by
``(symbol, ts)`` (the bar contract's order); the value at row ``ts`` uses only rows at or before
``ts``. Recursive smoothers are seeded as TA-Lib seeds them (first value = SMA of the first
``window`` inputs), so values match TA-Lib to rounding.
"""

from __future__ import annotations

import polars as pl

from workbench.errors import ConfigError
from workbench.features import _kernels
from workbench.features._expr import (
    check_int,
    check_str,
    kernel,
    kernel_struct,
    lag_within,
    settle,
)
from workbench.features.registry import register_feature


def _ema_settle(window: int) -> int:
    return settle(1.0 - 2.0 / (window + 1))


@register_feature(warmup=lambda p, tf: p["window"] - 1)
def sma(*, column: str = "close", window: int = 20, by: str = "symbol") -> pl.Expr:
    """Return the simple moving average.

    ``sma_t = mean(x_{t-window+1}, ..., x_t)``. Warm-up: ``window - 1`` bars (first value at the
    ``window``-th row; exact thereafter). Matches ``talib.SMA``.

    Parameters
    ----------
    column : str
        Input column.
    window : int
        Window length in bars (>= 1).
    by : str
        Symbol column; rows of one symbol must be contiguous and sorted by time.

    Returns
    -------
    pl.Expr
        Float64 expression named ``sma``.
    """
    check_str("sma", "column", column)
    window = check_int("sma", "window", window, 1)
    return kernel(_kernels.rolling_mean, [pl.col(column)], window, by=by, name="sma")


@register_feature(warmup=lambda p, tf: p["window"] - 1 + _ema_settle(p["window"]))
def ema(*, column: str = "close", window: int = 20, by: str = "symbol") -> pl.Expr:
    """Return the exponential moving average seeded with an SMA (TA-Lib's EMA).

    ``alpha = 2 / (window + 1)``; ``ema_{w-1} = mean(x_0..x_{w-1})``;
    ``ema_t = ema_{t-1} + alpha * (x_t - ema_{t-1})``. First value at row ``window - 1``.
    Warm-up: ``window - 1`` bars plus the ``k`` bars after which the seed's weight
    ``(1 - alpha)^k`` is below 1e-12.
    Matches ``talib.EMA``.

    Parameters
    ----------
    column : str
        Input column.
    window : int
        Span in bars (>= 1).
    by : str
        Symbol column (contiguous, time-sorted rows per symbol).

    Returns
    -------
    pl.Expr
        Float64 expression named ``ema``.
    """
    check_str("ema", "column", column)
    window = check_int("ema", "window", window, 1)
    return kernel(_kernels.ema, [pl.col(column)], window, 2.0 / (window + 1), 0, by=by, name="ema")


def _macd_warmup(p, tf) -> int:
    slow, sig = p["slow"], p["signal"]
    fast_r = 1.0 - 2.0 / (p["fast"] + 1)
    slow_r = 1.0 - 2.0 / (slow + 1)
    return slow - 1 + sig - 1 + settle(max(fast_r, slow_r), 1.0 - 2.0 / (sig + 1))


@register_feature(warmup=_macd_warmup, fields=("macd", "signal", "hist"))
def macd(
    *,
    column: str = "close",
    fast: int = 12,
    slow: int = 26,
    signal: int = 9,
    by: str = "symbol",
) -> pl.Expr:
    """Return the moving average convergence/divergence (TA-Lib's MACD).

    ``macd = EMA_fast - EMA_slow`` where the fast EMA is seeded on the ``fast`` rows ending where
    the slow EMA's seed ends (TA-Lib's convention), ``signal = EMA_signal(macd)`` seeded with the
    mean of the first ``signal`` MACD values, ``hist = macd - signal``. ``macd`` starts at row
    ``slow - 1``, ``signal`` and ``hist`` at ``slow + signal - 2``. Warm-up: ``slow + signal - 2``
    plus the settling of the slow and signal smoothers to 1e-12.

    Parameters
    ----------
    column : str
        Input column.
    fast, slow, signal : int
        EMA spans; ``1 <= fast < slow``, ``signal >= 1``.
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Struct expression named ``macd`` with Float64 fields ``macd``, ``signal``, ``hist``.
    """
    check_str("macd", "column", column)
    fast = check_int("macd", "fast", fast, 1)
    slow = check_int("macd", "slow", slow, 2)
    signal = check_int("macd", "signal", signal, 1)
    if fast >= slow:
        raise ConfigError(
            f"The 'fast' parameter of macd must be smaller than 'slow' ({slow}). Got {fast} instead."
        )
    return kernel_struct(
        _kernels.macd,
        [pl.col(column)],
        fast,
        slow,
        signal,
        fields=("macd", "signal", "hist"),
        by=by,
        name="macd",
    )


@register_feature(warmup=lambda p, tf: p["window"] - 1 + _ema_settle(p["window"]) + p["lag"])
def ema_slope(
    *, column: str = "close", window: int = 20, lag: int = 5, by: str = "symbol"
) -> pl.Expr:
    """Return the slope of the EMA as a fractional change per bar.

    ``ema_slope_t = (ema_t / ema_{t-lag} - 1) / lag``. Warm-up: the EMA's warm-up plus ``lag``.

    Parameters
    ----------
    column : str
        Input column.
    window : int
        EMA span (>= 1).
    lag : int
        Bars between the two EMA values (>= 1).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``ema_slope``.
    """
    lag = check_int("ema_slope", "lag", lag, 1)
    e = ema(column=column, window=window, by=by)
    return ((e / lag_within(e, lag, by) - 1.0) / lag).alias("ema_slope")


@register_feature(
    warmup=lambda p, tf: 2 * p["window"] - 1 + settle(*(1.0 - 1.0 / p["window"],) * 2)
)
def adx(
    *,
    high: str = "high",
    low: str = "low",
    close: str = "close",
    window: int = 14,
    by: str = "symbol",
) -> pl.Expr:
    """Return the average directional index (Wilder), as TA-Lib computes it.

    ``+DM``/``-DM`` and the true range are Wilder-smoothed (running sums seeded with the first
    ``window - 1`` values, then ``S_t = S_{t-1} - S_{t-1}/window + x_t``);
    ``DX = 100 |+DI - -DI| / (+DI + -DI)`` with ``±DI = 100 ±DM/TR``; ``ADX`` is the mean of the
    first ``window`` DX values, then ``ADX_t = (ADX_{t-1} (window-1) + DX_t) / window``. First
    value at row ``2 window - 1``. Warm-up: that plus the settling of two cascaded Wilder
    smoothers to 1e-12. Matches ``talib.ADX``.

    Parameters
    ----------
    high, low, close : str
        Input columns.
    window : int
        Wilder period (>= 2).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``adx`` (0..100).
    """
    for name, col in (("high", high), ("low", low), ("close", close)):
        check_str("adx", name, col)
    window = check_int("adx", "window", window, 2)
    return kernel(
        _kernels.adx, [pl.col(high), pl.col(low), pl.col(close)], window, by=by, name="adx"
    )


@register_feature(warmup=lambda p, tf: p["window"])
def trend_strength(*, column: str = "close", window: int = 20, by: str = "symbol") -> pl.Expr:
    """Return the signed Kaufman efficiency ratio: net move over the path length.

    ``(x_t - x_{t-window}) / sum_{k=t-window+1..t} |x_k - x_{k-1}|`` in [-1, 1]; +1 is a straight
    rise, -1 a straight fall, ~0 a choppy market; null when the path length is zero.
    Warm-up: ``window`` bars (exact).

    Parameters
    ----------
    column : str
        Input column.
    window : int
        Bars (>= 1).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``trend_strength``.
    """
    check_str("trend_strength", "column", column)
    window = check_int("trend_strength", "window", window, 1)
    x = pl.col(column).cast(pl.Float64)
    net = (x - x.shift(window)).over(by)
    path = x.diff().abs().rolling_sum(window_size=window).over(by)
    return pl.when(path > 0).then(net / path).otherwise(None).alias("trend_strength")
