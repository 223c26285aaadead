"""Backtest statistics with stable keys and documented conventions.

Returns are the simple per-bar returns of equity marked at each close; the first is measured
against ``initial_cash``. ``n`` is the number of bars, ``P`` the periods per year (default: observed
bars per session x 252; pass ``periods_per_year`` to :func:`run_backtest` to override). The
conventions follow quantstats 0.0.86 with ``rf = 0`` and ``periods = P`` (checked in the tests):

================== ==========================================================================
key                definition
================== ==========================================================================
total_return       ``E_n / E_0 - 1`` (``E_0`` = initial cash)
annual_return      ``(1 + total_return) ** (P / n) - 1`` (quantstats ``cagr`` with periods=P)
annual_volatility  ``std(r, ddof=1) * sqrt(P)``
sharpe             ``mean(r) / std(r, ddof=1) * sqrt(P)``, risk-free rate 0
sortino            ``mean(r) / sqrt(sum(min(r, 0)^2) / n) * sqrt(P)``
calmar             ``annual_return / abs(max_drawdown)``
max_drawdown       ``min(E_t / max_{s<=t} E_s - 1)`` with ``E_0`` as the first peak (<= 0)
max_drawdown_dur.  longest run of bars spent below a previous peak (``max_drawdown_duration``)
var_95             historical 5% quantile of ``r`` (linear interpolation), a loss is negative
cvar_95            mean of the returns at or below ``var_95`` (quantstats ``cvar``, historical)
win_rate           closed trades with ``pnl > 0`` / closed trades
profit_factor      gross profit / gross loss of closed trades (inf without losers)
expectancy         mean net ``pnl`` per closed trade, in currency
avg_trade          mean net ``return`` per closed trade (pnl / entry notional)
n_trades           closed round trips (open ones are in ``n_open_trades``)
turnover           average traded notional per session / mean equity (x equity per day)
exposure           mean gross exposure / equity at the closes (1.0 = fully invested)
buy_and_hold_return equal-weight, cost-free buy and hold of every symbol from its first close
final_equity       ``E_n``
total_costs        commission + spread + slippage + borrow paid
n_open_trades      positions still open at the end
================== ==========================================================================

Undefined ratios (zero volatility, no losers, no trades) are ``nan`` (``inf`` for a profit factor
without losers). quantstats' own default VaR is parametric (Gaussian); ours is historical.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

STAT_KEYS: tuple[str, ...] = (
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_duration",
    "var_95",
    "cvar_95",
    "win_rate",
    "profit_factor",
    "expectancy",
    "avg_trade",
    "n_trades",
    "turnover",
    "exposure",
    "buy_and_hold_return",
    "final_equity",
    "total_costs",
    "n_open_trades",
)


def returns_stats(returns: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Return the return-based statistics of a series of simple per-bar returns.

    Parameters
    ----------
    returns : np.ndarray
        Simple returns, one per bar (the first against the starting capital).
    periods_per_year : float
        Annualisation factor.

    Returns
    -------
    dict[str, float]
        ``total_return, annual_return, annual_volatility, sharpe, sortino, calmar, max_drawdown,
        max_drawdown_duration, var_95, cvar_95``.
    """
    r = np.asarray(returns, dtype=float)
    n = len(r)
    p = float(periods_per_year)
    nan = float("nan")
    if n == 0:
        return dict.fromkeys(STAT_KEYS[:10], nan)
    wealth = np.concatenate(([1.0], np.cumprod(1.0 + r)))
    total = wealth[-1] - 1.0
    annual = wealth[-1] ** (p / n) - 1.0 if wealth[-1] >= 0 else nan
    mean = float(r.mean())
    std = float(r.std(ddof=1)) if n > 1 else nan
    downside = math.sqrt(float(np.sum(np.minimum(r, 0.0) ** 2)) / n)
    peak = np.maximum.accumulate(wealth)
    dd = wealth / peak - 1.0
    mdd = float(dd.min())
    var = float(np.quantile(r, 0.05))
    tail = r[r <= var]
    return {
        "total_return": float(total),
        "annual_return": float(annual),
        "annual_volatility": std * math.sqrt(p),
        "sharpe": mean / std * math.sqrt(p) if std and std > 0 else nan,
        "sortino": mean / downside * math.sqrt(p) if downside > 0 else nan,
        "calmar": float(annual) / abs(mdd) if mdd < 0 else nan,
        "max_drawdown": mdd,
        "max_drawdown_duration": float(_longest_run(dd < 0)),
        "var_95": var,
        "cvar_95": float(tail.mean()) if len(tail) else nan,
    }


def trade_stats(trades: pl.DataFrame) -> dict[str, float]:
    """Return ``win_rate, profit_factor, expectancy, avg_trade, n_trades, n_open_trades``.

    Parameters
    ----------
    trades : pl.DataFrame
        The ledger (:func:`workbench.backtest.ledger.trades_from_fills`); only closed trades count.
    """
    closed = trades.filter(~pl.col("is_open"))
    pnl = closed["pnl"].to_numpy()
    n = len(pnl)
    nan = float("nan")
    wins = float(pnl[pnl > 0].sum())
    losses = float(-pnl[pnl < 0].sum())
    if n == 0:
        pf = nan
    elif losses > 0:
        pf = wins / losses
    else:
        pf = float("inf") if wins > 0 else nan
    return {
        "win_rate": float((pnl > 0).mean()) if n else nan,
        "profit_factor": pf,
        "expectancy": float(pnl.mean()) if n else nan,
        "avg_trade": float(closed["return"].mean()) if n else nan,
        "n_trades": float(n),
        "n_open_trades": float(trades.height - n),
    }


def compute_stats(
    *,
    equity: np.ndarray,
    initial_cash: float,
    trades: pl.DataFrame,
    gross_exposure: np.ndarray,
    traded: np.ndarray,
    costs: np.ndarray,
    buy_and_hold: np.ndarray,
    periods_per_year: float,
) -> dict[str, float]:
    """Return every statistic of :data:`STAT_KEYS` for one backtest.

    Parameters
    ----------
    equity : np.ndarray
        Equity at each bar's close.
    initial_cash : float
        Starting equity.
    trades : pl.DataFrame
        Trade ledger.
    gross_exposure, traded, costs : np.ndarray
        Per-bar gross exposure at the close, traded notional and costs paid.
    buy_and_hold : np.ndarray
        Benchmark equity curve (starts from ``initial_cash``).
    periods_per_year : float
        Annualisation factor.

    Returns
    -------
    dict[str, float]
        Keys in :data:`STAT_KEYS` order.
    """
    eq = np.asarray(equity, dtype=float)
    prev = np.concatenate(([initial_cash], eq[:-1]))
    out = returns_stats(eq / prev - 1.0, periods_per_year)
    out.update(trade_stats(trades))
    n = len(eq)
    sessions = n * 252.0 / periods_per_year if periods_per_year > 0 else float("nan")
    mean_eq = float(eq.mean()) if n else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        lev = np.where(eq > 0, gross_exposure / eq, np.nan)
    out["turnover"] = float(np.sum(traded)) / mean_eq / sessions if n else float("nan")
    out["exposure"] = float(np.nanmean(lev)) if n and not np.all(np.isnan(lev)) else float("nan")
    out["buy_and_hold_return"] = float(buy_and_hold[-1] / initial_cash - 1.0) if n else float("nan")
    out["final_equity"] = float(eq[-1]) if n else float(initial_cash)
    out["total_costs"] = float(np.sum(costs))
    return {k: out[k] for k in STAT_KEYS}


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    m = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(m))
    return int((edges[1::2] - edges[::2]).max())
