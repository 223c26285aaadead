"""Repair the bar store: re-fetch bad or missing partitions from their recorded source.

For each partition :meth:`BarStore.verify` names, the repair finds the source that wrote it (the
provenance in the folder's manifest, else the legacy ``_provenance.json``, else the ingest ledger's
chunks and sources), rebuilds that source, fetches the window the partition held (its recorded
first to last bar, else the ledger's chunks, else the whole period), replaces the partition (the
bad file moves to ``_quarantine/``), verifies it again and reports. A corrupt ingest ledger is
rebuilt from the manifests first. Sources rebuild from provenance through a small registry:
``synthetic`` and ``alpaca`` here, or any source factory with a ``from_provenance`` classmethod.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from workbench.data.integrity import CorruptPartitionError, Problem, period_bounds
from workbench.data.ledger import (
    LEDGER_NAME,
    ChunkLedger,
    LedgerCorruptError,
    check_ledger,
    provenance_key,
    rebuild_ledger,
)
from workbench.data.schema import empty_bars
from workbench.data.timeframe import Timeframe
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig
    from workbench.data.sources.base import Source
    from workbench.data.store import BarStore

_BUILDERS: dict[str, Callable[[dict[str, str], WorkbenchConfig | None], Source]] = {}


class UnrepairableError(WorkbenchError):
    """A partition's recorded source cannot be rebuilt; the message says what to do instead."""


def source_builder(name: str) -> Callable:
    """Register how to rebuild the source called ``name`` from its provenance."""

    def deco(fn: Callable) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return deco


@source_builder("synthetic")
def _synthetic(prov: dict[str, str], cfg: WorkbenchConfig | None) -> Source:
    from workbench.data.sources.synthetic import SyntheticSource

    return SyntheticSource(
        seed=int(prov["seed"]),
        alpha=float(prov["alpha"]),
        n_sectors=int(prov["n_sectors"]),
        start_price=float(prov["start_price"]),
        annual_vol=float(prov["annual_vol"]),
        base_volume=float(prov["base_volume"]),
        base_spread_bps=float(prov["base_spread_bps"]),
        calendar=prov["calendar"],
    )


@source_builder("alpaca")
def _alpaca(prov: dict[str, str], cfg: WorkbenchConfig | None) -> Source:
    from workbench.config import load_config
    from workbench.data.sources.alpaca import AlpacaSource

    src = AlpacaSource.from_config(cfg or load_config())
    src.feed = prov.get("feed", src.feed)
    src.adjustment = prov.get("adjustment", src.adjustment)
    return src


def source_from_provenance(prov: dict[str, str], cfg: WorkbenchConfig | None = None) -> Source:
    """Rebuild the source that produced bars with provenance ``prov``.

    Raises
    ------
    UnrepairableError
        If the source cannot be rebuilt or would not give the same data (its provenance differs).
    """
    from workbench.data.sources.base import get_source_factory

    name = prov.get("source", "")
    builder = _BUILDERS.get(name)
    if builder is None:
        try:
            factory = get_source_factory(name)
        except WorkbenchError:
            factory = None
        from_prov = getattr(factory, "from_provenance", None)
        if from_prov is None:
            files = f" ({prov['files']})" if "files" in prov else ""
            raise UnrepairableError(
                f"source {name!r} cannot be rebuilt from its provenance{files}. Fix: ingest the "
                f"window again from that source, e.g. `wb ingest --source {name or '...'} ...`."
            )
        src = from_prov(prov)
    else:
        try:
            src = builder(prov, cfg)
        except (KeyError, ValueError, WorkbenchError) as exc:
            raise UnrepairableError(
                f"source {name!r} cannot be rebuilt from its provenance ({exc}). Fix: ingest the "
                "window again with `wb ingest`."
            ) from None
    got = src.provenance()
    if provenance_key(got) != provenance_key(prov):
        diff = sorted(k for k in {*got, *prov} if str(got.get(k)) != str(prov.get(k)))
        raise UnrepairableError(
            f"source {name!r} as configured now differs from the one that wrote the partition in "
            f"{diff} (recorded {[prov.get(k) for k in diff]}, now {[got.get(k) for k in diff]}). "
            "Fix: configure the source as recorded, or ingest the window again with `wb ingest`."
        )
    return src


@dataclass
class RepairItem:
    """One bad partition (or manifest) and what the repair did about it."""

    path: Path
    check: str
    status: str  # repaired | removed | failed
    detail: str


@dataclass
class RepairReport:
    """Outcome of :func:`repair_store`."""

    items: list[RepairItem] = field(default_factory=list)
    ledger: str = "ok"  # ok | rebuilt (N chunks) | ...

    @property
    def ok(self) -> bool:
        return all(i.status != "failed" for i in self.items)

    @property
    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            [
                {"file": str(i.path), "check": i.check, "status": i.status, "detail": i.detail}
                for i in self.items
            ],
            schema={
                "file": pl.String,
                "check": pl.String,
                "status": pl.String,
                "detail": pl.String,
            },
        )


def _ledger(store: BarStore) -> ChunkLedger | None:
    if not (store.root / LEDGER_NAME).exists():
        return None
    try:
        return ChunkLedger(store.root / LEDGER_NAME)
    except LedgerCorruptError:
        return None


def recorded_provenance(
    store: BarStore, tf: Timeframe, symbol: str, period: str, ledger: ChunkLedger | None
) -> dict[str, str] | None:
    """Return the provenance recorded for a partition (manifest, legacy file, then ledger)."""
    try:
        prov = store.provenance(symbol, tf).get(period)
    except CorruptPartitionError:
        prov = None
    if prov:
        return prov
    if ledger is None:
        return None
    lo, hi = period_bounds(period)
    keys = [k for k, a, b in ledger.chunks_for(tf.name, symbol) if a < hi and b > lo]
    for key in reversed(keys):  # the latest chunk's source wrote last
        prov = ledger.source(key)
        if prov:
            return prov
    return None


