"""Allocation of capital across assets or strategies, caps, and the rebalance check.

Every method reads a frame of periodic returns (``ts`` plus one float column per asset) and
returns long-only weights as fractions of equity (what is not allocated is cash). Moments are
the sample mean and the sample covariance (``ddof=1``, as skfolio's ``EmpiricalCovariance``).

=========== ========================================================================================
method      weights
=========== ========================================================================================
equal       ``1/n``
inverse_vol ``w_i ∝ 1/σ_i``, summing to 1 (skfolio ``InverseVolatility``)
risk_parity equal risk contributions ``w_i (Σw)_i = w_j (Σw)_j``, long-only, summing to 1 (skfolio
            ``RiskBudgeting(risk_measure=RiskMeasure.VARIANCE)``)
kelly       fractional Kelly ``f = c·Σ⁻¹μ`` (``fraction`` c in (0, 1], default 0.5), negative
            entries set to 0 (long-only), then scaled down so that ``Σf <= max_gross`` (default 1)
vol_target  ``w_i = (σ_target/σ_i)/n``: each of the n sleeves sized to the target volatility, then
            scaled down so that ``Σw <= max_leverage`` (default 1). ``target_vol`` is per period,
            or annualised when ``periods_per_year`` is given (then ``σ_i·sqrt(periods_per_year)``)
=========== ========================================================================================

Caps (every method): ``caps`` maps an asset, or a group of ``groups`` (asset -> group, e.g. the
strategy type), to a maximum weight. Weights above their cap are cut to it; the excess is
redistributed to the assets that are not capped, in proportion to their weights (an asset at
zero weight receives nothing); redistribution repeats until no cap binds. A capped group is
scaled down proportionally and then receives nothing more. When no uncapped asset with a
positive weight is left, the excess stays in cash.

The risk-parity weights come from Spinu's (2013) convex formulation, solved by Newton's method
on the correlation matrix: ``min ½xᵀCx - Σ log(x_i)/n`` over ``x > 0``, whose minimiser has
``x_i (Cx)_i = 1/n``; then ``w ∝ x/σ``.

References
----------
* Spinu, F. (2013). An Algorithm for Computing Risk Parity Weights. SSRN 2297383.
* Thorp, E. O. (2006). The Kelly criterion in blackjack, sports betting and the stock market.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from workbench.errors import ParameterError

__all__ = ["METHODS", "RebalancePlan", "allocate", "rebalance_check"]

METHODS: tuple[str, ...] = ("equal", "inverse_vol", "risk_parity", "kelly", "vol_target")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "equal": (),
    "inverse_vol": (),
    "risk_parity": (),
    "kelly": ("fraction", "max_gross"),
    "vol_target": ("target_vol", "periods_per_year", "max_leverage"),
}
_COMMON = ("caps", "groups")
_FLOATS = (pl.Float32, pl.Float64)
_TOL = 1e-12


# --------------------------------------------------------------------------------------- checks
def _did_you_mean(value: Any, valid: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _returns_matrix(owner: str, returns: Any) -> tuple[list[str], np.ndarray]:
    """Return the asset names and the (n_obs, n_assets) float matrix of a checked returns frame."""
    if not isinstance(returns, pl.DataFrame):
        raise ParameterError(
            f"The 'returns' parameter of {owner} must be a polars DataFrame with 'ts' plus one "
            f"float column of periodic returns per asset. Got {type(returns).__name__} instead."
        )
    names = [c for c in returns.columns if c != "ts"]
    if not names:
        raise ParameterError(
            f"The 'returns' frame passed to {owner} has no return columns besides 'ts'. Got "
            f"columns {returns.columns!r}."
        )
    for a in names:
        col = returns[a]
        if col.dtype not in _FLOATS:
            raise ParameterError(
                f"Column {a!r} of the returns frame passed to {owner} must be a float column of "
                f"periodic returns. Got dtype {col.dtype}. Fix: cast it "
                f"(pl.col({a!r}).cast(pl.Float64)) or drop it."
            )
        bad = col.null_count() + int(col.is_nan().sum())
        if bad:
            raise ParameterError(
                f"Column {a!r} of the returns frame passed to {owner} holds {bad} NaN/null "
                "values. Fix: drop or fill them first (frame.drop_nans().drop_nulls(), or "
                "fill_null(0.0) for a flat period)."
            )
    if returns.height < 2:
        raise ParameterError(
            f"The returns frame passed to {owner} must have at least 2 rows. Got {returns.height}."
        )
    x = returns.select(names).to_numpy().astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ParameterError(
            f"The returns frame passed to {owner} holds infinite values. Fix: remove them."
        )
    return names, x


def _positive(owner: str, name: str, value: Any, *, upper: float | None = None) -> float:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and value > 0 and (upper is None or value <= upper)
    if not ok:
        rule = f"a float in (0, {upper:g}]" if upper is not None else "a finite float > 0"
        raise ParameterError(
            f"The {name!r} parameter of {owner} must be {rule}. Got {value!r} instead."
        )
    return float(value)


def _sigmas(owner: str, names: list[str], cov: np.ndarray, n_obs: int) -> np.ndarray:
    sig = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    flat = [a for a, s in zip(names, sig, strict=True) if not s > 1e-12]
    if flat:
        raise ParameterError(
            f"Asset {flat[0]!r} has zero variance over the {n_obs} returns passed to {owner}; "
            "its weight is undefined. Fix: drop the asset or use method='equal'."
        )
    return sig


# -------------------------------------------------------------------------------------- kernels
def _erc(corr: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Newton on Spinu's objective over a correlation matrix; return x with x_i (Cx)_i = 1/n."""
    n = corr.shape[0]
    b = np.full(n, 1.0 / n)
    x = np.full(n, 1.0 / math.sqrt(corr.sum()))

    def f(y: np.ndarray) -> float:
        return 0.5 * float(y @ corr @ y) - float(b @ np.log(y))

    for _ in range(max_iter):
        cx = corr @ x
        if np.max(np.abs(x * cx - b)) < 1e-15:
            return x
        grad = cx - b / x
        step = -np.linalg.solve(corr + np.diag(b / x**2), grad)
        t, fx = 1.0, f(x)
        while np.any(x + t * step <= 0) or f(x + t * step) > fx + 1e-4 * t * float(grad @ step):
            t *= 0.5
            if t < 1e-12:
                return x
        x = x + t * step
    return x


