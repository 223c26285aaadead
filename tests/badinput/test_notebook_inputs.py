"""Bad input: notebooks run top to bottom with their defaults (Run All in JupyterLab).

An empty input takes the latest output of the step before it (from a pipeline run's or an
interactive run's ``<step>.outputs.json`` under runs/); without one the notebook stops at once
with one line naming the parameter and the fix, never a traceback (the finding: 03_train failed
with FileNotFoundError on an empty path, 04_validate with ``Invalid isoformat string: ''``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nbformat
import pytest

from workbench.config import load_config
from workbench.data.store import BarStore
from workbench.notebook import MissingInput, fill_empty, latest_outputs, store_root_or_default

from .conftest import REPO, assert_clean_message, fingerprint

TRAIN = {
    "model_name": "intraday_reversal",
    "model_version": "3",
    "split_ts": "2024-05-01T13:30:00+00:00",
    "trial_sharpes": [0.1, 0.2],
    "n_trials": 16,
    "trial_correlation": 0.4,
    "pbo": 0.1,
}


def _outputs(path: Path, step: str, age: float, **outputs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"step": step, "mlflow_run_id": "x", "outputs": outputs}))
    t = path.stat().st_mtime - age
    os.utime(path, (t, t))
    return path


def test_empty_inputs_take_the_latest_train_outputs(project: Path) -> None:
    cfg = load_config(project)
    runs = project / "runs"
    _outputs(runs / "research" / "20240101T000000Z" / "train.outputs.json", "train", 100, **TRAIN)
    newer = {**TRAIN, "model_version": "4", "split_ts": "2024-06-01T13:30:00+00:00"}
    _outputs(runs / "interactive" / "train.outputs.json", "train", 10, **newer)
    _outputs(
        runs / "research" / "20250101T000000Z" / "train.outputs.json", "train", 0, model_name="m"
    )
    defaults = dict(model_name="intraday_reversal", model_version="", split_ts="", trial_sharpes=[],
                    n_trials=0, trial_correlation=0.0, pbo=math.nan)  # fmt: skip
    got = fill_empty(cfg, "train", defaults, required="model_version", hint="run 03_train",
                     also_zero=("n_trials", "trial_correlation"))  # fmt: skip
    assert got == newer  # the newest that holds model_version (the newest of all lacks it)
    # a given input is the caller's choice: nothing is filled
    chosen = {**defaults, "model_version": "2"}
    assert fill_empty(cfg, "train", chosen, required="model_version", hint="") == chosen


def test_empty_store_root_takes_the_latest_ingest_else_the_config(
    project: Path, store: BarStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(project)
    before = fingerprint(project)
    with pytest.raises(MissingInput) as err:  # nothing ingested anywhere yet
        store_root_or_default(cfg, "")
    assert_clean_message(str(err.value), "store_root is empty", str(cfg.path(cfg.store.root)),
                         "Fix: run 01_ingest")  # fmt: skip
    assert fingerprint(project) == before
    assert store_root_or_default(cfg, "given") == "given"
    monkeypatch.setenv("WB_STORE__ROOT", str(store.root))  # the configured store holds bars
    cfg = load_config(project)
    assert store_root_or_default(cfg, "") == str(store.root)
    _outputs(
        project / "runs" / "research" / "s" / "ingest.outputs.json", "ingest", 0, store_root="/x"
    )
    assert store_root_or_default(cfg, "") == "/x"
    assert latest_outputs(cfg, "ingest", ["nothing"]) == ({}, None)


def test_no_earlier_output_stops_with_one_line_naming_the_parameter(project: Path) -> None:
    cfg = load_config(project)
    before = fingerprint(project)
    with pytest.raises(MissingInput) as err:
        fill_empty(cfg, "features", {"features_path": ""}, required="features_path",
                   hint="run 02_features or set features_path")  # fmt: skip
    assert "features_path is empty" in str(err.value) and "Fix: run 02_features" in str(err.value)
    assert err.value._render_traceback_() == [f"MissingInput: {err.value}"]
    assert fingerprint(project) == before


# Run All with the defaults on an empty project (no runs, no bars, no model): what each notebook
# does. 01_ingest has no input from an earlier step: with its defaults it ingests the simulator's
# bars into store.root, the same on an empty project as after a pipeline run (whose store lies
# elsewhere), and is run with its defaults in tests/notebooks/test_research_pipeline.py.
EMPTY_PROJECT = {
    "02_features": ("MissingInput", "store_root is empty"),
    "03_train": ("MissingInput", "features_path is empty"),
    "04_validate": ("MissingInput", "features_path is empty"),
    "05_trade_session": ("MissingInput", "store_root is empty"),
    "06_portfolio": ("SourceError", "no strategy to allocate to"),
    "07_session_review": None,  # runs: "nothing to review" (no model version yet)
    "08_monitor": None,  # runs: "nothing to monitor"
}


def test_the_empty_project_cases_cover_every_stage_notebook() -> None:
    stages = {p.stem for p in (REPO / "notebooks").glob("0*.ipynb")}
    assert stages == {*EMPTY_PROJECT, "01_ingest"}


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(EMPTY_PROJECT))
def test_notebook_with_defaults_on_an_empty_project_runs_or_stops_in_one_line(
    name: str, project: Path, isolated: Path
) -> None:
    """Run All with the defaults: the notebook runs top to bottom, or stops at once with one error
    line naming the input and the fix (no traceback) before anything ran."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from workbench.pipeline.runner import kernel_manager

    out = isolated / f"{name}.out.ipynb"
    expected = EMPTY_PROJECT[name]
    with kernel_manager() as km:
        try:
            papermill.execute_notebook(
                str(project / "notebooks" / f"{name}.ipynb"), str(out), kernel_name="python3",
                progress_bar=False, cwd=str(project / "notebooks"), km=km,
            )  # fmt: skip
            failure = None
        except PapermillExecutionError as exc:
            failure = exc
    errors = [
        o
        for c in nbformat.read(out, 4).cells
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    if expected is None:
        assert failure is None and errors == [], failure
        return
    ename, says = expected
    assert failure is not None, f"{name} ran on an empty project"
    assert failure.ename == ename and says in failure.evalue, failure.evalue
    assert "Fix:" in failure.evalue
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1  # one line, no frames
    assert errors[0]["traceback"][0].startswith(f"{ename}: {says}")
    db = isolated / "mlflow.db"
    if ename == "MissingInput":
        assert not db.exists()  # stopped before any run was recorded
    elif db.exists():  # the store was read (looking for runs), and nothing was recorded in it
        import sqlite3

        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone() == (0,)


def test_a_notebook_run_by_hand_hands_on_to_the_next(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In JupyterLab (a server-started kernel) a step without the runner still hands on its
    outputs, under runs/interactive/; papermill, nbval and tests write nothing there."""
    from workbench.tracking import start_stage

    cfg = load_config(project)
    stage = start_stage("features", {}, cfg=cfg)
    stage.hand_on(features_path="/nowhere.parquet")
    stage.finish()
    assert not (project / "runs" / "interactive").exists()
    monkeypatch.setenv("JPY_SESSION_NAME", str(project / "notebooks" / "02_features.ipynb"))
    stage = start_stage("features", {}, cfg=cfg)
    stage.hand_on(features_path="/data/features.parquet")
    stage.finish()
    got = fill_empty(cfg, "features", {"features_path": ""}, required="features_path", hint="")
    assert got == {"features_path": "/data/features.parquet"}
    assert latest_outputs(cfg, "features", ["features_path"])[1] == (
        project / "runs" / "interactive" / "features.outputs.json"
    )
