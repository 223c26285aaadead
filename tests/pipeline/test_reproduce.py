"""`wb reproduce`: re-runs the step on scratch Optuna and registry state, compares, cleans up.

The step notebook here resumes an Optuna study in its ``optuna_storage`` (like the train step)
and registers a model version with an alias. A reproduction that reused the recorded study would
run no trial (``trials_run`` 0 against 5) and fail the comparison; one that used the project's
registry would add a version and move the alias. Both are checked, on the project's own files.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import mlflow
import nbformat
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import load_config
from workbench.pipeline import run_pipeline
from workbench.pipeline.reproduce import ReproduceError, reproduce

STEP = """# %% tags=["parameters"]
seed: int = 3  # sampler seed
n_trials: int = 5  # trials the study should hold
optuna_storage: str = ""  # Optuna storage (empty: the project's runs/optuna.db)
flag: str = ""  # a file whose presence makes the step fail
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner

# %%
from pathlib import Path

import mlflow
import optuna

from workbench.config import load_config
from workbench.tracking import start_stage

cfg = load_config()
stage = start_stage("search", dict(seed=seed, n_trials=n_trials), pipeline=pipeline,
                    parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)
marker = cfg.path("runs") / "fetched.marker"
first = not marker.exists()
marker.parent.mkdir(parents=True, exist_ok=True)
marker.touch()
storage = optuna_storage or f"sqlite:///{cfg.path('runs') / 'optuna.db'}"
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(storage=storage, study_name="tiny", load_if_exists=True,
                            sampler=optuna.samplers.TPESampler(seed=seed))
ran = []


def objective(trial):
    ran.append(trial.number)
    x = trial.suggest_float("x", -3, 3)
    return (x - 1) ** 2


study.optimize(objective, n_trials=max(0, n_trials - len(study.trials)))
from tqdm.auto import tqdm

for _ in tqdm(range(2), desc="progress"):  # a progress bar renders as a widget, not a warning
    pass
stage.log_metrics({"best_value": study.best_value, "trials_run": len(ran),
                   "chunks_fetched": 1.0 if first else 0.0})

# %%
if flag and Path(flag).exists():
    raise RuntimeError("flag present")
client = mlflow.MlflowClient()
if not client.search_registered_models(f"name = 'tiny_model'"):
    client.create_registered_model("tiny_model")
mv = client.create_model_version("tiny_model", f"runs:/{stage.run_id}/model", run_id=stage.run_id)
client.set_registered_model_alias("tiny_model", "challenger", mv.version)
stage.hand_on(model_version=mv.version)
stage.finish()
"""

SPEC = """name: repro
parameters:
  seed: 3
  flag: ""
steps:
  - name: search
    notebook: nb/search.ipynb
    parameters: {seed: "${seed}", flag: "${flag}"}
    outputs: [model_version]
