"""Partitioned parquet bar store with idempotent, atomic, checksummed upserts.

Layout under ``root``::

    timeframe=5Min/symbol=SYN000/2024-01.parquet      # one file per (timeframe, symbol, period)
    timeframe=5Min/symbol=SYN000/_manifest.json       # checksums, rows, provenance, ingest chunks
    _ledger.sqlite                                     # ingest chunk ledger (see ledger.py)
    _quarantine/<stamp>/...                            # bad files that a repair replaced

A period is a UTC calendar day, month or year (``store.partition`` in config). The setting applies
to new symbol folders: a folder keeps the period it was written with, so a store whose setting
changed still reads and upserts correctly (a folder holding files of two periods is refused, as
a bar could be in both). Fewer, larger files are much cheaper: a file costs about a millisecond
to encode and fsync whatever its size, so a year of 5Min bars writes and reads several times
faster as one file per symbol than as twelve.

Every write merges the new bars into the affected partitions (a re-written bar takes the new
values). Nothing is written until every partition it touches has been read and verified; then each
partition goes to a temporary file in its folder (fsynced), the folder's manifest records the new checksum beside the
old one ("pending"), the files are renamed over the old ones with :func:`os.replace`, and the
manifest drops the old checksums. A crash at any point leaves old or new files that the manifest
accepts, never half of one. Writers take an exclusive lock on the store; readers never see
temporary files and never write.

Every read verifies the sha256 of each partition it touches against the manifest (see
:mod:`workbench.data.integrity`, which also says how stores written before checksums are handled)
and raises :class:`~workbench.data.integrity.CorruptPartitionError` naming each bad file and the fix
instead of serving it. :meth:`BarStore.read` reads each file once and decodes the bytes it hashed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.data.integrity import (
    LEGACY_PROVENANCE,
    MANIFEST,
    CorruptPartitionError,
    Manifest,
    Problem,
    check_structure,
    folder_keys,
    fsync_dir,
    partition_record,
    period_bounds,
    proven,
    read_checked,
    repair_fix,
    write_temp,
)
from workbench.data.schema import BAR_SCHEMA, KEY, empty_bars, reject_rows, validate_bars
from workbench.data.timeframe import Timeframe
from workbench.data.validated import mark_validated
from workbench.errors import StoreError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig

Partition = Literal["day", "month", "year"]
_PERIOD_FMT = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}
_LAYOUT_OF_LEN: dict[int, Partition] = {10: "day", 7: "month", 4: "year"}  # by period name
QUARANTINE = "_quarantine"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WriteReport:
    """What a write changed: bars inserted, bars updated with new values, bars already identical."""

    inserted: int
    updated: int
    unchanged: int
    partitions: int

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.unchanged


@dataclass
class VerifyReport:
    """Outcome of :meth:`BarStore.verify`: bad files, legacy partitions without a checksum, counts."""

    root: Path
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    unverified: list[Path] = field(default_factory=list)
    adopted: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Staged:
    period: str
    target: Path
    frame: pl.DataFrame | None  # None: drop the partition (a repair found no bars for it)
    replace: bool


def _utc(value: datetime | date | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    """Encode one partition as plain parquet (any parquet reader opens it).

    pyarrow's writer costs about half of polars' per file, which dominates on partitions of a
    few thousand bars. Uncompressed: on bars zstd saves about a quarter of the bytes but doubles
    the decode and adds a quarter to the encode (files written compressed before stay readable
    as they are). Only ``symbol`` is dictionary-encoded (one value a file) and only the key has
    statistics (what a filtered scan prunes on). The encoding is deterministic, which an
    identical re-write relies on.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(
        df.to_arrow(),
        sink,
        compression="none",
        use_dictionary=["symbol"],
        write_statistics=list(KEY),
    )
    return sink.getvalue().to_pybytes()


_THREADS = 4  # file work (hashing, parquet encoding, fsync) releases the GIL; fsyncs overlap
_POOL: ThreadPoolExecutor | None = None  # one pool for the process: starting threads per call costs


def _reset_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_reset_pool)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="barstore")
    return _POOL


def _pool_map(fn: Any, items: Any, *, wait_all: bool = False) -> list[Any]:
    """Return ``[fn(x) for x in items]`` computed on a thread pool, in order.

    With ``wait_all`` every item runs and an exception is returned in its place instead of
    raised (so the caller can clean up after all of them).
    """
    items = list(items)
    if len(items) <= 1:
        if not wait_all:
            return [fn(x) for x in items]
        out: list[Any] = []
        for x in items:
            try:
                out.append(fn(x))
            except BaseException as exc:  # handed back to the caller
                out.append(exc)
        return out
    pool = _pool()
    futures = [pool.submit(fn, x) for x in items]
    if not wait_all:
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:  # leave no task of this call running behind the caller's back
                f.cancel()
            wait(futures)
            raise
    return [f.exception() or f.result() for f in futures]


