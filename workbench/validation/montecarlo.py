"""Monte Carlo of a strategy's out-of-sample returns: a stationary bootstrap (arch).

Returns of a trading strategy are serially dependent (volatility clusters, positions held over
several bars), so an i.i.d. resample understates the spread of every path statistic. The
stationary bootstrap of Politis and Romano resamples blocks of random, geometrically distributed
length (mean ``block``), which keeps that dependence; :func:`bootstrap_returns` draws ``n_draws``
resampled paths with :class:`arch.bootstrap.StationaryBootstrap` and measures on each:

* the annualised Sharpe ratio (``mean / std(ddof=1) * sqrt(periods_per_year)``), whose
  percentile interval at ``level`` is :attr:`MonteCarloResult.sharpe_ci` (the gate
  ``min_sharpe_ci_low`` reads its lower end);
* the maximum drawdown of the compounded path (a positive fraction of the running peak);
* the loss over ``horizon`` periods: the probability that the first ``horizon`` returns of a
  path compound to less than zero.

The mean block length defaults to Politis and White's (2004, corrected 2009) optimal length for
the stationary bootstrap (:func:`arch.bootstrap.optimal_block_length`), at least 1. The result is
reproducible from ``seed``. Only the returns given are resampled: pass out-of-sample returns (the
walk-forward's), never a series that includes the training window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.errors import ParameterError

__all__ = ["MonteCarloResult", "bootstrap_returns", "max_drawdown"]


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall of the compounded path from its running peak (a fraction >= 0; the peak
    starts at 1, so a loss on the first period counts)."""
    wealth = np.cumprod(1.0 + np.asarray(returns, dtype=np.float64))
    peak = np.maximum.accumulate(np.concatenate(([1.0], wealth)))[1:]
    return float(np.max(1.0 - wealth / peak)) if wealth.size else 0.0


def _sharpe(r: np.ndarray, periods_per_year: float) -> float:
    sd = float(np.std(r, ddof=1))
    if not sd > 0.0:
        return math.copysign(math.inf, float(np.mean(r))) if np.mean(r) != 0 else 0.0
    return float(np.mean(r)) / sd * math.sqrt(periods_per_year)


@dataclass(frozen=True)
class MonteCarloResult:
    """Distributions of the bootstrapped paths (one value per draw) and their summaries."""

    sharpe: float  # of the returns given
    sharpe_draws: np.ndarray
    max_drawdown_draws: np.ndarray
    horizon_return_draws: np.ndarray  # compounded return of each path's first ``horizon`` periods
    level: float
    horizon: int
    block: float
    n_draws: int
    seed: int
    periods_per_year: float

    @property
    def sharpe_ci(self) -> tuple[float, float]:
        """Percentile interval of the Sharpe ratio at ``level``."""
        a = (1.0 - self.level) / 2.0
        lo, hi = np.quantile(self.sharpe_draws, [a, 1.0 - a])
        return float(lo), float(hi)

    @property
    def loss_probability(self) -> float:
        """Probability that ``horizon`` periods end below the start."""
        return float(np.mean(self.horizon_return_draws < 0.0))

    def max_drawdown_quantile(self, q: float = 0.95) -> float:
        return float(np.quantile(self.max_drawdown_draws, q))

    def summary(self) -> dict[str, float]:
        """Flat metrics for MLflow and the gates (``sharpe_ci_low`` is the gate's value).

        ``mc_sharpe`` is the Sharpe ratio of the series that was resampled (the validation step
        passes daily returns, annualised with ``periods_per_year``): the point the interval is
        about. It differs from a backtest's Sharpe ratio of bar returns.
        """
        lo, hi = self.sharpe_ci
        return {
            "mc_sharpe": float(self.sharpe),
            "sharpe_ci_low": lo,
            "sharpe_ci_high": hi,
            "mc_max_drawdown_p50": float(np.median(self.max_drawdown_draws)),
            "mc_max_drawdown_p95": self.max_drawdown_quantile(0.95),
            "mc_loss_probability": self.loss_probability,
            "mc_block": float(self.block),
            "mc_draws": float(self.n_draws),
            "mc_horizon": float(self.horizon),
        }

    def figure(self) -> go.Figure:
        """Histograms of the bootstrapped Sharpe ratio (interval marked), maximum drawdown and
        ``horizon``-period return (zero marked)."""
        lo, hi = self.sharpe_ci
        fig = make_subplots(
            rows=1,
            cols=3,
            subplot_titles=(
                f"Sharpe ratio ({self.level:.0%} interval {lo:.2f} .. {hi:.2f})",
                f"maximum drawdown (p95 {self.max_drawdown_quantile():.1%})",
                f"return over {self.horizon} periods (P(loss) {self.loss_probability:.1%})",
            ),
        )
        fig.add_histogram(x=self.sharpe_draws, nbinsx=50, name="Sharpe", row=1, col=1)
        for x in (lo, hi):
            fig.add_vline(x=x, line_dash="dash", line_color="firebrick", row=1, col=1)
        fig.add_vline(x=self.sharpe, line_color="black", row=1, col=1)
        fig.add_histogram(x=self.max_drawdown_draws, nbinsx=50, name="max drawdown", row=1, col=2)
        fig.add_histogram(x=self.horizon_return_draws, nbinsx=50, name="return", row=1, col=3)
        fig.add_vline(x=0.0, line_color="black", row=1, col=3)
        fig.update_layout(
            title=(
                f"Stationary bootstrap of the out-of-sample returns: {self.n_draws} paths, "
                f"mean block {self.block:.1f} periods"
            ),
            showlegend=False,
            height=380,
        )
        return fig


