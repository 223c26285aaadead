"""Run a pipeline: validate the spec, execute each notebook with papermill, track it in MLflow.

Each run gets a folder ``runs/<pipeline>/<UTC timestamp>/`` holding the executed notebooks, each
step's outputs file and ``summary.json``. The runner stops at the first failing step, keeps the
failed notebook, and reports which cell failed and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench.config import WorkbenchConfig, config_hash, load_config
from workbench.errors import PipelineError
from workbench.pipeline.spec import (
    PipelineSpec,
    check_type,
    load_spec,
    notebook_parameters,
    parse_overrides,
    resolve_spec_path,
    substitute,
    validate_spec,
)


@dataclass
class StepResult:
    """Outcome of one step."""

    step: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str = ""
    notebook: str = ""
    error: str = ""
    overhead_seconds: float = 0.0


@dataclass
class PipelineResult:
    """Outcome of a pipeline run."""

    pipeline: str
    run_dir: Path
    parent_run_id: str
    parameters: dict[str, Any]
    steps: list[StepResult]

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.steps)

    def summary(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "status": "ok" if self.ok else "failed",
            "run_dir": str(self.run_dir),
            "mlflow_parent_run_id": self.parent_run_id,
            "parameters": self.parameters,
            "steps": [asdict(s) for s in self.steps],
        }

    def outputs(self, step: str) -> dict[str, Any]:
        """Return the outputs a step handed on."""
        path = self.run_dir / f"{step}.outputs.json"
        return json.loads(path.read_text())["outputs"] if path.exists() else {}


@contextlib.contextmanager
def _kernel_env(**values: str) -> Iterator[None]:
    """Set environment variables for the kernels papermill starts, and restore them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _read_outputs(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _notebook_html(ipynb: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    out = ipynb.with_suffix(".html")
    out.write_text(body)
    return out


def _log_notebook(run_id: str, ipynb: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    client.log_artifact(run_id, str(ipynb), "notebook")
    try:
        client.log_artifact(run_id, str(_notebook_html(ipynb)), "notebook")
    except Exception as exc:  # HTML is a convenience; the ipynb is the record
        client.set_tag(run_id, "notebook_html_error", str(exc)[:500])


def run_pipeline(
    name_or_path: str | Path,
    overrides: dict[str, Any] | Sequence[str] | None = None,
    *,
    cfg: WorkbenchConfig | None = None,
    runs_root: str | Path | None = None,
    echo: Callable[[str], None] = print,
    execution_timeout: int | None = 900,
) -> PipelineResult:
    """Validate and run a pipeline spec.

    Parameters
    ----------
    name_or_path : str or Path
        ``research``, ``pipelines/research.yaml`` or any spec path.
    overrides : dict or list of ``key=value``
        Values for the spec's shared parameters.
    runs_root : path, optional
        Parent of the run folders (default ``<project>/runs``).

    Returns
    -------
    PipelineResult
        ``ok`` is False when a step failed; the failed notebook is kept in the run folder.
    """
    import mlflow
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from workbench import tracking

    cfg = cfg or load_config()
    root = cfg.project_root
    spec: PipelineSpec = load_spec(resolve_spec_path(name_or_path, root))
    if overrides is None:
        overrides = {}
    elif not isinstance(overrides, dict):
        overrides = parse_overrides(list(overrides), spec)
    else:
        unknown = sorted(set(overrides) - set(spec.parameters))
        if unknown:
            raise PipelineError(
                f"pipeline {spec.name!r} has no parameter(s) {unknown}; valid: {sorted(spec.parameters)}."
            )
    shared = validate_spec(spec, dict(overrides), root)
    tracking.check_no_secrets(shared, cfg)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = Path(runs_root or root / "runs") / spec.name / stamp
    run_dir.mkdir(parents=True, exist_ok=False)
    uri = tracking.tracking_uri(cfg)
    exp_id = tracking.setup(cfg)
    client = mlflow.MlflowClient()
    parent = client.create_run(
        exp_id,
        run_name=f"{spec.name} {stamp}",
        tags={
            "pipeline": spec.name,
            "step": "pipeline",
            "config_hash": config_hash(cfg),
            "git_commit": tracking.git_commit(root),
            "run_dir": str(run_dir),
        },
    )
    parent_id = parent.info.run_id
    for k, v in shared.items():
        client.log_param(parent_id, k, v if isinstance(v, str) else json.dumps(v))

    scope: dict[str, Any] = {**shared, "run.dir": str(run_dir)}
    results: list[StepResult] = []
    failed = False
    for i, step in enumerate(spec.steps, start=1):
        if failed:
            results.append(StepResult(step.name, "skipped"))
            continue
        t_step = time.perf_counter()
        where = f"step {step.name!r}"
        params = substitute(dict(step.parameters), scope, where)
        nb_path = root / step.notebook
        nb_params = notebook_parameters(nb_path)
        for pname, value in params.items():
            reason = check_type(value, nb_params[pname]["inferred_type_name"])
            if reason:
                raise PipelineError(
                    f"{where}: parameter {pname!r} = {value!r} does not fit {nb_params[pname]['inferred_type_name']} ({reason})."
                )
        out_file = run_dir / f"{step.name}.outputs.json"
        params.update(output_path=str(out_file), parent_run_id=parent_id, pipeline=spec.name)
        out_nb = run_dir / f"{i:02d}_{step.name}.ipynb"
        echo(f"[{i}/{len(spec.steps)}] {step.name}: {step.notebook}")
        res = StepResult(step.name, "ok", notebook=str(out_nb))
        t_pm = time.perf_counter()
        try:
            with _kernel_env(MLFLOW_TRACKING_URI=uri):
                papermill.execute_notebook(
                    str(nb_path),
                    str(out_nb),
                    parameters=params,
                    kernel_name="python3",
                    progress_bar=False,
                    cwd=str(nb_path.parent),
                    execution_timeout=execution_timeout,
                )
        except PapermillExecutionError as exc:
            res.status = "failed"
            res.error = f"cell {exc.cell_index} (In [{exc.exec_count}]): {exc.ename}: {exc.evalue}"
            failed = True
        pm_seconds = time.perf_counter() - t_pm
        produced = _read_outputs(out_file)
        res.mlflow_run_id = produced.get("mlflow_run_id", "")
        res.metrics = produced.get("metrics", {})
        if not failed:
            missing = [k for k in step.outputs if k not in produced.get("outputs", {})]
            if missing:
                res.status, failed = "failed", True
                res.error = f"notebook finished but did not hand on declared output(s) {missing} (StageRun.hand_on)."
            for k, v in produced.get("outputs", {}).items():
                scope[f"steps.{step.name}.{k}"] = v
        if res.mlflow_run_id:
            _log_notebook(res.mlflow_run_id, out_nb)
            client.set_tag(res.mlflow_run_id, "notebook", step.notebook)
            client.log_dict(res.mlflow_run_id, params, "notebook/parameters.json")
            if res.status == "failed":
                client.set_terminated(res.mlflow_run_id, "FAILED")
                client.set_tag(res.mlflow_run_id, "error", res.error[:5000])
        res.seconds = round(time.perf_counter() - t_step, 3)
        res.overhead_seconds = round(res.seconds - pm_seconds, 3)
        results.append(res)
        if res.status == "failed":
            echo(f"  FAILED at {res.error}\n  failed notebook kept at {out_nb}")

    result = PipelineResult(spec.name, run_dir, parent_id, shared, results)
    (run_dir / "summary.json").write_text(json.dumps(result.summary(), indent=1, default=str))
    client.log_artifact(parent_id, str(run_dir / "summary.json"))
    client.set_terminated(parent_id, "FINISHED" if result.ok else "FAILED")
    return result
