"""Strategy return series from MLflow: the walk-forward returns each validate run logged.

The 04_validate step logs its stitched out-of-sample returns as the MLflow table
``tables/walk_forward_returns.json`` (columns ``ts, returns``). This module reads them back, one
column per strategy, for allocation and performance tracking.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from workbench.errors import ParameterError, SourceError

__all__ = ["ARTIFACT", "strategy_returns_from_mlflow"]

ARTIFACT = "tables/walk_forward_returns.json"


def _latest_validate_runs(client: Any, experiment: str) -> dict[str, str]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise SourceError(
            f"experiment {experiment!r} does not exist in the tracking store; existing: "
            f"{names!r}. Fix: pass experiment=<name> (the config's mlflow.experiment) or run "
            "the research pipeline first."
        )
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.step = 'validate' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    out: dict[str, str] = {}
    for run in runs:  # newest first: keep the first run seen per strategy
        strategy = run.data.tags.get("strategy")
        if strategy and strategy not in out:
            out[strategy] = run.info.run_id
    if not out:
        raise SourceError(
            f"experiment {experiment!r} has no FINISHED run tagged step=validate with a "
            "'strategy' tag. Fix: run 04_validate for each strategy, or pass run_ids."
        )
    return dict(sorted(out.items()))


def _read_returns(client: Any, strategy: str, run_id: str, tmp: str) -> pl.DataFrame:
    from mlflow.exceptions import MlflowException

    try:
        listed = {f.path for f in client.list_artifacts(run_id, str(Path(ARTIFACT).parent))}
    except MlflowException as exc:
        raise SourceError(
            f"cannot read run {run_id!r} (strategy {strategy!r}) from the tracking store: "
            f"{exc}. Fix: check the run id."
        ) from None
    if ARTIFACT not in listed:
        raise SourceError(
            f"run {run_id!r} (strategy {strategy!r}) has no artifact {ARTIFACT!r}. Fix: re-run "
            "04_validate for this strategy with walk-forward validation on, which logs it."
        )
    path = client.download_artifacts(run_id, ARTIFACT, str(Path(tmp) / run_id))
    table = json.loads(Path(path).read_text())
    cols = table.get("columns", [])
    if "ts" not in cols or "returns" not in cols:
        raise SourceError(
            f"artifact {ARTIFACT!r} of run {run_id!r} (strategy {strategy!r}) must have columns "
            f"ts and returns. Got {cols!r}. Fix: re-run 04_validate."
        )
    i_ts, i_r = cols.index("ts"), cols.index("returns")
    data = table.get("data", [])
    ts = pl.Series("ts", [row[i_ts] for row in data])
    if ts.dtype == pl.String:
        ts = ts.str.to_datetime(time_unit="us", time_zone="UTC")
    elif ts.dtype.is_integer():  # epoch milliseconds
        ts = ts.cast(pl.Datetime("ms")).dt.cast_time_unit("us").dt.replace_time_zone("UTC")
    vals = pl.Series(strategy, [row[i_r] for row in data], dtype=pl.Float64)
    if ts.is_duplicated().any():
        raise SourceError(
            f"artifact {ARTIFACT!r} of run {run_id!r} (strategy {strategy!r}) repeats "
            f"timestamps, e.g. {ts.filter(ts.is_duplicated())[0]}. Fix: re-run 04_validate."
        )
    return pl.DataFrame([ts, vals])


def strategy_returns_from_mlflow(
    run_ids: Mapping[str, str] | None = None,
    *,
    experiment: str | None = None,
    tracking_uri: str | None = None,
) -> pl.DataFrame:
    """Return the walk-forward returns of several strategies, one column each, joined on ``ts``.

    Either ``run_ids`` names the validate-step run of each strategy, or, when it is None, the
    latest FINISHED run per value of the tag ``strategy`` among the runs tagged
    ``step=validate`` in ``experiment`` is used.

    Parameters
    ----------
    run_ids : mapping of str to str, optional
        Strategy name -> MLflow run id of its 04_validate run.
    experiment : str, optional
        Experiment to search when ``run_ids`` is None (default: the config's
        ``mlflow.experiment``). Refused together with ``run_ids``.
    tracking_uri : str, optional
        Tracking store (default: ``MLFLOW_TRACKING_URI``, else the config's store).

    Returns
    -------
    pl.DataFrame
        ``ts`` (UTC, sorted) plus one Float64 column per strategy (in ``run_ids`` order, else
        sorted by name). The series are outer-joined on ``ts``; a strategy without a return
        at a ``ts`` gets 0.0 there, i.e. it is flat (not trading) then.

    Raises
    ------
    SourceError
        A run cannot be read or lacks ``tables/walk_forward_returns.json``, the experiment
        does not exist, or it has no validate run with a ``strategy`` tag.
    """
    from mlflow import MlflowClient

    owner = "strategy_returns_from_mlflow"
    if run_ids is not None and experiment is not None:
        raise ParameterError(
            f"{owner} takes either 'run_ids' or 'experiment', not both. Got experiment="
            f"{experiment!r} with run_ids. Fix: drop one."
        )
    if run_ids is not None and (not isinstance(run_ids, Mapping) or not run_ids):
        raise ParameterError(
            f"The 'run_ids' parameter of {owner} must be a non-empty mapping strategy -> run "
            f"id. Got {run_ids!r} instead."
        )
    if tracking_uri is None or (run_ids is None and experiment is None):
        from workbench.config import load_config
        from workbench.tracking import tracking_uri as default_uri

        cfg = load_config()
        tracking_uri = tracking_uri or default_uri(cfg)
        if run_ids is None and experiment is None:
            experiment = cfg.mlflow.experiment
    if run_ids is not None and "ts" in run_ids:
        raise ParameterError(f"The 'run_ids' parameter of {owner} cannot name a strategy 'ts'.")
    client = MlflowClient(tracking_uri=tracking_uri)
    if run_ids is None:
        run_ids = _latest_validate_runs(client, str(experiment))
    with tempfile.TemporaryDirectory() as tmp:
        frames = [_read_returns(client, str(s), str(r), tmp) for s, r in run_ids.items()]
    out = frames[0]
    for f in frames[1:]:
        out = out.join(f, on="ts", how="full", coalesce=True)
    return out.sort("ts").with_columns(pl.exclude("ts").fill_null(0.0))
