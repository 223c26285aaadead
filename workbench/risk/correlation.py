"""Rolling Pearson correlation matrices of many return series, from past rows only.

:func:`rolling_correlation` is the array API (``[T x N]`` returns, NaN = no bar, to ``[K x N x
N]`` matrices); :func:`correlation_frame` its frame face for notebooks (a long ``ts, a, b, rho``
frame, one row per matrix cell, ready to pivot into a heatmap).

The matrix at row ``t`` uses rows ``t-window+1 .. t`` only, each pair over the rows where both
series are finite (pairwise deletion, as pandas' ``rolling(...).corr()``); a pair with fewer than
3 joint observations, or a series without variance over them, is NaN. Two numba kernels compute
the same numbers and are picked by the shape of the request, never by the data:

- spaced matrices (``every * 16 >= window``): each matrix afresh (columns centred by their own
  mean, one dot product per pair, the joint sums corrected for the other column's missing rows),
  matrices in parallel (``prange``);
- dense matrices (``every * 16 < window``, e.g. ``every=1``): one sliding pass that adds the row
  entering the window and removes the row leaving it from per-pair sums and cross-products
  (series shifted by their first finite value, which keeps the one-pass formulas accurate for
  returns; pass returns, not price levels). Both agree to ~1e-12.

A series counts as constant over a window when its variance is at most ``1e-12`` of its mean
square (std / |mean| below 1e-6).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from numba import njit, prange

from workbench.errors import ParameterError

__all__ = ["correlation_frame", "rolling_correlation"]

MIN_PAIRS = 3  # joint finite observations below which a correlation is NaN
_REL_VAR = 1e-12  # variance / mean square at or below which a series is constant
_DENSE = 16  # the sliding kernel runs when every * _DENSE < window


def _check_int(owner: str, name: str, value: Any, low: int, fix: str) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < low:
        raise ParameterError(
            f"The {name!r} parameter of {owner} must be an int >= {low}. Got {value!r} instead. "
            f"Fix: {fix}."
        )
    return int(value)


def _check_returns(owner: str, returns: Any) -> np.ndarray:
    try:
        x = np.asarray(returns, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(
            f"The 'returns' parameter of {owner} must be a [T x N] array of numbers (NaN = no "
            f"bar). Got {type(returns).__name__} instead. Fix: pass frame.to_numpy() of float "
            "columns, or use correlation_frame."
        ) from None
    if x.ndim != 2 or x.shape[1] == 0:
        raise ParameterError(
            f"The 'returns' parameter of {owner} must be two-dimensional [T x N] with N >= 1 "
            f"(rows are bars, columns symbols). Got shape {x.shape} instead. Fix: "
            "returns.reshape(-1, 1) for one series."
        )
    n_inf = int(np.isinf(x).sum())
    if n_inf:
        raise ParameterError(
            f"The 'returns' parameter of {owner} holds {n_inf} infinite values (first at row, "
            f"column {tuple(int(i) for i in np.argwhere(np.isinf(x))[0])}). Fix: mark missing "
            "bars with NaN, e.g. np.where(np.isfinite(r), r, np.nan)."
        )
    return np.ascontiguousarray(x)


def rolling_correlation(returns: np.ndarray, window: int, *, every: int = 1) -> np.ndarray:
    """Return the trailing-window Pearson correlation matrices of a set of return series.

    Parameters
    ----------
    returns : array of shape (T, N)
        Periodic returns, one column per symbol; NaN marks a missing bar (the pairs with that
        symbol skip that row). Infinite values are refused.
    window : int
        Rows per matrix (>= 3): the matrix at row ``t`` uses rows ``t-window+1 .. t``.
    every : int, default 1
        Spacing of the matrices in rows: they end at rows ``window-1, window-1+every, ...``
        (``every=78`` on 5-minute bars gives one per session when sessions align with rows).

    Returns
    -------
    array of shape (K, N, N)
        ``K = (T - window) // every + 1`` symmetric matrices (``K = 0`` when ``T < window``);
        matrix ``k`` ends at row ``window - 1 + k * every``. A cell is NaN when the pair has
        fewer than 3 joint finite rows or one series is constant over them; the diagonal is 1
        where the series has variance (at least 3 finite rows), else NaN.

    Raises
    ------
    ParameterError
        When ``returns`` is not a 2-D array of numbers or holds infinities, or ``window`` /
        ``every`` is not an int in range.

    Examples
    --------
    >>> r = np.random.default_rng(0).normal(0, 1e-3, (780, 3))
    >>> rolling_correlation(r, 390, every=78).shape
    (6, 3, 3)
    """
    owner = "rolling_correlation"
    x = _check_returns(owner, returns)
    window = _check_int(owner, "window", window, MIN_PAIRS, "e.g. window=390 (5 sessions)")
    every = _check_int(owner, "every", every, 1, "e.g. every=1 (every row) or every=78")
    n_t, n = x.shape
    n_out = (n_t - window) // every + 1 if n_t >= window else 0
    if n_out == 0:
        return np.empty((0, n, n))
    if every * _DENSE < window:
        return _sliding_nb(x, window, every, n_out)
    return _spaced_nb(x, window, every, n_out)


def correlation_frame(returns: pl.DataFrame, window: int, every: int = 1) -> pl.DataFrame:
    """Return rolling correlations of a wide returns frame as a long ``ts, a, b, rho`` frame.

    One row per matrix cell, both orders of each pair and the diagonal included, so one matrix
    is a filter and a pivot away from a heatmap::

        rho = correlation_frame(r, 390, every=78)
        last = rho.filter(pl.col("ts") == pl.col("ts").max())
        last.pivot(on="b", index="a", values="rho")  # symbols x symbols

    Parameters
    ----------
    returns : pl.DataFrame
        ``ts`` (strictly increasing) plus one numeric column of returns per symbol; null or
        NaN is a missing bar (e.g. ``bars.pivot(on="symbol", index="ts", values="close")``,
        then ``pct_change`` per column).
    window : int
        Rows per matrix (>= 3), see :func:`rolling_correlation`.
    every : int, default 1
        Spacing of the matrices in rows.

    Returns
    -------
    pl.DataFrame
        ``ts`` (the last row of each matrix's window, same dtype as the input), ``a``, ``b``
        (symbol names, in column order) and ``rho`` (Float64, null where undefined); ``K x N x
        N`` rows sorted by ``ts, a, b`` in column order. Use :func:`rolling_correlation` for
        dense requests on many symbols (``every=1`` over a year of 50 symbols is 48M rows).

    Raises
    ------
    ParameterError
        When the frame has no ``ts``, an unsorted or repeated ``ts``, no symbol column or a
        non-numeric one, or ``window`` / ``every`` is out of range.
    """
    owner = "correlation_frame"
    if not isinstance(returns, pl.DataFrame):
        raise ParameterError(
            f"The 'returns' parameter of {owner} must be a polars DataFrame (ts + one column "
            f"per symbol). Got {type(returns).__name__} instead. Fix: pl.from_pandas(df, "
            "include_index=True) or use rolling_correlation on arrays."
        )
    names = [c for c in returns.columns if c != "ts"]
    if "ts" not in returns.columns or not names:
        raise ParameterError(
            f"The 'returns' frame passed to {owner} must hold 'ts' plus at least one symbol "
            f"column. Got columns {returns.columns!r}. Fix: e.g. "
            "bars.pivot(on='symbol', index='ts', values='ret')."
        )
    bad = [c for c in names if not returns.schema[c].is_numeric()]
    if bad:
        raise ParameterError(
            f"Column {bad[0]!r} of the returns frame passed to {owner} must be numeric. Got "
            f"dtype {returns.schema[bad[0]]}. Fix: pl.col({bad[0]!r}).cast(pl.Float64), or drop "
            "non-return columns."
        )
    ts = returns["ts"]
    if ts.null_count() or not (ts.is_sorted() and ts.n_unique() == ts.len()):
        raise ParameterError(
            f"The 'ts' column of the returns frame passed to {owner} must be strictly "
            "increasing and without nulls (one row per bar, rows being time). Fix: "
            "returns.sort('ts').unique('ts', keep='last', maintain_order=True)."
        )
    x = returns.select(pl.col(names).cast(pl.Float64).fill_null(np.nan)).to_numpy()
    m = rolling_correlation(x, window, every=every)
    k, n = m.shape[0], len(names)
    ends = window - 1 + np.arange(k) * every
    return pl.DataFrame(
        {
            "ts": ts.gather(np.repeat(ends, n * n)),
            "a": pl.Series(np.tile(np.repeat(names, n), k), dtype=pl.String),
            "b": pl.Series(np.tile(names, n * k), dtype=pl.String),
            "rho": pl.Series(m.ravel(), dtype=pl.Float64).fill_nan(None),
        }
    )


# ---------------------------------------------------------------------------------- kernels
@njit(cache=True, inline="always")
def _rho(n, cov, va, vb, msa, msb):
    # va, vb: sums of squared deviations; msa, msb: raw mean squares (the constant-series test)
    if n < MIN_PAIRS or va <= _REL_VAR * n * msa or vb <= _REL_VAR * n * msb:
        return np.nan
    r = cov / np.sqrt(va * vb)
    return min(1.0, max(-1.0, r))


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(u, v):
    s = 0.0
    for i in range(u.shape[0]):
        s += u[i] * v[i]
    return s


@njit(cache=True)
def _window_matrix(x, start, window, out, c, c2, holes):
    # The matrix of rows start .. start+window-1. Each column is centred by its own mean over
    # its finite rows (c, 0 where NaN; c2 its squares) and its NaN rows listed (holes). A
    # pair's cross-product is one dot product; its joint sums are the column sums minus the
    # other column's holes: one pass per pair plus its missing rows, and the one-pass formulas
    # run on centred values (no cancellation).
    n = x.shape[1]
    n_hole = np.zeros(n, dtype=np.int64)
    mean = np.zeros(n)
    for r in range(window):
        for a in range(n):
            v = x[start + r, a]
            if np.isnan(v):
                holes[a, n_hole[a]] = r
                n_hole[a] += 1
            else:
                mean[a] += v
    for a in range(n):
        k = window - n_hole[a]
        mean[a] = mean[a] / k if k > 0 else 0.0
    for r in range(window):
        for a in range(n):
            v = x[start + r, a]
            if np.isnan(v):
                c[a, r] = 0.0
                c2[a, r] = 0.0
            else:
                c[a, r] = v - mean[a]
                c2[a, r] = c[a, r] * c[a, r]
    col = np.empty(n)
    ss = np.empty(n)
    for a in range(n):
        col[a] = _sum(c[a])
        ss[a] = _sum(c2[a])
    for a in range(n):
        for b in range(a, n):
            sa, qa, sb, qb = col[a], ss[a], col[b], ss[b]
            if a == b:
                k = window - n_hole[a]
                cov = qa
            else:
                both = 0  # rows missing in both
                for i in range(n_hole[b]):
                    r = holes[b, i]
                    sa -= c[a, r]
                    qa -= c2[a, r]
                for i in range(n_hole[a]):
                    r = holes[a, i]
                    sb -= c[b, r]
                    qb -= c2[b, r]
                    if np.isnan(x[start + r, b]):
                        both += 1
                k = window - n_hole[a] - n_hole[b] + both
                cov = _dot(c[a], c[b])
            rho = np.nan
            if k >= MIN_PAIRS:
                ik = 1.0 / k
                va = qa - sa * sa * ik
                vb = qb - sb * sb * ik
                msa = (qa + 2.0 * mean[a] * sa) * ik + mean[a] * mean[a]  # raw mean squares
                msb = (qb + 2.0 * mean[b] * sb) * ik + mean[b] * mean[b]
                rho = _rho(k, cov - sa * sb * ik, va, vb, msa, msb)
                if a == b and not np.isnan(rho):
                    rho = 1.0
            out[a, b] = rho
            out[b, a] = rho


@njit(cache=True, fastmath={"reassoc", "contract"})
def _sum(u):
    s = 0.0
    for i in range(u.shape[0]):
        s += u[i]
    return s


@njit(cache=True, parallel=True)
def _spaced_nb(x, window, every, n_out):
    n = x.shape[1]
    out = np.empty((n_out, n, n))
    for k in prange(n_out):
        c = np.empty((n, window))
        c2 = np.empty((n, window))
        holes = np.empty((n, window), dtype=np.int64)
        _window_matrix(x, k * every, window, out[k], c, c2, holes)
    return out


@njit(cache=True)
def _sliding_nb(x, window, every, n_out):
    # Per-pair running sums over the window: add row t, remove row t - window, emit on the
    # requested rows. Values are shifted by their column's first finite value.
    n_t, n = x.shape
    shift = np.zeros(n)
    for a in range(n):  # first finite value: a past-only constant
        for t in range(n_t):
            if not np.isnan(x[t, a]):
                shift[a] = x[t, a]
                break
    cnt = np.zeros((n, n))  # joint finite rows
    s1 = np.zeros((n, n))  # s1[a, b]: sum of a's shifted values over the rows joint with b
    s2 = np.zeros((n, n))  # s2[a, b]: sum of their squares
    sx = np.zeros((n, n))  # cross-products
    v = np.zeros(n)
    m = np.zeros(n)
    out = np.empty((n_out, n, n))
    k = 0
    for t in range(n_t):
        for step in range(2):
            r = t if step == 0 else t - window
            if r < 0:
                continue
            sign = 1.0 if step == 0 else -1.0
            for a in range(n):
                y = x[r, a]
                m[a] = 0.0 if np.isnan(y) else 1.0
                v[a] = 0.0 if np.isnan(y) else y - shift[a]
            for a in range(n):
                if m[a] == 0.0:
                    continue
                va = sign * v[a]
                qa = va * v[a]
                for b in range(n):  # one store per loop: each vectorises
                    cnt[a, b] += sign * m[b]
                for b in range(n):
                    s1[a, b] += va * m[b]
                for b in range(n):
                    s2[a, b] += qa * m[b]
                for b in range(n):
                    sx[a, b] += va * v[b]
        if t < window - 1 or (t - window + 1) % every != 0:
            continue
        o = out[k]
        for a in range(n):
            for b in range(a, n):
                c = cnt[a, b]
                rho = np.nan
                if c >= MIN_PAIRS:
                    ic = 1.0 / c
                    ua = s1[a, b]
                    ub = s1[b, a]
                    va = s2[a, b] - ua * ua * ic
                    vb = s2[b, a] - ub * ub * ic
                    ma = shift[a] + ua * ic  # raw means, for the constant-series test
                    mb = shift[b] + ub * ic
                    if va > _REL_VAR * (va + c * ma * ma) and vb > _REL_VAR * (vb + c * mb * mb):
                        rho = 1.0
                        if a != b:
                            rho = (sx[a, b] - ua * ub * ic) / np.sqrt(va * vb)
                            rho = min(1.0, max(-1.0, rho))
                o[a, b] = rho
                o[b, a] = rho
        k += 1
    return out
