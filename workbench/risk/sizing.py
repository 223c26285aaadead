"""Sizers: a decision becomes a signed target fraction of equity.

Each sizer is the strategy's frozen ``sizing:`` config plus one pure function,
:func:`workbench.risk._kernel.size_nb`, which the backtest kernel and the trading session both
call. :func:`target_fraction` is its Python face for notebooks and tests.

- ``fixed_fraction``: ``fraction`` of equity;
- ``atr_risk``: risk ``risk_pct`` of equity with the stop ``atr_k`` ATRs away: shares =
  risk_pct x equity / (atr_k x ATR);
- ``vol_target``: ``vol_target / sigma_realised`` (both annualised), capped at ``max_leverage``;
- ``kelly``: ``kelly_fraction`` x (p - (1-p)/b) or x mu/sigma^2 from closed trades, capped so at
  most ``kelly_max_risk`` of equity is lost at the stop, ``fraction`` until ``kelly_min_trades``
  trades have closed;
- an optional volatility-regime multiplier (low / medium / high from past percentiles only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workbench.config import SizingConfig
from workbench.errors import ParameterError
from workbench.risk import _kernel as K


@dataclass(frozen=True, slots=True)
class TradeHistory:
    """Closed-trade statistics the Kelly sizer reads (returns relative to entry notional)."""

    n_trades: int = 0
    n_wins: int = 0
    sum_win: float = 0.0  # sum of winning trade returns
    sum_loss: float = 0.0  # sum of |losing trade returns|
    sum_ret: float = 0.0
    sum_ret2: float = 0.0

    @classmethod
    def from_returns(cls, returns: Sequence[float]) -> TradeHistory:
        """Summarise closed-trade returns (a trade with return <= 0 is a loss)."""
        r = np.asarray(returns, dtype=float)
        if not np.isfinite(r).all():
            raise ParameterError(
                f"trade returns must be finite; got {int((~np.isfinite(r)).sum())} NaN/inf. "
                "Fix: drop trades without a return."
            )
        w = r[r > 0]
        lo = r[r <= 0]
        return cls(
            len(r), len(w), float(w.sum()), float(-lo.sum()), float(r.sum()), float((r * r).sum())
        )


def periods_per_year(timeframe_minutes: int, intraday: bool) -> float:
    """Bars per year of a timeframe on a 6.5-hour, 252-session year (daily bars: 252)."""
    if not intraday:
        return 252.0
    return 252.0 * math.ceil(390 / timeframe_minutes)


def sizing_params(config: SizingConfig, rp: np.ndarray, ppy: float) -> None:
    """Write a sizing config into the kernel's parameter vector (per-bar volatility target)."""
    rp[K.R_SIZER] = K.SIZERS[config.method]
    rp[K.R_FRACTION] = config.fraction
    rp[K.R_RISK_PCT] = config.risk_pct
    rp[K.R_ATR_K] = config.atr_k
    rp[K.R_VOL_TARGET] = config.vol_target / math.sqrt(ppy)
    rp[K.R_SYM_LEV] = config.max_leverage
    rp[K.R_KELLY_MODE] = K.KELLY_MODES[config.kelly_mode]
    rp[K.R_KELLY_FRAC] = config.kelly_fraction
    rp[K.R_KELLY_MAX_RISK] = config.kelly_max_risk
    rp[K.R_KELLY_MIN] = config.kelly_min_trades
    rp[K.R_MIN_TRADE] = config.min_trade


def target_fraction(
    config: SizingConfig,
    side: int,
    price: float,
    *,
    atr: float = math.nan,
    volatility: float = math.nan,
    equity: float = 1.0,
    history: TradeHistory | None = None,
    conviction: float = math.nan,
    periods_per_year: float = 252.0 * 78,
    regime_multiplier: float = 1.0,
) -> float:
    """Return the signed target fraction of equity for one decision.

    Parameters
    ----------
    config : SizingConfig
        The strategy's ``sizing:`` section.
    side : int
        -1, 0 or +1 from the decision policy.
    price : float
        Decision price (the decision bar's close).
    atr, volatility : float
        ATR (price units) and per-bar realised volatility at the decision bar.
    equity : float
        Account equity (the fraction does not depend on it; kept for the contract).
    history : TradeHistory, optional
        Closed trades so far (Kelly).
    conviction : float
        Probability of winning from a probability decision (Kelly payoff mode), else NaN.
    periods_per_year : float
        Bars per year, to turn the annual volatility target into a per-bar one.
    regime_multiplier : float
        The regime's size multiplier at the bar.
    """
    if side not in (-1, 0, 1):
        raise ParameterError(
            f"side must be -1, 0 or 1; got {side!r}. Fix: use DecisionPolicy.decide."
        )
    if not (price > 0 and math.isfinite(price)):
        raise ParameterError(f"price must be a positive number; got {price!r}.")
    if not equity > 0:
        raise ParameterError(f"equity must be > 0; got {equity!r}.")
    h = history or TradeHistory()
    rp = np.full(K.N_R, np.nan)
    sizing_params(config, rp, periods_per_year)
    g = np.zeros(K.N_G)
    g[K.G_N_TRADES], g[K.G_N_WINS] = h.n_trades, h.n_wins
    g[K.G_SUM_WIN], g[K.G_SUM_LOSS] = h.sum_win, h.sum_loss
    g[K.G_SUM_RET], g[K.G_SUM_RET2] = h.sum_ret, h.sum_ret2
    frac = K.size_nb(side, conviction, float(price), float(atr), float(volatility), g, rp)
    return float(side * frac * regime_multiplier)
