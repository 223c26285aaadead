"""Re-execute a tracked notebook run with the same parameters and data, and compare.

``wb reproduce RUN_ID`` re-runs the notebook of one step run (by ``wb run``) with its recorded
parameters, on fresh, temporary state for everything a run writes besides its own MLflow run:

* the **model registry** is a scratch SQLite registry (``MLFLOW_REGISTRY_URI`` of the kernel), so
  no model version is registered and no alias is moved in the project's registry; the model
  version the original run read (its ``model_name``/``model_version`` parameters or tags) is
  copied in first, under the same version number, so a validate step finds it;
* the **Optuna storage** (parameter ``optuna_storage``) is a scratch database, so the search runs
  every trial again instead of resuming the recorded study (which would "match" by construction);
* an **order ledger** (parameter ``ledger_url``) is a scratch database, so no order is sent twice.

The new run is a standalone MLflow run tagged ``reproduces=<RUN_ID>`` with the comparison as an
artifact. Compared: every metric (within ``rel_tol``) except those that depend on cache state
(:data:`CACHE_DEPENDENT`: chunks fetched or skipped, cache hits, timings), and the identity tags
``data_fingerprint``, ``git_commit``, ``lock_hash`` and ``config_hash``. A reproduction whose
notebook fails is marked FAILED, with the error; the scratch folder is removed in every case.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from workbench.config import WorkbenchConfig, load_config
from workbench.errors import PipelineError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CACHE_DEPENDENT = frozenset(
    {"chunks_fetched", "chunks_skipped", "bars_inserted", "bars_updated", "feature_cache_hit"}
)
"""Metrics that describe what a cache already held, not the result: never compared."""
_VOLATILE = re.compile(r"(seconds|_time|elapsed|cache_)", re.I)  # timings and cache counters
IDENTITY_TAGS = ("data_fingerprint", "git_commit", "lock_hash", "config_hash")


class ReproduceError(PipelineError):
    """A run cannot be reproduced (unknown id, not a notebook step) or its re-run failed."""


@dataclass
class Reproduction:
    """The original and the new run: metric by metric, and their identity tags."""

    original_run_id: str
    new_run_id: str
    comparison: pl.DataFrame  # metric, original, reproduced, match
    identity: dict[str, tuple[str, str]] = field(default_factory=dict)  # tag: (original, new)
    excluded: list[str] = field(default_factory=list)  # cache-dependent metrics left out

    @property
    def same_data(self) -> bool:
        return self._same("data_fingerprint")

    @property
    def same_code(self) -> bool:
        return self._same("git_commit")

    @property
    def same_lock(self) -> bool:
        return self._same("lock_hash")

    def _same(self, tag: str) -> bool:
        old, new = self.identity.get(tag, ("", ""))
        return old == new

    @property
    def matches(self) -> bool:
        """Every compared metric matches and the data are the same."""
        return self.same_data and bool(self.comparison["match"].all())

    @property
    def differences(self) -> list[str]:
        """One line per metric or identity tag that differs."""
        out = [
            f"metric {r['metric']}: {r['original']!r} -> {r['reproduced']!r}"
            for r in self.comparison.filter(~pl.col("match")).iter_rows(named=True)
        ]
        out += [
            f"{tag}: {old or '(none)'} -> {new or '(none)'}"
            for tag, (old, new) in self.identity.items()
            if old != new
        ]
        return out


def check_run_id(run_id: str) -> str:
    """Return a well-formed MLflow run id (32 hex characters), or raise naming the fix."""
    rid = (run_id or "").strip()
    if not RUN_ID.match(rid):
        raise ReproduceError(
            f"run id {run_id!r} is not an MLflow run id (32 hexadecimal characters). Fix: copy "
            "a step's mlflow_run_id from runs/<pipeline>/<time>/summary.json or the MLflow UI, "
            "e.g. wb reproduce 3f2a9c0e1b7d4c5a8e6f0a1b2c3d4e5f."
        )
    return rid


def _open_run(client: Any, run_id: str, uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
            raise
        raise ReproduceError(
            f"no run {run_id!r} in the tracking store {uri}. Fix: check the id (a step's "
            "mlflow_run_id in summary.json) and that MLFLOW_TRACKING_URI / mlflow.tracking_uri "
            "points at the store that recorded it."
        ) from None


def _store_exists(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).is_file()
    return True


def _copy_model_version(main: Any, scratch: Any, name: str, version: str, alias: str) -> None:
    """Register ``name`` version ``version`` (same artifacts) in the scratch registry; earlier
    numbers are placeholders pointing at the same model, so the number is the original's."""
    from mlflow.exceptions import MlflowException

    try:
        mv = main.get_model_version(name, version)
    except MlflowException:
        return  # not in the project's registry: the notebook reports it as it would
    scratch.create_registered_model(name)
    for n in range(1, int(version) + 1):
        tags = {"placeholder": "true"} if n < int(version) else dict(mv.tags)
        kwargs = {"model_id": mv.model_id} if getattr(mv, "model_id", None) else {}
        scratch.create_model_version(name, mv.source, run_id=mv.run_id, tags=tags, **kwargs)
    if alias:
        scratch.set_registered_model_alias(name, alias, version)


