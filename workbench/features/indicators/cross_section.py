"""Cross-sectional features: rank and z-score across symbols at each timestamp."""

from __future__ import annotations

import polars as pl

from workbench.features._expr import check_int, check_str, lag_within
from workbench.features.registry import register_feature


def _value(fn: str, column: str, periods: int, symbol: str) -> pl.Expr:
    check_str(fn, "column", column)
    check_str(fn, "symbol", symbol)
    periods = check_int(fn, "periods", periods, 0)
    x = pl.col(column).cast(pl.Float64)
    return x if periods == 0 else x / lag_within(x, periods, symbol) - 1.0


@register_feature(warmup=lambda p, tf: p["periods"], kind="cross_section")
def cs_rank(
    *, column: str = "close", periods: int = 12, by: str = "ts", symbol: str = "symbol"
) -> pl.Expr:
    """Cross-sectional percentile rank at each timestamp.

    The ranked value is the ``periods``-bar return of ``column`` (``periods=0`` ranks the column
    itself, e.g. another feature's alias). ``(rank - 1) / (n - 1)`` with average ranks over the
    ``n`` non-null values sharing the timestamp, in [0, 1]; null when ``n < 2``.
    Warm-up: ``periods`` bars.

    Parameters
    ----------
    column : str
        Column to rank (or whose return to rank).
    periods : int
        Return horizon in bars (>= 0; 0 = the raw column).
    by : str
        Timestamp column defining the cross-section.
    symbol : str
        Symbol column (contiguous, time-sorted rows per symbol).

    Returns
    -------
    pl.Expr
        Float64 expression named ``cs_rank``.
    """
    check_str("cs_rank", "by", by)
    v = _value("cs_rank", column, periods, symbol)
    n = v.count().over(by)
    rank = v.rank("average").over(by)
    return pl.when(n > 1).then((rank - 1.0) / (n - 1.0)).otherwise(None).alias("cs_rank")


@register_feature(warmup=lambda p, tf: p["periods"], kind="cross_section")
def cs_zscore(
    *, column: str = "close", periods: int = 12, by: str = "ts", symbol: str = "symbol"
) -> pl.Expr:
    """Cross-sectional z-score at each timestamp.

    ``(v - mean) / std`` over the non-null values sharing the timestamp (sample σ), where ``v`` is
    the ``periods``-bar return of ``column`` (``periods=0``: the column itself); null when fewer
    than two values or σ = 0. Warm-up: ``periods`` bars.

    Parameters
    ----------
    column : str
        Column to standardise (or whose return to standardise).
    periods : int
        Return horizon in bars (>= 0; 0 = the raw column).
    by : str
        Timestamp column defining the cross-section.
    symbol : str
        Symbol column (contiguous, time-sorted rows per symbol).

    Returns
    -------
    pl.Expr
        Float64 expression named ``cs_zscore``.
    """
    check_str("cs_zscore", "by", by)
    v = _value("cs_zscore", column, periods, symbol)
    sd = v.std().over(by)
    mean = v.mean().over(by)
    return pl.when(sd > 0).then((v - mean) / sd).otherwise(None).alias("cs_zscore")