def _day_key(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).strftime(_PERIOD_FMT["day"])


def _window_keys(start: datetime | None, end: datetime | None) -> tuple[str | None, str | None]:
    """Return the days of the first and last instant of ``[start, end)`` (None: unbounded)."""
    return _day_key(start), _day_key(None if end is None else end - timedelta(microseconds=1))


def _in_window(period: str, lo: str | None, hi: str | None) -> bool:
    """Whether a partition of any layout overlaps the window of :func:`_window_keys`.

    A period name (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``) is a prefix of the days it covers,
    so comparing it with the window's first and last day cut to its length is an overlap test.
    """
    n = len(period)
    return (lo is None or period >= lo[:n]) and (hi is None or period <= hi[:n])


def _layout_problem(d: Path, names: Collection[str], root: Path) -> Problem | None:
    """A problem when a folder holds partitions of different periods (e.g. months and a year)."""
    found = sorted({_LAYOUT_OF_LEN[len(n)] for n in names if len(n) in _LAYOUT_OF_LEN})
    if len(found) < 2:
        return None
    tf, sym = folder_keys(d)
    return Problem(
        d,
        "layout",
        f"folder holds partitions of different periods ({', '.join(found)}): a bar could be "
        "stored twice (not written by the store; files copied in?)",
        f"move out the files of the layout you do not keep, then {repair_fix(root)}",
        timeframe=tf,
        symbol=sym,
    )


def _unwritable(path: Path, exc: OSError) -> StoreError:
    return StoreError(
        f"cannot write to the bar store at {path}: {exc.strerror or exc}. Nothing was written. "
        f"Fix: make the folder writable (e.g. `chmod -R u+w {path}`) or pass --store with a "
        "writable folder."
    )


