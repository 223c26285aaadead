"""Staleness against the calendar, execution lag from ledger frames, performance anomalies, model
age, the early-retrain decision and the pipeline/monitor metrics hooks, on hand-made cases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from workbench.config import MonitoringConfig, load_config
from workbench.monitoring import checks
from workbench.monitoring.metrics import Metrics
from workbench.monitoring.retrain import retrain_decision, retrain_decision_from_outputs

UTC_US = pl.Datetime("us", "UTC")


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------ staleness


def test_staleness_counts_calendar_bars_across_a_close_and_a_holiday() -> None:
    # Wed 2024-07-03 closes at 13:00 ET (17:00Z), 07-04 is a holiday, 07-05 opens at 13:30Z
    now = ts("2024-07-05T14:01:00")  # 5Min bars 13:30..13:55Z complete: 6 bars of the 5th
    frame = checks.staleness(
        {"A": ts("2024-07-03T16:55:00"), "B": ts("2024-07-05T13:55:00"), "C": None}, "5Min", now
    )
    rows = {r["symbol"]: r for r in frame.iter_rows(named=True)}
    assert rows["A"]["expected_bar"] == ts("2024-07-05T13:55:00")
    assert rows["A"]["bars_behind"] == 6  # the holiday and the night count nothing
    assert rows["B"]["bars_behind"] == 0 and rows["B"]["seconds_behind"] == 0.0
    assert rows["C"]["bars_behind"] is None
    alerts = checks.check_alerts(MonitoringConfig(stale_warn_bars=3, stale_alert_bars=6),
                                 staleness_frame=frame)  # fmt: skip
    assert [(a.severity, a.values["symbol"]) for a in alerts] == [
        ("critical", "A"),
        ("critical", "C"),
    ]
    warn = checks.check_alerts(
        MonitoringConfig(stale_warn_bars=3, stale_alert_bars=7), staleness_frame=frame
    )
    assert warn[0].severity == "warning" and warn[0].values["bars_behind"] == 6


# ------------------------------------------------------------------------------------ lag


def ledger_frames() -> dict[str, pl.DataFrame]:
    t0 = ts("2024-06-03T14:00:00")
    intents = pl.DataFrame(
        {
            "client_order_id": ["c1", "c2", "c3"],
            "symbol": ["A", "B", "A"],
            "bar_ts": [t0, t0, t0 + timedelta(minutes=5)],
        },
        schema_overrides={"bar_ts": UTC_US},
    )
    # decisions at the bar's close (14:05): c1 acked 2 s later, filled 10 s after; c2 acked at
    # 14:05:01 and filled twice (first at 14:06); c3 acked, never filled
    trans = pl.DataFrame(
        {"intent_cid": ["c1", "c1", "c2", "c3"],
         "ts": [t0 + timedelta(minutes=5, seconds=2), t0 + timedelta(minutes=5, seconds=12),
                t0 + timedelta(minutes=5, seconds=1), t0 + timedelta(minutes=10, seconds=3)]},
        schema_overrides={"ts": UTC_US},
    )  # fmt: skip
    orders = pl.DataFrame({"client_order_id": ["o1", "o2", "o3"], "intent_cid": ["c1", "c2", "c3"]})
    fills = pl.DataFrame(
        {"client_order_id": ["o1", "o2", "o2"],
         "ts": [t0 + timedelta(minutes=5, seconds=12), t0 + timedelta(minutes=7),
                t0 + timedelta(minutes=6)]},
        schema_overrides={"ts": UTC_US},
    )  # fmt: skip
    return {"intents": intents, "transitions": trans, "orders": orders, "fills": fills}


def test_execution_lag_decision_submit_fill() -> None:
    lag = checks.execution_lag(ledger_frames(), "5Min", "s1").sort("client_order_id")
    assert lag["decision_to_submit"].to_list() == [2.0, 1.0, 3.0]
    assert lag["submit_to_fill"].to_list() == [10.0, 59.0, None]
    assert lag["decision_to_fill"].to_list() == [12.0, 60.0, None]
    s = checks.lag_summary(lag)
    assert s["orders"] == 3 and s["decision_to_fill_p50"] == 36.0
    assert s["decision_to_fill_p95"] == pytest.approx(12 + 0.95 * 48)
    cfg = MonitoringConfig(lag_warn_seconds=30, lag_alert_seconds=120)
    (a,) = checks.check_alerts(cfg, lags=lag, model="m v1")
    assert a.kind == "execution_lag" and a.severity == "warning"
    assert (
        checks.check_alerts(MonitoringConfig(lag_warn_seconds=60, lag_alert_seconds=120), lags=lag)
        == []
    )


# ------------------------------------------------------------------------------------ performance


def test_sessions_performance_by_hand() -> None:
    t = [ts("2024-06-03T14:00:00"), ts("2024-06-03T14:05:00"), ts("2024-06-03T14:10:00"),
         ts("2024-06-04T14:00:00"), ts("2024-06-04T14:05:00")]  # fmt: skip
    eq = pl.DataFrame({"ts": t, "equity": [100.0, 101.0, 101.0, 99.0, 99.5]})
    p = checks.sessions_performance(eq)
    assert p["session"].cast(pl.String).to_list() == ["2024-06-03", "2024-06-04"]
    # day 1: from 100 (its first bar's own start) to 101; bars' PnL 0, +1, 0 -> 1 of 1 positive
    # day 2: from 101 (the previous close) to 99.5; PnL -2, +0.5 -> 1 of 2
    assert p["ret"].to_list() == pytest.approx([0.01, (99.5 - 101) / 101])
    assert p["hit_rate"].to_list() == pytest.approx([1.0, 0.5])


def test_anomalies_against_the_backtest_windows() -> None:
    bt = pl.DataFrame({"ret": np.arange(1, 21) / 1000, "hit_rate": np.linspace(0.4, 0.6, 20)})
    bad = pl.DataFrame({"ret": [0.0, 0.0, -0.01], "hit_rate": [0.2, 0.3, 0.1]})
    a = checks.anomalies(bad, bt, window=3)
    # rolling means of 3 of 1..20 permille: 2..19 permille; -0.0033 is below all of them
    r = a.filter(pl.col("metric") == "ret").row(0, named=True)
    assert r["p"] == 0.0 and r["backtest_median"] == pytest.approx(0.0105)
    good = pl.DataFrame({"ret": [0.01, 0.011, 0.012], "hit_rate": [0.5, 0.5, 0.5]})
    g = checks.anomalies(good, bt, window=3).filter(pl.col("metric") == "ret").row(0, named=True)
    assert g["p"] == pytest.approx(10 / 18)  # windows of 2..11 permille are <= 11 permille
    alerts = checks.check_alerts(MonitoringConfig(), anomaly_frame=a, model="m v1")
    assert {(x.values["metric"], x.severity) for x in alerts} == {
        ("ret", "critical"),
        ("hit_rate", "critical"),
    }
    assert (
        checks.check_alerts(MonitoringConfig(), anomaly_frame=checks.anomalies(good, bt, 3)) == []
    )
    short = checks.anomalies(bad.head(2), bt, window=3)
    assert short["p"].is_nan().all()


# ------------------------------------------------------------------------------------ age, retrain


def test_model_age_from_mlflow_milliseconds() -> None:
    created = ts("2024-06-01T00:00:00")
    now = ts("2024-06-16T12:00:00")
    assert checks.model_age_days(created.timestamp() * 1000, now) == 15.5
    alerts = checks.check_alerts(MonitoringConfig(), age_days=15.5, model="m v3")
    assert [(a.kind, a.severity) for a in alerts] == [("model_age", "warning")]
    assert checks.check_alerts(MonitoringConfig(), age_days=31)[0].severity == "critical"


def test_retrain_decision() -> None:
    psi = {"ret_1": 0.4, "ret_3": 0.3, "rsi_14": 0.05, "time_of_day": float("nan")}
    off = retrain_decision(psi, age_days=10, cfg=MonitoringConfig())
    assert not off and "retrain_on_drift is off" in off.reason and off.columns == ["ret_1", "ret_3"]
    on = MonitoringConfig(retrain_on_drift=True)
    yes = retrain_decision(psi, age_days=10, cfg=on)
    assert yes and yes.reason == "drift past 0.25: ret_1 0.400, ret_3 0.300"
    young = retrain_decision(psi, age_days=1, cfg=on)
    assert not young and "1.0 days old" in young.reason
    need3 = retrain_decision(
        psi, age_days=10, cfg=MonitoringConfig(retrain_on_drift=True, retrain_min_features=3)
    )
    assert not need3 and "retrain_min_features is 3" in need3.reason
    calm = retrain_decision({"ret_1": 0.2}, age_days=10, cfg=on)
    assert not calm and calm.reason == "no column at PSI >= 0.25"


def test_retrain_decision_from_a_monitor_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WB_MONITORING__RETRAIN_ON_DRIFT", "true")
    cfg = load_config(Path(__file__).resolve().parents[2])
    out = {
        "outputs": {"model": "m v2", "psi": {"ret_1": 0.31, "rsi_14": None}, "model_age_days": 9.0}
    }
    (tmp_path / "monitor.outputs.json").write_text(json.dumps(out))
    d = retrain_decision_from_outputs(tmp_path, cfg)
    assert d.retrain and d.columns == ["ret_1"]
    assert not retrain_decision_from_outputs(tmp_path / "nope", cfg)


# ------------------------------------------------------------------------------------ metrics hooks


@dataclass
class Outcome:
    pipeline: str
    status: str
    seconds: float
    run_dir: str = ""


def test_the_scheduler_listener_records_runs_and_the_monitor_outputs(tmp_path: Path) -> None:
    m = Metrics()
    listen = m.run_listener()
    out = {
        "outputs": {"model": "m v2", "psi": {"ret_1": 0.31, "rsi_14": 0.02}, "model_age_days": 9.5}
    }
    (tmp_path / "monitor.outputs.json").write_text(json.dumps(out))
    listen(Outcome("daily_ingest", "ok", 42.0))
    listen(Outcome("daily_ingest", "failed", 3.0))
    listen(Outcome("nightly_monitor", "ok", 61.0, str(tmp_path)))
    r = m.registry
    assert (
        r.get_sample_value("wb_pipeline_runs_total", {"pipeline": "daily_ingest", "outcome": "ok"})
        == 1
    )
    assert (
        r.get_sample_value(
            "wb_pipeline_runs_total", {"pipeline": "daily_ingest", "outcome": "failed"}
        )
        == 1
    )
    assert (
        r.get_sample_value("wb_pipeline_duration_seconds_sum", {"pipeline": "daily_ingest"}) == 45.0
    )
    assert (
        r.get_sample_value(
            "wb_pipeline_duration_seconds_bucket", {"pipeline": "daily_ingest", "le": "5.0"}
        )
        == 1
    )
    assert (
        r.get_sample_value(
            "wb_pipeline_last_success_timestamp_seconds", {"pipeline": "nightly_monitor"}
        )
        > 0
    )
    assert r.get_sample_value("wb_psi", {"model": "m v2", "column": "ret_1"}) == 0.31
    assert r.get_sample_value("wb_model_age_days", {"model": "m v2"}) == 9.5


def test_pipeline_result_and_alert_deliveries_are_counted() -> None:
    from workbench.monitoring.alerts import Alert, Alerter

    @dataclass
    class Step:
        step: str
        status: str
        seconds: float

    @dataclass
    class Result:
        pipeline: str
        steps: list
        ok: bool

    m = Metrics()
    m.observe_pipeline_result(
        Result("research", [Step("ingest", "ok", 2.0), Step("train", "ok", 5.0)], True)
    )
    r = m.registry
    assert (
        r.get_sample_value("wb_pipeline_step_seconds", {"pipeline": "research", "step": "train"})
        == 5.0
    )
    assert r.get_sample_value("wb_pipeline_duration_seconds_sum", {"pipeline": "research"}) == 7.0
    al = Alerter([], secrets=[], on_delivery=m.observe_alert)
    al.send(Alert("warning", "drift", "x"))
    al.send(Alert("warning", "drift", "x"))
    lab = {"kind": "drift", "severity": "warning"}
    assert r.get_sample_value("wb_alerts_total", {**lab, "outcome": "sent"}) == 1
    assert r.get_sample_value("wb_alerts_total", {**lab, "outcome": "deduplicated"}) == 1
