"""Bars the store validated skip the contract check in run_backtest, until the frame changes.

Also the fast pieces of the frame path against their plain counterparts: the symbol runs from the
Arrow string views against ``Series.rle``, the day-change count against numpy.
"""

from __future__ import annotations

import gc

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.backtest import _kernels as K
from workbench.backtest import engine as E
from workbench.backtest import run_backtest
from workbench.data import validated as V
from workbench.data.store import BarStore
from workbench.errors import SchemaError


def _targets(bars: pl.DataFrame) -> pl.DataFrame:
    i = pl.int_range(pl.len()).over("symbol")
    return bars.select("symbol", "ts", target=((i // 7) % 3 - 1).cast(pl.Float64) * 0.3)


@pytest.fixture
def stored(tmp_path, daily_bars) -> pl.DataFrame:
    store = BarStore(tmp_path / "store")
    store.write(daily_bars, "1Day")
    return store.read(None, "1Day")


def test_store_read_is_marked_and_skips_the_contract_check(stored, monkeypatch):
    assert V.is_validated(stored)
    assert max(stored.n_chunks("all")) == 1  # one chunk a column: an O(columns) mark
    tg = _targets(stored)
    plain = run_backtest(stored.clone(), tg)  # a clone is a new, unmarked frame: checked
    assert not V.is_validated(pl.DataFrame(stored.to_dict()))

    def boom(*a, **k):
        raise AssertionError("the contract check ran on a marked frame")

    monkeypatch.setattr(E, "_conformed_runs", boom)
    monkeypatch.setattr(E, "validate_bars", boom)
    marked = run_backtest(stored, tg)
    assert marked.equity.equals(plain.equity)
    assert marked.fills.equals(plain.fills)
    assert marked.stats == plain.stats


def test_run_backtest_marks_the_frame_it_checked(daily_bars, monkeypatch):
    bars = daily_bars.clone()
    assert not V.is_validated(bars)
    first = run_backtest(bars, _targets(bars))
    assert V.is_validated(bars)
    monkeypatch.setattr(E, "_conformed_runs", lambda *a: pytest.fail("checked twice"))
    again = run_backtest(bars, _targets(bars))
    assert again.equity.equals(first.equity)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.__setitem__((3, "close"), -1.0),
        lambda d: d.__setitem__((3, "symbol"), ""),
        lambda d: d.replace_column(5, pl.Series("close", np.full(d.height, -2.0))),
        lambda d: d.extend(d.tail(1)),
        lambda d: d.vstack(d.tail(1), in_place=True),
    ],
    ids=["setitem price", "setitem symbol", "replace_column", "extend", "vstack in place"],
)
def test_an_edited_frame_loses_its_mark_and_is_checked(stored, edit):
    frame = stored.clone()
    V.mark_validated(frame)
    assert V.is_validated(frame)
    edit(frame)
    assert not V.is_validated(frame)
    with pytest.raises(SchemaError):  # the contract's own error, not a silent backtest
        run_backtest(frame, _targets(frame))


def test_renamed_or_derived_frames_are_not_marked(stored):
    frame = stored.clone()
    V.mark_validated(frame)
    derived = [
        frame.with_columns(close=pl.col("close") * -1),
        frame.filter(pl.col("symbol") != "AAA"),
        frame.sort("ts"),
        pl.concat([frame, frame]),
    ]
    assert not any(V.is_validated(d) for d in derived)
    frame.columns = [c if c != "open" else "o" for c in frame.columns]
    assert not V.is_validated(frame)


def test_many_chunk_frames_give_the_same_backtest(daily_bars):
    parts = [daily_bars.slice(i, 37) for i in range(0, daily_bars.height, 37)]
    chunked = pl.concat(parts, rechunk=False)
    assert max(chunked.n_chunks("all")) > 1
    tg = _targets(daily_bars)
    a = run_backtest(daily_bars, tg)
    b = run_backtest(chunked, tg)
    V.mark_validated(chunked)
    c = run_backtest(chunked, _targets(chunked))
    assert a.equity.equals(b.equity) and a.equity.equals(c.equity)
    assert a.fills.equals(b.fills) and a.fills.equals(c.fills)


def test_the_mark_dies_with_the_frame(daily_bars):
    frame = daily_bars.clone()
    V.mark_validated(frame)
    key = id(frame)
    assert key in V._MARKS
    del frame
    gc.collect()
    assert key not in V._MARKS


def test_same_buffers_only_for_shared_memory(daily_bars):
    a = daily_bars["symbol"]
    assert V.same_buffers(a, daily_bars.select("symbol", "ts")["symbol"])
    copy = pl.Series(a.to_list())
    assert a.equals(copy) and not V.same_buffers(a, copy)
    assert not V.same_buffers(a, a.slice(1))


SYMS = ["A", "AA", "B", "LONG_SYMBOL_NAME_1", "LONG_SYMBOL_NAME_2", "ZZZZZZZZZZZZ"]


def _rle(s: pl.Series) -> tuple[list[str], list[int]]:
    r = s.rle()
    return r.struct.field("value").to_list(), r.struct.field("len").to_list()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(SYMS), st.integers(1, 4)), min_size=1, max_size=12),
    st.booleans(),
    st.integers(0, 3),
)
def test_symbol_runs_match_rle(runs, sort, cut):
    if sort:
        runs = sorted(runs)
    values = [s for s, n in runs for _ in range(n)]
    s = pl.Series("symbol", values)
    for series in (s, s.slice(min(cut, len(values) - 1)), pl.concat([s, s], rechunk=False)):
        symbols, lengths = E._symbol_runs(series)
        assert (symbols, list(lengths)) == _rle(series)


def test_long_symbols_stored_twice_fall_back_to_rle():
    s = pl.concat([pl.Series(["LONG_SYMBOL_NAME_1"] * 3), pl.Series(["LONG_SYMBOL_NAME_1"] * 2)])
    s = s.rechunk()  # one chunk holding the long string in two places
    symbols, lengths = E._symbol_runs(s)
    assert (symbols, list(lengths)) == (["LONG_SYMBOL_NAME_1"], [5])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-(10**13), 10**13), max_size=60))
def test_day_changes_on_unsorted_times(ts):
    x = np.array(ts, dtype=np.int64)
    days = (x - 14_400_000_000) // 86_400_000_000
    assert K.day_changes_nb(x, 14_400_000_000, 86_400_000_000) == np.count_nonzero(np.diff(days))


def test_targets_with_equal_but_unshared_keys_take_the_same_path(daily_bars):
    tg = _targets(daily_bars)
    rebuilt = pl.DataFrame(tg.to_dict(as_series=False), schema=tg.schema)
    assert not V.same_buffers(rebuilt["symbol"], daily_bars["symbol"])
    a = run_backtest(daily_bars, tg)
    b = run_backtest(daily_bars, rebuilt)
    assert a.equity.equals(b.equity)
    bad = tg.with_columns(
        target=pl.when(pl.int_range(pl.len()) == 4).then(np.nan).otherwise("target")
    )
    with pytest.raises(SchemaError, match="NaN/inf target"):
        run_backtest(daily_bars, bad)
