"""The scheduler driven through APScheduler's own machinery on a frozen clock.

APScheduler 3 reads the wall clock in two places (``schedulers.base`` when it looks for due jobs,
``executors.base`` when it checks a run against the misfire grace); both are pointed at the test's
clock, and the test calls the scheduler's ``_process_jobs`` itself instead of a timer thread. The
job store is the real SQLAlchemy one (SQLite in tmp), so a "restart" is a new scheduler on the
same file and catch-up is APScheduler's coalescing plus our grace time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import apscheduler.executors.base
import apscheduler.schedulers.base
import pytest
from apscheduler.executors.debug import DebugExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import BaseScheduler

from workbench.config import load_config
from workbench.pipeline.schedule_spec import ScheduleError, load_schedule
from workbench.pipeline.scheduler import SchedulerService, upcoming

NY = ZoneInfo("America/New_York")


class ManualScheduler(BaseScheduler):
    """No timer thread: the test calls ``_process_jobs`` at the times it chooses."""

    def wakeup(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(datetime(2024, 3, 4, 12, tzinfo=UTC))
    frozen = types.SimpleNamespace(now=lambda tz=None: c.t.astimezone(tz) if tz else c.t)
    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", frozen)
    monkeypatch.setattr(apscheduler.executors.base, "datetime", frozen)
    return c


def ny(d: date, hh: int, mm: int) -> datetime:
    return datetime(d.year, d.month, d.day, hh, mm, tzinfo=NY).astimezone(UTC)


class Recorder:
    """A fake run_pipeline: records each call, optionally blocks, optionally fails."""

    def __init__(self, root: Path, make, *, fail: bool = False, block: bool = False) -> None:
        self.root, self.make, self.fail, self.block = root, make, fail, block
        self.calls: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.release = threading.Event()
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, pipeline, params, *, cfg, session, trigger, echo):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append(
                {"pipeline": pipeline, "params": params, "session": session, "trigger": trigger}
            )
        self.started.set()
        try:
            if self.block:
                assert self.release.wait(10), "the test never released the run"
            return self.make(self.root / "runs" / pipeline / str(len(self.calls)), ok=not self.fail)
        finally:
            with self._lock:
                self.active -= 1


def write_schedule(root: Path, text: str) -> Path:
    p = root / "pipelines" / "schedule.yaml"
    p.write_text(text)
    return p


def service(root: Path, text: str, clock: Clock, runner: Recorder, alerts: list | None = None,
            executor=None) -> SchedulerService:  # fmt: skip
    cfg = load_config(root)
    sch = load_schedule(write_schedule(root, text), root)
    alerts = alerts if alerts is not None else []
    svc = SchedulerService(
        cfg, sch, clock=clock, runner=runner, echo=lambda _: None,
        alert=lambda s, m, v, k: alerts.append((s, m)),
    )  # fmt: skip
    sched = svc.build(ManualScheduler, executor=executor or DebugExecutor())
    sched.start()
    svc.sync()
    return svc


DAILY = """calendar: XNYS
jobs:
  - name: nightly
    pipeline: tiny
    at: after_close + 30min
    parameters: {x: 3}
    misfire_grace_seconds: 900
