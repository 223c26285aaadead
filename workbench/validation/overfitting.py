"""Overfitting statistics: probabilistic and deflated Sharpe ratios, MinTRL, and the PBO via CSCV.

Conventions
-----------
* Sharpe ratios are **per period and not annualised**: ``SR = mean / std`` of the per-period
  returns the statistic is about (a daily SR of 0.1 is an annualised 0.1·√252 ≈ 1.59). Divide an
  annualised SR by ``sqrt(periods_per_year)`` and an annualised SR *variance* by
  ``periods_per_year`` first.
* ``skew`` is the third standardised moment; ``kurtosis`` is the **raw** fourth standardised
  moment (3 for a normal distribution; pandas/scipy report *excess* kurtosis by default: add 3).
  Raw moments always satisfy ``kurtosis >= 1 + skew**2``; values below raise.
* ``n`` is the number of return observations behind ``sr``.

References
----------
* Bailey, D. H., López de Prado, M. (2012). The Sharpe Ratio Efficient Frontier. *Journal of
  Risk* 15(2). (PSR, MinTRL.)
* Bailey, D. H., López de Prado, M. (2014). The Deflated Sharpe Ratio: Correcting for Selection
  Bias, Backtest Overfitting and Non-Normality. *Journal of Portfolio Management* 40(5). (DSR,
  the expected maximum Sharpe ratio.)
* Bailey, D. H., Borwein, J., López de Prado, M., Zhu, Q. J. (2017). The Probability of Backtest
  Overfitting. *Journal of Computational Finance* 20(4) (SSRN 2326253, 2015). (CSCV, PBO.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from workbench.errors import ParameterError

__all__ = [
    "PBOResult",
    "deflated_sharpe_ratio",
    "dsr_from_returns",
    "expected_max_sharpe",
    "min_track_record_length",
    "pbo_from_cpcv",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "psr_from_returns",
]

Number = float | np.ndarray


# --------------------------------------------------------------------------------------- checks
def _arr(owner: str, name: str, value: Any, ok: Callable[[np.ndarray], Any], rule: str) -> Any:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or isinstance(value, bool) or not np.all(np.isfinite(a)) or not np.all(ok(a)):
        raise ParameterError(
            f"The {name!r} parameter of {owner} must be {rule}. Got {value!r} instead."
        )
    return a


def _out(x: np.ndarray) -> Number:
    return float(x) if np.ndim(x) == 0 else x


def _moments(owner: str, sr: Any, skew: Any, kurtosis: Any) -> tuple[np.ndarray, ...]:
    sr = _arr(owner, "sr", sr, lambda a: True, "a finite number")
    skew = _arr(owner, "skew", skew, lambda a: True, "a finite number")
    kurt = _arr(owner, "kurtosis", kurtosis, lambda a: True, "a finite number")
    if np.any(kurt < 1.0 + skew**2 - 1e-12):
        raise ParameterError(
            f"The 'kurtosis' parameter of {owner} must be the raw kurtosis (normal = 3), which is "
            f">= 1 + skew**2 = {np.max(1.0 + skew**2):.4g}. Got {kurtosis!r} instead; if it is "
            "excess kurtosis, add 3."
        )
    return sr, skew, kurt


def _sr_std(sr: np.ndarray, skew: np.ndarray, kurt: np.ndarray) -> np.ndarray:
    """Return sqrt(1 - γ3·SR + (γ4 - 1)/4·SR²), the SR estimator's std times sqrt(n - 1)."""
    return np.sqrt(np.maximum(1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2, 0.0))


