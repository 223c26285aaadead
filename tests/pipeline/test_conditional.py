"""Conditional steps: `when: ${steps.validate.passed}` runs a step only if the gates passed; a
skipped step is recorded with its reason in the summary and in MLflow, and so is every step that
needs its outputs. A tiny gated pipeline stands in for research (validate -> trade -> report)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from workbench.config import load_config
from workbench.errors import PipelineError
from workbench.pipeline import load_spec, run_pipeline, validate_spec
from workbench.pipeline.lock import RunLock
from workbench.pipeline.runner import lock_url

VALIDATE = """# %% tags=["parameters"]
verdict: str = "pass"  # pass | refuse | anything else (a non-bool output)
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner

# %%
from workbench.tracking import start_stage

stage = start_stage("validate", dict(verdict=verdict), pipeline=pipeline, parent_run_id=parent_run_id,
                    output_path=output_path)
stage.hand_on(passed={"pass": True, "refuse": False}.get(verdict, verdict))
stage.finish()
"""

GATED = """name: gated
parameters:
  verdict: pass
  trade: true
steps:
  - name: validate
    notebook: nb/validate.ipynb
    parameters: {verdict: "${verdict}"}
    outputs: [passed]
  - name: trade_session
    notebook: nb/a.ipynb
    when: ${steps.validate.passed}
    parameters: {x: 5}
    outputs: [y]
  - name: report
    notebook: nb/b.ipynb
    parameters: {x: "${steps.trade_session.y}"}
"""


@pytest.fixture
def gated(tiny_project: Path, notebook_writer) -> Path:
    notebook_writer(tiny_project / "nb" / "validate.ipynb", VALIDATE)
    (tiny_project / "pipelines" / "gated.yaml").write_text(GATED)
    return tiny_project


def kids(parent_id: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {r.data.tags["step"]: r for r in runs}


@pytest.mark.slow
def test_refused_validate_skips_the_trade_session_and_says_why(gated: Path) -> None:
    lines: list[str] = []
    cfg = load_config(gated)
    res = run_pipeline("gated", {"verdict": "refuse"}, cfg=cfg, echo=lines.append)
    assert res.ok, res.summary()  # the pipeline worked; the gates said no
    assert [s.status for s in res.steps] == ["ok", "skipped", "skipped"]
    why = "condition ${steps.validate.passed} is false (step 'validate' handed on passed=false)"
    assert res.steps[1].reason == why
    assert (
        res.steps[2].reason
        == f"needs ${{steps.trade_session.y}} but step 'trade_session' was skipped ({why})"
    )
    assert not list(res.run_dir.glob("02_*.ipynb")) and not list(res.run_dir.glob("03_*.ipynb"))
    assert any(f"trade_session: skipped: {why}" in line for line in lines)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["skipped"] == {"trade_session": why, "report": res.steps[2].reason}
    assert [s["reason"] for s in summary["steps"]] == ["", why, res.steps[2].reason]
    client = mlflow.MlflowClient()
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["skipped.trade_session"] == why
    runs = kids(res.parent_run_id)
    assert set(runs) == {"validate", "trade_session", "report"}
    skipped = runs["trade_session"]
    assert skipped.info.status == "KILLED" and skipped.data.tags["skipped"] == "true"
    assert skipped.data.tags["skip_reason"] == why
    assert runs["validate"].info.status == "FINISHED"
    assert RunLock(lock_url(cfg, gated / "runs")).holders() == []  # the lock went with the run


@pytest.mark.slow
def test_passed_validate_runs_the_trade_session(gated: Path) -> None:
    res = run_pipeline("gated", {"verdict": "pass"}, cfg=load_config(gated), echo=lambda _: None)
    assert [s.status for s in res.steps] == ["ok", "ok", "ok"], res.summary()
    assert [s.metrics["x2"] for s in res.steps[1:]] == [10, 12]  # report got trade_session's y=6
    assert res.skipped == {}


@pytest.mark.slow
def test_a_condition_that_is_not_a_bool_fails_the_step(gated: Path) -> None:
    res = run_pipeline("gated", {"verdict": "maybe"}, cfg=load_config(gated), echo=lambda _: None)
    assert not res.ok
    assert [s.status for s in res.steps] == ["ok", "failed", "skipped"]
    assert "${steps.validate.passed} is 'maybe' (str), not true or false" in res.steps[1].error
    assert res.steps[2].reason == "step 'trade_session' failed"


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        (
            "${steps.report.y}",
            "must name an earlier step as ${steps.<step>.<output>}; earlier steps: ['validate']",
        ),
        (
            "${steps.validate.ok}",
            "step 'validate' does not hand on 'ok'; it declares outputs ['passed']",
        ),
        ("${verdict}", "shared parameter 'verdict' is 'pass', not true or false"),
        ("${trad}", "undefined reference ${trad}"),
        ("steps.validate.passed", "is not a condition"),
    ],
)
def test_bad_conditions_are_refused_before_anything_runs(
    gated: Path, when: str, fragment: str
) -> None:
    text = GATED.replace("when: ${steps.validate.passed}", f"when: {when}").replace(
        '    parameters: {x: "${steps.trade_session.y}"}',
        "    when: ${trade}\n    parameters: {x: 1}",
    )
    path = gated / "pipelines" / "bad.yaml"
    path.write_text(text.replace("name: gated", "name: bad"))
    with pytest.raises(PipelineError) as err:
        validate_spec(load_spec(path), {}, gated)
    assert fragment in str(err.value), str(err.value)


def test_the_research_trade_session_is_gated_by_validate() -> None:
    repo = Path(__file__).resolve().parents[2]
    steps = {s.name: s for s in load_spec(repo / "pipelines" / "research.yaml").steps}
    assert steps["trade_session"].when == "${steps.validate.passed}"
    assert "passed" in steps["validate"].outputs
