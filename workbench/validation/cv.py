"""Leakage-aware cross-validation splitters: purged K-fold, combinatorial purged K-fold, walk-forward.

All three follow scikit-learn's splitter API (``split(X, y=None, groups=None)`` yields
``(train_idx, test_idx)`` integer arrays, ``get_n_splits``), so they plug into
``cross_val_score``, ``GridSearchCV`` and friends. References: López de Prado, *Advances in
Financial Machine Learning* (2018), ch. 7 (purging, embargo) and ch. 12 (CPCV).

Times
-----
``split(X)`` reads the two contract columns of a feature table: ``X["ts"]`` (the row's time) and
``X["t1"]`` (the time its label's outcome is known, ``t1 >= ts``; see :mod:`workbench.labels`).
``X`` is a polars or pandas frame. When ``X`` is a bare feature matrix, pass the times as
keyword arrays instead: ``split(X, ts=table["ts"], t1=table["t1"])``. Times are polars/pandas
datetime series or numpy ``datetime64`` arrays (naive times count as UTC).

* Rows may come in any order (e.g. sorted by ``(symbol, ts)``); the splitters work on the times,
  and every index refers to the **original row order** (returned sorted ascending).
* Rows sharing a ``ts`` (one per symbol) always fall in the same test block: blocks are made of
  whole unique timestamps, and sizes count unique timestamps ("bars"), not rows.
* A null ``t1`` (an unlabelled row, e.g. at the end of the data) never enters a training set; such
  rows do appear in test sets, where their interval is taken as ``[ts, ts]``.

Purging and embargo
-------------------
A test block spans ``[start, end]`` with ``start`` its first ``ts`` and ``end`` the latest ``t1`` of
its rows (its last ``ts`` if none is later). A training row is **purged** when its label interval
``[ts, t1]`` intersects ``[start, end]`` (closed intervals: touching counts), and **embargoed** when
its ``ts`` lies in ``(end, end + embargo]``. ``embargo`` is one of

* a ``datetime.timedelta`` / ``numpy.timedelta64`` (a span of time),
* an ``int`` >= 0: that many unique timestamps (bars) after ``end``,
* a ``float`` in ``[0, 1)``: that fraction of all unique timestamps, rounded up to whole bars
  (AFML's ``pct_embargo``; 0.01 is the book's suggestion).

Usage::

    cv = PurgedKFold(n_splits=5, embargo=timedelta(hours=1))
    for train, test in cv.split(table):  # table: symbol, ts, features..., label, t1
        model.fit(features[train], labels[train])

Using the splits with scikit-learn
----------------------------------
Either keep ``ts``/``t1`` in ``X`` and drop them in the pipeline
(``make_column_transformer(("drop", ["ts", "t1"]), remainder="passthrough")``), or compute the
splits once and pass the list: ``cross_val_score(model, features, y,
cv=list(PurgedKFold(5).split(table)))``. A training set can be empty when label horizons span most
of the data; check ``len(train)`` before fitting.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from workbench.errors import ParameterError, SchemaError

__all__ = ["CombinatorialPurgedKFold", "PurgedKFold", "WalkForward"]

Embargo = timedelta | np.timedelta64 | int | float
Split = tuple[np.ndarray, np.ndarray]

_NAT = np.iinfo(np.int64).min


# --------------------------------------------------------------------------------------- params
def _check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ParameterError(
            f"The {name!r} parameter of {owner} must be an int >= {minimum}. Got {value!r} instead."
        )
    return int(value)


@dataclass(frozen=True)
class _Embargo:
    kind: str  # "time" (value in ns), "bars" (value in unique timestamps) or "frac"
    value: float

    def bars(self, n_unique: int) -> int:
        return int(self.value) if self.kind == "bars" else math.ceil(self.value * n_unique)


def _check_embargo(owner: str, value: Any) -> _Embargo:
    bad = ParameterError(
        f"The 'embargo' parameter of {owner} must be a timedelta >= 0, an int >= 0 (unique "
        f"timestamps) or a float in [0, 1) (fraction of unique timestamps). Got {value!r} instead."
    )
    if isinstance(value, bool):
        raise bad
    if isinstance(value, timedelta | np.timedelta64):
        ns = _timedelta_ns(value)
        if ns is None or ns < 0:
            raise bad
        return _Embargo("time", ns)
    if isinstance(value, int | np.integer):
        if value < 0:
            raise bad
        return _Embargo("bars", int(value))
    if isinstance(value, float | np.floating):
        if not 0.0 <= value < 1.0:
            raise bad
        return _Embargo("frac", float(value))
    raise bad


def _timedelta_ns(value: timedelta | np.timedelta64) -> int | None:
    if isinstance(value, np.timedelta64):
        if np.isnat(value) or np.datetime_data(value.dtype)[0] in ("Y", "M", "generic"):
            return None
        return int(value.astype("timedelta64[ns]").astype(np.int64))
    # datetime.timedelta (and pandas.Timedelta, a subclass): exact integer arithmetic
    ns = (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    return ns + int(getattr(value, "nanoseconds", 0))


class _Splitter:
    """Shared plumbing: parameter repr, reading times, masks for purging and embargo."""

    _params: tuple[str, ...] = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self._params)
        return f"{type(self).__name__}({args})"

    def _times(self, X: Any, ts: Any, t1: Any) -> _Times:
        return _Times.read(type(self).__name__, X, ts, t1)

    def _embargo_end(self, times: _Times, end: int) -> int:
        """Return the last instant embargoed after a test block ending at ``end``."""
        emb = self._embargo
        if emb.kind == "time":
            return end + int(emb.value)
        h = emb.bars(times.n_unique)
        first = int(np.searchsorted(times.unique, end, side="right"))
        last = min(first + h, times.n_unique) - 1
        return int(times.unique[last]) if last >= first else end

    def _train_mask(self, times: _Times, test: np.ndarray, spans: Sequence[tuple[int, int]]) -> Any:
        """Return labelled, non-test rows clear of every test span and its embargo."""
        keep = times.labelled & ~test
        for start, end in spans:
            keep &= ~((times.ts <= end) & (times.t1 >= start))  # purge: [ts, t1] meets the span
            emb_end = self._embargo_end(times, end)
            if emb_end > end:
                keep &= ~((times.ts > end) & (times.ts <= emb_end))
        return keep


# ---------------------------------------------------------------------------------------- times
def _to_ns(owner: str, name: str, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``values`` as int64 nanoseconds since the epoch (UTC) and a null mask."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        out = values.astype("datetime64[ns]").view(np.int64)
        return out, out == _NAT
    if isinstance(values, pl.Series):
        s = values
    elif type(values).__module__.partition(".")[0] == "pandas":
        s = pl.from_pandas(values)
    else:
        s = pl.Series(name, values)
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("ns"))
    if not isinstance(s.dtype, pl.Datetime):
        raise SchemaError(
            f"{owner}: {name!r} must hold datetimes (polars Datetime/Date, pandas datetime64 or "
            f"numpy datetime64). Got dtype {s.dtype}. Cast it, e.g. "
            f"pl.col({name!r}).str.to_datetime().",
            rule=f"{name}_dtype",
        )
    s = s.dt.cast_time_unit("ns").to_physical()
    null = s.is_null().to_numpy()
    return s.fill_null(_NAT).to_numpy().astype(np.int64, copy=False), null


@dataclass(frozen=True)
class _Times:
    ts: np.ndarray  # int64 ns, original row order
    t1: np.ndarray  # int64 ns; a null t1 is replaced by ts
    labelled: np.ndarray  # bool: t1 not null
    unique: np.ndarray  # sorted unique ts
    pos: np.ndarray  # index of each row's ts in ``unique``

    @property
    def n_unique(self) -> int:
        return len(self.unique)

    @cached_property
    def end_by_unique(self) -> np.ndarray:
        """Latest t1 over the rows at each unique timestamp."""
        out = self.unique.copy()
        np.maximum.at(out, self.pos, self.t1)
        return out

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Return ``(start, end)`` of the block of unique timestamps ``[lo, hi)``."""
        return int(self.unique[lo]), int(self.end_by_unique[lo:hi].max())

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Return the boolean row mask of unique timestamps ``[lo, hi)``."""
        return (self.pos >= lo) & (self.pos < hi)

    @classmethod
    def read(cls, owner: str, X: Any, ts: Any, t1: Any) -> _Times:
        if (ts is None) != (t1 is None):
            raise ParameterError(
                f"{owner}.split: pass both 'ts' and 't1' or neither (then X['ts'] and X['t1'] "
                "are read)."
            )
        if ts is None:
            cols = getattr(X, "columns", None)
            missing = [c for c in ("ts", "t1") if cols is None or c not in list(cols)]
            if missing:
                got = type(X).__name__ if cols is None else f"columns {list(cols)[:8]}"
                raise SchemaError(
                    f"{owner}.split needs the label times: X must be a polars or pandas frame with "
                    f"columns 'ts' and 't1' (missing {missing}; got {got}). Build labels with "
                    "workbench.labels (they carry t1), or pass split(X, ts=..., t1=...).",
                    rule="times",
                )
            ts, t1 = X["ts"], X["t1"]
        ts_ns, ts_null = _to_ns(owner, "ts", ts)
        t1_ns, t1_null = _to_ns(owner, "t1", t1)
        n = len(ts_ns)
        if len(t1_ns) != n or (X is not None and ts is not None and _n_rows(X) not in (None, n)):
            raise ParameterError(
                f"{owner}.split: 'ts' ({n}), 't1' ({len(t1_ns)}) and X ({_n_rows(X)}) must have "
                "the same number of rows."
            )
        if ts_null.any():
            raise SchemaError(
                f"{owner}.split: 'ts' has {int(ts_null.sum())} null value(s); every row needs a "
                "time. Drop them first (df.drop_nulls('ts')).",
                rule="ts_null",
                n_rows=int(ts_null.sum()),
            )
        early = ~t1_null & (t1_ns < ts_ns)
        if early.any():
            raise SchemaError(
                f"{owner}.split: {int(early.sum())} row(s) have t1 < ts; t1 is when the label's "
                "outcome is known and can never precede its row. Rebuild the labels.",
                rule="t1_before_ts",
                n_rows=int(early.sum()),
            )
        unique, pos = np.unique(ts_ns, return_inverse=True)
        t1_ns = np.where(t1_null, ts_ns, t1_ns)
        return cls(ts_ns, t1_ns, ~t1_null, unique, pos.reshape(-1))


def _n_rows(X: Any) -> int | None:
    if X is None:
        return None
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape else len(X)


def _need_unique(owner: str, times: _Times, need: int, what: str) -> None:
    if times.n_unique < need:
        raise ParameterError(
            f"{owner}: {what} needs at least {need} unique timestamps; the data has "
            f"{times.n_unique}. Use fewer folds/groups or more data."
        )


def _blocks(n_unique: int, n_blocks: int) -> np.ndarray:
    """Return block boundaries over unique timestamps (sizes differ by at most one, larger first)."""
    sizes = np.full(n_blocks, n_unique // n_blocks)
    sizes[: n_unique % n_blocks] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


# ------------------------------------------------------------------------------------ splitters
class PurgedKFold(_Splitter):
    """K-fold over contiguous time blocks with purging and embargo (AFML ch. 7).

    The unique timestamps are cut into ``n_splits`` contiguous blocks (sizes differ by at most
    one); each block is the test set once, so the test sets partition all rows. The training set is
    every other labelled row, minus rows whose ``[ts, t1]`` meets the test block's
    ``[first ts, latest t1]`` (purge) and rows whose ``ts`` falls within ``embargo`` after it. See
    the module docstring for how times are read and the embargo units.

    Parameters
    ----------
    n_splits : int, default 5
        Number of folds (>= 2).
    embargo : timedelta, int or float, default 0.01
        Embargo after each test block: a time span, a number of unique timestamps, or a fraction
        in ``[0, 1)`` of the unique timestamps (rounded up).

    """

    _params = ("n_splits", "embargo")

    def __init__(self, n_splits: int = 5, *, embargo: Embargo = 0.01) -> None:
        self.n_splits = n_splits
        self.embargo = embargo
        _check_int("PurgedKFold", "n_splits", n_splits, 2)
        self._embargo = _check_embargo("PurgedKFold", embargo)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Return the number of splits (``n_splits``)."""
        return int(self.n_splits)

    def split(
        self, X: Any, y: Any = None, groups: Any = None, *, ts: Any = None, t1: Any = None
    ) -> Iterator[Split]:
        """Yield ``(train_idx, test_idx)`` for each fold, test blocks in time order.

        Parameters
        ----------
        X : polars or pandas DataFrame, or array-like
            The feature table with ``ts`` and ``t1`` columns, or any rows when ``ts``/``t1`` are given.
        y, groups : ignored
            Present for scikit-learn compatibility.
        ts, t1 : array-like of datetimes, optional
            Row times and label end times, used instead of ``X["ts"]``, ``X["t1"]``.

        Yields
        ------
        train_idx, test_idx : numpy.ndarray of int64
            Row positions in ``X``, sorted ascending.
        """
        times = self._times(X, ts, t1)
        _need_unique("PurgedKFold", times, self.n_splits, f"n_splits={self.n_splits}")
        bounds = _blocks(times.n_unique, self.n_splits)
        for lo, hi in itertools.pairwise(bounds):
            test = times.rows(lo, hi)
            train = self._train_mask(times, test, [times.span(lo, hi)])
            yield np.flatnonzero(train), np.flatnonzero(test)


