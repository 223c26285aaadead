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


# Each step hands on its kernel's pid and whether anything of the step before is visible in it.
PROBE = """# %% tags=["parameters"]
x: int = 1  # a number
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner

# %%
import sys

warm = "{probe}" in sys.modules  # before this notebook imports it

# %%
import colorsys  # imported by no kernel of its own accord: loaded ahead when warmed
import json
import os

# %%
seen = sorted(k for k in globals() if k.startswith(("leak", "__wb")))
leak_{step} = x  # a name the next step must not see
json.dump({{"outputs": {{"pid": os.getpid(), "seen": seen, "x": x + 1, "cwd": os.getcwd(),
           "warm": warm, "ran": len(In)}}}}, open(output_path, "w"))
"""
PROBE_SPEC = """name: probe
parameters: {x: 1}
steps:
  - name: a
    notebook: nb/pa.ipynb
    parameters: {x: "${x}"}
    outputs: [pid, x]
  - name: b
    notebook: nb/pb.ipynb
    parameters: {x: "${steps.a.x}"}
    outputs: [pid, x]
  - name: c
    notebook: nb/pc.ipynb
    parameters: {x: "${steps.b.x}"}
    outputs: [pid, x]
"""


@pytest.mark.slow
def test_each_step_gets_a_fresh_kernel_started_ahead(tiny_project: Path, notebook_writer) -> None:
    """Kernels started ahead serve one step each: distinct processes, nothing of the step before
    visible, the step's own folder; their notebooks' imports are loaded, no code of theirs ran."""
    (tiny_project / "pipelines" / "probe.yaml").write_text(PROBE_SPEC)
    for s in "abc":
        notebook_writer(tiny_project / "nb" / f"p{s}.ipynb", PROBE.format(step=s, probe="colorsys"))
    res = run_pipeline("probe", {"x": 3}, cfg=load_config(tiny_project), echo=lambda _: None)
    assert res.ok, res.summary()
    outs = [res.outputs(s) for s in "abc"]
    assert len({o["pid"] for o in outs}) == 3
    assert [o["seen"] for o in outs] == [[], [], []]
    assert [o["x"] for o in outs] == [4, 5, 6]
    assert {o["cwd"] for o in outs} == {str(tiny_project / "nb")}
    assert all(o["warm"] for o in outs)
    assert [o["ran"] for o in outs] == [6, 6, 6]  # In: "", parameters, injected, 3 cells


def test_a_kernel_is_used_only_for_the_key_it_was_started_for(tmp_path: Path) -> None:
    from workbench.pipeline.kernels import KernelKey, KernelPool, notebook_imports

    nb = tmp_path / "n.ipynb"
    nb.write_text(
        json.dumps(
            {
                "cells": [
                    {"cell_type": "code", "source": ["%matplotlib inline\n", "import colorsys\n"]},
                    {"cell_type": "code", "source": "from json import dumps\nx = (\n"},  # no parse
                    {"cell_type": "code", "source": "from email import message\n"},
                    {"cell_type": "markdown", "source": "import nothing"},
                ]
            }
        )
    )
    assert notebook_imports(nb) == ["colorsys", "email"]

    def pid_and_modules(km: object) -> dict:
        kc = km.wb_client  # type: ignore[attr-defined]
        code = "import os, sys; print(os.getpid(), 'colorsys' in sys.modules, 'colorsys' in dir())"
        out: list[str] = []
        kc.execute_interactive(code, output_hook=lambda m: out.append(m["content"].get("text", "")))
        pid, mod, name = "".join(out).split()
        return {"pid": int(pid), "imported": mod == "True", "named": name == "True"}

    key = KernelKey.for_step(nb, {"WB_PROBE": "1"})
    with KernelPool() as pool:
        pool.prepare(key)
        km, warmed = pool.take(key)
        first = pid_and_modules(km)
        assert warmed and first["imported"] and not first["named"]
        pool.release(km)
        # prepared for another environment: not used, a fresh kernel instead
        pool.prepare(key)
        other = KernelKey.for_step(nb, {"WB_PROBE": "2"})
        km2, warmed2 = pool.take(other)
        second = pid_and_modules(km2)
        assert not warmed2 and not second["imported"] and second["pid"] != first["pid"]
        assert dict(other.env)["WB_PROBE"] == "2"
        pool.release(km2, background=False)
    assert not km.is_alive() and not km2.is_alive()
