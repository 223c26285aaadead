"""Array kernels of the synthetic market: one-minute paths of symbol-sessions and their aggregation.

Rows are (symbol, session) pairs of equal session length, columns are minutes. Every row is a pure
function of its own inputs and its own counter-based random stream, so a row never depends on which
other rows are computed with it. See :mod:`workbench.data.sources.synthetic` for the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workbench.data.sources._synthetic_model import OVERNIGHT_SHARE, Profiles, philox

_INTRADAY = 1.0 - OVERNIGHT_SHARE
_N_UNIFORM = 5  # high, low, volume noise, trade size, vwap weight


def segment_starts(local_open: int, n: int, every: int | None) -> np.ndarray:
    """Return the first minute of each clock-aligned ``every``-minute bar of an ``n``-minute session.

    ``every=None`` means one bar for the whole session (a daily bar).
    """
    if every is None:
        return np.zeros(1, dtype=np.int64)
    m = np.arange(1, n)
    cut = m[(local_open + m) % every == 0]
    return np.concatenate([[0], cut]).astype(np.int64)


def bridge(x: np.ndarray, share: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Condition Gaussian increments with variance shares ``share`` on summing to ``target``."""
    return x + share * (target - x.sum(axis=-1))[..., None]


def factor_minutes(
    key: np.ndarray, ordinals: np.ndarray, intraday: np.ndarray, var: np.ndarray, prof: Profiles
) -> np.ndarray:
    """Return the one-minute log returns of every factor for each session, shape (days, k, n)."""
    days, k = intraday.shape
    n = prof.var.shape[0]
    z = np.empty((days, k, n))
    for i, day in enumerate(ordinals.tolist()):
        philox(key, day=day).standard_normal(out=z[i])
    sd = np.sqrt(_INTRADAY * var[:, :, None] * prof.var)
    return bridge(sd * z, prof.var, intraday)


@dataclass(frozen=True, slots=True)
class Rows:
    """Inputs of a batch of symbol-sessions (one entry per row)."""

    keys: np.ndarray  # (r, 2) uint64 Philox key of the symbol
    ordinals: np.ndarray  # (r,) session date ordinal
    day: np.ndarray  # (r,) index of the session in the factor-minute array
    beta: np.ndarray  # (r,)
    sector: np.ndarray  # (r,) 1-based column of the sector factor
    log_open: np.ndarray  # (r,)
    idio_intraday: np.ndarray  # (r,) open-to-close idiosyncratic log return
    idio_var: np.ndarray  # (r,) idiosyncratic daily variance
    factor_var: np.ndarray  # (r,) beta^2 var(market) + var(sector), daily
    volume_1min: np.ndarray  # (r,) mean shares per minute at midday that day
    half_spread: np.ndarray  # (r,)
    trade_size: np.ndarray  # (r,)


def _plant(nat: np.ndarray, share: np.ndarray, starts: np.ndarray, alpha: float) -> np.ndarray:
    """Plant next-bar mean reversion at the bars beginning at ``starts``; keep each row's sum."""
    bar_share = np.add.reduceat(share, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(share))))
    nb = np.add.reduceat(nat, starts, axis=1)
    b = math.sqrt(1.0 - alpha * alpha)
    coef = -alpha * np.sqrt(bar_share[1:] / bar_share[:-1])
    r = np.empty_like(nb)
    r[:, 0] = nb[:, 0]
    for k in range(1, nb.shape[1]):
        r[:, k] = coef[k - 1] * r[:, k - 1] + b * nb[:, k]
    scale = np.full(len(starts), b)
    scale[0] = 1.0
    drift = r - scale * nb
    x = scale[seg] * nat + drift[:, seg] * (share / bar_share[seg])
    return bridge(x, share, nat.sum(axis=1))


def minute_bars(
    rows: Rows,
    factors: np.ndarray,
    prof: Profiles,
    *,
    alpha: float,
    plant_starts: np.ndarray,
) -> dict[str, np.ndarray]:
    """Simulate the one-minute bars of each row; return (r, n) arrays of the bar columns."""
    r_n = rows.ordinals.shape[0]
    n = prof.var.shape[0]
    z = np.empty((r_n, n))
    u = np.empty((r_n, _N_UNIFORM, n))
    for i in range(r_n):
        g = philox(rows.keys[i], day=int(rows.ordinals[i]), stream=1)
        g.standard_normal(out=z[i])
        g.random(out=u[i])
    share = prof.var
    sqrt_share = np.sqrt(share)
    idio = bridge(
        np.sqrt(_INTRADAY * rows.idio_var)[:, None] * sqrt_share * z,
        share,
        rows.idio_intraday,
    )
    nat = rows.beta[:, None] * factors[rows.day, 0] + factors[rows.day, rows.sector] + idio
    sd = np.sqrt(_INTRADAY * (rows.factor_var + rows.idio_var))[:, None] * sqrt_share
    x = _plant(nat, share, plant_starts, alpha) if alpha > 0 else nat

    close = np.exp(rows.log_open[:, None] + np.cumsum(x, axis=1))
    open_ = np.empty_like(close)
    open_[:, 0] = np.exp(rows.log_open)
    open_[:, 1:] = close[:, :-1]
    var = sd * sd
    hs = np.minimum(rows.half_spread[:, None] * prof.spread, 0.5)
    hi = open_ * np.exp(0.5 * (x + np.sqrt(x * x - 2.0 * var * np.log1p(-u[:, 0]))))
    lo = open_ * np.exp(0.5 * (x - np.sqrt(x * x - 2.0 * var * np.log1p(-u[:, 1]))))
    high = np.maximum(hi * (1.0 + hs), np.maximum(open_, close))
    low = np.minimum(lo * (1.0 - hs), np.minimum(open_, close))

    activity = 0.6 + 0.4 * math.sqrt(math.pi / 2) * np.abs(x) / sd
    noise = 0.5 - 0.5 * np.log1p(-u[:, 2])
    volume = np.maximum(np.rint(rows.volume_1min[:, None] * prof.volume * noise * activity), 1.0)
    size = rows.trade_size[:, None] * (0.6 + 0.8 * u[:, 3])
    trades = np.maximum(np.rint(volume / size), 1.0).astype(np.int64)
    lam = u[:, 4]
    vwap = np.clip(lam * 0.5 * (open_ + close) + (1.0 - lam) * 0.5 * (high + low), low, high)
    return {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "vwap": vwap,
        "trade_count": trades,
    }


def aggregate(bars: dict[str, np.ndarray], starts: np.ndarray) -> dict[str, np.ndarray]:
    """Aggregate one-minute bars into bars beginning at minute indices ``starts`` (exactly)."""
    n = bars["close"].shape[1]
    if len(starts) == n:
        return bars
    ends = np.append(starts[1:], n) - 1
    volume = np.add.reduceat(bars["volume"], starts, axis=1)
    high = np.maximum.reduceat(bars["high"], starts, axis=1)
    low = np.minimum.reduceat(bars["low"], starts, axis=1)
    vwap = np.add.reduceat(bars["vwap"] * bars["volume"], starts, axis=1) / volume
    return {
        "open": bars["open"][:, starts],
        "high": high,
        "low": low,
        "close": bars["close"][:, ends],
        "volume": volume,
        "vwap": np.clip(vwap, low, high),
        "trade_count": np.add.reduceat(bars["trade_count"], starts, axis=1),
    }
