"""Imports only point down: nothing in the library layers imports the stages, the CLI or the
pipeline runner (at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "workbench"
LOWER = ("models", "validation", "backtest", "execution", "risk", "data", "features")
UPPER = ("workbench.stages", "workbench.cli", "workbench.pipeline")


def _module(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = PKG) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (relative ones
    resolved against the file's package), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mod_name = _module(path, root)
    package = mod_name if path.name == "__init__.py" else mod_name.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def is_upper(module: str) -> bool:
    """``workbench.stages``, ``workbench.pipeline``, ``workbench.cli`` and ``workbench.cli_*``."""
    return any(module == u or module.startswith(u + ".") for u in UPPER) or module.startswith(
        "workbench.cli_"
    )


def violations(root: Path = PKG) -> list[str]:
    """One entry per offending import statement: ``path:line imports module``."""
    found: dict[tuple[str, int], str] = {}
    for layer in LOWER:
        for path in sorted((root / layer).rglob("*.py")):
            for line, mod in imported_modules(path, root):
                key = (str(path.relative_to(root.parent)), line)
                if is_upper(mod) and key not in found:
                    found[key] = f"{key[0]}:{line} imports {mod}"
    return sorted(found.values())


def test_library_layers_do_not_import_stages_cli_or_pipeline() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    "source",
    [
        "from workbench.stages.validate import run_validate\n",
        "import workbench.pipeline.runner\n",
        "def f():\n    from workbench.cli import app\n",
        "from workbench.cli_models import promote_cmd\n",
        "from ...stages import train\n",
        "from workbench import stages\n",
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, source: str) -> None:
    root = tmp_path / "workbench"
    (root / "models" / "sub").mkdir(parents=True)
    (root / "models" / "sub" / "bad.py").write_text(source)
    for layer in LOWER[1:]:
        (root / layer).mkdir()
    assert len(violations(root)) == 1


def test_downward_imports_pass(tmp_path: Path) -> None:
    root = tmp_path / "workbench"
    (root / "models").mkdir(parents=True)
    (root / "models" / "ok.py").write_text(
        "from workbench.validation.evaluate import evaluate_model\nimport workbench.config\n"
        "from ..validation import gates\nfrom workbench.stagesque import x\n"
    )
    for layer in LOWER[1:]:
        (root / layer).mkdir()
    assert violations(root) == []
