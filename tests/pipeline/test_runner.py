"""Runner: outputs handed forward, summary, MLflow parent/child runs, failure handling."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from workbench.config import load_config
from workbench.pipeline import run_pipeline


def children(parent_id: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {r.data.tags["step"]: r for r in runs}


@pytest.mark.slow
def test_success_hands_outputs_forward_and_tracks_everything(
    tiny_project: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    res = run_pipeline("tiny", ["x=5"], cfg=load_config(tiny_project), echo=lines.append)
    assert res.ok, res.summary()
    # kernels talk over encrypted transport: no "running over TCP without encryption" warnings
    assert "without encryption" not in capfd.readouterr().err
    assert [s.status for s in res.steps] == ["ok", "ok", "ok"]
    assert [s.metrics["x2"] for s in res.steps] == [10, 12, 14]  # b got a's y=6, c got b's y=7
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["parameters"]["x"] == 5
    assert res.run_dir.parent == tiny_project / "runs" / "tiny"
    assert all(Path(s.notebook).exists() for s in res.steps)
    # the runner's own work per step (reading outputs, logging the notebook) stays small
    assert max(s.overhead_seconds for s in res.steps) < 5

    client = mlflow.MlflowClient()
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline"] == "tiny"
    kids = children(res.parent_run_id)
    assert set(kids) == {"a", "b", "c"}
    for step, run in kids.items():
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["pipeline"] == "tiny" and tags["step"] == step
        assert len(tags["config_hash"]) == 64 and tags["git_commit"] and "version.polars" in tags
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "notebook")}
        assert {p.rsplit(".", 1)[1] for p in arts} == {
            "ipynb",
            "html",
            "json",
        }  # notebook, its HTML, parameters
    assert kids["b"].data.params["x"] == "6"
    assert kids["a"].data.params["label"].startswith("run ")


@pytest.mark.slow
def test_failing_step_stops_keeps_notebook_and_reports_the_cell(tiny_project: Path) -> None:
    lines: list[str] = []
    res = run_pipeline("tiny", {"fail": True}, cfg=load_config(tiny_project), echo=lines.append)
    assert not res.ok
    assert [s.status for s in res.steps] == ["ok", "failed", "skipped"]
    failed = res.steps[1]
    assert "ValueError: boom x=2" in failed.error and failed.error.startswith("cell ")
    assert Path(failed.notebook).exists()
    assert any("failed notebook kept at" in line for line in lines)
    assert not (res.run_dir / "03_c.ipynb").exists()
    client = mlflow.MlflowClient()
    assert client.get_run(res.parent_run_id).info.status == "FAILED"
    kids = children(res.parent_run_id)
    assert set(kids) == {"a", "b"}
    assert kids["b"].info.status == "FAILED" and "boom" in kids["b"].data.tags["error"]
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"


def test_experiments_are_created_as_model_training_experiments(isolated: Path) -> None:
    """MLflow 3's UI opens an experiment tagged custom_model_development on its training runs
    (not the GenAI traces view); an experiment created before the tag gets it on first use."""
    from workbench import tracking

    cfg = load_config(isolated)
    exp_id = tracking.setup(cfg, experiment="fresh")
    client = mlflow.MlflowClient()
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("older")
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.setup(cfg, experiment="older") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