# ---------------------------------------------------------------------------------- Sharpe stats
def probabilistic_sharpe_ratio(
    sr: Number, sr_benchmark: Number, n: Number, skew: Number = 0.0, kurtosis: Number = 3.0
) -> Number:
    """Return the probability that the true Sharpe ratio exceeds ``sr_benchmark`` (PSR).

    ``PSR(SR*) = Φ( (SR - SR*) · sqrt(n - 1) / sqrt(1 - γ3·SR + (γ4 - 1)/4 · SR²) )``
    (Bailey & López de Prado 2012, eq. 11), where Φ is the standard normal CDF, γ3 the skewness
    and γ4 the raw kurtosis of the returns. Arguments broadcast like numpy arrays.

    Parameters
    ----------
    sr : float or array-like
        Observed per-period (non-annualised) Sharpe ratio.
    sr_benchmark : float or array-like
        Benchmark Sharpe ratio SR*, in the same units.
    n : int or array-like
        Number of return observations (>= 2).
    skew : float or array-like, default 0
        Skewness of the returns.
    kurtosis : float or array-like, default 3
        Raw (not excess) kurtosis of the returns.

    Returns
    -------
    float or numpy.ndarray
        PSR in [0, 1].
    """
    owner = "probabilistic_sharpe_ratio"
    sr, skew, kurt = _moments(owner, sr, skew, kurtosis)
    bench = _arr(owner, "sr_benchmark", sr_benchmark, lambda a: True, "a finite number")
    n = _arr(owner, "n", n, lambda a: a >= 2, "a number of observations >= 2")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (sr - bench) * np.sqrt(n - 1.0) / _sr_std(sr, skew, kurt)
    z = np.where(np.isnan(z), 0.0, z)  # degenerate 0/0 (two-point returns at their SR): a coin flip
    return _out(stats.norm.cdf(z))


def sharpe_per_period(returns: Any) -> float:
    """Return mean / standard deviation (ddof=1) of per-period returns, ignoring non-finite ones.

    0 when fewer than two finite returns remain or they do not vary (a strategy that never
    trades has no edge): the convention for comparing trials and paths, where an undefined
    ratio must still rank.
    """
    r = np.asarray(returns, dtype=np.float64).reshape(-1)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return 0.0
    sd = r.std(ddof=1)
    return float(r.mean() / sd) if sd > 0 else 0.0


def _sample_moments(owner: str, returns: Any) -> tuple[float, int, float, float]:
    r = np.asarray(returns, dtype=np.float64).reshape(-1)
    if len(r) < 3 or not np.all(np.isfinite(r)):
        raise ParameterError(
            f"The 'returns' parameter of {owner} must hold at least 3 finite returns. Got "
            f"{len(r)} value(s), {int((~np.isfinite(r)).sum())} not finite; drop nulls first."
        )
    if np.ptp(r) == 0.0:
        raise ParameterError(
            f"The 'returns' parameter of {owner} is constant (zero variance): its Sharpe ratio "
            "is undefined."
        )
    d = r - r.mean()
    m2 = np.mean(d**2)
    skew = float(np.mean(d**3) / m2**1.5)
    kurt = max(float(np.mean(d**4) / m2**2), 1.0 + skew**2)  # rounding can breach the bound
    return float(r.mean() / r.std(ddof=1)), len(r), skew, kurt


def psr_from_returns(returns: Any, sr_benchmark: float = 0.0) -> float:
    """Return the PSR of a series of per-period returns against ``sr_benchmark``.

    The Sharpe ratio is ``mean / std`` (``ddof=1``); skewness and raw kurtosis are the sample
    (population-normalised) moments; ``n`` is the number of returns.

    Parameters
    ----------
    returns : array-like
        Per-period returns (excess of the risk-free rate if that matters), no nulls.
    sr_benchmark : float, default 0
        Per-period benchmark Sharpe ratio.

    Returns
    -------
    float
        PSR in [0, 1].
    """
    sr, n, skew, kurt = _sample_moments("psr_from_returns", returns)
    return float(probabilistic_sharpe_ratio(sr, sr_benchmark, n, skew, kurt))


