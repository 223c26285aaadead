"""Momentum indicators: returns and RSI."""

from __future__ import annotations

import polars as pl

from workbench.features import _kernels
from workbench.features._expr import check_int, check_str, kernel, settle
from workbench.features.registry import register_feature


@register_feature(warmup=lambda p, tf: p["periods"])
def returns(
    *, column: str = "close", periods: int = 1, log: bool = False, by: str = "symbol"
) -> pl.Expr:
    """Return the trailing return over ``periods`` bars.

    ``x_t / x_{t-periods} - 1``, or ``ln(x_t / x_{t-periods})`` with ``log=True``.
    Warm-up: ``periods`` bars (exact).

    Parameters
    ----------
    column : str
        Price column.
    periods : int
        Bars back (>= 1).
    log : bool
        Log return instead of simple return.
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``returns``.
    """
    check_str("returns", "column", column)
    periods = check_int("returns", "periods", periods, 1)
    x = pl.col(column).cast(pl.Float64)
    ratio = (x / x.shift(periods)).over(by)
    return (ratio.log() if log else ratio - 1.0).alias("returns")


@register_feature(warmup=lambda p, tf: p["window"] + settle(1.0 - 1.0 / p["window"]))
def rsi(*, column: str = "close", window: int = 14, by: str = "symbol") -> pl.Expr:
    """Return the relative strength index with Wilder smoothing (TA-Lib's RSI).

    Gains ``g`` and losses ``l`` of ``x_t - x_{t-1}``; averages seeded with the mean of the first
    ``window`` changes, then ``avg_t = (avg_{t-1} (window - 1) + v_t) / window``;
    ``rsi = 100 avg_g / (avg_g + avg_l)``, null when both are zero (TA-Lib returns 0 there).
    First value at row ``window``. Warm-up: ``window`` plus the bars until the seed's weight
    ``(1 - 1/window)^k`` is below 1e-12. Matches ``talib.RSI``.

    Parameters
    ----------
    column : str
        Price column.
    window : int
        Wilder period (>= 2).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``rsi`` (0..100).
    """
    check_str("rsi", "column", column)
    window = check_int("rsi", "window", window, 2)
    return kernel(_kernels.rsi, [pl.col(column)], window, by=by, name="rsi")
