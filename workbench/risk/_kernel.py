"""Numba kernels of the risk layer: one implementation of every rule, called by the backtest loop
(:func:`simulate_risk_nb`) and, one bar at a time, by the trading session (``RiskEngine``).

State lives in two float64 arrays the caller owns: ``S[n_symbols, N_S]`` (per symbol) and
``G[N_G]`` (portfolio), plus ``V`` (a ring of violation times). Parameters are one float64 vector
``rp`` (indices ``R_*``; NaN turns a rule off). Every function here is ``njit(cache=True)`` and
lives in this one module, so that numba's per-file cache can never pair a stale rule with a new
caller.

Time contract: the decision at row ``t`` uses only values known at the close of bar ``t``
(predictions, closes, ATR, volatility, moving average, correlations over rows ``<= t``, equity
marked at that close); its order fills at the symbol's next bar.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from workbench.backtest import _kernels as BK

# Rules called on every bar never allocate: compiled without the runtime's reference counting,
# a call costs no atomic increment and decrement per array argument (inlined into a caller that
# counts references, those pairs stay in the bar loop and cost more than the rules themselves).
_leaf = njit(cache=True, nogil=True, _nrt=False)
# the small ones are inlined into their (equally reference-count free) callers in the bar loop
_leaf_inline = njit(cache=True, nogil=True, _nrt=False, inline="always")

# ------------------------------------------------------------------ per-symbol state columns
(
    S_QTY,
    S_PEND,
    S_PEND_ROW,
    S_HELD,
    S_MODEL,
    S_AVG,
    S_STOP,
    S_ENTRY_NOT,
    S_RPNL,
    S_LAST,
    S_ENTRY_DAY,
) = range(11)
N_S = 11
# ------------------------------------------------------------------ portfolio state
(
    G_CASH,
    G_EQ,
    G_KILL,
    G_TRIP_ROW,
    G_TRIP_RULE,
    G_TRIP_VALUE,
    G_TRIP_LIMIT,
    G_DAY,
    G_DAY_START,
    G_DAY_PEAK,
    G_CONSEC,
    G_N_TRADES,
    G_N_WINS,
    G_SUM_WIN,
    G_SUM_LOSS,
    G_SUM_RET,
    G_SUM_RET2,
    G_VIOL_HEAD,
    G_DT0,
    G_DT1,
    G_DT2,
    G_DT3,
    G_DT4,
    G_PREV_EQ,
) = range(24)
N_G = 24
# ------------------------------------------------------------------ parameters
(
    R_LONG,
    R_SHORT,
    R_PROBABILITY,
    R_TREND,
    R_ALLOW_SHORT,
    R_FRACTIONAL,
    R_SIZER,
    R_FRACTION,
    R_RISK_PCT,
    R_ATR_K,
    R_VOL_TARGET,
    R_SYM_LEV,
    R_KELLY_MODE,
    R_KELLY_FRAC,
    R_KELLY_MAX_RISK,
    R_KELLY_MIN,
    R_MIN_TRADE,
    R_MAX_POS,
    R_MAX_OPEN,
    R_SECTOR_CAP,
    R_MAX_CORR,
    R_CORR_WIN,
    R_HEAT_MAX,
    R_LEVERAGE,
    R_MAX_GROSS,
    R_MAX_NET,
    R_PDT,
    R_DAILY_LOSS,
    R_MAX_DD,
    R_CONSEC,
    R_MAX_VIOL,
    R_VIOL_WIN_US,
    R_HEAT_EMERG,
    R_EVERY_BAR,
    R_ATR_ON_DEMAND,  # ATR window: the backtest measures the ATR at order rows from the bars
) = range(35)
N_R = 35
SIZERS = {"fixed_fraction": 0, "atr_risk": 1, "vol_target": 2, "kelly": 3}
KELLY_MODES = {"payoff": 0, "mean_variance": 1}
# ------------------------------------------------------------------ rule codes (denials)
# 1..5 are the backtest's own codes (not tradable, not shortable, short disabled, not
# fractionable, buying power); the risk layer adds its limits and its two overrides.
MAX_POSITION, MAX_OPEN, SECTOR, CORRELATION, HEAT, GROSS, NET, OPEN_ORDER, PDT = range(10, 19)
KILL_SWITCH, EOD_FLATTEN = 19, 20
# kill-switch trip codes
TRIP_DAILY_LOSS, TRIP_DRAWDOWN, TRIP_CONSECUTIVE, TRIP_VIOLATIONS, TRIP_HEAT = range(1, 6)
# order reasons
ORDER_MODEL, ORDER_EOD, ORDER_KILL = 0, 1, 2
# order record columns
O_ROW, O_COL, O_QTY, O_TARGET, O_PRICE, O_REASON, O_EQUITY = range(7)
N_ORDER = 7
# denial record columns (D_DEC, D_COL, D_CODE, D_TARGET, D_REQ, D_ALLOWED as the backtest's)
DR_VALUE, DR_LIMIT = 6, 7
N_DENIAL = 8
# room a caller of decide_row_nb makes in its record buffers before each row, per symbol
ORD_PER_ROW = 2  # a model order and a kill-switch flatten
DEN_PER_ORDER = 10  # at most one denial per rule an order meets
# rows a backtest's fill and order buffers start with (at most; virtual memory until written)
REC_ROWS = 1 << 21
PDT_EQUITY = 25_000.0
PDT_MAX_DAY_TRADES = 3


def new_state(n_symbols: int, cash: float, n_violations: int) -> tuple:
    """Return fresh ``(S, G, V)`` state arrays for ``n_symbols`` and starting ``cash``."""
    s = np.zeros((n_symbols, N_S))
    s[:, S_PEND_ROW] = -1.0
    s[:, S_HELD] = np.nan
    s[:, S_MODEL] = np.nan
    s[:, S_LAST] = np.nan
    s[:, S_ENTRY_DAY] = -1.0
    g = np.zeros(N_G)
    g[G_CASH] = cash
    g[G_EQ] = cash
    g[G_TRIP_ROW] = -1.0
    g[G_DAY] = -1.0
    g[G_DAY_START] = cash
    g[G_DAY_PEAK] = cash
    g[G_DT0 : G_DT4 + 1] = -1.0
    g[G_PREV_EQ] = cash
    v = np.full(max(n_violations, 1), -1.0)
    return s, g, v


# ====================================================================== inputs (past only)


@njit(cache=True, nogil=True)
def risk_inputs_nb(high, low, close, atr_w, vol_w, sma_w, need_atr, need_vol, need_sma, need_ret,
                   from_row, compact):  # fmt: skip
    """Per cell: simple ATR over ``atr_w`` bars, realised volatility (std of log returns over
    ``vol_w`` bars, ddof=1), moving average of ``sma_w`` closes, and the simple return.

    Windows run over each symbol's own bars (missing bars skipped) and are summed afresh per cell
    (in bar order), so a value depends only on the last window of bars: a session holding fewer
    bars of history computes exactly what the backtest did. Rows before ``from_row`` are left NaN
    (a session asks for its last row only). With ``compact`` an input no rule reads is one row
    of NaN (read through :func:`_cell`) instead of a full grid.
    """
    n_t, n_s = close.shape
    atr = np.full((n_t if (need_atr or not compact) else 1, n_s), np.nan)
    vol = np.full((n_t if (need_vol or not compact) else 1, n_s), np.nan)
    sma = np.full((n_t if (need_sma or not compact) else 1, n_s), np.nan)
    ret = np.full((n_t if (need_ret or not compact) else 1, n_s), np.nan)
    want_ret = need_ret or not compact
    if not (need_atr or need_vol or need_sma or want_ret):
        return atr, vol, sma, ret  # no rule reads any: rows of NaN, no pass over the bars
    idx = np.empty(n_t, dtype=np.int64)
    c = np.empty(n_t)
    tr = np.empty(n_t)
    lr = np.empty(n_t)
    for j in range(n_s):
        m = 0
        for t in range(n_t):  # this symbol's bars, in order
            x = close[t, j]
            if np.isnan(x):
                continue
            idx[m] = t
            c[m] = x
            if m >= 1:
                pc = c[m - 1]
                if need_atr:
                    tr[m] = max(high[t, j], pc) - min(low[t, j], pc)
                if need_vol:
                    lr[m] = np.log(x / pc)
                if want_ret:
                    ret[t, j] = x / pc - 1.0
            m += 1
        k_from = 0
        while k_from < m and idx[k_from] < from_row:
            k_from += 1
        if need_atr:
            _window_means(tr, idx, m, atr_w, max(k_from, atr_w), atr, j)
        if need_vol:
            _window_stds(lr, idx, m, vol_w, max(k_from, vol_w), vol, j)
        if need_sma:
            _window_means(c, idx, m, sma_w, max(k_from, sma_w - 1), sma, j)
    return atr, vol, sma, ret


@njit(cache=True, nogil=True)
def _window_means(x, idx, m, w, k0, out, j):
    # out[idx[k], j] = mean of x[k-w+1 .. k], summed in order from 0.0, for k >= k0; four cells
    # at a time (four independent sums: the same additions in the same order, four times faster)
    k = k0
    while k + 3 < m:
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        b = k - w + 1
        for i in range(w):
            a0 += x[b + i]
            a1 += x[b + i + 1]
            a2 += x[b + i + 2]
            a3 += x[b + i + 3]
        out[idx[k], j] = a0 / w
        out[idx[k + 1], j] = a1 / w
        out[idx[k + 2], j] = a2 / w
        out[idx[k + 3], j] = a3 / w
        k += 4
    while k < m:
        acc = 0.0
        for i in range(k - w + 1, k + 1):
            acc += x[i]
        out[idx[k], j] = acc / w
        k += 1


@njit(cache=True, nogil=True)
def _window_stds(x, idx, m, w, k0, out, j):
    # out[idx[k], j] = sample std (ddof=1, two passes: mean, then squared deviations) of
    # x[k-w+1 .. k] for k >= k0; four cells at a time, each summed in order as one cell alone
    k = k0
    while k + 3 < m:
        b = k - w + 1
        mu0 = 0.0
        mu1 = 0.0
        mu2 = 0.0
        mu3 = 0.0
        for i in range(w):
            mu0 += x[b + i]
            mu1 += x[b + i + 1]
            mu2 += x[b + i + 2]
            mu3 += x[b + i + 3]
        mu0 /= w
        mu1 /= w
        mu2 /= w
        mu3 /= w
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for i in range(w):
            d0 = x[b + i] - mu0
            d1 = x[b + i + 1] - mu1
            d2 = x[b + i + 2] - mu2
            d3 = x[b + i + 3] - mu3
            s0 += d0 * d0
            s1 += d1 * d1
            s2 += d2 * d2
            s3 += d3 * d3
        out[idx[k], j] = np.sqrt(s0 / (w - 1))
        out[idx[k + 1], j] = np.sqrt(s1 / (w - 1))
        out[idx[k + 2], j] = np.sqrt(s2 / (w - 1))
        out[idx[k + 3], j] = np.sqrt(s3 / (w - 1))
        k += 4
    while k < m:
        mu = 0.0
        for i in range(k - w + 1, k + 1):
            mu += x[i]
        mu /= w
        ss = 0.0
        for i in range(k - w + 1, k + 1):
            d = x[i] - mu
            ss += d * d
        out[idx[k], j] = np.sqrt(ss / (w - 1))
        k += 1


@_leaf
def atr_cell_nb(high, low, close, t, j, w):
    """The ATR of cell ``(t, j)`` as :func:`risk_inputs_nb` computes it (the mean of the true
    ranges of the symbol's last ``w`` bars, summed in bar order), from the bars alone; NaN
    without a bar at ``t`` or with fewer than ``w + 1`` bars up to it."""
    if np.isnan(close[t, j]):
        return np.nan
    first = -1
    k = 0
    for r in range(t, -1, -1):
        if not np.isnan(close[r, j]):
            k += 1
            if k == w + 1:
                first = r
                break
    if first < 0:
        return np.nan
    acc = 0.0
    pc = close[first, j]
    for r in range(first + 1, t + 1):
        x = close[r, j]
        if np.isnan(x):
            continue
        acc += max(high[r, j], pc) - min(low[r, j], pc)
        pc = x
    return acc / w


@_leaf_inline
def _cell(a, t, j):
    """``a[t, j]`` of an input grid, or of its single row when it is compact."""
    return a[t if a.shape[0] > 1 else 0, j]


@_leaf_inline
def _cells(atr, vol, sma, regime, t, j):
    """The rules' inputs of cell ``(t, j)``: ATR, volatility, moving average, regime multiplier."""
    return _cell(atr, t, j), _cell(vol, t, j), _cell(sma, t, j), _regime_at(regime, t, j)


@njit(cache=True, nogil=True)
def calendar_rows_nb(ts, closes, tf_us, eod_us, want_eod):
    """Per bar start: the index of its session (the first close after it, the last session for
    bars past the calendar) and whether its end (``ts + tf_us``) is at or after that close less
    ``eod_us``. One pass over time-ordered bars (a step back in time searches afresh)."""
    n = len(ts)
    m = len(closes)
    day = np.empty(n, dtype=np.int64)
    eod = np.zeros(n, dtype=np.bool_)
    k = 0
    for i in range(n):
        x = ts[i]
        if i == 0 or x < ts[i - 1]:
            k = np.searchsorted(closes, x, side="right")
        else:
            while k < m and closes[k] <= x:
                k += 1
        idx = min(k, m - 1)
        day[i] = idx
        if want_eod:
            eod[i] = x + tf_us >= closes[idx] - eod_us
    return day, eod


@njit(cache=True, nogil=True)
def regime_nb(vol, day, lookback, lo_pct, hi_pct, m_lo, m_mid, m_hi, from_row):
    """Size multiplier per cell from the volatility regime.

    For each session the low/high cut-offs are the ``lo_pct``/``hi_pct`` percentiles (linear
    interpolation) of the symbol's last ``lookback`` volatility values *before* that session's
    first bar, so nothing of the session itself, let alone the future, sets them; a volatility
    below the low cut-off is the low regime, above the high one the high regime. With fewer than
    ``lookback // 2`` past values, or no volatility yet, the multiplier is the medium one. Rows
    before ``from_row`` are not evaluated (medium).
    """
    n_t, n_s = vol.shape
    out = np.full((n_t, n_s), m_mid)
    buf = np.empty(lookback)
    # np.percentile's 0 and 100 read the extremes with rules of their own for infinities
    fast = 0.0 < lo_pct < 100.0 and 0.0 < hi_pct < 100.0
    hist = np.empty(n_t)
    for j in range(n_s):
        lo = np.nan
        hi = np.nan
        cur_day = -1
        n_at_start = 0
        ready = False
        n_hist = 0
        for t in range(n_t):
            if day[t] != cur_day:
                cur_day = day[t]
                n_at_start = n_hist
                ready = False
            v = vol[t, j]
            if np.isnan(v):
                continue
            if t >= from_row:
                if not ready:
                    ready = True
                    k = min(n_at_start, lookback)
                    if k >= max(lookback // 2, 2):
                        for i in range(k):
                            buf[i] = hist[n_at_start - k + i]
                        if fast:
                            lo, hi = _two_percentiles(buf, k, lo_pct, hi_pct)
                        if not fast or np.isnan(lo):
                            lo = np.percentile(buf[:k], lo_pct)
                            hi = np.percentile(buf[:k], hi_pct)
                    else:
                        lo = np.nan
                        hi = np.nan
                if not np.isnan(lo):
                    if v < lo:
                        out[t, j] = m_lo
                    elif v > hi:
                        out[t, j] = m_hi
            hist[n_hist] = v
            n_hist += 1
    return out


@_leaf
def _kth_nb(a, lo, hi, k):
    """Rearrange ``a[lo..hi]`` so that ``a[k]`` holds its ``k``-th smallest value, every value
    before it is no larger and every one after no smaller (Hoare's selection); return it."""
    while lo < hi:
        x0 = a[lo]
        x1 = a[(lo + hi) >> 1]
        x2 = a[hi]
        x = max(min(x0, x1), min(max(x0, x1), x2))  # the median of three: a value in range
        i = lo
        j = hi
        while i <= j:
            while a[i] < x:
                i += 1
            while x < a[j]:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


@_leaf
def _min_nb(a, lo, hi):
    m = a[lo]
    for i in range(lo + 1, hi + 1):
        if a[i] < m:
            m = a[i]
    return m


@_leaf
def _two_percentiles(a, n, p0, p1):
    """``np.percentile(a[:n], p0)`` and ``(..., p1)`` (for ``0 < p < 100``), bit for bit: the
    same ranks and the same linear interpolation between the two order statistics around them,
    found by selection in place (``a[:n]`` is rearranged). ``n >= 2`` finite values."""
    r0 = 1 + (n - 1) * (p0 / 100.0)
    r1 = 1 + (n - 1) * (p1 / 100.0)
    f0 = np.floor(r0)
    f1 = np.floor(r1)
    k0 = int(f0) - 1
    k1 = int(f1) - 1
    # the lower rank first; the higher one is selected among the values above it
    ka, kb = (k0, k1) if k0 <= k1 else (k1, k0)
    if kb > n - 2:  # a percentile a hair under 100 may round to the top rank: not handled here
        return np.nan, np.nan
    a_lo = _kth_nb(a, 0, n - 1, ka)
    a_hi = _min_nb(a, ka + 1, n - 1)
    if kb == ka:
        b_lo = a_lo
        b_hi = a_hi
    else:
        b_lo = _kth_nb(a, ka + 1, n - 1, kb)
        b_hi = _min_nb(a, kb + 1, n - 1)
    if k0 > k1:
        a_lo, a_hi, b_lo, b_hi = b_lo, b_hi, a_lo, a_hi
    m0 = r0 - f0
    m1 = r1 - f1
    return a_lo * (1 - m0) + a_hi * m0, b_lo * (1 - m1) + b_hi * m1


@_leaf
def correlation_nb(ret, t, a, b, window):
    """Pearson correlation of columns ``a`` and ``b`` of ``ret`` over rows ``t-window+1 .. t``
    where both are finite (NaN with fewer than 3 pairs or a constant column)."""
    n = 0
    sa = 0.0
    sb = 0.0
    saa = 0.0
    sbb = 0.0
    sab = 0.0
    for r in range(max(0, t - window + 1), t + 1):
        x = ret[r, a]
        y = ret[r, b]
        if np.isnan(x) or np.isnan(y):
            continue
        n += 1
        sa += x
        sb += y
        saa += x * x
        sbb += y * y
        sab += x * y
    if n < 3:
        return np.nan
    va = saa - sa * sa / n
    vb = sbb - sb * sb / n
    if va <= 0.0 or vb <= 0.0:
        return np.nan
    return (sab - sa * sb / n) / np.sqrt(va * vb)


# ====================================================================== decision and sizing


@_leaf_inline
def side_nb(p, c, sma_v, rp):
    """Side of a prediction: +1 above the long threshold, -1 below the short one, else 0; with
    the trend filter on, longs need the close above its moving average and shorts below it (no
    side while the average is warming up)."""
    side = 0
    if p > rp[R_LONG]:
        side = 1
    elif p < rp[R_SHORT]:
        side = -1
    if side != 0 and rp[R_TREND] != 0.0:
        if np.isnan(sma_v):
            return 0
        if side > 0 and c < sma_v:
            return 0
        if side < 0 and c > sma_v:
            return 0
    if side < 0 and rp[R_ALLOW_SHORT] == 0.0:
        return 0
    return side


@_leaf_inline
def conviction_nb(p, side, rp):
    """Probability of winning for probability decisions (p for longs, 1-p for shorts), else NaN."""
    if rp[R_PROBABILITY] == 0.0 or side == 0:
        return np.nan
    return p if side > 0 else 1.0 - p


@_leaf_inline
def size_nb(side, conviction, price, atr_v, vol_v, g, rp):
    """Unsigned target fraction of equity for a side (0 for no side).

    fixed_fraction: ``fraction``. atr_risk: risk ``risk_pct`` of equity with the stop ``atr_k`` ATRs
    away, i.e. shares = risk_pct x equity / (k x ATR), as a fraction ``risk_pct x price / (k x ATR)``.
    vol_target: ``vol_target / vol`` (per-bar volatilities). kelly: ``kelly_fraction x f*`` with
    f* = p - (1-p)/b (payoff: p the conviction or the win rate, b the average win over the
    average loss of closed trades) or f* = mu / sigma^2 of closed-trade returns (mean_variance),
    capped so that at most ``kelly_max_risk`` of equity is lost at the stop; ``fraction`` while
    fewer than ``kelly_min_trades`` trades have closed; 0 when f* <= 0 (no edge). Every sizer is
    capped at ``max_leverage`` except fixed_fraction. No ATR / volatility yet gives 0.
    """
    if side == 0:
        return 0.0
    m = int(rp[R_SIZER])
    if m == 0:
        return rp[R_FRACTION]
    cap = rp[R_SYM_LEV]
    if m == 1:
        if not (atr_v > 0.0):
            return 0.0
        return min(rp[R_RISK_PCT] * price / (rp[R_ATR_K] * atr_v), cap)
    if m == 2:
        if not (vol_v > 0.0):
            return 0.0
        return min(rp[R_VOL_TARGET] / vol_v, cap)
    n = g[G_N_TRADES]
    if n < rp[R_KELLY_MIN]:
        return min(rp[R_FRACTION], cap)
    if int(rp[R_KELLY_MODE]) == 0:
        wins = g[G_N_WINS]
        losses = n - wins
        p = conviction if not np.isnan(conviction) else wins / n
        if losses == 0.0:
            f = p
        elif wins == 0.0:
            f = -1.0
        else:
            b = (g[G_SUM_WIN] / wins) / (g[G_SUM_LOSS] / losses)
            f = p - (1.0 - p) / b
    else:
        mu = g[G_SUM_RET] / n
        var = (g[G_SUM_RET2] - n * mu * mu) / max(n - 1.0, 1.0)
        f = mu / var if var > 0.0 else -1.0
    if not (f > 0.0):
        return 0.0
    f *= rp[R_KELLY_FRAC]
    if atr_v > 0.0:
        f = min(f, rp[R_KELLY_MAX_RISK] * price / (rp[R_ATR_K] * atr_v))
    return min(f, cap)


# ====================================================================== fills and marks


@_leaf
def apply_fill_nb(s, g, j, qty, px, comm, day):
    """Book a fill of ``qty`` shares at ``px`` (costs in the price) plus ``comm``: cash, average
    entry, realised PnL of the round trip, and, when it closes, the trade statistics the Kelly
    sizer and the consecutive-loss trip read."""
    if qty == 0.0:
        return
    g[G_CASH] -= qty * px + comm
    q0 = s[j, S_QTY]
    s[j, S_PEND] -= qty
    if abs(s[j, S_PEND]) < 1e-9:
        s[j, S_PEND] = 0.0
        s[j, S_PEND_ROW] = -1.0
    a = abs(qty)
    if q0 != 0.0 and q0 * qty < 0.0:
        closed = min(a, abs(q0))
        share = closed / a
        s[j, S_RPNL] += (px - s[j, S_AVG]) * closed * (1.0 if q0 > 0.0 else -1.0) - comm * share
        q1 = q0 + qty
        if abs(q1) < 1e-9 or q1 * q0 < 0.0:
            pnl = s[j, S_RPNL]
            r = pnl / s[j, S_ENTRY_NOT] if s[j, S_ENTRY_NOT] > 0.0 else 0.0
            g[G_N_TRADES] += 1.0
            if pnl > 0.0:
                g[G_N_WINS] += 1.0
                g[G_SUM_WIN] += r
                g[G_CONSEC] = 0.0
            else:
                g[G_SUM_LOSS] -= r
                g[G_CONSEC] += 1.0
            g[G_SUM_RET] += r
            g[G_SUM_RET2] += r * r
            if s[j, S_ENTRY_DAY] == day:  # opened and closed in one session: a day trade
                _count_day_trade(g, day)
            rest = a - closed
            if rest > 1e-9:  # a flip opens the next trade with the rest
                s[j, S_QTY] = q1
                s[j, S_AVG] = px
                s[j, S_ENTRY_NOT] = rest * px
                s[j, S_RPNL] = -comm * (1.0 - share)
                s[j, S_ENTRY_DAY] = day
            else:
                s[j, S_QTY] = 0.0
                s[j, S_AVG] = 0.0
                s[j, S_ENTRY_NOT] = 0.0
                s[j, S_RPNL] = 0.0
                s[j, S_STOP] = 0.0
                s[j, S_ENTRY_DAY] = -1.0
        else:
            s[j, S_QTY] = q1
        return
    if q0 == 0.0:
        s[j, S_ENTRY_DAY] = day
        s[j, S_RPNL] = 0.0
        s[j, S_ENTRY_NOT] = 0.0
        s[j, S_AVG] = 0.0
    q1 = q0 + qty
    s[j, S_AVG] = (s[j, S_AVG] * abs(q0) + px * a) / abs(q1)
    s[j, S_ENTRY_NOT] += a * px
    s[j, S_RPNL] -= comm
    s[j, S_QTY] = q1


@njit(cache=True, inline="always")
def _count_day_trade(g, day):
    """Remember a day trade's session id in the oldest of five slots (five are enough: the
    rule counts day trades within the last five sessions)."""
    oldest = G_DT0
    for k in range(G_DT0, G_DT4 + 1):
        if g[k] < g[oldest]:
            oldest = k
    g[oldest] = day


@njit(cache=True, inline="always")
def _day_trades(g, day):
    n = 0
    for k in range(G_DT0, G_DT4 + 1):
        if g[k] >= 0.0 and day - g[k] < 5.0:
            n += 1
    return n


@_leaf_inline
def mark_nb(s, g, close, t, borrow):
    """Mark the book at this row's closes (the last close where a symbol has no bar), charge
    borrow on shorts at rate ``borrow`` and return the equity."""
    value = 0.0
    fee = 0.0
    for j in range(s.shape[0]):
        c = close[t, j]
        if not np.isnan(c):
            s[j, S_LAST] = c
        q = s[j, S_QTY]
        if q != 0.0:
            lc = s[j, S_LAST]
            value += q * lc
            if q < 0.0 and borrow > 0.0:
                fee += -q * lc * borrow
    g[G_CASH] -= fee
    eq = g[G_CASH] + value
    g[G_EQ] = eq
    return eq


# ====================================================================== kill switch


@_leaf
def heat_nb(s):
    """Portfolio heat in currency: sum of stop distance x shares (positions and pending orders)."""
    h = 0.0
    for j in range(s.shape[0]):
        h += abs(s[j, S_QTY] + s[j, S_PEND]) * s[j, S_STOP]
    return h


@_leaf_inline
def _trip(g, t, code, value, limit):
    if g[G_KILL] == 0.0:
        g[G_KILL] = 2.0
        g[G_TRIP_ROW] = t
        g[G_TRIP_RULE] = code
        g[G_TRIP_VALUE] = value
        g[G_TRIP_LIMIT] = limit


@_leaf_inline
def killswitch_nb(s, g, t, day, rp):
    """Roll the session bookkeeping and trip on the equity rules at this row's close.

    Daily loss is measured from the last mark before the session's first bar (the starting cash
    on the first session); drawdown from the highest mark of the session so far. Returns the trip
    code (0 when nothing tripped now).
    """
    eq = g[G_EQ]
    if day != g[G_DAY]:
        g[G_DAY] = day
        g[G_DAY_START] = g[G_PREV_EQ]
        g[G_DAY_PEAK] = g[G_PREV_EQ]
    g[G_DAY_PEAK] = max(g[G_DAY_PEAK], eq)
    g[G_PREV_EQ] = eq
    if g[G_KILL] != 0.0:
        return 0
    start = g[G_DAY_START]
    if not np.isnan(rp[R_DAILY_LOSS]) and start > 0.0:
        loss = (start - eq) / start
        if loss >= rp[R_DAILY_LOSS]:
            _trip(g, t, TRIP_DAILY_LOSS, loss, rp[R_DAILY_LOSS])
            return TRIP_DAILY_LOSS
    peak = g[G_DAY_PEAK]
    if not np.isnan(rp[R_MAX_DD]) and peak > 0.0:
        dd = (peak - eq) / peak
        if dd >= rp[R_MAX_DD]:
            _trip(g, t, TRIP_DRAWDOWN, dd, rp[R_MAX_DD])
            return TRIP_DRAWDOWN
    if not np.isnan(rp[R_CONSEC]) and g[G_CONSEC] >= rp[R_CONSEC]:
        _trip(g, t, TRIP_CONSECUTIVE, g[G_CONSEC], rp[R_CONSEC])
        return TRIP_CONSECUTIVE
    if not np.isnan(rp[R_HEAT_EMERG]) and eq > 0.0:
        h = heat_nb(s) / eq
        if h >= rp[R_HEAT_EMERG]:
            _trip(g, t, TRIP_HEAT, h, rp[R_HEAT_EMERG])
            return TRIP_HEAT
    return 0


# ====================================================================== limits and the row step


@njit(cache=True)
def _grow_to(a, n, rows):
    b = np.empty((rows, a.shape[1]))
    b[:n] = a[:n]
    return b


def room(a: np.ndarray, n: int, need: int) -> np.ndarray:
    """Return record buffer ``a`` (``n`` rows used) with room for ``need`` more rows: itself, or
    a copy twice as large (the callers of :func:`decide_row_nb` make room before each row)."""
    if n + need <= a.shape[0]:
        return a
    b = np.empty((max(2 * a.shape[0], n + need), a.shape[1]))
    b[:n] = a[:n]
    return b


@_leaf
def _deny(den, n_den, t, j, code, target, req, allowed, value, limit):
    den[n_den, BK.D_DEC] = t
    den[n_den, BK.D_COL] = j
    den[n_den, BK.D_CODE] = code
    den[n_den, BK.D_TARGET] = target
    den[n_den, BK.D_REQ] = req
    den[n_den, BK.D_ALLOWED] = allowed
    den[n_den, DR_VALUE] = value
    den[n_den, DR_LIMIT] = limit
    return n_den + 1


@_leaf
def _cut(den, n_den, t, j, code, target, req, sg, qe, base, lim, value, limit):
    # cut an exposure-adding order to ``lim`` shares (never below the same-side position)
    new_a = max(lim, base)
    n_den = _deny(den, n_den, t, j, code, target, req, sg * new_a - qe, value, limit)
    return n_den, new_a


@njit(cache=True, inline="always")
def _shares(x, frac_ok):
    x = max(x, 0.0)
    return x if frac_ok else np.floor(x + 1e-9)


@_leaf
def limits_nb(t, j, day, target, qe, d, c, eq, atr_j, ret, tradable, shortable, fractionable,
              sector, sec, gross, net, heat, n_open, rp, s, g, den, n_den):  # fmt: skip
    """Apply the pre-trade limits to an order of ``d`` shares in column ``j`` (``qe`` = position
    plus pending). Each rule allows, cuts or denies and records a denial (rule, target,
    requested and allowed quantity, the measured value and the limit); rules never raise.

    Only exposure-adding parts are cut: an order that reduces a position always passes the caps,
    and a cut never goes below the current same-side position. Denials are written into ``den``
    from row ``n_den`` on (it has room for :data:`DEN_PER_ORDER` more). Returns ``(allowed d,
    n_denials, n_violations)``.
    """
    nv = 0
    frac_ok = rp[R_FRACTIONAL] != 0.0 and fractionable[j]
    if not tradable[j]:
        n_den = _deny(den, n_den, t, j, BK.NOT_TRADABLE, target, d, 0.0, np.nan, np.nan)
        return 0.0, n_den, 1
    pend = s[j, S_PEND]
    if pend != 0.0 and pend * d < 0.0:  # opposite side of a working order: a wash trade
        n_den = _deny(den, n_den, t, j, OPEN_ORDER, target, d, 0.0, pend, 0.0)
        return 0.0, n_den, 1
    q1 = qe + d
    if q1 < 0.0 and (rp[R_ALLOW_SHORT] == 0.0 or not shortable[j]):
        code = BK.SHORT_DISABLED if rp[R_ALLOW_SHORT] == 0.0 else BK.NOT_SHORTABLE
        new_q1 = 0.0 if qe >= 0.0 else max(q1, qe)
        n_den = _deny(den, n_den, t, j, code, target, d, new_q1 - qe, q1, 0.0)
        nv += 1
        q1 = new_q1
    held = s[j, S_QTY]
    if (
        rp[R_PDT] != 0.0
        and eq < PDT_EQUITY
        and held != 0.0
        and s[j, S_ENTRY_DAY] == day
        and held * (q1 - held) < 0.0
        and _day_trades(g, day) >= PDT_MAX_DAY_TRADES
    ):
        n_den = _deny(
            den, n_den, t, j, PDT, target, q1 - qe, 0.0, _day_trades(g, day), PDT_MAX_DAY_TRADES
        )
        return 0.0, n_den, nv + 1
    if q1 == 0.0 or eq <= 0.0:
        return q1 - qe, n_den, nv
    sg = 1.0 if q1 > 0.0 else -1.0
    same = qe * q1 > 0.0
    base = abs(qe) if same else 0.0
    a = abs(q1)
    if a <= base:
        return q1 - qe, n_den, nv
    lc = s[j, S_LAST]
    sym_val = abs(qe) * lc
    req = q1 - qe
    if not np.isnan(rp[R_MAX_POS]):
        lim = _shares(rp[R_MAX_POS] * eq / c, frac_ok)
        if a > lim + 1e-9 * a:  # a rounding hair over the limit is not a cut
            n_den, a = _cut(den, n_den, t, j, MAX_POSITION, target, req, sg, qe, base, lim,
                                 a * c / eq, rp[R_MAX_POS])  # fmt: skip
            nv += 1
    if a > base and not same and not np.isnan(rp[R_MAX_OPEN]):
        others = n_open - (1 if qe != 0.0 else 0)
        if others >= rp[R_MAX_OPEN]:
            n_den = _deny(den, n_den, t, j, MAX_OPEN, target, req, sg * base - qe,
                               others + 1.0, rp[R_MAX_OPEN])  # fmt: skip
            nv += 1
            a = base
    if a > base and not np.isnan(rp[R_SECTOR_CAP]) and sector[j] >= 0:
        other = sec[sector[j]] - sym_val
        lim = _shares((rp[R_SECTOR_CAP] * eq - other) / c, frac_ok)
        if a > lim + 1e-9 * a:  # a rounding hair over the limit is not a cut
            n_den, a = _cut(den, n_den, t, j, SECTOR, target, req, sg, qe, base, lim,
                                 (other + a * c) / eq, rp[R_SECTOR_CAP])  # fmt: skip
            nv += 1
    if a > base and not same and not np.isnan(rp[R_MAX_CORR]):
        win = int(rp[R_CORR_WIN])
        for k in range(s.shape[0]):
            if k == j:
                continue
            qk = s[k, S_QTY] + s[k, S_PEND]
            if qk * sg <= 0.0:
                continue
            rho = correlation_nb(ret, t, j, k, win)
            if rho > rp[R_MAX_CORR]:
                n_den = _deny(den, n_den, t, j, CORRELATION, target, req, sg * base - qe,
                                   rho, rp[R_MAX_CORR])  # fmt: skip
                nv += 1
                a = base
                break
    if a > base and not np.isnan(rp[R_HEAT_MAX]):
        stop = rp[R_ATR_K] * atr_j
        other = heat - abs(qe) * s[j, S_STOP]
        if not (stop > 0.0):
            n_den = _deny(den, n_den, t, j, HEAT, target, req, sg * base - qe, np.nan,
                               rp[R_HEAT_MAX])  # fmt: skip
            nv += 1
            a = base
        else:
            lim = _shares((rp[R_HEAT_MAX] * eq - other) / stop, frac_ok)
            if a > lim + 1e-9 * a:  # a rounding hair over the limit is not a cut
                n_den, a = _cut(den, n_den, t, j, HEAT, target, req, sg, qe, base, lim,
                                     (other + a * stop) / eq, rp[R_HEAT_MAX])  # fmt: skip
                nv += 1
    if a > base and not np.isnan(rp[R_MAX_GROSS]):
        other = gross - sym_val
        lim = _shares((rp[R_MAX_GROSS] * eq - other) / c, frac_ok)
        if a > lim + 1e-9 * a:  # a rounding hair over the limit is not a cut
            n_den, a = _cut(den, n_den, t, j, GROSS, target, req, sg, qe, base, lim,
                                 (other + a * c) / eq, rp[R_MAX_GROSS])  # fmt: skip
            nv += 1
    if a > base and not np.isnan(rp[R_MAX_NET]):
        other = net - qe * lc
        room = rp[R_MAX_NET] * eq - sg * other
        lim = _shares(room / c, frac_ok)
        if a > lim + 1e-9 * a:  # a rounding hair over the limit is not a cut
            n_den, a = _cut(den, n_den, t, j, NET, target, req, sg, qe, base, lim,
                                 abs(other + sg * a * c) / eq, rp[R_MAX_NET])  # fmt: skip
            nv += 1
    if a > base and not np.isnan(rp[R_LEVERAGE]):
        other = gross - sym_val
        lim = _shares((rp[R_LEVERAGE] * eq - other) / c, frac_ok)
        if a > lim + 1e-9 * a:  # a rounding hair over the limit is not a cut
            n_den, a = _cut(den, n_den, t, j, BK.BUYING_POWER, target, req, sg, qe, base, lim,
                                 (other + a * c) / eq, rp[R_LEVERAGE])  # fmt: skip
            nv += 1
    return sg * a - qe, n_den, nv


@_leaf
def _aggregates_into(s, sector, sec):
    gross = 0.0
    net = 0.0
    heat = 0.0
    n_open = 0
    sec[:] = 0.0
    for k in range(s.shape[0]):
        qe = s[k, S_QTY] + s[k, S_PEND]
        if qe != 0.0:
            n_open += 1
            val = qe * s[k, S_LAST]
            gross += abs(val)
            net += val
            heat += abs(qe) * s[k, S_STOP]
            if sector[k] >= 0:
                sec[sector[k]] += abs(val)
    return gross, net, heat, n_open


@njit(cache=True)
def aggregates_nb(s, sector, n_sectors):
    """Gross, net, heat, open positions and gross per sector of the book plus pending orders."""
    sec = np.zeros(max(n_sectors, 1))
    gross, net, heat, n_open = _aggregates_into(s, sector, sec)
    return gross, net, heat, n_open, sec


@njit(cache=True)
def check_order_nb(t, j, day, target, qty, price, atr_j, ret, tradable, shortable, fractionable,
                   sector, n_sectors, rp, s, g, den):  # fmt: skip
    """One pre-trade check of ``qty`` shares in column ``j`` against the book (positions and
    pending orders): :func:`limits_nb` with the book's aggregates (``den`` has room for
    :data:`DEN_PER_ORDER` rows). Returns ``(allowed, denials, n_denials)``."""
    gross, net, heat, n_open, sec = aggregates_nb(s, sector, n_sectors)
    qe = s[j, S_QTY] + s[j, S_PEND]
    d, n_den, _ = limits_nb(t, j, day, target, qe, qty, price, g[G_EQ], atr_j, ret, tradable,
                            shortable, fractionable, sector, sec, gross, net, heat, n_open, rp, s,
                            g, den, 0)  # fmt: skip
    return d, den, n_den


@_leaf
def _place(s, out_qty, orders, n_ord, t, j, d, target, c, reason, eq, stop):
    orders[n_ord, O_ROW] = t
    orders[n_ord, O_COL] = j
    orders[n_ord, O_QTY] = d
    orders[n_ord, O_TARGET] = target
    orders[n_ord, O_PRICE] = c
    orders[n_ord, O_REASON] = reason
    orders[n_ord, O_EQUITY] = eq
    q0 = s[j, S_QTY] + s[j, S_PEND]
    q1 = q0 + d
    if q1 == 0.0:
        s[j, S_STOP] = 0.0
    elif q0 * q1 <= 0.0 or abs(q1) > abs(q0):  # a new or bigger position: its stop from now
        s[j, S_STOP] = stop if stop > 0.0 else 0.0
    s[j, S_PEND] += d
    if s[j, S_PEND_ROW] < 0.0:
        s[j, S_PEND_ROW] = t
    out_qty[j] += d
    return n_ord + 1


@_leaf_inline
def model_target_nb(p, c, atr_v, vol_v, sma_v, regime_v, rp, g):
    """Signed target fraction of equity of prediction ``p`` at close ``c``: side, size and the
    regime multiplier (1 without regimes), from the cell's ATR, volatility and moving average."""
    side = side_nb(p, c, sma_v, rp)
    frac = size_nb(side, conviction_nb(p, side, rp), c, atr_v, vol_v, g, rp)
    return side * (frac * regime_v)


@_leaf_inline
def _regime_at(regime, t, j):
    return regime[t, j] if regime.shape[0] > 1 else 1.0


@_leaf_inline
def _rebalance_nb(j, p, c, eq, atr_v, vol_v, sma_v, regime_v, frac_ok, rp, s, g):
    """The order symbol ``j``'s model target asks for before the limits, as ``(target, position
    plus pending, shares)``; 0 shares when it orders nothing: the target in force is unchanged
    (``rebalance: on_change``), the change is under a share, or it is worth less than
    ``min_trade`` of equity (hysteresis: the target is re-examined next bar). Notes the model
    target, and the target as in force when the book already holds it."""
    mt = model_target_nb(p, c, atr_v, vol_v, sma_v, regime_v, rp, g)
    s[j, S_MODEL] = mt
    if mt == s[j, S_HELD] and rp[R_EVERY_BAR] == 0.0:
        return mt, 0.0, 0.0
    qe = s[j, S_QTY] + s[j, S_PEND]
    qd = mt * eq / c
    if not frac_ok:
        qd = np.trunc(qd + 1e-9 * np.sign(qd))
    d = qd - qe
    if abs(d) < 1e-9:
        s[j, S_HELD] = mt
        return mt, qe, 0.0
    if qd != 0.0 and abs(d) * c < rp[R_MIN_TRADE] * eq:
        return mt, qe, 0.0
    return mt, qe, d


@_leaf
def decide_row_nb(t, ts_us, day, eod, pred, close, high, low, atr, vol, sma, regime, ret,
                  tradable, shortable, fractionable, sector, sec, rp, s, g, v, out_qty, orders,
                  n_ord, den, n_den):  # fmt: skip
    """Decide every symbol's order at the close of row ``t``: prediction -> side -> size ->
    target -> hysteresis -> limits -> order; the kill switch and the end-of-day window override
    the model (flatten, entries denied). ``out_qty`` receives the net order per symbol.

    A symbol orders only when its target differs from the target in force (``rebalance:
    on_change``) and the change in shares is worth at least ``min_trade`` of equity (exits
    always pass). Orders and denials are written into ``orders`` and ``den`` from rows
    ``n_ord`` and ``n_den`` on; the caller makes room for :data:`ORD_PER_ROW` and
    :data:`DEN_PER_ORDER` rows per symbol (:func:`room`). ``sec`` is scratch space for the gross
    per sector (at least one slot). With ``R_ATR_ON_DEMAND`` set the ATR of an order's cell is
    measured here from ``high``, ``low`` and ``close`` (:func:`atr_cell_nb`) instead of read
    from ``atr``. Returns the new ``(n_orders, n_denials)``.
    """
    n_s = s.shape[0]
    for j in range(n_s):
        out_qty[j] = 0.0
    eq = g[G_EQ]
    gross, net, heat, n_open = _aggregates_into(s, sector, sec)
    n_viol = 0
    for j in range(n_s):
        c = close[t, j]
        if np.isnan(c):
            continue
        p = pred[t, j]
        qe = s[j, S_QTY] + s[j, S_PEND]
        if g[G_KILL] != 0.0 or eod:
            reason = ORDER_KILL if g[G_KILL] != 0.0 else ORDER_EOD
            if qe != 0.0:
                n_ord = _place(s, out_qty, orders, n_ord, t, j, -qe, 0.0, c, reason, eq, 0.0)
                gross -= abs(qe) * s[j, S_LAST]
                net -= qe * s[j, S_LAST]
                n_open -= 1
            s[j, S_HELD] = 0.0
            if not np.isnan(p):
                atr_v, vol_v, sma_v, reg_v = _cells(atr, vol, sma, regime, t, j)
                mt = model_target_nb(p, c, atr_v, vol_v, sma_v, reg_v, rp, g)
                if mt != s[j, S_MODEL]:
                    s[j, S_MODEL] = mt
                    if mt != 0.0:
                        code = KILL_SWITCH if g[G_KILL] != 0.0 else EOD_FLATTEN
                        n_den = _deny(den, n_den, t, j, code, mt, np.trunc(mt * eq / c), 0.0,
                                      g[G_TRIP_RULE], 0.0)  # fmt: skip
            continue
        if np.isnan(p):
            continue
        frac_ok = rp[R_FRACTIONAL] != 0.0 and fractionable[j]
        atr_v, vol_v, sma_v, reg_v = _cells(atr, vol, sma, regime, t, j)
        mt, qe, d = _rebalance_nb(j, p, c, eq, atr_v, vol_v, sma_v, reg_v, frac_ok, rp, s, g)
        if d == 0.0:
            continue
        if not np.isnan(rp[R_ATR_ON_DEMAND]):
            atr_v = atr_cell_nb(high, low, close, t, j, int(rp[R_ATR_ON_DEMAND]))
        d, n_den, nv = limits_nb(t, j, day, mt, qe, d, c, eq, atr_v, ret, tradable,
                                 shortable, fractionable, sector, sec, gross, net, heat, n_open,
                                 rp, s, g, den, n_den)  # fmt: skip
        n_viol += nv
        s[j, S_HELD] = mt
        if abs(d) > 1e-9:
            old_stop = abs(qe) * s[j, S_STOP]
            old_val = qe * s[j, S_LAST]
            n_ord = _place(s, out_qty, orders, n_ord, t, j, d, mt, c, ORDER_MODEL, eq,
                           rp[R_ATR_K] * atr_v)  # fmt: skip
            q1 = qe + d
            new_val = q1 * s[j, S_LAST]
            gross += abs(new_val) - abs(old_val)
            net += new_val - old_val
            heat += abs(q1) * s[j, S_STOP] - old_stop
            if sector[j] >= 0:
                sec[sector[j]] += abs(new_val) - abs(old_val)
            if qe == 0.0:
                n_open += 1
            elif q1 == 0.0:
                n_open -= 1
    if n_viol > 0 and not np.isnan(rp[R_MAX_VIOL]):
        m = v.shape[0]
        for _ in range(n_viol):
            head = int(g[G_VIOL_HEAD])
            v[head % m] = ts_us
            g[G_VIOL_HEAD] = head + 1
        recent = 0
        for k in range(m):
            if v[k] >= 0.0 and ts_us - v[k] < rp[R_VIOL_WIN_US]:
                recent += 1
        if recent >= rp[R_MAX_VIOL] and g[G_KILL] == 0.0:
            _trip(g, t, TRIP_VIOLATIONS, recent, rp[R_MAX_VIOL])
            for j in range(n_s):  # the trip flattens on the bar of the breach
                if np.isnan(close[t, j]):
                    continue
                qe = s[j, S_QTY] + s[j, S_PEND]
                if qe != 0.0:
                    n_ord = _place(s, out_qty, orders, n_ord, t, j, -qe, 0.0, close[t, j],
                                   ORDER_KILL, eq, 0.0)  # fmt: skip
                s[j, S_HELD] = 0.0
    return n_ord, n_den


# ====================================================================== the backtest loop


@_leaf
def _n_pending(s):
    n = 0
    for j in range(s.shape[0]):
        if s[j, S_PEND] != 0.0:
            n += 1
    return n


@_leaf
def _rows_nb(t0, ref, close, high, low, pred, atr, vol, sma, regime, ret, half_spread, sigma,
             volume, slip_row, borrow_row, ts_us, day, eod, tradable, shortable, fractionable,
             frac_ok, sector, sec, p, rp, s, g, v, equity, positions, cum_borrow, out_qty, fills,
             n_fill, orders, n_ord, den, n_den):  # fmt: skip
    """Run rows from ``t0`` while the record buffers have room for one more row; return the
    next row and the record counts (the caller grows the buffers and calls again)."""
    n_t, n_s = close.shape
    n_pend = _n_pending(s)
    for t in range(t0, n_t):
        if (
            n_fill + n_s > fills.shape[0]
            or n_ord + ORD_PER_ROW * n_s > orders.shape[0]
            or n_den + DEN_PER_ORDER * n_s > den.shape[0]
        ):
            return t, n_fill, n_ord, n_den
        for j in range(n_s if n_pend > 0 else 0):  # fills at the open (costs as in the backtest)
            d = s[j, S_PEND]
            if d == 0.0 or np.isnan(close[t, j]):
                continue
            dec = int(s[j, S_PEND_ROW])
            px = ref[t, j]
            pxx, comm, spread_cost, slip_cost = BK.fill_cost_nb(
                px, d, dec, j, t, half_spread, sigma, volume, slip_row, p
            )
            apply_fill_nb(s, g, j, d, pxx, comm, day[t])
            fills[n_fill, BK.F_ROW] = t
            fills[n_fill, BK.F_COL] = j
            fills[n_fill, BK.F_DEC] = dec
            fills[n_fill, BK.F_QTY] = d
            fills[n_fill, BK.F_REF] = px
            fills[n_fill, BK.F_PX] = pxx
            fills[n_fill, BK.F_COMM] = comm
            fills[n_fill, BK.F_SPREAD] = spread_cost
            fills[n_fill, BK.F_SLIP] = slip_cost
            fills[n_fill, BK.F_BORROW] = cum_borrow[j]
            fills[n_fill, BK.F_POS] = s[j, S_QTY]
            n_fill += 1
        if n_pend > 0:
            n_pend = _n_pending(s)
        eq = mark_nb(s, g, close, t, borrow_row[t])
        br = borrow_row[t]
        if br > 0.0:
            for j in range(n_s):
                if s[j, S_QTY] < 0.0:
                    cum_borrow[j] += -s[j, S_QTY] * s[j, S_LAST] * br
        killswitch_nb(s, g, t, day[t], rp)
        # Idle rows (most of them), where decide_row_nb would record nothing, skip it; the state
        # it would change is changed the same way. Without an override no symbol's
        # _rebalance_nb orders; under the kill switch or in the end-of-day window every symbol
        # with a bar is flat with nothing pending and its model target is the one noted (a new
        # one is a denial).
        override = g[G_KILL] != 0.0 or eod[t]
        quiet = True
        for j in range(n_s):
            c = close[t, j]
            pj = pred[t, j]
            if np.isnan(c):
                continue
            if override:
                if s[j, S_QTY] + s[j, S_PEND] != 0.0:
                    quiet = False
                    break
                if not np.isnan(pj):
                    atr_v, vol_v, sma_v, reg_v = _cells(atr, vol, sma, regime, t, j)
                    mt = model_target_nb(pj, c, atr_v, vol_v, sma_v, reg_v, rp, g)
                    if mt != s[j, S_MODEL]:
                        quiet = False
                        break
            elif not np.isnan(pj):
                atr_v, vol_v, sma_v, reg_v = _cells(atr, vol, sma, regime, t, j)
                fo = frac_ok[j]
                dq = _rebalance_nb(j, pj, c, eq, atr_v, vol_v, sma_v, reg_v, fo, rp, s, g)[2]
                if dq != 0.0:
                    quiet = False
                    break
        if quiet and override:
            for j in range(n_s):
                if not np.isnan(close[t, j]):
                    s[j, S_HELD] = 0.0
        if not quiet:
            n_ord, n_den = decide_row_nb(
                t, ts_us[t], day[t], eod[t], pred, close, high, low, atr, vol, sma, regime, ret,
                tradable, shortable, fractionable, sector, sec, rp, s, g, v, out_qty, orders,
                n_ord, den, n_den,
            )  # fmt: skip
            n_pend = _n_pending(s)
        for j in range(n_s):
            positions[t, j] = s[j, S_QTY]
        equity[t] = eq
    return n_t, n_fill, n_ord, n_den


@njit(cache=True, nogil=True)
def simulate_risk_nb(ref, close, high, low, pred, atr, vol, sma, regime, ret, half_spread, sigma,
                     volume, slip_row, borrow_row, ts_us, day, eod, tradable, shortable,
                     fractionable, sector, n_sectors, p, rp, s, g, v):  # fmt: skip
    """Run the portfolio under the risk policy: at each row, fill pending orders at the open
    (costs as in the backtest kernel), mark at the close, check the kill switch, decide."""
    n_t, n_s = close.shape
    equity = np.empty(n_t)
    positions = np.empty((n_t, n_s))
    cum_borrow = np.zeros(n_s)
    out_qty = np.zeros(n_s)
    sec = np.zeros(max(n_sectors, 1))
    frac_ok = np.empty(n_s, dtype=np.bool_)
    for j in range(n_s):
        frac_ok[j] = rp[R_FRACTIONAL] != 0.0 and fractionable[j]
    # Record buffers sized for a fill and an order on every cell (up to REC_ROWS rows; more by
    # doubling): rows never written are never touched, so a run that records little costs little
    # memory, and one that records on every bar neither copies nor grows its buffers.
    cap = max(64, min(n_t * n_s, REC_ROWS))
    fills = np.empty((max(cap, n_s), BK.N_FILL))
    orders = np.empty((max(cap, ORD_PER_ROW * n_s), N_ORDER))
    den = np.empty((max(max(64, n_t // 64), DEN_PER_ORDER * n_s + n_s), N_DENIAL))
    n_fill = 0
    n_ord = 0
    n_den = 0
    t = 0
    while t < n_t:
        t, n_fill, n_ord, n_den = _rows_nb(
            t, ref, close, high, low, pred, atr, vol, sma, regime, ret, half_spread, sigma, volume,
            slip_row, borrow_row, ts_us, day, eod, tradable, shortable, fractionable, frac_ok,
            sector, sec, p, rp, s, g, v, equity, positions, cum_borrow, out_qty, fills, n_fill,
            orders, n_ord, den, n_den,
        )  # fmt: skip
        if t < n_t:  # a buffer is full: double the ones short of room for a row
            if n_fill + n_s > fills.shape[0]:
                fills = _grow_to(fills, n_fill, 2 * fills.shape[0])
            if n_ord + ORD_PER_ROW * n_s > orders.shape[0]:
                orders = _grow_to(orders, n_ord, 2 * orders.shape[0])
            if n_den + DEN_PER_ORDER * n_s > den.shape[0]:
                den = _grow_to(den, n_den, 2 * den.shape[0])
    if n_den + n_s > den.shape[0]:
        den = _grow_to(den, n_den, n_den + n_s)
    for j in range(n_s):
        if s[j, S_PEND] != 0.0:
            n_den = _deny(den, n_den, int(s[j, S_PEND_ROW]), j, BK.END_OF_DATA,
                          s[j, S_HELD], np.nan, 0.0, np.nan, np.nan)  # fmt: skip
    last_close = s[:, S_LAST].copy()
    # views: the unwritten rows of the buffers were never touched (no copy of what was)
    return equity, positions, fills[:n_fill], den[:n_den], last_close, cum_borrow, orders[:n_ord]
