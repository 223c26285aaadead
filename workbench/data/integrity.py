"""Partition integrity: the per-folder manifest of checksums, and the checks a partition must pass.

Every ``timeframe=X/symbol=Y`` folder of the bar store holds a ``_manifest.json`` beside its
parquet partitions::

    {"format": 1, "symbol": "SYN000", "timeframe": "5Min",
     "partitions": {"2024-01": {"sha256": "...", "bytes": 51234, "rows": 1638,
                                "first_ts": "...", "last_ts": "...", "provenance": {...},
                                "pending": [{<the record of a file about to replace it>}]}},
     "chunks": [{"source_key": "...", "start": "...", "end": "...", "rows": 78, "complete": true}],
     "manifest_sha256": "<sha256 of everything above>"}

A partition is *good* when its bytes hash to a digest the manifest accepts for its period (the
recorded ``sha256``, or that of a ``pending`` record left by a writer that had not finished: a new
partition whose writer died before renaming it has ``sha256: null`` and may be absent), the manifest's
symbol and timeframe are those of the folder, and the manifest hashes to its own
``manifest_sha256``. Checking a partition this way reads its bytes once (sha256 runs at about
1.6 GB/s here), so reads verify by default.

Stores written before checksums existed have folders without a manifest ("legacy" folders). Their
partitions are checked *structurally* on every read (the file parses, the bars satisfy the bar
contract, every row carries the folder's symbol, lies inside the file's period and on the
folder's timeframe grid) and served if they pass. The first write into such a folder, or
``wb store verify --adopt``, records their checksums after the same structural check; from then on
they are verified like any other partition. A bit flip in a legacy partition that still parses
into valid bars cannot be detected before it is adopted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from workbench.data.timeframe import Timeframe
from workbench.errors import StoreError

MANIFEST = "_manifest.json"
LEGACY_PROVENANCE = "_provenance.json"
FORMAT = 1
CONTRACT_VERSION = 1  # bump when the bar contract (schema.validate_bars) gains a rule
_SHOWN = 10


class CorruptPartitionError(StoreError):
    """One or more partitions (or their manifest) failed verification; nothing was served.

    Attributes
    ----------
    problems : list of Problem
        Each bad file with what is wrong and the fix.
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = [p.message for p in self.problems[:_SHOWN]]
        more = len(self.problems) - _SHOWN
        if more > 0:
            lines.append(f"... and {more} more (run `wb store verify` for the full list)")
        head = f"{len(self.problems)} bad store file(s), nothing read from them:\n  "
        super().__init__(head + "\n  ".join(lines))


@dataclass(frozen=True, slots=True)
class Problem:
    """A file of the store that failed a check: where, which check, what was found, the fix."""

    path: Path
    check: str  # checksum | size | missing | unrecorded | unreadable | symbol | timeframe | period | schema | manifest | layout
    detail: str
    fix: str
    timeframe: str = ""
    symbol: str = ""
    period: str = ""

    @property
    def message(self) -> str:
        return f"{self.path}: {self.detail}. Fix: {self.fix}"


def repair_fix(root: Path) -> str:
    """Return the fix for a bad partition: the command that re-fetches it from its recorded source."""
    return f"run `wb store repair --store {root}` to re-fetch it from its recorded source"