def expected_max_sharpe(n_trials: Number, var_sharpe: Number) -> Number:
    """Return the expected maximum Sharpe ratio of ``n_trials`` skill-less trials.

    The False Strategy theorem (Bailey & López de Prado 2014, eq. 6; Bailey et al. 2014):

    ``E[max SR] ≈ sqrt(V) · ((1 - γ) · Φ⁻¹(1 - 1/N) + γ · Φ⁻¹(1 - 1/(N·e)))``

    with V the variance of the trials' Sharpe ratios, γ ≈ 0.5772 the Euler–Mascheroni constant
    and e Euler's number. One trial involves no selection: its expected maximum is 0.

    Parameters
    ----------
    n_trials : int or array-like
        Number of independent trials N (>= 1).
    var_sharpe : float or array-like
        Variance of the trials' per-period Sharpe ratios (>= 0).

    Returns
    -------
    float or numpy.ndarray
        The expected maximum per-period Sharpe ratio SR0.
    """
    owner = "expected_max_sharpe"
    n = _arr(owner, "n_trials", n_trials, lambda a: (a >= 1) & (a == np.round(a)), "an int >= 1")
    v = _arr(owner, "var_sharpe", var_sharpe, lambda a: a >= 0, "a finite variance >= 0")
    g = np.euler_gamma
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (1 - g) * stats.norm.ppf(1 - 1 / n) + g * stats.norm.ppf(1 - 1 / (n * np.e))
        return _out(np.where(n == 1, 0.0, np.sqrt(v) * z))


