"""Strategy returns read back from a temporary MLflow store (sqlite + local artifacts)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
import polars as pl
import pytest

from workbench.errors import ParameterError, SourceError
from workbench.portfolio import strategy_returns_from_mlflow
from workbench.portfolio.sources import ARTIFACT

EXPERIMENT = "portfolio-test"


def _log_run(
    exp_id: str,
    strategy: str,
    returns: list[float] | None,
    start: str,
    *,
    step: str = "validate",
    status: str = "FINISHED",
) -> str:
    tags = {"step": step, "strategy": strategy}
    with mlflow.start_run(experiment_id=exp_id, tags=tags) as run:
        if returns is not None:
            ts = pd.date_range(start, periods=len(returns), freq="D", tz="UTC")
            mlflow.log_table(pd.DataFrame({"ts": ts, "returns": returns}), artifact_file=ARTIFACT)
        mlflow.end_run(status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One store: momentum (old and new run), carry, a failed and a train run that don't count."""
    root: Path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp_id = mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "art").as_uri())
        ids = {
            "old_momentum": _log_run(exp_id, "momentum", [0.5, 0.5], "2024-01-01"),
            "momentum": _log_run(exp_id, "momentum", [0.01, -0.02, 0.03], "2024-01-01"),
            "carry": _log_run(exp_id, "carry", [0.002, 0.004, 0.006], "2024-01-02"),
            "failed": _log_run(exp_id, "carry", [9.0], "2024-01-01", status="FAILED"),
            "train": _log_run(exp_id, "value", [9.0], "2024-01-01", step="train"),
            "no_table": _log_run(exp_id, "bare", None, "2024-01-01"),
        }
        yield {"uri": uri, **ids}
    finally:
        mlflow.set_tracking_uri(previous)


def _ts(*days: int) -> list[datetime]:
    return [datetime(2024, 1, d, tzinfo=UTC) for d in days]


def test_explicit_run_ids_are_outer_joined_with_flat_fill(store: dict[str, str]) -> None:
    run_ids = {"momentum": store["momentum"], "carry": store["carry"]}
    out = strategy_returns_from_mlflow(run_ids, tracking_uri=store["uri"])
    assert out.columns == ["ts", "momentum", "carry"]
    assert out.schema["ts"] == pl.Datetime("us", "UTC")
    assert out["ts"].to_list() == _ts(1, 2, 3, 4)
    assert out["momentum"].to_list() == [0.01, -0.02, 0.03, 0.0]  # 4 Jan: not trading
    assert out["carry"].to_list() == [0.0, 0.002, 0.004, 0.006]
    assert run_ids == {"momentum": store["momentum"], "carry": store["carry"]}


def test_discovery_stops_at_a_validate_run_without_table(store: dict[str, str]) -> None:
    with pytest.raises(SourceError, match=rf"run '{store['no_table']}' \(strategy 'bare'\)"):
        strategy_returns_from_mlflow(experiment=EXPERIMENT, tracking_uri=store["uri"])


def test_discovery_picks_the_newest_finished_runs(
    store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same store without the 'bare' run: copy the runs that have tables into a new experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    client = mlflow.MlflowClient(store["uri"])
    exp_id = client.create_experiment("discovery", artifact_location=tmp_path.as_uri())
    _log_run(exp_id, "momentum", [0.5, 0.5], "2024-01-01")
    newest = _log_run(exp_id, "momentum", [0.01, -0.02], "2024-01-01")
    _log_run(exp_id, "carry", [0.003], "2024-01-02")
    _log_run(exp_id, "carry", [9.0], "2024-01-01", status="FAILED")
    _log_run(exp_id, "value", [9.0], "2024-01-01", step="train")
    out = strategy_returns_from_mlflow(experiment="discovery")  # URI from the environment
    assert out.columns == ["ts", "carry", "momentum"]
    assert out["momentum"].to_list() == [0.01, -0.02]
    assert out["carry"].to_list() == [0.0, 0.003]
    same = strategy_returns_from_mlflow({"momentum": newest}, tracking_uri=store["uri"])
    assert same["momentum"].to_list() == [0.01, -0.02]


def test_missing_artifact_names_the_run_and_the_fix(store: dict[str, str]) -> None:
    with pytest.raises(
        SourceError,
        match=rf"run '{store['no_table']}' \(strategy 'bare'\) has no artifact "
        r"'tables/walk_forward_returns\.json'\. Fix: re-run 04_validate",
    ):
        strategy_returns_from_mlflow({"bare": store["no_table"]}, tracking_uri=store["uri"])


def test_unknown_run_and_experiment_are_refused(store: dict[str, str]) -> None:
    with pytest.raises(SourceError, match=r"cannot read run 'deadbeef' \(strategy 'x'\)"):
        strategy_returns_from_mlflow({"x": "deadbeef"}, tracking_uri=store["uri"])
    with pytest.raises(SourceError, match=r"experiment 'nope' does not exist.*'portfolio-test'"):
        strategy_returns_from_mlflow(experiment="nope", tracking_uri=store["uri"])


def test_ambiguous_or_empty_arguments_are_refused(store: dict[str, str]) -> None:
    with pytest.raises(ParameterError, match=r"either 'run_ids' or 'experiment'.*'x'"):
        strategy_returns_from_mlflow({"a": "1"}, experiment="x", tracking_uri=store["uri"])
    with pytest.raises(ParameterError, match=r"non-empty mapping.*Got \{\}"):
        strategy_returns_from_mlflow({}, tracking_uri=store["uri"])
