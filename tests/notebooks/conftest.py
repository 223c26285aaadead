"""nbval over executed notebooks, the way CI runs it (one helper for every pipeline test)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_nbval(notebooks: Sequence[str], run_dir: Path, timeout: int) -> subprocess.CompletedProcess:
    """Run nbval (lax, sanitized, current env) over executed notebooks in their run folder."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(Path(__file__).with_name("nbval_sanitize.cfg")),
            "-W",
            "ignore",
            "-o",
            "addopts=",
            "-o",
            "filterwarnings=",
            *notebooks,
        ],
        capture_output=True,
        text=True,
        cwd=run_dir,
        timeout=timeout,
        env={**os.environ, "WB_PROJECT_ROOT": str(REPO)},  # nbval starts kernels in the run folder
    )


@pytest.fixture
def nbval() -> Callable[..., subprocess.CompletedProcess]:
    return run_nbval
