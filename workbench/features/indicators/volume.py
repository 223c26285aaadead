"""Volume indicators: session-anchored VWAP and its z-score, volume z-score, order-flow imbalance."""

from __future__ import annotations

import numpy as np
import polars as pl

from workbench.features import _kernels
from workbench.features._expr import (
    bars_per_day,
    check_int,
    check_str,
    f64,
    kernel,
    local_clock,
    segments,
)
from workbench.features.registry import register_feature


def _session_warmup(p, tf) -> int:
    return bars_per_day(tf) - 1


def _session_expr(
    fn: str,
    *,
    price: str,
    volume: str,
    high: str,
    low: str,
    close: str,
    ts: str,
    tz: str,
    by: str,
    name: str,
) -> pl.Expr:
    for pname, col in (
        ("price", price),
        ("volume", volume),
        ("high", high),
        ("low", low),
        ("close", close),
        ("ts", ts),
        ("tz", tz),
    ):
        check_str(fn, pname, col)
    typical = (pl.col(high) + pl.col(low) + pl.col(close)) / 3.0
    px = pl.coalesce(pl.col(price).cast(pl.Float64), typical)
    want_z = name == "vwap_zscore"

    def run(series: list[pl.Series]) -> pl.Series:
        gid = series[0].to_numpy()
        local = local_clock(series[1], tz)
        vwap, sd = _kernels.session_vwap(gid, local, f64(series[2]), f64(series[3]), want_z)
        if not want_z:
            return pl.Series(name, vwap, nan_to_null=True)
        x = f64(series[4])
        z = np.full(x.shape[0], np.nan)
        np.divide(x - vwap, sd, out=z, where=sd > 1e-12 * np.abs(np.nan_to_num(vwap)))
        return pl.Series(name, z, nan_to_null=True)

    inputs = [segments(by), pl.col(ts), px, pl.col(volume), pl.col(close)]
    return pl.map_batches(inputs, run, return_dtype=pl.Float64).alias(name)


@register_feature("session_vwap", warmup=_session_warmup)
def vwap(
    *,
    price: str = "vwap",
    volume: str = "volume",
    high: str = "high",
    low: str = "low",
    close: str = "close",
    ts: str = "ts",
    tz: str = "America/New_York",
    by: str = "symbol",
) -> pl.Expr:
    """Return the session-anchored volume-weighted average price (registered as ``session_vwap``).

    ``VWAP_t = sum(p_k v_k) / sum(v_k)`` over the bars ``k <= t`` of the same session date in
    ``tz`` (bars are stamped at their UTC start). ``p`` is the bar's own ``vwap`` and falls back
    to the typical price ``(h + l + c) / 3`` where that is null; null until the session has
    volume. Warm-up: the bars of one calendar day at the frame's timeframe minus one (287 for
    5Min): the value depends on nothing before the session's first bar.

    Parameters
    ----------
    price, volume, high, low, close, ts : str
        Input columns.
    tz : str
        Time zone that defines the session date.
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``vwap``.
    """
    return _session_expr(
        "vwap",
        price=price,
        volume=volume,
        high=high,
        low=low,
        close=close,
        ts=ts,
        tz=tz,
        by=by,
        name="vwap",
    )


@register_feature(warmup=_session_warmup)
def vwap_zscore(
    *,
    price: str = "vwap",
    volume: str = "volume",
    high: str = "high",
    low: str = "low",
    close: str = "close",
    ts: str = "ts",
    tz: str = "America/New_York",
    by: str = "symbol",
) -> pl.Expr:
    """Return the distance of the close from the session VWAP in session VWAP standard deviations.

    ``(close_t - VWAP_t) / σ_t`` with ``σ_t^2 = sum(v_k (p_k - VWAP_t)^2) / sum(v_k)`` over the
    session so far (the VWAP bands' σ); null on a session's first bar (σ = 0). Warm-up: as
    :func:`vwap`.

    Parameters
    ----------
    price, volume, high, low, close, ts : str
        Input columns.
    tz : str
        Time zone that defines the session date.
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``vwap_zscore``.
    """
    return _session_expr(
        "vwap_zscore",
        price=price,
        volume=volume,
        high=high,
        low=low,
        close=close,
        ts=ts,
        tz=tz,
        by=by,
        name="vwap_zscore",
    )


@register_feature(warmup=lambda p, tf: p["window"] - 1)
def volume_zscore(
    *, column: str = "volume", window: int = 20, log: bool = True, by: str = "symbol"
) -> pl.Expr:
    """Return the rolling z-score of (log) volume.

    ``z(ln(1 + v))`` over the last ``window`` bars (population σ), or of raw ``v`` with
    ``log=False``; null when the window is flat. Warm-up: ``window - 1`` bars (exact).

    Parameters
    ----------
    column : str
        Volume column.
    window : int
        Bars (>= 2).
    log : bool
        Use ``ln(1 + v)``.
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``volume_zscore``.
    """
    check_str("volume_zscore", "column", column)
    window = check_int("volume_zscore", "window", window, 2)
    x = pl.col(column).cast(pl.Float64)
    x = x.log1p() if log else x
    return kernel(_kernels.rolling_zscore, [x], window, 0, by=by, name="volume_zscore")


@register_feature(warmup=lambda p, tf: p["window"] - 1)
def order_flow_imbalance(
    *,
    high: str = "high",
    low: str = "low",
    close: str = "close",
    volume: str = "volume",
    window: int = 20,
    by: str = "symbol",
) -> pl.Expr:
    """Return an order-flow imbalance proxy from bars (close-location-weighted volume).

    Each bar's volume is split by where it closed in its range,
    ``clv = (2c - h - l) / (h - l)`` (0 when ``h == l``), and
    ``ofi_t = sum(clv_k v_k) / sum(v_k)`` over the last ``window`` bars, in [-1, 1]; null when
    the window traded nothing. Warm-up: ``window - 1`` bars (exact).

    Parameters
    ----------
    high, low, close, volume : str
        Input columns.
    window : int
        Bars (>= 1).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``order_flow_imbalance``.
    """
    for name, col in (("high", high), ("low", low), ("close", close), ("volume", volume)):
        check_str("order_flow_imbalance", name, col)
    window = check_int("order_flow_imbalance", "window", window, 1)
    h, lo, c = pl.col(high), pl.col(low), pl.col(close)
    v = pl.col(volume).cast(pl.Float64)
    rng = h - lo
    clv = pl.when(rng > 0).then((2.0 * c - h - lo) / rng).otherwise(0.0)
    num = (clv * v).rolling_sum(window_size=window).over(by)
    den = v.rolling_sum(window_size=window).over(by)
    return pl.when(den > 0).then(num / den).otherwise(None).alias("order_flow_imbalance")
