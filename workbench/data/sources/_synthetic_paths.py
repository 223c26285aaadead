"""Array kernels of the synthetic market: one-minute paths of symbol-sessions and their aggregation.

Rows are (symbol, session) pairs of equal session length, columns are minutes. Every row is a pure
function of its own inputs and its own counter-based random stream, so a row never depends on which
other rows are computed with it. See :mod:`workbench.data.sources.synthetic` for the model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from workbench.data.sources._synthetic_model import OVERNIGHT_SHARE, Profiles, philox, profiles

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


@dataclass(frozen=True, slots=True)
class VwapPlan:
    """The linear map of a session's planted 5Min bar returns (see :func:`vwap_plan`)."""

    m: np.ndarray  # (K, K): planted bar returns r = m @ nb of the natural bar returns nb
    h: np.ndarray  # (K,): Cov(r, sum r) / Var(sum r), the direction of the total's conditioning
    q: float  # Var(sum r) / Var(sum nb): the session's open-to-close variance ratio
    deviation: np.ndarray  # (K, K): D = deviation @ r, the VWAP deviations at bar closes
    g: np.ndarray  # (K,): null standard deviation of D_k (units of the session's volatility)
    share: np.ndarray  # (K,): variance share of each bar


@functools.lru_cache(maxsize=64)
def vwap_plan(n: int, local_open: int, alpha: float, beta: float) -> VwapPlan:
    """Return the planted 5Min bar-return map of an ``n``-minute session opening at minute
    ``local_open`` of the local day, with next-bar reversal ``alpha`` and VWAP reversion ``beta``.

    For ``k >= 1``: ``r_k = -alpha sqrt(w_k / w_{k-1}) r_{k-1} - beta sqrt(w_k) D_{k-1} / g_{k-1}
    + sqrt(1 - alpha^2 - beta^2) nb_k`` and ``r_0 = nb_0`` (``w`` the bars' variance shares), a
    linear map ``r = m nb``. See :mod:`workbench.data.sources.synthetic`.
    """
    prof = profiles(n)
    starts = segment_starts(local_open, n, 5)
    w = np.add.reduceat(prof.var, starts)
    dev = deviation_matrix(prof.volume, starts)
    g = np.sqrt((dev * dev) @ w)
    k = len(starts)
    b = math.sqrt(1.0 - alpha * alpha - beta * beta)
    lag = np.zeros((k, k))
    for j in range(1, k):
        lag[j, j - 1] -= alpha * math.sqrt(w[j] / w[j - 1])
        lag[j] -= beta * math.sqrt(w[j]) / g[j - 1] * dev[j - 1]
    scale = np.full(k, b)
    scale[0] = 1.0
    m = np.linalg.solve(np.eye(k) - lag, np.diag(scale))
    cov = (m * w) @ m.T
    total = cov.sum(axis=1)
    q = float(total.sum())
    for a in (m, dev, g, w, total):
        a.setflags(write=False)
    return VwapPlan(m=m, h=total / q, q=q, deviation=dev, g=g, share=w)


def deviation_matrix(volume: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Return ``c`` with ``D_k = sum_i c_ki r_i``: the deviation of bar ``k``'s log close from
    the session's expected-volume-weighted average of bar mid prices, on the bar returns ``r``.

    ``D_k = L_k - A_k``, ``L_k = r_0 + ... + r_k``, ``A_k = sum_{j<=k} omega_j P_j / Omega_k`` with
    ``P_j = (L_{j-1} + L_j) / 2`` (``L_{-1} = 0``) and ``omega_j`` bar ``j``'s share of the volume
    profile: ``c_ki = 1 - (omega_i / 2 + sum_{i<j<=k} omega_j) / Omega_k`` for ``i <= k``.
    """
    om = np.add.reduceat(volume, starts)
    big = np.cumsum(om)
    k = len(starts)
    c = np.zeros((k, k))
    for j in range(k):
        after = big[j] - big[: j + 1]
        c[j, : j + 1] = 1.0 - (om[: j + 1] / 2.0 + after) / big[j]
    return c


def _plant_vwap(
    nat: np.ndarray,
    share: np.ndarray,
    starts: np.ndarray,
    plan: VwapPlan,
    total_sd: np.ndarray,
    z: np.ndarray,
) -> np.ndarray:
    """Plant the map of ``plan`` at the bars beginning at ``starts``, conditioned exactly on the
    session's total (``sqrt(q)`` times the natural one: the daily state's scaled session).

    The natural bar returns are bridged to the session total ``T``; a fresh total
    ``T' = total_sd * z`` turns them into an unconditional draw (``nb - w T + w T'``), which is
    mapped by ``plan.m`` and conditioned on summing to ``sqrt(q) T``: unconditionally the planted
    bar returns follow the map's law exactly.
    """
    bar_share = np.add.reduceat(share, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(share))))
    root = math.sqrt(plan.q)
    nb = np.add.reduceat(nat, starts, axis=1)
    total = nb.sum(axis=1)
    free = nb + (total_sd * z - total)[:, None] * bar_share
    r = free @ plan.m.T
    r += (root * total - r.sum(axis=1))[:, None] * plan.h
    scale = np.diag(plan.m)
    drift = r - scale * nb
    x = scale[seg] * nat + drift[:, seg] * (share / bar_share[seg])
    return bridge(x, share, root * total)


def minute_bars(
    rows: Rows,
    factors: np.ndarray,
    prof: Profiles,
    *,
    alpha: float,
    plant_starts: np.ndarray,
    plan: VwapPlan | None = None,
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
    if plan is not None:
        zt = np.array(
            [
                philox(rows.keys[i], day=int(rows.ordinals[i]), stream=2).standard_normal()
                for i in range(r_n)
            ]
        )
        total_sd = np.sqrt(_INTRADAY * (rows.factor_var + rows.idio_var))
        x = _plant_vwap(nat, share, plant_starts, plan, total_sd, zt)
    elif alpha > 0:
        x = _plant(nat, share, plant_starts, alpha)
    else:
        x = nat

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


def vwap_plan_ic(plan: VwapPlan) -> float:
    """Return the pooled IC of ``-D_{k-1}`` against ``r_k`` (``k >= 1``) under the plan's law.

    Exact for the planted latent signal (the deviation from the expected-volume-weighted mean of
    bar mids): ``sum_k cov(-D_{k-1}, r_k) / sqrt(sum_k var(D_{k-1}) sum_k var(r_k))``, the moments
    of ``r = m nb`` with ``nb ~ N(0, diag(w))``.
    """
    cov = (plan.m * plan.share) @ plan.m.T
    dcov = plan.deviation @ cov  # cov(D_j, r_i)
    cross = -np.array([dcov[k - 1, k] for k in range(1, len(plan.share))])
    dvar = np.einsum("ij,ij->i", plan.deviation @ cov, plan.deviation)[:-1]
    rvar = np.diag(cov)[1:]
    return float(cross.sum() / math.sqrt(dvar.sum() * rvar.sum()))