def effective_trials(n_trials: int, mean_correlation: float) -> int:
    """Return the implied number of independent trials ``ceil(ρ + (1 - ρ) · M)``.

    Trials of one search (hyperparameter variants of one model) are far from independent, and the
    deflated Sharpe ratio wants independent trials. With ``ρ`` the average pairwise correlation of
    the trials' returns and ``M`` the number of trials, ``N ≈ ρ + (1 - ρ) · M`` interpolates
    between one trial (``ρ = 1``) and ``M`` independent ones (``ρ = 0``); this approximation is
    discussed with the deflated Sharpe ratio by Bailey & López de Prado (2014), who advise
    clustering the trials for a finer estimate. Negative average correlations count as 0 (the
    ``M`` trials are then taken as independent); the result is rounded up.

    Parameters
    ----------
    n_trials : int
        Number of trials M (>= 1).
    mean_correlation : float
        Average pairwise correlation ρ of the trials' per-period returns, in [-1, 1].

    Returns
    -------
    int
        N in [1, M].
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or n_trials < 1:
        raise ParameterError(
            f"The 'n_trials' parameter of effective_trials must be an int >= 1. Got {n_trials!r}."
        )
    rho = float(mean_correlation)
    if not -1.0 <= rho <= 1.0:
        raise ParameterError(
            f"The 'mean_correlation' parameter of effective_trials must be in [-1, 1]. Got "
            f"{mean_correlation!r}. Fix: pass the average pairwise correlation of trial returns."
        )
    rho = max(rho, 0.0)
    return int(min(n_trials, max(1, math.ceil(rho + (1.0 - rho) * n_trials - 1e-12))))


def deflated_sharpe_ratio(
    sr: Number,
    n: Number,
    skew: Number,
    kurtosis: Number,
    n_trials: Number,
    var_trials_sr: Number,
) -> Number:
    """Return the deflated Sharpe ratio: the PSR against the expected maximum of the trials.

    ``DSR = PSR(SR0)`` with ``SR0 = expected_max_sharpe(n_trials, var_trials_sr)`` (Bailey &
    López de Prado 2014, eq. 9): the probability that the selected strategy's true Sharpe ratio is
    positive after correcting for the selection among ``n_trials``, non-normal returns and the
    track record length. Example of the paper: SR = 2.5 annualised on 1250 daily returns, skew -3,
    kurtosis 10, 100 trials with annualised SR variance 0.5 give SR0 ≈ 0.1132 (daily) and
    DSR ≈ 0.9004.

    Parameters
    ----------
    sr : float or array-like
        Per-period Sharpe ratio of the selected strategy.
    n : int or array-like
        Number of its return observations (>= 2).
    skew, kurtosis : float or array-like
        Skewness and raw kurtosis of its returns.
    n_trials : int or array-like
        Number of independent trials (configurations) the selection was made from.
    var_trials_sr : float or array-like
        Variance of the trials' per-period Sharpe ratios.

    Returns
    -------
    float or numpy.ndarray
        DSR in [0, 1].
    """
    sr0 = expected_max_sharpe(n_trials, var_trials_sr)
    return probabilistic_sharpe_ratio(sr, sr0, n, skew, kurtosis)


def dsr_from_returns(
    returns: Any, trial_sharpes: Sequence[float] | np.ndarray, *, n_trials: int | None = None
) -> float:
    """Return the DSR of the selected strategy's returns given every trial's Sharpe ratio.

    ``n_trials`` defaults to ``len(trial_sharpes)`` and ``var_trials_sr`` is their variance
    (``ddof=1``); the Sharpe ratios must be per period, like ``returns``. Count only independent
    trials (cluster highly correlated configurations first), as the paper advises.

    Parameters
    ----------
    returns : array-like
        Per-period returns of the selected strategy.
    trial_sharpes : array-like
        Per-period Sharpe ratios of all trials, the selected one included (>= 2 values).
    n_trials : int, optional
        Number of independent trials N (>= 1), when it is not ``len(trial_sharpes)``: more when
        some trials have no Sharpe ratio (pruned before any backtest), fewer when the trials are
        correlated (:func:`effective_trials`). The variance still comes from ``trial_sharpes``.

    Returns
    -------
    float
        DSR in [0, 1].
    """
    srs = np.asarray(trial_sharpes, dtype=np.float64).reshape(-1)
    count = len(srs) if n_trials is None else n_trials
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ParameterError(
            f"The 'n_trials' parameter of dsr_from_returns must be an int >= 1. Got {n_trials!r} "
            "instead. Fix: pass the number of independent trials (see effective_trials)."
        )
    if len(srs) < 2 or not np.all(np.isfinite(srs)):
        raise ParameterError(
            "The 'trial_sharpes' parameter of dsr_from_returns must hold at least 2 finite Sharpe "
            f"ratios. Got {len(srs)} value(s)."
        )
    sr, n, skew, kurt = _sample_moments("dsr_from_returns", returns)
    return float(deflated_sharpe_ratio(sr, n, skew, kurt, int(count), srs.var(ddof=1)))


def min_track_record_length(
    sr: Number,
    sr_benchmark: Number,
    skew: Number = 0.0,
    kurtosis: Number = 3.0,
    prob: float = 0.95,
) -> Number:
    """Return the minimum track record length for ``sr`` to beat ``sr_benchmark`` with ``prob``.

    ``MinTRL = 1 + (1 - γ3·SR + (γ4 - 1)/4 · SR²) · (Z_prob / (SR - SR*))²``
    (Bailey & López de Prado 2012, eq. 14): the number of observations (in the returns' period)
    needed for ``PSR(SR*) >= prob``. Infinite when ``sr <= sr_benchmark``.

    Parameters
    ----------
    sr, sr_benchmark : float or array-like
        Observed and benchmark per-period Sharpe ratios.
    skew, kurtosis : float or array-like
        Skewness and raw kurtosis of the returns.
    prob : float, default 0.95
        Confidence level, in (0, 1).

    Returns
    -------
    float or numpy.ndarray
        MinTRL in observations (periods).
    """
    owner = "min_track_record_length"
    sr, skew, kurt = _moments(owner, sr, skew, kurtosis)
    bench = _arr(owner, "sr_benchmark", sr_benchmark, lambda a: True, "a finite number")
    p = _arr(owner, "prob", prob, lambda a: (a > 0) & (a < 1) & (a.ndim == 0), "a float in (0, 1)")
    z = stats.norm.ppf(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 + _sr_std(sr, skew, kurt) ** 2 * (z / (sr - bench)) ** 2
    return _out(np.where(sr > bench, out, np.inf))


# ------------------------------------------------------------------------------------------ PBO
@dataclass(frozen=True)
class PBOResult:
    """Outcome of combinatorially symmetric cross-validation (CSCV).

    Attributes
    ----------
    pbo : float
        Probability of backtest overfitting: the share of combinations whose in-sample best
        configuration ranks at or below the out-of-sample median (logit <= 0).
    logits : numpy.ndarray
        ``λ_c = ln(ω_c / (1 - ω_c))`` per combination, ω_c the out-of-sample relative rank of the
        in-sample best (``rank / (N + 1)``, rank 1 = worst).
    is_performance, oos_performance : numpy.ndarray
        In-sample and out-of-sample performance (Sharpe ratio by default) of the in-sample best
        configuration, per combination.
    n_splits : int
        Number of row blocks S.
    path_pbo : numpy.ndarray
        PBO of each CPCV path on its own (:func:`pbo_from_cpcv`; empty for a single matrix):
        their spread is the dispersion of the pooled estimate.
    """

    pbo: float
    logits: np.ndarray
    is_performance: np.ndarray
    oos_performance: np.ndarray
    n_splits: int
    path_pbo: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def pbo_std(self) -> float:
        """Standard deviation of the per-path PBOs (ddof=1; NaN below two paths)."""
        p = np.asarray(self.path_pbo, dtype=float)
        return float(np.std(p, ddof=1)) if p.size >= 2 else math.nan

    @property
    def prob_oos_loss(self) -> float:
        """Return the share of combinations whose selected configuration loses out of sample."""
        return float(np.mean(self.oos_performance < 0))

    def degradation(self) -> tuple[float, float]:
        """Return ``(slope, intercept)`` of the OOS-on-IS performance regression (paper §4.2)."""
        slope, intercept = np.polyfit(self.is_performance, self.oos_performance, 1)
        return float(slope), float(intercept)


def _sharpe(sums: np.ndarray, sq: np.ndarray, n: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-period Sharpe ratios from sums and squares of shifted returns (``ddof=1``)."""
    mean_c = sums / n
    var = np.maximum(sq - n * mean_c**2, 0.0) / (n - 1)
    mean = mean_c + shift
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mean / np.sqrt(var)
    return np.where(var > 0, out, np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0)))


