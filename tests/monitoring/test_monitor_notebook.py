"""The nightly_monitor pipeline (08_monitor through papermill) on tiny inputs: a model registered
with its reference, a replayed session in the ledger (with the session's /metrics exporter on),
then the monitor: drift of every feature and the predictions, lag, staleness alerts, figures."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import mlflow
import polars as pl
import pytest

from workbench import tracking
from workbench.config import load_config
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.features.sets import build_features
from workbench.models.registry import CHAMPION, REFERENCE_TAG, log_lightgbm, set_alias
from workbench.monitoring.reference import load_reference, reference_frame
from workbench.pipeline import run_pipeline
from workbench.stages.session import run_trade_session

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ["SYN000", "SYN001"]
STRATEGY = "intraday_reversal"
FIGURES = {"psi", "histograms", "execution_lag", "performance"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_model(cfg, store: BarStore) -> None:
    bars = store.read(SYMBOLS, "5Min")
    feats = build_features(bars, STRATEGY, cfg)
    cols = [c for c in feats.columns if c not in ("symbol", "ts")]
    nxt = bars.select(
        "symbol",
        "ts",
        (pl.col("close").shift(-1).over("symbol") / pl.col("close") - 1).alias("label"),
    )
    table = feats.join(nxt, on=["symbol", "ts"]).drop_nulls().sort("ts", "symbol")
    split = table["ts"].unique().sort()[int(table["ts"].n_unique() * 0.6)]
    train, valid = table.filter(pl.col("ts") < split), table.filter(pl.col("ts") >= split)
    model = lgb.LGBMRegressor(n_estimators=10, num_leaves=4, min_child_samples=50, verbose=-1)
    model.fit(train.select(cols).to_pandas(), train["label"].to_numpy())
    ref = reference_frame(train, model.predict(valid.select(cols).to_pandas()), columns=cols)
    tracking.setup(cfg)
    with mlflow.start_run():
        mref = log_lightgbm(
            model, train.select(cols).to_pandas(), registered_name=STRATEGY,
            tags={"split_ts": split.isoformat()}, reference=ref,
        )  # fmt: skip
    set_alias(STRATEGY, CHAMPION, mref.version)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("monitor")
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "WB_MLFLOW__ARTIFACT_ROOT": str(tmp / "mlartifacts"),
        "WB_STORE__ROOT": str(tmp / "bars"),
        "WB_EXECUTION__LEDGER_URL": f"sqlite:///{tmp / 'ledger.db'}",
        "WB_RISK__STATE_URL": f"sqlite:///{tmp / 'risk.db'}",
        "WB_ALERTS__HISTORY_PATH": str(tmp / "alerts.jsonl"),
        "WB_METRICS__SESSION_PORT": str(port),
        # the model here is registered without validation: fixed thresholds, not the cost-aware
        # ones a validated version carries (this test is about monitoring, not decisions)
        "WB_STRATEGIES__INTRADAY_REVERSAL__DECISION__COST_MULTIPLES": "[]",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    before = mlflow.get_tracking_uri()
    cfg = load_config(REPO)
    store = BarStore(tmp / "bars")
    src = SyntheticSource(seed=7, alpha=0.2)
    store.write(
        src.fetch(
            SYMBOLS, "5Min", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
        ),
        "5Min",
    )
    register_model(cfg, store)
    printed: list[str] = []
    session = run_trade_session(
        cfg, store_root=str(tmp / "bars"), model_name=STRATEGY, strategy=STRATEGY, timeframe="5Min",
        symbols=SYMBOLS, session_date="2024-03-01", echo=printed.append,
        allow_model=("ungated",),  # registered by hand above, never validated
    )  # fmt: skip
    res = run_pipeline(
        "nightly_monitor",
        [f"symbols=[{','.join(SYMBOLS)}]", "sessions=3", "backtest_sessions=4",
         "as_of=2024-03-05T15:00:00+00:00", f"store_root={tmp / 'bars'}"],
        cfg=cfg, runs_root=tmp / "runs", echo=lambda _: None,
    )  # fmt: skip
    yield res, session, printed, port, tmp
    mp.undo()
    mlflow.set_tracking_uri(before)


@pytest.mark.notebook
def test_reference_saved_with_the_version(monitored: tuple) -> None:
    assert monitored[0].ok
    client = mlflow.MlflowClient()
    (mv,) = client.search_model_versions(f"name='{STRATEGY}'")
    assert mv.tags[REFERENCE_TAG] == "reference/distributions.parquet"
    from workbench.models.registry import ModelRef

    ref = load_reference(ModelRef(STRATEGY, mv.version, None, mv.run_id, ""))
    assert ref is not None
    assert set(ref["column"].unique()) == {"ret_1", "ret_3", "zscore_20", "rsi_14", "volume_z_78",
                                           "time_of_day", "prediction"}  # fmt: skip
    assert set(ref.filter(pl.col("column") == "prediction")["window"]) == {"valid"}


@pytest.mark.notebook
def test_session_stage_serves_metrics_and_closes_them(monitored: tuple) -> None:
    _, session, printed, port, _ = monitored
    assert f"metrics on http://127.0.0.1:{port}/metrics" in printed
    assert session.result.fills.height > 0
    with pytest.raises(urllib.error.URLError):  # closed with the session
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.notebook
def test_monitor_step_tracks_drift_lag_and_alerts(monitored: tuple) -> None:
    res, session, _, _, tmp = monitored
    assert res.ok, res.summary()
    (step,) = res.steps
    client = mlflow.MlflowClient()
    run = client.get_run(step.mlflow_run_id)
    assert run.data.tags["step"] == "monitor" and run.info.status == "FINISHED"
    figures = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"{n}.html" for n in FIGURES}
    out = res.outputs("monitor")
    assert out["model"] == f"{STRATEGY} v1"
    assert set(out["psi"]) == {"ret_1", "ret_3", "zscore_20", "rsi_14", "volume_z_78", "time_of_day",
                               "prediction"}  # fmt: skip
    assert all(v is not None and v >= 0 for v in out["psi"].values())
    assert run.data.metrics["lag.orders"] == session.result.broker_orders.height > 0
    # the store ends on 2024-03-01; on 03-05 at 15:00 UTC it is far behind the calendar
    assert set(out["stale_symbols"]) == set(SYMBOLS) and out["critical_alerts"] >= len(SYMBOLS)
    hist = [json.loads(x) for x in (tmp / "alerts.jsonl").read_text().splitlines()]
    stale = [a for a in hist if a["kind"] == "staleness" and a["outcome"] == "sent"]
    assert {a["values"]["symbol"] for a in stale} == set(SYMBOLS)
    assert out["retrain"] is False and out["retrain_reason"]
    # the version is flagged as drifted exactly when a column reached monitoring.psi_alert
    from workbench.models.lifecycle import drift_flag
    from workbench.models.registry import resolve_alias

    flag = drift_flag(resolve_alias(STRATEGY, (CHAMPION,)))
    past = sorted(k for k, v in out["psi"].items() if v >= load_config(REPO).monitoring.psi_alert)
    assert (flag is not None) == bool(past)
    if flag is not None:
        assert sorted(flag["columns"]) == past


@pytest.mark.notebook
def test_no_model_yet_finishes_with_nothing_to_monitor(monitored: tuple) -> None:
    """A new project (the scheduler's nightly_monitor before any model is promoted): the step
    finishes ok, hands on empty outputs that say why, and asks for no retrain."""
    from workbench.monitoring.monitor import nothing_to_monitor

    _, _, _, _, tmp = monitored
    res = run_pipeline(
        "nightly_monitor",
        ["strategy=swing_trend_following", f"symbols=[{','.join(SYMBOLS)}]",
         f"store_root={tmp / 'bars'}", "as_of=2024-03-05T15:00:00+00:00"],
        cfg=load_config(REPO), runs_root=tmp / "runs_none", echo=lambda _: None,
    )  # fmt: skip
    assert res.ok, res.summary()
    out = res.outputs("monitor")
    reason = out["retrain_reason"]
    assert reason.startswith("nothing to monitor: registered model 'swing_trend_following'")
    assert out == nothing_to_monitor(reason.removeprefix("nothing to monitor: "))
    assert out["retrain"] is False and out["model"] == "" and out["alerts"] == 0