def _risk_parity(owner: str, names: list[str], x: np.ndarray) -> np.ndarray:
    cov = np.atleast_2d(np.cov(x, rowvar=False, ddof=1))
    sig = _sigmas(owner, names, cov, x.shape[0])
    corr = cov / np.outer(sig, sig)
    if np.linalg.eigvalsh(corr)[0] <= 1e-12:
        raise ParameterError(
            f"The returns passed to {owner}(method='risk_parity') have a singular covariance "
            "(some assets are linear combinations of others). Fix: drop redundant assets."
        )
    y = _erc(corr) / sig
    return y / y.sum()


def _kelly(owner: str, x: np.ndarray, fraction: float, max_gross: float) -> np.ndarray:
    cov = np.atleast_2d(np.cov(x, rowvar=False, ddof=1))
    if np.linalg.cond(cov) > 1e12:
        raise ParameterError(
            f"The returns passed to {owner}(method='kelly') have a singular covariance (a "
            "constant asset, or assets that are linear combinations of others); Σ⁻¹μ is "
            "undefined. Fix: drop those assets."
        )
    f = np.clip(fraction * np.linalg.solve(cov, x.mean(axis=0)), 0.0, None)
    gross = float(f.sum())
    return f * (max_gross / gross) if gross > max_gross else f


def _apply_caps(owner: str, names: list[str], w: np.ndarray, caps: Any, groups: Any) -> np.ndarray:
    groups = dict(groups or {})
    caps = dict(caps or {})
    unknown = [a for a in groups if a not in names]
    if unknown:
        raise ParameterError(
            f"The 'groups' parameter of {owner} maps unknown asset {unknown[0]!r}.{_did_you_mean(unknown[0], names)} "
            f"Assets are {names!r}."
        )
    group_names = set(groups.values())
    for key, cap in caps.items():
        if key not in names and key not in group_names:
            raise ParameterError(
                f"The 'caps' parameter of {owner} names {key!r}, which is neither an asset nor a "
                f"group.{_did_you_mean(key, [*names, *group_names])} Assets: {names!r}; groups: "
                f"{sorted(group_names)!r}."
            )
        if key in names and key in group_names:
            raise ParameterError(
                f"The 'caps' key {key!r} of {owner} is both an asset and a group; rename the group."
            )
        ok = isinstance(cap, int | float | np.floating) and not isinstance(cap, bool)
        if not ok or not math.isfinite(cap) or cap < 0:
            raise ParameterError(
                f"The 'caps' parameter of {owner} must map to finite weights >= 0. Got "
                f"caps[{key!r}] = {cap!r}. Fix: use 0 to exclude an asset."
            )
    if not caps:
        return w
    w = w.copy()
    asset_cap = np.array([float(caps.get(a, np.inf)) for a in names])
    member = {g: np.array([groups.get(a) == g for a in names]) for g in group_names if g in caps}
    frozen = np.zeros(len(names), dtype=bool)
    for _ in range(len(names) + 2):
        over = w > asset_cap + _TOL
        excess = float((w[over] - asset_cap[over]).sum())
        w[over] = asset_cap[over]
        frozen |= over
        for g, m in member.items():
            total = float(w[m].sum())
            if total > caps[g] + _TOL:
                excess += total - caps[g]
                w[m] *= caps[g] / total
                frozen |= m
        receivers = ~frozen & (w > 0)
        if excess <= _TOL or not receivers.any():
            break  # stable, or the excess stays in cash
        w[receivers] += excess * w[receivers] / w[receivers].sum()
    return w