"""


def test_catch_up_after_downtime_runs_once_within_the_grace_and_never_after_it(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    runner = Recorder(tiny_project, make_result)
    alerts: list = []
    svc = service(tiny_project, DAILY, clock, runner, alerts)
    job = svc.scheduler.get_job("nightly")
    assert job.next_run_time == ny(date(2024, 3, 4), 16, 30)  # Monday, EST: 21:30 UTC
    clock.t = job.next_run_time
    svc.scheduler._process_jobs()
    assert [c["session"] for c in runner.calls] == [date(2024, 3, 4)]
    assert runner.calls[0]["trigger"] == "schedule:nightly" and runner.calls[0]["params"] == {
        "x": 3
    }

    def restart_at(t: datetime) -> SchedulerService:
        svc.scheduler.shutdown()  # the process goes away; the job store keeps the next fire time
        clock.t = t
        new = service(tiny_project, DAILY, clock, runner, alerts)
        new.scheduler._process_jobs()
        return new

    # down over Tuesday's fire, back 10 minutes after it (grace 15 min): exactly one catch-up
    svc = restart_at(ny(date(2024, 3, 5), 16, 40))
    assert [c["session"] for c in runner.calls] == [date(2024, 3, 4), date(2024, 3, 5)]
    svc.scheduler._process_jobs()  # nothing more to do at the same time
    assert len(runner.calls) == 2
    assert svc.scheduler.get_job("nightly").next_run_time == ny(date(2024, 3, 6), 16, 30)

    # down over Wednesday's and Thursday's fires, back 20 minutes after Thursday's: none run
    svc = restart_at(ny(date(2024, 3, 7), 16, 50))
    assert len(runner.calls) == 2
    missed = [o for o in svc.outcomes if o.status == "missed"]
    assert len(missed) == 1 and "grace 15min" in missed[0].message  # coalesced: one miss reported
    assert alerts[-1][0] == "warning" and "missed" in alerts[-1][1]
    assert svc.scheduler.get_job("nightly").next_run_time == ny(date(2024, 3, 8), 16, 30)

    # down over Friday, Monday and Tuesday (DST started Sunday), back 5 minutes after Tuesday's
    svc = restart_at(ny(date(2024, 3, 12), 16, 35))
    assert [c["session"] for c in runner.calls][-1] == date(2024, 3, 12) and len(runner.calls) == 3
    assert ny(date(2024, 3, 12), 16, 30) == datetime(2024, 3, 12, 20, 30, tzinfo=UTC)
    svc.scheduler.shutdown()


def test_missed_fires_within_a_long_grace_coalesce_into_one_run(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    text = DAILY.replace("misfire_grace_seconds: 900", "misfire_grace_seconds: 432000")  # 5 days
    runner = Recorder(tiny_project, make_result)
    svc = service(tiny_project, text, clock, runner)
    svc.scheduler.shutdown()
    clock.t = ny(date(2024, 3, 7), 18, 0)  # Monday's to Thursday's fires missed, all within grace
    svc = service(tiny_project, text, clock, runner)
    svc.scheduler._process_jobs()
    assert [c["session"] for c in runner.calls] == [date(2024, 3, 7)]  # one run, the latest session
    assert svc.scheduler.get_job("nightly").next_run_time == ny(date(2024, 3, 8), 16, 30)
    svc.scheduler.shutdown()


def test_a_run_that_outlasts_its_interval_never_overlaps(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    """Every 5 minutes in market hours, each run taking 12: runs start every 15 minutes."""
    text = """jobs:
  - {name: often, pipeline: tiny, cron: "*/5 * * * *", market_hours: true}
