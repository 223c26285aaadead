"""Ingest: fetch bars from a source in chunks, validate, upsert into the store, resume on re-run.

Before any fetch, ingest checks that the store can be written, opens (and checks) the chunk ledger
and verifies every stored partition in the window. A bad partition whose recorded source is this
source is re-fetched whole first (status ``repaired`` in the report), so a chunk is never counted
as done while its partition fails verification; one written by another source is refused with the
fix (``wb store repair``). Fetched bars must sit on their timeframe's grid and inside the
calendar's sessions (:func:`~workbench.data.calendar.check_bar_times`) before they are written.
Each chunk is recorded in the symbol's manifest with its bars and then in
the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl
from tqdm.auto import tqdm

from workbench.data.calendar import DEFAULT_CALENDAR, check_bar_times
from workbench.data.integrity import CorruptPartitionError, Problem
from workbench.data.ledger import LEDGER_NAME, ChunkLedger, provenance_key
from workbench.data.sources.base import Source
from workbench.data.store import BarStore
from workbench.data.timeframe import Timeframe
from workbench.errors import SourceError, StoreError

_GRID_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_EXTENDED_BY_DEFAULT = frozenset({"alpaca"})  # Alpaca's historical stock bars include pre/post


@dataclass(frozen=True, slots=True)
class Chunk:
    """A unit of ingest work: a batch of symbols over a half-open UTC window."""

    symbols: tuple[str, ...]
    start: datetime
    end: datetime


@dataclass
class IngestReport:
    """Outcome of one ingest: a row per chunk and the totals."""

    chunks: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.chunks) if self.chunks else pl.DataFrame()

    def total(self, key: str) -> int:
        return int(sum(c.get(key, 0) for c in self.chunks))

    @property
    def fetched(self) -> int:
        return sum(1 for c in self.chunks if c["status"] == "fetched")

    @property
    def skipped(self) -> int:
        return sum(1 for c in self.chunks if c["status"] == "skipped")


def to_window(
    start: date | datetime | str, end: date | datetime | str
) -> tuple[datetime, datetime]:
    """Turn user bounds into a half-open UTC window.

    Dates are sessions and ``end`` is inclusive: ``(2024-01-02, 2024-01-31)`` becomes
    ``[2024-01-02T00:00Z, 2024-02-01T00:00Z)``. Datetimes are taken as given (naive means UTC).
    """

    def conv(v: date | datetime | str, is_end: bool) -> datetime:
        if isinstance(v, str):
            v = datetime.fromisoformat(v) if "T" in v or " " in v else date.fromisoformat(v)
        if isinstance(v, datetime):
            return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        d = datetime(v.year, v.month, v.day, tzinfo=UTC)
        return d + timedelta(days=1) if is_end else d

    lo, hi = conv(start, False), conv(end, True)
    if hi <= lo:
        raise SourceError(
            f"empty ingest window: start {lo.isoformat()} is not before end {hi.isoformat()}. "
            "Fix: pass an end on or after the start."
        )
    return lo, hi


def plan_chunks(
    symbols: Sequence[str], start: datetime, end: datetime, *, chunk_days: int, chunk_symbols: int
) -> list[Chunk]:
    """Split work into symbol batches x time windows on a fixed grid of ``chunk_days`` days.

    Windows are aligned to a fixed epoch so that runs over overlapping periods share chunk keys.
    """
    if chunk_days < 1 or chunk_symbols < 1:
        raise SourceError(
            f"chunk_days and chunk_symbols must be >= 1; got {chunk_days}, {chunk_symbols}."
        )
    step = timedelta(days=chunk_days)
    k = (start - _GRID_EPOCH) // step
    edges = []
    t = _GRID_EPOCH + k * step
    while t < end:
        edges.append((max(t, start), min(t + step, end)))
        t += step
    syms = list(dict.fromkeys(symbols))
    batches = [tuple(syms[i : i + chunk_symbols]) for i in range(0, len(syms), chunk_symbols)]
    return [Chunk(b, lo, hi) for lo, hi in edges for b in batches]


def source_key(source: Source) -> str:
    """Return a short id of a source's provenance (different data, different key)."""
    return provenance_key(source.provenance())


def _repair_in_window(
    source: Source,
    store: BarStore,
    ledger: ChunkLedger | None,
    tf: Timeframe,
    symbols: Sequence[str],
    lo: datetime,
    hi: datetime,
) -> list[dict]:
    """Re-fetch the bad partitions in the window from ``source`` (refuse those of another source)."""
    from workbench.data import repair

    problems = store.verify(symbols, tf, lo, hi).problems
    if not problems:
        return []
    key = source_key(source)
    foreign: list[Problem] = []
    todo: dict[str, dict[str, tuple[datetime, datetime]]] = {}
    for p in problems:
        periods = [p.period] if p.period else repair.periods_to_fix(store, p)
        for period in periods:
            prov = repair.recorded_provenance(store, tf, p.symbol, period, ledger)
            if prov and provenance_key(prov) != key:
                foreign.append(p)
                continue
            window = repair.repair_window(store, tf, p.symbol, period, ledger)
            todo.setdefault(p.symbol, {})[period] = window
    if foreign:
        exc = CorruptPartitionError(foreign)
        raise StoreError(
            f"{exc} These partitions were written by another source than {source.name!r}, so "
            f"ingest does not overwrite them. Fix: run `wb store repair --store {store.root}` "
            "(re-fetches them from their recorded source) and ingest again."
        )
    rows = []
    for symbol, windows in todo.items():
        t0 = time.perf_counter()
        got = repair.refetch(store, source, tf, symbol, windows)
        for period, (a, b) in sorted(windows.items()):
            rows.append(
                {
                    "symbols": symbol,
                    "start": a,
                    "end": b,
                    "status": "repaired",
                    "rows": got[period],
                    "inserted": got[period],
                    "updated": 0,
                    "seconds": round(time.perf_counter() - t0, 4),
                }
            )
    return rows


