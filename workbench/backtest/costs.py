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

With ``costs.model: learned`` a :class:`SlippageCurve` (fitted on fills by
:mod:`workbench.execution.slippage`, read from ``costs.slippage_path``) replaces the half-spread,
the slippage and the impact, term for term in the same kernel: ``fixed[symbol]`` bps as the
half-spread, ``tod[bucket(fill bar)]`` bps as the fill row's slippage and
``impact[symbol] * sigma * sqrt(shares / volume)`` as the impact (commission and borrow stay as
configured). The backtest then charges exactly what :meth:`SlippageCurve.bps` forecasts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from workbench.backtest._kernels import estimates_nb, frozen
from workbench.config import CostsConfig, find_project_root
from workbench.errors import ConfigError, StoreError

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
    curve: SlippageCurve | None = None  # the learned curve (``costs.model: learned``)

    @classmethod
    def from_config(
        cls, costs: CostsConfig | None = None, *, curve: SlippageCurve | None = None
    ) -> CostModel:
        """Build the model from a costs config (defaults when ``None``).

        With ``costs.model: learned`` the curve is ``curve`` or else the latest version saved
        under ``costs.slippage_path`` (relative paths: the project root).
        """
        c = costs if costs is not None else CostsConfig()
        if c.model == "learned" and curve is None:
            root = Path(c.slippage_path)
            if not root.is_absolute():
                root = find_project_root() / root
            curve = SlippageCurve.load(root)
        return cls(c, curve if c.model == "learned" else None)

    @property
    def impact_param(self) -> float:
        """The kernel's impact coefficient (learned: 1, the per-symbol factor is in ``sigma``)."""
        return 1.0 if self.curve is not None else self.config.impact_coef

    def constant_rows(self, *, intraday: bool) -> tuple[bool, bool]:
        """Whether :meth:`prepare`'s ``slip_row`` and ``borrow_row`` hold one value on every row
        (then the kernel may read a one-row view and save a pass over two ``[T]`` arrays)."""
        c = self.config
        u_shaped = c.slippage_bps > 0 and intraday and c.intraday_u_shape > 0
        return self.curve is None and not u_shaped, c.borrow_bps_annual <= 0

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
        symbols: list[str] | None = None,
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
        symbols : list of str, optional
            Column names; needed by a learned curve (per-symbol costs).

        Returns
        -------
        CostArrays
        """
        c = self.config
        if self.curve is not None:
            if symbols is None or len(symbols) != close.shape[1]:
                raise ConfigError(
                    "backtest.costs.model is 'learned': CostModel.prepare needs the grid's "
                    f"symbols (one per column of close, {close.shape[1]}); got {symbols!r}."
                )
            return self._prepare_learned(close, volume, grid_us, symbols)
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

    def _prepare_learned(
        self, close: np.ndarray, volume: np.ndarray, grid_us: np.ndarray, symbols: list[str]
    ) -> CostArrays:
        curve = self.curve
        assert curve is not None
        hl = np.empty((0, close.shape[1]))
        _, sigma, vol = estimates_nb(
            *frozen(hl, hl, close, volume), float(curve.estimate_span), False, True
        )
        fixed = np.array([[curve.fixed(s) * 1e-4 for s in symbols]])
        k = np.array([[curve.impact_of(s) for s in symbols]])
        return CostArrays(
            np.ascontiguousarray(fixed),
            np.ascontiguousarray(sigma * k),
            np.ascontiguousarray(vol),
            curve.tod_bps_at(grid_us) * 1e-4,
            borrow_by_row(grid_us, self.config.borrow_bps_annual),
        )


_CURVE_SCHEMA = 1


@dataclass(frozen=True)
class SlippageCurve:
    """Learned execution cost of one fill, in bps of the arrival price (always a cost, >= 0).

    ``bps = fixed[symbol] + tod[bucket(ts)] + impact[symbol] * sigma_bps * sqrt(qty / max(volume, 1))``

    ``fixed`` is the symbol's cost of a vanishingly small order (half-spread plus fixed
    slippage), ``tod`` the time-of-day term of the fill bar's bucket (``bucket_minutes`` of the
    regular session from 09:30 New York; the last bucket holds bars outside it and daily bars),
    ``impact`` the square-root impact coefficient on the per-bar volatility ``sigma`` and the
    EWMA bar volume, both of the decision bar (``estimate_span``, the backtest's estimates).
    Symbols the fit never saw get the cross-sectional prior. Built by
    :class:`workbench.execution.slippage.SlippageModel`.
    """

    fixed_bps: dict[str, float]
    impact: dict[str, float]
    tod_bps: tuple[float, ...]
    prior_fixed_bps: float
    prior_impact: float
    bucket_minutes: int = 30
    estimate_span: int = 20
    version: int = 0
    last_estimates: dict[str, tuple[float, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_buckets(self) -> int:
        """Time-of-day buckets, the off-session one included."""
        return len(self.tod_bps)

    def fixed(self, symbol: str) -> float:
        """The symbol's fixed cost in bps (the prior for an unseen symbol)."""
        return float(self.fixed_bps.get(symbol, self.prior_fixed_bps))

    def impact_of(self, symbol: str) -> float:
        """The symbol's impact coefficient (the prior for an unseen symbol)."""
        return float(self.impact.get(symbol, self.prior_impact))

    def tod_bps_at(self, ts_us: np.ndarray) -> np.ndarray:
        """The time-of-day term in bps of bars starting at ``ts_us`` (int64 us, UTC)."""
        b = tod_bucket(np.asarray(ts_us, dtype=np.int64), self.bucket_minutes)
        return np.asarray(self.tod_bps, dtype=float)[np.minimum(b, self.n_buckets - 1)]

    def bps(
        self,
        symbol: str,
        qty: np.ndarray | float,
        ts_us: np.ndarray | int,
        sigma: np.ndarray | float,
        volume: np.ndarray | float,
    ) -> np.ndarray:
        """Return the cost in bps of fills of ``qty`` shares (sign ignored) at ``ts_us``.

        ``sigma`` (per-bar volatility as a fraction) and ``volume`` are the decision bar's
        estimates; a NaN among them drops the impact term, as the backtest kernel does.
        """
        n = np.abs(np.asarray(qty, dtype=float))
        sg = np.asarray(sigma, dtype=float)
        vv = np.asarray(volume, dtype=float)
        ok = ~(np.isnan(sg) | np.isnan(vv))
        # the kernel's arithmetic, in its order: (k * sigma) / sqrt(max(V, 1)) * sqrt(n)
        imp = np.where(ok, (self.impact_of(symbol) * sg) / np.sqrt(np.maximum(vv, 1.0)), 0.0)
        tod = self.tod_bps_at(np.atleast_1d(np.asarray(ts_us, dtype=np.int64)))
        if np.ndim(ts_us) == 0:
            tod = tod[0]
        return self.fixed(symbol) + tod + 1e4 * (imp * np.sqrt(n))

    # -------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON) of the curve."""
        return {
            "schema": _CURVE_SCHEMA,
            "version": self.version,
            "bucket_minutes": self.bucket_minutes,
            "estimate_span": self.estimate_span,
            "tod_bps": list(self.tod_bps),
            "fixed_bps": dict(sorted(self.fixed_bps.items())),
            "impact": dict(sorted(self.impact.items())),
            "prior_fixed_bps": self.prior_fixed_bps,
            "prior_impact": self.prior_impact,
            "last_estimates": {k: list(v) for k, v in sorted(self.last_estimates.items())},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlippageCurve:
        """The curve of :meth:`to_dict`'s data."""
        if d.get("schema") != _CURVE_SCHEMA:
            raise StoreError(
                f"slippage curve schema {d.get('schema')!r} is not {_CURVE_SCHEMA}. Fix: refit "
                "the slippage model (workbench.execution.slippage) with this version."
            )
        return cls(
            fixed_bps={k: float(v) for k, v in d["fixed_bps"].items()},
            impact={k: float(v) for k, v in d["impact"].items()},
            tod_bps=tuple(float(v) for v in d["tod_bps"]),
            prior_fixed_bps=float(d["prior_fixed_bps"]),
            prior_impact=float(d["prior_impact"]),
            bucket_minutes=int(d["bucket_minutes"]),
            estimate_span=int(d["estimate_span"]),
            version=int(d["version"]),
            last_estimates={k: (float(v[0]), float(v[1])) for k, v in d["last_estimates"].items()},
            meta=dict(d.get("meta", {})),
        )

    def save(self, root: str | Path) -> Path:
        """Write this curve as version file ``root/v{version:06d}.json`` (atomic, checksummed)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.to_dict(), sort_keys=True)
        digest = hashlib.sha256(body.encode()).hexdigest()
        path = root / f"v{self.version:06d}.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"sha256": digest, "curve": json.loads(body)}, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    @staticmethod
    def versions(root: str | Path) -> list[int]:
        """The versions saved under ``root``, oldest first."""
        root = Path(root)
        if not root.is_dir():
            return []
        out = []
        for p in root.glob("v*.json"):
            stem = p.stem[1:]
            if stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    @classmethod
    def load(cls, root: str | Path, version: int | None = None) -> SlippageCurve:
        """Read version ``version`` (default: the latest) from ``root``; a corrupt file raises."""
        root = Path(root)
        have = cls.versions(root)
        if not have:
            raise ConfigError(
                f"backtest.costs.model is 'learned' but {root} holds no slippage model. Fix: "
                "trade a session first (it fits the model from its fills), point "
                "backtest.costs.slippage_path at a model, or set backtest.costs.model: config."
            )
        v = have[-1] if version is None else int(version)
        path = root / f"v{v:06d}.json"
        if not path.is_file():
            raise ConfigError(f"slippage model version {v} not in {root}; saved: {have}.")
        try:
            doc = json.loads(path.read_text())
            body = json.dumps(doc["curve"], sort_keys=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"slippage model {path} is unreadable ({exc}). Fix: delete it."
            ) from exc
        if hashlib.sha256(body.encode()).hexdigest() != doc.get("sha256"):
            raise StoreError(
                f"slippage model {path} fails its checksum (corrupt). Fix: delete it; the "
                "previous version is used then."
            )
        return cls.from_dict(doc["curve"])


def tod_bucket(grid_us: np.ndarray, bucket_minutes: int = 30) -> np.ndarray:
    """Return the time-of-day bucket of each bar start: ``bucket_minutes`` slices of the regular
    session from 09:30 America/New_York; bars outside it (daily bars too) get the last index,
    ``ceil(390 / bucket_minutes)``."""
    import polars as pl

    local = (
        pl.Series(np.asarray(grid_us, dtype=np.int64))
        .cast(pl.Datetime("us", "UTC"))
        .dt.convert_time_zone("America/New_York")
    )
    minutes = (local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)).to_numpy()
    n_in = -(-_SESSION_MIN // bucket_minutes)
    x = minutes - _SESSION_OPEN_MIN
    inside = (x >= 0) & (x < _SESSION_MIN)
    return np.where(inside, x // bucket_minutes, n_in).astype(np.int64)


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