def _seed_registry(main: Any, scratch: Any, run: Any, params: dict[str, Any]) -> None:
    tags = run.data.tags
    name = str(params.get("model_name") or tags.get("model_name") or "")
    version = str(params.get("model_version") or tags.get("model_version") or "")
    if name and version.isdigit():
        _copy_model_version(main, scratch, name, version, tags.get("model_alias", ""))


def _compare(
    old: dict[str, float], new: dict[str, float], rel_tol: float
) -> tuple[pl.DataFrame, list[str]]:
    rows, excluded = [], []
    for key, before in sorted(old.items()):
        if key in CACHE_DEPENDENT or _VOLATILE.search(key):
            excluded.append(key)
            continue
        after = new.get(key)
        same = after is not None and (
            math.isclose(before, after, rel_tol=rel_tol, abs_tol=1e-12)
            or (math.isnan(before) and math.isnan(after))
        )
        rows.append({"metric": key, "original": before, "reproduced": after, "match": same})
    for key in sorted(set(new) - set(old)):
        if key not in CACHE_DEPENDENT and not _VOLATILE.search(key):
            rows.append({"metric": key, "original": None, "reproduced": new[key], "match": False})
    schema = {
        "metric": pl.String,
        "original": pl.Float64,
        "reproduced": pl.Float64,
        "match": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema), excluded