def _performance_matrix(owner: str, m: Any, n_splits: Any) -> tuple[np.ndarray, int]:
    if (
        not isinstance(n_splits, int | np.integer)
        or isinstance(n_splits, bool)
        or n_splits < 2
        or (n_splits % 2)
    ):
        raise ParameterError(
            f"The 'n_splits' parameter of {owner} must be an even int >= 2. Got {n_splits!r} "
            "instead."
        )
    m = np.asarray(m.to_numpy() if hasattr(m, "to_numpy") else m, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2 or m.shape[0] < 2 * n_splits:
        raise ParameterError(
            f"The 'performance_matrix' parameter of {owner} must be a T x N matrix of per-period "
            f"returns with N >= 2 configurations and T >= 2 * n_splits = {2 * n_splits} rows. "
            f"Got shape {m.shape} instead."
        )
    if not np.all(np.isfinite(m)):
        raise ParameterError(
            f"The 'performance_matrix' parameter of {owner} has {int((~np.isfinite(m)).sum())} "
            "non-finite value(s); fill periods without a position with 0 returns first."
        )
    return m, int(n_splits)


def probability_of_backtest_overfitting(
    performance_matrix: Any,
    n_splits: int = 16,
    *,
    metric: Callable[[np.ndarray], np.ndarray] | None = None,
) -> PBOResult:
    """Return the probability of backtest overfitting (PBO) by CSCV.

    Combinatorially symmetric cross-validation (Bailey, Borwein, López de Prado & Zhu 2017, §3):
    cut the T rows of the T x N matrix (per-period returns of N configurations tried) into
    ``n_splits`` = S contiguous blocks (equal sizes; the first ``T mod S`` blocks get one more
    row). For each of the ``C(S, S/2)`` ways to pick half the blocks as in-sample (IS) set J, the
    rest being the out-of-sample (OOS) set J̄:

    1. find ``n* = argmax`` of the IS performance (Sharpe ratio) over the N configurations;
    2. find the relative rank ``ω = rank(OOS performance of n*) / (N + 1)``, rank 1 = worst
       (ties share their average rank);
    3. record the logit ``λ = ln(ω / (1 - ω))``.

    ``PBO = #{λ <= 0} / C(S, S/2)``: how often the IS winner is no better than the OOS median.
    Near 0 for a real, persistent edge; near 0.5 (or above) for selection on noise.

    Parameters
    ----------
    performance_matrix : array-like, shape (T, N)
        Per-period returns, one column per configuration, rows in time order (numpy array,
        polars or pandas frame). No missing values.
    n_splits : int, default 16
        Number of row blocks S (even, >= 2; T >= 2·S). C(16, 8) = 12,870 combinations.
    metric : callable, optional
        ``metric(rows) -> (N,)`` performance of each column over a (t, N) block of rows; defaults
        to the per-period Sharpe ratio (computed from block sums, much faster than a callable).

    Returns
    -------
    PBOResult
        PBO, the logits, and the IS/OOS performance of each combination's IS winner.
    """
    owner = "probability_of_backtest_overfitting"
    m, s = _performance_matrix(owner, performance_matrix, n_splits)
    t, n_cfg = m.shape
    sizes = np.full(s, t // s)
    sizes[: t % s] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    combos = np.array(list(itertools.combinations(range(s), s // 2)))
    member = np.zeros((len(combos), s), dtype=bool)
    member[np.arange(len(combos))[:, None], combos] = True

    if metric is None:
        shift = m.mean(axis=0)
        c = m - shift
        sums = np.add.reduceat(c, bounds[:-1], axis=0)
        sq = np.add.reduceat(c * c, bounds[:-1], axis=0)
        total, total_sq = sums.sum(axis=0), sq.sum(axis=0)
        perf_is, perf_oos = [], []
        for chunk in np.array_split(member, max(1, len(member) * n_cfg // 2_000_000 + 1)):
            w = chunk.astype(np.float64)
            n_is = (w @ sizes)[:, None]
            is_sum, is_sq = w @ sums, w @ sq
            perf_is.append(_sharpe(is_sum, is_sq, n_is, shift))
            perf_oos.append(_sharpe(total - is_sum, total_sq - is_sq, t - n_is, shift))
        r_is, r_oos = np.concatenate(perf_is), np.concatenate(perf_oos)
    else:
        block = np.repeat(np.arange(s), sizes)
        rows = [np.isin(block, np.flatnonzero(mem)) for mem in member]
        r_is = np.array([np.asarray(metric(m[r]), dtype=np.float64) for r in rows])
        r_oos = np.array([np.asarray(metric(m[~r]), dtype=np.float64) for r in rows])
        if r_is.shape != (len(member), n_cfg):
            raise ParameterError(
                f"The 'metric' parameter of {owner} must return one value per column ({n_cfg}). "
                f"Got shape {r_is.shape[1:]} instead."
            )

    r_is = np.where(np.isnan(r_is), -np.inf, r_is)
    r_oos = np.where(np.isnan(r_oos), -np.inf, r_oos)
    best = np.argmax(r_is, axis=1)
    rank = stats.rankdata(r_oos, axis=1)[np.arange(len(best)), best]
    omega = rank / (n_cfg + 1)
    logits = np.log(omega / (1 - omega))
    pick = np.arange(len(best)), best
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        is_performance=r_is[pick],
        oos_performance=r_oos[pick],
        n_splits=s,
    )


def pbo_from_cpcv(path_returns: Any, n_splits: int = 16) -> PBOResult:
    """Return the PBO pooled over the backtest paths of a combinatorial purged CV.

    With :class:`~workbench.validation.cv.CombinatorialPurgedKFold`, every configuration's
    out-of-sample predictions assemble into φ complete paths (``stitch_paths``); backtesting each
    path gives, per path, a T x N matrix of out-of-sample per-period returns of the N
    configurations. CSCV runs on each path's matrix and the logits of all paths are pooled:
    PBO is the share of pooled logits <= 0 (equal weight per path).

    Parameters
    ----------
    path_returns : array-like, shape (n_paths, T, N), or a sequence of (T, N) matrices
        Per-period out-of-sample returns per path and configuration (paths may differ in T).
    n_splits : int, default 16
        CSCV row blocks S per path.

    Returns
    -------
    PBOResult
        Pooled logits and IS/OOS performance, path after path.
    """
    owner = "pbo_from_cpcv"
    mats = list(path_returns)
    if not mats:
        raise ParameterError(
            f"The 'path_returns' parameter of {owner} must hold at least one path. Got none."
        )
    results = [probability_of_backtest_overfitting(p, n_splits) for p in mats]
    logits = np.concatenate([r.logits for r in results])
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        is_performance=np.concatenate([r.is_performance for r in results]),
        oos_performance=np.concatenate([r.oos_performance for r in results]),
        n_splits=int(n_splits),
        path_pbo=np.array([r.pbo for r in results]),
    )