def repair_window(
    store: BarStore, tf: Timeframe, symbol: str, period: str, ledger: ChunkLedger | None
) -> tuple[datetime, datetime]:
    """Return the window a partition held: recorded first..last bar, ledger chunks, or the period."""
    lo, hi = period_bounds(period)
    try:
        man = store.manifest(symbol, tf)
    except CorruptPartitionError:
        man = None
    rec = man.partitions.get(period) if man else None
    if rec and rec.get("first_ts"):
        a = datetime.fromisoformat(rec["first_ts"])
        b = datetime.fromisoformat(rec["last_ts"]) + tf.delta
        return max(a, lo), min(b, hi)
    if ledger is not None:
        spans = [(a, b) for _, a, b in ledger.chunks_for(tf.name, symbol) if a < hi and b > lo]
        if spans:
            return max(min(a for a, _ in spans), lo), min(max(b for _, b in spans), hi)
    return lo, hi


def periods_to_fix(store: BarStore, p: Problem) -> list[str]:
    if p.period:
        return [p.period]
    # a bad manifest: every partition of the folder is suspect
    return sorted(f.stem for f in p.path.parent.glob("[!.]*.parquet"))


def refetch(
    store: BarStore,
    source: Source,
    tf: Timeframe,
    symbol: str,
    windows: dict[str, tuple[datetime, datetime]],
) -> dict[str, int]:
    """Fetch each period's window from ``source`` and replace those partitions; return rows per period."""
    frames = [source.fetch([symbol], tf, a, b) for a, b in windows.values()]
    bars = pl.concat([f for f in frames if f.height]) if any(f.height for f in frames) else None
    if bars is not None:
        bars = bars.filter(pl.col("symbol") == symbol)
        lo = min(a for a, _ in windows.values())
        hi = max(b for _, b in windows.values())
        bars = bars.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
    store.write(
        bars if bars is not None else empty_bars(),
        tf,
        provenance=source.provenance(),
        replace=[(symbol, p) for p in windows],
    )
    out = {}
    for p in windows:
        lo, hi = period_bounds(p)
        out[p] = (
            0 if bars is None else bars.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)).height
        )
    return out


def repair_store(
    store: BarStore,
    cfg: WorkbenchConfig | None = None,
    *,
    symbols: Sequence[str] | None = None,
    timeframe: str | None = None,
    sources: dict[str, Source] | None = None,
) -> RepairReport:
    """Verify the store, rebuild a corrupt ledger, re-fetch every bad or missing partition.

    Parameters
    ----------
    store : BarStore
    cfg : WorkbenchConfig, optional
        Config used to rebuild sources that need it (Alpaca endpoints and keys).
    symbols, timeframe : optional
        Limit the repair to these.
    sources : dict, optional
        Sources to use by provenance key instead of rebuilding them (tests, notebooks).

    Returns
    -------
    RepairReport
        One item per bad file; ``ok`` when every one was repaired and verifies.
    """
    report = RepairReport()
    bad_ledger = check_ledger(store)
    if bad_ledger is not None:
        rb = rebuild_ledger(store)
        report.ledger = (
            f"rebuilt from the store ({rb.chunks} chunk(s), {rb.sources} source(s)); "
            f"the corrupt file is kept as {rb.kept_as}"
        )
    ledger = _ledger(store)
    rep = store.verify(symbols, timeframe)
    by_folder: dict[tuple[str, str], list[Problem]] = {}
    for p in rep.problems:
        by_folder.setdefault((p.timeframe, p.symbol), []).append(p)
    for (tf_name, symbol), problems in by_folder.items():
        tf = Timeframe.parse(tf_name)
        periods = sorted({q for p in problems for q in periods_to_fix(store, p)})
        groups: dict[str, dict[str, tuple[datetime, datetime]]] = {}
        provs: dict[str, dict[str, str] | None] = {}
        for period in periods:
            prov = recorded_provenance(store, tf, symbol, period, ledger)
            key = provenance_key(prov) if prov else ""
            provs[key] = prov
            groups.setdefault(key, {})[period] = repair_window(store, tf, symbol, period, ledger)
        for key, windows in groups.items():
            paths = {q: store.partition_path(symbol, tf, q) for q in windows}
            checks: dict[str, str] = {}
            for p in problems:
                for q in [p.period] if p.period else list(windows):
                    checks.setdefault(q, p.check)
            try:
                if not key:
                    raise UnrepairableError(
                        "no source is recorded for it (no manifest entry, provenance or ledger "
                        "chunk). Fix: delete the file and ingest the window again with `wb ingest`."
                    )
                src = (sources or {}).get(key) or source_from_provenance(provs[key] or {}, cfg)
                rows = refetch(store, src, tf, symbol, windows)
                still = store.verify([symbol], tf).problems
            except (WorkbenchError, OSError) as exc:
                for q, path in paths.items():
                    report.items.append(RepairItem(path, checks.get(q, "?"), "failed", str(exc)))
                continue
            bad_now = {p.path for p in still}
            for q, path in paths.items():
                if path in bad_now:
                    status, detail = "failed", "still fails verification after the re-fetch"
                elif rows[q]:
                    status, detail = "repaired", f"{rows[q]} bar(s) re-fetched from {src.name}"
                else:
                    status, detail = "removed", f"{src.name} has no bars for it; file quarantined"
                report.items.append(RepairItem(path, checks.get(q, "?"), status, detail))
    return report
