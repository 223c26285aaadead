"""`wb schedule next` and `list` on the repository's default schedule, for a known week:
Thanksgiving 2024 (Thursday closed, Friday a half day closing 13:00 New York)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def repo_env(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WB_PROJECT_ROOT", str(REPO))
    monkeypatch.setenv("WB_SCHEDULE__JOBSTORE_URL", f"sqlite:///{isolated / 'schedule.db'}")
    monkeypatch.setenv("WB_SCHEDULE__LOCK_URL", f"sqlite:///{isolated / 'locks.db'}")
    monkeypatch.setenv("COLUMNS", "120")
    return isolated


def next_json(*args: str) -> list[dict]:
    res = runner.invoke(app, ["schedule", "next", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_next_for_thanksgiving_week(repo_env: Path) -> None:
    ingest = next_json("--pipeline", "daily_ingest", "--from", "2024-11-25", "--count", "5")
    assert [(f["session"], f["utc"], f["local"]) for f in ingest] == [
        ("2024-11-25", "2024-11-25T21:30:00+00:00", "2024-11-25T16:30:00-05:00"),
        ("2024-11-26", "2024-11-26T21:30:00+00:00", "2024-11-26T16:30:00-05:00"),
        ("2024-11-27", "2024-11-27T21:30:00+00:00", "2024-11-27T16:30:00-05:00"),
        ("2024-11-29", "2024-11-29T18:30:00+00:00", "2024-11-29T13:30:00-05:00"),  # half day
        ("2024-12-02", "2024-12-02T21:30:00+00:00", "2024-12-02T16:30:00-05:00"),
    ]
    trading = next_json("--pipeline", "trading_day", "--from", "2024-11-25", "--count", "5")
    assert [f["session"] for f in trading] == [
        "2024-11-25",
        "2024-11-26",
        "2024-11-27",
        "2024-11-29",
        "2024-12-02",
    ]
    assert {f["local"][11:] for f in trading} == {"09:00:00-05:00"}  # 30 minutes before the open
    retrain = next_json("--pipeline", "weekly_retrain", "--from", "2024-11-25", "--count", "2")
    assert [(f["session"], f["local"]) for f in retrain] == [
        ("2024-11-25", "2024-11-25T17:00:00-05:00"),
        ("2024-12-02", "2024-12-02T17:00:00-05:00"),
    ]
    week = next_json("--from", "2024-11-25", "--count", "40")
    assert not [f for f in week if f["session"] == "2024-11-28"]  # the holiday never fires
    assert all(f["timezone"] == "America/New_York" for f in week)
    assert [f["utc"] for f in week] == sorted(f["utc"] for f in week)
    # a datetime without offset is UTC: starting after Wednesday's ingest fire skips it
    later = next_json("--pipeline", "daily_ingest", "--from", "2024-11-27T21:30:01", "--count", "1")
    assert later[0]["session"] == "2024-11-29"


def test_next_table_shows_utc_and_new_york(repo_env: Path) -> None:
    res = runner.invoke(
        app,
        ["schedule", "next", "--pipeline", "daily_ingest", "--from", "2024-11-29", "--count", "1"],
    )
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if "2024-11-29" in line)
    cells = [c.strip() for c in row.strip("│┃ ").split("│")]
    assert cells[:4] == ["2024-11-29", "daily_ingest", "2024-11-29 18:30 UTC", "Fri 13:30 EST"]


def test_next_and_list_refuse_bad_input_with_the_fix(repo_env: Path) -> None:
    res = runner.invoke(app, ["schedule", "next", "--pipeline", "daily_ingets"])
    assert res.exit_code == 2 and "no scheduled job or pipeline 'daily_ingets'" in res.output
    assert "Did you mean 'daily_ingest'?" in res.output
    res = runner.invoke(app, ["schedule", "next", "--from", "next tuesday"])
    assert res.exit_code == 2 and "is not ISO 8601" in res.output
    listed = runner.invoke(app, ["schedule", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    jobs = {j["job"]: j for j in json.loads(listed.output)["jobs"]}
    assert jobs["daily_ingest"]["when"] == "after_close + 30min"
    assert jobs["weekly_retrain"]["when"] == "after_close + 1h, first_of_week"
    assert (
        jobs["daily_ingest"]["grace_seconds"] == 14400
        and jobs["daily_ingest"]["stored_next_utc"] is None
    )


class FakeRuns:
    """Stands in for run_pipeline: records each run; the pipelines in ``fail`` fail."""

    def __init__(self, root: Path, fail: tuple[str, ...] = (), psi: dict | None = None) -> None:
        self.root, self.fail, self.psi = root, fail, psi or {}
        self.calls: list[tuple[str, dict, str, str]] = []

    def __call__(self, pipeline, params, *, cfg, session, trigger, echo):
        from tests.pipeline.conftest import tiny_result

        self.calls.append((pipeline, params, session.isoformat(), trigger))
        run_dir = self.root / pipeline / str(len(self.calls))
        if pipeline == "nightly_monitor":  # what 08_monitor hands on
            run_dir.mkdir(parents=True)
            out = {"psi": self.psi, "model_age_days": 30.0, "retrain": False}
            (run_dir / "monitor.outputs.json").write_text(json.dumps({"outputs": out}))
        return tiny_result(run_dir, ok=pipeline not in self.fail)


def test_run_now_runs_the_after_jobs_for_the_same_session(
    repo_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workbench.pipeline.runner as runner_mod

    fake = FakeRuns(repo_env)
    monkeypatch.setattr(runner_mod, "run_pipeline", fake)
    res = runner.invoke(app, ["schedule", "run-now", "daily_ingest"])
    assert res.exit_code == 0, res.output
    assert [c[0] for c in fake.calls] == ["daily_ingest", "nightly_monitor"]
    (_, ingest, session, trig), (_, monitor, session2, trig2) = fake.calls
    assert ingest == {"start": session, "end": session} and monitor == {}
    assert session2 == session and (trig, trig2) == (
        "schedule:daily_ingest",
        "schedule:nightly_monitor",
    )
    assert "nightly_monitor: runs after daily_ingest" in res.output
    assert "nightly_monitor: ok (session" in res.output
    # --no-after runs the job alone; an after job run by name runs alone too (nothing follows it)
    fake.calls.clear()
    res = runner.invoke(app, ["schedule", "run-now", "daily_ingest", "--no-after"])
    assert res.exit_code == 0 and [c[0] for c in fake.calls] == ["daily_ingest"], res.output
    fake.calls.clear()
    res = runner.invoke(app, ["schedule", "run-now", "nightly_monitor"])
    assert res.exit_code == 0 and [c[0] for c in fake.calls] == ["nightly_monitor"], res.output


def test_run_now_does_not_run_the_after_jobs_of_a_failed_run(
    repo_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workbench.pipeline.runner as runner_mod

    fake = FakeRuns(repo_env, fail=("daily_ingest",))
    monkeypatch.setattr(runner_mod, "run_pipeline", fake)
    res = runner.invoke(app, ["schedule", "run-now", "daily_ingest"])
    assert res.exit_code == 1, res.output
    assert [c[0] for c in fake.calls] == ["daily_ingest"]
    assert "daily_ingest: failed" in res.output and "nightly_monitor" not in res.output
    # the after job failing: exit 1 too, both ran
    fake = FakeRuns(repo_env, fail=("nightly_monitor",))
    monkeypatch.setattr(runner_mod, "run_pipeline", fake)
    res = runner.invoke(app, ["schedule", "run-now", "daily_ingest"])
    assert res.exit_code == 1 and [c[0] for c in fake.calls] == ["daily_ingest", "nightly_monitor"]


@pytest.mark.slow
def test_wb_schedule_start_runs_the_default_schedule(repo_env: Path) -> None:
    """The repository's schedule on its committed config: every job is scheduled (the after job
    too) with the fire times `wb schedule next` shows, stored in the job store; SIGTERM stops it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from datetime import UTC, datetime

    from workbench.config import load_config
    from workbench.pipeline.schedule_spec import load_schedule
    from workbench.pipeline.scheduler import stored_jobs, upcoming

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = datetime.now(UTC)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "wb"), "schedule", "start"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "scheduler running" in line:
            break
    started = datetime.now(UTC)
    text = "".join(lines)
    assert "scheduler running" in text, text
    cfg = load_config()
    stored = stored_jobs(cfg)
    sch = load_schedule(REPO / "pipelines" / "schedule.yaml", REPO)
    assert set(stored) == {"daily_ingest", "trading_day", "weekly_retrain"}
    for job, nxt in stored.items():
        # the next fire from when it started (or, had one passed during start-up, the one after)
        want = [upcoming(sch, t, count=1, job=job)[0].fire_time for t in (t0, started)]
        assert nxt in want, (job, nxt, want)
        assert f"job {job}: added, next {nxt:%Y-%m-%d %H:%M} UTC" in text, text
    assert "job nightly_monitor: after daily_ingest (when its run for a session is ok)" in text
    assert "left out" not in text
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text + out
    assert "scheduler stopped" in out


