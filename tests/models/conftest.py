"""A tiny synthetic feature table (planted signal) shared by the model tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_utils

FEATURES = ["f0", "f1", "f2", "f3"]


def make_table(
    n_ts: int = 500,
    symbols: tuple[str, ...] = ("AAA", "BBB", "CCC", "DDD"),
    *,
    seed: int = 0,
    horizon: int = 3,
) -> pl.DataFrame:
    """Return a feature table keyed by (symbol, ts), sorted, with ``label`` and ``t1``.

    ``label`` is a forward return with a planted linear signal in ``f0`` (and a weaker one in
    ``f1``); ``t1`` is ``horizon`` bars after ``ts``.
    """
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    ts = [start + timedelta(minutes=5 * i) for i in range(n_ts)]
    frames = []
    for sym in symbols:
        x = rng.normal(size=(n_ts, len(FEATURES)))
        label = 0.004 * x[:, 0] + 0.002 * x[:, 1] + rng.normal(scale=0.01, size=n_ts)
        cols = {f: x[:, i] for i, f in enumerate(FEATURES)}
        frames.append(pl.DataFrame({"symbol": [sym] * n_ts, "ts": ts, **cols, "label": label}))
    table = pl.concat(frames).with_columns(t1=pl.col("ts") + timedelta(minutes=5 * horizon))
    return table.sort("symbol", "ts")


@pytest.fixture(scope="session")
def table() -> pl.DataFrame:
    """2,000 rows: 4 symbols x 500 five-minute bars."""
    return make_table()


@contextmanager
def throwaway_experiment(root: Path, name: str) -> Iterator[str]:
    """A SQLite MLflow store under ``root`` with one active experiment ``name``; MLflow's global
    tracking state (URI, active experiment, ``MLFLOW_EXPERIMENT_ID``, which
    ``mlflow.set_experiment`` writes) is put back as it was on exit."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mp.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_EXPERIMENT_ID", "")  # recorded as absent: put back absent on exit
        mp.delenv("MLFLOW_EXPERIMENT_ID")
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment(name, artifact_location=(root / "art").as_uri())
        mlflow.set_experiment(experiment_id=exp)
        yield exp
        while mlflow.active_run() is not None:
            mlflow.end_run()
