"""Look-ahead guard: checks that features see only the past and labels only until ``t1``.

Three properties, each a function that raises :class:`LookAheadError` with the first offending
row:

* :func:`check_truncation` — a feature computed on bars cut at ``T`` equals the full computation
  at every row ``ts <= T`` (no row reads a later bar).
* :func:`check_history_stability` — after the documented warm-up, a feature does not depend on
  how much history precedes the first row (so a live tail of ``warmup`` bars reproduces batch
  values).
* :func:`check_label_causality` — a label's ``t1`` is after ``ts``; labels computed on bars cut at
  ``T`` are either null or equal to the full labels, and never claim an outcome after ``T``;
  perturbing bars after ``T`` leaves every label with ``t1 <= T`` unchanged.

:func:`check_feature` runs the first two on a registered feature; the test suite runs it over
every name in the registry, so a newly registered feature is checked automatically.
:func:`check_feature_set` is the run-time guard: the train step runs the truncation check on a
sample of its training bars for the feature columns it actually trains on, so a feature
registered at run time (after the test suite ran) cannot leak either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from workbench.config import FeatureSpec
from workbench.data.schema import KEY
from workbench.data.timeframe import Timeframe
from workbench.errors import WorkbenchError

Compute = Callable[[pl.DataFrame], pl.DataFrame]


class LookAheadError(WorkbenchError, AssertionError):
    """A feature or label uses information it could not have had at its timestamp."""


def _default_cuts(bars: pl.DataFrame, fractions: Sequence[float]) -> list[datetime]:
    ts = bars.get_column("ts").unique().sort()
    return [ts[min(len(ts) - 1, int(f * len(ts)))] for f in fractions]


def _value_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in KEY]


def _mismatch(
    got: pl.DataFrame, want: pl.DataFrame, *, rtol: float, scale_from: pl.DataFrame
) -> tuple[str, dict[str, Any]] | None:
    """Return the first (column, row) where ``got`` and ``want`` differ, joined on the key."""
    joined = want.join(got, on=list(KEY), how="left", suffix="__got", maintain_order="left")
    for col in _value_columns(want):
        a, b = pl.col(col), pl.col(f"{col}__got")
        dtype = want.schema[col]
        if dtype.is_float():
            scale = scale_from.get_column(col).abs().median()
            scale = float(scale) if scale is not None and np.isfinite(scale) else 0.0
            close = (a - b).abs() <= rtol * (a.abs() + scale)
            both_nan = a.is_nan() & b.is_nan()
            ok = (a.is_null() & b.is_null()) | (
                a.is_not_null() & b.is_not_null() & (close | both_nan)
            )
        else:
            ok = (a.is_null() & b.is_null()) | (a == b).fill_null(False)
        bad = joined.filter(~ok)
        if bad.height:
            return col, bad.select(*KEY, a.alias("full"), b.alias("check")).row(0, named=True)
    return None


def check_truncation(
    compute: Compute,
    bars: pl.DataFrame,
    *,
    cuts: Sequence[datetime] | None = None,
    rtol: float = 1e-12,
    name: str = "feature",
) -> None:
    """Check that values at ``ts <= T`` do not change when bars after ``T`` are removed.

    Parameters
    ----------
    compute : callable
        ``bars -> frame keyed by (symbol, ts)``.
    bars : pl.DataFrame
        Bars sorted by ``(symbol, ts)``.
    cuts : sequence of datetime, optional
        Cut times ``T`` (default: 5 times spread over the data).
    rtol : float
        Relative tolerance for float columns.
    name : str
        Used in the error message.

    Raises
    ------
    LookAheadError
        Naming the column, row, full and truncated values.
    """
    full = compute(bars)
    for cut in cuts or _default_cuts(bars, (0.05, 0.3, 0.55, 0.77, 0.95)):
        part = compute(bars.filter(pl.col("ts") <= cut))
        want = full.filter(pl.col("ts") <= cut)
        if part.height != want.height:
            raise LookAheadError(
                f"{name}: computed on bars up to {cut} it returns {part.height} rows, the full "
                f"computation has {want.height} rows up to {cut}."
            )
        bad = _mismatch(part, want, rtol=rtol, scale_from=full)
        if bad:
            col, row = bad
            raise LookAheadError(
                f"{name}: column {col!r} at {row['symbol']} {row['ts']} is {row['full']!r} on the "
                f"full data but {row['check']!r} when bars after {cut} are removed: it reads the "
                "future. Fix: use only rows at or before ts (e.g. shift(+k), never shift(-k))."
            )


def check_history_stability(
    compute: Compute,
    bars: pl.DataFrame,
    warmup: int,
    *,
    starts: Sequence[datetime] | None = None,
    rtol: float = 1e-8,
    name: str = "feature",
) -> None:
    """Check that rows at least ``warmup`` bars into the data do not depend on earlier history.

    The feature is recomputed on bars starting at each time in ``starts``; rows whose position in
    their symbol's truncated series is ``>= warmup`` must equal the full computation within
    ``rtol`` (relative to the value plus the column's median magnitude).

    Raises
    ------
    LookAheadError
        If a row differs, or if no row is left to compare (the data are too short).
    """
    full = compute(bars)
    compared = 0
    for start in starts or _default_cuts(bars, (0.013, 0.05, 0.11)):
        cut = bars.filter(pl.col("ts") >= start)
        part = compute(cut)
        pos = pl.int_range(pl.len()).over("symbol")
        part = part.filter(pos >= warmup)
        compared += part.height
        want = full.join(part.select(KEY), on=list(KEY), how="semi", maintain_order="left")
        bad = _mismatch(part, want, rtol=rtol, scale_from=full)
        if bad:
            col, row = bad
            raise LookAheadError(
                f"{name}: column {col!r} at {row['symbol']} {row['ts']} is {row['full']!r} with full "
                f"history but {row['check']!r} when history starts at {start}, although the row is "
                f">= {warmup} bars (the documented warm-up) into the data. Fix: raise the registered "
                "warm-up or remove the dependence on distant history."
            )
    if compared == 0:
        raise LookAheadError(
            f"{name}: no row is {warmup} bars past any start; pass longer bars to check stability."
        )


def _perturb_after(bars: pl.DataFrame, cut: datetime, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    factor = pl.Series("_f", rng.uniform(0.8, 1.25, bars.height))
    after = pl.col("ts") > cut
    scale = pl.when(after).then(pl.col("_f")).otherwise(1.0)
    vol = pl.when(after).then(pl.col("volume") * (2.0 - pl.col("_f"))).otherwise(pl.col("volume"))
    cols = [c for c in ("open", "high", "low", "close", "vwap") if c in bars.columns]
    return (
        bars.with_columns(factor)
        .with_columns(*(pl.col(c) * scale for c in cols), vol.alias("volume"))
        .drop("_f")
    )


def check_label_causality(
    compute: Compute,
    bars: pl.DataFrame,
    *,
    cuts: Sequence[datetime] | None = None,
    rtol: float = 1e-12,
    name: str = "label",
) -> None:
    """Check that a label frame's outcome is known at ``t1`` and not before ``ts``.

    Parameters
    ----------
    compute : callable
        ``bars -> label frame`` keyed by ``(symbol, ts)`` with a ``t1`` column.
    bars : pl.DataFrame
        Bars sorted by ``(symbol, ts)``.
    cuts : sequence of datetime, optional
        Cut times (default: 4 times spread over the data).
    rtol : float
        Relative tolerance for float columns.
    name : str
        Used in error messages.

    Raises
    ------
    LookAheadError
        If ``t1 <= ts``, a truncated label disagrees with the full one or claims ``t1 > T``, or a
        label with ``t1 <= T`` changes when bars after ``T`` change.
    """
    full = compute(bars)
    if "t1" not in full.columns:
        raise LookAheadError(f"{name}: label frames must carry t1 (when the outcome is known).")
    early = full.filter(pl.col("t1").is_not_null() & (pl.col("t1") <= pl.col("ts")))
    if early.height:
        row = early.row(0, named=True)
        raise LookAheadError(
            f"{name}: label at {row['symbol']} {row['ts']} has t1 = {row['t1']} <= ts; a label's "
            "outcome must come from bars after the decision."
        )
    known = pl.col("t1").is_not_null()
    for i, cut in enumerate(cuts or _default_cuts(bars, (0.2, 0.45, 0.7, 0.9))):
        part = compute(bars.filter(pl.col("ts") <= cut))
        late = part.filter(known & (pl.col("t1") > cut))
        if late.height:
            row = late.row(0, named=True)
            raise LookAheadError(
                f"{name}: with bars up to {cut}, the label at {row['symbol']} {row['ts']} claims "
                f"t1 = {row['t1']}, after the data end."
            )
        have = part.filter(known)
        want = full.join(have.select(KEY), on=list(KEY), how="semi", maintain_order="left")
        bad = _mismatch(have, want, rtol=rtol, scale_from=full)
        if bad:
            col, row = bad
            raise LookAheadError(
                f"{name}: column {col!r} at {row['symbol']} {row['ts']} is {row['full']!r} on the full "
                f"data but {row['check']!r} with bars up to {cut}: the label uses bars after its t1."
            )
        moved = compute(_perturb_after(bars, cut, seed=i))
        want = full.filter(known & (pl.col("t1") <= cut))
        got = moved.join(want.select(KEY), on=list(KEY), how="semi", maintain_order="left")
        bad = _mismatch(got, want, rtol=rtol, scale_from=full)
        if bad:
            col, row = bad
            raise LookAheadError(
                f"{name}: column {col!r} at {row['symbol']} {row['ts']} (t1 <= {cut}) changes from "
                f"{row['full']!r} to {row['check']!r} when bars after {cut} change: the label reads "
                "bars after its t1. Fix: report the true t1."
            )


def check_feature(
    name: str,
    bars: pl.DataFrame,
    *,
    params: Mapping[str, Any] | None = None,
    timeframe: str | Timeframe = "5Min",
) -> None:
    """Run the truncation and history-stability checks on a registered feature.

    Parameters
    ----------
    name : str
        Registry name.
    bars : pl.DataFrame
        Bars sorted by ``(symbol, ts)``, longer than the feature's warm-up.
    params : mapping, optional
        Parameters (defaults fill the rest).
    timeframe : str or Timeframe
        Timeframe of ``bars`` (sets session-anchored warm-ups).

    Raises
    ------
    LookAheadError
        On the first violated property.
    """
    from workbench.features.registry import get_feature
    from workbench.features.sets import build_features

    spec = FeatureSpec(name=name, params=dict(params or {}))
    warmup = get_feature(name).warmup_bars(spec.params, timeframe)

    def compute(b: pl.DataFrame) -> pl.DataFrame:
        return build_features(b, [spec])

    check_truncation(compute, bars, name=name)
    check_history_stability(compute, bars, warmup, name=name)


def check_feature_set(
    feature_set: Any,
    bars: pl.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    cfg: Any = None,
    symbols: int = 2,
    max_bars: int = 1560,
    cuts: int = 3,
    seed: int = 0,
) -> int:
    """Run the truncation check on a sample of the bars a feature set is used on.

    The run-time guard of the train step: whatever was registered when the pipeline ran, the
    feature columns it trains on (``columns``, default every column of the set) must not change
    when later bars are removed. The sample is the last ``max_bars`` bars of up to ``symbols``
    symbols (picked by ``seed``), cut at ``cuts`` times spread over it, so the check costs a few
    feature computations on a small frame.

    Parameters
    ----------
    feature_set : str, sequence of specs or FeatureSet
        What :func:`workbench.features.sets.build_features` accepts (a configured name needs
        ``cfg``).
    bars : pl.DataFrame
        Bars the features were computed from (any order).
    columns : sequence of str, optional
        The feature columns actually used; others are not compared.
    cfg : WorkbenchConfig, optional
        Resolves a feature-set name.

    Returns
    -------
    int
        Number of feature columns checked.

    Raises
    ------
    LookAheadError
        Naming the column, row, full and truncated values.
    """
    from workbench.features.sets import build_features, resolve_feature_set

    fs = resolve_feature_set(feature_set, cfg)
    cols = [c for c in fs.columns if columns is None or c in set(columns)]
    if not cols or bars.height == 0:
        return 0
    names = bars.get_column("symbol").unique().sort().to_list()
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(names, size=min(symbols, len(names)), replace=False).tolist())
    sample = (
        bars.filter(pl.col("symbol").is_in(pick))
        .sort(list(KEY))
        .group_by("symbol", maintain_order=True)
        .tail(max_bars)
        .sort(list(KEY))
    )
    fractions = [(k + 1) / (cuts + 1) for k in range(cuts)]

    def compute(b: pl.DataFrame) -> pl.DataFrame:
        return build_features(b, fs, cfg).select(*KEY, *cols)

    check_truncation(
        compute,
        sample,
        cuts=_default_cuts(sample, fractions),
        name=f"feature set {fs.name!r}",
    )
    return len(cols)