@pytest.mark.parametrize("switch", ["true", "false"])
def test_drift_past_the_alert_runs_weekly_retrain_early_when_switched_on(
    repo_env: Path, monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    import workbench.pipeline.runner as runner_mod

    monkeypatch.setenv("WB_MONITORING__RETRAIN_ON_DRIFT", switch)
    monkeypatch.setenv("WB_ALERTS__HISTORY_PATH", str(repo_env / "alerts.jsonl"))
    fake = FakeRuns(repo_env, psi={"ret_1": 0.31, "ret_3": 0.05, "prediction": None})
    monkeypatch.setattr(runner_mod, "run_pipeline", fake)
    res = runner.invoke(app, ["schedule", "run-now", "daily_ingest"])
    assert res.exit_code == 0, res.output
    ran = [c[0] for c in fake.calls]
    if switch == "false":
        assert ran == ["daily_ingest", "nightly_monitor"]
        assert (
            "retrain early: no (drift past 0.25 (ret_1 0.310) but monitoring.retrain_on_drift is off)"
            in res.output
        )
        return
    assert ran == ["daily_ingest", "nightly_monitor", "weekly_retrain"]
    session = fake.calls[0][2]
    assert fake.calls[2][1] == {
        "start": (date.fromisoformat(session) - timedelta(days=364)).isoformat(),
        "end": session,
    }
    assert fake.calls[2][3] == "schedule:weekly_retrain"
    assert "retrain early: yes (drift past 0.25: ret_1 0.310)" in res.output
    # no drift: no early retrain
    fake.calls.clear()
    fake.psi = {"ret_1": 0.2}
    res = runner.invoke(app, ["schedule", "run-now", "daily_ingest"])
    assert [c[0] for c in fake.calls] == ["daily_ingest", "nightly_monitor"], res.output


def test_drift_queues_the_early_retrain_in_the_job_store(
    repo_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the scheduler process the early retrain is a one-off job in the store (it survives a
    restart), for the monitored session, with a warning alert saying why."""
    from datetime import UTC, datetime

    from apscheduler.executors.debug import DebugExecutor
    from apscheduler.schedulers.base import BaseScheduler

    class Manual(BaseScheduler):  # no timer thread: nothing runs unless processed
        def wakeup(self) -> None:
            pass

        def shutdown(self, wait: bool = True) -> None:
            super().shutdown(wait)

    from workbench.config import load_config
    from workbench.pipeline.schedule_spec import load_schedule
    from workbench.pipeline.scheduler import SchedulerService

    monkeypatch.setenv("WB_MONITORING__RETRAIN_ON_DRIFT", "true")
    alerts: list[tuple[str, str]] = []
    fake = FakeRuns(repo_env, psi={"ret_1": 0.4})
    svc = SchedulerService(
        load_config(), load_schedule(REPO / "pipelines" / "schedule.yaml", REPO), runner=fake,
        echo=lambda _: None, alert=lambda s, m, v, k: alerts.append((s, m)),
    )  # fmt: skip
    sched = svc.build(Manual, executor=DebugExecutor())
    sched.start()  # nothing runs: the test looks at what was queued
    try:
        day, at = date(2024, 3, 5), datetime(2024, 3, 5, 21, 30, tzinfo=UTC)
        out = svc.fire("nightly_monitor", session=day, fire_time=at)
        assert out.status == "ok" and [c[0] for c in fake.calls] == ["nightly_monitor"]
        job = sched.get_job("weekly_retrain@2024-03-05")
        assert job is not None and job.kwargs == {
            "job": "weekly_retrain", "session": "2024-03-05", "fire_time": at.isoformat(),
        }  # fmt: skip
        assert alerts == [
            (
                "warning",
                "weekly_retrain runs early (session 2024-03-05): drift past 0.25: ret_1 0.400",
            )
        ]
    finally:
        sched.shutdown(wait=False)
