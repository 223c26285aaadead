"""Run a pipeline: validate the spec, execute each notebook with papermill, track it in MLflow.

Each run gets a folder ``runs/<pipeline>/<UTC timestamp>/`` holding the executed notebooks, each
step's outputs file and ``summary.json``. The runner stops at the first failing step, keeps the
failed notebook, and reports which cell failed and why. A step whose ``when:`` condition is false
is skipped, with the reason in the summary and in MLflow (a child run tagged ``skipped``).

Each step runs in a kernel process of its own, started (with its notebook's imports loaded)
while the steps before it run, and used only if its kernel spec, folder and environment are the
step's (:mod:`workbench.pipeline.kernels`); a step's kernel exits, and its notebook is logged to
MLflow, in the background while the next step runs (a failed step's, before the run stops).

A run holds its pipeline's run lock (:mod:`workbench.pipeline.lock`) from before the run folder
exists until the summary is written: a second run of the same pipeline, manual or scheduled, is
refused with a message naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from workbench.config import WorkbenchConfig, config_hash, load_config
from workbench.errors import PipelineError
from workbench.pipeline.kernels import KernelKey, KernelPool, new_kernel_manager
from workbench.pipeline.lock import RunLock, project_url, sqlite_url_in
from workbench.pipeline.spec import (
    PipelineSpec,
    StepSpec,
    check_type,
    check_values,
    load_spec,
    notebook_parameters,
    parse_overrides,
    parse_when,
    references,
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
    reason: str = ""  # why a step was skipped


@dataclass
class PipelineResult:
    """Outcome of a pipeline run."""

    pipeline: str
    run_dir: Path
    parent_run_id: str
    parameters: dict[str, Any]
    steps: list[StepResult]
    session: str = ""
    trigger: str = "manual"

    @property
    def ok(self) -> bool:
        """No step failed (steps skipped by their ``when:`` condition are fine)."""
        return not any(s.status == "failed" for s in self.steps)

    @property
    def skipped(self) -> dict[str, str]:
        """Skipped steps and why."""
        return {s.step: s.reason for s in self.steps if s.status == "skipped"}

    def summary(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "status": "ok" if self.ok else "failed",
            "session": self.session,
            "trigger": self.trigger,
            "run_dir": str(self.run_dir),
            "mlflow_parent_run_id": self.parent_run_id,
            "parameters": self.parameters,
            "skipped": self.skipped,
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


@contextlib.contextmanager
def kernel_manager(kernel_name: str = "python3") -> Iterator[Any]:
    """A kernel manager for one papermill execution, with CurveZMQ transport encryption when
    pyzmq supports it (the kernel then no longer warns "Kernel is running over TCP without
    encryption" into every run's output); the kernel is shut down afterwards."""
    km = new_kernel_manager(kernel_name)
    try:
        yield km
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=False)
        km.cleanup_resources()


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


def _log_notebook(run_id: str, ipynb: Path, client: Any = None) -> None:
    from mlflow import MlflowClient

    client = client or MlflowClient()
    client.log_artifact(run_id, str(ipynb), "notebook")
    try:
        client.log_artifact(run_id, str(_notebook_html(ipynb)), "notebook")
    except Exception as exc:  # HTML is a convenience; the ipynb is the record
        client.set_tag(run_id, "notebook_html_error", str(exc)[:500])


def _record_notebook(
    client: Any, res: StepResult, ipynb: Path, notebook: str, params: dict[str, Any]
) -> None:
    """Log a step's executed notebook (ipynb, HTML, parameters) to its run; a failed step's run
    is marked failed with the error."""
    _log_notebook(res.mlflow_run_id, ipynb, client)
    client.set_tag(res.mlflow_run_id, "notebook", notebook)
    client.log_dict(res.mlflow_run_id, params, "notebook/parameters.json")
    if res.status == "failed":
        client.set_terminated(res.mlflow_run_id, "FAILED")
        client.set_tag(res.mlflow_run_id, "error", res.error[:5000])


def _drain(records: list[Future]) -> None:
    """Wait for the notebooks being logged; an error in one is raised here."""
    while records:
        records.pop(0).result()


