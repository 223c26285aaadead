"""The portfolio pipeline over three fake validate runs, then nbval over the executed notebook."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from workbench import tracking
from workbench.config import load_config
from workbench.pipeline import run_pipeline
from workbench.portfolio.sources import ARTIFACT

REPO = Path(__file__).resolve().parents[2]
# per-bar volatility of each strategy's 5-minute walk-forward returns (types from config/strategies)
VOLS = {
    "intraday_reversal": 0.001,
    "intraday_mean_reversion": 0.002,
    "swing_trend_following": 0.0015,
}
FIGURES = {"weights", "risk_contributions", "correlation", "var_cvar", "cumulative_returns"}
TABLES = {"weights", "risk_contributions", "correlation", "var_cvar", "performance"}


def _validate_runs(exp_id: str, n_sessions: int = 10) -> dict[str, str]:
    """Log one FINISHED run per strategy shaped like 04_validate's (tags, returns table)."""
    days = pd.bdate_range("2024-03-04", periods=n_sessions)
    bars = [
        pd.date_range(f"{d.date()} 09:30", f"{d.date()} 15:55", freq="5min", tz="America/New_York")
        for d in days
    ]
    ts = bars[0].append(bars[1:]).tz_convert("UTC")
    rng = np.random.default_rng(1)
    out = {}
    for strategy, vol in VOLS.items():
        returns = np.round(rng.normal(0.0, vol, len(ts)), 10)
        with mlflow.start_run(
            experiment_id=exp_id, tags={"step": "validate", "strategy": strategy}
        ) as run:
            mlflow.log_table(pd.DataFrame({"ts": ts, "returns": returns}), artifact_file=ARTIFACT)
        out[strategy] = run.info.run_id
    return out


@pytest.fixture(scope="module")
def portfolio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("portfolio")
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("WB_MLFLOW__ARTIFACT_ROOT", str(tmp / "mlartifacts"))
    before = mlflow.get_tracking_uri()
    cfg = load_config(REPO)
    run_ids = _validate_runs(tracking.setup(cfg))
    res = run_pipeline(
        "portfolio",
        ["method=risk_parity", "level=0.9"],
        cfg=cfg,
        runs_root=tmp / "runs",
        echo=lambda _: None,
    )
    yield res, run_ids
    mp.undo()
    mlflow.set_tracking_uri(before)


@pytest.mark.notebook
def test_portfolio_step_is_tracked_and_hands_on_weights(portfolio: tuple) -> None:
    res, run_ids = portfolio
    assert res.ok, res.summary()
    client = mlflow.MlflowClient()
    (step,) = res.steps
    run = client.get_run(step.mlflow_run_id)
    tags = run.data.tags
    assert tags["step"] == "portfolio" and tags["pipeline"] == "portfolio"
    assert tags["mlflow.parentRunId"] == res.parent_run_id and len(tags["data_fingerprint"]) == 64
    assert run.info.status == "FINISHED"
    figures = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"{n}.html" for n in FIGURES}
    tables = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "tables")}
    assert {f"{n}.json" for n in TABLES} <= tables
    notebook = {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "notebook")
    }
    assert {"01_portfolio.ipynb", "01_portfolio.html"} <= notebook
    m = run.data.metrics
    assert m["n_strategies"] == 3 and m["var_historical"] > 0 and m["cvar_cornish_fisher"] > 0
    assert (
        run.data.params["level"] == "0.9" and run.data.params["current_source"] == "equal weights"
    )

    out = res.outputs("portfolio")
    assert out["run_ids"] == run_ids
    w = out["weights"]
    assert set(w) == set(VOLS) and sum(w.values()) == pytest.approx(1.0)
    assert w["intraday_reversal"] + w["intraday_mean_reversion"] == pytest.approx(0.5)  # the cap
    assert all(m[f"weight.{s}"] == pytest.approx(v) for s, v in w.items())
    assert isinstance(out["needs_rebalance"], bool)


@pytest.mark.notebook
def test_executed_notebook_passes_nbval(portfolio: tuple, nbval) -> None:
    res, _ = portfolio
    notebooks = sorted(str(p) for p in res.run_dir.glob("0*_portfolio.ipynb"))
    assert notebooks
    proc = nbval(notebooks, res.run_dir, timeout=300)
    assert proc.returncode == 0, proc.stdout[:5000] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
