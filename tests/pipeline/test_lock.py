"""The run lock: a run of a pipeline refuses to start while another process runs it, says who,
and how to clear a stale lock; a dead holder on this host is taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import load_config
from workbench.pipeline import run_pipeline
from workbench.pipeline.lock import PipelineLocked, RunLock
from workbench.pipeline.runner import lock_url

HOLDER = textwrap.dedent(
    """
    import sys, time
    from workbench.pipeline.lock import RunLock
    RunLock(sys.argv[1]).acquire("tiny", session="2024-03-05", trigger="schedule:tiny", run_dir="runs/tiny/x")
    print("held", flush=True)
    time.sleep(120)
    """
)


def hold_in_another_process(url: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def test_a_manual_run_is_refused_while_a_scheduled_run_holds_the_lock(tiny_project: Path) -> None:
    cfg = load_config(tiny_project)
    url = lock_url(cfg, tiny_project / "runs")
    assert url == f"sqlite:///{tiny_project / 'runs' / 'locks.db'}"
    proc = hold_in_another_process(url)
    try:
        with pytest.raises(PipelineLocked) as err:
            run_pipeline("tiny", cfg=cfg, echo=lambda _: None)
        msg = str(err.value)
        assert "pipeline 'tiny' is already running: schedule:tiny run for session 2024-03-05" in msg
        assert f"pid {proc.pid} on host" in msg and "run folder runs/tiny/x" in msg
        assert "Nothing was run" in msg and "`wb schedule unlock tiny`" in msg
        assert not (tiny_project / "runs" / "tiny").exists()  # no run folder, no MLflow run
        assert err.value.holder.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: on this host the lock is stale and taken over
    locks = RunLock(url)
    me = locks.acquire("tiny", session="2024-03-06", trigger="manual")
    assert locks.holder("tiny") == me
    assert locks.release(me) and locks.holder("tiny") is None


def test_a_live_holder_in_this_process_is_respected_and_release_is_by_token(tmp_path: Path) -> None:
    locks = RunLock(f"sqlite:///{tmp_path / 'l.db'}")
    a = locks.acquire("p", session="2024-03-05", trigger="schedule:p")
    with pytest.raises(PipelineLocked, match="schedule:p run for session 2024-03-05"):
        locks.acquire("p", session="2024-03-06", trigger="manual")  # another session: still one run
    with locks.hold("q", session="2024-03-05", trigger="manual"):
        assert {h.pipeline for h in locks.holders()} == {"p", "q"}
    assert [h.pipeline for h in locks.holders()] == ["p"]
    cleared = locks.clear("p")
    assert cleared is not None and cleared.token == a.token
    b = locks.acquire("p", session="2024-03-06", trigger="manual")
    assert not locks.release(a)  # the old holder cannot release the new holder's lock
    assert locks.holder("p") == b


def test_wb_schedule_unlock_clears_a_lock_held_elsewhere(tiny_project: Path, monkeypatch) -> None:
    monkeypatch.setenv("WB_PROJECT_ROOT", str(tiny_project))
    (tiny_project / "pipelines" / "schedule.yaml").write_text(
        "jobs:\n  - {name: tiny, pipeline: tiny, at: after_close + 30min}\n"
    )
    cfg = load_config(tiny_project)
    locks = RunLock(lock_url(cfg, tiny_project / "runs"))
    with locks.engine.begin() as c:  # a holder on another host: never taken over automatically
        c.exec_driver_sql(
            "INSERT INTO pipeline_locks VALUES ('tiny', '2024-03-05', 'schedule:tiny', 'tok', "
            "'other-host', 4242, 0, '2024-03-05 21:30:00.000000', 'runs/tiny/y')"
        )
    with pytest.raises(PipelineLocked, match="pid 4242 on host other-host"):
        locks.acquire("tiny", session="2024-03-05", trigger="manual")
    runner = CliRunner()
    listed = runner.invoke(app, ["schedule", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [h["host"] for h in json.loads(listed.output)["locks"]] == ["other-host"]
    res = runner.invoke(app, ["schedule", "unlock", "tiny"])
    assert res.exit_code == 0, res.output
    assert "cleared the lock of tiny held by schedule:tiny run for session 2024-03-05" in res.output
    assert locks.holder("tiny") is None
    again = runner.invoke(app, ["schedule", "unlock", "tiny"])
    assert "no lock held for tiny" in again.output


SCHEDULER = textwrap.dedent(
    """
    import subprocess, sys, threading, time
    from datetime import UTC, datetime
    from pathlib import Path
    from apscheduler.triggers.date import DateTrigger
    from workbench.config import load_config
    from workbench.pipeline.lock import RunLock
    from workbench.pipeline.runner import lock_url
    from workbench.pipeline.scheduler import FUNC, SchedulerService

    root = Path(sys.argv[1])
    cfg = load_config(root)

    def runner(pipeline, params, *, cfg, session, trigger, echo):
        # what run_pipeline does first: take the lock; then a child process (a kernel) works
        RunLock(lock_url(cfg, root / "runs")).acquire(pipeline, session=str(session), trigger=trigger)
        kid = subprocess.Popen(["sleep", "300"])
        print(f"running kernel {kid.pid}", flush=True)
        time.sleep(300)

    svc = SchedulerService(cfg, runner=runner, alert=lambda *a: None,
                           echo=lambda m: print(m, flush=True))

    def fire_soon():
        while svc.scheduler is None or not svc.scheduler.running:
            time.sleep(0.05)
        svc.scheduler.add_job(FUNC, DateTrigger(run_date=datetime.now(UTC)), id="tiny@2024-03-05",
                              kwargs={"job": "tiny", "session": "2024-03-05"})

    threading.Thread(target=fire_soon, daemon=True).start()
    sys.exit(svc.serve())
    """
)


def test_a_second_sigterm_exits_at_once_and_leaves_no_stale_lock(tiny_project: Path) -> None:
    import os
    import signal

    (tiny_project / "pipelines" / "schedule.yaml").write_text(
        "jobs:\n  - {name: tiny, pipeline: tiny, at: after_close + 30min}\n"
    )
    cfg = load_config(tiny_project)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCHEDULER, str(tiny_project)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    kernel = 0
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("running kernel"):
            kernel = int(line.split()[-1])
            break
    assert kernel, "".join(lines)
    locks = RunLock(lock_url(cfg, tiny_project / "runs"))
    assert [h.pipeline for h in locks.holders()] == ["tiny"] and locks.holder(
        "tiny"
    ).pid == proc.pid
    proc.send_signal(signal.SIGTERM)
    for line in proc.stdout:
        lines.append(line)
        if "signal again to exit now" in line:
            break
    assert "waiting for tiny (session 2024-03-05)" in lines[-1], "".join(lines)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, "".join(lines) + out
    assert locks.holders() == [], out  # neither the run's lock nor the scheduler's is left behind
    assert "SIGTERM again: exiting now" in out
    assert "released the run lock of tiny (session 2024-03-05)" in out
    assert "tiny: interrupted (session 2024-03-05)" in out
    scheduler_locks = RunLock(f"sqlite:///{tiny_project / 'runs' / 'schedule.db'}")
    assert scheduler_locks.holders() == []
    with pytest.raises(ProcessLookupError):  # the run's child process was ended with it
        os.kill(kernel, 0)
