"""Sweeps: a 2-variant sweep on a LocalCluster (2 worker processes) equals the same variants run
one after another: same metrics per variant, same MLflow layout (a parent per variant, tagged with
the sweep, plus the sweep run); a failing variant is reported with its failing cell while the
other finishes. Bad grids are refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from workbench.config import load_config
from workbench.errors import PipelineError
from workbench.pipeline.spec import load_spec
from workbench.pipeline.sweep import parse_grid, run_sweep, split_values

NOTEBOOK = """# %% tags=["parameters"]
x: int = 1  # a number; negative fails in the second cell
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner

# %%
from workbench.tracking import start_stage

stage = start_stage("a", dict(x=x), pipeline=pipeline, parent_run_id=parent_run_id,
                    output_path=output_path)
stage.log_metrics({"x2": x * 2})

# %%
if x < 0:
    raise ValueError(f"negative x={x}")
stage.hand_on(y=x + 1)
stage.finish()
"""

SPEC = """name: sweepy
parameters:
  x: 1
  label: a
steps:
  - name: a
    notebook: nb/sweepy.ipynb
    parameters: {x: "${x}"}
    outputs: [y]
"""


@pytest.fixture
def project(tiny_project: Path, notebook_writer) -> Path:
    notebook_writer(tiny_project / "nb" / "sweepy.ipynb", NOTEBOOK)
    (tiny_project / "pipelines" / "sweepy.yaml").write_text(SPEC)
    return tiny_project


def layout(sweep_id: str) -> dict:
    """The MLflow runs of a sweep: variant parents by variant label, and the sweep run."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([exp], f"tags.sweep_id = '{sweep_id}'")
    parents = {r.data.tags["sweep_variant"]: r for r in runs if r.data.tags["step"] == "pipeline"}
    sweeps = [r for r in runs if r.data.tags["step"] == "sweep"]
    kids = {
        label: sorted(
            k.data.tags["step"]
            for k in client.search_runs([exp], f"tags.mlflow.parentRunId = '{r.info.run_id}'")
        )
        for label, r in parents.items()
    }
    return {"parents": parents, "sweeps": sweeps, "kids": kids}


@pytest.mark.slow
def test_a_dask_sweep_equals_the_serial_one_and_reports_the_failing_variant(project: Path) -> None:
    cfg = load_config(project)
    serial = run_sweep("sweepy", ["x=3,-1"], executor="local", cfg=cfg, echo=lambda _: None)
    lines: list[str] = []
    dask = run_sweep("sweepy", ["x=3,-1"], executor="dask", workers=2, cfg=cfg, echo=lines.append)
    assert any("dashboard http://127.0.0.1:" in line for line in lines), lines
    for res in (serial, dask):
        ok, bad = res.variants
        assert (ok.label, ok.status, ok.metrics["a.x2"]) == ("x=3", "ok", 6.0)
        assert (bad.label, bad.status, bad.failed_step) == ("x=-1", "failed", "a")
        assert "cell" in bad.error and "ValueError: negative x=-1" in bad.error, bad.error
        assert not res.ok and [v.label for v in res.failed] == ["x=-1"]
        assert res.table["variant"].to_list() == ["x=3", "x=-1"]
        assert res.table["status"].to_list() == ["ok", "failed"]
        assert res.table["a.x2"].to_list() == [6.0, None]  # the failed run logged before raising
        assert len({v.run_dir for v in res.variants}) == 2  # a run folder per variant
        for v in res.variants:
            assert json.loads((Path(v.run_dir) / "summary.json").read_text())["parameters"] == {
                "x": v.overrides["x"],
                "label": "a",
            }
    assert [v.metrics for v in serial.variants] == [v.metrics for v in dask.variants]
    # the same MLflow layout: a parent per variant (with its step), one sweep run with the table
    ls, ld = layout(serial.sweep_id), layout(dask.sweep_id)
    assert set(ls["parents"]) == set(ld["parents"]) == {"x=3", "x=-1"}
    assert ls["kids"] == ld["kids"] == {"x=3": ["a"], "x=-1": ["a"]}
    for lay, res in ((ls, serial), (ld, dask)):
        assert [r.info.run_id for r in lay["sweeps"]] == [res.sweep_run_id]
        sweep_run = lay["sweeps"][0]
        assert sweep_run.info.status == "FAILED"  # one variant failed
        assert sweep_run.data.metrics["variants"] == 2
        assert sweep_run.data.metrics["variants_failed"] == 1
        arts = {a.path for a in mlflow.MlflowClient().list_artifacts(res.sweep_run_id, "sweep")}
        assert {"sweep/comparison.csv", "sweep/metrics.html", "sweep/sweep.json"} <= arts
        for label, parent in lay["parents"].items():
            assert parent.data.tags["sweep_run_id"] == res.sweep_run_id
            assert parent.info.status == ("FINISHED" if label == "x=3" else "FAILED")


def test_grid_values_split_outside_brackets_and_form_the_cartesian_product(project: Path) -> None:
    assert split_values("1, 2,[a, b],{k: 1, j: 2},'c,d'") == [
        "1",
        "2",
        "[a, b]",
        "{k: 1, j: 2}",
        "'c,d'",
    ]
    spec = load_spec(project / "pipelines" / "sweepy.yaml")
    assert parse_grid(["x=1,2", "label=a,b"], spec) == [
        {"x": 1, "label": "a"},
        {"x": 1, "label": "b"},
        {"x": 2, "label": "a"},
        {"x": 2, "label": "b"},
    ]


@pytest.mark.parametrize(
    ("grid", "fragment"),
    [
        (["x"], "is not name=v1,v2"),
        (["x=1,"], "has an empty value"),
        (["x=1", "x=2"], "is given twice"),
        (["y=1,2"], "has no parameter 'y'"),
        ([], "needs at least one -p"),
    ],
)
def test_bad_grids_are_refused_before_anything_runs(
    project: Path, grid: list[str], fragment: str
) -> None:
    with pytest.raises(PipelineError, match=fragment):
        run_sweep("sweepy", grid, executor="local", cfg=load_config(project), echo=print)
    assert not (project / "runs" / "sweeps").exists()


def test_a_mistyped_variant_is_refused_before_anything_runs(project: Path) -> None:
    with pytest.raises(PipelineError, match="x"):
        run_sweep("sweepy", ["x=1,abc"], executor="local", cfg=load_config(project), echo=print)
    assert not (project / "runs" / "sweeps").exists()


def test_an_unknown_executor_is_refused(project: Path) -> None:
    with pytest.raises(PipelineError, match="--executor local .* or\n?.*--executor dask"):
        run_sweep("sweepy", ["x=1,2"], executor="ray", cfg=load_config(project), echo=print)


def test_wb_sweep_refuses_a_bad_grid_with_exit_2(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app

    monkeypatch.chdir(project)
    res = CliRunner().invoke(app, ["sweep", "sweepy", "-p", "y=1,2", "--executor", "local"])
    assert res.exit_code == 2, res.output
    assert "has no parameter 'y'" in res.output
    assert not (project / "runs" / "sweeps").exists()
