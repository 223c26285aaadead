"""Splitters: hand cases, leakage properties over random panels, sklearn compatibility, errors."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

from workbench.errors import ParameterError, SchemaError
from workbench.validation.cv import CombinatorialPurgedKFold, PurgedKFold, WalkForward

T0 = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
MIN = timedelta(minutes=1)


def panel(
    n_ts: int, horizon: int = 2, symbols: str = "AB", unlabelled_tail: int = 2
) -> pl.DataFrame:
    """Rows (symbol, ts) for minutes 0..n_ts-1, t1 = ts + horizon minutes, null t1 at the end."""
    rows = [
        (s, T0 + i * MIN, None if i >= n_ts - unlabelled_tail else T0 + (i + horizon) * MIN)
        for s in symbols
        for i in range(n_ts)
    ]
    return pl.DataFrame(rows, schema=["symbol", "ts", "t1"], orient="row").with_columns(
        pl.col("ts", "t1").dt.cast_time_unit("us")
    )


def minutes(df: pl.DataFrame, idx: np.ndarray) -> list[int]:
    """Return the sorted distinct minute offsets of rows ``idx``."""
    return sorted({int((t - T0) / MIN) for t in df["ts"].gather(idx).to_list()})


# ----------------------------------------------------------------------------------- hand cases
def test_purged_kfold_hand_case() -> None:
    df = panel(20)  # 2 symbols sorted by (symbol, ts): rows are not in time order
    folds = list(PurgedKFold(4, embargo=MIN).split(df))
    assert [minutes(df, te) for _, te in folds] == [list(range(5 * k, 5 * k + 5)) for k in range(4)]
    # block 0-4 ends at t1 = 6: purge 5, 6, embargo 7; block 5-9 starts at 5: purge t1 >= 5 (ts >= 3)
    assert [minutes(df, tr) for tr, _ in folds] == [
        list(range(8, 18)),
        [0, 1, 2, *range(13, 18)],
        list(range(8)),
        list(range(13)),
    ]
    for tr, te in folds:  # all symbols of a timestamp travel together
        assert len(tr) % 2 == 0 and len(te) % 2 == 0


def test_embargo_units_agree() -> None:
    df = panel(40, horizon=0, unlabelled_tail=0)  # 40 unique timestamps, 1 minute apart
    by_time = list(PurgedKFold(4, embargo=3 * MIN).split(df))
    by_bars = list(PurgedKFold(4, embargo=3).split(df))
    by_frac = list(PurgedKFold(4, embargo=0.05).split(df))  # ceil(0.05 * 40) = 2 bars
    by_np = list(PurgedKFold(4, embargo=np.timedelta64(3, "m")).split(df))
    for a, b, c in zip(by_time, by_bars, by_np, strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0])
    assert minutes(df, by_time[0][0]) == list(range(13, 40))
    assert minutes(df, by_frac[0][0]) == list(range(12, 40))
    assert minutes(df, next(PurgedKFold(4, embargo=0).split(df))[0]) == list(range(10, 40))


def test_cpcv_hand_case_and_paths() -> None:
    df = panel(20)
    cv = CombinatorialPurgedKFold(4, 2, embargo=1)
    splits = list(cv.split(df))
    assert cv.get_n_splits() == len(splits) == 6 and cv.n_paths == 3
    assert cv.combinations[1] == (0, 2)
    assert minutes(df, splits[0][1]) == list(range(10))
    assert minutes(df, splits[0][0]) == list(range(13, 18))  # purge 10-11, embargo 12
    assert len(splits[1][0]) == 0  # groups 0 and 2 tested: everything in between is purged
    assert cv.paths().tolist() == [[0, 0, 1, 2], [1, 3, 3, 4], [2, 4, 5, 5]]
    stitched = cv.stitch_paths(df, [te.astype(float) for _, te in splits])
    assert stitched.shape == (3, df.height)
    assert np.array_equal(stitched, np.tile(np.arange(df.height, dtype=float), (3, 1)))


def test_walk_forward_hand_case() -> None:
    df = panel(20)
    rolling = list(WalkForward(5, 3, expanding=False, embargo=1).split(df))
    assert WalkForward(5, 3).get_n_splits(df) == len(rolling) == 5
    assert [minutes(df, te) for _, te in rolling][:2] == [[5, 6, 7], [8, 9, 10]]
    # window 0-4, gap of one bar (4), purge t1 >= 5 (ts >= 3)
    assert [minutes(df, tr) for tr, _ in rolling][:2] == [[0, 1, 2], [3, 4, 5]]
    expanding = list(WalkForward(5, 3, step=6).split(df))
    assert [minutes(df, te) for _, te in expanding] == [[5, 6, 7], [11, 12, 13], [17, 18, 19]]
    assert [minutes(df, tr) for tr, _ in expanding] == [[0, 1, 2], list(range(9)), list(range(15))]
    by_time = list(WalkForward(5, 3, embargo=2 * MIN).split(df))
    assert minutes(df, by_time[1][0]) == list(range(6))  # ts < 8 - 2 minutes


def test_row_order_and_inputs_do_not_matter() -> None:
    df = panel(30, horizon=3)
    perm = np.random.default_rng(0).permutation(df.height)
    shuffled = df[perm]
    before = shuffled.clone()
    for cv in (PurgedKFold(3, embargo=2), CombinatorialPurgedKFold(5, 2), WalkForward(8, 4)):
        ref = [(set(tr), set(te)) for tr, te in cv.split(df)]
        got = [(set(perm[tr]), set(perm[te])) for tr, te in cv.split(shuffled)]
        assert got == ref
        pdf = shuffled.to_pandas()
        via_pandas = list(cv.split(pdf))
        via_numpy = list(
            cv.split(
                np.zeros((df.height, 2)),
                ts=pdf["ts"].to_numpy(dtype="datetime64[ns]"),
                t1=pdf["t1"].dt.tz_localize(None).to_numpy(dtype="datetime64[ns]"),
            )
        )
        for (a, b), (c, d), (e, f) in zip(cv.split(shuffled), via_pandas, via_numpy, strict=True):
            assert np.array_equal(a, c) and np.array_equal(b, d)
            assert np.array_equal(a, e) and np.array_equal(b, f)
            assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    assert shuffled.equals(before)


# ----------------------------------------------------------------------------------- properties
@st.composite
def tables(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random panel: irregular times shared by 1-3 symbols, random horizons, some null t1, shuffled."""
    n_ts = draw(st.integers(4, 24))
    n_sym = draw(st.integers(1, 3))
    gaps = draw(st.lists(st.integers(1, 4), min_size=n_ts, max_size=n_ts))
    stamps = np.datetime64("2024-03-05T14:30", "ns") + np.cumsum(gaps).astype(
        "timedelta64[m]"
    ).astype("timedelta64[ns]")
    present = draw(
        st.lists(
            st.lists(st.booleans(), min_size=n_sym, max_size=n_sym).filter(any),
            min_size=n_ts,
            max_size=n_ts,
        )
    )
    ts = np.array([stamps[i] for i in range(n_ts) for s in range(n_sym) if present[i][s]])
    horizons = draw(st.lists(st.none() | st.integers(0, 10), min_size=len(ts), max_size=len(ts)))
    t1 = np.array(
        [
            np.datetime64("NaT", "ns") if h is None else t + np.timedelta64(h, "m")
            for t, h in zip(ts, horizons, strict=True)
        ],
        dtype="datetime64[ns]",
    )
    order = np.array(draw(st.permutations(range(len(ts)))), dtype=np.int64)
    return ts[order], t1[order], np.zeros((len(ts), 1))


