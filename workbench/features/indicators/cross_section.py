"""Cross-sectional features: rank and z-score across symbols at each timestamp."""

from __future__ import annotations

import numpy as np
import polars as pl

from workbench.features._expr import check_int, check_str, f64, segments
from workbench.features.registry import register_feature


def _cross_section(fn: str, column: str, periods: int, by: str, symbol: str) -> pl.Expr:
    """Build the expression: the per-symbol value first, then the statistic across ``by``.

    Both steps run inside one UDF because a per-symbol shift cannot be nested in ``over(by)``.
    """
    check_str(fn, "column", column)
    check_str(fn, "by", by)
    check_str(fn, "symbol", symbol)
    periods = check_int(fn, "periods", periods, 0)

    def run(series: list[pl.Series]) -> pl.Series:
        gid = series[0].to_numpy()
        x = f64(series[2])
        if periods:
            lag = np.full(x.shape[0], np.nan)
            same = gid[periods:] == gid[:-periods]
            lag[periods:] = np.where(same, x[:-periods], np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                x = x / lag - 1.0
        v = pl.col("v")
        if fn == "cs_rank":
            n = v.count().over("g")
            stat = pl.when(n > 1).then((v.rank("average").over("g") - 1.0) / (n - 1.0))
        else:
            sd = v.std().over("g")
            stat = pl.when(sd > 0).then((v - v.mean().over("g")) / sd)
        frame = pl.DataFrame({"g": series[1], "v": pl.Series(x, nan_to_null=True)})
        return frame.select(stat.otherwise(None).alias(fn)).to_series()

    inputs = [segments(symbol), pl.col(by), pl.col(column)]
    return pl.map_batches(inputs, run, return_dtype=pl.Float64).alias(fn)


@register_feature(warmup=lambda p, tf: p["periods"], kind="cross_section")
def cs_rank(
    *, column: str = "close", periods: int = 12, by: str = "ts", symbol: str = "symbol"
) -> pl.Expr:
    """Return the cross-sectional percentile rank at each timestamp.

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
    return _cross_section("cs_rank", column, periods, by, symbol)


@register_feature(warmup=lambda p, tf: p["periods"], kind="cross_section")
def cs_zscore(
    *, column: str = "close", periods: int = 12, by: str = "ts", symbol: str = "symbol"
) -> pl.Expr:
    """Return the cross-sectional z-score at each timestamp.

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
    return _cross_section("cs_zscore", column, periods, by, symbol)