"""


@pytest.fixture
def project(isolated: Path, notebook_writer, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = isolated / "proj"
    (root / "config").mkdir(parents=True)
    (root / "config" / "workbench.yaml").write_text("mlflow:\n  experiment: repro\n")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "repro.yaml").write_text(SPEC)
    notebook_writer(root / "nb" / "search.ipynb", STEP)
    monkeypatch.setenv("WB_PROJECT_ROOT", str(root))
    scratch = isolated / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # scratch folders land here
    return root


def _trials(root: Path) -> int:
    with sqlite3.connect(root / "runs" / "optuna.db") as con:
        return con.execute("select count(*) from trials").fetchone()[0]


def _registry() -> tuple[list[str], str]:
    client = mlflow.MlflowClient()
    versions = sorted(str(v.version) for v in client.search_model_versions("name = 'tiny_model'"))
    return versions, str(client.get_model_version_by_alias("tiny_model", "challenger").version)


@pytest.mark.slow
def test_reproduce_reruns_on_scratch_state_and_matches(project: Path, isolated: Path) -> None:
    cfg = load_config(project)
    flag = isolated / "flag"  # absent for the run and the first reproduction
    res = run_pipeline("repro", [f"flag={flag}"], cfg=cfg, echo=lambda _: None)
    assert res.ok, res.summary()
    step = res.steps[0]
    assert step.metrics["trials_run"] == 5 and step.metrics["chunks_fetched"] == 1
    before = (_trials(project), _registry())
    assert before == (5, (["1"], "1"))
    outputs = [o for c in nbformat.read(step.notebook, 4).cells for o in c.get("outputs", [])]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert "IProgress not found" not in json.dumps(outputs)

    rep = reproduce(step.mlflow_run_id, cfg=cfg)

    by_metric = {r["metric"]: r for r in rep.comparison.iter_rows(named=True)}
    assert by_metric["trials_run"]["reproduced"] == 5  # every trial ran again: a fresh study
    assert by_metric["best_value"]["match"] and rep.matches, rep.comparison
    assert rep.excluded == [
        "chunks_fetched"
    ]  # 0 now (the marker exists): cache state, not a result
    assert rep.same_code and rep.same_lock and rep.differences == []
    # the project's Optuna study and registry are untouched: no trial, no version, no alias moved
    assert (_trials(project), _registry()) == before
    client = mlflow.MlflowClient()
    new = client.get_run(rep.new_run_id)
    assert new.info.status == "FINISHED" and new.data.tags["reproduces"] == step.mlflow_run_id
    assert new.data.tags["reproduce.matches"] == "true"
    saved = mlflow.artifacts.load_dict(f"runs:/{rep.new_run_id}/reproduce/comparison.json")
    assert saved["matches"] and saved["excluded"] == ["chunks_fetched"]
    assert list((isolated / "tmp").iterdir()) == []  # the scratch folder is gone

    # a reproduction that fails is marked FAILED and cleans up after itself
    flag.touch()
    n_runs = len(client.search_runs([new.info.experiment_id]))
    res_cli = CliRunner().invoke(app, ["reproduce", step.mlflow_run_id])
    assert res_cli.exit_code == 2, res_cli.output
    assert "Traceback" not in res_cli.output and "RuntimeError: flag present" in res_cli.output
    assert "marked FAILED" in res_cli.output
    runs = client.search_runs([new.info.experiment_id], order_by=["attributes.start_time DESC"])
    assert len(runs) == n_runs + 1
    assert runs[0].info.status == "FAILED" and "flag present" in runs[0].data.tags["error"]
    assert runs[0].data.tags["reproduces"] == step.mlflow_run_id
    assert list((isolated / "tmp").iterdir()) == []
    assert (_trials(project), _registry()) == before


def test_a_metric_that_differs_is_named(project: Path) -> None:
    from workbench.pipeline.reproduce import Reproduction, _compare

    comparison, excluded = _compare(
        {"ic": 0.2, "chunks_fetched": 3, "ingest_seconds": 1.5, "gone": 1.0},
        {"ic": 0.25, "chunks_fetched": 0, "ingest_seconds": 0.1, "new": 2.0},
        1e-9,
    )
    rep = Reproduction("a" * 32, "b" * 32, comparison, {"git_commit": ("abc", "def")}, excluded)
    assert excluded == ["chunks_fetched", "ingest_seconds"]
    assert not rep.matches and not rep.same_code
    assert rep.differences == [
        "metric gone: 1.0 -> None",
        "metric ic: 0.2 -> 0.25",
        "metric new: None -> 2.0",
        "git_commit: abc -> def",
    ]


@pytest.mark.parametrize("bad", ["", "   ", "nothex", "3F2A" * 8 + "x", "12345"])
def test_malformed_run_id_is_refused_before_mlflow_is_touched(project: Path, bad: str) -> None:
    with pytest.raises(ReproduceError, match="not an MLflow run id") as err:
        reproduce(bad, cfg=load_config(project))
    assert repr(bad) in str(err.value) and "summary.json" in str(err.value)
    assert not (project.parent / "mlflow.db").exists()


def test_unknown_run_id_exits_2_without_a_traceback(project: Path, isolated: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["reproduce", "0" * 32])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "does not exist yet" in res.output  # no tracking store: none is created
    assert not (isolated / "mlflow.db").exists()
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{isolated / 'mlflow.db'}").search_experiments()
    res = runner.invoke(app, ["reproduce", "0" * 32])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"no run '{'0' * 32}'" in res.output and "summary.json" in res.output
    summary = json.dumps(res.output)
    assert "MlflowException" not in summary
