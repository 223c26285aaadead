"""Partitioned parquet bar store with idempotent, atomic upserts.

Layout under ``root``::

    timeframe=5Min/symbol=SYN000/2024-01.parquet      # one file per (timeframe, symbol, period)
    timeframe=5Min/symbol=SYN000/_provenance.json     # where those bars came from
    _ledger.sqlite                                     # ingest chunk ledger (see ingest.py)

A period is a UTC calendar day, month or year (``store.partition`` in config). Every write merges
the new bars into the affected partitions (a re-written bar takes the new values), writes each
partition to a temporary file in the same folder and renames it over the old one with
:func:`os.replace`, so a crash at any point leaves either the old or the new file, never half of
one. Writers take an exclusive lock on the store; readers never see temporary files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import polars as pl

from workbench.data.schema import BAR_SCHEMA, KEY, empty_bars, validate_bars
from workbench.data.timeframe import Timeframe
from workbench.errors import StoreError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig

Partition = Literal["day", "month", "year"]
_PERIOD_FMT = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}


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


def _utc(value: datetime | date | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


class BarStore:
    """Bars on disk, partitioned by timeframe, symbol and period.

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

    def _period_key(self, ts: pl.Expr) -> pl.Expr:
        return ts.dt.strftime(_PERIOD_FMT[self.partition])

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- write

    def write(
        self,
        bars: pl.DataFrame,
        timeframe: str | Timeframe,
        provenance: dict[str, str] | None = None,
    ) -> WriteReport:
        """Upsert bars: insert new keys, overwrite existing keys with the new values.

        The whole frame is validated first; nothing is written if any row is invalid. Writing the
        same bars twice leaves one copy. Each partition is replaced atomically.

        Parameters
        ----------
        bars : pl.DataFrame
            Bars satisfying the bar contract.
        timeframe : str or Timeframe
            Timeframe of every bar in ``bars``.
        provenance : dict, optional
            Source description stored beside the bars (no secrets).

        Returns
        -------
        WriteReport
        """
        tf = Timeframe.parse(timeframe)
        new = validate_bars(bars)
        if new.is_empty():
            return WriteReport(0, 0, 0, 0)
        new = new.with_columns(self._period_key(pl.col("ts")).alias("_period"))
        inserted = updated = unchanged = parts = 0
        with self._lock():
            for (symbol, period), chunk in new.group_by(["symbol", "_period"], maintain_order=True):
                chunk = chunk.drop("_period")
                d = self._symbol_dir(tf, str(symbol))
                d.mkdir(parents=True, exist_ok=True)
                self._clean_temp(d)
                target = d / f"{period}.parquet"
                if target.exists():
                    old = pl.read_parquet(target)
                    joined = chunk.join(old, on=list(KEY), how="left", suffix="_old")
                    is_new = joined["open_old"].is_null()
                    same = pl.all_horizontal(
                        [
                            pl.col(c).eq_missing(pl.col(f"{c}_old"))
                            for c in BAR_SCHEMA
                            if c not in KEY
                        ]
                    )
                    n_same = joined.filter(~is_new).select(same.sum()).item() or 0
                    n_new = int(is_new.sum())
                    inserted += n_new
                    unchanged += int(n_same)
                    updated += chunk.height - n_new - int(n_same)
                    if n_new == 0 and n_same == chunk.height:
                        continue
                    merged = pl.concat([old.join(chunk, on=list(KEY), how="anti"), chunk]).sort(KEY)
                else:
                    inserted += chunk.height
                    merged = chunk
                _atomic_parquet(merged, target)
                parts += 1
                if provenance:
                    self._record_provenance(d, str(period), provenance)
        return WriteReport(inserted, updated, unchanged, parts)

    @staticmethod
    def _clean_temp(d: Path) -> None:
        for tmp in d.glob(".*.tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _record_provenance(self, d: Path, period: str, provenance: dict[str, str]) -> None:
        path = d / "_provenance.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[period] = {k: str(v) for k, v in sorted(provenance.items())}
        _atomic_text(json.dumps(data, indent=1, sort_keys=True), path)

    # ---------------------------------------------------------------- read

    def _files(
        self,
        symbols: Sequence[str] | None,
        tf: Timeframe,
        start: datetime | None,
        end: datetime | None,
    ) -> list[Path]:
        base = self.root / f"timeframe={tf.name}"
        if not base.is_dir():
            return []
        dirs = (
            [self._symbol_dir(tf, s) for s in symbols]
            if symbols is not None
            else sorted(p for p in base.iterdir() if p.is_dir())
        )
        lo = start.strftime(_PERIOD_FMT[self.partition]) if start else None
        hi = end.strftime(_PERIOD_FMT[self.partition]) if end else None
        files = []
        for d in dirs:
            for f in sorted(d.glob("[!.]*.parquet")):
                if (lo and f.stem < lo) or (hi and f.stem > hi):
                    continue
                files.append(f)
        return files

    def scan(
        self,
        symbols: Sequence[str] | None = None,
        timeframe: str | Timeframe = "1Min",
        start: datetime | date | str | None = None,
        end: datetime | date | str | None = None,
    ) -> pl.LazyFrame:
        """Return a lazy frame over the stored bars with ``start <= ts < end`` (unvalidated)."""
        tf = Timeframe.parse(timeframe)
        lo, hi = _utc(start), _utc(end)
        files = self._files(symbols, tf, lo, hi)
        if not files:
            return empty_bars().lazy()
        lf = pl.scan_parquet(files, schema=BAR_SCHEMA)
        if lo is not None:
            lf = lf.filter(pl.col("ts") >= lo)
        if hi is not None:
            lf = lf.filter(pl.col("ts") < hi)
        return lf

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
        df = self.scan(symbols, tf, start, end).collect(engine="in-memory")
        return validate_bars(df)

    def symbols(self, timeframe: str | Timeframe) -> list[str]:
        """Return the symbols stored at a timeframe."""
        base = self.root / f"timeframe={Timeframe.parse(timeframe).name}"
        if not base.is_dir():
            return []
        return sorted(
            p.name.split("=", 1)[1].replace("%2F", "/") for p in base.iterdir() if p.is_dir()
        )

    def timeframes(self) -> list[str]:
        """Return the timeframes present in the store."""
        if not self.root.is_dir():
            return []
        return sorted(p.name.split("=", 1)[1] for p in self.root.glob("timeframe=*") if p.is_dir())

    def coverage(self) -> pl.DataFrame:
        """Return one row per (timeframe, symbol): first ts, last ts, rows."""
        frames = []
        for tf in self.timeframes():
            lf = self.scan(None, tf)
            frames.append(
                lf.group_by("symbol")
                .agg(first_ts=pl.col("ts").min(), last_ts=pl.col("ts").max(), rows=pl.len())
                .with_columns(timeframe=pl.lit(tf))
                .collect(engine="in-memory")
            )
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

    def provenance(self, symbol: str, timeframe: str | Timeframe) -> dict[str, dict[str, str]]:
        """Return the recorded provenance of a symbol's bars, per period."""
        path = self._symbol_dir(Timeframe.parse(timeframe), symbol) / "_provenance.json"
        return json.loads(path.read_text()) if path.exists() else {}

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


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_parquet(df: pl.DataFrame, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        df.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _atomic_text(text: str, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, target)
