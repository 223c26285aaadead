"""Slow latent state of the synthetic market: symbol traits, intraday profiles and daily paths.

Everything here is simulated at daily resolution, sequentially from :data:`EPOCH`, from random
streams keyed by ``(seed, name, purpose)`` so that any prefix of the path is the same whatever
length is simulated. See :mod:`workbench.data.sources.synthetic` for the model.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from datetime import date
from statistics import NormalDist

import numpy as np
import polars as pl

from workbench.data.calendar import get_calendar, sessions

EPOCH = date(2015, 1, 1)  # the simulated market starts at the first session on or after this date
TRADING_DAYS = 252
OVERNIGHT_SHARE = 0.15  # share of daily variance realised overnight (gap)
MARKET_SHARE, SECTOR_SHARE, IDIO_FLOOR = 0.5, 0.3, 0.25  # vol of factors as fraction of annual_vol
# GARCH(1,1) on the standardised daily shock: h' = omega + (a * eps^2 + b) * h, E[h] = 1
GARCH = {"market": (0.05, 0.08, 0.87), "sector": (0.06, 0.06, 0.88), "idio": (0.10, 0.05, 0.85)}
# calm/volatile Markov regime: P(calm->volatile), P(volatile->calm); variance multipliers (mean 1)
P_TO_VOLATILE, P_TO_CALM = 0.02, 0.08
REGIME_MULT_MARKET = np.array([0.625, 2.5])
REGIME_MULT_OTHER = np.array([0.8, 1.8])
# planted multi-day trend: a per-symbol daily drift, AR(1) with this coefficient per session
TREND_PERSISTENCE = 0.9

_NORMAL = NormalDist()


def _digest(*parts: object) -> bytes:
    text = "|".join(["workbench-synthetic", *map(str, parts)])
    return hashlib.blake2b(text.encode(), digest_size=64).digest()


def stream_key(*parts: object) -> np.ndarray:
    """Return a 128-bit Philox key (two uint64) for a named random stream."""
    return np.frombuffer(_digest("key", *parts)[:16], dtype=np.uint64).copy()


def philox(key: np.ndarray, day: int = 0, stream: int = 0) -> np.random.Generator:
    """Return a counter-based generator for ``(key, day, stream)``; draws never overlap."""
    counter = np.array([0, 0, day, stream], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


@dataclass(frozen=True, slots=True)
class Traits:
    """Fixed characteristics of a symbol, derived from a stable hash of ``(seed, symbol)``."""

    symbol: str
    sector: int
    beta: float
    daily_var: float  # average total daily variance of log returns
    idio_var: float  # average idiosyncratic daily variance
    price0: float  # close before the first simulated session
    volume_1min: float  # mean shares per minute at midday in an average day
    half_spread: float  # half the quoted spread at midday, as a fraction of price
    trade_size: float  # mean shares per trade
    key: np.ndarray  # Philox key of the symbol's intraday streams
    daily_key: np.ndarray  # Philox key of the symbol's daily stream


def symbol_traits(
    symbol: str,
    *,
    seed: int,
    n_sectors: int,
    start_price: float,
    annual_vol: float,
    base_volume: float,
    base_spread_bps: float,
) -> Traits:
    """Derive a symbol's traits from ``(seed, symbol)`` (blake2b, never the salted ``hash()``)."""
    words = np.frombuffer(_digest("traits", seed, symbol), dtype=np.uint64)
    u = (words.astype(np.float64) + 0.5) / 2.0**64
    z = [_NORMAL.inv_cdf(float(x)) for x in u[2:]]
    beta = 0.6 + 0.8 * float(u[1])
    vol = annual_vol * np.exp(0.3 * z[0] - 0.045)
    daily_var = vol**2 / TRADING_DAYS
    m_var = (MARKET_SHARE * annual_vol) ** 2 / TRADING_DAYS
    s_var = (SECTOR_SHARE * annual_vol) ** 2 / TRADING_DAYS
    idio = max(daily_var - beta**2 * m_var - s_var, IDIO_FLOOR * daily_var)
    return Traits(
        symbol=symbol,
        sector=int(u[0] * n_sectors),
        beta=beta,
        daily_var=float(beta**2 * m_var + s_var + idio),
        idio_var=float(idio),
        price0=float(start_price * np.exp(0.4 * z[1] - 0.08)),
        volume_1min=float(base_volume / 5.0 * np.exp(0.5 * z[2] - 0.125)),
        half_spread=float(base_spread_bps * 1e-4 / 2.0 * np.exp(0.3 * z[3] - 0.045)),
        trade_size=float(100.0 * np.exp(0.4 * z[4])),
        key=stream_key(seed, "symbol", symbol),
        daily_key=stream_key(seed, "symbol-daily", symbol),
    )


@dataclass(frozen=True, slots=True)
class Profiles:
    """Intraday shapes over the ``n`` minutes of a session."""

    var: np.ndarray  # share of the day's intraday variance per minute (sums to 1)
    volume: np.ndarray  # volume multiplier per minute (1 at midday)
    spread: np.ndarray  # spread multiplier per minute (1 at midday)