embargoes = (
    st.integers(0, 4) | st.floats(0.0, 0.3) | st.integers(0, 6).map(lambda m: timedelta(minutes=m))
)


def embargo_end(unique: np.ndarray, end: np.datetime64, embargo: object) -> np.datetime64:
    """Oracle: the last embargoed instant after a test block ending at ``end``."""
    if isinstance(embargo, timedelta):
        return end + np.timedelta64(embargo)
    h = embargo if isinstance(embargo, int) else math.ceil(embargo * len(unique))
    after = unique[unique > end][:h]
    return after[-1] if len(after) else end


def check_no_leak(ts, t1, train, test, blocks, unique, embargo) -> None:
    """Shared leakage assertions; ``blocks`` lists the contiguous test blocks (row masks)."""
    t1f = np.where(np.isnat(t1), ts, t1)
    assert not np.isnat(t1[train]).any(), "unlabelled rows never train"
    assert not np.intersect1d(train, test).size
    # no training interval [ts, t1] meets any test interval
    a, b = ts[train][:, None], t1[train][:, None]
    assert not ((a <= t1f[test][None, :]) & (b >= ts[test][None, :])).any()
    for block in blocks:
        end = t1f[block].max()
        emb_end = embargo_end(unique, end, embargo)
        last_ts = ts[block].max()
        assert not ((ts[train] > last_ts) & (ts[train] <= emb_end)).any()


