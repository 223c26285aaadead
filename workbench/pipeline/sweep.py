"""Sweeps: the cartesian product of parameter values as independent pipeline runs.

>>> res = run_sweep("research", ["seed=1,2", "alpha=0,0.25"], executor="dask", workers=2)  # doctest: +SKIP

Each variant is a full pipeline run (:func:`workbench.pipeline.runner.run_pipeline`) with its own
run folder ``runs/sweeps/<sweep id>/vNN/<pipeline>/<stamp>/`` and its own MLflow parent run,
tagged ``sweep_id``, ``sweep_variant`` (e.g. ``seed=1,alpha=0``) and ``sweep_run_id``. One more
MLflow run, the sweep run (tag ``step=sweep``), holds the comparison table (one row per variant:
parameters, status, failing step and cell, seconds, every step metric as ``<step>.<metric>``) and
a plotly figure of the chosen metrics by variant.

Every variant is validated before anything runs. A variant that fails is reported with its failing
step and cell; the others finish. On Dask each variant runs in a worker process of its own (its
own environment, its own papermill kernels with their own connection files and ports); the sweep
holds the pipeline's run lock for its whole duration, and each variant runs under a lock of its
own in its variant folder, so variants of one pipeline run side by side.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from workbench.config import WorkbenchConfig, load_config
from workbench.errors import PipelineError
from workbench.pipeline.executor import open_executor, resolve_kind
from workbench.pipeline.lock import RunLock, sqlite_url_in
from workbench.pipeline.runner import current_session, lock_url, run_pipeline
from workbench.pipeline.spec import load_spec, parse_overrides, resolve_spec_path, validate_spec


@dataclass
class VariantResult:
    """Outcome of one variant of a sweep."""

    index: int
    label: str  # "seed=1,alpha=0"
    overrides: dict[str, Any]
    status: str  # ok | failed
    seconds: float = 0.0
    run_dir: str = ""
    parent_run_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # "<step>.<metric>"
    failed_step: str = ""
    error: str = ""  # the failing cell and exception, or why the run could not start


@dataclass
class SweepResult:
    """Outcome of a sweep: every variant, the comparison table and the sweep's MLflow run."""

    sweep_id: str
    pipeline: str
    executor: str
    folder: Path
    sweep_run_id: str
    variants: list[VariantResult]
    table: pl.DataFrame
    seconds: float

    @property
    def ok(self) -> bool:
        return all(v.status == "ok" for v in self.variants)

    @property
    def failed(self) -> list[VariantResult]:
        return [v for v in self.variants if v.status != "ok"]


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,[a, b]`` at the commas outside brackets, braces and quotes."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(items: Sequence[str], spec: Any) -> list[dict[str, Any]]:
    """Return the variants (override dicts) of ``-p name=v1,v2`` items, in cartesian order.

    Raises
    ------
    PipelineError
        On an item without ``=``, an empty value, a repeated or unknown parameter.
    """
    axes: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(
                f"sweep parameter {item!r} is not name=v1,v2. Fix: e.g. -p seed=1,2,3"
            )
        name, values = (s.strip() for s in item.split("=", 1))
        if name in axes:
            raise PipelineError(
                f"sweep parameter {name!r} is given twice. Fix: one -p {name}=v1,v2,... "
            )
        vals = split_values(values)
        if any(v == "" for v in vals):
            raise PipelineError(
                f"sweep parameter {name}={values!r} has an empty value. Fix: e.g. -p {name}=1,2"
            )
        axes[name] = vals
    if not axes:
        raise PipelineError("a sweep needs at least one -p name=v1,v2. Fix: e.g. -p seed=1,2")
    names = list(axes)
    return [
        parse_overrides([f"{n}={v}" for n, v in zip(names, combo, strict=True)], spec)
        for combo in itertools.product(*(axes[n] for n in names))
    ]


def variant_label(overrides: dict[str, Any]) -> str:
    """``seed=1,alpha=0`` (values as JSON, strings bare)."""
    return ",".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()
    )


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
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


