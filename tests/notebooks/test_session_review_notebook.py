"""07_session_review through papermill on a tiny MLflow: a version's divergence reports, the
slippage model and the shadow comparison are found, shown and logged as figures."""

from __future__ import annotations

import math
from pathlib import Path

import papermill
import polars as pl
import pytest

from workbench.backtest.costs import SlippageCurve

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.notebook
def test_session_review_shows_divergence_slippage_and_shadow(isolated: Path) -> None:
    import mlflow

    from workbench.execution.divergence import BUCKETS, DivergenceReport, log_divergence
    from workbench.execution.shadow import log_shadow_session
    from workbench.models.registry import ModelRef

    mlflow.set_tracking_uri(f"sqlite:///{isolated / 'mlflow.db'}")
    mlflow.set_experiment("review")
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    v = client.create_model_version("m", "file:///nowhere").version
    client.set_registered_model_alias("m", "champion", v)
    ref = ModelRef("m", str(v), "champion", "", "models:/m@champion")
    for day, diff in (("2024-01-02", -5.0), ("2024-01-03", -7.0)):
        attribution = dict.fromkeys(BUCKETS, 0.0) | {"execution": diff}
        metrics = {"pnl_session": 100.0 + diff, "pnl_backtest": 100.0, "pnl_diff": diff,
                   "residual": 0.0, **{f"attr_{b}": x for b, x in attribution.items()}}  # fmt: skip
        eq = pl.DataFrame({"ts": [], "backtest": [], "session": []},
                          schema={"ts": pl.Datetime("us", "UTC"), "backtest": pl.Float64,
                                  "session": pl.Float64})  # fmt: skip
        log_divergence(DivergenceReport(pl.DataFrame(), attribution, metrics, eq), ref,
                       session_id=f"s:{day}", session_date=day)  # fmt: skip
        for role, ret in (("champion", 0.001), ("challenger", 0.002 - diff * 1e-4)):
            log_shadow_session(model_name="m", version=str(v), role=role, strategy="s",
                               session_date=day, session_return=ret, net_pnl=ret * 1e5)  # fmt: skip
    from workbench.execution.divergence import unavailable

    log_divergence(unavailable("session s:2024-01-04 recorded no bars", pnl_session=3.0), ref,
                   session_id="s:2024-01-04", session_date="2024-01-04")  # fmt: skip
    SlippageCurve({"A": 2.0}, {"A": 0.8}, (1.0,) + (0.0,) * 13, 2.0, 0.8, version=1).save(
        isolated / "slip"
    )
    out = isolated / "07.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "07_session_review.ipynb"), str(out),
        parameters={"model_name": "m", "slippage_path": str(isolated / "slip")},
        cwd=str(REPO), progress_bar=False,
    )  # fmt: skip
    (stage,) = client.search_runs(
        [mlflow.get_experiment_by_name("Default").experiment_id, *[e.experiment_id for e in
         mlflow.search_experiments()]], "tags.step = 'session_review'")  # fmt: skip
    assert stage.data.metrics["sessions"] == 3
    assert stage.data.metrics["sessions_without_report"] == 1
    assert math.isclose(stage.data.metrics["mean_pnl_diff"], -6.0)  # the two compared sessions
    assert (
        "2024-01-04: no divergence report: session s:2024-01-04 recorded no bars" in out.read_text()
    )
    assert stage.data.metrics["slippage_version"] == 1
    figs = {a.path for a in client.list_artifacts(stage.info.run_id, "figures")}
    assert figs == {"figures/divergence_history.html", "figures/slippage_model.html",
                    "figures/shadow_sessions.html"}  # fmt: skip
    assert "difference (p = " in out.read_text() or "better (p = " in out.read_text()