def _stored_rows(store: BarStore, symbol: str, tf: Timeframe, lo: datetime, hi: datetime) -> int:
    return store.scan([symbol], tf, lo, hi).select(pl.len()).collect(engine="in-memory").item()


def ingest(
    source: Source,
    store: BarStore,
    symbols: Sequence[str],
    timeframe: str | Timeframe,
    start: date | datetime | str,
    end: date | datetime | str,
    *,
    chunk_days: int = 30,
    chunk_symbols: int = 20,
    progress: bool = True,
    settle: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    calendar: str | None = None,
    extended_hours: bool | None = None,
) -> IngestReport:
    """Fetch bars chunk by chunk, validate, upsert into the store and record each chunk.

    A re-run skips chunks the ledger records as complete whose bars are still in the store, so it
    fetches only what the store lacks. A chunk whose window ends less than ``settle`` before
    ``now`` is written but not marked complete (more bars may still arrive).

    Parameters
    ----------
    source : Source
    store : BarStore
    symbols : sequence of str
    timeframe : str or Timeframe
    start, end : date, datetime or ISO string
        Dates are inclusive sessions; datetimes a half-open UTC window.
    chunk_days, chunk_symbols : int
        Size of one chunk.
    progress : bool
        Show a progress bar.
    calendar : str, optional
        Sessions the bars must lie in (default: the source's ``calendar``, else XNYS).
    extended_hours : bool, optional
        Accept pre- and post-market bars (default: the source's ``extended_hours`` attribute;
        Alpaca's stock bars include them).

    Returns
    -------
    IngestReport
    """
    tf = Timeframe.parse(timeframe)
    if not symbols:
        raise SourceError(
            "no symbols to ingest. Fix: pass --symbols or set data.symbols in config."
        )
    lo, hi = to_window(start, end)
    chunks = plan_chunks(symbols, lo, hi, chunk_days=chunk_days, chunk_symbols=chunk_symbols)
    now = now or datetime.now(UTC)
    store.check_writable(symbols, tf.name)
    ledger_path = store.root / LEDGER_NAME
    ledger = ChunkLedger(ledger_path) if ledger_path.exists() else None  # created on first write
    key = source_key(source)
    prov = source.provenance()
    cal_code = calendar or getattr(source, "calendar", None) or DEFAULT_CALENDAR
    ext = extended_hours
    if ext is None:
        ext = bool(getattr(source, "extended_hours", source.name in _EXTENDED_BY_DEFAULT))
    report = IngestReport()
    t0 = time.perf_counter()
    report.chunks += _repair_in_window(source, store, ledger, tf, symbols, lo, hi)
    sourced = False
    bar = tqdm(
        chunks,
        desc=f"ingest {source.name} {tf.name}",
        unit="chunk",
        disable=not progress,
        leave=False,
    )
    for chunk in bar:
        todo = []
        for s in chunk.symbols:
            rec = ledger.get(key, tf.name, s, chunk.start, chunk.end) if ledger else None
            if (
                rec is None
                or not rec[1]
                or _stored_rows(store, s, tf, chunk.start, chunk.end) < rec[0]
            ):
                todo.append(s)
        row = {"symbols": ",".join(chunk.symbols), "start": chunk.start, "end": chunk.end}
        if not todo:
            report.chunks.append(
                {**row, "status": "skipped", "rows": 0, "inserted": 0, "updated": 0, "seconds": 0.0}
            )
            continue
        c0 = time.perf_counter()
        bars = source.fetch(todo, tf, chunk.start, chunk.end)
        outside = bars.filter(
            (pl.col("ts") < chunk.start)
            | (pl.col("ts") >= chunk.end)
            | ~pl.col("symbol").is_in(todo)
        )
        if outside.height:
            raise SourceError(
                f"source {source.name!r} returned {outside.height} bar(s) outside the requested chunk "
                f"{chunk.start.isoformat()}..{chunk.end.isoformat()} / {todo}; first: {outside.head(3).to_dicts()}. "
                "Fix the source's window or symbol filtering."
            )
        check_bar_times(bars, tf, cal_code, extended_hours=ext)
        complete = chunk.end <= now - settle
        counts = dict(bars.group_by("symbol").len().iter_rows()) if bars.height else {}
        done = [
            {
                "symbol": s,
                "source_key": key,
                "start": chunk.start.isoformat(),
                "end": chunk.end.isoformat(),
                "rows": int(counts.get(s, 0)),
                "complete": complete,
            }
            for s in todo
        ]
        wr = store.write(bars, tf, provenance=prov, chunks=done)
        if ledger is None:
            ledger = ChunkLedger(ledger_path)
        if not sourced:
            ledger.record_source(key, prov)
            sourced = True
        ledger.record_many(
            [(key, tf.name, c["symbol"], c["start"], c["end"], c["rows"], complete) for c in done]
        )
        report.chunks.append(
            {
                **row,
                "status": "fetched",
                "rows": bars.height,
                "inserted": wr.inserted,
                "updated": wr.updated,
                "seconds": round(time.perf_counter() - c0, 4),
            }
        )
        bar.set_postfix(rows=report.total("rows"))
    report.seconds = time.perf_counter() - t0
    return report
