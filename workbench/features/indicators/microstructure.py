"""Microstructure estimates from bars: the Corwin-Schultz high-low spread."""

from __future__ import annotations

import math

import polars as pl

from workbench.features._expr import check_int, check_str
from workbench.features.registry import register_feature

_K = 3.0 - 2.0 * math.sqrt(2.0)


@register_feature(warmup=lambda p, tf: p["window"])
def spread(
    *,
    high: str = "high",
    low: str = "low",
    close: str = "close",
    window: int = 20,
    by: str = "symbol",
) -> pl.Expr:
    """Return the Corwin-Schultz (2012) bid-ask spread estimate from two consecutive bars' high and low.

    Bar ``t``'s range is first shifted to remove a gap against ``c_{t-1}`` (if ``l_t > c_{t-1}``
    both ``h_t`` and ``l_t`` drop by the difference; if ``h_t < c_{t-1}`` both rise). Then
    ``β = ln(h_{t-1}/l_{t-1})^2 + ln(h_t/l_t)^2``,
    ``γ = ln(max(h_{t-1}, h_t) / min(l_{t-1}, l_t))^2``,
    ``α = (sqrt(2β) - sqrt(β)) / (3 - 2 sqrt 2) - sqrt(γ / (3 - 2 sqrt 2))``,
    ``S = 2 (e^α - 1) / (1 + e^α)``, negative estimates set to 0, and the feature is the mean of
    ``S`` over the last ``window`` bars (a fraction of price). Warm-up: ``window`` bars (exact).

    Parameters
    ----------
    high, low, close : str
        Input columns.
    window : int
        Bars averaged (>= 1).
    by : str
        Symbol column.

    Returns
    -------
    pl.Expr
        Float64 expression named ``spread``.
    """
    for name, col in (("high", high), ("low", low), ("close", close)):
        check_str("spread", name, col)
    window = check_int("spread", "window", window, 1)
    h, lo = pl.col(high).cast(pl.Float64), pl.col(low).cast(pl.Float64)
    c_prev = pl.col(close).cast(pl.Float64).shift(1)
    shift = pl.when(lo > c_prev).then(lo - c_prev).when(h < c_prev).then(h - c_prev).otherwise(0.0)
    h_adj, l_adj = h - shift, lo - shift
    h_prev, l_prev = h.shift(1), lo.shift(1)
    beta = (h_prev / l_prev).log().pow(2) + (h_adj / l_adj).log().pow(2)
    gamma = (pl.max_horizontal(h_prev, h_adj) / pl.min_horizontal(l_prev, l_adj)).log().pow(2)
    alpha = ((2.0 * beta).sqrt() - beta.sqrt()) / _K - (gamma / _K).sqrt()
    s = (2.0 * (alpha.exp() - 1.0) / (1.0 + alpha.exp())).clip(lower_bound=0.0)
    # max/min_horizontal ignore nulls, so null the first row explicitly via h_prev.
    s = pl.when(h_prev.is_not_null()).then(s).otherwise(None)
    return s.rolling_mean(window_size=window).over(by).alias("spread")