class BarStore:
    """Bars on disk, partitioned by timeframe, symbol and period, each partition checksummed.

    Parameters
    ----------
    root : str or Path
        Folder of the store (created on first write).
    partition : {"day", "month", "year"}
        Period covered by one parquet file.
    """

    def __init__(self, root: str | Path, partition: Partition = "month") -> None:
        if partition not in _PERIOD_FMT:
            raise StoreError(
                f"The 'partition' parameter of BarStore must be one of {list(_PERIOD_FMT)}. Got {partition!r} instead."
            )
        self.root = Path(root)
        self.partition: Partition = partition

    def __repr__(self) -> str:
        return f"BarStore({str(self.root)!r}, partition={self.partition!r})"

    @classmethod
    def from_config(cls, cfg: WorkbenchConfig) -> BarStore:
        """Open the store configured in ``cfg.store``."""
        return cls(cfg.path(cfg.store.root), cfg.store.partition)

    # ---------------------------------------------------------------- paths

    def _symbol_dir(self, timeframe: Timeframe, symbol: str) -> Path:
        if "/" in symbol or symbol.startswith("."):
            safe = symbol.replace("/", "%2F")
            return self.root / f"timeframe={timeframe.name}" / f"symbol={safe}"
        return self.root / f"timeframe={timeframe.name}" / f"symbol={symbol}"

    def period_of(self, ts: datetime, partition: Partition | None = None) -> str:
        """Return the partition period (file stem) holding a bar stamped ``ts`` in a new folder
        (or, with ``partition``, in a folder of that layout)."""
        return ts.astimezone(UTC).strftime(_PERIOD_FMT[partition or self.partition])

    def partition_path(self, symbol: str, timeframe: str | Timeframe, period: str) -> Path:
        """Return the file of one partition (whether or not it exists)."""
        return self._symbol_dir(Timeframe.parse(timeframe), symbol) / f"{period}.parquet"

    def _symbol_dirs(self, tf: Timeframe) -> list[Path]:
        base = self.root / f"timeframe={tf.name}"
        if not base.is_dir():
            return []
        return sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("symbol="))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's exclusive writer lock (readers never take it)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(self.root / ".lock", "a+")  # noqa: SIM115 - held for the whole block
        except OSError as exc:
            raise _unwritable(self.root, exc) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def check_writable(self, symbols: Sequence[str] = (), timeframe: str | None = None) -> None:
        """Raise :class:`StoreError` naming the folder and the fix if a write could not succeed.

        Checks the store root (or the nearest existing parent of a new store) and the existing
        folders a write of ``symbols`` at ``timeframe`` would touch. Writes nothing.
        """
        probe = [self.root]
        if timeframe is not None:
            tf = Timeframe.parse(timeframe)
            probe.append(self.root / f"timeframe={tf.name}")
            probe += [self._symbol_dir(tf, s) for s in symbols]
        for d in probe:
            target = d
            while not target.exists() and target.parent != target:
                target = target.parent
            if not target.is_dir():
                raise StoreError(
                    f"the bar store path {target} is not a folder. Fix: pass --store with a folder."
                )
            if target != d and d != self.root:
                continue  # created by the write below a folder checked already
            if not os.access(target, os.W_OK | os.X_OK):
                raise _unwritable(target, PermissionError(13, "permission denied"))

    # ---------------------------------------------------------------- write

    def write(
        self,
        bars: pl.DataFrame,
        timeframe: str | Timeframe,
        provenance: dict[str, str] | None = None,
        *,
        chunks: Sequence[dict[str, Any]] = (),
        replace: Collection[tuple[str, str]] = (),
    ) -> WriteReport:
        """Upsert bars: insert new keys, overwrite existing keys with the new values.

        The whole frame is validated (bar contract, and every ``ts`` on the timeframe's grid) and
        every partition it touches is verified first; nothing is written if any row is invalid or
        any touched partition is bad. Writing the same bars twice
        leaves one copy. Each partition is replaced atomically and its checksum recorded.

        Parameters
        ----------
        bars : pl.DataFrame
            Bars satisfying the bar contract.
        timeframe : str or Timeframe
            Timeframe of every bar in ``bars``.
        provenance : dict, optional
            Source description stored beside the bars (no secrets).
        chunks : sequence of dict, optional
            Ingest chunks these bars complete, recorded in each symbol's manifest (keys ``symbol,
            source_key, start, end, rows, complete``) so that the ingest ledger can be rebuilt.
        replace : collection of (symbol, period), optional
            Partitions whose old content is discarded instead of merged (a repair); the old file,
            if any, moves to ``_quarantine/``.

        Returns
        -------
        WriteReport

        Raises
        ------
        CorruptPartitionError
            If a partition the bars merge into fails verification (naming it and the fix).
        StoreError
            If the store's folder cannot be written.
        """
        tf = Timeframe.parse(timeframe)
        new = validate_bars(bars)
        reject_rows(
            new,
            tf.off_grid(pl.col("ts")),
            f"ts on the {tf.name} grid of timeframe={tf.name}",
            ["symbol", "ts"],
            f"these are not {tf.name} bars (or their clock is off); write them with the timeframe "
            "they have, or resample them first.",
        )
        replace = {(str(s), str(p)) for s, p in replace}
        chunks_of: dict[str, list[dict[str, Any]]] = {}
        for c in chunks:
            rec = {k: v for k, v in c.items() if k != "symbol"}
            chunks_of.setdefault(str(c["symbol"]), []).append(rec)
        if new.is_empty() and not chunks_of:
            return WriteReport(0, 0, 0, 0)
        runs = self._runs(new)
        inserted = updated = unchanged = 0
        with self.lock():
            folders: list[tuple[Path, Manifest, bool]] = []
            jobs: list[tuple[int, str, pl.DataFrame, str]] = []  # (folder, period, bars, kind)
            problems: list[Problem] = []
            for symbol in [*runs, *(s for s in chunks_of if s not in runs)]:
                d = self._symbol_dir(tf, symbol)
                rows = runs.get(symbol)
                if rows is None and not (d / MANIFEST).exists():
                    continue  # no bars and no folder: nothing to record the chunk in
                mine = {p for s, p in replace if s == symbol}
                if d.is_dir():
                    self._clean_temp(d)  # left by a writer that died
                try:
                    man, dirty = self._manifest_for_write(d, tf, symbol, mine)
                    layout = self._folder_layout(d, man)
                except CorruptPartitionError as exc:
                    problems += exc.problems
                    continue
                # a folder keeps the layout it was written with (the store's setting applies to
                # new folders), so that no bar can be stored in two files of different periods
                group = [] if rows is None else self._periods(rows, layout or self.partition)
                periods = {period for period, _ in group}
                k = len(folders)
                for period, chunk in group:
                    target = d / f"{period}.parquet"
                    if period in mine:
                        kind = "replace"
                    elif not target.exists() and period not in man.partitions:
                        kind = "new"
                    else:
                        kind = "merge"
                    jobs.append((k, period, chunk, kind))
                for period in sorted(mine - periods):
                    target = d / f"{period}.parquet"
                    if target.exists() or period in man.partitions:
                        jobs.append((k, period, empty_bars(), "drop"))
                for c in chunks_of.get(symbol, []):
                    dirty = man.record_chunk(c) or dirty
                folders.append((d, man, dirty))
            staged: list[list[_Staged]] = [[] for _ in folders]
            by_folder: list[list[tuple[int, str, pl.DataFrame, str]]] = [[] for _ in folders]
            for job in jobs:
                by_folder[job[0]].append(job)

            def stage_folder(k: int) -> list[Any]:
                d, man, _ = folders[k]
                return [self._stage(d, man, *job) for job in by_folder[k]]

            results = [r for rs in _pool_map(stage_folder, range(len(folders))) for r in rs]
            for k, st, counts, problem in results:
                if problem is not None:
                    problems.append(problem)
                    continue
                inserted += counts[0]
                updated += counts[1]
                unchanged += counts[2]
                if st is not None:
                    staged[k].append(st)
            if problems:
                raise CorruptPartitionError(problems)
            plans = [
                (d, man, staged[k])
                for k, (d, man, dirty) in enumerate(folders)
                if staged[k] or dirty
            ]
            parts = self._commit_all(plans, provenance)
        return WriteReport(inserted, updated, unchanged, parts)

    @staticmethod
    def _runs(new: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """Split validated (sorted) bars by symbol: zero-copy slices cut where the symbol changes
        (one run-length pass)."""
        if new.is_empty():
            return {}
        runs = new.get_column("symbol").rle()
        lens = runs.struct.field("len").to_list()
        names = runs.struct.field("value").to_list()
        out: dict[str, pl.DataFrame] = {}
        lo = 0
        for symbol, length in zip(names, lens, strict=True):
            out[symbol] = new.slice(lo, length)
            lo += length
        return out

    def _periods(self, rows: pl.DataFrame, layout: Partition) -> list[tuple[str, pl.DataFrame]]:
        """Split one symbol's sorted bars into partitions of ``layout``: (period, zero-copy slice),
        cut at the period boundaries found by binary search in the timestamps."""
        us = rows.get_column("ts").dt.epoch("us").to_numpy()
        out: list[tuple[str, pl.DataFrame]] = []
        a = 0
        while a < len(us):
            period = self.period_of(_EPOCH + timedelta(microseconds=int(us[a])), layout)
            end_us = int(period_bounds(period)[1].timestamp()) * 1_000_000
            b = int(np.searchsorted(us, end_us, side="left"))
            out.append((period, rows.slice(a, b - a)))
            a = b
        return out

    def _folder_layout(self, d: Path, man: Manifest | None) -> Partition | None:
        """Return the period of the partitions a folder holds (None: none yet).

        Raises
        ------
        CorruptPartitionError
            If the folder holds partitions of different periods.
        """
        names = {p.stem for p in d.glob("[!.]*.parquet")} | set(man.partitions if man else ())
        problem = _layout_problem(d, names, self.root)
        if problem is not None:
            raise CorruptPartitionError([problem])
        lens = {len(n) for n in names} & set(_LAYOUT_OF_LEN)
        return _LAYOUT_OF_LEN[lens.pop()] if lens else None

    def _stage(
        self, d: Path, man: Manifest, _k: int, period: str, chunk: pl.DataFrame, kind: str
    ) -> tuple[int, _Staged | None, tuple[int, int, int], Problem | None]:
        """Decide what one partition of a write becomes: (folder, staged file, counts, problem).

        Counts are (inserted, updated, unchanged). A merge into an existing partition first
        verifies it; bars identical to it encode to the very bytes it holds (the writer is
        deterministic), which its recorded checksum shows without reading it back.
        """
        target = d / f"{period}.parquet"
        if kind == "drop":
            return _k, _Staged(period, target, None, True), (0, 0, 0), None
        if kind in ("new", "replace"):
            return _k, _Staged(period, target, chunk, kind == "replace"), (chunk.height, 0, 0), None
        held, problem = read_checked(target, man, period, root=self.root)
        if problem is None and held is None:
            problem = Problem(target, "missing", "partition is missing", repair_fix(self.root))
        if problem is not None:
            return _k, None, (0, 0, 0), problem
        data = _parquet_bytes(chunk)
        if hashlib.sha256(data).hexdigest() in man.accepted(period):
            return _k, None, (0, 0, chunk.height), None
        old, problem = self._decode(target, held)
        if problem is not None:
            return _k, None, (0, 0, 0), problem
        joined = chunk.join(old, on=list(KEY), how="left", suffix="_old")
        is_new = joined["open_old"].is_null()
        same = pl.all_horizontal(
            [pl.col(c).eq_missing(pl.col(f"{c}_old")) for c in BAR_SCHEMA if c not in KEY]
        )
        n_same = int(joined.filter(~is_new).select(same.sum()).item() or 0)
        n_new = int(is_new.sum())
        counts = (n_new, chunk.height - n_new - n_same, n_same)
        if n_new == 0 and n_same == chunk.height:
            return _k, None, counts, None
        merged = pl.concat([old.join(chunk, on=list(KEY), how="anti"), chunk]).sort(KEY)
        return _k, _Staged(period, target, merged, False), counts, None

    def _manifest_for_write(
        self, d: Path, tf: Timeframe, symbol: str, replaced: set[str]
    ) -> tuple[Manifest, bool]:
        """Return the folder's manifest for a write and whether it must be saved even unchanged.

        A legacy folder's partitions are checked structurally and adopted (their checksums
        recorded); a corrupt manifest is replaced only when every partition is being replaced.
        """
        if not d.exists():
            return Manifest(symbol, tf.name), True
        existing = sorted(p.stem for p in d.glob("[!.]*.parquet"))
        try:
            man = Manifest.load(d, root=self.root)
        except CorruptPartitionError:
            if set(existing) <= replaced:
                self._quarantine(d / MANIFEST)
                return Manifest(symbol, tf.name), True
            raise
        if man is not None:
            return man, man.settle(d)
        man = Manifest(symbol, tf.name)
        legacy = self._legacy_provenance(d)
        problems = []
        for period in existing:
            if period in replaced:
                continue
            rec, problem = self._adopt_file(d / f"{period}.parquet", period, legacy.get(period))
            if problem is not None:
                problems.append(problem)
            else:
                man.partitions[period] = rec
        if problems:
            raise CorruptPartitionError(problems)
        return man, True

    def _adopt_file(
        self, path: Path, period: str, provenance: dict | None
    ) -> tuple[dict, Problem | None]:
        data = path.read_bytes()
        problem = check_structure(path, period, root=self.root, data=data)
        if problem is not None:
            return {}, problem
        df = pl.read_parquet(data)
        digest = hashlib.sha256(data).hexdigest()
        return partition_record(df, digest, len(data), provenance), None

    def _decode(self, path: Path, data: bytes) -> tuple[pl.DataFrame, Problem | None]:
        """Decode a partition's verified bytes (a problem if they do not parse)."""
        try:
            return pl.read_parquet(data), None
        except Exception as exc:  # verified bytes that do not parse: written by another program
            tf, sym = folder_keys(path.parent)
            period = path.stem
            return empty_bars(), Problem(
                path,
                "unreadable",
                f"not a readable parquet file ({str(exc).splitlines()[0][:160]})",
                repair_fix(self.root),
                tf,
                sym,
                period,
            )

    def _commit_all(
        self, plans: list[tuple[Path, Manifest, list[_Staged]]], provenance: dict | None
    ) -> int:
        """Commit every folder's staged partitions, folders in parallel (see :meth:`_commit`).

        Each folder's files are encoded, hashed and fsynced by its own task; the disk handles the
        concurrent flushes of several folders together. A folder that fails leaves itself as it
        was (others may have committed, as when folders are written one after another).
        """
        done = _pool_map(lambda plan: self._commit_folder(*plan, provenance), plans, wait_all=True)
        for (d, _, _), r in zip(plans, done, strict=True):
            if isinstance(r, OSError):
                raise _unwritable(d, r) from None
            if isinstance(r, BaseException):
                raise r
        return sum(done)

    def _commit_folder(
        self, d: Path, man: Manifest, staged: list[_Staged], provenance: dict | None
    ) -> int:
        _make_durable_dir(d)
        temps: dict[str, tuple[Path, dict[str, Any]]] = {}
        try:
            for st in staged:
                if st.frame is not None:
                    temps[st.period] = self._write_temp(man, st, provenance)
        except BaseException:
            for tmp, _ in temps.values():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            raise
        return self._commit(d, man, staged, temps)

    @staticmethod
    def _write_temp(
        man: Manifest, st: _Staged, provenance: dict | None
    ) -> tuple[Path, dict[str, Any]]:
        """Write one partition's bytes to a fsynced temporary file; return it and its record."""
        data = _parquet_bytes(st.frame)
        digest = hashlib.sha256(data).hexdigest()
        prov = provenance or (man.partitions.get(st.period) or {}).get("provenance")
        rec = partition_record(st.frame, digest, len(data), prov, validated=True)
        return write_temp(data, st.target), rec

    def _commit(
        self,
        d: Path,
        man: Manifest,
        staged: list[_Staged],
        temps: dict[str, tuple[Path, dict[str, Any]]],
    ) -> int:
        """Commit one folder: record the new checksums as pending, rename, drop the old ones."""
        final: dict[str, dict[str, Any]] = {}
        try:
            for st in staged:
                if st.frame is None:
                    man.partitions.pop(st.period, None)
                    continue
                _, rec = temps[st.period]
                old = man.partitions.get(st.period)
                kept = {k: v for k, v in (old or {"sha256": None}).items() if k != "pending"}
                man.partitions[st.period] = {**kept, "pending": [rec]}
                final[st.period] = rec
            man.save(d)  # new checksums accepted before any file is replaced
            for st in staged:
                if st.replace and st.target.exists():
                    self._quarantine(st.target)
                if st.frame is not None:
                    os.replace(temps[st.period][0], st.target)
        except BaseException:
            for tmp, _ in temps.values():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            raise
        if staged:
            fsync_dir(d)
            man.partitions.update(final)
            man.save(d)
        return len(staged)

    def _quarantine(self, path: Path) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = self.root / QUARANTINE / stamp / path.relative_to(self.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        return dest

    @staticmethod
    def _clean_temp(d: Path) -> None:
        for tmp in d.glob(".*.tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @staticmethod
    def _legacy_provenance(d: Path) -> dict[str, dict[str, str]]:
        path = d / LEGACY_PROVENANCE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # ---------------------------------------------------------------- verify

    def _dir_problems(
        self, d: Path, lo: str | None, hi: str | None, *, keep: bool = False
    ) -> tuple[list[tuple[Path, bytes | None]], list[Problem], Manifest | None]:
        """Verify a folder's partitions in ``[lo, hi]``: (good files, problems, manifest).

        Each good file comes with the bytes that passed the check when ``keep`` (else None).
        """
        try:
            man = Manifest.load(d, root=self.root)
        except CorruptPartitionError as exc:
            return [], exc.problems, None
        on_disk = {p.stem for p in d.glob("[!.]*.parquet")}
        periods = sorted(on_disk | set(man.partitions if man else ()))
        layout = _layout_problem(d, periods, self.root)
        if layout is not None:
            return [], [layout], man
        files, problems = [], []
        for period in periods:
            if not _in_window(period, lo, hi):
                continue
            path = d / f"{period}.parquet"
            data, problem = read_checked(path, man, period, root=self.root)
            if problem is not None:
                problems.append(problem)
            elif data is not None:
                files.append((path, data if keep else None))
        return files, problems, man

    def _verified_files(
        self,
        symbols: Sequence[str] | None,
        tf: Timeframe,
        start: datetime | None,
        end: datetime | None,
        *,
        keep: bool = False,
    ) -> list[tuple[Path, bool, bytes | None]]:
        """Return the verified partition files of a window in (symbol, period) order, each with
        whether its bars are proven valid by its checksum (see :func:`integrity.proven`) and,
        when ``keep``, the bytes that were verified."""
        dirs = (
            [self._symbol_dir(tf, s) for s in symbols]
            if symbols is not None
            else self._symbol_dirs(tf)
        )
        lo, hi = _window_keys(start, end)

        def one(d: Path) -> tuple[list[tuple[Path, bytes | None]], list[Problem], Manifest | None]:
            if not d.is_dir():
                return [], [], None
            got, bad, man = self._dir_problems(d, lo, hi, keep=keep)
            if bad:  # a writer may have committed between our reads: look once more
                got, bad, man = self._dir_problems(d, lo, hi, keep=keep)
            return got, bad, man

        found: list[tuple[str, str, Path, bool, bytes | None]] = []
        problems: list[Problem] = []
        for d, (got, bad, man) in zip(dirs, _pool_map(one, dirs), strict=True):
            sym = folder_keys(d)[1]
            found += [(sym, f.stem, f, proven(man, f.stem), data) for f, data in got]
            problems += bad
        if problems:
            raise CorruptPartitionError(problems)
        found.sort(key=lambda x: (x[0], x[1]))  # (symbol, period): the rows come out sorted
        return [(f, ok, data) for _, _, f, ok, data in found]

    def verify(
        self,
        symbols: Sequence[str] | None = None,
        timeframe: str | Timeframe | None = None,
        start: datetime | date | str | None = None,
        end: datetime | date | str | None = None,
        *,
        adopt: bool = False,
    ) -> VerifyReport:
        """Check every partition (or those of ``symbols`` / ``timeframe`` in a window).

        A partition is bad when its checksum, size or manifest entry disagree, when it is missing
        although recorded, or when it is not recorded in a folder that has a manifest. Legacy
        partitions (no manifest) are checked structurally and listed as ``unverified``; with
        ``adopt`` their checksums are recorded (under the write lock) after that check.

        Returns
        -------
        VerifyReport
        """
        rep = VerifyReport(self.root)
        tfs = (
            [Timeframe.parse(timeframe)]
            if timeframe is not None
            else [Timeframe.parse(t) for t in self.timeframes()]
        )
        lo, hi = _window_keys(_utc(start), _utc(end))
        for tf in tfs:
            dirs = (
                [self._symbol_dir(tf, s) for s in symbols]
                if symbols is not None
                else self._symbol_dirs(tf)
            )
            for d in dirs:
                if not d.is_dir():
                    continue
                got, problems, man = self._dir_problems(d, lo, hi)
                files = [f for f, _ in got]
                rep.checked += len(files) + len(problems)
                rep.problems += problems
                if man is None and files and not (d / MANIFEST).exists():
                    rep.unverified += files
        if adopt and rep.unverified:
            rep.adopted = self._adopt_legacy(sorted({p.parent for p in rep.unverified}))
            rep.unverified = [p for p in rep.unverified if p not in set(rep.adopted)]
        return rep

    def _adopt_legacy(self, dirs: list[Path]) -> list[Path]:
        adopted: list[Path] = []
        with self.lock():
            for d in dirs:
                if (d / MANIFEST).exists():
                    continue
                tf, sym = folder_keys(d)
                try:
                    man, _ = self._manifest_for_write(d, Timeframe.parse(tf), sym, set())
                except CorruptPartitionError:
                    continue  # reported by verify already
                try:
                    man.save(d)
                except OSError as exc:
                    raise _unwritable(d, exc) from None
                adopted += [d / f"{p}.parquet" for p in man.partitions]
        return adopted

    # ---------------------------------------------------------------- read

    def scan(
        self,
        symbols: Sequence[str] | None = None,
        timeframe: str | Timeframe = "1Min",
        start: datetime | date | str | None = None,
        end: datetime | date | str | None = None,
    ) -> pl.LazyFrame:
        """Return a lazy frame over the stored bars with ``start <= ts < end`` (not validated).

        The partitions it covers are verified when ``scan`` is called (checksums, or the
        structural check of a legacy partition).

        Raises
        ------
        CorruptPartitionError
            If a partition in the window is bad, naming each file and the fix.
        """
        return self._scan(symbols, Timeframe.parse(timeframe), _utc(start), _utc(end))[0]

    def _scan(
        self,
        symbols: Sequence[str] | None,
        tf: Timeframe,
        lo: datetime | None,
        hi: datetime | None,
        *,
        keep: bool = False,
    ) -> tuple[pl.LazyFrame, bool]:
        """Return the lazy frame of :meth:`scan` and whether every file in it is proven valid.

        ``keep``: the frame decodes the bytes that were verified (held in memory) instead of
        reading the files again.
        """
        files = self._verified_files(symbols, tf, lo, hi, keep=keep)
        if not files:
            return empty_bars().lazy(), True
        sources = [data for _, _, data in files] if keep else [f for f, _, _ in files]
        lf = pl.scan_parquet(sources, schema=BAR_SCHEMA)
        if lo is not None:
            lf = lf.filter(pl.col("ts") >= lo)
        if hi is not None:
            lf = lf.filter(pl.col("ts") < hi)
        return lf, all(ok for _, ok, _ in files)

    def _collect(self, lf: pl.LazyFrame, what: str) -> pl.DataFrame:
        try:
            return lf.collect(engine="in-memory")
        except (pl.exceptions.PolarsError, OSError) as exc:
            first = (
                str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            )
            raise StoreError(
                f"reading {what} from {self.root} failed after verification ({first}); a file "
                "changed while it was read, or holds bytes the store did not write. Fix: run `wb store verify --store {self.root}`, "
                "then `wb store repair` for the files it names."
            ) from None

    def read(
        self,
        symbols: Sequence[str] | None = None,
        timeframe: str | Timeframe = "1Min",
        start: datetime | date | str | None = None,
        end: datetime | date | str | None = None,
        *,
        strict: bool = True,
    ) -> pl.DataFrame:
        """Read bars with ``start <= ts < end`` (UTC; dates mean midnight UTC) as a validated frame.

        Every partition read is verified first (see :meth:`scan`).

        Parameters
        ----------
        symbols : sequence of str, optional
            Symbols to read (default: all stored at this timeframe).
        timeframe : str or Timeframe
        start, end : datetime, date or ISO string, optional
            Half-open window; naive values are taken as UTC.
        strict : bool
            Raise if a requested symbol has no bars at all in the store at this timeframe.

        Raises
        ------
        StoreError
            When ``strict`` and a symbol was never ingested, naming the command that fixes it.
        CorruptPartitionError
            When a partition in the window is bad, naming each file and the fix.
        """
        tf = Timeframe.parse(timeframe)
        if symbols is not None:
            symbols = list(dict.fromkeys(symbols))
            if strict:
                absent = [s for s in symbols if not self._symbol_dir(tf, s).is_dir()]
                if absent:
                    raise StoreError(
                        f"no {tf.name} bars stored for {absent} in {self.root}. "
                        f"Fix: ingest them first, e.g. `wb ingest --timeframe {tf.name} --symbols {','.join(absent)}`."
                    )
        # The files are read once: their bytes are hashed, then decoded from memory (what is
        # served is exactly what was verified).
        lf, ok = self._scan(symbols, tf, _utc(start), _utc(end), keep=True)
        df = self._collect(lf, f"{tf.name} bars")
        del lf  # the verified bytes: free them before the copy below
        # Files whose checksum proves they hold bars validated (sorted, unique) at write time,
        # read in (symbol, period) order, already form a valid frame: checking them again would
        # cost more than reading them.
        # One chunk a column: zero-copy numpy views, an O(columns) mark.
        if ok:
            out = df.rechunk().with_columns(pl.col("symbol").set_sorted())
        else:
            out = validate_bars(df).rechunk()
        mark_validated(out)  # consumers (run_backtest) skip re-checking it while it is unchanged
        return out

    def symbols(self, timeframe: str | Timeframe) -> list[str]:
        """Return the symbols stored at a timeframe."""
        return [folder_keys(d)[1] for d in self._symbol_dirs(Timeframe.parse(timeframe))]

    def timeframes(self) -> list[str]:
        """Return the timeframes present in the store."""
        if not self.root.is_dir():
            return []
        return sorted(p.name.split("=", 1)[1] for p in self.root.glob("timeframe=*") if p.is_dir())

    def coverage(self) -> pl.DataFrame:
        """Return one row per (timeframe, symbol): first ts, last ts, rows (partitions verified).

        Raises
        ------
        CorruptPartitionError
            If any partition is bad, naming each file and the fix.
        """
        frames = []
        problems: list[Problem] = []
        for tf in self.timeframes():
            try:
                lf = self.scan(None, tf)
            except CorruptPartitionError as exc:
                problems += exc.problems
                continue
            frames.append(
                self._collect(
                    lf.group_by("symbol")
                    .agg(first_ts=pl.col("ts").min(), last_ts=pl.col("ts").max(), rows=pl.len())
                    .with_columns(timeframe=pl.lit(tf)),
                    f"{tf} coverage",
                )
            )
        if problems:
            raise CorruptPartitionError(problems)
        schema = {
            "timeframe": pl.String,
            "symbol": pl.String,
            "first_ts": BAR_SCHEMA["ts"],
            "last_ts": BAR_SCHEMA["ts"],
            "rows": pl.UInt32,
        }
        if not frames:
            return pl.DataFrame(schema=schema)
        return pl.concat(frames).select(list(schema)).cast(schema).sort("timeframe", "symbol")

    def manifest(self, symbol: str, timeframe: str | Timeframe) -> Manifest | None:
        """Return a symbol folder's manifest (None for a legacy or absent folder).

        Raises
        ------
        CorruptPartitionError
            If the manifest is corrupt.
        """
        return Manifest.load(self._symbol_dir(Timeframe.parse(timeframe), symbol), root=self.root)

    def provenance(self, symbol: str, timeframe: str | Timeframe) -> dict[str, dict[str, str]]:
        """Return the recorded provenance of a symbol's bars, per period."""
        d = self._symbol_dir(Timeframe.parse(timeframe), symbol)
        out = self._legacy_provenance(d)
        man = Manifest.load(d, root=self.root)
        if man is not None:
            out.update(
                {p: r["provenance"] for p, r in man.partitions.items() if r.get("provenance")}
            )
        return dict(sorted(out.items()))

    def manifests(self) -> Iterator[tuple[Path, Manifest | None, Problem | None]]:
        """Yield every symbol folder with its manifest (None: legacy) or the manifest's problem."""
        for tf in self.timeframes():
            for d in self._symbol_dirs(Timeframe.parse(tf)):
                try:
                    yield d, Manifest.load(d, root=self.root), None
                except CorruptPartitionError as exc:
                    yield d, None, exc.problems[0]

    def fingerprint(
        self,
        symbols: Sequence[str] | None = None,
        timeframe: str | Timeframe = "1Min",
        start: datetime | date | str | None = None,
        end: datetime | date | str | None = None,
    ) -> str:
        """Return a sha256 of exactly the bars :meth:`read` returns for the same arguments."""
        return frame_fingerprint(self.read(symbols, timeframe, start, end, strict=False))


def frame_fingerprint(df: pl.DataFrame) -> str:
    """Return a stable sha256 of a frame's column names, types and values (order-sensitive)."""
    h = hashlib.sha256()
    for name, dtype in df.schema.items():
        h.update(f"{name}:{dtype}\0".encode())
        s = df.get_column(name)
        h.update(s.is_null().to_numpy().tobytes())
        if s.dtype == pl.String:
            h.update("\0".join(s.fill_null("").to_list()).encode())
        elif isinstance(s.dtype, pl.Datetime):
            h.update(s.dt.epoch("us").fill_null(0).to_numpy().tobytes())
        else:
            h.update(s.fill_null(0).to_numpy().tobytes())
    return h.hexdigest()


def _make_durable_dir(d: Path) -> None:
    """Create ``d`` and any missing parents, and flush each new entry to its parent folder.

    Without the parent's fsync a crash can forget a new symbol folder, and the files committed
    into it, although every file and rename inside it was flushed.
    """
    if d.is_dir():
        return
    new: list[Path] = []
    p = d
    while not p.exists():
        new.append(p)
        if p.parent == p:
            break
        p = p.parent
    d.mkdir(parents=True, exist_ok=True)
    for q in reversed(new):
        fsync_dir(q.parent)