def current_session(now: datetime | None = None, calendar: str = "XNYS") -> date:
    """Return the trading session a run started at ``now`` is for by default.

    The New York date's session if that date is a session, else the previous session.
    """
    from workbench.data.calendar import get_calendar, sessions

    now = now or datetime.now(UTC)
    day = now.astimezone(get_calendar(calendar).tz).date()
    sch = sessions(date(day.year - 1, 1, 1), day, calendar)
    return sch["session"][-1]


def lock_url(cfg: WorkbenchConfig, runs_root: Path) -> str:
    """The run-lock database: ``schedule.lock_url``, else ``locks.db`` in the runs folder."""
    url = cfg.schedule.lock_url
    return sqlite_url_in(runs_root) if url is None else project_url(cfg.project_root, url)


def _skip_reason(step: StepSpec, scope: dict[str, Any], skipped: dict[str, str]) -> tuple[str, str]:
    """Return ``(reason, error)``: why the step is skipped, or why its condition is unusable."""
    refs = references(step.parameters) + ([parse_when(step.when, "")[0]] if step.when else [])
    for ref in refs:
        parts = ref.split(".")
        if parts[0] == "steps" and len(parts) == 3 and parts[1] in skipped:
            return f"needs ${{{ref}}} but step {parts[1]!r} was skipped ({skipped[parts[1]]})", ""
    if step.when is None:
        return "", ""
    ref, negated = parse_when(step.when, f"step {step.name!r}")
    value = scope.get(ref)
    if not isinstance(value, bool):
        return "", (
            f"when = {step.when!r}: ${{{ref}}} is {value!r} ({type(value).__name__}), not true or "
            "false. Fix: hand on a bool (stage.hand_on(passed=bool(...)))."
        )
    if value != negated:
        return "", ""
    shown = "true" if value else "false"
    src = (
        f"step {ref.split('.')[1]!r} handed on {ref.split('.')[2]}={shown}"
        if ref.startswith("steps.")
        else f"parameter {ref}={shown}"
    )
    return f"condition {step.when.strip()} is false ({src})", ""


def _record_skip(client: Any, exp_id: str, parent_id: str, pipeline: str, res: StepResult) -> None:
    """A skipped step is a child run too: tagged skipped, with the reason, status KILLED."""
    run = client.create_run(
        exp_id,
        run_name=f"{res.step} (skipped)",
        tags={
            "mlflow.parentRunId": parent_id,
            "pipeline": pipeline,
            "step": res.step,
            "skipped": "true",
            "skip_reason": res.reason[:5000],
        },
    )
    res.mlflow_run_id = run.info.run_id
    client.set_terminated(run.info.run_id, "KILLED")
    client.set_tag(parent_id, f"skipped.{res.step}", res.reason[:5000])


def run_pipeline(
    name_or_path: str | Path,
    overrides: dict[str, Any] | Sequence[str] | None = None,
    *,
    cfg: WorkbenchConfig | None = None,
    runs_root: str | Path | None = None,
    echo: Callable[[str], None] = print,
    execution_timeout: int | None = 900,
    session: date | str | None = None,
    trigger: str = "manual",
) -> PipelineResult:
    """Validate and run a pipeline spec, holding the pipeline's run lock.

    Parameters
    ----------
    name_or_path : str or Path
        ``research``, ``pipelines/research.yaml`` or any spec path.
    overrides : dict or list of ``key=value``
        Values for the spec's shared parameters.
    runs_root : path, optional
        Parent of the run folders (default ``<project>/runs``).
    execution_timeout : int, optional
        Seconds a cell may run, for steps without their own ``timeout``.
    session : date or ISO string, optional
        Trading session the run is for (``${run.session}``; default: the New York date's session,
        else the previous one). Recorded in the lock, the summary and MLflow.
    trigger : str
        Who started the run: ``manual`` or ``schedule:<job>``.

    Returns
    -------
    PipelineResult
        ``ok`` is False when a step failed; the failed notebook is kept in the run folder.

    Raises
    ------
    PipelineLocked
        If another run of the pipeline holds its lock (nothing is run).
    PipelineError
        If the spec or an override is invalid (nothing is run).
    """
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
    shared = validate_spec(spec, dict(overrides), root, cfg)
    tracking.check_no_secrets(shared, cfg)
    tracking.check_uri(cfg)  # a tracking store that cannot be written fails here, not mid-run
    if session is None:
        session = current_session(calendar=cfg.data.calendar)
    session = session.isoformat() if isinstance(session, date) else str(session)

    runs = Path(runs_root or root / "runs")
    locks = RunLock(lock_url(cfg, runs))
    holder = locks.acquire(spec.name, session=session, trigger=trigger)
    try:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        run_dir = runs / spec.name / stamp
        run_dir.mkdir(parents=True, exist_ok=False)
        holder = locks.update_run_dir(holder, str(run_dir))
        return _run(spec, shared, cfg, run_dir, stamp, session, trigger, echo, execution_timeout)
    finally:
        locks.release(holder)
        locks.close()