def run_variant(task: dict[str, Any]) -> dict[str, Any]:
    """Run one variant (a Dask task or a local call): its pipeline run, then the sweep tags."""
    from mlflow import MlflowClient

    cfg: WorkbenchConfig = task["cfg"]
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    runtime = folder / "jupyter-runtime"  # kernel connection files of this variant only
    runtime.mkdir(exist_ok=True)
    own = cfg.model_copy(
        update={"schedule": cfg.schedule.model_copy(update={"lock_url": sqlite_url_in(folder)})}
    )
    lines: list[str] = []
    t0 = time.perf_counter()
    with _environ(MLFLOW_TRACKING_URI=task["tracking_uri"], JUPYTER_RUNTIME_DIR=str(runtime)):
        res = run_pipeline(
            task["spec_path"],
            task["overrides"],
            cfg=own,
            runs_root=folder,
            echo=lines.append,
            execution_timeout=task["execution_timeout"],
            session=task["session"],
            trigger=f"sweep:{task['sweep_id']}",
        )
        client = MlflowClient()
        for k, v in {
            "sweep_id": task["sweep_id"],
            "sweep_variant": task["label"],
            "sweep_index": str(task["index"]),
            "sweep_run_id": task["sweep_run_id"],
        }.items():
            client.set_tag(res.parent_run_id, k, v)
    failed = [s for s in res.steps if s.status == "failed"]
    return {
        "status": "ok" if res.ok else "failed",
        "seconds": round(time.perf_counter() - t0, 3),
        "run_dir": str(res.run_dir),
        "parent_run_id": res.parent_run_id,
        "metrics": {f"{s.step}.{k}": float(v) for s in res.steps for k, v in s.metrics.items()},
        "failed_step": failed[0].step if failed else "",
        "error": failed[0].error if failed else "",
        "log": lines,
    }


def comparison_table(variants: Sequence[VariantResult]) -> pl.DataFrame:
    """One row per variant: parameters (as text), status, failure, seconds and metrics."""
    params = list(dict.fromkeys(k for v in variants for k in v.overrides))
    metrics = sorted({k for v in variants for k in v.metrics})
    rows = []
    for v in variants:
        row: dict[str, Any] = {"variant": v.label}
        row.update({p: variant_label({p: v.overrides[p]}).split("=", 1)[1] for p in params})
        row.update(status=v.status, failed_step=v.failed_step, error=v.error, seconds=v.seconds)
        row.update({m: v.metrics.get(m) for m in metrics})
        rows.append(row)
    schema = {"variant": pl.String, **dict.fromkeys(params, pl.String)}
    schema |= {"status": pl.String, "failed_step": pl.String, "error": pl.String}
    schema |= {"seconds": pl.Float64, **dict.fromkeys(metrics, pl.Float64)}
    return pl.DataFrame(rows, schema=schema, orient="row")


def metrics_figure(table: pl.DataFrame, metrics: Sequence[str]) -> Any:
    """A plotly bar chart per chosen metric, variants on the x axis."""
    from plotly.subplots import make_subplots

    metrics = list(metrics) or ["seconds"]
    fig = make_subplots(rows=len(metrics), cols=1, subplot_titles=metrics, shared_xaxes=True)
    for i, m in enumerate(metrics, start=1):
        fig.add_bar(
            x=table["variant"].to_list(),
            y=table[m].to_list() if m in table.columns else [None] * table.height,
            name=m,
            row=i,
            col=1,
        )
    fig.update_layout(
        title="Sweep: metrics by variant", showlegend=False, height=260 * len(metrics) + 120
    )
    return fig


def _choose_metrics(table: pl.DataFrame, chosen: Sequence[str] | None, limit: int = 6) -> list[str]:
    if chosen:
        missing = [m for m in chosen if m not in table.columns]
        if missing:
            have = [c for c in table.columns if "." in c]
            raise PipelineError(
                f"--metric {missing} is not a metric of this sweep's runs; they report {have}. "
                "Fix: name metrics as <step>.<metric>."
            )
        return list(chosen)
    ok = table.filter(pl.col("status") == "ok")
    return [c for c in table.columns if "." in c and ok[c].null_count() == 0][:limit]


