"""Re-execute a tracked notebook run with the same parameters and data, and compare its metrics."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from workbench.config import WorkbenchConfig, load_config
from workbench.errors import PipelineError


@dataclass
class Reproduction:
    """The original and the new run, metric by metric."""

    original_run_id: str
    new_run_id: str
    comparison: pl.DataFrame
    same_data: bool
    same_code: bool

    @property
    def matches(self) -> bool:
        return self.same_data and bool(self.comparison["match"].all())


def reproduce(
    run_id: str, *, cfg: WorkbenchConfig | None = None, rel_tol: float = 1e-9
) -> Reproduction:
    """Re-run the notebook of MLflow run ``run_id`` with its recorded parameters and compare.

    The notebook path and the injected parameters come from the run (tag ``notebook``, artifact
    ``notebook/parameters.json``, both written by the pipeline runner). The new run is standalone
    (no parent) and its outputs go to a temporary folder. Metrics match when equal within
    ``rel_tol``; data match when the ``data_fingerprint`` tags are equal.
    """
    import mlflow
    import papermill

    from workbench import tracking

    cfg = cfg or load_config()
    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    notebook = run.data.tags.get("notebook")
    if not notebook:
        raise PipelineError(
            f"run {run_id} has no 'notebook' tag; only notebook steps run by `wb run` can be reproduced."
        )
    params = json.loads(
        Path(client.download_artifacts(run_id, "notebook/parameters.json")).read_text()
    )
    out_dir = Path(
        tempfile.mkdtemp(prefix="reproduce-", dir=cfg.path("runs"))
        if cfg.path("runs").exists()
        else tempfile.mkdtemp()
    )
    params.update(output_path=str(out_dir / "outputs.json"), parent_run_id="", pipeline="reproduce")
    nb = cfg.project_root / notebook
    papermill.execute_notebook(
        str(nb),
        str(out_dir / nb.name),
        parameters=params,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(nb.parent),
    )
    new_id = json.loads((out_dir / "outputs.json").read_text())["mlflow_run_id"]
    new = client.get_run(new_id)
    rows = []
    for key, old in sorted(run.data.metrics.items()):
        val = new.data.metrics.get(key)
        same = val is not None and (
            math.isclose(old, val, rel_tol=rel_tol, abs_tol=1e-12)
            or (math.isnan(old) and math.isnan(val))
        )
        rows.append({"metric": key, "original": old, "reproduced": val, "match": same})
    comparison = pl.DataFrame(
        rows,
        schema={
            "metric": pl.String,
            "original": pl.Float64,
            "reproduced": pl.Float64,
            "match": pl.Boolean,
        },
    )
    same_data = run.data.tags.get("data_fingerprint", "") == new.data.tags.get(
        "data_fingerprint", ""
    )
    same_code = run.data.tags.get("git_commit") == new.data.tags.get("git_commit")
    client.set_tag(new_id, "reproduces", run_id)
    return Reproduction(run_id, new_id, comparison, same_data, same_code)