# ----------------------------------------------------------------------------------- allocate
def allocate(returns: pl.DataFrame, method: str, **kw: Any) -> dict[str, float]:
    """Return long-only weights per asset from a frame of periodic returns.

    Parameters
    ----------
    returns : pl.DataFrame
        ``ts`` plus one float column of periodic simple returns per asset (at least 2 rows, no
        NaNs or nulls). Not modified.
    method : {"equal", "inverse_vol", "risk_parity", "kelly", "vol_target"}
        Allocation rule; see the module docstring for each formula.
    **kw
        ``caps`` (mapping asset or group -> maximum weight) and ``groups`` (mapping asset ->
        group) for every method; ``fraction`` (default 0.5) and ``max_gross`` (default 1.0) for
        ``kelly``; ``target_vol`` (required), ``periods_per_year`` (optional: ``target_vol`` is
        then annualised) and ``max_leverage`` (default 1.0) for ``vol_target``.

    Returns
    -------
    dict[str, float]
        Weight per asset in column order; the sum is <= 1 except for ``kelly`` with
        ``max_gross > 1`` or ``vol_target`` with ``max_leverage > 1``. The rest is cash.

    Examples
    --------
    >>> import polars as pl
    >>> r = pl.DataFrame({"a": [0.01, -0.01, 0.02, -0.02], "b": [0.02, -0.02, 0.04, -0.04]})
    >>> {k: round(v, 4) for k, v in allocate(r, "inverse_vol").items()}
    {'a': 0.6667, 'b': 0.3333}
    """
    owner = "allocate"
    if method not in METHODS:
        raise ParameterError(
            f"The 'method' parameter of {owner} must be one of {', '.join(METHODS)}. Got "
            f"{method!r} instead.{_did_you_mean(method, METHODS)}"
        )
    valid = (*_COMMON, *_OPTIONS[method])
    for key in kw:
        if key not in valid:
            raise ParameterError(
                f"{owner}(method={method!r}) got an unexpected option {key!r}.{_did_you_mean(key, valid)} "
                f"Valid options: {', '.join(valid)}."
            )
    names, x = _returns_matrix(owner, returns)
    n = len(names)
    if method == "equal":
        w = np.full(n, 1.0 / n)
    elif method == "inverse_vol":
        cov = np.atleast_2d(np.cov(x, rowvar=False, ddof=1))
        inv = 1.0 / _sigmas(owner, names, cov, x.shape[0])
        w = inv / inv.sum()
    elif method == "risk_parity":
        w = _risk_parity(owner, names, x)
    elif method == "kelly":
        fraction = _positive(owner, "fraction", kw.get("fraction", 0.5), upper=1.0)
        max_gross = _positive(owner, "max_gross", kw.get("max_gross", 1.0))
        w = _kelly(owner, x, fraction, max_gross)
    else:
        if "target_vol" not in kw:
            raise ParameterError(
                f"{owner}(method='vol_target') needs 'target_vol', the volatility each of the "
                "n sleeves is sized to (per period, or annualised with periods_per_year). "
                "Got none."
            )
        target = _positive(owner, "target_vol", kw["target_vol"])
        ppy = kw.get("periods_per_year")
        scale = 1.0 if ppy is None else math.sqrt(_positive(owner, "periods_per_year", ppy))
        max_lev = _positive(owner, "max_leverage", kw.get("max_leverage", 1.0))
        cov = np.atleast_2d(np.cov(x, rowvar=False, ddof=1))
        w = target / (_sigmas(owner, names, cov, x.shape[0]) * scale) / n
        gross = float(w.sum())
        if gross > max_lev:
            w = w * (max_lev / gross)
    w = _apply_caps(owner, names, w, kw.get("caps"), kw.get("groups"))
    return {a: float(v) for a, v in zip(names, w, strict=True)}