def reproduce(
    run_id: str,
    *,
    cfg: WorkbenchConfig | None = None,
    rel_tol: float = 1e-9,
    echo: Callable[[str], None] = lambda _: None,
    execution_timeout: int | None = 3600,
) -> Reproduction:
    """Re-run the notebook of MLflow run ``run_id`` with its recorded parameters and compare.

    The notebook path and the injected parameters come from the run (tag ``notebook``, artifact
    ``notebook/parameters.json``, both written by the pipeline runner). See the module docstring
    for the scratch state (registry, Optuna storage, ledger) and what is compared.

    Raises
    ------
    ReproduceError
        For a malformed or unknown run id, a run that is not a notebook step, or a re-run whose
        notebook failed (the new run is then marked FAILED).
    """
    import mlflow
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from workbench import tracking
    from workbench.pipeline.runner import _kernel_env, _log_notebook, _read_outputs, kernel_manager

    rid = check_run_id(run_id)
    cfg = cfg or load_config()
    uri = tracking.check_uri(cfg)
    if not _store_exists(uri):
        raise ReproduceError(
            f"no run {rid!r}: the tracking store {uri} does not exist yet. Fix: point "
            "MLFLOW_TRACKING_URI / mlflow.tracking_uri at the store that recorded the run."
        )
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = _open_run(client, rid, uri)
    notebook = run.data.tags.get("notebook")
    if not notebook:
        raise ReproduceError(
            f"run {rid} has no 'notebook' tag; only notebook steps run by `wb run` can be "
            "reproduced (a pipeline's parent run cannot: reproduce one of its steps)."
        )
    nb = cfg.project_root / notebook
    if not nb.is_file():
        raise ReproduceError(f"run {rid} ran {notebook}, which is not in {cfg.project_root}.")

    scratch = Path(tempfile.mkdtemp(prefix="wb-reproduce-"))
    new_id = ""
    try:
        try:
            params = json.loads(
                Path(
                    client.download_artifacts(rid, "notebook/parameters.json", str(scratch))
                ).read_text()
            )
        except Exception as exc:  # an artifact store without it: say so, plainly
            raise ReproduceError(
                f"run {rid} has no readable notebook/parameters.json ({type(exc).__name__}); "
                "only runs recorded by `wb run` can be reproduced."
            ) from None
        from workbench.pipeline.spec import notebook_parameters

        declared = notebook_parameters(nb)
        registry = f"sqlite:///{scratch / 'registry.db'}"
        if "optuna_storage" in declared:
            params["optuna_storage"] = f"sqlite:///{scratch / 'optuna.db'}"
        if "ledger_url" in declared:
            params["ledger_url"] = f"sqlite:///{scratch / 'ledger.db'}"
        out = scratch / "outputs.json"
        params.update(output_path=str(out), parent_run_id="", pipeline="reproduce")
        _seed_registry(
            client, mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry), run, params
        )
        executed = scratch / nb.name
        echo(f"reproducing {rid}: {notebook} (scratch registry, Optuna storage and ledger)")
        failure = ""
        try:
            with (
                _kernel_env(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=registry),
                kernel_manager() as km,
            ):
                papermill.execute_notebook(
                    str(nb),
                    str(executed),
                    parameters=params,
                    kernel_name="python3",
                    progress_bar=False,
                    cwd=str(nb.parent),
                    execution_timeout=execution_timeout,
                    km=km,
                )
        except PapermillExecutionError as exc:
            failure = f"cell {exc.cell_index} (In [{exc.exec_count}]): {exc.ename}: {exc.evalue}"
        new_id = _read_outputs(out).get("mlflow_run_id", "")
        if new_id and executed.exists():
            _log_notebook(new_id, executed)
        if failure:
            if new_id:
                client.set_tag(new_id, "reproduces", rid)
                client.set_tag(new_id, "error", failure[:5000])
                client.set_terminated(new_id, "FAILED")
            raise ReproduceError(
                f"the reproduction of run {rid} ({notebook}) failed at {failure}"
                + (f"; its run {new_id} is marked FAILED." if new_id else ".")
            )
        if not new_id:
            raise ReproduceError(
                f"{notebook} finished without recording a run (no start_stage); nothing to compare."
            )
        new = client.get_run(new_id)
        comparison, excluded = _compare(run.data.metrics, new.data.metrics, rel_tol)
        identity = {t: (run.data.tags.get(t, ""), new.data.tags.get(t, "")) for t in IDENTITY_TAGS}
        rep = Reproduction(rid, new_id, comparison, identity, excluded)
        client.set_tag(new_id, "reproduces", rid)
        client.set_tag(new_id, "reproduce.matches", str(rep.matches).lower())
        client.set_tag(new_id, "reproduce.differences", "; ".join(rep.differences)[:5000])
        client.log_dict(
            new_id,
            {
                "original": rid,
                "matches": rep.matches,
                "differences": rep.differences,
                "excluded": excluded,
                "identity": identity,
                "metrics": comparison.to_dicts(),
            },
            "reproduce/comparison.json",
        )
        return rep
    except BaseException as exc:
        if new_id and not isinstance(exc, ReproduceError):  # interrupted or a runner error
            status = "FAILED" if isinstance(exc, Exception) else "KILLED"
            client.set_tag(new_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(new_id, status)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