@functools.lru_cache(maxsize=16)
def profiles(n: int) -> Profiles:
    """Return the U-shaped variance, volume and spread profiles of an ``n``-minute session."""
    m = np.arange(n, dtype=np.float64)
    to_close = n - 1 - m
    var = 1.0 + 2.5 * np.exp(-m / 15.0) + 0.8 * np.exp(-to_close / 10.0)
    vol = 1.0 + 3.0 * np.exp(-m / 20.0) + 4.0 * np.exp(-to_close / 12.0)
    spr = 1.0 + 3.0 * np.exp(-m / 10.0) + 0.5 * np.exp(-to_close / 10.0)
    var /= var.sum()
    for a in (var, vol, spr):
        a.setflags(write=False)
    return Profiles(var=var, volume=vol, spread=spr)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Sessions from the epoch to the end of the calendar, as arrays."""

    dates: np.ndarray  # datetime64[D]
    ordinals: np.ndarray  # date.toordinal() of each session, int64
    open_us: np.ndarray  # UTC open, microseconds since 1970
    minutes: np.ndarray  # session length in minutes
    local_open: np.ndarray  # minute of the local day at which the session opens
    daily_stamp_us: np.ndarray  # daily bar stamp: local midnight of the session date, in UTC

    def __len__(self) -> int:
        return len(self.dates)


@functools.lru_cache(maxsize=4)
def schedule(calendar: str) -> Schedule:
    """Return the cached session arrays of ``calendar`` from :data:`EPOCH` on."""
    cal = get_calendar(calendar)
    tz = str(cal.tz)
    last = cal.last_session.date()
    sch = sessions(EPOCH, last, calendar).with_columns(
        local=pl.col("open").dt.convert_time_zone(tz),
        stamp=pl.col("session")
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone(tz)
        .dt.convert_time_zone("UTC"),
    )
    open_us = sch["open"].dt.epoch("us").to_numpy()
    close_us = sch["close"].dt.epoch("us").to_numpy()
    span = close_us - open_us
    if np.any(span % 60_000_000):
        raise ValueError(f"calendar {calendar!r} has sessions that are not whole minutes long")
    dates = sch["session"].to_numpy().astype("datetime64[D]")
    local = sch["local"]
    return Schedule(
        dates=dates,
        ordinals=dates.astype(np.int64) + date(1970, 1, 1).toordinal(),
        open_us=open_us,
        minutes=(span // 60_000_000).astype(np.int64),
        local_open=(local.dt.hour().cast(pl.Int64) * 60 + local.dt.minute()).to_numpy(),
        daily_stamp_us=sch["stamp"].dt.epoch("us").to_numpy(),
    )


def _regimes(u: np.ndarray) -> np.ndarray:
    state = np.empty(len(u), dtype=np.int8)
    s = 0
    for i, x in enumerate(u.tolist()):
        state[i] = s
        s = (1 if x < P_TO_VOLATILE else 0) if s == 0 else (0 if x < P_TO_CALM else 1)
    return state


def _garch(eps: np.ndarray, params: tuple[float, float, float]) -> np.ndarray:
    """Return GARCH(1,1) variance multipliers ``h`` (mean 1) for standardised shocks ``eps``."""
    omega, a, b = params
    n = eps.shape[0]
    h = np.empty_like(eps)
    cur = np.ones(eps.shape[1:])
    coef = a * eps * eps + b
    for t in range(n):
        h[t] = cur
        cur = omega + coef[t] * cur
    return h


@dataclass(frozen=True, slots=True)
class FactorPaths:
    """Daily market and sector factors: overnight and intraday log returns and variances."""

    regime: np.ndarray  # (n,) 0 calm, 1 volatile
    gap: np.ndarray  # (n, 1 + n_sectors) overnight log return, market first
    intraday: np.ndarray  # (n, 1 + n_sectors) open-to-close log return
    var: np.ndarray  # (n, 1 + n_sectors) daily variance
    key: np.ndarray  # Philox key of the factors' intraday streams


def factor_paths(*, seed: int, n_days: int, n_sectors: int, annual_vol: float) -> FactorPaths:
    """Simulate the market (GARCH x regime) and sector factors from the epoch, one row a day."""
    k = 1 + n_sectors
    z = philox(stream_key(seed, "factors-daily")).standard_normal((n_days, 2 * k))
    regime = _regimes(philox(stream_key(seed, "regime")).random(n_days))
    zg, zi = z[:, :k], z[:, k:]
    eps = np.sqrt(OVERNIGHT_SHARE) * zg + np.sqrt(1 - OVERNIGHT_SHARE) * zi
    h = np.empty((n_days, k))
    h[:, :1] = _garch(eps[:, :1], GARCH["market"])
    h[:, 1:] = _garch(eps[:, 1:], GARCH["sector"])
    base = np.array([MARKET_SHARE] + [SECTOR_SHARE] * n_sectors) ** 2 * annual_vol**2
    mult = np.column_stack([REGIME_MULT_MARKET[regime]] + [REGIME_MULT_OTHER[regime]] * n_sectors)
    var = base / TRADING_DAYS * h * mult
    sd = np.sqrt(var)
    return FactorPaths(
        regime=regime,
        gap=np.sqrt(OVERNIGHT_SHARE) * sd * zg,
        intraday=np.sqrt(1 - OVERNIGHT_SHARE) * sd * zi,
        var=var,
        key=stream_key(seed, "factors-intraday"),
    )


@dataclass(frozen=True, slots=True)
class SymbolPaths:
    """Daily state of one symbol (arrays over sessions from the epoch)."""

    log_open: np.ndarray  # log price at the session open (after the overnight gap)
    idio_intraday: np.ndarray  # idiosyncratic open-to-close log return
    idio_var: np.ndarray  # idiosyncratic daily variance
    volume_factor: np.ndarray  # daily volume multiplier (higher on volatile days)
    log_close: np.ndarray  # log price at the session close (what the 1Day bar closes at)


def trend_drift(traits: list[Traits], n: int, trend: float) -> np.ndarray:
    """Return the planted daily drift of each symbol, shape ``(n, symbols)``.

    ``mu_t = phi * mu_{t-1} + sqrt(1 - phi^2) * trend * sd_i * xi_t`` with ``phi =``
    :data:`TREND_PERSISTENCE`, ``sd_i`` the symbol's average daily volatility and ``mu_0`` drawn
    from the stationary law ``N(0, (trend * sd_i)^2)``; each symbol has its own stream.
    """
    phi = TREND_PERSISTENCE
    xi = np.stack(
        [philox(stream_key("trend", *t.daily_key.tolist())).standard_normal(n) for t in traits]
    )
    sd = trend * np.sqrt([t.daily_var for t in traits])
    mu = np.empty((n, len(traits)))
    cur = sd * xi[:, 0]
    inno = math.sqrt(1.0 - phi * phi) * sd[:, None] * xi
    for i in range(n):
        mu[i] = cur
        if i + 1 < n:
            cur = phi * cur + inno[:, i + 1]
    return mu


def symbol_paths(
    traits: list[Traits],
    factors: FactorPaths,
    *,
    trend: float = 0.0,
    session_scale: np.ndarray | None = None,
) -> list[SymbolPaths]:
    """Simulate the daily idiosyncratic state and price level of each symbol from the epoch.

    Each symbol draws from its own stream, so a symbol's path never depends on the others. With
    ``trend > 0`` the symbol's daily log return carries the persistent drift of
    :func:`trend_drift`, split between the overnight gap and the session like the variance.
    ``session_scale`` (one per session) multiplies the open-to-close log return (the planted
    VWAP reversion reverts part of the session's moves before the close).
    """
    n = factors.gap.shape[0]
    z = np.stack([philox(t.daily_key).standard_normal((n, 3)) for t in traits], axis=1)
    zg, zi, zv = z[..., 0], z[..., 1], z[..., 2]
    eps = np.sqrt(OVERNIGHT_SHARE) * zg + np.sqrt(1 - OVERNIGHT_SHARE) * zi
    idio_avg = np.array([t.idio_var for t in traits])
    idio_var = idio_avg * _garch(eps, GARCH["idio"]) * REGIME_MULT_OTHER[factors.regime][:, None]
    sd = np.sqrt(idio_var)
    beta = np.array([t.beta for t in traits])
    sector = np.array([1 + t.sector for t in traits])
    gap = beta * factors.gap[:, :1] + factors.gap[:, sector] + np.sqrt(OVERNIGHT_SHARE) * sd * zg
    idio_intraday = np.sqrt(1 - OVERNIGHT_SHARE) * sd * zi
    if trend > 0:
        mu = trend_drift(traits, n, trend)
        gap = gap + OVERNIGHT_SHARE * mu
        idio_intraday = idio_intraday + (1 - OVERNIGHT_SHARE) * mu
    intraday = beta * factors.intraday[:, :1] + factors.intraday[:, sector] + idio_intraday
    if session_scale is not None:
        intraday = intraday * session_scale[:, None]
    log_p0 = np.log([t.price0 for t in traits])
    log_close = log_p0 + np.cumsum(gap + intraday, axis=0)
    prev_close = np.vstack([log_p0[None, :], log_close[:-1]])
    total_var = beta**2 * factors.var[:, :1] + factors.var[:, sector] + idio_var
    avg_var = np.array([t.daily_var for t in traits])
    vfac = (total_var / avg_var) ** 0.4 * np.exp(0.3 * zv - 0.045)
    return [
        SymbolPaths(
            log_open=prev_close[:, j] + gap[:, j],
            idio_intraday=idio_intraday[:, j],
            idio_var=idio_var[:, j],
            volume_factor=vfac[:, j],
            log_close=log_close[:, j],
        )
        for j in range(len(traits))
    ]