"""
    runner = Recorder(tiny_project, make_result, block=True)
    executor = ThreadPoolExecutor(4)
    svc = service(tiny_project, text, clock, runner, executor=executor)
    day = date(2024, 3, 5)
    t, end = ny(day, 9, 30), ny(day, 16, 0)
    running_until: datetime | None = None
    fires = 0
    while t <= end:
        clock.t = t
        if running_until is not None and running_until <= t:
            runner.release.set()
            deadline = time.monotonic() + 5
            while executor._instances.get("often", 0) and time.monotonic() < deadline:
                time.sleep(0.002)
            runner.release.clear()
            running_until = None
        n = len(runner.calls)
        runner.started.clear()
        svc.scheduler._process_jobs()
        fires += 1
        if (
            svc.scheduler.get_job("often")
            and executor._instances.get("often", 0)
            and running_until is None
        ):
            assert runner.started.wait(5)
            assert len(runner.calls) == n + 1
            running_until = t + timedelta(minutes=12)
        t += timedelta(minutes=5)
    runner.release.set()
    svc.scheduler.shutdown(wait=True)
    assert fires == 79  # 09:30 ... 16:00 every 5 minutes
    assert runner.max_active == 1  # never two at once
    starts = [c["session"] for c in runner.calls]
    assert len(starts) == 27 and set(starts) == {day}  # 09:30, 09:45, ... 16:00
    skipped = [o for o in svc.outcomes if o.status == "overlap_skipped"]
    assert len(skipped) == 52 and all("still running" in o.message for o in skipped)


def test_after_job_runs_once_its_upstream_finished_ok(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    (tiny_project / "pipelines" / "watch.yaml").write_text(
        (tiny_project / "pipelines" / "tiny.yaml").read_text().replace("name: tiny", "name: watch")
    )
    text = DAILY + "  - {name: watch, pipeline: watch, after: nightly, parameters: {x: 4}}\n"
    runner = Recorder(tiny_project, make_result)
    svc = service(tiny_project, text, clock, runner)
    clock.t = ny(date(2024, 3, 4), 16, 30)
    svc.scheduler._process_jobs()
    assert [c["pipeline"] for c in runner.calls] == ["tiny"]
    queued = svc.scheduler.get_job("watch@2024-03-04")
    assert queued is not None and queued.next_run_time == clock.t  # a one-off job in the store
    svc.scheduler._process_jobs()
    assert [(c["pipeline"], c["session"], c["params"]) for c in runner.calls] == [
        ("tiny", date(2024, 3, 4), {"x": 3}),
        ("watch", date(2024, 3, 4), {"x": 4}),
    ]
    assert svc.scheduler.get_job("watch@2024-03-04") is None  # ran once, gone
    # a failed upstream queues nothing and alerts
    runner.fail = True
    alerts: list = []
    svc._alert = lambda s, m, v, k: alerts.append((s, m))
    clock.t = ny(date(2024, 3, 5), 16, 30)
    svc.scheduler._process_jobs()
    assert svc.scheduler.get_job("watch@2024-03-05") is None
    assert alerts and alerts[0][0] == "critical" and "step 'a' failed at cell 2" in alerts[0][1]
    listed = upcoming(svc.schedule, ny(date(2024, 3, 8), 0, 0), count=3)
    assert [(f.job, f.session, f.after) for f in listed] == [
        ("nightly", date(2024, 3, 8), ""),
        ("watch", date(2024, 3, 8), "nightly"),
        ("nightly", date(2024, 3, 11), ""),
    ]
    svc.scheduler.shutdown()


def test_sync_keeps_unchanged_jobs_replaces_changed_ones_and_drops_unknown(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    runner = Recorder(tiny_project, make_result)
    svc = service(tiny_project, DAILY, clock, runner)
    svc.scheduler.shutdown()
    clock.t = datetime(2024, 3, 6, 12, tzinfo=UTC)  # a day later: the stored fire is in the past
    svc2 = service(tiny_project, DAILY, clock, runner)
    assert svc2.scheduler.get_job("nightly").next_run_time == ny(date(2024, 3, 4), 16, 30)  # kept
    svc2.scheduler.shutdown()
    changed = DAILY.replace("after_close + 30min", "after_close + 45min").replace("nightly", "late")
    svc3 = SchedulerService(load_config(tiny_project), load_schedule(write_schedule(tiny_project, changed), tiny_project),
                            clock=clock, runner=runner, echo=lambda _: None)  # fmt: skip
    svc3.build(ManualScheduler, executor=DebugExecutor()).start()
    assert svc3.sync() == {"late": "added", "nightly": "removed"}
    assert svc3.scheduler.get_job("late").next_run_time == ny(date(2024, 3, 6), 16, 45)
    svc3.scheduler.shutdown()


def test_a_second_scheduler_on_the_same_job_store_is_refused(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    cfg = load_config(tiny_project)
    sch = load_schedule(write_schedule(tiny_project, DAILY), tiny_project)
    one = SchedulerService(cfg, sch, clock=clock, runner=Recorder(tiny_project, make_result))
    two = SchedulerService(cfg, sch, clock=clock, runner=Recorder(tiny_project, make_result))
    one.acquire_process_lock()
    with pytest.raises(ScheduleError, match="another scheduler already runs") as err:
        two.acquire_process_lock()
    assert f"pid {os.getpid()}" in str(err.value) and "wb schedule unlock --scheduler" in str(
        err.value
    )
    one.release_process_lock()
    two.acquire_process_lock()
    two.release_process_lock()


def test_run_now_uses_the_latest_session_and_the_schedules_parameters(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    weekly = DAILY.replace("parameters: {x: 3}", "sessions: first_of_week\n    parameters: {x: 3}")
    runner = Recorder(tiny_project, make_result)
    cfg = load_config(tiny_project)
    svc = SchedulerService(cfg, load_schedule(write_schedule(tiny_project, weekly), tiny_project),
                           clock=clock, runner=runner, echo=lambda _: None)  # fmt: skip
    clock.t = ny(date(2024, 3, 7), 10, 0)  # Thursday morning: the latest close is Wednesday's
    [out] = svc.run_now("tiny")  # by pipeline name
    assert out.status == "ok" and runner.calls[0]["session"] == date(2024, 3, 6)
    with pytest.raises(ScheduleError, match="jobs: \\['nightly'\\]"):
        svc.run_now("nope")


def test_wb_schedule_start_is_sigterm_graceful(tiny_project: Path) -> None:
    import socket
    import urllib.request

    write_schedule(tiny_project, DAILY)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "WB_PROJECT_ROOT": str(tiny_project),
        "WB_METRICS__SCHEDULER_PORT": str(port),
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "wb"), "schedule", "start"],
        cwd=tiny_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "scheduler running" in line:
            break
    assert any("scheduler running" in x for x in lines), "".join(lines)
    assert any("job nightly: added, next" in x for x in lines), "".join(lines)
    assert any(f"metrics on http://127.0.0.1:{port}/metrics" in x for x in lines), "".join(lines)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert "wb_pipeline_runs_total" in r.read().decode()  # the scheduler's own exporter
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + out
    assert "stopping: no run in progress" in out and "scheduler stopped" in out
    # the process lock was released: another scheduler may start on this store now
    cfg = load_config(tiny_project)
    SchedulerService(
        cfg, load_schedule(tiny_project / "pipelines" / "schedule.yaml", tiny_project)
    ).acquire_process_lock()


def test_a_year_of_the_default_schedule_is_fast() -> None:
    repo = Path(__file__).resolve().parents[2]
    sch = load_schedule(repo / "pipelines" / "schedule.yaml", repo)
    t0 = time.perf_counter()
    fires = upcoming(
        sch, datetime(2025, 1, 1, tzinfo=UTC), count=10_000, end=datetime(2026, 1, 1, tzinfo=UTC)
    )
    elapsed = time.perf_counter() - t0
    per_job = {
        j: sum(f.job == j for f in fires) for j in ("daily_ingest", "trading_day", "weekly_retrain")
    }
    assert per_job == {"daily_ingest": 250, "trading_day": 250, "weekly_retrain": 52}
    assert elapsed < 2.0, f"{elapsed:.3f}s"


def test_a_failed_scheduled_run_alerts_through_the_configured_channels(
    tiny_project: Path, clock: Clock, make_result
) -> None:
    from workbench.monitoring.alerts import recent_alerts

    cfg = load_config(tiny_project)
    sch = load_schedule(write_schedule(tiny_project, DAILY), tiny_project)
    svc = SchedulerService(cfg, sch, clock=clock, runner=Recorder(tiny_project, make_result, fail=True),
                           echo=lambda _: None)  # fmt: skip
    from workbench.monitoring.metrics import Metrics

    metrics = Metrics()
    svc.listeners.append(metrics.run_listener())
    out = svc.fire("nightly")
    assert out.status == "failed" and "failed notebook" in out.message and out.run_dir
    assert 'wb_pipeline_runs_total{outcome="failed",pipeline="tiny"} 1.0' in metrics.text()
    rows = recent_alerts(cfg.path(cfg.alerts.history_path))
    assert [(r["severity"], r["kind"], r["key"]) for r in rows] == [
        ("critical", "pipeline", "tiny")
    ]
    assert "scheduled run of 'tiny' failed: step 'a' failed at cell 2" in rows[0]["message"]
    assert rows[0]["values"]["session"] == "2024-03-01"  # the latest close before Monday noon


@pytest.mark.slow
def test_a_scheduled_fire_runs_the_real_pipeline_in_a_worker_thread(tiny_project: Path) -> None:
    """The timer thread, the thread pool and papermill together: a one-off fire of a job runs its
    notebooks, records the trigger and session, and releases the lock."""
    import json

    import mlflow
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.date import DateTrigger

    from workbench.pipeline.lock import RunLock
    from workbench.pipeline.runner import lock_url
    from workbench.pipeline.scheduler import FUNC

    cfg = load_config(tiny_project)
    sch = load_schedule(write_schedule(tiny_project, DAILY), tiny_project)
    svc = SchedulerService(cfg, sch, echo=lambda _: None, alert=lambda *a: None)
    sched = svc.build(BackgroundScheduler)
    sched.start()
    try:
        sched.add_job(
            FUNC, DateTrigger(run_date=datetime.now(UTC)), id="nightly@2024-03-05",
            kwargs={"job": "nightly", "session": "2024-03-05", "fire_time": "2024-03-05T21:30:00+00:00"},
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while not svc.outcomes and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sched.shutdown(wait=True)
    [out] = svc.outcomes
    assert out.status == "ok", out
    summary = json.loads((Path(out.run_dir) / "summary.json").read_text())
    assert summary["trigger"] == "schedule:nightly" and summary["session"] == "2024-03-05"
    assert summary["parameters"]["x"] == 3 and [s["status"] for s in summary["steps"]] == ["ok"] * 3
    tags = mlflow.MlflowClient().get_run(summary["mlflow_parent_run_id"]).data.tags
    assert tags["trigger"] == "schedule:nightly" and tags["session"] == "2024-03-05"
    assert RunLock(lock_url(cfg, tiny_project / "runs")).holders() == []
