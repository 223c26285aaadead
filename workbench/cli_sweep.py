"""``wb sweep``: a pipeline's parameter grid as independent runs, locally or on Dask."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from workbench.errors import WorkbenchError

console = Console(soft_wrap=True)


def sweep(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name or spec path, e.g. research.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--param",
            help="A swept parameter and its values: -p seed=1,2,3 (repeatable; cartesian product).",
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="local (one after another) or dask (default: dask.executor)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="LocalCluster worker processes (default: dask.n_workers)."),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(help="A metric of the sweep figure, <step>.<metric> (repeatable)."),
    ] = None,
) -> None:
    """Run every combination of the given values as its own pipeline run, plus a sweep run.

    Each variant gets its own run folder and MLflow parent run (tagged sweep_id and
    sweep_variant); the sweep run in MLflow holds the comparison table and a figure. Failing
    variants are reported with their failing cell; the others finish. Exits 1 if any failed.

    Example: wb sweep research -p seed=1,2 -p alpha=0,0.25 --executor dask --workers 2
    """
    from workbench.pipeline.sweep import run_sweep

    try:
        res = run_sweep(
            pipeline,
            list(param or []),
            executor=executor,
            workers=workers,
            metrics=metric,
            echo=console.print,
        )
    except WorkbenchError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    shown = [c for c in res.table.columns if c not in ("error",)][:10]
    table = Table(title=f"sweep {res.sweep_id} ({res.executor}, {res.seconds:.1f} s)")
    for c in shown:
        table.add_column(c)
    for row in res.table.iter_rows(named=True):
        table.add_row(
            *(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in shown)
        )
    console.print(table)
    console.print(f"sweep folder: {res.folder}  MLflow sweep run: {res.sweep_run_id}")
    for v in res.failed:
        console.print(f"[bold red]{v.label} failed[/] at step {v.failed_step!r}: {v.error}")
    if res.failed:
        raise typer.Exit(1)