def bootstrap_returns(
    returns: np.ndarray,
    *,
    n_draws: int = 1000,
    block: float | None = None,
    horizon: int | None = None,
    level: float = 0.95,
    periods_per_year: float = 252.0,
    seed: int = 0,
) -> MonteCarloResult:
    """Stationary bootstrap of ``returns`` (simple returns per period, in time order).

    Parameters
    ----------
    returns : array
        Out-of-sample returns per period (NaN not allowed: drop or fill before).
    n_draws : int
        Resampled paths.
    block : float, optional
        Mean block length in periods (default: Politis-White optimal, at least 1).
    horizon : int, optional
        Periods of the loss-probability horizon (default: the whole series).
    level : float
        Coverage of the Sharpe interval.
    periods_per_year : float
        Annualisation of the Sharpe ratio (252 for daily returns).
    seed : int
        Seed of the resampling.

    Raises
    ------
    ParameterError
        Too few returns, non-finite values, or a parameter out of range.
    """
    from arch.bootstrap import StationaryBootstrap, optimal_block_length

    r = np.asarray(returns, dtype=np.float64).ravel()
    if r.size < 10:
        raise ParameterError(
            f"returns: the bootstrap needs at least 10 returns; got {r.size}. Fix: run the "
            "walk-forward over more out-of-sample periods."
        )
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        raise ParameterError(
            f"returns: {bad.size} non-finite values (first at position {int(bad[0])}: "
            f"{r[bad[0]]!r}). Fix: drop the periods without a return before the bootstrap."
        )
    if not (isinstance(n_draws, int) and n_draws >= 100):
        raise ParameterError(f"n_draws must be an int >= 100; got {n_draws!r}.")
    if not 0.5 <= level < 1.0:
        raise ParameterError(f"level must be in [0.5, 1); got {level!r}.")
    if horizon is None:
        horizon = r.size
    if not (isinstance(horizon, int) and 1 <= horizon <= r.size):
        raise ParameterError(
            f"horizon must be an int in 1..{r.size} (the returns given); got {horizon!r}."
        )
    if block is None:
        # constant returns (a model that never traded): no autocorrelation to estimate
        opt = float(optimal_block_length(r)["stationary"].iloc[0]) if np.ptp(r) > 0 else 1.0
        block = max(1.0, opt if math.isfinite(opt) else 1.0)
    if not (math.isfinite(block) and 1.0 <= block <= r.size):
        raise ParameterError(f"block must be in [1, {r.size}] periods; got {block!r}.")

    def stats(x: np.ndarray) -> np.ndarray:
        return np.array(
            [
                _sharpe(x, periods_per_year),
                max_drawdown(x),
                float(np.prod(1.0 + x[:horizon]) - 1.0),
            ]
        )

    bs = StationaryBootstrap(block, r, seed=seed)
    draws = bs.apply(stats, n_draws)
    return MonteCarloResult(
        sharpe=_sharpe(r, periods_per_year),
        sharpe_draws=draws[:, 0],
        max_drawdown_draws=draws[:, 1],
        horizon_return_draws=draws[:, 2],
        level=level,
        horizon=horizon,
        block=float(block),
        n_draws=n_draws,
        seed=seed,
        periods_per_year=periods_per_year,
    )
