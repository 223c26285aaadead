"""MLflow glue: one parent run per pipeline run, one child run per notebook step.

A notebook step calls :func:`start_stage` once (right after its parameters cell) and
:meth:`StageRun.finish` at the end. Under the pipeline runner the stage run is a child of the
pipeline's parent run; run by hand in JupyterLab it is a standalone run. Every stage run carries
the tags ``pipeline, step, config_hash, data_fingerprint, git_commit`` and the versions of the
packages that decide results. The runner logs the executed notebook (``.ipynb`` and ``.html``) to
the stage run afterwards.

Nothing secret is logged: parameter names that look like credentials are refused, and values
equal to a configured secret are refused too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench.config import WorkbenchConfig, config_hash, load_config
from workbench.errors import WorkbenchError

_SECRET_NAME = re.compile(r"(key|secret|token|password|passwd|credential)", re.I)
_VERSIONED = (
    "workbench",
    "numpy",
    "pandas",
    "polars",
    "lightgbm",
    "optuna",
    "mlflow",
    "papermill",
    "alpaca-py",
)


class SecretLeakError(WorkbenchError):
    """Something about to be logged looks like a credential."""


def tracking_uri(cfg: WorkbenchConfig | None = None) -> str:
    """Return the tracking URI: ``MLFLOW_TRACKING_URI`` if set, else config with paths made absolute."""
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env
    cfg = cfg or load_config()
    uri = cfg.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(cfg.path(uri[len(prefix) :]).resolve())
    return uri


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment tag MLflow 3's UI reads to open an experiment on its training runs (rather than
the GenAI traces view); the values are ``genai_development`` and ``custom_model_development``."""


class TrackingStoreError(WorkbenchError):
    """The tracking URI points somewhere a store cannot be opened or created."""


def _store_folder(uri: str) -> Path | None:
    """The local folder a tracking URI needs to exist (None for servers and databases)."""
    from urllib.parse import unquote, urlparse

    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :]
        return None if db in ("", ":memory:") else Path(unquote(db)).parent
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).parent
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive)
        return Path(uri).parent
    return None


HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
"""A tracking server's total deadline per call: 3 attempts of at most 8 s and waits of 1 and 2 s
(plus jitter), under 30 s; MLflow's own defaults (120 s, 7 retries) wait many minutes on a dead
server. Each is a default only: a value already in the environment wins."""


def check_uri(cfg: WorkbenchConfig | None = None) -> str:
    """Return the tracking URI, or raise naming it when its folder does not exist.

    MLflow would create a missing folder for a file store (runs then land somewhere unexpected,
    often a typo) and fails with a database traceback for SQLite; both are refused here. For a
    tracking server, :data:`HTTP_DEFAULTS` bound each request.
    """
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
    folder = _store_folder(uri)
    if folder is not None and not folder.is_dir():
        source = (
            "MLFLOW_TRACKING_URI"
            if os.environ.get("MLFLOW_TRACKING_URI")
            else "mlflow.tracking_uri"
        )
        raise TrackingStoreError(
            f"{source} = {uri!r} points into {folder}, which does not exist. Fix: create the "
            f"folder (mkdir -p {folder}) or correct {source}."
        )
    return uri


