"""Notebook conveniences: display defaults for tables and plotly figures, run-folder defaults."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from workbench.config import WorkbenchConfig


def setup_display() -> None:
    """Set plotly and polars display defaults that work in JupyterLab, papermill and HTML export."""
    import plotly.io as pio
    import polars as pl

    pio.renderers.default = "plotly_mimetype+notebook_connected"
    pl.Config.set_tbl_rows(25)
    pl.Config.set_tbl_cols(16)
    pl.Config.set_fmt_str_lengths(60)


def work_dir(cfg: WorkbenchConfig, output_path: str, step: str) -> Path:
    """Return the folder for a step's files: beside the runner's outputs file, else runs/interactive/."""
    if output_path:
        d = Path(output_path).parent
    else:
        d = cfg.path("runs") / "interactive" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    d.mkdir(parents=True, exist_ok=True)
    return d
