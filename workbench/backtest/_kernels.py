"""Numba kernels over 2-D arrays ``[time x symbol]``: estimates, the portfolio simulation, trades.

Every kernel is ``njit(cache=True)``: the first call in a fresh process loads machine code from
``__pycache__`` instead of compiling. Callers pass C-contiguous float64 / int64 / bool arrays only,
so one compiled signature serves every call. A missing bar is ``NaN`` in the price arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# fill record columns
F_ROW, F_COL, F_DEC, F_QTY, F_REF, F_PX, F_COMM, F_SPREAD, F_SLIP, F_BORROW, F_POS = range(11)
N_FILL = 11
# denial record columns
D_DEC, D_COL, D_CODE, D_TARGET, D_REQ, D_ALLOWED = range(6)
N_DENIAL = 6
# denial reasons (codes index REASONS in engine.py)
NOT_TRADABLE, NOT_SHORTABLE, SHORT_DISABLED, NOT_FRACTIONABLE, BUYING_POWER, END_OF_DATA = range(
    1, 7
)
# simulation parameters (one float64 vector keeps the kernel signature fixed)
(
    P_CASH,
    P_SIZING,
    P_FRACTIONAL,
    P_ALLOW_SHORT,
    P_LEVERAGE,
    P_EVERY_BAR,
    P_PER_SHARE,
    P_MIN,
    P_BPS,
    P_FLAT,
    P_IMPACT,
    P_CLIP_TOL,
) = range(12)
N_PARAMS = 12
SIZING_CODES = {"fraction": 0, "notional": 1, "shares": 2}
# trade record columns
(
    T_COL,
    T_ENTRY_ROW,
    T_EXIT_ROW,
    T_DIR,
    T_SIZE,
    T_ENTRY_PX,
    T_EXIT_PX,
    T_PNL,
    T_COMM,
    T_SLIP,
    T_BORROW,
    T_MAE,
    T_MFE,
    T_OPEN,
    T_NOTIONAL,
) = range(15)
N_TRADE = 15


def frozen(*args):
    """Return array arguments as read-only C-contiguous views (one compiled signature for all).

    polars hands out read-only arrays and numpy writable ones; numba compiles (and caches) each
    flavour separately, so every kernel call goes through this to hit one warm cache entry.
    """
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = np.ascontiguousarray(a).view()
            a.flags.writeable = False
        out.append(a)
    return tuple(out)


@njit(cache=True, nogil=True)
def view_runs_nb(views, offset, n):
    """Start rows of the runs of equal 16-byte Arrow string views (``views``: uint64 pairs), one pass.

    Equal views are equal strings (same length and inline bytes, or same buffer and offset);
    unequal views may still hold equal strings (a long string stored twice), so a run found here
    may be split: callers check the runs' symbols are strictly ascending, which rules that out.
    """
    v = views.reshape(-1, 2)[offset : offset + n]
    starts = np.empty(n, dtype=np.int64)  # pages untouched past the runs found stay unmapped
    k = 0
    if n > 0:
        starts[0] = 0
        k = 1
    for i in range(1, n):  # indices from 1, no early exit: the loop vectorises
        if v[i, 0] != v[i - 1, 0] or v[i, 1] != v[i - 1, 1]:
            starts[k] = i
            k += 1
    return starts[:k].copy()


@njit(cache=True, nogil=True)
def bars_ok_nb(o, h, lo, c, v, w, ts, starts):
    """Check the bar contract's value rules and the time order (two branch-free passes).

    ``starts`` are the first rows of the symbols' runs: ``ts`` must increase strictly inside a
    run. Return (ok, NaN count of vwap).
    """
    # counts instead of early exits: branch-free loops vectorise (x - x == 0: x is finite)
    steps_back = 0
    for i in range(1, len(ts)):
        steps_back += ts[i] <= ts[i - 1]
    for r in range(1, len(starts)):  # a new symbol may restart the clock
        j = starts[r]
        steps_back -= ts[j] <= ts[j - 1]
    bad = 0
    n_nan = 0
    for i in range(len(c)):
        oi, hi, li, ci, vi, wi = o[i], h[i], lo[i], c[i], v[i], w[i]
        ok = ((oi - oi) == 0.0) & ((hi - hi) == 0.0) & ((ci - ci) == 0.0) & ((vi - vi) == 0.0)
        ok &= (li > 0.0) & (hi >= oi) & (hi >= ci) & (li <= oi) & (li <= ci) & (vi >= 0.0)
        w_nan = wi != wi
        n_nan += w_nan
        ok &= w_nan | ((wi > 0.0) & ((wi - wi) == 0.0))
        bad += not ok
    return steps_back == 0 and bad == 0, n_nan


@njit(cache=True, nogil=True)
def count_nonfinite_nb(a):
    """Number of NaN or infinite values of ``a``."""
    n = 0
    for i in range(len(a)):
        if not np.isfinite(a[i]):
            n += 1
    return n


@njit(cache=True, nogil=True)
def day_changes_nb(ts, shift, day_us):
    """Number of times the date of ``(ts - shift) // day_us`` changes along ``ts``.

    On ascending ``ts`` one comparison a row (against the next date's start); a step back
    divides.
    """
    n = 0
    if len(ts) == 0:
        return 0
    day = (ts[0] - shift) // day_us
    nxt = (day + 1) * day_us + shift
    for i in range(1, len(ts)):
        x = ts[i]
        if x >= ts[i - 1] and x < nxt:
            continue
        d = (x - shift) // day_us
        if d != day:
            n += 1
            day = d
        nxt = (day + 1) * day_us + shift
    return n


@njit(cache=True, nogil=True)
def estimates_nb(high, low, close, volume, span, want_spread, want_vol):
    """EWMA half-spread (Corwin-Schultz over bars t-1, t), return volatility and volume, causal."""
    n_t, n_s = close.shape
    alpha = 2.0 / (span + 1.0)
    half = np.full((n_t, n_s), np.nan)
    sigma = np.full((n_t, n_s), np.nan)
    vol = np.full((n_t, n_s), np.nan)
    k = 3.0 - 2.0 * np.sqrt(2.0)
    for j in range(n_s):
        prev = -1
        s_ewm = np.nan
        v2_ewm = np.nan
        vol_ewm = np.nan
        for t in range(n_t):
            c = close[t, j]
            if np.isnan(c):
                continue
            if want_vol:
                v = volume[t, j]
                vol_ewm = v if np.isnan(vol_ewm) else vol_ewm + alpha * (v - vol_ewm)
                vol[t, j] = vol_ewm
            if prev >= 0:
                if want_vol:
                    r = np.log(c / close[prev, j])
                    v2_ewm = r * r if np.isnan(v2_ewm) else v2_ewm + alpha * (r * r - v2_ewm)
                    sigma[t, j] = np.sqrt(v2_ewm)
                if want_spread:
                    b1 = np.log(high[t, j] / low[t, j])
                    b0 = np.log(high[prev, j] / low[prev, j])
                    beta = b1 * b1 + b0 * b0
                    hh = max(high[t, j], high[prev, j])
                    ll = min(low[t, j], low[prev, j])
                    g = np.log(hh / ll)
                    a = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / k - np.sqrt(g * g / k)
                    s = 2.0 * (np.exp(a) - 1.0) / (1.0 + np.exp(a))
                    s = max(s, 0.0)
                    s_ewm = s if np.isnan(s_ewm) else s_ewm + alpha * (s - s_ewm)
                    half[t, j] = 0.5 * s_ewm
            prev = t
    return half, sigma, vol


@njit(cache=True, inline="always")
def _flex(a, t, j):
    return a[t if a.shape[0] > 1 else 0, j if a.shape[1] > 1 else 0]


@njit(cache=True, inline="always")
def _commission(n, notional, p):
    var = p[P_PER_SHARE] * n + p[P_BPS] * 1e-4 * notional
    return max(var, p[P_MIN]) + p[P_FLAT]


@njit(cache=True)
def fill_cost_nb(px, d, dec, j, t, half_spread, sigma, volume, slip_row, p):
    """Execution price, commission, spread and slippage cost of ``d`` shares at reference ``px``
    (the backtest's cost model: half-spread and volatility/volume estimates of the decision row,
    time-of-day slippage of the fill row, square-root impact)."""
    hs = _flex(half_spread, dec, j)
    if np.isnan(hs):
        hs = 0.0
    sg = _flex(sigma, dec, j)
    vv = _flex(volume, dec, j)
    if p[P_IMPACT] > 0.0 and not np.isnan(sg) and not np.isnan(vv):
        imp_k = p[P_IMPACT] * sg / np.sqrt(max(vv, 1.0))
    else:
        imp_k = 0.0
    n = abs(d)
    side = 1.0 if d > 0.0 else -1.0
    spread_px = px * hs
    slip_px = px * (slip_row[t] + imp_k * np.sqrt(n))
    pxx = px + side * (spread_px + slip_px)
    comm = _commission(n, n * pxx, p)
    return pxx, comm, n * spread_px, n * slip_px


@njit(cache=True)
def _count_decisions(close, target, every_bar):
    n_t, n_s = close.shape
    n = 0
    last = np.full(n_s, np.nan)
    for t in range(n_t):
        for j in range(n_s):
            tg = target[t, j]
            if not np.isnan(tg) and not np.isnan(close[t, j]) and (every_bar or tg != last[j]):
                n += 1
                last[j] = tg
    return n


@njit(cache=True, nogil=True)
def simulate_nb(
    ref, close, target, half_spread, sigma, volume, slip_row, borrow_row, tradable, shortable,
    fractionable, p,
):  # fmt: skip
    """Run the portfolio: decisions at row t fill at the symbol's next bar at ``ref`` prices.

    ``slip_row`` and ``borrow_row`` are ``[T]`` or, when constant, one row.
    """
    n_t, n_s = close.shape
    cash = p[P_CASH]
    sizing = int(p[P_SIZING])
    lev = p[P_LEVERAGE]
    q = np.zeros(n_s)
    last_close = np.full(n_s, np.nan)
    pend_dec = np.full(n_s, -1, dtype=np.int64)
    pend_tgt = np.zeros(n_s)
    last_tgt = np.full(n_s, np.nan)
    cum_borrow = np.zeros(n_s)
    delta = np.zeros(n_s)
    ord_dec = np.zeros(n_s, dtype=np.int64)
    has_order = np.zeros(n_s, dtype=np.bool_)

    equity = np.empty(n_t)
    positions = np.empty((n_t, n_s))
    # every decision gives at most one fill and two denials: size the records once (arrays are
    # never re-bound inside the loop, which would cost reference counting on every bar)
    n_dec = _count_decisions(close, target, p[P_EVERY_BAR] != 0.0)
    fills = np.empty((n_dec, N_FILL))
    n_fill = 0
    denials = np.empty((2 * n_dec + n_s, N_DENIAL))
    n_den = 0

    every_bar = p[P_EVERY_BAR] != 0.0
    n_pending = 0
    due = np.empty(n_s, dtype=np.int64)  # columns whose pending decision fills at this row
    ords = np.empty(n_s, dtype=np.int64)  # columns with an order at this row (ascending)
    for t in range(n_t):
        # 1. value the book at this row's reference prices (last close where the symbol has no bar)
        n_due = 0
        e_open = cash
        gross = 0.0
        if n_pending > 0:
            for j in range(n_s):
                if q[j] != 0.0:
                    m = ref[t, j] if not np.isnan(close[t, j]) else last_close[j]
                    e_open += q[j] * m
                    gross += abs(q[j]) * m
                if pend_dec[j] >= 0 and not np.isnan(close[t, j]):
                    due[n_due] = j
                    n_due += 1
        # 2. turn pending decisions into desired order quantities (risk rules recorded)
        if n_due > 0:
            n_ord = 0
            for k in range(n_due):
                j = due[k]
                dec = pend_dec[j]
                tg = pend_tgt[j]
                pend_dec[j] = -1
                n_pending -= 1
                px = ref[t, j]
                if sizing == 0:
                    qd = tg * e_open / px
                elif sizing == 1:
                    qd = tg / px
                else:
                    qd = tg
                code = 0
                req = qd - q[j]
                if not tradable[j]:
                    code = NOT_TRADABLE
                    qd = q[j]
                elif qd < 0.0 and p[P_ALLOW_SHORT] == 0.0:
                    code = SHORT_DISABLED
                    qd = 0.0
                elif qd < 0.0 and not shortable[j]:
                    code = NOT_SHORTABLE
                    qd = 0.0
                if p[P_FRACTIONAL] == 0.0 or not fractionable[j]:
                    rounded = np.trunc(qd + 1e-9 * np.sign(qd))
                    if code == 0 and p[P_FRACTIONAL] != 0.0 and abs(rounded - qd) > 1e-9:
                        code = NOT_FRACTIONABLE
                    qd = rounded
                d = qd - q[j]
                if code != 0:
                    denials[n_den, D_DEC] = dec
                    denials[n_den, D_COL] = j
                    denials[n_den, D_CODE] = code
                    denials[n_den, D_TARGET] = tg
                    denials[n_den, D_REQ] = req
                    denials[n_den, D_ALLOWED] = d
                    n_den += 1
                if abs(d) > 1e-12:
                    has_order[j] = True
                    delta[j] = d
                    ord_dec[j] = dec
                    ords[n_ord] = j
                    n_ord += 1
            # 3. two passes: pure reductions first (they free cash), then orders adding exposure
            for pass_ in range(2):
                for k in range(n_ord):
                    j = ords[k]
                    if not has_order[j]:
                        continue
                    d = delta[j]
                    q0 = q[j]
                    reducing = q0 * d < 0.0 and abs(d) <= abs(q0)
                    if (pass_ == 0) != reducing:
                        continue
                    has_order[j] = False
                    dec = ord_dec[j]
                    px = ref[t, j]
                    hs = _flex(half_spread, dec, j)
                    if np.isnan(hs):
                        hs = 0.0
                    sg = _flex(sigma, dec, j)
                    vv = _flex(volume, dec, j)
                    base_slip = slip_row[t if len(slip_row) > 1 else 0]
                    if p[P_IMPACT] > 0.0 and not np.isnan(sg) and not np.isnan(vv):
                        imp_k = p[P_IMPACT] * sg / np.sqrt(max(vv, 1.0))
                    else:
                        imp_k = 0.0
                    if not reducing:
                        qd = q0 + d
                        if q0 == 0.0 or q0 * qd > 0.0:
                            red = 0.0
                            inc = abs(qd) - abs(q0)
                        else:
                            red = abs(q0)
                            inc = abs(qd)
                        n = abs(d)
                        rate = hs + base_slip + imp_k * np.sqrt(n)
                        pxx = px * (1.0 + rate)
                        cost = n * px * rate + _commission(n, n * pxx, p)
                        g_after = gross - red * px + inc * px
                        if g_after > lev * (e_open - cost) + 1e-9:
                            kk = px * rate + p[P_PER_SHARE] + p[P_BPS] * 1e-4 * px * (1.0 + rate)
                            fixed = p[P_FLAT] + p[P_MIN]
                            inc_max = (lev * (e_open - fixed - red * kk) - gross + red * px) / (
                                px + lev * kk
                            )
                            inc_max = max(inc_max, 0.0)
                            if p[P_FRACTIONAL] == 0.0 or not fractionable[j]:
                                inc_max = np.floor(inc_max)
                            if inc_max < inc:
                                sgn = 1.0 if qd > 0.0 else -1.0
                                new_qd = sgn * inc_max
                                if red == 0.0 and q0 != 0.0:
                                    new_qd = sgn * (abs(q0) + inc_max)
                                new_d = new_qd - q0
                                if inc_max == 0.0 or (inc - inc_max) > p[P_CLIP_TOL] * inc:
                                    denials[n_den, D_DEC] = dec
                                    denials[n_den, D_COL] = j
                                    denials[n_den, D_CODE] = BUYING_POWER
                                    denials[n_den, D_TARGET] = target[dec, j]
                                    denials[n_den, D_REQ] = d
                                    denials[n_den, D_ALLOWED] = new_d
                                    n_den += 1
                                d = new_d
                                if abs(d) <= 1e-12:
                                    continue
                    n = abs(d)
                    side = 1.0 if d > 0.0 else -1.0
                    spread_px = px * hs
                    slip_px = px * (base_slip + imp_k * np.sqrt(n))
                    pxx = px + side * (spread_px + slip_px)
                    comm = _commission(n, n * pxx, p)
                    cash -= d * pxx + comm
                    gross += (abs(q0 + d) - abs(q0)) * px
                    spread_cost = n * spread_px
                    slip_cost = n * slip_px
                    e_open -= spread_cost + slip_cost + comm
                    q[j] = q0 + d
                    fills[n_fill, F_ROW] = t
                    fills[n_fill, F_COL] = j
                    fills[n_fill, F_DEC] = dec
                    fills[n_fill, F_QTY] = d
                    fills[n_fill, F_REF] = px
                    fills[n_fill, F_PX] = pxx
                    fills[n_fill, F_COMM] = comm
                    fills[n_fill, F_SPREAD] = spread_cost
                    fills[n_fill, F_SLIP] = slip_cost
                    fills[n_fill, F_BORROW] = cum_borrow[j]
                    fills[n_fill, F_POS] = q[j]
                    n_fill += 1
        # 4. mark at the close, charge borrow on shorts, record the row; take this close's decisions
        value = 0.0
        br = borrow_row[t if len(borrow_row) > 1 else 0]
        for j in range(n_s):
            c = close[t, j]
            if not np.isnan(c):
                last_close[j] = c
                tg = target[t, j]
                if not np.isnan(tg) and (every_bar or tg != last_tgt[j]):
                    pend_dec[j] = t
                    pend_tgt[j] = tg
                    last_tgt[j] = tg
                    n_pending += 1
            qj = q[j]
            positions[t, j] = qj
            if qj != 0.0:
                lc = last_close[j]
                value += qj * lc
                if qj < 0.0 and br > 0.0:
                    fee = -qj * lc * br
                    cash -= fee
                    cum_borrow[j] += fee
        equity[t] = cash + value
    for j in range(n_s):
        if pend_dec[j] >= 0:
            denials[n_den, D_DEC] = pend_dec[j]
            denials[n_den, D_COL] = j
            denials[n_den, D_CODE] = END_OF_DATA
            denials[n_den, D_TARGET] = pend_tgt[j]
            denials[n_den, D_REQ] = np.nan
            denials[n_den, D_ALLOWED] = 0.0
            n_den += 1
    return (
        equity,
        positions,
        fills[:n_fill].copy(),
        denials[:n_den].copy(),
        last_close,
        cum_borrow,
    )


@njit(cache=True)
def _excursion(high, low, j, r0, r1, last_px, direction, entry_px):
    hi = last_px
    lo = last_px
    for r in range(r0, r1):
        h = high[r, j]
        if not np.isnan(h):
            hi = max(hi, h)
            lo = min(lo, low[r, j])
    if direction > 0:
        return min(lo / entry_px - 1.0, 0.0), max(hi / entry_px - 1.0, 0.0)
    return min(1.0 - hi / entry_px, 0.0), max(1.0 - lo / entry_px, 0.0)


@njit(cache=True, nogil=True)
def trades_nb(fills, high, low, last_close, cum_borrow, n_t):
    """Group fills into round trips (flat to flat; a flip closes one trade and opens the next)."""
    n_s = high.shape[1]
    pos = np.zeros(n_s)
    d_ = np.zeros(n_s)
    entry_row = np.zeros(n_s, dtype=np.int64)
    q_in = np.zeros(n_s)
    v_in = np.zeros(n_s)
    q_out = np.zeros(n_s)
    v_out = np.zeros(n_s)
    comm = np.zeros(n_s)
    slip = np.zeros(n_s)
    b0 = np.zeros(n_s)
    out = np.empty((fills.shape[0] + n_s, N_TRADE))  # a fill opens at most one trade
    n = 0
    for i in range(fills.shape[0]):
        row = int(fills[i, F_ROW])
        j = int(fills[i, F_COL])
        qty = fills[i, F_QTY]
        px = fills[i, F_PX]
        c = fills[i, F_COMM]
        s = fills[i, F_SPREAD] + fills[i, F_SLIP]
        a = abs(qty)
        if pos[j] != 0.0 and qty * d_[j] < 0.0:
            close_q = min(a, abs(pos[j]))
            frac = close_q / a
            q_out[j] += close_q
            v_out[j] += close_q * px
            comm[j] += c * frac
            slip[j] += s * frac
            pos[j] += qty * frac
            if abs(pos[j]) <= 1e-9 * max(1.0, q_in[j]):
                pos[j] = 0.0
                ep = v_in[j] / q_in[j]
                mae, mfe = _excursion(high, low, j, entry_row[j], row, fills[i, F_REF], d_[j], ep)
                out[n, T_COL] = j
                out[n, T_ENTRY_ROW] = entry_row[j]
                out[n, T_EXIT_ROW] = row
                out[n, T_DIR] = d_[j]
                out[n, T_SIZE] = q_in[j]
                out[n, T_ENTRY_PX] = ep
                out[n, T_EXIT_PX] = v_out[j] / q_out[j]
                borrow = fills[i, F_BORROW] - b0[j]
                out[n, T_PNL] = d_[j] * (v_out[j] - v_in[j]) - comm[j] - borrow
                out[n, T_COMM] = comm[j]
                out[n, T_SLIP] = slip[j]
                out[n, T_BORROW] = borrow
                out[n, T_MAE] = mae
                out[n, T_MFE] = mfe
                out[n, T_OPEN] = 0.0
                out[n, T_NOTIONAL] = v_in[j]
                n += 1
            a -= close_q
            c *= 1.0 - frac
            s *= 1.0 - frac
            if a <= 1e-12:
                continue
            qty = qty * (a / abs(qty))
        if pos[j] == 0.0:
            d_[j] = 1.0 if qty > 0.0 else -1.0
            entry_row[j] = row
            q_in[j] = 0.0
            v_in[j] = 0.0
            q_out[j] = 0.0
            v_out[j] = 0.0
            comm[j] = 0.0
            slip[j] = 0.0
            b0[j] = fills[i, F_BORROW]
        pos[j] += qty
        q_in[j] += a
        v_in[j] += a * px
        comm[j] += c
        slip[j] += s
    for j in range(n_s):
        if pos[j] == 0.0:
            continue
        rest = abs(pos[j])
        lc = last_close[j]
        ep = v_in[j] / q_in[j]
        mae, mfe = _excursion(high, low, j, entry_row[j], n_t, lc, d_[j], ep)
        qo = q_out[j] + rest
        vo = v_out[j] + rest * lc
        borrow = cum_borrow[j] - b0[j]
        out[n, T_COL] = j
        out[n, T_ENTRY_ROW] = entry_row[j]
        out[n, T_EXIT_ROW] = n_t - 1
        out[n, T_DIR] = d_[j]
        out[n, T_SIZE] = q_in[j]
        out[n, T_ENTRY_PX] = ep
        out[n, T_EXIT_PX] = vo / qo
        out[n, T_PNL] = d_[j] * (vo - v_in[j] * qo / q_in[j]) - comm[j] - borrow
        out[n, T_COMM] = comm[j]
        out[n, T_SLIP] = slip[j]
        out[n, T_BORROW] = borrow
        out[n, T_MAE] = mae
        out[n, T_MFE] = mfe
        out[n, T_OPEN] = 1.0
        out[n, T_NOTIONAL] = v_in[j]
        n += 1
    return out[:n].copy()
