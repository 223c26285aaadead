"""MLflow model registry helpers: one registered model per strategy, aliases only (never stages)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError

CHALLENGER = "challenger"
CHAMPION = "champion"


class ModelNotFoundError(WorkbenchError):
    """No model version carries the requested alias."""


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A registered model version."""

    name: str
    version: str
    alias: str | None
    run_id: str
    uri: str


PARAMS_TAG = "workbench.params"
"""Model-version tag holding the :class:`LGBMForecaster` parameters (JSON) that trained it."""
RISK_TAG = "workbench.risk"
"""Model-version tag holding the risk policy it was validated under (JSON, thresholds resolved)."""
REFERENCE_TAG = "workbench.reference"
"""Model-version tag naming the run artifact with its reference distributions (drift monitoring)."""
REFERENCE_ARTIFACT = "reference/distributions.parquet"
"""Where :func:`log_lightgbm` stores a version's reference distributions (``column, window,
value``, long format) in the run that registered it."""


def set_version_tag(ref: ModelRef, key: str, value: str) -> None:
    """Tag a registered model version."""
    import mlflow

    mlflow.MlflowClient().set_model_version_tag(ref.name, str(ref.version), key, value)


def version_tag(ref: ModelRef, key: str) -> str | None:
    """Return a model version's tag, None when absent."""
    import mlflow

    return mlflow.MlflowClient().get_model_version(ref.name, str(ref.version)).tags.get(key)


def log_lightgbm(
    model: Any,
    x_example: Any,
    *,
    registered_name: str,
    tags: dict[str, str] | None = None,
    reference: Any = None,
) -> ModelRef:
    """Log a fitted LightGBM model with signature and input example, and register a new version.

    ``model`` is a fitted :class:`~workbench.models.estimator.LGBMForecaster` (its booster is
    logged in LightGBM's native format and its parameters go to the version tag
    :data:`PARAMS_TAG`, so validation can retrain the same model), a ``lightgbm.Booster`` or a
    LightGBM scikit-learn model. Must be called inside an active MLflow run (the stage run).

    ``reference`` (a polars frame ``column, window, value``: the distributions of the features
    and predictions the version is monitored against) is stored as :data:`REFERENCE_ARTIFACT`
    of the run and named by the version tag :data:`REFERENCE_TAG`.
    """
    import mlflow
    from mlflow.models import infer_signature

    example = x_example.head(5)
    signature = infer_signature(example, model.predict(example))
    tags = dict(tags or {})
    if hasattr(model, "lgb_params"):  # LGBMForecaster: log the booster, keep the parameters
        tags[PARAMS_TAG] = json.dumps(model.get_params(), sort_keys=True, default=str)
        model = model.booster_
    info = mlflow.lightgbm.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        registered_model_name=registered_name,
        # the flavor's requirements (lightgbm, pinned): MLflow's inference would re-import the
        # model in a subprocess to find them, ~20 s per version, for the same answer
        pip_requirements=mlflow.lightgbm.get_default_pip_requirements(),
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    if reference is not None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
            reference.write_parquet(path)
            mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
        tags[REFERENCE_TAG] = REFERENCE_ARTIFACT
    for k, v in tags.items():
        client.set_model_version_tag(registered_name, version, k, v)
    run = mlflow.active_run()
    return ModelRef(
        registered_name,
        version,
        None,
        run.info.run_id if run else "",
        f"models:/{registered_name}/{version}",
    )


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` of registered model ``name`` at ``version``."""
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))


def resolve_alias(name: str, aliases: Sequence[str] = (CHAMPION, CHALLENGER)) -> ModelRef:
    """Return the first version found among ``aliases`` (default: champion, else challenger)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    for alias in aliases:
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            continue
        return ModelRef(name, str(mv.version), alias, mv.run_id or "", f"models:/{name}@{alias}")
    raise ModelNotFoundError(
        f"registered model {name!r} has no version with alias {list(aliases)}. Fix: run the research "
        f"pipeline (`wb run research`) so validation can set '{CHALLENGER}', or set an alias in the MLflow UI."
    )


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow artifact progress bars inside the block: in a notebook they land in the
    outputs as widgets, on a terminal they end without a newline and run into the next line
    (``wb session run --json`` prints one JSON line)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_model(ref: ModelRef) -> Any:
    """Load the LightGBM model of a registered version."""
    import mlflow

    with quiet_downloads():
        return mlflow.lightgbm.load_model(f"models:/{ref.name}/{ref.version}")


def model_params(ref: ModelRef) -> dict[str, Any]:
    """Return the :class:`LGBMForecaster` parameters a registered version was trained with.

    Raises :class:`ModelNotFoundError` when the version was not logged from an ``LGBMForecaster``
    (it has no :data:`PARAMS_TAG` tag).
    """
    import mlflow

    mv = mlflow.MlflowClient().get_model_version(ref.name, ref.version)
    raw = (mv.tags or {}).get(PARAMS_TAG)
    if raw is None:
        raise ModelNotFoundError(
            f"model {ref.name!r} version {ref.version} has no {PARAMS_TAG!r} tag, so its training "
            "parameters are unknown. Fix: log it with workbench.models.registry.log_lightgbm from "
            "an LGBMForecaster (the train stage does), or pass the parameters explicitly."
        )
    return dict(json.loads(raw))
