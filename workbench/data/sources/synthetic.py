"""The embedded market simulator: the default offline data source (``data.source: synthetic``).

Seeded, deterministic and window-independent: the bars of a symbol do not depend on which window
or which other symbols are requested, so chunked, resumed ingests equal one big fetch.

Model
-----
Time runs over the sessions of the exchange calendar from :data:`EPOCH` (the first session on or
after 2015-01-01); windows before it are empty.

*Symbols.* Traits come from a blake2b hash of ``(seed, symbol)``: sector ``k ~ U{0..n_sectors-1}``,
``beta ~ U(0.6, 1.4)``, annual volatility ``annual_vol * LogN(0, 0.3)``, a starting price
``start_price * LogN(0, 0.4)``, volume and spread scales and a mean trade size (all mean-one
log-normal scales).

*Daily latent state*, simulated sequentially from the epoch (cheap at daily resolution). The market
factor ``M``, sector factors ``S_k`` and idiosyncratic parts ``E_i`` each have daily variance
``v_d = base * h_d * m(regime_d)``: ``h`` is a GARCH(1,1) on the standardised daily shock
(``h' = omega + (a * eps^2 + b) * h``, mean 1) and the regime a two-state Markov chain (calm,
volatile; ``P(calm->volatile) = 0.02``, ``P(volatile->calm) = 0.08``; variance multipliers 0.625 and
2.5 for the market, 0.8 and 1.8 for the rest). Base volatilities: market ``0.6 * annual_vol``,
sectors ``0.35 * annual_vol``, the idiosyncratic part the rest of the symbol's variance (at least a
quarter). Each daily shock splits into an overnight gap (15 % of the variance) and an
open-to-close part. A symbol's daily log return is ``beta_i * M + S_{k_i} + E_i``; the session
open is the previous close times ``exp(gap)``. Log prices have no drift.

*Intraday paths*, from counter-based Philox streams keyed by ``(seed, symbol or factor, session
date)``. Each component's open-to-close return is spread over the ``n`` minutes of the session as
Gaussian increments with U-shaped variance shares ``w_m`` (``sum w = 1``), Brownian-bridged to the
daily total (the exact conditional law, so unconditionally the increments are independent). The
natural one-minute log return is ``x_m = beta * f_m + s_m + e_m``.

*Planted alpha* (5Min bars inside a session). Let ``n_k`` be the natural log return of 5Min bar
``k``, ``sigma_k`` its standard deviation and ``r_k = log(close_k / open_k)`` the bar's return. Then
``r_0 = n_0`` and, for ``k >= 1``::

    r_k = -alpha * (sigma_k / sigma_{k-1}) * r_{k-1} + sqrt(1 - alpha^2) * n_k

so the standardised returns ``y_k = r_k / sigma_k`` follow ``y_k = alpha * s_{k-1} +
sqrt(1 - alpha^2) * nu_k`` with the standardised signal ``s_{k-1} = -y_{k-1}`` and unit noise
``nu_k``: the information coefficient ``corr(s_{k-1}, y_k)`` is exactly ``alpha``
(:attr:`SyntheticSource.planted_ic`). Bar ``k``'s drift is spread over its minutes in proportion to
``w_m``; then the session's path is re-bridged to the daily close (a correction of about
``alpha / sqrt(78)`` of a bar's standard deviation), which keeps daily closes, and so every
window, independent of the intraday draws. With ``alpha = 0`` log prices are martingales at every
timeframe: direction is unpredictable, only variance clusters.

*The observable signal* is :func:`planted_signal`: ``-log(close_t / open_t)`` of a 5Min bar (inside a
session ``open_t == close_{t-1}``), computed from that bar alone. It predicts the next 5Min bar's
close-to-close return **in the same session**; its pooled Pearson IC is ``alpha`` up to the
variation of ``sigma_k / sigma_{k-1}`` near the open and the re-bridging (about ``0.95 * alpha``
measured; the first bar of a session, carrying the overnight gap, is not predictable: drop pairs
that cross sessions, or expect about ``0.9 * alpha`` with them). Against an ``h``-bar forward return the IC is
:meth:`SyntheticSource.expected_ic`. The edge lives at 5Min; coarser bars keep a diluted trace.

*Planted reversion to the session VWAP* (``vwap_reversion = beta``, 5Min bars inside a session).
Let ``L_k`` be bar ``k``'s log close over the session open, ``P_j = (L_{j-1} + L_j) / 2`` the
bar's mid (``L_{-1} = 0``), ``omega_j`` its share of the expected volume profile and
``A_k = sum_{j<=k} omega_j P_j / sum_{j<=k} omega_j`` the expected-volume-weighted session mean:
the session VWAP of the bars up to ``k`` with the noise of the volumes left out. With the VWAP
deviation ``D_k = L_k - A_k`` and ``g_k sigma`` its standard deviation on a martingale path
(``sigma`` the session's volatility; :func:`~workbench.data.sources._synthetic_paths.vwap_plan`),
for ``k >= 1``::

    r_k = -alpha (sigma_k / sigma_{k-1}) r_{k-1} - beta sigma_k D_{k-1} / (g_{k-1} sigma)
          + sqrt(1 - alpha^2 - beta^2) n_k

a linear map ``r = m n`` of the natural bar returns: the standardised next return is pulled
against the standardised deviation from the session VWAP, whose pull persists over the following
bars while the deviation lasts (it reverts over roughly ``g / beta`` bars). The reversion also
shrinks the session's open-to-close variance to ``q`` times a martingale's (``q = 0.44`` at
``beta = 0.1``, ``0.26`` at 0.2); the daily state's session returns are scaled by ``sqrt(q)``, and
each session's bar returns are drawn from the map's law conditioned exactly on that total (the
natural draws with a fresh total, mapped, then conditioned: unconditionally they follow the map
exactly), so daily closes and every window stay independent of the intraday draws. The
observable signal is :func:`vwap_signal`, ``-log(close_t / VWAP_t)`` with the bars' own session
VWAP; its IC against the next 5Min close-to-close return in the session is
:func:`vwap_expected_ic` (exact for ``-D``: 0.0735 at ``beta = 0.1``, 0.1248 at 0.2, 0.166 at
0.3); the bars' VWAP, whose volumes are noisy, reads it about 0.005 lower (measured on 8 symbols
over a quarter: 0.069 and 0.121, standard error 0.005). Measure it without demeaning inside a
session (a deviation from the session's mean correlates with the session's mean return in a
sample): the per-session ``sum(s r) / sqrt(sum s^2 sum r^2)``. With ``beta = 0`` the bars are
those of the model without it, bit for bit.

*Planted multi-day trend* (``trend = tau``). Each symbol's daily log return carries a drift
``mu_t = phi mu_{t-1} + sqrt(1 - phi^2) tau sd_i xi_t`` (``phi =``
:data:`~workbench.data.sources._synthetic_model.TREND_PERSISTENCE` ``= 0.9`` a session, a
half-life of 6.6 sessions; ``sd_i`` the symbol's average daily volatility; stationary from the
epoch; its own random stream), 15 % of it in the overnight gap and the rest spread over the
session with the day's variance (holding overnight collects all of it). The ``N``-session
momentum ``log(close_t / close_{t-N})`` then predicts the next ``H`` sessions' return
``log(close_{t+H} / close_t)`` with :func:`trend_expected_ic` (0.103 at ``tau = 0.2``, 0.196 at 0.3
for ``N = H = 5``; exact for the pooled Pearson IC); intraday, the drift is a slow tilt of the 5Min
returns. :meth:`SyntheticSource.daily_closes` gives the daily closes over years without
simulating a minute. With ``tau = 0`` the bars are unchanged, bit for bit.

*Bars.* One-minute open and close are mid prices; high and low are exact draws of the maximum and
minimum of a Brownian bridge with the minute's variance, widened by half the quoted spread
(``base_spread_bps`` at midday, U-shaped). Volume: ``base_volume / 5`` shares per minute at midday
times the symbol scale, a daily factor (``(v_d / mean v)^0.4 * LogN``), a U-shaped profile,
exponential noise and an activity term rising with ``|x_m| / sd``, rounded, at least 1.
``trade_count = volume / (trade size * U(0.6, 1.4))``, at least 1. ``vwap`` is a random convex mix
of ``(open + close) / 2`` and ``(high + low) / 2``. Coarser timeframes (5Min, 15Min, 1Hour, 1Day) are
exact aggregations of the same one-minute bars (first open, max high, min low, last close, summed
volume and trades, volume-weighted vwap), clock-aligned like Alpaca's (see
:mod:`workbench.data.calendar`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from workbench.data.calendar import get_calendar
from workbench.data.schema import BAR_SCHEMA, empty_bars
from workbench.data.sources import _synthetic_model as model
from workbench.data.sources._synthetic_paths import (
    Rows,
    VwapPlan,
    aggregate,
    factor_minutes,
    minute_bars,
    segment_starts,
    vwap_plan,
    vwap_plan_ic,
)
from workbench.data.sources.base import register_source
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig

GENERATOR_VERSION = "1"
EPOCH = model.EPOCH
PLANTED_TIMEFRAME = "5Min"  # the bar length at which the alpha is planted
_MINUTE_US = 60_000_000
_CHUNK_MINUTES = 1_500_000  # symbol-minutes simulated at once (bounds memory)


def planted_signal_expr() -> pl.Expr:
    """Return the polars expression of the planted signal: ``-log(close / open)`` of the bar.

    See :func:`planted_signal`.
    """
    return -(pl.col("close") / pl.col("open")).log().alias("planted_signal")


def planted_signal(bars: pl.DataFrame) -> pl.Series:
    """Compute the planted signal of each bar from that bar alone (no look-ahead).

    ``s_t = -log(close_t / open_t)``: minus the bar's own log return (inside a session the open of a
    5Min bar is the previous bar's close). On 5Min bars it predicts the next bar's close-to-close
    return in the same session with information coefficient :attr:`SyntheticSource.planted_ic`.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars with ``open`` and ``close`` (any row order; rows are not mixed).

    Returns
    -------
    pl.Series
        ``planted_signal``, aligned with the rows of ``bars``.
    """
    missing = [c for c in ("open", "close") if c not in bars.columns]
    if missing:
        raise ConfigError(
            f"planted_signal needs bar columns ['open', 'close']; missing {missing} in "
            f"{bars.columns}. Fix: pass bars from a source or the store."
        )
    return bars.select(planted_signal_expr()).to_series()


def expected_ic(alpha: float, horizon: int = 1) -> float:
    """Return the IC of the planted signal against the ``horizon``-bar forward 5Min return.

    Exact for the standardised returns (an AR(1) with coefficient ``-alpha``) when the forward
    window stays inside the session; ``horizon=1`` gives ``alpha``.
    """
    if horizon < 1:
        raise ConfigError(f"horizon must be an int >= 1. Got {horizon!r} instead.")
    phi = -alpha
    cov = -sum(phi**j for j in range(1, horizon + 1))
    var = horizon + 2 * sum((horizon - k) * phi**k for k in range(1, horizon))
    return cov / math.sqrt(var)


def vwap_signal_expr(tz: str = "America/New_York") -> pl.Expr:
    """Return the polars expression of :func:`vwap_signal` (rows sorted by ``symbol, ts``)."""
    day = pl.col("ts").dt.convert_time_zone(tz).dt.date()
    pv = (pl.col("vwap") * pl.col("volume")).cum_sum().over("symbol", day)
    v = pl.col("volume").cum_sum().over("symbol", day)
    return -(pl.col("close") / (pv / v)).log().alias("vwap_signal")


def vwap_signal(bars: pl.DataFrame, tz: str = "America/New_York") -> pl.Series:
    """Compute the VWAP-reversion signal of each bar from the session's bars up to it.

    ``s_t = -log(close_t / VWAP_t)`` with ``VWAP_t`` the session's volume-weighted average price
    over its bars up to and including ``t`` (from the bars' ``vwap`` and ``volume``). On 5Min
    bars it predicts the next bar's close-to-close return in the same session with IC
    :func:`vwap_expected_ic` of the simulator's ``vwap_reversion``.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars with ``symbol, ts, close, vwap, volume``, sorted by ``(symbol, ts)``.
    tz : str
        Time zone whose dates delimit sessions.

    Returns
    -------
    pl.Series
        ``vwap_signal``, aligned with the rows of ``bars``.
    """
    missing = [c for c in ("symbol", "ts", "close", "vwap", "volume") if c not in bars.columns]
    if missing:
        raise ConfigError(
            f"vwap_signal needs bar columns ['symbol', 'ts', 'close', 'vwap', 'volume']; missing "
            f"{missing} in {bars.columns}. Fix: pass bars from a source or the store."
        )
    return bars.select(vwap_signal_expr(tz)).to_series()


def vwap_expected_ic(vwap_reversion: float, alpha: float = 0.0) -> float:
    """Return the IC of the planted VWAP deviation against the next 5Min return in the session.

    The pooled Pearson IC of ``-D_{k-1}`` and ``r_k`` over a regular 390-minute session, exact
    under the planted linear law (:func:`~workbench.data.sources._synthetic_paths.vwap_plan_ic`).
    :func:`vwap_signal` (the bars' own session VWAP, whose volumes are noisy) measures it within
    its standard error; see the module docstring.
    """
    if not (0.0 <= vwap_reversion < 1.0 and 0.0 <= alpha < 1.0) or (
        alpha * alpha + vwap_reversion * vwap_reversion >= 1.0
    ):
        raise ConfigError(
            f"vwap_reversion and alpha must be floats in [0, 1) with alpha^2 + vwap_reversion^2 "
            f"< 1. Got {vwap_reversion!r} and {alpha!r} instead."
        )
    if vwap_reversion == 0.0:
        return 0.0
    return vwap_plan_ic(vwap_plan(390, 570, float(alpha), float(vwap_reversion)))


def trend_expected_ic(trend: float, lookback: int = 5, horizon: int = 5) -> float:
    """Return the IC of the ``lookback``-session momentum against the next ``horizon`` sessions.

    With daily log returns ``R_t = mu_t + e_t`` (``mu`` the planted AR(1) drift of coefficient
    ``phi`` and standard deviation ``trend`` in units of the daily volatility, ``e`` the rest of
    unit variance), the signal ``m_t = R_{t-N+1} + ... + R_t`` and the target
    ``F_t = R_{t+1} + ... + R_{t+H}`` have ``cov = trend^2 phi (1 - phi^N)(1 - phi^H) / (1 - phi)^2``
    and ``var(m) = N + trend^2 (N + 2 sum_{k<N} (N - k) phi^k)`` (likewise ``var(F)``); the IC is
    ``cov / sqrt(var(m) var(F))``. Exact for the population (pooled Pearson) correlation.
    """
    for name, v in (("lookback", lookback), ("horizon", horizon)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be an int >= 1. Got {v!r} instead.")
    if not 0.0 <= trend <= 1.0:
        raise ConfigError(f"trend must be a float in [0, 1]. Got {trend!r} instead.")
    phi = model.TREND_PERSISTENCE
    t2 = trend * trend
    cov = t2 * phi * (1 - phi**lookback) * (1 - phi**horizon) / (1 - phi) ** 2

    def var(n: int) -> float:
        return n + t2 * (n + 2 * sum((n - k) * phi**k for k in range(1, n)))

    return cov / math.sqrt(var(lookback) * var(horizon))


def _to_us(value: datetime, what: str) -> int:
    if not isinstance(value, datetime):
        raise SourceError(
            f"{what} must be a datetime, got {type(value).__name__} {value!r}. "
            "Fix: pass datetime(2024, 1, 2, tzinfo=UTC) (naive values are read as UTC)."
        )
    v = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return (v - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@register_source("synthetic")
class SyntheticSource:
    """Simulated bars of a factor-structured market with a known planted edge.

    Parameters mirror :class:`workbench.config.SimulatorConfig`; see the module docstring for the
    model and the exact formulas of the planted edges.

    Parameters
    ----------
    seed : int
        Master seed: same seed, same bars.
    alpha : float
        Planted predictability in ``[0, 1)``: the IC of :func:`planted_signal` for the next 5Min
        return. 0 gives a martingale.
    vwap_reversion : float
        Planted reversion to the session VWAP in ``[0, 1)`` (``alpha^2 + vwap_reversion^2 < 1``):
        the pull of the standardised VWAP deviation on the next 5Min return; its IC is
        :func:`vwap_expected_ic`. 0: none.
    trend : float
        Planted multi-day drift in ``[0, 1]``: its standard deviation in units of the symbol's
        daily volatility; the momentum IC is :func:`trend_expected_ic`. 0: none.
    n_sectors : int
        Number of sector factors (>= 1).
    start_price : float
        Mean price before the first session (> 0).
    annual_vol : float
        Mean annualised volatility of a symbol (> 0).
    base_volume : float
        Mean shares per 5 minutes at midday (> 0).
    base_spread_bps : float
        Mean quoted spread at midday in bps (>= 0); widens highs and lows.
    calendar : str
        exchange_calendars code of the sessions.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> src = SyntheticSource(seed=7, alpha=0.05)
    >>> bars = src.fetch(["SYN000"], "5Min", datetime(2024, 7, 3, tzinfo=UTC),
    ...                  datetime(2024, 7, 4, tzinfo=UTC))
    >>> bars.height  # 09:30-13:00 ET on an early-close day
    42
    """

    name = "synthetic"

    def __init__(
        self,
        *,
        seed: int = 7,
        alpha: float = 0.0,
        vwap_reversion: float = 0.0,
        trend: float = 0.0,
        n_sectors: int = 3,
        start_price: float = 100.0,
        annual_vol: float = 0.25,
        base_volume: float = 50_000.0,
        base_spread_bps: float = 4.0,
        calendar: str = "XNYS",
    ) -> None:
        checks = [
            ("seed", isinstance(seed, int) and not isinstance(seed, bool), "an int", seed),
            ("alpha", 0.0 <= alpha < 1.0, "a float in [0, 1)", alpha),
            ("vwap_reversion", 0.0 <= vwap_reversion < 1.0, "a float in [0, 1)", vwap_reversion),
            ("trend", 0.0 <= trend <= 1.0, "a float in [0, 1]", trend),
            ("n_sectors", isinstance(n_sectors, int) and n_sectors >= 1, "an int >= 1", n_sectors),
            ("start_price", start_price > 0, "a float > 0", start_price),
            ("annual_vol", 0 < annual_vol <= 5, "a float in (0, 5]", annual_vol),
            ("base_volume", base_volume > 0, "a float > 0", base_volume),
            (
                "base_spread_bps",
                0 <= base_spread_bps <= 1000,
                "a float in [0, 1000]",
                base_spread_bps,
            ),
        ]
        for pname, ok, want, got in checks:
            if not ok:
                raise ConfigError(
                    f"The {pname!r} parameter of SyntheticSource must be {want}. Got {got!r} instead."
                )
        if alpha * alpha + vwap_reversion * vwap_reversion >= 1.0:
            raise ConfigError(
                f"The 'alpha' ({alpha!r}) and 'vwap_reversion' ({vwap_reversion!r}) parameters of "
                "SyntheticSource share the next bar's variance: alpha^2 + vwap_reversion^2 must be "
                "below 1. Fix: lower one of them (e.g. 0.25 and 0.15)."
            )
        get_calendar(calendar)  # fail early on an unknown code
        self.seed = int(seed)
        self.alpha = float(alpha)
        self.vwap_reversion = float(vwap_reversion)
        self.trend = float(trend)
        self.n_sectors = int(n_sectors)
        self.start_price = float(start_price)
        self.annual_vol = float(annual_vol)
        self.base_volume = float(base_volume)
        self.base_spread_bps = float(base_spread_bps)
        self.calendar = calendar
        self._factors: model.FactorPaths | None = None
        self._traits: dict[str, model.Traits] = {}
        self._paths: dict[str, model.SymbolPaths] = {}

    @classmethod
    def from_config(cls, cfg: WorkbenchConfig) -> SyntheticSource:
        """Build the source from ``cfg.simulator`` and the calendar of ``cfg.data``."""
        return cls(**cfg.simulator.model_dump(), calendar=cfg.data.calendar)

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(seed={self.seed}, alpha={self.alpha}, "
            f"vwap_reversion={self.vwap_reversion}, trend={self.trend}, "
            f"n_sectors={self.n_sectors}, calendar={self.calendar!r})"
        )

    @property
    def planted_ic(self) -> float:
        """The true IC of :func:`planted_signal` for the next 5Min return in the session."""
        return self.alpha

    def expected_ic(self, horizon: int = 1) -> float:
        """Return the planted signal's IC against the ``horizon``-bar forward 5Min return."""
        return expected_ic(self.alpha, horizon)

    @property
    def planted_vwap_ic(self) -> float:
        """The expected IC of :func:`vwap_signal` for the next 5Min return in the session."""
        return vwap_expected_ic(self.vwap_reversion, self.alpha)

    def trend_expected_ic(self, lookback: int = 5, horizon: int = 5) -> float:
        """Return the IC of the ``lookback``-session momentum against the next ``horizon``
        sessions' return (:func:`trend_expected_ic`)."""
        return trend_expected_ic(self.trend, lookback, horizon)

    def provenance(self) -> dict[str, str]:
        """Describe the generator and every parameter that changes the bars.

        The planted edges added later (``vwap_reversion``, ``trend``) appear only when set, so
        the provenance of a store written before they existed still matches.
        """
        planted = {
            k: repr(v)
            for k, v in (("vwap_reversion", self.vwap_reversion), ("trend", self.trend))
            if v
        }
        return {
            **planted,
            "source": "synthetic",
            "generator": f"workbench-synthetic/{GENERATOR_VERSION}",
            "seed": str(self.seed),
            "alpha": repr(self.alpha),
            "n_sectors": str(self.n_sectors),
            "start_price": repr(self.start_price),
            "annual_vol": repr(self.annual_vol),
            "base_volume": repr(self.base_volume),
            "base_spread_bps": repr(self.base_spread_bps),
            "calendar": self.calendar,
            "epoch": EPOCH.isoformat(),
        }

    # ------------------------------------------------------------------ latent state

    def _trait(self, symbol: str) -> model.Traits:
        if symbol not in self._traits:
            self._traits[symbol] = model.symbol_traits(
                symbol,
                seed=self.seed,
                n_sectors=self.n_sectors,
                start_price=self.start_price,
                annual_vol=self.annual_vol,
                base_volume=self.base_volume,
                base_spread_bps=self.base_spread_bps,
            )
        return self._traits[symbol]

    def _factor_paths(self) -> model.FactorPaths:
        if self._factors is None:
            self._factors = model.factor_paths(
                seed=self.seed,
                n_days=len(model.schedule(self.calendar)),
                n_sectors=self.n_sectors,
                annual_vol=self.annual_vol,
            )
        return self._factors

    def _plan(self, n: int, local_open: int) -> VwapPlan | None:
        if not self.vwap_reversion:
            return None
        return vwap_plan(n, local_open, self.alpha, self.vwap_reversion)

    def _session_scale(self) -> np.ndarray | None:
        """``sqrt(q)`` of each session's VWAP-reversion plan (None without one)."""
        if not self.vwap_reversion:
            return None
        sch = model.schedule(self.calendar)
        out = np.empty(len(sch))
        sig = np.stack([sch.minutes, sch.local_open], axis=1)
        for n, local_open in np.unique(sig, axis=0).tolist():
            plan = self._plan(n, local_open)
            assert plan is not None
            out[(sig[:, 0] == n) & (sig[:, 1] == local_open)] = math.sqrt(plan.q)
        return out

    def _symbol_paths(self, symbols: list[str]) -> list[model.SymbolPaths]:
        todo = [s for s in symbols if s not in self._paths]
        if todo:
            made = model.symbol_paths(
                [self._trait(s) for s in todo],
                self._factor_paths(),
                trend=self.trend,
                session_scale=self._session_scale(),
            )
            self._paths.update(zip(todo, made, strict=True))
        return [self._paths[s] for s in symbols]

    def symbol_info(self, symbols: Sequence[str]) -> pl.DataFrame:
        """Return each symbol's fixed traits: sector, beta, annual volatility, starting price.

        Parameters
        ----------
        symbols : sequence of str

        Returns
        -------
        pl.DataFrame
            Columns ``symbol, sector, beta, annual_vol, start_price``.
        """
        ts = [self._trait(s) for s in self._check_symbols(symbols)]
        return pl.DataFrame(
            {
                "symbol": [t.symbol for t in ts],
                "sector": [t.sector for t in ts],
                "beta": [t.beta for t in ts],
                "annual_vol": [math.sqrt(t.daily_var * model.TRADING_DAYS) for t in ts],
                "start_price": [t.price0 for t in ts],
            }
        )

    def daily_closes(self, symbols: Sequence[str]) -> pl.DataFrame:
        """Return every session's close of ``symbols`` from the epoch on, from the daily state.

        The closes of the ``1Day`` bars without simulating a minute (cheap over years): the
        intraday paths, planted edges included, are bridged to these closes.

        Returns
        -------
        pl.DataFrame
            Columns ``symbol, session, close``, sorted by ``(symbol, session)``.
        """
        syms = self._check_symbols(symbols)
        dates = model.schedule(self.calendar).dates
        paths = self._symbol_paths(syms)
        return pl.DataFrame(
            {
                "symbol": np.repeat(syms, len(dates)),
                "session": np.tile(dates, len(syms)),
                "close": np.exp(np.concatenate([p.log_close for p in paths])),
            }
        ).with_columns(pl.col("session").cast(pl.Date))

    # ------------------------------------------------------------------ fetch

    @staticmethod
    def _check_symbols(symbols: Sequence[str]) -> list[str]:
        if isinstance(symbols, str) or not all(isinstance(s, str) and s for s in symbols):
            raise SourceError(
                f"symbols must be a sequence of non-empty strings, got {symbols!r}. "
                "Fix: pass a list such as ['SYN000', 'SYN001']."
            )
        return sorted(set(symbols))

    def fetch(
        self, symbols: Sequence[str], timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Return simulated bars of ``symbols`` with ``start <= ts < end``.

        Parameters
        ----------
        symbols : sequence of str
            Any non-empty strings; each symbol's bars depend only on the seed and the symbol.
        timeframe : str or Timeframe
            ``1Min``, ``5Min``, ``15Min``, ``1Hour`` or ``1Day``.
        start, end : datetime
            Half-open UTC window (naive means UTC). Sessions before :data:`EPOCH` have no bars.

        Returns
        -------
        pl.DataFrame
            Bars satisfying :func:`workbench.data.schema.validate_bars`, sorted by ``(symbol, ts)``.
        """
        tf = Timeframe.parse(timeframe)
        syms = self._check_symbols(symbols)
        lo, hi = _to_us(start, "start"), _to_us(end, "end")
        sch = model.schedule(self.calendar)
        close_us = sch.open_us + sch.minutes * _MINUTE_US
        first_us = np.minimum(sch.daily_stamp_us, sch.open_us - 60 * _MINUTE_US)
        days = np.flatnonzero((close_us > lo) & (first_us < hi))
        if not syms or hi <= lo or len(days) == 0:
            return empty_bars()
        if days[-1] == len(sch) - 1 and hi > close_us[-1]:
            raise SourceError(
                f"the {self.calendar} calendar ends on {sch.dates[-1]}; cannot simulate up to "
                f"{end!r}. Fix: request an earlier end."
            )
        every = tf.minutes if tf.is_intraday else None
        # bars per session and each session's first bar within a symbol's output
        n_bars = np.array(
            [len(segment_starts(int(sch.local_open[d]), int(sch.minutes[d]), every)) for d in days]
        )
        offset = np.concatenate([[0], np.cumsum(n_bars)[:-1]])
        per_symbol = int(n_bars.sum())
        cols = {
            "ts": np.empty(len(syms) * per_symbol, dtype=np.int64),
            **{
                c: np.empty(len(syms) * per_symbol, dtype=np.float64)
                for c in ("open", "high", "low", "close", "volume", "vwap")
            },
            "trade_count": np.empty(len(syms) * per_symbol, dtype=np.int64),
        }
        self._simulate(syms, days, every, offset, per_symbol, cols)
        out = pl.DataFrame(
            {
                "symbol": pl.Series("symbol", syms, dtype=pl.String).gather(
                    np.repeat(np.arange(len(syms)), per_symbol)
                ),
                "ts": pl.Series("ts", cols["ts"])
                .cast(pl.Datetime("us"))
                .dt.replace_time_zone("UTC"),
                **{c: cols[c] for c in ("open", "high", "low", "close", "volume", "vwap")},
                "trade_count": cols["trade_count"],
            },
            schema=BAR_SCHEMA,
        )
        ts = pl.col("ts").dt.epoch("us")
        return out.filter((ts >= lo) & (ts < hi))

    def _simulate(
        self,
        syms: list[str],
        days: np.ndarray,
        every: int | None,
        offset: np.ndarray,
        per_symbol: int,
        cols: dict[str, np.ndarray],
    ) -> None:
        sch = model.schedule(self.calendar)
        factors = self._factor_paths()
        traits = [self._trait(s) for s in syms]
        paths = self._symbol_paths(syms)
        n_sym = len(syms)
        keys = np.stack([t.key for t in traits])
        beta = np.array([t.beta for t in traits])
        sector = np.array([1 + t.sector for t in traits])
        vol_1min = np.array([t.volume_1min for t in traits])
        half_spread = np.array([t.half_spread for t in traits])
        trade_size = np.array([t.trade_size for t in traits])
        daily = {
            f: np.stack([getattr(p, f)[days] for p in paths])  # (symbols, sessions)
            for f in ("log_open", "idio_intraday", "idio_var", "volume_factor")
        }
        sig = np.stack([sch.minutes[days], sch.local_open[days]], axis=1)
        for n, local_open in np.unique(sig, axis=0).tolist():
            group = np.flatnonzero((sig[:, 0] == n) & (sig[:, 1] == local_open))
            prof = model.profiles(n)
            starts = segment_starts(local_open, n, every)
            plant = segment_starts(local_open, n, 5)
            stamp_min = ((local_open + starts) // every) * every - local_open if every else None
            step = max(1, _CHUNK_MINUTES // (n * n_sym))
            for c0 in range(0, len(group), step):
                gi = group[c0 : c0 + step]  # positions in `days`
                d = days[gi]  # positions in the schedule
                fmin = factor_minutes(
                    factors.key, sch.ordinals[d], factors.intraday[d], factors.var[d], prof
                )
                # rows: symbol-major, then session
                si = np.repeat(np.arange(n_sym), len(d))
                di = np.tile(np.arange(len(d)), n_sym)
                sd_, wi = d[di], gi[di]
                rows = Rows(
                    keys=keys[si],
                    ordinals=sch.ordinals[sd_],
                    day=di,
                    beta=beta[si],
                    sector=sector[si],
                    log_open=daily["log_open"][si, wi],
                    idio_intraday=daily["idio_intraday"][si, wi],
                    idio_var=daily["idio_var"][si, wi],
                    factor_var=beta[si] ** 2 * factors.var[sd_, 0] + factors.var[sd_, sector[si]],
                    volume_1min=vol_1min[si] * daily["volume_factor"][si, wi],
                    half_spread=half_spread[si],
                    trade_size=trade_size[si],
                )
                bars = aggregate(
                    minute_bars(
                        rows,
                        fmin,
                        prof,
                        alpha=self.alpha,
                        plant_starts=plant,
                        plan=self._plan(n, local_open),
                    ),
                    starts,
                )
                if every is None:
                    ts = sch.daily_stamp_us[sd_][:, None]
                else:
                    ts = sch.open_us[sd_][:, None] + stamp_min * _MINUTE_US
                pos = (si * per_symbol + offset[wi])[:, None] + np.arange(len(starts))
                cols["ts"][pos] = ts
                for c, v in bars.items():
                    cols[c][pos] = v
