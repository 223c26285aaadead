"""Per-strategy performance from a frame of periodic returns (``ts`` plus one column per strategy).

The statistics follow :func:`workbench.backtest.stats.returns_stats` (quantstats conventions,
risk-free rate 0), with ``P = periods_per_year``, which is required: a wrong annualisation factor
silently scales every ratio, so none is assumed.

================= ==============================================================================
column            definition
================= ==============================================================================
n_periods         number of returns
total_return      ``prod(1 + r) - 1``
annual_return     ``(1 + total_return) ** (P / n) - 1``
annual_volatility ``std(r, ddof=1) * sqrt(P)``
sharpe            ``mean(r) / std(r, ddof=1) * sqrt(P)`` (NaN when the std is 0)
max_drawdown      ``min(W_t / max_{s<=t} W_s - 1)`` of the wealth ``W`` starting at 1 (<= 0)
hit_rate          periods with ``r > 0`` / periods with ``r != 0`` (flat periods, e.g. the 0.0 of
                  a strategy not yet trading, are not counted; NaN when every period is flat)
================= ==============================================================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from workbench.backtest.stats import returns_stats
from workbench.errors import ParameterError
from workbench.portfolio.allocation import _positive, _returns_matrix

__all__ = ["performance_summary", "rolling_sharpe"]

_SUMMARY = ("total_return", "annual_return", "annual_volatility", "sharpe", "max_drawdown")


def performance_summary(returns: pl.DataFrame, *, periods_per_year: float) -> pl.DataFrame:
    """Return one row of performance statistics per strategy.

    Parameters
    ----------
    returns : pl.DataFrame
        ``ts`` plus one float column of periodic simple returns per strategy (no NaNs or nulls;
        use 0.0 for a flat period). Not modified.
    periods_per_year : float
        Annualisation factor (252 for daily returns, 52 weekly ...), > 0.

    Returns
    -------
    pl.DataFrame
        ``strategy, n_periods, total_return, annual_return, annual_volatility, sharpe,
        max_drawdown, hit_rate`` (module docstring), one row per column of ``returns``.
    """
    owner = "performance_summary"
    ppy = _positive(owner, "periods_per_year", periods_per_year)
    names, x = _returns_matrix(owner, returns)
    rows: dict[str, list[Any]] = {"strategy": names, "n_periods": [x.shape[0]] * len(names)}
    for key in (*_SUMMARY, "hit_rate"):
        rows[key] = []
    for j in range(len(names)):
        r = x[:, j]
        st = returns_stats(r, ppy)
        for key in _SUMMARY:
            rows[key].append(float(st[key]))
        active = int(np.count_nonzero(r))
        rows["hit_rate"].append(float((r > 0).sum()) / active if active else math.nan)
    return pl.DataFrame(
        rows,
        schema={"strategy": pl.String, "n_periods": pl.Int64}
        | {k: pl.Float64 for k in (*_SUMMARY, "hit_rate")},
    )


def rolling_sharpe(returns: pl.DataFrame, *, window: int, periods_per_year: float) -> pl.DataFrame:
    """Return the annualised Sharpe ratio of each strategy over a trailing window.

    ``mean / std(ddof=1) * sqrt(periods_per_year)`` of the last ``window`` returns, at each row.

    Parameters
    ----------
    returns : pl.DataFrame
        ``ts`` plus one float column of periodic returns per strategy. Not modified.
    window : int
        Number of returns per window (>= 2).
    periods_per_year : float
        Annualisation factor, > 0.

    Returns
    -------
    pl.DataFrame
        ``ts`` (when ``returns`` has one) plus one column per strategy; null for the first
        ``window - 1`` rows, NaN where the window's returns are all equal (std < 1e-12).
    """
    owner = "rolling_sharpe"
    ppy = _positive(owner, "periods_per_year", periods_per_year)
    names, _ = _returns_matrix(owner, returns)
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ParameterError(
            f"The 'window' parameter of {owner} must be an int >= 2 (returns per window). Got "
            f"{window!r} instead."
        )
    if window > returns.height:
        raise ParameterError(
            f"The 'window' parameter of {owner} must be at most the number of rows "
            f"({returns.height}). Got {window!r} instead."
        )
    scale = math.sqrt(ppy)
    exprs = []
    for a in names:
        mean = pl.col(a).rolling_mean(window)
        std = pl.col(a).rolling_std(window, ddof=1)
        flat = pl.when(std.is_not_null()).then(float("nan"))
        exprs.append(pl.when(std > 1e-12).then(mean / std * scale).otherwise(flat).alias(a))
    keep = ["ts"] if "ts" in returns.columns else []
    return returns.select(*keep, *exprs)
