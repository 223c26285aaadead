"""One row of ``benchmarks/RESULTS.md``: a benchmark's figure beside its peer's, and its target.

Every benchmark calls :func:`report` once per row it measures; the row is printed (ratio and
whether the target is met) and, when ``benchmarks/run_all.py`` runs the benchmark, appended as
one JSON line to the file named by ``$BENCH_REPORT_PATH``, from which ``run_all.py`` writes the
table. Figures come from runs interleaved with the peer's in the same process, best of N.

    from _report import report
    report("features: EMA/RSI/ATR/z-score, 500 x 10,000", ours=54.1, peer=52.0,
           unit="M rows/s", peer_label="TA-Lib C on numpy", target=1.0)

``target`` is a minimum ratio ours / peer (``kind="ratio"``, throughputs: higher is better), a
floor on our figure (``kind="min"``, e.g. ``>= 2`` M bars/s) or a ceiling on it (``kind="max"``,
e.g. ``<= 60`` s); None: reported for information.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

ENV = "BENCH_REPORT_PATH"
Kind = Literal["ratio", "min", "max"]


def load_text() -> str:
    """``uptime``'s load averages and the core count, e.g. ``1.20 0.90 0.75 (2 cores)``."""
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f} ({os.cpu_count()} cores)"


def _target_text(target: float | None, kind: Kind, unit: str) -> str:
    if target is None:
        return "-"
    if kind == "ratio":
        return f">= {target:g}x peer"
    return f"{'>=' if kind == 'min' else '<='} {target:g} {unit}"


def report(
    row: str,
    ours: float,
    peer: float | None = None,
    *,
    unit: str,
    ours_label: str = "workbench",
    peer_label: str = "",
    target: float | None = None,
    kind: Kind = "ratio",
    note: str = "",
) -> dict[str, Any]:
    """Print one result row and hand it to ``run_all.py``; return it.

    Parameters
    ----------
    row : str
        The row's name (what is measured, and the shape).
    ours, peer : float
        Our figure and the peer's in ``unit`` (throughputs: higher is better; for ``kind="max"``
        rows, e.g. seconds, lower is). ``peer`` None: no peer for this row.
    unit : str
        Unit of both figures, e.g. ``"M bars/s"`` or ``"s"``.
    ours_label, peer_label : str
        What ran on each side.
    target : float, optional
        See the module docstring; ``kind`` says how it reads.
    note : str
        Anything the reader needs to judge the row (sizes, what the peer's figure includes).
    """
    ours = float(ours)  # numpy scalars (and the bools compared from them) are not JSON
    peer = float(peer) if peer is not None else None
    ratio = None
    if peer:
        ratio = peer / ours if kind == "max" else ours / peer
    if target is None:
        met = None
    elif kind == "ratio":
        met = ratio is not None and ratio >= target
    elif kind == "min":
        met = ours >= target
    else:
        met = ours <= target
    out = {
        "row": row,
        "ours": ours,
        "peer": peer,
        "unit": unit,
        "ours_label": ours_label,
        "peer_label": peer_label,
        "ratio": ratio,
        "target": _target_text(target, kind, unit),
        "met": met,
        "load": load_text(),
        "note": note,
        "bench": Path(sys.argv[0]).name,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    ratio_txt = f"ratio {ratio:.2f}x" if ratio is not None else "no peer"
    verdict = {None: "no target", True: "target MET", False: "target NOT met"}[met]
    peer_txt = f" vs {peer_label} {peer:,.3g}" if peer is not None else ""
    print(
        f"RESULT {row}: {ours_label} {ours:,.3g}{peer_txt} {unit}; {ratio_txt}; "
        f"{out['target']}: {verdict} (load {out['load']})",
        flush=True,
    )
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(out) + "\n")
    return out


def store_rows(
    row: str,
    bars: Any,
    insert: Any,
    read: Any,
    repeat: int = 3,
) -> None:
    """Report the store's insert and validated read beside a plain polars parquet write / read of
    the same frame (one file), interleaved, best of ``repeat``.

    ``insert(root)`` writes ``bars`` into a new store at ``root`` (a fresh folder each round);
    ``read()`` reads them back from an existing store. Targets: insert >= 2, read >= 10 M bars/s.
    """
    import tempfile

    import polars as pl

    times: dict[str, list[float]] = {k: [] for k in ("insert", "write", "read", "pl_read")}
    n = bars.height
    with tempfile.TemporaryDirectory() as d:
        for i in range(repeat):
            root, path = Path(d) / f"store{i}", Path(d) / f"plain{i}.parquet"
            for key, fn in (
                ("insert", lambda root=root: insert(root)),
                ("write", lambda path=path: bars.write_parquet(path)),
                ("read", read),
                ("pl_read", lambda path=path: pl.read_parquet(path)),
            ):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    best = {k: n / min(v) / 1e6 for k, v in times.items()}
    report(f"{row}: insert", best["insert"], best["write"], unit="M bars/s",
           ours_label="BarStore.write (new keys)", peer_label="polars write_parquet, one file",
           target=2.0, kind="min", note=f"{n:,} bars, best of {repeat}")  # fmt: skip
    report(f"{row}: validated read", best["read"], best["pl_read"], unit="M bars/s",
           ours_label="BarStore.read (checksums, contract)", peer_label="polars read_parquet",
           target=10.0, kind="min")  # fmt: skip
