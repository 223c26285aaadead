"""Spec validation refuses what papermill would only warn about, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config import load_config
from workbench.errors import PipelineError
from workbench.pipeline import load_spec, run_pipeline, validate_spec
from workbench.pipeline.spec import check_type, parse_overrides, substitute

REPO = Path(__file__).resolve().parents[2]


def spec_with(root: Path, text: str) -> Path:
    p = root / "pipelines" / "x.yaml"
    p.write_text(text)
    return p


def refuse(root: Path, text: str, *fragments: str) -> None:
    with pytest.raises(PipelineError) as err:
        run_pipeline(spec_with(root, text), cfg=load_config(root))
    for f in fragments:
        assert f in str(err.value), str(err.value)
    assert not (root / "runs").exists()  # nothing ran


def test_unknown_parameter_names_step_parameter_and_valid_names(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "name: x\nsteps:\n  - {name: a, notebook: nb/a.ipynb, parameters: {lable: z}}\n",
        "step 'a'",
        "'lable'",
        "valid names: ['fail', 'label', 'x']",
        "Did you mean 'label'?",
        "nothing was run",
    )


def test_mistyped_parameter(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "name: x\nparameters: {x: abc}\nsteps:\n  - {name: a, notebook: nb/a.ipynb, parameters: {x: '${x}'}}\n",
        "step 'a'",
        "parameter 'x' = 'abc' does not fit its annotation int",
    )
    refuse(
        tiny_project,
        "name: x\nsteps:\n  - {name: a, notebook: nb/a.ipynb, parameters: {fail: 1}}\n",
        "'fail' = 1 does not fit its annotation bool",
    )


def test_undefined_reference(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "name: x\nparameters: {x: 1}\nsteps:\n  - {name: a, notebook: nb/a.ipynb, parameters: {x: '${y}'}}\n",
        "undefined reference ${y}",
    )


def test_reference_to_undeclared_or_later_output(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "name: x\nsteps:\n  - {name: a, notebook: nb/a.ipynb, parameters: {x: '${steps.b.y}'}}\n"
        "  - {name: b, notebook: nb/b.ipynb, outputs: [y]}\n",
        "must name an earlier step",
    )
    refuse(
        tiny_project,
        "name: x\nsteps:\n  - {name: a, notebook: nb/a.ipynb}\n"
        "  - {name: b, notebook: nb/b.ipynb, parameters: {x: '${steps.a.y}'}}\n",
        "step 'a' does not hand on 'y'",
    )


def test_missing_notebook_and_runner_parameters(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "name: x\nsteps:\n  - {name: a, notebook: nb/zzz.ipynb}\n  - {name: b, notebook: nb/norunner.ipynb}\n",
        "nb/zzz.ipynb does not exist",
        "lacks runner parameter(s) ['output_path', 'parent_run_id', 'pipeline']",
    )


def test_unknown_spec_key_suggests(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "name: x\nsteps:\n  - {name: a, notebok: nb/a.ipynb}\n",
        "Did you mean 'notebook'?",
    )


def test_overrides_are_checked(tiny_project: Path) -> None:
    spec = load_spec(tiny_project / "pipelines" / "tiny.yaml")
    assert parse_overrides(["x=3", "fail=true"], spec) == {"x": 3, "fail": True}
    with pytest.raises(PipelineError, match=r"no parameter 'y'.*valid: \['fail', 'x'\]"):
        parse_overrides(["y=1"], spec)
    with pytest.raises(PipelineError, match="not key=value"):
        parse_overrides(["x"], spec)
    with pytest.raises(PipelineError, match="does not fit its annotation int"):
        validate_spec(spec, {"x": 1.5}, tiny_project)


def test_substitution_keeps_types_and_formats_strings() -> None:
    scope = {"a": [1, 2], "b": 0.5}
    assert substitute({"p": "${a}", "q": "b=${b}", "r": 3}, scope, "w") == {
        "p": [1, 2],
        "q": "b=0.5",
        "r": 3,
    }
    with pytest.raises(PipelineError, match=r"undefined reference \$\{c\}"):
        substitute("${c}", scope, "w")


def test_type_check_rules() -> None:
    assert check_type(1, "float") is None
    assert check_type(True, "int") is not None
    assert check_type(["a"], "list[str]") is None
    assert check_type([1], "list[str]") is not None
    assert check_type("x", "None") is None  # untyped parameters are not checked


def test_repository_pipelines_validate() -> None:
    cfg = load_config(REPO)
    specs = sorted(p for p in (REPO / "pipelines").glob("*.yaml") if p.stem != "schedule")
    assert {"research", "daily_ingest", "trading_day", "weekly_retrain"} <= {p.stem for p in specs}
    for path in specs:
        validate_spec(load_spec(path), {}, cfg.project_root)
