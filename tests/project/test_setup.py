"""Project set-up: environment.yml agrees with pyproject, the lock pins everything, CI calls make test."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, str]:
    out = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = ver.strip()
    return out


def test_environment_yml_matches_pyproject() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons == ["python=3.11"]
    assert Version("3.11") in Requirement(f"python{py['requires-python']}").specifier
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[dev]" in pip and "-c requirements.lock" in pip
    assert "dev" in py["optional-dependencies"]


def test_lock_pins_every_declared_dependency_within_its_range() -> None:
    lock = _lock()
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(py["dependencies"]) + [
        r for extra in py["optional-dependencies"].values() for r in extra
    ]
    for spec in reqs:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in lock, f"{req.name} is not pinned in requirements.lock; run `make lock`"
        assert Version(lock[name]) in req.specifier, f"{name}=={lock[name]} violates {spec}"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_gitignore_keeps_generated_files_out() -> None:
    ignored = (REPO / ".gitignore").read_text().split()
    for entry in (".venv/", "/data/", "/runs/", "/mlruns/", "/mlflow.db"):
        assert entry in ignored
