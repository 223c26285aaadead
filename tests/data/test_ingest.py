"""Ingest: chunk planning, idempotence, resume after a crash, provenance-keyed ledger."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.data.ingest import ingest, plan_chunks, to_window
from workbench.data.store import BarStore
from workbench.errors import SourceError

from .conftest import CountingSource

SYMS = [f"S{i:02d}" for i in range(5)]


def run(store: BarStore, src: CountingSource, **kw: object):
    args = {"chunk_days": 10, "chunk_symbols": 2, "progress": False}
    args.update(kw)
    return ingest(src, store, SYMS, "1Day", date(2024, 1, 1), date(2024, 2, 29), **args)


def test_to_window_end_date_is_inclusive() -> None:
    lo, hi = to_window(date(2024, 1, 2), date(2024, 1, 31))
    assert lo == datetime(2024, 1, 2, tzinfo=UTC) and hi == datetime(2024, 2, 1, tzinfo=UTC)
    with pytest.raises(SourceError, match="empty ingest window"):
        to_window(date(2024, 2, 1), date(2024, 1, 1))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 400),
    st.integers(1, 200),
    st.integers(1, 40),
    st.integers(1, 7),
    st.lists(st.sampled_from("ABCDEFGHIJ"), min_size=1, max_size=10),
)
def test_chunks_tile_the_window_exactly(
    off: int, span: int, days: int, per: int, syms: list[str]
) -> None:
    lo = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(days=off)
    hi = lo + timedelta(days=span)
    chunks = plan_chunks(syms, lo, hi, chunk_days=days, chunk_symbols=per)
    uniq = list(dict.fromkeys(syms))
    for s in uniq:
        windows = sorted((c.start, c.end) for c in chunks if s in c.symbols)
        assert windows[0][0] == lo and windows[-1][1] == hi
        assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))  # no gap, no overlap
    assert all(len(c.symbols) <= per for c in chunks)


def test_ingest_writes_everything_and_rerun_fetches_nothing(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    src = CountingSource()
    rep = run(store, src)
    assert rep.fetched == len(src.calls) > 0 and rep.skipped == 0
    first = store.read(SYMS, "1Day")
    assert first.height == 5 * 41  # one bar per session, Jan 2 .. Feb 29 (21 + 20)
    src2 = CountingSource()
    rep2 = run(store, src2)
    assert src2.calls == [] and rep2.fetched == 0 and rep2.skipped == rep.fetched
    assert store.read(SYMS, "1Day").equals(first)


def test_crash_mid_ingest_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    clean = BarStore(tmp_path / "clean")
    run(clean, CountingSource())
    crashed = BarStore(tmp_path / "crashed")
    src = CountingSource(fail_on_call=7)
    with pytest.raises(ConnectionError):
        run(crashed, src)
    resumed = CountingSource()
    run(crashed, resumed)
    n_chunks = len(
        plan_chunks(
            SYMS, *to_window(date(2024, 1, 1), date(2024, 2, 29)), chunk_days=10, chunk_symbols=2
        )
    )
    assert (
        len(resumed.calls) == n_chunks - 6
    )  # the six chunks done before the crash are not fetched again
    assert crashed.read(SYMS, "1Day").equals(clean.read(SYMS, "1Day"))


def test_deleted_partition_is_fetched_again(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    run(store, CountingSource())
    for f in (tmp_path / "timeframe=1Day" / "symbol=S03").glob("2024-02.parquet"):
        f.unlink()
    src = CountingSource()
    run(store, src)
    assert {s for call in src.calls for s in call[0]} == {"S03"}
    assert store.read(["S03"], "1Day").height == 41


def test_different_provenance_refetches(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    run(store, CountingSource(version="1"))
    src = CountingSource(version="2")
    run(store, src)
    assert len(src.calls) > 0


def test_recent_chunks_are_not_marked_complete(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    now = datetime(2024, 2, 20, tzinfo=UTC)
    run(store, CountingSource(), now=now)
    src = CountingSource()
    run(store, src, now=now)
    assert src.calls and all(end > now - timedelta(hours=1) for _, _, end in src.calls)


def test_source_returning_bars_outside_the_chunk_is_refused(tmp_path: Path) -> None:
    class Leaky(CountingSource):
        def fetch(self, symbols, timeframe, start, end):
            return super().fetch(symbols, timeframe, start - timedelta(days=2), end)

    with pytest.raises(SourceError, match="outside the requested chunk"):
        run(BarStore(tmp_path), Leaky())


def test_no_symbols_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no symbols"):
        ingest(
            CountingSource(),
            BarStore(tmp_path),
            [],
            "1Day",
            "2024-01-01",
            "2024-01-02",
            progress=False,
        )


def test_report_frame(tmp_path: Path) -> None:
    rep = run(BarStore(tmp_path), CountingSource())
    df = rep.frame
    assert set(df.columns) >= {
        "symbols",
        "start",
        "end",
        "status",
        "rows",
        "inserted",
        "updated",
        "seconds",
    }
    assert df["rows"].sum() == 205 and (df["status"] == "fetched").all()
    assert isinstance(rep.frame, pl.DataFrame)
