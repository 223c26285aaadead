"""Committed notebooks: clean, paired with py:percent twins, one typed and commented parameters cell."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import jupytext
import papermill
import pytest

from workbench.pipeline.spec import RUNNER_PARAMETERS

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_stage_notebooks_exist() -> None:
    assert [p.stem for p in NOTEBOOKS] == [
        "01_ingest",
        "02_features",
        "03_train",
        "04_validate",
        "05_trade_session",
        "06_portfolio",
        "07_session_review",
        "08_monitor",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{path.name} has outputs; strip them"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_twin_in_sync(path: Path) -> None:
    """The .ipynb and its py:percent twin hold the same cells, sources and tags."""
    twin = path.with_suffix(".py")
    assert twin.exists(), (
        f"{path.name} has no py:percent twin; run `jupytext --set-formats ipynb,py:percent`"
    )
    a, b = jupytext.read(path), jupytext.read(twin)

    def cells(nb: object) -> list[tuple[str, str, tuple[str, ...]]]:
        return [
            (c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells
        ]

    assert cells(a) == cells(b), (
        f"{path.name} and {twin.name} drifted; run `jupytext --sync {twin}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_typed_commented_parameters_cell(path: Path) -> None:
    nb = jupytext.read(path)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} must have exactly one cell tagged 'parameters'"
    lines = [ln for ln in tagged[0].source.splitlines() if ln.strip()]
    names = []
    for ln in lines:
        node = ast.parse(ln).body[0]
        assert isinstance(node, ast.AnnAssign), f"{path.name}: {ln!r} is not a typed assignment"
        assert "  # " in ln, f"{path.name}: {ln!r} has no comment saying what it is"
        names.append(node.target.id)
    seen = papermill.inspect_notebook(str(path))
    assert list(seen) == names, (
        f"papermill does not see every parameter of {path.name} (avoid '=' and quotes in comments)"
    )
    assert all(seen[n]["help"] for n in names)
    assert set(RUNNER_PARAMETERS) <= set(names)
    assert not any(k in n.lower() for n in names for k in ("key", "secret", "token", "password"))
