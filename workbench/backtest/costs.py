"""The cost model: commission, half-spread, slippage (time of day, size, volatility), borrow.

All costs are known when the order is decided (the close of the decision bar) except the time of
day, which is the fill bar's start (known in advance), so a cost never peeks past the decision:

- **commission** per order: ``max(per_share * shares + bps * notional, commission_min) +
  commission_flat`` (notional at the execution price);
- **half-spread** (fraction of price): ``half_spread_bps`` or, with ``spread_from_bars``, the
  Corwin-Schultz high/low estimate over the decision bar and the bar before, EWMA-smoothed
  (``estimate_span`` bars), falling back to ``half_spread_bps`` where no estimate exists yet;
- **slippage** (fraction of price): ``slippage_bps * (1 + intraday_u_shape * U(tod))`` plus
  ``impact_coef * sigma * sqrt(shares / volume)`` where ``U`` is 1 at the regular session's open
  and close and 0 at midday (``U = 0`` for daily bars), ``sigma`` the EWMA volatility of log
  close-to-close returns and ``volume`` the EWMA bar volume, both up to the decision bar;
- **borrow** on shorts: ``borrow_bps_annual`` of the short notional at each close, accrued over the
  calendar time since the previous bar, ACT/360 as in US securities lending.

Buys execute at ``ref * (1 + half_spread + slippage)``, sells at ``ref * (1 - ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from workbench.backtest._kernels import estimates_nb, frozen
from workbench.config import CostsConfig

_US_PER_DAY = 86_400_000_000
_SESSION_OPEN_MIN = 9 * 60 + 30
_SESSION_MIN = 390


class CostArrays(NamedTuple):
    """Per-bar cost inputs of the simulation kernel (``(1, 1)`` arrays broadcast)."""

    half_spread: np.ndarray  # [T x N] or [1 x 1], fraction of price, at the decision row
    sigma: np.ndarray  # [T x N] or [1 x 1], per-bar volatility at the decision row
    volume: np.ndarray  # [T x N] or [1 x 1], EWMA volume at the decision row
    slip_row: np.ndarray  # [T], base slippage fraction at the fill row
    borrow_row: np.ndarray  # [T], borrow fee fraction of short notional charged at the row's close


@dataclass(frozen=True, slots=True)
class CostModel:
    """Costs of trading, built from :class:`workbench.config.CostsConfig`."""

    config: CostsConfig

    @classmethod
    def from_config(cls, costs: CostsConfig | None = None) -> CostModel:
        """Build the model from a costs config (defaults when ``None``)."""
        return cls(costs if costs is not None else CostsConfig())

    def commission(self, shares: np.ndarray | float, price: np.ndarray | float) -> np.ndarray:
        """Return the commission of orders of ``shares`` (absolute) executed at ``price``.

        Parameters
        ----------
        shares : array-like
            Order sizes (sign ignored).
        price : array-like
            Execution prices.

        Returns
        -------
        np.ndarray
            Commission in currency per order.
        """
        c = self.config
        n = np.abs(np.asarray(shares, dtype=float))
        var = c.commission_per_share * n + c.commission_bps * 1e-4 * n * np.asarray(price)
        return np.maximum(var, c.commission_min) + c.commission_flat

    def prepare(
        self,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
        grid_us: np.ndarray,
        *,
        intraday: bool,
    ) -> CostArrays:
        """Return the per-bar cost arrays for a ``[time x symbol]`` grid.

        Parameters
        ----------
        high, low, close, volume : np.ndarray
            ``[T x N]`` bar arrays, NaN where a symbol has no bar.
        grid_us : np.ndarray
            ``[T]`` bar start times, int64 microseconds since the epoch (UTC).
        intraday : bool
            Whether the bars are intraday (the U-shaped time-of-day slippage applies).

        Returns
        -------
        CostArrays
        """
        c = self.config
        need_spread = c.spread_from_bars
        need_vol = c.impact_coef > 0
        fallback = np.full((1, 1), c.half_spread_bps * 1e-4)
        nan11 = np.full((1, 1), np.nan)
        if need_spread or need_vol:
            half, sigma, vol = estimates_nb(
                *frozen(high, low, close, volume), float(c.estimate_span), need_spread, need_vol
            )
        if need_spread:
            half = np.where(np.isnan(half), c.half_spread_bps * 1e-4, half)
        else:
            half = fallback
        if not need_vol:
            sigma = vol = nan11
        base = c.slippage_bps * 1e-4
        if base > 0 and intraday and c.intraday_u_shape > 0:
            slip_row = base * (1.0 + c.intraday_u_shape * u_shape(grid_us))
        else:
            slip_row = np.full(len(grid_us), base)
        return CostArrays(
            np.ascontiguousarray(half),
            np.ascontiguousarray(sigma),
            np.ascontiguousarray(vol),
            slip_row,
            borrow_by_row(grid_us, c.borrow_bps_annual),
        )


def u_shape(grid_us: np.ndarray) -> np.ndarray:
    """Return the time-of-day factor ``(2x - 1)^2`` of each bar start, x = session fraction elapsed.

    ``x`` runs from 0 at 09:30 to 1 at 16:00 America/New_York; bars outside the regular session
    get 1 (the costliest).

    Parameters
    ----------
    grid_us : np.ndarray
        Bar start times, int64 microseconds since the epoch (UTC).

    Returns
    -------
    np.ndarray
        Factor in ``[0, 1]`` per bar.
    """
    import polars as pl

    local = (
        pl.Series(grid_us).cast(pl.Datetime("us", "UTC")).dt.convert_time_zone("America/New_York")
    )
    minutes = (local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)).to_numpy()
    x = (minutes - _SESSION_OPEN_MIN) / _SESSION_MIN
    u = (2.0 * x - 1.0) ** 2
    return np.where((x < 0) | (x > 1), 1.0, u)


def borrow_by_row(grid_us: np.ndarray, bps_annual: float) -> np.ndarray:
    """Return the borrow fee fraction charged at each row's close (ACT/360 calendar accrual).

    The first row accrues one bar interval (the smallest spacing of the grid).
    """
    n = len(grid_us)
    if bps_annual <= 0 or n == 0:
        return np.zeros(n)
    dt = np.diff(grid_us).astype(float)
    first = float(dt.min()) if n > 1 else float(_US_PER_DAY)
    days = np.concatenate(([first], dt)) / _US_PER_DAY
    return bps_annual * 1e-4 * days / 360.0
