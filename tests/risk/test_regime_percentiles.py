"""The regime cut-offs: selection in place gives np.percentile's values bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from workbench.risk import _kernel as K


@njit(cache=False)
def _np_percentiles(a, p0, p1):  # numba's np.percentile: what the kernel called before
    return np.percentile(a, p0), np.percentile(a, p1)


@njit(cache=False)
def _regime_by_np_percentile(vol, day, lookback, lo_pct, hi_pct, m_lo, m_mid, m_hi, from_row):
    # regime_nb as it read its cut-offs from np.percentile of a copy of the window
    n_t, n_s = vol.shape
    out = np.full((n_t, n_s), m_mid)
    for j in range(n_s):
        hist = np.empty(n_t)
        lo = hi = np.nan
        cur_day, n_at_start, ready, n_hist = -1, 0, False, 0
        for t in range(n_t):
            if day[t] != cur_day:
                cur_day, n_at_start, ready = day[t], n_hist, False
            v = vol[t, j]
            if np.isnan(v):
                continue
            if t >= from_row:
                if not ready:
                    ready = True
                    k = min(n_at_start, lookback)
                    lo = hi = np.nan
                    if k >= max(lookback // 2, 2):
                        w = hist[n_at_start - k : n_at_start].copy()
                        lo, hi = np.percentile(w, lo_pct), np.percentile(w, hi_pct)
                if not np.isnan(lo):
                    if v < lo:
                        out[t, j] = m_lo
                    elif v > hi:
                        out[t, j] = m_hi
            hist[n_hist] = v
            n_hist += 1
    return out


pct = st.floats(0.01, 99.99, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 300),
    p0=pct,
    p1=pct,
    seed=st.integers(0, 10_000),
    ties=st.booleans(),
)
def test_two_percentiles_equal_np_percentile(n, p0, p1, seed, ties) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(1e-3, 3e-4, n)
    if ties:  # repeated values: the order statistics around a rank may be equal
        a = np.round(a, 4)
    want = _np_percentiles(a.copy(), p0, p1)
    buf = np.concatenate([a, rng.normal(size=5)])  # a buffer longer than the window
    got = K._two_percentiles(buf, n, p0, p1)
    assert got == want  # exact, not approximately
    np.testing.assert_array_equal(np.sort(buf[:n]), np.sort(a))  # a rearrangement of the window


@settings(max_examples=40, deadline=None)
@given(
    n_t=st.integers(1, 400),
    per_day=st.sampled_from([1, 7, 39]),
    lookback=st.integers(2, 60),
    p=st.sampled_from([(33.0, 67.0), (10.0, 90.0), (50.0, 50.0), (0.0, 75.0), (25.0, 100.0)]),
    seed=st.integers(0, 10_000),
    from_last=st.booleans(),
)
def test_regime_equals_np_percentile_per_session(n_t, per_day, lookback, p, seed, from_last):
    rng = np.random.default_rng(seed)
    vol = np.abs(rng.normal(1e-3, 3e-4, (n_t, 2)))
    vol[rng.random(vol.shape) < 0.1] = np.nan
    day = (np.arange(n_t) // per_day).astype(np.int64)
    args = (vol, day, lookback, p[0], p[1], 1.2, 1.0, 0.5, n_t - 1 if from_last else 0)
    np.testing.assert_array_equal(K.regime_nb(*args), _regime_by_np_percentile(*args))