class CombinatorialPurgedKFold(_Splitter):
    """Combinatorial purged cross-validation, CPCV (AFML ch. 12).

    The unique timestamps are cut into ``n_groups`` contiguous groups; every one of the
    ``C(n_groups, n_test_groups)`` combinations of ``n_test_groups`` groups is a test set (in
    ``itertools.combinations`` order), with purging and embargo around each test group separately.
    Each group is tested in ``C(n_groups - 1, n_test_groups - 1)`` splits, so the out-of-sample
    predictions assemble into ``n_paths = n_test_groups / n_groups * C(n_groups, n_test_groups)``
    complete backtest paths: see :meth:`paths` and :meth:`stitch_paths`. Per-path returns of many
    configurations feed :func:`workbench.validation.overfitting.pbo_from_cpcv`.

    Parameters
    ----------
    n_groups : int, default 6
        Number of groups N (>= 2).
    n_test_groups : int, default 2
        Test groups per split k (1 <= k < N).
    embargo : timedelta, int or float, default 0.01
        Embargo after each test group (see :class:`PurgedKFold`).
    """

    _params = ("n_groups", "n_test_groups", "embargo")

    def __init__(
        self, n_groups: int = 6, n_test_groups: int = 2, *, embargo: Embargo = 0.01
    ) -> None:
        self.n_groups = n_groups
        self.n_test_groups = n_test_groups
        self.embargo = embargo
        owner = "CombinatorialPurgedKFold"
        _check_int(owner, "n_groups", n_groups, 2)
        _check_int(owner, "n_test_groups", n_test_groups, 1)
        if n_test_groups >= n_groups:
            raise ParameterError(
                f"The 'n_test_groups' parameter of {owner} must be an int < n_groups={n_groups} "
                f"(some group must be left to train on). Got {n_test_groups!r} instead."
            )
        self._embargo = _check_embargo(owner, embargo)

    @property
    def combinations(self) -> list[tuple[int, ...]]:
        """Return the test groups of each split, in split order."""
        return list(itertools.combinations(range(self.n_groups), self.n_test_groups))

    @property
    def n_paths(self) -> int:
        """Return the number of backtest paths φ = k/N·C(N, k) = C(N-1, k-1)."""
        return math.comb(self.n_groups - 1, self.n_test_groups - 1)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Return the number of splits C(n_groups, n_test_groups)."""
        return math.comb(self.n_groups, self.n_test_groups)

    def paths(self) -> np.ndarray:
        """Return which split supplies each group of each backtest path.

        Returns
        -------
        numpy.ndarray of int, shape (n_paths, n_groups)
            Entry ``[p, g]`` is the index of the split whose test predictions for group ``g`` make
            up path ``p``: the p-th split (in split order) that tests group ``g``. Every
            ``(split, test group)`` pair is used by exactly one path.
        """
        out = np.empty((self.n_paths, self.n_groups), dtype=np.int64)
        for g in range(self.n_groups):
            out[:, g] = [i for i, c in enumerate(self.combinations) if g in c]
        return out

    def split(
        self, X: Any, y: Any = None, groups: Any = None, *, ts: Any = None, t1: Any = None
    ) -> Iterator[Split]:
        """Yield ``(train_idx, test_idx)`` for each combination of test groups.

        Parameters are those of :meth:`PurgedKFold.split`.
        """
        times = self._times(X, ts, t1)
        bounds = self._bounds(times)
        for combo in self.combinations:
            test = np.zeros(len(times.ts), dtype=bool)
            for g in combo:
                test |= times.rows(bounds[g], bounds[g + 1])
            spans = [times.span(bounds[g], bounds[g + 1]) for g in combo]
            yield np.flatnonzero(self._train_mask(times, test, spans)), np.flatnonzero(test)

    def stitch_paths(
        self, X: Any, predictions: Sequence[Any], *, ts: Any = None, t1: Any = None
    ) -> np.ndarray:
        """Assemble out-of-sample predictions of every split into the backtest paths.

        Parameters
        ----------
        X, ts, t1
            The same rows (and times) given to :meth:`split`.
        predictions : sequence of array-like
            One 1-D array per split, in split order, aligned with that split's ``test_idx``.

        Returns
        -------
        numpy.ndarray of float, shape (n_paths, n_rows)
            Row ``p`` holds path ``p``'s prediction for every row of ``X`` (original row order).
        """
        times = self._times(X, ts, t1)
        bounds = self._bounds(times)
        combos = self.combinations
        if len(predictions) != len(combos):
            raise ParameterError(
                f"CombinatorialPurgedKFold.stitch_paths: got {len(predictions)} prediction arrays; "
                f"need one per split ({len(combos)})."
            )
        group = np.searchsorted(bounds, times.pos, side="right") - 1
        preds = []
        for i, (combo, p) in enumerate(zip(combos, predictions, strict=True)):
            arr = np.asarray(p, dtype=np.float64).reshape(-1)
            n_test = int(np.isin(group, combo).sum())
            if len(arr) != n_test:
                raise ParameterError(
                    f"CombinatorialPurgedKFold.stitch_paths: predictions[{i}] has {len(arr)} "
                    f"values; split {i} has {n_test} test rows."
                )
            preds.append(arr)
        out = np.full((self.n_paths, len(times.ts)), np.nan)
        for p, row in enumerate(self.paths()):
            for g, s in enumerate(row):
                test_idx = np.flatnonzero(np.isin(group, combos[s]))
                rows = np.flatnonzero(group == g)
                out[p, rows] = preds[s][np.searchsorted(test_idx, rows)]
        return out

    def _bounds(self, times: _Times) -> np.ndarray:
        owner = "CombinatorialPurgedKFold"
        _need_unique(owner, times, self.n_groups, f"n_groups={self.n_groups}")
        return _blocks(times.n_unique, self.n_groups)


class WalkForward(_Splitter):
    """Walk-forward splits: train on the past, test on the next window, step forward, retrain.

    Sizes count unique timestamps (bars; all symbols at a ``ts`` move together). Split ``i`` tests
    the unique timestamps ``[s_i, s_i + test_size)`` with ``s_i = train_size + i * step``, while a
    full test window fits in the data (a shorter tail is left untested). Its training rows are drawn
    from ``[0, s_i)`` (``expanding=True``) or the ``train_size`` timestamps ``[s_i - train_size,
    s_i)`` (rolling), minus unlabelled rows, rows whose ``t1`` reaches into the test window
    (``t1 >= `` first test ``ts``: purge), and rows within ``embargo`` before the test window.

    No training row ever follows its test window here, so the embargo acts as a gap between the
    training data and the test window (scikit-learn's ``TimeSeriesSplit(gap=...)``): it mimics the
    delay between training and trading and guards against serial correlation across the boundary.

    Parameters
    ----------
    train_size : int
        Unique timestamps before the first test window; the rolling window length (>= 1).
    test_size : int
        Unique timestamps per test window (>= 1).
    step : int, optional
        Unique timestamps between consecutive test starts (retrain frequency); defaults to
        ``test_size`` (adjacent, non-overlapping test windows).
    expanding : bool, default True
        Train on all the past (True) or on a rolling window of ``train_size`` timestamps (False).
    embargo : timedelta, int or float, default 0
        Gap before each test window: a time span, a number of unique timestamps, or a fraction in
        ``[0, 1)`` of all unique timestamps (rounded up).
    """

    _params = ("train_size", "test_size", "step", "expanding", "embargo")

    def __init__(
        self,
        train_size: int,
        test_size: int,
        step: int | None = None,
        *,
        expanding: bool = True,
        embargo: Embargo = 0,
    ) -> None:
        self.train_size = train_size
        self.test_size = test_size
        self.step = step
        self.expanding = expanding
        self.embargo = embargo
        _check_int("WalkForward", "train_size", train_size, 1)
        _check_int("WalkForward", "test_size", test_size, 1)
        if step is not None:
            _check_int("WalkForward", "step", step, 1)
        if not isinstance(expanding, bool | np.bool_):
            raise ParameterError(
                f"The 'expanding' parameter of WalkForward must be a bool. Got {expanding!r} instead."
            )
        self._embargo = _check_embargo("WalkForward", embargo)

    def get_n_splits(
        self, X: Any = None, y: Any = None, groups: Any = None, *, ts: Any = None
    ) -> int:
        """Return the number of splits for ``X`` (it depends on the number of unique timestamps)."""
        if ts is None and "ts" not in list(getattr(X, "columns", [])):
            raise ParameterError(
                "WalkForward.get_n_splits needs X with a 'ts' column (or ts=): the number of "
                "walk-forward splits depends on the number of unique timestamps."
            )
        ts_ns, _ = _to_ns("WalkForward", "ts", X["ts"] if ts is None else ts)
        return len(self._starts(len(np.unique(ts_ns))))

    def split(
        self, X: Any, y: Any = None, groups: Any = None, *, ts: Any = None, t1: Any = None
    ) -> Iterator[Split]:
        """Yield ``(train_idx, test_idx)`` for each walk-forward step, in time order.

        Parameters are those of :meth:`PurgedKFold.split`.
        """
        times = self._times(X, ts, t1)
        starts = self._starts(times.n_unique)
        if not starts:
            raise ParameterError(
                f"WalkForward needs at least train_size + test_size = "
                f"{self.train_size + self.test_size} unique timestamps; the data has "
                f"{times.n_unique}. Reduce train_size or test_size."
            )
        emb = self._embargo
        h = 0 if emb.kind == "time" else emb.bars(times.n_unique)
        for s in starts:
            test = times.rows(s, s + self.test_size)
            first = int(times.unique[s])
            lo = 0 if self.expanding else s - self.train_size
            train = times.labelled & times.rows(lo, s - h) & (times.t1 < first)
            if emb.kind == "time" and emb.value > 0:
                train &= times.ts < first - int(emb.value)
            yield np.flatnonzero(train), np.flatnonzero(test)

    def _starts(self, n_unique: int) -> list[int]:
        step = self.step if self.step is not None else self.test_size
        return list(range(self.train_size, n_unique - self.test_size + 1, step))