def run_sweep(
    pipeline: str | Path,
    grid: Sequence[str],
    *,
    executor: str | None = None,
    workers: int | None = None,
    metrics: Sequence[str] | None = None,
    cfg: WorkbenchConfig | None = None,
    runs_root: str | Path | None = None,
    echo: Callable[[str], None] = print,
    execution_timeout: int | None = 900,
) -> SweepResult:
    """Run every variant of ``grid`` (``["seed=1,2", "alpha=0,0.25"]``) as its own pipeline run.

    Parameters
    ----------
    executor : {"local", "dask"}, optional
        Default ``dask.executor``. ``dask`` starts a LocalCluster of ``workers`` processes (or
        uses ``dask.address``).
    metrics : list of ``<step>.<metric>``, optional
        Metrics of the sweep figure (default: the first six every finished variant reports).

    Raises
    ------
    PipelineError
        When the grid or a variant is invalid (nothing runs).
    PipelineLocked
        When a run of the pipeline holds its lock.
    """
    import mlflow

    from workbench import tracking

    cfg = cfg or load_config()
    root = cfg.project_root
    spec_path = resolve_spec_path(pipeline, root)
    spec = load_spec(spec_path)
    variants = parse_grid(grid, spec)
    for ov in variants:  # every variant valid before anything runs
        validate_spec(spec, dict(ov), root)
    kind = resolve_kind(executor, cfg.dask)
    session = current_session(calendar=cfg.data.calendar).isoformat()
    runs = Path(runs_root or root / "runs")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    sweep_id = f"{spec.name}-{stamp}"
    folder = runs / "sweeps" / sweep_id
    folder.mkdir(parents=True, exist_ok=False)

    uri = tracking.tracking_uri(cfg)
    exp_id = tracking.setup(cfg)
    client = mlflow.MlflowClient()
    locks = RunLock(lock_url(cfg, runs))
    holder = locks.acquire(spec.name, session=session, trigger=f"sweep:{sweep_id}")
    t0 = time.perf_counter()
    sweep_run = client.create_run(
        exp_id,
        run_name=f"sweep {sweep_id}",
        tags={
            "pipeline": spec.name,
            "step": "sweep",
            "sweep_id": sweep_id,
            "executor": kind,
            "sweep_folder": str(folder),
            "grid": json.dumps(list(grid)),
        },
    )
    run_id = sweep_run.info.run_id
    status = "FAILED"
    try:
        holder = locks.update_run_dir(holder, str(folder))
        tasks = [
            {
                "cfg": cfg,
                "spec_path": str(spec_path),
                "overrides": ov,
                "label": variant_label(ov),
                "index": i,
                "folder": str(folder / f"v{i:02d}"),
                "tracking_uri": uri,
                "sweep_id": sweep_id,
                "sweep_run_id": run_id,
                "session": session,
                "execution_timeout": execution_timeout,
            }
            for i, ov in enumerate(variants)
        ]
        echo(f"sweep {sweep_id}: {len(tasks)} variants on {kind}; folder {folder}")
        with open_executor(kind, cfg, workers=workers, echo=echo) as ex:
            n_workers = ex.workers
            outcomes = ex.map(run_variant, tasks, keys=[f"v{i:02d}" for i in range(len(tasks))])
        results = []
        for task, out in zip(tasks, outcomes, strict=True):
            v = VariantResult(task["index"], task["label"], task["overrides"], "failed")
            if out.ok:
                got = dict(out.value)
                got.pop("log", None)
                v = VariantResult(task["index"], task["label"], task["overrides"], **got)
            else:
                v.error = f"the run did not start or crashed: {out.error}"
            results.append(v)
            mark = "ok" if v.status == "ok" else f"FAILED at step {v.failed_step!r}: {v.error}"
            echo(f"  {v.label}: {mark}")
        table = comparison_table(results)
        chosen = _choose_metrics(table, metrics)
        table.write_csv(folder / "comparison.csv")
        client.log_artifact(run_id, str(folder / "comparison.csv"), "sweep")
        client.log_table(run_id, table.to_pandas(), "sweep/comparison.json")
        client.log_figure(run_id, metrics_figure(table, chosen), "sweep/metrics.html")
        seconds = round(time.perf_counter() - t0, 3)
        summary = {
            "sweep_id": sweep_id,
            "pipeline": spec.name,
            "executor": kind,
            "workers": n_workers,
            "seconds": seconds,
            "mlflow_sweep_run_id": run_id,
            "variants": [asdict(v) for v in results],
        }
        (folder / "sweep.json").write_text(json.dumps(summary, indent=1, default=str))
        client.log_artifact(run_id, str(folder / "sweep.json"), "sweep")
        for k, val in {
            "variants": len(results),
            "variants_failed": sum(v.status != "ok" for v in results),
            "seconds": seconds,
            "workers": n_workers,
        }.items():
            client.log_metric(run_id, k, float(val))
        status = "FINISHED" if all(v.status == "ok" for v in results) else "FAILED"
    finally:
        client.set_terminated(run_id, status)
        locks.release(holder)
        locks.close()
    return SweepResult(sweep_id, spec.name, kind, folder, run_id, results, table, seconds)