def setup(cfg: WorkbenchConfig | None = None, experiment: str | None = None) -> str:
    """Point MLflow at the project's store and experiment; return the experiment id.

    The experiment is created as a model-training experiment (:data:`EXPERIMENT_KIND`), and an
    existing one without that tag gets it.
    """
    import mlflow

    cfg = cfg or load_config()
    mlflow.set_tracking_uri(check_uri(cfg))
    name = experiment or cfg.mlflow.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        root = cfg.path(cfg.mlflow.artifact_root).resolve()
        exp_id = mlflow.create_experiment(
            name, artifact_location=(root / name).as_uri(), tags=dict([EXPERIMENT_KIND])
        )
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND[0] not in exp.tags:
            mlflow.MlflowClient().set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path | None = None) -> str:
    """Return the current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    cwd = root or Path.cwd()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    """Return the versions of the packages that decide results."""
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def check_no_secrets(values: Mapping[str, Any], cfg: WorkbenchConfig | None = None) -> None:
    """Raise :class:`SecretLeakError` if a name looks like a credential or a value equals a secret."""
    secrets = []
    if cfg is not None:
        for s in (cfg.secrets.apca_api_key_id, cfg.secrets.apca_api_secret_key):
            if s is not None:
                secrets.append(s.get_secret_value())
    for k, v in values.items():
        if _SECRET_NAME.search(str(k)):
            raise SecretLeakError(
                f"refusing to log {k!r}: names like key/secret/token are credentials. "
                "Credentials come only from the environment (APCA_API_KEY_ID, APCA_API_SECRET_KEY)."
            )
        if any(sec and sec in str(v) for sec in secrets):
            raise SecretLeakError(
                f"refusing to log {k!r}: its value contains a configured secret (not shown). "
                "Fix: pass credentials only through the environment (APCA_API_KEY_ID, "
                "APCA_API_SECRET_KEY), never as a parameter."
            )


def _flat(values: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        out[str(k)] = text[:6000]
    return out


def lock_hash(root: Path) -> str:
    """Return the sha256 of the dependency lock file (``requirements.lock``), or ``missing``."""
    import hashlib

    lock = root / "requirements.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else "missing"


@dataclass
class StageRun:
    """An active MLflow run for one notebook step, and the outputs it will hand on."""

    run_id: str
    step: str
    output_path: str
    cfg: WorkbenchConfig
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def set_fingerprint(self, fingerprint: str) -> None:
        """Tag the run with the fingerprint of the data it read."""
        import mlflow

        mlflow.set_tag("data_fingerprint", fingerprint)
        self.outputs["data_fingerprint"] = fingerprint
        self.manifest["data_fingerprint"] = fingerprint

    def tag_model(self, model: Any) -> None:
        """Tag the run with the registered model it used: ``model_name``, ``model_version``,
        ``model_alias`` (a :class:`workbench.models.registry.ModelRef`)."""
        import mlflow

        mlflow.set_tags(
            {
                "model_name": model.name,
                "model_version": str(model.version),
                "model_alias": model.alias or "",
            }
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log extra parameters (secret-checked)."""
        import mlflow

        check_no_secrets(params, self.cfg)
        mlflow.log_params(_flat(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics and remember them for the pipeline summary."""
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        mlflow.log_metrics(clean, step=step)
        self.metrics.update(clean)

    def log_figure(self, fig: Any, name: str) -> None:
        """Log a plotly figure as a self-contained HTML artifact under ``figures/``."""
        import mlflow

        mlflow.log_figure(fig, f"figures/{name}.html")

    def log_table(self, df: Any, name: str) -> None:
        """Log a frame as a JSON table artifact (visible in the MLflow UI)."""
        import mlflow

        pdf = df.to_pandas() if hasattr(df, "to_pandas") else df
        mlflow.log_table(pdf, artifact_file=f"tables/{name}.json")

    def hand_on(self, **values: Any) -> None:
        """Record outputs for the next pipeline steps (written by :meth:`finish`)."""
        check_no_secrets(values, self.cfg)
        self.outputs.update(values)
        self._write()

    def _write(self) -> None:
        if not self.output_path:
            return
        payload = {
            "step": self.step,
            "mlflow_run_id": self.run_id,
            "metrics": self.metrics,
            "outputs": self.outputs,
        }
        path = Path(self.output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        os.replace(tmp, path)

    def finish(self, status: str = "FINISHED") -> None:
        """Write the step outputs and end the run."""
        import mlflow

        self._write()
        mlflow.log_dict(self.manifest, "manifest.json")
        mlflow.end_run(status=status)


def _in_notebook() -> bool:
    """A kernel a Jupyter server started for an open notebook (JupyterLab sets JPY_SESSION_NAME);
    not papermill, nbval or a test, whose runs hand on through the runner or not at all."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def start_stage(
    step: str,
    params: Mapping[str, Any],
    *,
    pipeline: str = "",
    parent_run_id: str = "",
    output_path: str = "",
    cfg: WorkbenchConfig | None = None,
    run_name: str | None = None,
) -> StageRun:
    """Start the MLflow run of a notebook step and tag it.

    Parameters
    ----------
    step : str
        Step name (``ingest``, ``features`` ...).
    params : mapping
        The notebook's parameters as injected (logged as MLflow params; secret-checked).
    pipeline, parent_run_id : str
        Set by the pipeline runner; empty for a run by hand (a standalone run).
    output_path : str
        Where to write the step's outputs file for the runner.
    """
    import mlflow

    cfg = cfg or load_config()
    check_no_secrets(params, cfg)
    setup(cfg)
    while mlflow.active_run() is not None:  # a re-executed notebook in JupyterLab
        mlflow.end_run()
    lock = lock_hash(cfg.project_root)
    tags = {
        "pipeline": pipeline or "interactive",
        "lock_hash": lock,
        "step": step,
        "config_hash": config_hash(cfg),
        "git_commit": git_commit(cfg.project_root),
        "data_fingerprint": "",
        **{f"version.{k}": v for k, v in package_versions().items()},
    }
    kwargs: dict[str, Any] = {"run_name": run_name or step, "tags": tags}
    if parent_run_id:
        kwargs["parent_run_id"] = parent_run_id
    run = mlflow.start_run(**kwargs)
    mlflow.log_params(
        _flat({k: v for k, v in params.items() if k not in ("output_path", "parent_run_id")})
    )
    if not output_path and _in_notebook():  # a notebook run by hand: the next notebook's
        from workbench.notebook import interactive_outputs  # empty inputs are filled from here

        output_path = str(interactive_outputs(cfg, step))
    stage = StageRun(run.info.run_id, step, output_path, cfg)
    stage.manifest = {
        "step": step,
        "pipeline": pipeline or "interactive",
        "config_hash": tags["config_hash"],
        "git_commit": tags["git_commit"],
        "lock_hash": lock,
        "data_fingerprint": "",
        "seeds": {k: v for k, v in params.items() if "seed" in k.lower()},
        "parameters": {
            k: v for k, v in params.items() if k not in ("output_path", "parent_run_id")
        },
        "versions": package_versions(),
    }
    stage._write()  # the runner learns the run id even if the notebook fails later
    return stage
