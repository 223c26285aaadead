"""Labels: forward returns, triple barrier with meta-labels, mean-reversion and trend labels.

Time convention (the same as the backtest's): a decision taken at row ``ts_i`` (the close of bar
``i``) is entered at the **open of bar i+1**. Every label frame has one row per input bar, keyed by
``(symbol, ts)``, with

* ``t1`` — the time the outcome is known, always a bar stamp present in the data:

  - an exit at the open of bar ``j`` (vertical barrier, or a gap through a barrier) has
    ``t1 = ts_j``: an open is known at its bar's start;
  - a barrier touched by the high/low of bar ``j`` has ``t1 = ts_{j+1}``, the first bar stamp at or
    after bar ``j``'s close (``ts_j + timeframe``);
  - so the forward return entering at the open of ``i+1`` and exiting at the open of ``i+1+h`` has
    ``t1 = ts_{i+1+h}``.

* ``ret`` — the realised return of the labelled trade (see each function), ``label`` — the target.
* Nulls in every column (``t1`` included) where bar ``i+1+h`` is not in the data, i.e. the horizon
  runs past the data: labels near the end are never built from a shortened path.

Horizons count bars of the symbol's own series, across session boundaries. Labels are the only
place where future bars enter; :func:`workbench.features.lookahead.check_label_causality` verifies
for every registered label that nothing after ``t1`` is used.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from workbench.config import LabelConfig
from workbench.data.schema import KEY
from workbench.errors import ConfigError, SchemaError
from workbench.features._expr import (
    check_choice,
    check_float,
    check_int,
    did_you_mean,
    f64,
)
from workbench.features.indicators import atr, sma, vwap, vwap_zscore, zscore
from workbench.features.sets import ensure_sorted

LabelFn = Callable[..., pl.DataFrame]
_LABELS: dict[str, LabelFn] = {}

PT, SL, VERTICAL = 1, 2, 3


def register_label(name: str | None = None) -> Callable[[LabelFn], LabelFn]:
    """Register a label function ``fn(bars, horizon, **params) -> frame`` under ``name``.

    Registered labels are what :func:`build_labels` (and so ``LabelConfig.kind``) can name, and the
    look-ahead guard in the test suite checks each of them.
    """

    def deco(fn: LabelFn) -> LabelFn:
        _LABELS[name or fn.__name__] = fn
        return fn

    return deco


def label_names() -> list[str]:
    """Return the registered label names, sorted."""
    return sorted(_LABELS)


def get_label(name: str) -> LabelFn:
    """Return the label function ``name``; unknown names raise with a suggestion."""
    try:
        return _LABELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown label {name!r}{did_you_mean(name, _LABELS)}. Registered labels: {label_names()}."
        ) from None


def build_labels(
    bars: pl.DataFrame,
    label: LabelConfig | str,
    horizon: int | None = None,
    **params: Any,
) -> pl.DataFrame:
    """Compute the label a strategy's config asks for.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars (``symbol, ts, open, high, low, close``).
    label : LabelConfig or str
        The config (``kind``, ``horizon``, ``params``) or a registered name.
    horizon : int, optional
        Overrides the config's horizon (required with a bare name unless the default suits).
    **params
        Override or add to the config's parameters.

    Returns
    -------
    pl.DataFrame
        The label frame (see the module docstring).
    """
    if isinstance(label, LabelConfig):
        fn = get_label(label.kind)
        merged = {**label.params, **params}
        return fn(bars, horizon if horizon is not None else label.horizon, **merged)
    fn = get_label(label)
    return fn(bars, horizon, **params) if horizon is not None else fn(bars, **params)


def _prepare(bars: pl.DataFrame, func: str, extra: tuple[str, ...] = ()) -> pl.DataFrame:
    need = [*KEY, "open", "high", "low", "close", *extra]
    if not isinstance(bars, pl.DataFrame):
        raise SchemaError(
            f"{func}: bars must be a polars DataFrame, got {type(bars).__name__}.",
            rule="not a frame",
        )
    missing = [c for c in need if c not in bars.columns]
    if missing:
        raise SchemaError(
            f"{func}: bars are missing column(s) {missing}; got {bars.columns}. "
            "Fix: pass bars in the bar contract.",
            rule="missing column",
        )
    return ensure_sorted(bars)


def _t1(ts: pl.Series, idx: np.ndarray) -> pl.Series:
    """Return ``ts[idx]`` with nulls where ``idx < 0``."""
    pos = pl.Series("i", idx)
    pos = pl.select(pl.when(pos >= 0).then(pos).otherwise(None)).to_series()
    return ts.gather(pos).alias("t1")


def _segments(df: pl.DataFrame) -> np.ndarray:
    return df.select(pl.col("symbol").rle_id()).to_series().to_numpy()


# --------------------------------------------------------------------------------------------
# forward return


@register_label()
def forward_return(bars: pl.DataFrame, horizon: int = 12, *, log: bool = False) -> pl.DataFrame:
    """Return the forward return over ``horizon`` bars from the next open.

    ``ret_i = open_{i+1+h} / open_{i+1} - 1`` (or its log): enter at the open of the bar after the
    decision, exit ``h`` bars later at an open. ``t1 = ts_{i+1+h}``. ``label = ret``.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars.
    horizon : int
        Holding period in bars (>= 1).
    log : bool
        Log return instead of simple return.

    Returns
    -------
    pl.DataFrame
        ``symbol, ts, t1, ret, label``; null where bar ``i+1+h`` is not in the data.
    """
    horizon = check_int("forward_return", "horizon", horizon, 1)
    df = _prepare(bars, "forward_return")
    entry = pl.col("open").shift(-1).over("symbol")
    exit_ = pl.col("open").shift(-(1 + horizon)).over("symbol")
    ratio = exit_ / entry
    ret = ratio.log() if log else ratio - 1.0
    return df.select(
        *KEY,
        pl.col("ts").shift(-(1 + horizon)).over("symbol").alias("t1"),
        ret.alias("ret"),
        ret.alias("label"),
    )


# --------------------------------------------------------------------------------------------
# barrier engine


@njit(cache=True, nogil=True)
def _barrier_kernel(gid, open_, high, low, pt_dist, sl_dist, target, side, horizon):
    """First touch of profit-take / stop-loss levels, or the vertical barrier.

    Returns the side-adjusted return, the row index whose ts is t1 (-1: unknown) and the barrier.
    """
    n = open_.shape[0]
    ret = np.full(n, np.nan)
    t1 = np.full(n, -1, np.int64)
    code = np.zeros(n, np.int64)
    i = 0
    while i < n:
        j = i + 1
        while j < n and gid[j] == gid[i]:
            j += 1
        for r in range(i, j - 1 - horizon):
            s = side[r]
            if np.isnan(s) or s == 0.0:
                continue
            up = pt_dist[r]
            dn = sl_dist[r]
            if np.isnan(up) or np.isnan(dn):
                continue  # the barrier unit is not known yet
            entry = open_[r + 1]
            tgt = target[r]
            if not np.isnan(tgt):
                pt_level = tgt
            elif up > 0:
                pt_level = entry + s * up
            else:
                pt_level = np.nan
            sl_level = entry - s * dn if dn > 0 else np.nan
            exit_px = np.nan
            for k in range(r + 1, r + 1 + horizon):
                o = open_[k]
                if not np.isnan(sl_level) and s * (o - sl_level) <= 0.0:
                    exit_px, t1[r], code[r] = o, k, SL
                    break
                if not np.isnan(pt_level) and s * (o - pt_level) >= 0.0:
                    exit_px, t1[r], code[r] = o, k, PT
                    break
                worst = low[k] if s > 0 else high[k]
                best = high[k] if s > 0 else low[k]
                if not np.isnan(sl_level) and s * (worst - sl_level) <= 0.0:
                    exit_px, t1[r], code[r] = sl_level, k + 1, SL
                    break
                if not np.isnan(pt_level) and s * (best - pt_level) >= 0.0:
                    exit_px, t1[r], code[r] = pt_level, k + 1, PT
                    break
            if np.isnan(exit_px):
                exit_px, t1[r], code[r] = open_[r + 1 + horizon], r + 1 + horizon, VERTICAL
            ret[r] = s * (exit_px / entry - 1.0)
        i = j
    return ret, t1, code


def _unit(df: pl.DataFrame, unit: str, window: int) -> np.ndarray:
    """Return the barrier unit per row in price units (ATR) or as a fraction (volatility)."""
    if unit == "atr":
        expr = atr(window=window)
    else:
        lr = (pl.col("close") / pl.col("close").shift(1)).log()
        expr = lr.rolling_std(window_size=window).over("symbol")
    return f64(df.select(expr).to_series())


def _barriers(
    df: pl.DataFrame,
    horizon: int,
    *,
    pt: float,
    sl: float,
    unit: str,
    window: int,
    side: np.ndarray,
    target: np.ndarray | None = None,
) -> tuple[np.ndarray, pl.Series, pl.Series]:
    u = _unit(df, unit, window)
    open_ = f64(df.get_column("open"))
    if unit == "vol":  # a fraction of the entry price
        entry = np.r_[open_[1:], np.nan]
        u = u * entry
    pt_dist = u * pt if pt > 0 else np.zeros_like(u)  # 0 = no barrier, NaN = unit unknown
    sl_dist = u * sl if sl > 0 else np.zeros_like(u)
    if target is None:
        target = np.full(df.height, np.nan)
    ret, idx, code = _barrier_kernel(
        _segments(df),
        open_,
        f64(df.get_column("high")),
        f64(df.get_column("low")),
        pt_dist,
        sl_dist,
        target,
        side,
        horizon,
    )
    barrier = pl.Series("barrier", code).replace_strict(
        {0: None, PT: "pt", SL: "sl", VERTICAL: "vertical"}, return_dtype=pl.String
    )
    return ret, _t1(df.get_column("ts"), idx), barrier


def _side_array(df: pl.DataFrame, side: str | pl.DataFrame | None) -> tuple[np.ndarray, bool]:
    if side is None:
        return np.ones(df.height), False
    if isinstance(side, str):
        if side not in df.columns:
            raise SchemaError(
                f"The 'side' parameter of triple_barrier names column {side!r}, which the bars do "
                f"not have{did_you_mean(side, df.columns)}. Fix: add the primary model's side "
                "(+1 long, -1 short, 0 flat) as a column or pass a frame keyed by (symbol, ts).",
                rule="missing column",
            )
        s = df.get_column(side)
    elif isinstance(side, pl.DataFrame):
        if "side" not in side.columns or any(k not in side.columns for k in KEY):
            raise SchemaError(
                f"The 'side' frame of triple_barrier must have columns symbol, ts, side; got "
                f"{side.columns}.",
                rule="missing column",
            )
        s = df.select(KEY).join(
            side.select(*KEY, "side"), on=list(KEY), how="left", maintain_order="left"
        )["side"]
    else:
        raise ConfigError(
            f"The 'side' parameter of triple_barrier must be None, a column name or a frame keyed by "
            f"(symbol, ts). Got {type(side).__name__} instead."
        )
    arr = np.sign(f64(s))
    return arr, True


def _check_barrier_params(
    func: str, pt: Any, sl: Any, unit: Any, window: Any
) -> tuple[float, float, str, int]:
    pt = check_float(func, "pt", pt, strict=False)
    sl = check_float(func, "sl", sl, strict=False)
    unit = check_choice(func, "unit", unit, ("atr", "vol"))
    window = check_int(func, "window", window, 2)
    return pt, sl, unit, window


@register_label()
def triple_barrier(
    bars: pl.DataFrame,
    horizon: int = 12,
    *,
    pt: float = 2.0,
    sl: float = 2.0,
    unit: str = "atr",
    window: int = 14,
    side: str | pl.DataFrame | None = None,
    vertical: str = "sign",
) -> pl.DataFrame:
    """Return triple-barrier labels (profit-take, stop-loss, vertical barrier), optionally meta.

    Entry at ``open_{i+1}``. Barriers at ``entry ± pt·u`` and ``entry ∓ sl·u`` in the trade's
    direction, where ``u`` is ``ATR(window)`` at row ``i`` (``unit='atr'``, price units) or
    ``σ(window) · entry`` (``unit='vol'``, σ the standard deviation of log close-to-close
    returns at row ``i``); ``pt=0`` or ``sl=0`` removes that barrier. Bars ``i+1 .. i+h`` are
    scanned in order: an open beyond a barrier exits at that open (``t1`` = its ts); else a high/low
    reaching a barrier exits at the barrier (``t1`` = the next bar's ts); if both barriers fall in
    one bar the stop-loss is assumed first. Otherwise the trade exits at ``open_{i+1+h}``
    (``t1 = ts_{i+1+h}``).

    Parameters
    ----------
    bars : pl.DataFrame
        Bars.
    horizon : int
        Vertical barrier in bars (>= 1).
    pt, sl : float
        Barrier distances in units (>= 0).
    unit : {'atr', 'vol'}
        What a unit is.
    window : int
        Window of the unit estimate (>= 2).
    side : str, pl.DataFrame or None
        The primary model's side (+1/-1/0) for meta-labelling: a column of ``bars`` or a frame with
        ``symbol, ts, side``. None labels a long position and reports the direction.
    vertical : {'sign', 'zero'}
        Label of a vertical-barrier exit without side: the sign of its return, or 0.

    Returns
    -------
    pl.DataFrame
        ``symbol, ts, t1, ret, label, barrier`` (``'pt'``, ``'sl'``, ``'vertical'``) and, with
        ``side``, a ``side`` column. Without side ``ret`` is the long return and ``label`` is +1
        (profit-take), -1 (stop-loss) or the vertical label; with side ``ret`` is the side-adjusted
        return and ``label`` the meta-label, 1.0 if ``ret > 0`` else 0.0 (null where side is 0).
    """
    horizon = check_int("triple_barrier", "horizon", horizon, 1)
    pt, sl, unit, window = _check_barrier_params("triple_barrier", pt, sl, unit, window)
    vertical = check_choice("triple_barrier", "vertical", vertical, ("sign", "zero"))
    df = _prepare(bars, "triple_barrier")
    sides, meta = _side_array(df, side)
    ret, t1, barrier = _barriers(df, horizon, pt=pt, sl=sl, unit=unit, window=window, side=sides)
    ret_s = pl.Series("ret", ret, nan_to_null=True)
    out = df.select(KEY).with_columns(t1, ret_s, barrier)
    if meta:
        label = pl.when(pl.col("ret") > 0).then(1.0).otherwise(0.0)
        out = out.with_columns(
            pl.when(pl.col("ret").is_not_null()).then(label).otherwise(None).alias("label"),
            pl.Series("side", sides, nan_to_null=True),
        )
    else:
        on_vertical = pl.col("ret").sign() if vertical == "sign" else pl.lit(0.0)
        label = (
            pl.when(pl.col("barrier") == "pt")
            .then(1.0)
            .when(pl.col("barrier") == "sl")
            .then(-1.0)
            .when(pl.col("barrier") == "vertical")
            .then(on_vertical)
            .otherwise(None)
        )
        out = out.with_columns(label.alias("label"))
    cols = [*KEY, "t1", "ret", "label", "barrier"] + (["side"] if meta else [])
    return out.select(cols)


# --------------------------------------------------------------------------------------------
# strategy labels


@register_label()
def mean_reversion(
    bars: pl.DataFrame,
    horizon: int = 12,
    *,
    window: int = 20,
    entry_z: float = 0.0,
    sl: float = 2.0,
    unit: str = "atr",
    unit_window: int = 14,
    anchor: str = "sma",
) -> pl.DataFrame:
    """Return the outcome of fading a move away from the rolling mean or the session VWAP.

    At row ``i`` with ``z = zscore(close, window)``, the trade fades the deviation
    (``side = -sign(z)`` when ``|z| >= entry_z``), enters at ``open_{i+1}`` and takes profit when the
    price reaches the mean ``SMA(window)_i``, stops out ``sl`` units against it, or exits at the
    vertical barrier (same path rules and ``t1`` as :func:`triple_barrier`). With
    ``anchor='vwap'`` the deviation is the close's from the session VWAP in VWAP-band standard
    deviations (``vwap_zscore``) and the profit-take is the session VWAP at row ``i``
    (``session_vwap``; ``window`` is then unused): the rule-based side whose trades the
    triple barrier labels, for a model to filter (meta-labelling).

    Parameters
    ----------
    bars : pl.DataFrame
        Bars.
    horizon : int
        Vertical barrier in bars (>= 1).
    window : int
        Window of the mean and z-score (>= 2).
    entry_z : float
        Smallest ``|z|`` that opens a trade (>= 0); rows below get null labels.
    sl : float
        Stop distance in units (>= 0; 0 = no stop).
    unit : {'atr', 'vol'}
        Unit of the stop.
    unit_window : int
        Window of the unit estimate (>= 2).
    anchor : {'sma', 'vwap'}
        What the price reverts to: the rolling mean or the session VWAP (needs ``vwap`` and
        ``volume`` columns).

    Returns
    -------
    pl.DataFrame
        ``symbol, ts, t1, ret, label, barrier, side, meta_label``. ``ret`` is the raw (long)
        return from entry to exit, so ``label = ret`` is positive when the price rose — a regressor
        trained on it predicts the direction to trade. ``side`` is the fade direction and
        ``meta_label`` is 1.0 if ``side · ret > 0`` else 0.0.
    """
    horizon = check_int("mean_reversion", "horizon", horizon, 1)
    window = check_int("mean_reversion", "window", window, 2)
    entry_z = check_float("mean_reversion", "entry_z", entry_z, strict=False)
    _, sl, unit, unit_window = _check_barrier_params("mean_reversion", 0.0, sl, unit, unit_window)
    anchor = check_choice("mean_reversion", "anchor", anchor, ("sma", "vwap"))
    if anchor == "vwap":
        df = _prepare(bars, "mean_reversion", ("vwap", "volume"))
        z = f64(df.select(vwap_zscore()).to_series())
        mean = f64(df.select(vwap()).to_series())
    else:
        df = _prepare(bars, "mean_reversion")
        z = f64(df.select(zscore(window=window)).to_series())
        mean = f64(df.select(sma(window=window)).to_series())
    with np.errstate(invalid="ignore"):
        side = np.where(np.abs(z) >= max(entry_z, 1e-300), -np.sign(z), 0.0)
    side[np.isnan(z)] = np.nan
    ret_s, t1, barrier = _barriers(
        df, horizon, pt=0.0, sl=sl, unit=unit, window=unit_window, side=side, target=mean
    )
    raw = ret_s * np.where(np.isnan(side) | (side == 0), np.nan, side)  # undo the side adjustment
    out = df.select(KEY).with_columns(
        t1,
        pl.Series("ret", raw, nan_to_null=True),
        barrier,
        pl.Series("side", side, nan_to_null=True),
    )
    meta = pl.when(pl.col("side") * pl.col("ret") > 0).then(1.0).otherwise(0.0)
    return out.select(
        *KEY,
        "t1",
        "ret",
        pl.col("ret").alias("label"),
        "barrier",
        pl.when(pl.col("ret").is_not_null()).then(pl.col("side")).otherwise(None).alias("side"),
        pl.when(pl.col("ret").is_not_null()).then(meta).otherwise(None).alias("meta_label"),
    )


@njit(cache=True, nogil=True)
def _trend_scan(gid, log_open, horizon, min_window, t_max):
    n = log_open.shape[0]
    tval = np.full(n, np.nan)
    ret = np.full(n, np.nan)
    best_len = np.full(n, -1, np.int64)
    i = 0
    while i < n:
        j = i + 1
        while j < n and gid[j] == gid[i]:
            j += 1
        for r in range(i, j - 1 - horizon):
            y0 = log_open[r + 1]
            sy = 0.0
            sxy = 0.0
            syy = 0.0
            best = 0.0
            best_abs = -1.0
            for length in range(1, horizon + 1):
                y = log_open[r + 1 + length] - y0
                sy += y
                sxy += length * y
                syy += y * y
                if length < min_window:
                    continue
                m = length + 1.0
                sx = length * m / 2.0
                sxx = length * m * (2.0 * length + 1.0) / 6.0
                cxx = sxx - sx * sx / m
                cxy = sxy - sx * sy / m
                cyy = syy - sy * sy / m
                b = cxy / cxx
                sse = cyy - b * cxy
                if sse > 1e-300:
                    t = b / math.sqrt(sse / (m - 2.0) / cxx)
                    t = min(max(t, -t_max), t_max)
                elif b != 0.0:
                    t = t_max if b > 0 else -t_max
                else:
                    t = 0.0
                if abs(t) > best_abs:
                    best_abs = abs(t)
                    best = t
                    best_len[r] = length
            tval[r] = best
            ret[r] = math.exp(log_open[r + 1 + best_len[r]] - y0) - 1.0
        i = j
    return tval, ret, best_len


@register_label()
def trend(
    bars: pl.DataFrame,
    horizon: int = 48,
    *,
    min_window: int = 6,
    t_max: float = 20.0,
) -> pl.DataFrame:
    """Return trend-scanning labels: the t-value of the strongest forward trend.

    For each row, fit ``ln open_{i+1+k} = a + b k`` on ``k = 0..L`` for every
    ``L = min_window .. horizon`` and keep the ``L`` with the largest ``|t(b)|``
    (López de Prado's trend scanning). Because the choice looks at every window, the outcome is
    known only at ``t1 = ts_{i+1+horizon}``.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars.
    horizon : int
        Longest window in bars (>= ``min_window``).
    min_window : int
        Shortest window in bars (>= 2).
    t_max : float
        t-values are clipped to ``±t_max`` (> 0): a perfectly straight path has infinite t.

    Returns
    -------
    pl.DataFrame
        ``symbol, ts, t1, ret, label, window, side``: ``label`` the clipped t-value (positive = up
        trend), ``ret`` the return from entry over the chosen window, ``window`` its length in bars,
        ``side`` the sign of ``label``.
    """
    min_window = check_int("trend", "min_window", min_window, 2)
    horizon = check_int("trend", "horizon", horizon, min_window)
    t_max = check_float("trend", "t_max", t_max)
    df = _prepare(bars, "trend")
    log_open = np.log(f64(df.get_column("open")))
    tval, ret, length = _trend_scan(_segments(df), log_open, horizon, min_window, t_max)
    known = length >= 0
    idx = np.where(known, np.arange(df.height) + 1 + horizon, -1)
    out = df.select(KEY).with_columns(
        _t1(df.get_column("ts"), idx),
        pl.Series("ret", ret, nan_to_null=True),
        pl.Series("label", tval, nan_to_null=True),
        pl.Series("window", np.where(known, length, 0)).cast(pl.Int64),
    )
    return out.with_columns(
        pl.when(pl.col("label").is_not_null())
        .then(pl.col("window"))
        .otherwise(None)
        .alias("window"),
        pl.col("label").sign().alias("side"),
    )


def label_params(name: str) -> Mapping[str, Any]:
    """Return the keyword parameters (with defaults) of a registered label, horizon included."""
    sig = inspect.signature(get_label(name))
    return {p.name: p.default for p in list(sig.parameters.values())[1:]}