def _run(
    spec: PipelineSpec,
    shared: dict[str, Any],
    cfg: WorkbenchConfig,
    run_dir: Path,
    stamp: str,
    session: str,
    trigger: str,
    echo: Callable[[str], None],
    execution_timeout: int | None,
) -> PipelineResult:
    from workbench import tracking

    uri = tracking.tracking_uri(cfg)
    exp_id = tracking.setup(cfg)  # sets MLFLOW_EXPERIMENT_ID, which the kernels inherit
    kernel_env = {"MLFLOW_TRACKING_URI": uri}  # what every step's kernel gets on top of ours
    with KernelPool() as kernels:  # the first steps' kernels start while the parent run is made
        return _run_steps(
            spec, shared, cfg, run_dir, stamp, session, trigger, echo, execution_timeout, exp_id,
            kernel_env, kernels,
        )  # fmt: skip


def _run_steps(
    spec: PipelineSpec,
    shared: dict[str, Any],
    cfg: WorkbenchConfig,
    run_dir: Path,
    stamp: str,
    session: str,
    trigger: str,
    echo: Callable[[str], None],
    execution_timeout: int | None,
    exp_id: str,
    kernel_env: dict[str, str],
    kernels: KernelPool,
) -> PipelineResult:
    import mlflow
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from workbench import tracking
    from workbench.pipeline.engine import ENGINE

    root = cfg.project_root
    prepared = 0

    def prepare_up_to(n: int) -> None:  # kernels for the steps before index n, started ahead
        nonlocal prepared
        while prepared < min(n, len(spec.steps)):
            nb = root / spec.steps[prepared].notebook
            kernels.prepare(KernelKey.for_step(nb, kernel_env))
            prepared += 1

    prepare_up_to(kernels.ahead)
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
            "session": session,
            "trigger": trigger,
        },
    )
    parent_id = parent.info.run_id
    for k, v in shared.items():
        client.log_param(parent_id, k, v if isinstance(v, str) else json.dumps(v))

    scope: dict[str, Any] = {**shared, "run.dir": str(run_dir), "run.session": session}
    results: list[StepResult] = []
    skipped: dict[str, str] = {}
    failed = ""
    recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wb-record")
    records: list[Future] = []
    try:
        for i, step in enumerate(spec.steps, start=1):
            if failed:
                results.append(StepResult(step.name, "skipped", reason=f"step {failed!r} failed"))
                continue
            t_step = time.perf_counter()
            where = f"step {step.name!r}"
            reason, error = _skip_reason(step, scope, skipped)
            if reason or error:
                res = StepResult(
                    step.name, "failed" if error else "skipped", reason=reason, error=error
                )
                if error:
                    failed = step.name
                    echo(f"[{i}/{len(spec.steps)}] {step.name}: FAILED: {error}")
                else:
                    skipped[step.name] = reason
                    prepare_up_to(i + kernels.ahead)
                    echo(f"[{i}/{len(spec.steps)}] {step.name}: skipped: {reason}")
                    _record_skip(client, exp_id, parent_id, spec.name, res)
                res.seconds = round(time.perf_counter() - t_step, 3)
                results.append(res)
                continue
            params = substitute(dict(step.parameters), scope, where)
            nb_path = root / step.notebook
            nb_params = notebook_parameters(nb_path)
            for pname, value in params.items():
                reason = check_type(value, nb_params[pname]["inferred_type_name"])
                if reason:
                    raise PipelineError(
                        f"{where}: parameter {pname!r} = {value!r} does not fit {nb_params[pname]['inferred_type_name']} ({reason})."
                    )
            bad_values = check_values(params, where, cfg)
            if bad_values:
                raise PipelineError("; ".join(bad_values))
            out_file = run_dir / f"{step.name}.outputs.json"
            params.update(output_path=str(out_file), parent_run_id=parent_id, pipeline=spec.name)
            out_nb = run_dir / f"{i:02d}_{step.name}.ipynb"
            echo(f"[{i}/{len(spec.steps)}] {step.name}: {step.notebook}")
            res = StepResult(step.name, "ok", notebook=str(out_nb))
            t_pm = time.perf_counter()
            # a kernel of its own: the one started ahead for this step when it was started with
            # this step's kernel spec, folder and environment, else a fresh one
            km, _ = kernels.take(KernelKey.for_step(nb_path, kernel_env))
            prepare_up_to(i + kernels.ahead)  # the next steps' kernels start while this one runs
            done = False
            try:
                papermill.execute_notebook(
                    str(nb_path),
                    str(out_nb),
                    parameters=params,
                    engine_name=ENGINE,
                    kernel_name="python3",
                    progress_bar=False,
                    cwd=str(nb_path.parent),
                    execution_timeout=step.timeout or execution_timeout,
                    km=km,
                    kc=km.wb_client,
                )
                done = True
            except PapermillExecutionError as exc:
                res.status = "failed"
                res.error = (
                    f"cell {exc.cell_index} (In [{exc.exec_count}]): {exc.ename}: {exc.evalue}"
                )
                failed = step.name
            finally:
                if not done:  # a failed or interrupted step's kernel has exited before it is told
                    kernels.release(km, background=False)
            pm_seconds = time.perf_counter() - t_pm
            produced = _read_outputs(out_file)
            res.mlflow_run_id = produced.get("mlflow_run_id", "")
            res.metrics = produced.get("metrics", {})
            if not failed:
                missing = [k for k in step.outputs if k not in produced.get("outputs", {})]
                if missing:
                    res.status, failed = "failed", step.name
                    res.error = f"notebook finished but did not hand on declared output(s) {missing} (StageRun.hand_on)."
                for k, v in produced.get("outputs", {}).items():
                    scope[f"steps.{step.name}.{k}"] = v
            if done:  # the notebook ran to its end: its kernel exits in the background if ok
                kernels.release(km, background=res.status == "ok")
            if res.mlflow_run_id and res.status == "ok":  # logged while the next step runs
                records.append(
                    recorder.submit(_record_notebook, client, res, out_nb, step.notebook, params)
                )
            elif res.mlflow_run_id:
                _drain(records)  # a failed step's record is complete before the run stops
                _record_notebook(client, res, out_nb, step.notebook, params)
            res.seconds = round(time.perf_counter() - t_step, 3)
            res.overhead_seconds = round(res.seconds - pm_seconds, 3)
            results.append(res)
            if res.status == "failed":
                echo(f"  FAILED at {res.error}\n  failed notebook kept at {out_nb}")
        _drain(records)
    except BaseException as exc:  # a runner error or an interrupt: keep the record honest
        recorder.shutdown(wait=True)
        client.set_tag(parent_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(parent_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise

    recorder.shutdown(wait=True)
    result = PipelineResult(spec.name, run_dir, parent_id, shared, results, session, trigger)
    (run_dir / "summary.json").write_text(json.dumps(result.summary(), indent=1, default=str))
    client.log_artifact(parent_id, str(run_dir / "summary.json"))
    kernels.close()  # every step's kernel has exited before the parent run is terminated
    client.set_terminated(parent_id, "FINISHED" if result.ok else "FAILED")
    return result