# ---------------------------------------------------------------------------------- rebalance
@dataclass(frozen=True)
class RebalancePlan:
    """What drifted from the target and the trades that bring it back.

    ``drift`` has one row per asset: ``asset, current_weight, target_weight, drift`` (current
    minus target) and ``drifted`` (``|drift| > threshold``). ``trades`` has one row per drifted
    asset: ``asset, current_weight, target_weight, delta_weight`` (target minus current) and
    ``delta_value`` (``delta_weight * equity``) when equity was given.
    """

    drift: pl.DataFrame
    trades: pl.DataFrame
    threshold: float
    equity: float | None

    @property
    def needs_rebalance(self) -> bool:
        """Return whether any asset drifted beyond the threshold."""
        return self.trades.height > 0

    @property
    def drifted(self) -> tuple[str, ...]:
        """Return the assets to trade, in plan order."""
        return tuple(self.trades["asset"].to_list())


def _weights_map(owner: str, name: str, values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise ParameterError(
            f"The {name!r} parameter of {owner} must be a mapping asset -> number. Got "
            f"{type(values).__name__} instead."
        )
    out = {}
    for k, v in values.items():
        ok = isinstance(v, int | float | np.floating) and not isinstance(v, bool)
        if not ok or not math.isfinite(v):
            raise ParameterError(
                f"The {name!r} parameter of {owner} must map assets to finite numbers. Got "
                f"{name}[{k!r}] = {v!r}."
            )
        out[str(k)] = float(v)
    return out


def rebalance_check(
    current: Mapping[str, float],
    target: Mapping[str, float],
    threshold: float = 0.05,
    equity: float | None = None,
) -> RebalancePlan:
    """Return the assets that drifted from their target weight and the trades that fix them.

    Only assets whose ``|current_weight - target_weight| > threshold`` are traded (to exactly
    their target); the others are left alone, so small drifts cost nothing. An asset missing
    from one side counts as 0 there (missing from ``target``: sell it).

    Parameters
    ----------
    current : mapping of str to float
        Without ``equity``: current weights (fractions of equity, each in [-1, 1]). With
        ``equity``: current market values in currency, converted to ``value / equity``.
    target : mapping of str to float
        Target weights, e.g. from :func:`allocate`.
    threshold : float, default 0.05
        Drift tolerance in weight units, in [0, 1).
    equity : float, optional
        Account equity (> 0): ``current`` then holds values and the trades get ``delta_value``.

    Returns
    -------
    RebalancePlan
        ``drift`` (every asset) and ``trades`` (drifted assets only).
    """
    owner = "rebalance_check"
    cur = _weights_map(owner, "current", current)
    tgt = _weights_map(owner, "target", target)
    ok = isinstance(threshold, int | float | np.floating) and not isinstance(threshold, bool)
    if not ok or not 0.0 <= threshold < 1.0:
        raise ParameterError(
            f"The 'threshold' parameter of {owner} must be a drift in weight units in [0, 1), "
            f"e.g. 0.05. Got {threshold!r} instead."
        )
    if equity is not None:
        equity = _positive(owner, "equity", equity)
        cur = {k: v / equity for k, v in cur.items()}
    else:
        big = {k: v for k, v in cur.items() if abs(v) > 1.0}
        if big:
            k = next(iter(big))
            raise ParameterError(
                f"The 'current' parameter of {owner} holds weights without 'equity', but "
                f"current[{k!r}] = {big[k]!r} is not a weight in [-1, 1]. Fix: for market "
                "values pass equity=<account equity>."
            )
    assets = list(dict.fromkeys([*cur, *tgt]))
    c = np.array([cur.get(a, 0.0) for a in assets])
    t = np.array([tgt.get(a, 0.0) for a in assets])
    drift = pl.DataFrame(
        {
            "asset": assets,
            "current_weight": c,
            "target_weight": t,
            "drift": c - t,
            "drifted": np.abs(c - t) > threshold,
        },
        schema={
            "asset": pl.String,
            "current_weight": pl.Float64,
            "target_weight": pl.Float64,
            "drift": pl.Float64,
            "drifted": pl.Boolean,
        },
    )
    trades = drift.filter("drifted").select(
        "asset",
        "current_weight",
        "target_weight",
        (pl.col("target_weight") - pl.col("current_weight")).alias("delta_weight"),
    )
    if equity is not None:
        trades = trades.with_columns((pl.col("delta_weight") * equity).alias("delta_value"))
    return RebalancePlan(drift=drift, trades=trades, threshold=float(threshold), equity=equity)
