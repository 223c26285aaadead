"""A throw-away project with tiny notebooks, its own config, store and MLflow database."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

STEP = """# %% tags=["parameters"]
x: int = 1  # a number
label: str = "a"  # a name
fail: bool = False  # raise in the body
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner

# %%
from workbench.tracking import start_stage

stage = start_stage("{step}", dict(x=x, label=label), pipeline=pipeline, parent_run_id=parent_run_id,
                    output_path=output_path)
stage.log_metrics({{"x2": x * 2}})

# %%
if fail:
    raise ValueError(f"boom x={{x}}")
stage.hand_on(y=x + 1)
stage.finish()
"""

NO_RUNNER = """# %% tags=["parameters"]
x: int = 1  # a number
"""

SPEC = """name: tiny
parameters:
  x: 1
  fail: false
steps:
  - name: a
    notebook: nb/a.ipynb
    parameters: {x: "${x}", label: "run ${run.dir}"}
    outputs: [y]
  - name: b
    notebook: nb/b.ipynb
    parameters: {x: "${steps.a.y}", fail: "${fail}"}
    outputs: [y]
  - name: c
    notebook: nb/c.ipynb
    parameters: {x: "${steps.b.y}"}
"""


def write_notebook(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = jupytext.reads(text, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    jupytext.write(nb, path)


@pytest.fixture
def notebook_writer():
    """Write a py:percent text as a notebook (for tests that add their own steps)."""
    return write_notebook


@pytest.fixture
def make_result():
    """Build stand-ins for a PipelineResult (what the scheduler reads of one)."""
    return tiny_result


def tiny_result(run_dir: Path, *, ok: bool = True) -> object:
    """A stand-in for a PipelineResult (what the scheduler reads of one)."""
    from workbench.pipeline.runner import StepResult

    class Result:
        pass

    r = Result()
    r.ok, r.run_dir, r.skipped = ok, run_dir, {}  # type: ignore[attr-defined]
    r.steps = [
        StepResult("a", "ok" if ok else "failed", error="" if ok else "cell 2: ValueError: boom")
    ]  # type: ignore[attr-defined]
    return r


@pytest.fixture
def tiny_project(isolated: Path) -> Path:
    root = isolated / "proj"
    (root / "config").mkdir(parents=True)
    (root / "config" / "workbench.yaml").write_text("mlflow:\n  experiment: tiny\n")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "tiny.yaml").write_text(SPEC)
    for step in "abc":
        write_notebook(root / "nb" / f"{step}.ipynb", STEP.format(step=step))
    write_notebook(root / "nb" / "norunner.ipynb", NO_RUNNER)
    return root