def sha256_file(path: Path) -> tuple[str, int]:
    """Return ``(hex sha256, size in bytes)`` of a file, read in one pass."""
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Manifest:
    """The checksums, row counts, provenance and ingest chunks of one symbol folder."""

    symbol: str
    timeframe: str
    partitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunks: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------ persistence

    @classmethod
    def load(cls, folder: Path, *, root: Path) -> Manifest | None:
        """Return the folder's manifest, or None for a legacy folder without one.

        Raises
        ------
        CorruptPartitionError
            If the manifest is unreadable, fails its own checksum or names another folder.
        """
        path = folder / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptPartitionError(
                [_manifest_problem(path, f"cannot be read ({exc.strerror})", root)]
            ) from None
        try:
            data = json.loads(raw)
            body = {k: v for k, v in data.items() if k != "manifest_sha256"}
            recorded = data.get("manifest_sha256")
            ok = recorded == hashlib.sha256(_canonical(body)).hexdigest()
        except (ValueError, AttributeError, TypeError):
            ok, data = False, None
        if not ok or not isinstance(data, dict):
            raise CorruptPartitionError(
                [_manifest_problem(path, "manifest is corrupt (fails its checksum)", root)]
            )
        want_tf, want_sym = folder_keys(folder)
        if data.get("symbol") != want_sym or data.get("timeframe") != want_tf:
            raise CorruptPartitionError(
                [
                    _manifest_problem(
                        path,
                        f"manifest is for symbol {data.get('symbol')!r} timeframe "
                        f"{data.get('timeframe')!r}, but its folder holds {want_sym!r} {want_tf!r} "
                        "(copied from another folder?)",
                        root,
                    )
                ]
            )
        return cls(
            symbol=data["symbol"],
            timeframe=data["timeframe"],
            partitions=dict(data.get("partitions", {})),
            chunks=list(data.get("chunks", [])),
        )

    def dump(self) -> bytes:
        body = {
            "format": FORMAT,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "partitions": self.partitions,
            "chunks": self.chunks,
        }
        return json.dumps(  # compact: json's C encoder (indent would use the slow Python one)
            {**body, "manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest()},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def save(self, folder: Path) -> None:
        """Write the manifest atomically (temp file, fsync, rename, fsync of the folder)."""
        atomic_bytes(self.dump(), folder / MANIFEST)

    # ------------------------------------------------------------ queries

    def accepted(self, period: str) -> set[str]:
        """Return the digests a partition of ``period`` may have (recorded and pending)."""
        rec = self.partitions.get(period)
        if rec is None:
            return set()
        return {d for d in (rec.get("sha256"), *(p["sha256"] for p in rec.get("pending", []))) if d}

    def settle(self, folder: Path) -> bool:
        """Resolve records a dead writer left pending by what is on disk; return if changed."""
        changed = False
        for period, rec in list(self.partitions.items()):
            pending = rec.get("pending")
            if not pending:
                continue
            try:
                digest, _ = sha256_file(folder / f"{period}.parquet")
            except FileNotFoundError:
                digest = None
            match = next((p for p in pending if p["sha256"] == digest), None)
            if match is not None:
                self.partitions[period] = match
            elif rec.get("sha256") is None:
                del self.partitions[period]  # the new file never arrived (or is not ours)
            else:
                self.partitions[period] = {k: v for k, v in rec.items() if k != "pending"}
            changed = True
        return changed

    def record_chunk(self, chunk: dict[str, Any]) -> bool:
        """Record an ingest chunk (replacing one with the same source and window); return if changed."""
        key = (chunk["source_key"], chunk["start"], chunk["end"])
        kept = [c for c in self.chunks if (c["source_key"], c["start"], c["end"]) != key]
        new = sorted([*kept, chunk], key=lambda c: (c["start"], c["end"], c["source_key"]))
        if new == self.chunks:
            return False
        self.chunks = new
        return True


def _manifest_problem(path: Path, detail: str, root: Path) -> Problem:
    tf, sym = folder_keys(path.parent)
    return Problem(
        path,
        "manifest",
        detail,
        f"run `wb store repair --store {root}` to re-fetch the folder's partitions from their "
        "recorded source and write a new manifest",
        timeframe=tf,
        symbol=sym,
    )


def folder_keys(folder: Path) -> tuple[str, str]:
    """Return ``(timeframe, symbol)`` named by a ``timeframe=X/symbol=Y`` folder."""
    sym = folder.name.split("=", 1)[-1].replace("%2F", "/")
    tf = folder.parent.name.split("=", 1)[-1]
    return tf, sym


def partition_record(
    df: pl.DataFrame, digest: str, size: int, provenance: dict | None, *, validated: bool = False
) -> dict:
    """Return the manifest entry of a partition about to be written.

    ``validated``: the store wrote these bytes from bars that passed the bar contract, sorted and
    unique (recorded as ``contract``: :data:`CONTRACT_VERSION`); a read whose checksum matches
    need not check them again.
    """
    ts = df.get_column("ts")
    rec: dict[str, Any] = {
        "sha256": digest,
        "bytes": size,
        "rows": df.height,
        "first_ts": ts.min().isoformat() if df.height else None,
        "last_ts": ts.max().isoformat() if df.height else None,
    }
    if validated:
        rec["contract"] = CONTRACT_VERSION
    if provenance:
        rec["provenance"] = {k: str(v) for k, v in sorted(provenance.items())}
    return rec


def proven(manifest: Manifest | None, period: str) -> bool:
    """Return whether a verified partition's bytes are bars the store validated when writing them.

    True when the manifest records ``contract`` = :data:`CONTRACT_VERSION` for the period (and no
    pending replacement): matching the checksum then proves the file holds exactly the bars that
    passed the contract at write time, so a read can skip re-checking them. Partitions adopted
    from legacy folders, or written under an older contract, are re-checked.
    """
    if manifest is None:
        return False
    rec = manifest.partitions.get(period)
    return bool(rec) and rec.get("contract") == CONTRACT_VERSION and not rec.get("pending")


def check_file(path: Path, manifest: Manifest | None, period: str, *, root: Path) -> Problem | None:
    """Verify one partition file against its folder's manifest (None: good).

    A legacy folder (``manifest is None``) gets the structural check of :func:`check_structure`.
    """
    return read_checked(path, manifest, period, root=root)[1]


def read_checked(
    path: Path, manifest: Manifest | None, period: str, *, root: Path
) -> tuple[bytes | None, Problem | None]:
    """Read one partition's bytes once and verify them: ``(bytes, None)`` or ``(None, problem)``.

    The bytes returned are the very bytes that passed the check (hashed, or for a legacy folder
    parsed and checked structurally), so a caller that decodes them serves what was verified even
    if the file changes afterwards. ``(None, None)``: the file is absent and need not exist (not
    recorded, or a new partition whose writer died before renaming it in).
    """
    tf, sym = folder_keys(path.parent)
    keys = {"timeframe": tf, "symbol": sym, "period": period}
    fix = repair_fix(root)
    rec = manifest.partitions.get(period) if manifest is not None else None
    if manifest is not None and rec is None:
        if path.exists():
            return None, Problem(
                path,
                "unrecorded",
                "partition is not in its folder's manifest (not written by the store; copied in?)",
                f"remove it, or {fix}",
                **keys,
            )
        return None, None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if rec is None or rec.get("sha256") is None:
            return None, None  # legacy file gone, or a new partition whose writer died
        return None, Problem(
            path,
            "missing",
            f"partition recorded in {MANIFEST} ({rec['rows']} rows) is missing",
            fix,
            **keys,
        )
    except OSError as exc:
        return None, Problem(path, "unreadable", f"cannot be read ({exc.strerror})", fix, **keys)
    if manifest is None:
        problem = check_structure(path, period, root=root, data=data)
        return (None, problem) if problem is not None else (data, None)
    digest = hashlib.sha256(data).hexdigest()
    if digest in manifest.accepted(period):
        return data, None
    size = len(data)
    ref = rec if rec.get("sha256") else rec["pending"][-1]
    if size != ref["bytes"]:
        detail = (
            f"size is {size} bytes, recorded {ref['bytes']} (truncated or overwritten); "
            f"sha256 is {digest[:12]}..., recorded {ref['sha256'][:12]}..."
        )
        return None, Problem(path, "size", detail, fix, **keys)
    detail = f"sha256 is {digest[:12]}..., recorded {ref['sha256'][:12]}... (bytes changed on disk)"
    return None, Problem(path, "checksum", detail, fix, **keys)


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """Return the half-open UTC window ``[lo, hi)`` of a partition period (day, month or year)."""
    parts = [int(p) for p in period.split("-")]
    if len(parts) == 1:
        lo = datetime(parts[0], 1, 1, tzinfo=UTC)
        return lo, datetime(parts[0] + 1, 1, 1, tzinfo=UTC)
    if len(parts) == 2:
        y, m = parts
        lo = datetime(y, m, 1, tzinfo=UTC)
        return lo, datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    lo = datetime(*parts, tzinfo=UTC)
    return lo, lo + timedelta(days=1)


def frame_problem(
    df: pl.DataFrame, path: Path, period: str, *, root: Path, tf: str = "", sym: str = ""
) -> Problem | None:
    """Check a partition's bars against the folder (symbol, timeframe grid) and period."""
    if not (tf and sym):
        tf, sym = folder_keys(path.parent)
    keys = {"timeframe": tf, "symbol": sym, "period": period}
    fix = repair_fix(root)
    other = df.filter(pl.col("symbol") != sym)
    if other.height:
        found = sorted(other.get_column("symbol").unique().to_list())[:5]
        return Problem(
            path,
            "symbol",
            f"{other.height} row(s) carry symbol(s) {found}, but the folder is symbol={sym} "
            "(another symbol's file copied in?)",
            f"move the file to its own symbol folder or delete it, then {fix}",
            **keys,
        )
    try:
        lo, hi = period_bounds(period)
    except (ValueError, TypeError):
        return Problem(
            path,
            "period",
            f"file name {path.name!r} is not a partition period (YYYY, YYYY-MM or YYYY-MM-DD)",
            "remove the file (the store never writes such names)",
            **keys,
        )
    outside = df.filter((pl.col("ts") < lo) | (pl.col("ts") >= hi))
    if outside.height:
        first = outside.get_column("ts").min()
        return Problem(
            path,
            "period",
            f"{outside.height} row(s) lie outside the file's period {period} "
            f"[{lo.isoformat()}, {hi.isoformat()}), first at {first}",
            f"delete the file, then {fix}",
            **keys,
        )
    off = df.filter(Timeframe.parse(tf).off_grid(pl.col("ts")))
    if off.height:
        shown = ", ".join(str(t) for t in off.get_column("ts").head(3).to_list())
        return Problem(
            path,
            "timeframe",
            f"{off.height} row(s) are off the {tf} grid of the folder timeframe={tf} "
            f"(first: {shown}; bars of another timeframe?)",
            f"delete the file, then {fix}",
            **keys,
        )
    return None


def check_structure(
    path: Path, period: str, *, root: Path, data: bytes | None = None
) -> Problem | None:
    """Parse a partition (or its bytes ``data``, already read) and check its bars structurally
    (the check of a legacy partition)."""
    from workbench.data.schema import validate_bars
    from workbench.errors import SchemaError

    tf, sym = folder_keys(path.parent)
    keys = {"timeframe": tf, "symbol": sym, "period": period}
    fix = repair_fix(root)
    try:
        df = pl.read_parquet(path if data is None else data)
    except FileNotFoundError:
        return None
    except Exception as exc:  # polars raises several types for a damaged file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return Problem(path, "unreadable", f"not a readable parquet file ({reason})", fix, **keys)
    try:
        df = validate_bars(df)
    except SchemaError as exc:
        return Problem(path, "schema", f"bars break the contract: {exc}", fix, **keys)
    return frame_problem(df, path, period, root=root, tf=tf, sym=sym)


def fsync_dir(d: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(target: Path) -> Path:
    """Return a hidden temporary name beside ``target`` (readers never list it)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_temp(data: bytes, target: Path) -> Path:
    """Write ``data`` to a temporary file beside ``target``, fsync it and return its path."""
    tmp = temp_name(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def atomic_bytes(data: bytes, target: Path) -> None:
    """Replace ``target`` with ``data`` atomically: temp file, fsync, rename, fsync of the folder."""
    tmp = write_temp(data, target)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
