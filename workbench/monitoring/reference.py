"""Reference distributions saved with each model version, and the live windows compared with them.

At training time the train stage samples the model's features on the training window (what the
model learned from) and its predictions on the validation window (what it says out of sample: the
in-sample predictions of a boosted model are wider than what it will say live) into one long
frame ``column, window, value``. :func:`~workbench.models.registry.log_lightgbm` stores it beside
the model (run artifact :data:`~workbench.models.registry.REFERENCE_ARTIFACT`, version tag
:data:`~workbench.models.registry.REFERENCE_TAG`). Sessions and the nightly monitor read it back
with :func:`load_reference`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.models.registry import (
    REFERENCE_ARTIFACT,
    REFERENCE_TAG,
    ModelRef,
    quiet_downloads,
)

log = logging.getLogger("workbench.monitoring")

PREDICTION = "prediction"
REFERENCE_SCHEMA = {"column": pl.String, "window": pl.String, "value": pl.Float64}


def _sample(values: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    values = values[np.isfinite(values)]
    if values.size <= max_rows:
        return values
    return values[np.sort(rng.choice(values.size, max_rows, replace=False))]


def reference_frame(
    features: pl.DataFrame,
    predictions: Any = None,
    *,
    columns: Sequence[str] | None = None,
    max_rows: int = 20_000,
    seed: int = 0,
    feature_window: str = "train",
    prediction_window: str = "valid",
) -> pl.DataFrame:
    """Return a model's reference distributions: ``column, window, value`` (long).

    Parameters
    ----------
    features : pl.DataFrame
        Feature rows (wide); ``columns`` of it are kept (default: every numeric column but
        ``label``/``t1``).
    predictions : array-like, optional
        The model's predictions (stored as column ``prediction``).
    max_rows : int
        At most this many finite values per column (a seeded sample without replacement, in the
        original order).
    """
    rng = np.random.default_rng(seed)
    cols = list(columns) if columns is not None else [
        c for c, t in features.schema.items() if t.is_numeric() and c not in ("label", "t1")
    ]  # fmt: skip
    parts = []
    for c in cols:
        v = _sample(features[c].cast(pl.Float64).to_numpy(), max_rows, rng)
        parts.append(pl.DataFrame({"column": c, "window": feature_window, "value": v}))
    if predictions is not None:
        p = np.asarray(predictions, dtype=float)
        parts.append(
            pl.DataFrame(
                {
                    "column": PREDICTION,
                    "window": prediction_window,
                    "value": _sample(p, max_rows, rng),
                }
            )
        )
    if not parts:
        return pl.DataFrame(schema=REFERENCE_SCHEMA)
    return pl.concat([p.cast(REFERENCE_SCHEMA) for p in parts])  # type: ignore[arg-type]


def load_reference(ref: ModelRef) -> pl.DataFrame | None:
    """Return the reference distributions saved with a model version (None when it has none:
    a version registered before references were saved)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version(ref.name, str(ref.version))
    except MlflowException:
        return None
    artifact = (mv.tags or {}).get(REFERENCE_TAG)
    run_id = ref.run_id or mv.run_id
    if not artifact or not run_id:
        log.warning(
            "%s v%s has no reference distributions (registered before they were saved); "
            "retrain it to monitor drift", ref.name, ref.version,
        )  # fmt: skip
        return None
    with quiet_downloads():
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
    return pl.read_parquet(Path(path))


def reference_columns(reference: pl.DataFrame) -> list[str]:
    """The columns a reference holds, in order (features first, ``prediction`` last)."""
    return reference["column"].unique(maintain_order=True).to_list()


__all__ = [
    "PREDICTION",
    "REFERENCE_ARTIFACT",
    "load_reference",
    "reference_columns",
    "reference_frame",
]
