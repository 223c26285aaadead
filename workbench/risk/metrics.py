"""Risk measures: VaR and CVaR (historical, Gaussian, Cornish-Fisher) and risk contributions.

Conventions
-----------
* ``level`` is the confidence level α in (0, 1), e.g. 0.95; the tail holds the worst ``1 - α``.
* VaR and CVaR are **positive losses** (a 2% loss is ``0.02``), as in skfolio; a negative value
  means even the tail is a gain.
* ``mu`` is the sample mean and ``sigma`` the **sample** standard deviation (``ddof=1``).
* Skewness ``S`` and **excess** kurtosis ``K`` (normal = 0) are the moment (population, not
  bias-corrected) estimators: ``S = m3 / m2**1.5``, ``K = m4 / m2**2 - 3`` with central moments
  ``m_k = mean((r - mu)**k)``. (:mod:`workbench.validation.overfitting` takes *raw* kurtosis.)

================ ======================================================================
method           VaR / CVaR
================ ======================================================================
historical       skfolio's empirical order statistic, no interpolation: with ``k = (1-α)n``
                 and the returns sorted ascending (0-based), ``VaR = -r[floor(k)]``;
                 ``CVaR = -(sum(r[:i]) + (k - i)·r[i]) / k`` with ``i = ceil(k) - 1``
                 (Rockafellar-Uryasev tail mean; equals ``skfolio.measures.value_at_risk``
                 and ``skfolio.measures.cvar`` with ``beta = α``)
gaussian         ``z = Φ⁻¹(1-α)``; ``VaR = -(mu + sigma·z)``;
                 ``CVaR = -(mu - sigma·φ(z)/(1-α))``
cornish_fisher   ``z_cf = z + (z²-1)S/6 + (z³-3z)K/24 - (2z³-5z)S²/36``; ``VaR = -(mu + sigma·z_cf)``;
                 CVaR is the mean of the Cornish-Fisher quantile over the tail,
                 ``-(mu + sigma/(1-α) ∫_0^{1-α} z_cf(Φ⁻¹(u)) du)``, integrated in closed form:
                 ``∫ = φ(z)·(-1 - zS/6 + (1-z²)K/24 - (1-2z²)S²/36)``. With ``S = K = 0`` both
                 equal the Gaussian ones.
================ ======================================================================

References
----------
* Rockafellar, R. T., Uryasev, S. (2002). Conditional value-at-risk for general loss
  distributions. *Journal of Banking & Finance* 26(7).
* Favre, L., Galeano, J.-A. (2002). Mean-modified value-at-risk optimization with hedge funds.
  *Journal of Alternative Investments* 5(2). (Cornish-Fisher VaR.)
* Maillard, S., Roncalli, T., Teïletche, J. (2010). The properties of equally weighted risk
  contribution portfolios. *Journal of Portfolio Management* 36(4). (Euler risk contributions.)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from workbench.errors import ParameterError

__all__ = [
    "METHODS",
    "PortfolioVaR",
    "cornish_fisher_z",
    "cvar",
    "portfolio_var",
    "risk_contributions",
    "risk_contributions_frame",
    "var",
]

METHODS: tuple[str, ...] = ("historical", "gaussian", "cornish_fisher")
_FLOATS = (pl.Float32, pl.Float64)


# --------------------------------------------------------------------------------------- checks
def _check_level(owner: str, level: Any) -> float:
    ok = isinstance(level, int | float | np.floating) and not isinstance(level, bool)
    if not ok or not 0.0 < float(level) < 1.0:
        raise ParameterError(
            f"The 'level' parameter of {owner} must be a confidence level in (0, 1), e.g. 0.95. "
            f"Got {level!r} instead."
        )
    return float(level)


def _check_method(owner: str, method: Any) -> str:
    if method in METHODS:
        return method
    close = difflib.get_close_matches(str(method), METHODS, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ParameterError(
        f"The 'method' parameter of {owner} must be one of {', '.join(METHODS)}. "
        f"Got {method!r} instead.{hint}"
    )


def _returns_1d(owner: str, returns: Any) -> np.ndarray:
    """Return the returns as a float array (checked: 1-D, finite, at least 2 values)."""
    if isinstance(returns, pl.DataFrame):
        cols = [c for c in returns.columns if c != "ts"]
        if len(cols) != 1 or returns.schema[cols[0]] not in _FLOATS:
            raise ParameterError(
                f"The 'returns' frame passed to {owner} must hold 'ts' plus exactly one float "
                f"column of returns. Got columns {dict(returns.schema)!r}. Fix: select one, "
                "e.g. frame.select('ts', 'strategy_a')."
            )
        returns = returns[cols[0]]
    if isinstance(returns, pl.Series):
        if returns.dtype not in _FLOATS:
            raise ParameterError(
                f"The 'returns' series passed to {owner} must be a float series. Got dtype "
                f"{returns.dtype} instead. Fix: series.cast(pl.Float64)."
            )
        if returns.null_count():
            raise ParameterError(
                f"The 'returns' passed to {owner} hold {returns.null_count()} null values. "
                "Fix: drop them first (series.drop_nulls())."
            )
        returns = returns.to_numpy()
    try:
        r = np.asarray(returns, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(
            f"The 'returns' passed to {owner} must be numbers (array, list, polars Series or "
            f"frame). Got {type(returns).__name__} instead."
        ) from None
    if r.ndim != 1:
        raise ParameterError(
            f"The 'returns' passed to {owner} must be one-dimensional. Got shape {r.shape}."
        )
    n_nan = int(np.isnan(r).sum())
    if n_nan:
        raise ParameterError(
            f"The 'returns' passed to {owner} hold {n_nan} NaN values out of {r.size}. Fix: "
            "drop them first (series.drop_nans() or r[~np.isnan(r)])."
        )
    if not np.all(np.isfinite(r)):
        raise ParameterError(
            f"The 'returns' passed to {owner} hold {int(np.isinf(r).sum())} infinite values. "
            "Fix: remove or correct them."
        )
    if r.size < 2:
        raise ParameterError(
            f"The 'returns' passed to {owner} must hold at least 2 finite returns. Got {r.size}."
        )
    return r


# ---------------------------------------------------------------------------------- kernels
def cornish_fisher_z(z: float, skew: float, excess_kurtosis: float) -> float:
    """Return the Cornish-Fisher adjusted quantile ``z_cf`` of a standard normal quantile ``z``.

    ``z_cf = z + (z²-1)S/6 + (z³-3z)K/24 - (2z³-5z)S²/36``.

    Parameters
    ----------
    z : float
        Standard normal quantile, e.g. ``Φ⁻¹(0.05)``.
    skew : float
        Skewness ``S``.
    excess_kurtosis : float
        Excess kurtosis ``K`` (0 for a normal distribution, not 3).

    Returns
    -------
    float
        The adjusted quantile; equals ``z`` when ``S = K = 0``.
    """
    s, k = float(skew), float(excess_kurtosis)
    return (
        z
        + (z**2 - 1.0) * s / 6.0
        + (z**3 - 3.0 * z) * k / 24.0
        - (2.0 * z**3 - 5.0 * z) * s**2 / 36.0
    )


def _cf_tail_mean(z: float, tail: float, s: float, k: float) -> float:
    """Mean of z_cf(Φ⁻¹(u)) for u in (0, tail), with z = Φ⁻¹(tail)."""
    poly = -1.0 - z * s / 6.0 + (1.0 - z**2) * k / 24.0 - (1.0 - 2.0 * z**2) * s**2 / 36.0
    return float(stats.norm.pdf(z)) * poly / tail


def _historical(r: np.ndarray, level: float, conditional: bool) -> float:
    # skfolio.measures._measures._tail_risk (1.12), unweighted branch, 0 < beta < 1
    n = r.size
    k = (1.0 - level) * n
    if conditional:
        i = max(0, math.ceil(k) - 1)
    else:
        i = min(n - 1, math.floor(k + 4 * np.finfo(float).eps * n))
    part = np.partition(r, i)
    if conditional:
        return float(-np.sum(part[:i]) / k + part[i] * (i / k - 1.0))
    return float(-part[i])


def _tail(owner: str, returns: Any, level: Any, method: Any, conditional: bool) -> float:
    level = _check_level(owner, level)
    method = _check_method(owner, method)
    r = _returns_1d(owner, returns)
    if method == "historical":
        return _historical(r, level, conditional)
    mu, sigma = float(r.mean()), float(r.std(ddof=1))
    tail = 1.0 - level
    z = float(stats.norm.ppf(tail))
    if method == "gaussian":
        q = -float(stats.norm.pdf(z)) / tail if conditional else z
    else:
        s = float(stats.skew(r, bias=True))
        k = float(stats.kurtosis(r, fisher=True, bias=True))
        if not (math.isfinite(s) and math.isfinite(k)):  # constant returns: no shape
            s = k = 0.0
        q = _cf_tail_mean(z, tail, s, k) if conditional else cornish_fisher_z(z, s, k)
    return -(mu + sigma * q)


def var(returns: Any, level: float = 0.95, method: str = "historical") -> float:
    """Return the value at risk of a return series as a positive loss.

    Parameters
    ----------
    returns : array-like, list, pl.Series or pl.DataFrame
        Periodic simple returns; a frame must hold ``ts`` plus exactly one float column.
        NaNs are refused (drop them first).
    level : float, default 0.95
        Confidence level in (0, 1).
    method : {"historical", "gaussian", "cornish_fisher"}, default "historical"
        Estimator; see the module docstring for each formula.

    Returns
    -------
    float
        VaR, in return units (0.02 = a 2% loss).

    Examples
    --------
    >>> var([-0.03, -0.01, 0.0, 0.01, 0.02], level=0.8)  # k = 1: the 2nd largest loss
    0.01
    """
    return _tail("var", returns, level, method, conditional=False)


def cvar(returns: Any, level: float = 0.95, method: str = "historical") -> float:
    """Return the conditional value at risk (expected shortfall) as a positive loss.

    Parameters
    ----------
    returns : array-like, list, pl.Series or pl.DataFrame
        Periodic simple returns; a frame must hold ``ts`` plus exactly one float column.
    level : float, default 0.95
        Confidence level in (0, 1).
    method : {"historical", "gaussian", "cornish_fisher"}, default "historical"
        Estimator; the Cornish-Fisher CVaR is the closed-form mean of the Cornish-Fisher
        quantile over the tail (module docstring).

    Returns
    -------
    float
        CVaR, in return units; ``cvar >= var`` for the historical and Gaussian methods.
    """
    return _tail("cvar", returns, level, method, conditional=True)


# --------------------------------------------------------------------------------- portfolio
def _weights_cov(owner: str, weights: Any, cov: Any) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(cov, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)):
        raise ParameterError(
            f"The 'weights' parameter of {owner} must be a 1-D array of finite numbers. "
            f"Got {weights!r} instead."
        )
    if c.shape != (w.size, w.size) or not np.all(np.isfinite(c)):
        raise ParameterError(
            f"The 'cov' parameter of {owner} must be a finite {w.size}x{w.size} covariance "
            f"matrix (one row per weight). Got shape {c.shape}."
        )
    if not np.allclose(c, c.T, rtol=1e-10, atol=1e-14) or np.any(np.diag(c) < 0):
        raise ParameterError(
            f"The 'cov' parameter of {owner} must be symmetric with a non-negative diagonal. "
            "Fix: pass a covariance matrix, e.g. np.cov(returns, rowvar=False)."
        )
    return w, c


@dataclass(frozen=True)
class PortfolioVaR:
    """Gaussian VaR and CVaR of a portfolio (positive losses) with the inputs behind them."""

    var: float
    cvar: float
    sigma: float
    mean: float
    level: float


def portfolio_var(weights: Any, cov: Any, level: float = 0.95, mean: Any = None) -> PortfolioVaR:
    """Return the Gaussian VaR and CVaR of a portfolio from its weights and a covariance.

    ``sigma_p = sqrt(wᵀΣw)``, ``mu_p = wᵀμ`` (0 when ``mean`` is None), then the Gaussian
    formulas of :func:`var` and :func:`cvar`.

    Parameters
    ----------
    weights : array-like of shape (n,)
        Portfolio weights (fractions of equity).
    cov : array-like of shape (n, n)
        Covariance of the periodic asset returns.
    level : float, default 0.95
        Confidence level in (0, 1).
    mean : array-like of shape (n,), optional
        Expected periodic asset returns; None assumes zero drift.

    Returns
    -------
    PortfolioVaR
        ``var, cvar, sigma, mean, level`` for one period.
    """
    owner = "portfolio_var"
    level = _check_level(owner, level)
    w, c = _weights_cov(owner, weights, cov)
    mu = 0.0
    if mean is not None:
        m = np.asarray(mean, dtype=np.float64)
        if m.shape != w.shape or not np.all(np.isfinite(m)):
            raise ParameterError(
                f"The 'mean' parameter of {owner} must be None or {w.size} finite expected "
                f"returns (one per weight). Got {mean!r} instead."
            )
        mu = float(w @ m)
    sigma = math.sqrt(max(float(w @ c @ w), 0.0))
    tail = 1.0 - level
    z = float(stats.norm.ppf(tail))
    return PortfolioVaR(
        var=-(mu + sigma * z),
        cvar=-(mu - sigma * float(stats.norm.pdf(z)) / tail),
        sigma=sigma,
        mean=mu,
        level=level,
    )


def risk_contributions(weights: Any, cov: Any) -> np.ndarray:
    """Return the Euler risk contributions ``w_i (Σw)_i / sigma_p``; they sum to ``sigma_p``.

    Parameters
    ----------
    weights : array-like of shape (n,)
        Portfolio weights.
    cov : array-like of shape (n, n)
        Covariance of the periodic asset returns.

    Returns
    -------
    np.ndarray
        One contribution per asset, in units of the portfolio standard deviation.
    """
    w, c = _weights_cov("risk_contributions", weights, cov)
    marginal = c @ w
    sigma = math.sqrt(max(float(w @ marginal), 0.0))
    if sigma == 0.0:
        raise ParameterError(
            "The portfolio passed to risk_contributions has zero volatility (weights "
            f"{weights!r}); risk shares are undefined. Fix: pass non-zero weights on assets "
            "with variance."
        )
    return w * marginal / sigma


def risk_contributions_frame(
    returns: pl.DataFrame,
    weights: Mapping[str, float],
    groups: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Return each position's (and each group's) contribution to the portfolio's volatility.

    The covariance is the sample covariance (``ddof=1``) of the weighted assets' columns.

    Parameters
    ----------
    returns : pl.DataFrame
        ``ts`` plus one float column of periodic returns per asset, without NaNs or nulls.
    weights : mapping of str to float
        Weight per asset; every key must be a column of ``returns`` (other columns are unused).
    groups : mapping of str to str, optional
        Asset -> group (e.g. strategy type). Every weighted asset must have a group.

    Returns
    -------
    pl.DataFrame
        Without ``groups``: ``asset, weight, contribution, share`` with one row per asset.
        With ``groups``: a leading ``level`` column (``"asset"`` or ``"group"``), the asset
        rows first, then one row per group whose ``asset`` holds the group's name and whose
        weight and contribution are the sums over its assets. ``contribution`` sums to the
        portfolio's periodic standard deviation over each level, ``share`` to 1.
    """
    owner = "risk_contributions_frame"
    if not isinstance(returns, pl.DataFrame):
        raise ParameterError(
            f"The 'returns' parameter of {owner} must be a polars DataFrame (ts + one column "
            f"per asset). Got {type(returns).__name__} instead."
        )
    names = list(weights)
    missing = [a for a in names if a not in returns.columns or a == "ts"]
    if not names or missing:
        raise ParameterError(
            f"The 'weights' parameter of {owner} must name columns of the returns frame. Got "
            f"unknown assets {missing or names!r}; columns are {returns.columns!r}."
        )
    for a in names:
        col = returns[a]
        if col.dtype not in _FLOATS:
            raise ParameterError(
                f"Column {a!r} of the returns frame passed to {owner} must be float returns. "
                f"Got dtype {col.dtype}. Fix: pl.col({a!r}).cast(pl.Float64)."
            )
        bad = col.null_count() + int(col.is_nan().sum())
        if bad:
            raise ParameterError(
                f"Column {a!r} of the returns frame passed to {owner} holds {bad} NaN/null "
                "values. Fix: drop them first (frame.drop_nans().drop_nulls())."
            )
    if returns.height < 2:
        raise ParameterError(
            f"The returns frame passed to {owner} must have at least 2 rows. Got {returns.height}."
        )
    x = returns.select(names).to_numpy().astype(np.float64)
    w = np.array([float(weights[a]) for a in names])
    rc = risk_contributions(w, np.atleast_2d(np.cov(x, rowvar=False, ddof=1)))
    sigma = float(rc.sum())
    out = pl.DataFrame(
        {"asset": names, "weight": w, "contribution": rc, "share": rc / sigma},
        schema={
            "asset": pl.String,
            "weight": pl.Float64,
            "contribution": pl.Float64,
            "share": pl.Float64,
        },
    )
    if groups is None:
        return out
    ungrouped = [a for a in names if a not in groups]
    if ungrouped:
        raise ParameterError(
            f"The 'groups' parameter of {owner} must map every weighted asset to a group. "
            f"Missing: {ungrouped!r}. Fix: add them, e.g. groups[{ungrouped[0]!r}] = 'other'."
        )
    per_group = (
        out.with_columns(pl.Series("group", [groups[a] for a in names]))
        .group_by("group", maintain_order=True)
        .agg(pl.col("weight", "contribution", "share").sum())
        .rename({"group": "asset"})
    )
    return pl.concat(
        [
            out.select(pl.lit("asset").alias("level"), pl.all()),
            per_group.select(pl.lit("group").alias("level"), pl.all()),
        ]
    )
