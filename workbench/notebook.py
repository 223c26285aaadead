"""Notebook conveniences: display defaults, one-line errors, run-folder defaults, and inputs left
empty filled from the latest output of the step before.

Run top to bottom in JupyterLab with its defaults, a notebook whose input is empty (a features
table, a model version) takes it from the newest ``<step>.outputs.json`` under ``runs/`` that
holds it: what the previous step handed on, in a pipeline run or an interactive one (a step run by
hand writes ``runs/interactive/<step>.outputs.json``). When there is none, the notebook stops at
once with one line naming the parameter and how to fill it (:class:`MissingInput`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench.config import WorkbenchConfig
from workbench.errors import WorkbenchError


class MissingInput(WorkbenchError):
    """A notebook input is empty and no earlier step has handed one on."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def _one_line(
    shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None
) -> list[str]:
    stb = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, stb)  # the cell still fails (papermill sees the error)
    return stb


def setup_display() -> None:
    """Set plotly and polars display defaults that work in JupyterLab, papermill and HTML export,
    and show the workbench's own errors (whose messages name the fix) as one line, not a
    traceback."""
    import plotly.io as pio
    import polars as pl

    pio.renderers.default = "plotly_mimetype+notebook_connected"
    pl.Config.set_tbl_rows(25)
    pl.Config.set_tbl_cols(16)
    pl.Config.set_fmt_str_lengths(60)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the notebook extra
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((WorkbenchError,), _one_line)


def work_dir(cfg: WorkbenchConfig, output_path: str, step: str) -> Path:
    """Return the folder for a step's files: beside the runner's outputs file, else runs/interactive/."""
    if output_path:
        d = Path(output_path).parent
    else:
        d = cfg.path("runs") / "interactive" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    d.mkdir(parents=True, exist_ok=True)
    return d


def interactive_outputs(cfg: WorkbenchConfig, step: str) -> Path:
    """Where a step run by hand (no runner) writes what it hands on."""
    return cfg.path("runs") / "interactive" / f"{step}.outputs.json"


def latest_outputs(
    cfg: WorkbenchConfig, step: str, keys: Sequence[str]
) -> tuple[dict, Path | None]:
    """Return the newest outputs of ``step`` under ``runs/`` that hold every key in ``keys``,
    and the file they came from (``({}, None)`` when there are none)."""
    runs = cfg.path("runs")
    if not runs.is_dir():
        return {}, None
    files = sorted(
        runs.glob(f"**/{step}.outputs.json"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for f in files:
        try:
            outputs = json.loads(f.read_text()).get("outputs", {})
        except (OSError, json.JSONDecodeError):
            continue
        if all(k in outputs and not _empty(outputs[k]) for k in keys):
            return outputs, f
    return {}, None


def _empty(value: Any) -> bool:
    if value is None or (isinstance(value, str | list | tuple | dict) and not value):
        return True
    return isinstance(value, float) and math.isnan(value)


def fill_empty(
    cfg: WorkbenchConfig,
    step: str,
    values: Mapping[str, Any],
    *,
    required: str,
    hint: str,
    also_zero: Sequence[str] = (),
) -> dict[str, Any]:
    """Fill the empty ones of ``values`` from the latest outputs of ``step``.

    Nothing is filled when ``values[required]`` is given (the caller chose its inputs). Otherwise
    every key of ``values`` that is empty (``""``, ``[]``, ``None``, NaN, and 0 for the keys in
    ``also_zero``) takes the output of the same name. Raises :class:`MissingInput` naming
    ``required`` and ``hint`` when no run of ``step`` handed it on.
    """
    out = dict(values)
    if not _empty(out[required]):
        return out
    outputs, source = latest_outputs(cfg, step, [required])
    if source is None:
        raise MissingInput(
            f"{required} is empty and no {step} step has handed one on under {cfg.path('runs')}. "
            f"Fix: {hint}"
        )
    filled = [
        k for k, v in values.items() if k in outputs and (_empty(v) or (k in also_zero and v == 0))
    ]
    out.update({k: outputs[k] for k in filled})
    print(f"{', '.join(filled)} from {source}")
    return out


def store_root_or_default(cfg: WorkbenchConfig, store_root: str, *, required: bool = True) -> str:
    """An empty store folder: the latest ingest step's, else config ``store.root`` when it holds
    bars. Raises :class:`MissingInput` naming ``store_root`` when neither does (nothing ingested
    yet), before the step records anything; with ``required=False`` (a step that reports an empty
    store itself, as the monitor does) returns ``store.root`` then."""
    if store_root:
        return store_root
    outputs, source = latest_outputs(cfg, "ingest", ["store_root"])
    if source is not None:
        print(f"store_root from {source}")
        return str(outputs["store_root"])
    from workbench.data.store import BarStore

    root = cfg.path(cfg.store.root)
    if required and not BarStore(root).timeframes():
        raise MissingInput(
            f"store_root is empty, no ingest step has handed one on under {cfg.path('runs')} and "
            f"store.root ({root}) holds no bars. Fix: run 01_ingest (or `wb ingest`) first, or "
            "set store_root to a bar store folder."
        )
    return str(root)
