"""Numba kernels behind the indicator expressions: pure functions of numpy arrays.

Every per-symbol kernel takes ``gid``, an integer array whose value changes exactly where a new
symbol's rows begin (``rle_id`` of the symbol column of a frame sorted by ``(symbol, ts)``), and
float64 inputs; it fills float64 arrays with NaN where the value is undefined (single-output
kernels write into a preallocated ``out`` given last, so the caller chooses where the column's
memory comes from; multi-output kernels return new arrays). One pass over ``gid`` finds the
symbols' row ranges, then the symbols are computed in parallel (``prange``: one symbol's rows are
a sequential recursion, different symbols are independent), each writing its own slice. Recursions follow TA-Lib's seeding so that values match TA-Lib to
rounding (Wilder updates are written as ``p + (x - p) / n`` with a precomputed reciprocal, which
differs from TA-Lib's ``(p (n - 1) + x) / n`` by a few ulps and is three times shorter on the
dependency chain). Kernels release the GIL, so polars can run several of them at once.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_ZERO = 1e-8  # TA-Lib's TA_IS_ZERO threshold
_REFRESH = 512  # rolling sums are recomputed from scratch this often (bounds rounding drift)
_ILL = 1e4  # re-anchor when mean(y^2) exceeds the variance by this factor (cancellation guard)
_FLAT = 1e-24  # a window whose variance is below this fraction of mean^2 is flat (no z-score)


@njit(cache=True, nogil=True)
def segment_starts(gid):
    """Return the first row of every run of equal ``gid`` values, then ``len(gid)``."""
    size = gid.shape[0]
    runs = 1 if size else 0
    for k in range(1, size):
        runs += gid[k] != gid[k - 1]
    out = np.empty(runs + 1, np.int64)
    out[0] = 0
    j = 1
    for k in range(1, size):
        if gid[k] != gid[k - 1]:
            out[j] = k
            j += 1
    out[runs] = size
    return out


@njit(cache=True, nogil=True)
def _ema_run(x, a, b, n, alpha, offset, out):
    s = a + offset
    while s < b and np.isnan(x[s]):
        s += 1
    if b - s < n:
        return
    tot = 0.0
    for k in range(s, s + n):
        tot += x[k]
    p = tot / n
    out[s + n - 1] = p
    for k in range(s + n, b):
        v = x[k]
        if np.isnan(v):
            continue
        p = ((v - p) * alpha) + p
        out[k] = p


@njit(cache=True, nogil=True, parallel=True)
def ema(gid, x, n, alpha, offset, out):
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        a, b = st[g], st[g + 1]
        out[a:b] = np.nan
        _ema_run(x, a, b, n, alpha, offset, out)


@njit(cache=True, nogil=True, parallel=True)
def macd(gid, x, fast, slow, signal):
    size = x.shape[0]
    line = np.empty(size)
    sig = np.empty(size)
    hist = np.empty(size)
    slow_ema = np.empty(size)
    fast_ema = np.empty(size)
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        i, j = st[g], st[g + 1]
        sig[i:j] = np.nan
        slow_ema[i:j] = np.nan
        fast_ema[i:j] = np.nan
        # TA-Lib seeds the fast EMA on the window that ends where the slow one starts.
        _ema_run(x, i, j, slow, 2.0 / (slow + 1), 0, slow_ema)
        _ema_run(x, i, j, fast, 2.0 / (fast + 1), slow - fast, fast_ema)
        for k in range(i, j):
            line[k] = fast_ema[k] - slow_ema[k]
        _ema_run(line, i, j, signal, 2.0 / (signal + 1), 0, sig)
        for k in range(i, j):
            hist[k] = line[k] - sig[k]
    return line, sig, hist


@njit(cache=True, nogil=True)
def _rsi_value(gain, loss):
    tot = gain + loss
    if tot > 0.0:
        return 100.0 * (gain / tot)
    return np.nan


@njit(cache=True, nogil=True)
def _rsi_run(x, i, j, n, out):
    out[i:j] = np.nan
    if j - i <= n:
        return
    prev = x[i]
    gain = 0.0
    loss = 0.0
    for k in range(i + 1, i + n + 1):
        d = x[k] - prev
        prev = x[k]
        if d < 0:
            loss -= d
        else:
            gain += d
    gain /= n
    loss /= n
    out[i + n] = _rsi_value(gain, loss)
    inv = 1.0 / n
    for k in range(i + n + 1, j):
        d = x[k] - prev
        prev = x[k]
        up = d if d > 0 else 0.0
        down = -d if d < 0 else 0.0
        gain += (up - gain) * inv
        loss += (down - loss) * inv
        out[k] = _rsi_value(gain, loss)


@njit(cache=True, nogil=True, parallel=True)
def rsi(gid, x, n, out):
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        _rsi_run(x, st[g], st[g + 1], n, out)


@njit(cache=True, nogil=True)
def _true_range(h, lo, prev_close):
    top = h if h > prev_close else prev_close
    bottom = lo if lo < prev_close else prev_close
    return top - bottom


@njit(cache=True, nogil=True)
def _atr_run(high, low, close, i, j, n, out):
    out[i:j] = np.nan
    if j - i <= n:
        return
    tot = 0.0
    for k in range(i + 1, i + n + 1):
        tot += _true_range(high[k], low[k], close[k - 1])
    p = tot / n
    out[i + n] = p
    inv = 1.0 / n
    for k in range(i + n + 1, j):
        p += (_true_range(high[k], low[k], close[k - 1]) - p) * inv
        out[k] = p


@njit(cache=True, nogil=True, parallel=True)
def atr(gid, high, low, close, n, out):
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        _atr_run(high, low, close, st[g], st[g + 1], n, out)


@njit(cache=True, nogil=True, parallel=True)
def adx(gid, high, low, close, n, out):
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        i, j = st[g], st[g + 1]
        out[i:j] = np.nan
        if j - i >= 2 * n:
            _adx_run(high, low, close, i, j, n, out)


@njit(cache=True, nogil=True)
def _adx_run(high, low, close, a, b, n, out):
    # Transcribed from TA-Lib's TA_ADX (default compatibility, no unstable period).
    minus_dm = 0.0
    plus_dm = 0.0
    tr = 0.0
    today = a
    prev_high = high[today]
    prev_low = low[today]
    prev_close = close[today]
    for _ in range(n - 1):
        today += 1
        diff_p = high[today] - prev_high
        prev_high = high[today]
        diff_m = prev_low - low[today]
        prev_low = low[today]
        if diff_m > 0 and diff_p < diff_m:
            minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            plus_dm += diff_p
        tr += _true_range(prev_high, prev_low, prev_close)
        prev_close = close[today]
    sum_dx = 0.0
    for _ in range(n):
        today += 1
        diff_p = high[today] - prev_high
        prev_high = high[today]
        diff_m = prev_low - low[today]
        prev_low = low[today]
        minus_dm -= minus_dm / n
        plus_dm -= plus_dm / n
        if diff_m > 0 and diff_p < diff_m:
            minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            plus_dm += diff_p
        tr = tr - (tr / n) + _true_range(prev_high, prev_low, prev_close)
        prev_close = close[today]
        if not (-_ZERO < tr < _ZERO):
            minus_di = 100.0 * (minus_dm / tr)
            plus_di = 100.0 * (plus_dm / tr)
            tot = minus_di + plus_di
            if not (-_ZERO < tot < _ZERO):
                sum_dx += 100.0 * (abs(minus_di - plus_di) / tot)
    prev_adx = sum_dx / n
    out[today] = prev_adx
    while today < b - 1:
        today += 1
        diff_p = high[today] - prev_high
        prev_high = high[today]
        diff_m = prev_low - low[today]
        prev_low = low[today]
        minus_dm -= minus_dm / n
        plus_dm -= plus_dm / n
        if diff_m > 0 and diff_p < diff_m:
            minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            plus_dm += diff_p
        tr = tr - (tr / n) + _true_range(prev_high, prev_low, prev_close)
        prev_close = close[today]
        if not (-_ZERO < tr < _ZERO):
            minus_di = 100.0 * (minus_dm / tr)
            plus_di = 100.0 * (plus_dm / tr)
            tot = minus_di + plus_di
            if not (-_ZERO < tot < _ZERO):
                dx = 100.0 * (abs(minus_di - plus_di) / tot)
                prev_adx = ((prev_adx * (n - 1)) + dx) / n
        out[today] = prev_adx


@njit(cache=True, nogil=True)
def _window_sums(x, lo, hi, c):
    s1 = 0.0
    s2 = 0.0
    bad = 0
    for k in range(lo, hi + 1):
        v = x[k]
        if np.isnan(v):
            bad += 1
        else:
            y = v - c
            s1 += y
            s2 += y * y
    return s1, s2, bad


@njit(cache=True, nogil=True)
def _window_mean(x, lo, hi):
    tot = 0.0
    for k in range(lo, hi + 1):
        tot += x[k]
    return tot / (hi - lo + 1)


@njit(cache=True, nogil=True)
def _anchor(x, lo, hi):
    for k in range(hi, lo - 1, -1):
        if not np.isnan(x[k]):
            return x[k]
    return 0.0


@njit(cache=True, nogil=True)
def _moments_run(x, i, j, n, ddof, mean, std, z, mode):
    """Rolling moments of rows ``i..j-1``: ``mean`` and ``std`` (mode 0), ``z`` (1) or ``mean`` (2).

    The sums are kept relative to an anchor ``c`` (a recent value, or the window mean when
    ``mean(y^2)`` dwarfs the variance), recomputed every ``_REFRESH`` rows, so the one-pass
    variance keeps the precision of a two-pass one.
    """
    if mode == 1:
        z[i:j] = np.nan
    else:
        mean[i:j] = np.nan
        if mode == 0:
            std[i:j] = np.nan
    first = i + n - 1
    if first >= j:
        return
    inv_n = 1.0 / n
    inv_d = 1.0 / (n - ddof) if n > ddof else 0.0
    c = _anchor(x, i, first)
    s1, s2, bad = _window_sums(x, i, first, c)
    steps = 0
    for k in range(first, j):
        if k > first:
            steps += 1
            if steps >= _REFRESH:
                steps = 0
                c = _anchor(x, k - n + 1, k)
                s1, s2, bad = _window_sums(x, k - n + 1, k, c)
            else:
                old = x[k - n]
                new = x[k]
                if np.isnan(old):
                    bad -= 1
                else:
                    y = old - c
                    s1 -= y
                    s2 -= y * y
                if np.isnan(new):
                    bad += 1
                else:
                    y = new - c
                    s1 += y
                    s2 += y * y
        if bad == 0:
            m = s1 * inv_n
            var = (s2 - s1 * m) * inv_d
            if var * _ILL < s2 * inv_n:  # cancellation: re-anchor on the window mean
                steps = 0
                c = _window_mean(x, k - n + 1, k)
                s1, s2, bad = _window_sums(x, k - n + 1, k, c)
                m = s1 * inv_n
                var = (s2 - s1 * m) * inv_d
            mu = c + m
            sd = np.sqrt(var) if var > 0.0 else 0.0
            if mode == 1:
                if sd > 0.0 and sd * sd > _FLAT * mu * mu:
                    z[k] = (x[k] - mu) / sd
            else:
                mean[k] = mu
                if mode == 0 and n > ddof:
                    std[k] = sd


@njit(cache=True, nogil=True, parallel=True)
def rolling_moments(gid, x, n, ddof):
    """Rolling mean and standard deviation over ``n`` rows; NaN if the window holds a NaN."""
    size = x.shape[0]
    mean = np.empty(size)
    std = np.empty(size)
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        _moments_run(x, st[g], st[g + 1], n, ddof, mean, std, mean, 0)
    return mean, std


@njit(cache=True, nogil=True, parallel=True)
def rolling_mean(gid, x, n, out):
    """Rolling mean over ``n`` rows; NaN if the window holds a NaN."""
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        _moments_run(x, st[g], st[g + 1], n, 0, out, out, out, 2)


@njit(cache=True, nogil=True, parallel=True)
def rolling_zscore(gid, x, n, ddof, out):
    """Rolling ``(x - mean) / std``; NaN when the window holds a NaN or is flat."""
    st = segment_starts(gid)
    for g in prange(st.shape[0] - 1):
        _moments_run(x, st[g], st[g + 1], n, ddof, out, out, out, 1)


@njit(cache=True, nogil=True)
def local_clock(ts_us, lo_us, offsets_us):
    """Shift UTC epoch microseconds to local wall-clock microseconds (hourly offset table)."""
    out = np.empty(ts_us.shape[0], np.int64)
    hour = np.int64(3_600_000_000)
    for k in range(ts_us.shape[0]):
        out[k] = ts_us[k] + offsets_us[(ts_us[k] - lo_us) // hour]
    return out


@njit(cache=True, nogil=True)
def session_vwap(gid, local_us, price, volume, with_sd):
    """Cumulative volume-weighted mean (and standard deviation) of price within each local day."""
    size = price.shape[0]
    vwap = np.full(size, np.nan)
    sd = np.full(size if with_sd else 0, np.nan)
    c = 0.0
    vol = 0.0
    sy = 0.0
    syy = 0.0
    prev_day = np.int64(0)
    for k in range(size):
        day = local_us[k] // 86_400_000_000
        if k == 0 or gid[k] != gid[k - 1] or day != prev_day:
            prev_day = day
            c = price[k]
            vol = 0.0
            sy = 0.0
            syy = 0.0
        p = price[k]
        v = volume[k]
        if not (np.isnan(p) or np.isnan(v)):
            y = p - c
            vol += v
            sy += v * y
            syy += v * y * y
        if vol > 0.0:
            m = sy / vol
            vwap[k] = c + m
            if with_sd:
                var = syy / vol - m * m
                sd[k] = np.sqrt(var) if var > 0.0 else 0.0
    return vwap, sd