def oracle_train(ts, t1, test, blocks, unique, embargo) -> np.ndarray:
    """Oracle: every labelled non-test row clear of each block's span and embargo."""
    t1f = np.where(np.isnat(t1), ts, t1)
    keep = ~np.isnat(t1)
    keep[test] = False
    for block in blocks:
        start, end = ts[block].min(), t1f[block].max()
        keep &= ~((ts <= end) & (t1f >= start))
        keep &= ~((ts > end) & (ts <= embargo_end(unique, end, embargo)))
    return np.flatnonzero(keep)


def contiguous_block(ts: np.ndarray, unique: np.ndarray, test: np.ndarray) -> bool:
    """Return whether ``test`` is exactly the rows of a contiguous run of unique timestamps."""
    pos = np.searchsorted(unique, ts)
    lo, hi = pos[test].min(), pos[test].max()
    return set(test) == set(np.flatnonzero((pos >= lo) & (pos <= hi)))


@settings(max_examples=80, deadline=None)
@given(tables(), st.integers(2, 6), embargoes)
def test_purged_kfold_properties(data, n_splits, embargo) -> None:
    ts, t1, X = data
    unique = np.unique(ts)
    n_splits = min(n_splits, len(unique))
    cv = PurgedKFold(n_splits, embargo=embargo)
    splits = list(cv.split(X, ts=ts, t1=t1))
    assert len(splits) == cv.get_n_splits() == n_splits
    tests = np.concatenate([te for _, te in splits])
    assert np.array_equal(np.sort(tests), np.arange(len(ts)))  # test sets partition all rows
    firsts = [ts[te].min() for _, te in splits]
    assert firsts == sorted(firsts)
    for train, test in splits:
        assert contiguous_block(ts, unique, test)
        mask = np.zeros(len(ts), dtype=bool)
        mask[test] = True
        check_no_leak(ts, t1, train, test, [mask], unique, embargo)
        assert np.array_equal(train, oracle_train(ts, t1, test, [mask], unique, embargo))


