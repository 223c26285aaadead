"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point config, stores and MLflow at ``tmp_path`` (nothing lands in the repository)."""
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(k)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WB_MLFLOW__ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))
    monkeypatch.setenv("WB_STORE__ROOT", str(tmp_path / "data" / "bars"))
    monkeypatch.setenv("WB_STORE__FEATURES_ROOT", str(tmp_path / "data" / "features"))
    return tmp_path
