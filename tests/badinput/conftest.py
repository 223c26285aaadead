"""Helpers of the bad-input suite: a small ingested store, a fingerprint of every file, the CLI.

Every case asserts three things: the library's error type or a non-zero exit; a message naming
the file (or field), the bad value and the fix; and that nothing was written or changed
(:func:`fingerprint` of the whole folder before and after).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.data.ingest import ingest
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore

SYMS = ["SYN000", "SYN001"]
TF = "5Min"
START, END = date(2024, 1, 2), date(2024, 2, 9)  # two monthly partitions per symbol

_runner = CliRunner()


def fingerprint(root: Path) -> dict[str, str]:
    """Return ``{relative path: sha256}`` of every file under ``root`` (empty if absent)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class Ran:
    exit_code: int
    output: str


def wb(*args: str) -> Ran:
    """Run ``wb`` in-process; return its exit code and everything it printed."""
    res = _runner.invoke(app, list(args))
    return Ran(res.exit_code, res.output)


def wb_unprivileged(*args: str) -> Ran:
    """Run ``wb`` in a child without the root capabilities that bypass file permissions."""
    exe = Path(sys.executable).with_name("wb")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "workbench.cli", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the permission override")
        caps = "-dac_override,-dac_read_search,-fowner"
        cmd = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    return Ran(proc.returncode, proc.stdout + proc.stderr)


def flip_bit(path: Path, at: float = 0.5, bit: int = 2) -> None:
    """Flip one bit of a file at a relative position."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 1 << bit
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def part(store: BarStore, symbol: str = "SYN000", period: str = "2024-01") -> Path:
    return store.partition_path(symbol, TF, period)


def assert_clean_message(text: str, *must: str) -> None:
    """The message names what it must and is not a traceback."""
    assert "Traceback" not in text, text
    for m in must:
        assert m in text, f"{m!r} not in:\n{text}"


@pytest.fixture(scope="session")
def _pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "store"
    ingest(SyntheticSource(seed=7), BarStore(root), SYMS, TF, START, END, progress=False)
    return root


@pytest.fixture
def store(_pristine: Path, isolated: Path) -> BarStore:
    """A fresh copy of a small ingested store (2 symbols x 2 months of 5Min bars, ledger)."""
    root = isolated / "store"
    shutil.copytree(_pristine, root)
    return BarStore(root)


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's config, pipelines and notebooks (the CLI's project root)."""
    root = isolated / "proj"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    (root / "notebooks").mkdir()
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy2(nb, root / "notebooks" / nb.name)
    monkeypatch.setenv("WB_PROJECT_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


def nothing_written(isolated: Path, before: dict[str, str]) -> None:
    """The whole test folder is as it was, and no MLflow store was created."""
    assert fingerprint(isolated) == before
    assert not (isolated / "mlflow.db").exists()