@settings(max_examples=60, deadline=None)
@given(tables(), st.integers(2, 6), st.integers(1, 5), embargoes)
def test_cpcv_properties(data, n_groups, k, embargo) -> None:
    ts, t1, X = data
    unique = np.unique(ts)
    n_groups = min(n_groups, len(unique))
    k = min(k, n_groups - 1)
    cv = CombinatorialPurgedKFold(n_groups, k, embargo=embargo)
    splits = list(cv.split(X, ts=ts, t1=t1))
    assert len(splits) == cv.get_n_splits() == math.comb(n_groups, k)
    # the groups are PurgedKFold's test blocks
    groups = [te for _, te in PurgedKFold(n_groups).split(X, ts=ts, t1=t1)]
    counts: Counter[int] = Counter()
    for (train, test), combo in zip(splits, cv.combinations, strict=True):
        assert np.array_equal(test, np.sort(np.concatenate([groups[g] for g in combo])))
        counts.update(combo)
        blocks = []
        for g in combo:
            mask = np.zeros(len(ts), dtype=bool)
            mask[groups[g]] = True
            blocks.append(mask)
        check_no_leak(ts, t1, train, test, blocks, unique, embargo)
        assert np.array_equal(train, oracle_train(ts, t1, test, blocks, unique, embargo))
    assert counts == dict.fromkeys(range(n_groups), math.comb(n_groups - 1, k - 1))
    paths = cv.paths()
    assert (
        paths.shape == (cv.n_paths, n_groups) == (k * math.comb(n_groups, k) // n_groups, n_groups)
    )
    used = {(int(s), g) for row in paths for g, s in enumerate(row)}
    assert len(used) == paths.size and all(g in cv.combinations[s] for s, g in used)
    stitched = cv.stitch_paths(X, [te * 1.0 for _, te in splits], ts=ts, t1=t1)
    assert np.array_equal(stitched, np.tile(np.arange(len(ts), dtype=float), (cv.n_paths, 1)))


@settings(max_examples=80, deadline=None)
@given(
    tables(),
    st.integers(1, 8),
    st.integers(1, 6),
    st.none() | st.integers(1, 5),
    st.booleans(),
    embargoes,
)
def test_walk_forward_properties(data, train_size, test_size, step, expanding, embargo) -> None:
    ts, t1, X = data
    unique = np.unique(ts)
    cv = WalkForward(train_size, test_size, step, expanding=expanding, embargo=embargo)
    if len(unique) < train_size + test_size:
        with pytest.raises(ParameterError, match="at least train_size"):
            list(cv.split(X, ts=ts, t1=t1))
        return
    splits = list(cv.split(X, ts=ts, t1=t1))
    assert len(splits) == cv.get_n_splits(X, ts=ts)
    pos = np.searchsorted(unique, ts)
    starts = []
    if isinstance(embargo, int):
        n_gap = embargo
    elif isinstance(embargo, float):
        n_gap = math.ceil(embargo * len(unique))
    for train, test in splits:
        assert contiguous_block(ts, unique, test)
        assert len(np.unique(ts[test])) == test_size
        first = ts[test].min()
        starts.append(pos[test].min())
        if len(train):
            assert ts[train].max() < first  # training data precede the test window
        check_no_leak(ts, t1, train, test, [], unique, embargo)
        t1f = np.where(np.isnat(t1), ts, t1)
        assert (t1f[train] < first).all()  # purge: no label reaches into the test window
        if not expanding:
            assert (pos[train] >= starts[-1] - train_size).all()
        if isinstance(embargo, timedelta):
            assert (ts[train] < first - np.timedelta64(embargo)).all()
        else:
            assert (pos[train] < starts[-1] - n_gap).all()
    assert starts == list(
        range(train_size, train_size + len(splits) * (step or test_size), step or test_size)
    )


# --------------------------------------------------------------------------------- scikit-learn
def sk_data(n_ts: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    df = panel(n_ts, horizon=2, unlabelled_tail=0).to_pandas()
    df["x"] = rng.normal(size=len(df))
    df["label"] = (df["x"] + 0.3 * rng.normal(size=len(df)) > 0).astype(int)
    return df


def test_cross_val_score_with_the_splitter() -> None:
    df = sk_data()
    model = make_pipeline(
        make_column_transformer(("drop", ["symbol", "ts", "t1"]), remainder="passthrough"),
        LogisticRegression(),
    )
    X, y = df[["symbol", "ts", "t1", "x"]], df["label"]
    for cv in (PurgedKFold(4), CombinatorialPurgedKFold(4, 2), WalkForward(20, 10)):
        scores = cross_val_score(model, X, y, cv=cv)
        assert len(scores) == cv.get_n_splits(X) and (scores > 0.7).all()
    # a bare feature matrix with precomputed splits
    splits = list(PurgedKFold(3, embargo=0.02).split(df))
    scores = cross_val_score(LogisticRegression(), df[["x"]].to_numpy(), y.to_numpy(), cv=splits)
    assert len(scores) == 3
    search = GridSearchCV(model, {"logisticregression__C": [0.1, 1.0]}, cv=PurgedKFold(3))
    assert search.fit(X, y).best_score_ > 0.7


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: PurgedKFold(1),
            "The 'n_splits' parameter of PurgedKFold must be an int >= 2. Got 1 instead.",
        ),
        (
            lambda: PurgedKFold(True),
            "The 'n_splits' parameter of PurgedKFold must be an int >= 2. Got True instead.",
        ),
        (lambda: PurgedKFold(3, embargo=1.5), "'embargo' parameter of PurgedKFold must be"),
        (lambda: PurgedKFold(3, embargo=-1), "Got -1 instead"),
        (lambda: PurgedKFold(3, embargo=-MIN), "timedelta >= 0"),
        (lambda: PurgedKFold(3, embargo="1h"), "Got '1h' instead"),
        (
            lambda: CombinatorialPurgedKFold(4, 4),
            "The 'n_test_groups' parameter of CombinatorialPurgedKFold must be an int < n_groups=4",
        ),
        (lambda: CombinatorialPurgedKFold(4, 0), "'n_test_groups' parameter"),
        (
            lambda: WalkForward(0, 5),
            "The 'train_size' parameter of WalkForward must be an int >= 1",
        ),
        (lambda: WalkForward(5, 5, step=0), "'step' parameter of WalkForward"),
        (lambda: WalkForward(5, 5, expanding="yes"), "'expanding' parameter of WalkForward"),
    ],
)
def test_bad_parameters(make, message) -> None:
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_bad_inputs_name_the_fix() -> None:
    df = panel(10)
    with pytest.raises(SchemaError, match=r"columns 'ts' and 't1' \(missing \['t1'\]"):
        next(PurgedKFold(2).split(df.drop("t1")))
    with pytest.raises(SchemaError, match="got ndarray"):
        next(PurgedKFold(2).split(np.zeros((10, 2))))
    bad = df.with_columns(t1=pl.col("ts") - MIN)
    with pytest.raises(SchemaError, match="20 row\\(s\\) have t1 < ts"):
        next(PurgedKFold(2).split(bad))
    with pytest.raises(SchemaError, match="'ts' has 1 null"):
        next(
            PurgedKFold(2).split(
                df.with_columns(ts=pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise("ts"))
            )
        )
    with pytest.raises(SchemaError, match="must hold datetimes"):
        next(PurgedKFold(2).split(df.with_columns(ts=pl.int_range(pl.len()))))
    with pytest.raises(ParameterError, match="needs at least 11 unique timestamps"):
        next(PurgedKFold(11).split(df))
    with pytest.raises(ParameterError, match="pass both 'ts' and 't1'"):
        next(PurgedKFold(2).split(df, ts=df["ts"]))
    with pytest.raises(ParameterError, match="same number of rows"):
        next(PurgedKFold(2).split(np.zeros((3, 1)), ts=df["ts"], t1=df["t1"]))
    with pytest.raises(ParameterError, match="get_n_splits needs X"):
        WalkForward(3, 2).get_n_splits()
    with pytest.raises(ParameterError, match="get_n_splits needs X with a 'ts' column"):
        WalkForward(3, 2).get_n_splits(np.zeros((3, 1)))
    with pytest.raises(ParameterError, match="one per split"):
        CombinatorialPurgedKFold(4, 2).stitch_paths(df, [np.zeros(3)])


def test_repr() -> None:
    assert repr(PurgedKFold(3, embargo=2)) == "PurgedKFold(n_splits=3, embargo=2)"
    assert repr(WalkForward(10, 5)) == (
        "WalkForward(train_size=10, test_size=5, step=None, expanding=True, embargo=0)"
    )
