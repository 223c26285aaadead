"""The scheduler: one process that fires pipelines in market terms (``wb schedule start``).

APScheduler 3.11 does the timing: a :class:`~workbench.pipeline.triggers.MarketTrigger` per job
(fire times from the exchange calendar), a SQLAlchemy job store (``schedule.jobstore_url``,
SQLite ``runs/schedule.db`` by default) that keeps each job's next fire time across restarts,
``coalesce=True`` (fires missed while the scheduler was down roll into one), ``max_instances=1``
and an explicit ``misfire_grace_time`` (``schedule.misfire_grace_seconds``, per job
``misfire_grace_seconds``): after a downtime, the latest missed fire runs once if it is at most
that late, and is skipped (with a warning alert) if it is later.

No overlap: every run goes through :func:`~workbench.pipeline.runner.run_pipeline`, which holds
the pipeline's run lock, so a scheduled run and a manual ``wb run`` cannot collide; a fire while
the pipeline still runs is skipped (APScheduler's max_instances, then the lock). A second
scheduler process on the same job store is refused (it would run every job twice).

A job with ``after: <job>`` runs when that job's run for a session finishes ok (a one-off job in
the store, so a restart in between still runs it). After a run that leaves nightly-monitor
outputs, drift past ``monitoring.psi_alert`` runs the ``weekly_retrain`` job early the same way
when ``monitoring.retrain_on_drift`` is on (:mod:`workbench.monitoring.retrain` decides). Failed
runs keep their forensics (failed notebook, HTML, the failing cell and error, in the run folder
and MLflow) and raise an alert.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.date import DateTrigger

from workbench.config import WorkbenchConfig
from workbench.errors import WorkbenchError
from workbench.pipeline.lock import LockHolder, PipelineLocked, RunLock
from workbench.pipeline.lock import project_url as _project_url
from workbench.pipeline.schedule_spec import (
    Schedule,
    ScheduleError,
    load_schedule,
    resolve_parameters,
)

log = logging.getLogger("workbench.scheduler")

FUNC = "workbench.pipeline.scheduler:fire_job"
RETRAIN = "weekly_retrain"  # the pipeline drift may run early (monitoring.retrain_on_drift)
SCHEDULER_LOCK = "(scheduler)"  # the lock a scheduler process holds in its job store's database
_SERVICE: SchedulerService | None = None  # the service of this process (jobs call into it)


@dataclass(frozen=True)
class FireTime:
    """One upcoming fire of a job."""

    job: str
    pipeline: str
    session: date
    fire_time: datetime  # UTC
    after: str = ""  # the job it follows (its fire time is that job's)

    def as_dict(self, tz: str = "America/New_York") -> dict[str, Any]:
        return {
            "job": self.job,
            "pipeline": self.pipeline,
            "session": self.session.isoformat(),
            "utc": self.fire_time.astimezone(UTC).isoformat(),
            "local": self.fire_time.astimezone(ZoneInfo(tz)).isoformat(),
            "timezone": tz,
            "after": self.after,
        }


@dataclass
class RunOutcome:
    """What a fire did: ok | failed | locked | error, with where to look."""

    job: str
    pipeline: str
    session: str
    fire_time: str
    status: str
    message: str = ""
    run_dir: str = ""
    seconds: float = 0.0


def upcoming(
    schedule: Schedule,
    start: datetime,
    *,
    count: int = 10,
    job: str | None = None,
    end: datetime | None = None,
) -> list[FireTime]:
    """Return the next ``count`` fires from ``start`` (of one job or pipeline if given), in order.

    An ``after`` job is listed right after the fire it follows, at that fire's time.
    """
    if count < 1:
        raise ScheduleError(f"count must be >= 1. Got {count} instead.")
    wanted = None
    if job is not None:
        j = schedule.job(job)
        wanted = j.name
    out: list[tuple[datetime, int, FireTime]] = []
    order = {name: i for i, name in enumerate(schedule.jobs)}
    for name, trig in schedule.triggers.items():
        chain = _chain(schedule, name)
        if wanted is not None and wanted not in chain:
            continue
        t = start
        n = 0
        while n < count:
            nxt = trig.next_fire(t)
            if nxt is None or (end is not None and nxt[0] >= end):
                break
            fire, session = nxt
            for k, member in enumerate(chain):
                if wanted is None or member == wanted:
                    spec = schedule.jobs[member]
                    after = spec.after or ""
                    out.append(
                        (
                            fire,
                            order[name] * 1000 + k,
                            FireTime(member, spec.pipeline, session, fire, after),
                        )
                    )
            n += 1
            t = fire + timedelta(microseconds=1)
    out.sort(key=lambda x: (x[0], x[1]))
    return [f for _, _, f in out[:count]]


def _chain(schedule: Schedule, name: str) -> list[str]:
    """A timed job followed by the jobs that run after it (breadth first)."""
    chain, i = [name], 0
    while i < len(chain):
        chain += [d.name for d in schedule.dependents(chain[i])]
        i += 1
    return chain


def project_url(cfg: WorkbenchConfig, url: str) -> str:
    """An SQLAlchemy URL with a relative SQLite path made absolute under the project root."""
    return _project_url(cfg.project_root, url)


def fire_job(job: str, session: str | None = None, fire_time: str | None = None) -> dict[str, Any]:
    """The function every stored job calls (a textual reference survives the job store)."""
    if _SERVICE is None:
        raise RuntimeError(
            "no scheduler service runs in this process; start one with `wb schedule start`."
        )
    out = _SERVICE.fire(
        job,
        session=date.fromisoformat(session) if session else None,
        fire_time=datetime.fromisoformat(fire_time) if fire_time else None,
    )
    return asdict(out)


class SchedulerService:
    """Run a schedule: the APScheduler instance, the jobs it fires and what their runs did.

    Parameters
    ----------
    cfg : WorkbenchConfig
    schedule : Schedule, optional
        Default: ``schedule.file`` of the config, validated.
    clock : callable, optional
        Returns the current UTC time (tests freeze it; APScheduler's own clock is the wall clock).
    runner : callable, optional
        ``run_pipeline`` (tests pass a fake).
    alert : callable, optional
        Called with ``(severity, message, values, key)`` for failed, locked and missed runs
        (default: :class:`workbench.monitoring.alerts.Alerter` from the config).
    echo : callable
        Where progress lines go.
    """

    def __init__(
        self,
        cfg: WorkbenchConfig,
        schedule: Schedule | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        runner: Callable[..., Any] | None = None,
        alert: Callable[[str, str, dict[str, Any], str], None] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.schedule = schedule or load_schedule(cfg.path(cfg.schedule.file), cfg.project_root)
        self.clock = clock or (lambda: datetime.now(UTC))
        if runner is None:
            from workbench.pipeline.runner import run_pipeline

            runner = run_pipeline
        self.runner = runner
        self._alert = alert
        self.echo = echo
        self.scheduler: BaseScheduler | None = None
        self.outcomes: list[RunOutcome] = []
        self.listeners: list[Callable[[RunOutcome], None]] = []  # e.g. metrics
        self.running: dict[str, tuple[str, datetime]] = {}  # job -> (session, started)
        self._guard: tuple[RunLock, LockHolder] | None = None
        self._on_delivery: Callable[[Any], None] | None = None  # alert deliveries (metrics)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ set-up

    @property
    def jobstore_url(self) -> str:
        url = project_url(self.cfg, self.cfg.schedule.jobstore_url)
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return url

    def grace(self, job: str) -> int:
        spec = self.schedule.jobs[job]
        return spec.misfire_grace_seconds or self.cfg.schedule.misfire_grace_seconds

    def build(
        self,
        scheduler_cls: type[BaseScheduler] = BackgroundScheduler,
        *,
        executor: Any = None,
    ) -> BaseScheduler:
        """Create the APScheduler instance (not started): job store, executor, job defaults."""
        global _SERVICE
        sched = scheduler_cls(
            jobstores={"default": SQLAlchemyJobStore(url=self.jobstore_url)},
            executors={"default": executor or ThreadPoolExecutor(self.cfg.schedule.max_workers)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": self.cfg.schedule.misfire_grace_seconds,
            },
            timezone=UTC,
        )
        sched.add_listener(
            self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR
        )
        self.scheduler = sched
        _SERVICE = self
        return sched

    def sync(self) -> dict[str, str]:
        """Make the job store hold exactly the schedule's timed jobs (call once started).

        A stored job whose trigger is unchanged keeps its next fire time, so fires missed while
        the scheduler was down are caught up (once, within the grace); a changed one is replaced.
        """
        assert self.scheduler is not None, "build() first"
        stored = {j.id: j for j in self.scheduler.get_jobs()}
        changes: dict[str, str] = {}
        for name, trig in self.schedule.triggers.items():
            kwargs = {"job": name}
            old = stored.pop(name, None)
            grace = self.grace(name)
            if (
                old is not None
                and old.trigger == trig
                and old.kwargs == kwargs
                and old.func_ref == FUNC
            ):
                if old.misfire_grace_time != grace:
                    old.modify(misfire_grace_time=grace)
                changes[name] = "kept"
                continue
            self.scheduler.add_job(
                FUNC, trig, id=name, name=f"{self.schedule.jobs[name].pipeline}: {trig}",
                kwargs=kwargs, replace_existing=True, misfire_grace_time=grace,
                coalesce=True, max_instances=1,
            )  # fmt: skip
            changes[name] = "replaced" if old is not None else "added"
        for jid, old in stored.items():
            dep = jid.split("@", 1)[0]
            if "@" in jid and dep in self.schedule.jobs:
                continue  # a pending run of an after job
            old.remove()
            changes[jid] = "removed"
        return changes

    # ------------------------------------------------------------------ firing

    def fire(
        self, job: str, *, session: date | None = None, fire_time: datetime | None = None,
        inline_after: bool = False,
    ) -> RunOutcome:  # fmt: skip
        """Run one fire of a job now: its pipeline with the schedule's parameters, for its session.

        When it ends ok, the jobs that run after it are queued in the job store (the scheduler
        runs them next), or with ``inline_after`` run here, one after the other, for the same
        session (``wb schedule run-now``).
        """
        spec = self.schedule.jobs[job]
        now = self.clock()
        if session is None:
            trig = self.schedule.triggers.get(self.schedule.upstream(job))
            last = trig.last_fire(now) if trig is not None else None
            if last is None:
                from workbench.pipeline.runner import current_session

                fire_time, session = now, current_session(now, self.schedule.calendar)
            else:
                fire_time, session = last
        fire_time = fire_time or now
        params = resolve_parameters(
            spec.parameters, session=session, fire_time=fire_time, calendar=self.schedule.calendar
        )
        out = RunOutcome(
            job, spec.pipeline, session.isoformat(), fire_time.astimezone(UTC).isoformat(), "ok"
        )
        self.echo(
            f"{_stamp(now)} {job}: running pipeline {spec.pipeline!r} for session {session} {params or ''}"
        )
        with self._lock:
            self.running[job] = (session.isoformat(), now)
        t0 = time.perf_counter()
        try:
            res = self.runner(
                spec.pipeline, params, cfg=self.cfg, session=session, trigger=f"schedule:{job}",
                echo=lambda m: self.echo(f"  {job}: {m}"),
            )  # fmt: skip
        except PipelineLocked as exc:
            out.status, out.message = "locked", str(exc)
        except WorkbenchError as exc:
            out.status, out.message = "error", str(exc)
        except Exception as exc:  # never take the scheduler down with one run
            log.exception("job %s crashed", job)
            out.status, out.message = "error", f"{type(exc).__name__}: {exc}"
        else:
            out.run_dir = str(res.run_dir)
            if not res.ok:
                bad = next(s for s in res.steps if s.status == "failed")
                out.status = "failed"
                out.message = f"step {bad.step!r} failed at {bad.error}; failed notebook {bad.notebook or '-'}"
            elif res.skipped:
                out.message = "skipped: " + "; ".join(f"{k}: {v}" for k, v in res.skipped.items())
        finally:
            with self._lock:
                self.running.pop(job, None)
        out.seconds = round(time.perf_counter() - t0, 3)
        self._finished(out)
        if out.status == "ok":
            if inline_after:
                for dep in self.schedule.dependents(job):
                    self.echo(
                        f"{_stamp(self.clock())} {dep.name}: runs after {job} (session {session})"
                    )
                    self.fire(dep.name, session=session, fire_time=fire_time, inline_after=True)
            else:
                self._queue_dependents(job, session, fire_time)
            self._retrain_early(out, session, fire_time, inline_after)
        return out

    def retrain_job(self) -> str | None:
        """The job that runs the ``weekly_retrain`` pipeline (what drift may run early)."""
        return next((j.name for j in self.schedule.jobs.values() if j.pipeline == RETRAIN), None)

    def _retrain_early(
        self, out: RunOutcome, session: date, fire_time: datetime, inline: bool
    ) -> None:
        """After a nightly monitor run: run the retrain job now when its drift decision says so
        (``monitoring.retrain_on_drift``, see :mod:`workbench.monitoring.retrain`)."""
        if not out.run_dir or not (Path(out.run_dir) / "monitor.outputs.json").exists():
            return
        from workbench.monitoring.retrain import retrain_decision_from_outputs

        d = retrain_decision_from_outputs(out.run_dir, self.cfg)
        self.echo(
            f"{_stamp(self.clock())} {out.job}: retrain early: {'yes' if d else 'no'} ({d.reason})"
        )
        target = self.retrain_job()
        if not d or target is None or target == out.job:
            if d and target is None:
                self.echo(f"  no job runs the {RETRAIN!r} pipeline in {self.schedule.path.name}")
            return
        self.alert(
            "warning", f"{target} runs early (session {session}): {d.reason}",
            {"columns": d.columns, "session": session.isoformat(), "after": out.job}, f"retrain:{target}",
        )  # fmt: skip
        if inline:
            self.fire(target, session=session, fire_time=fire_time, inline_after=True)
        elif self.scheduler is not None and self.scheduler.running:
            self.scheduler.add_job(
                FUNC, DateTrigger(run_date=self.clock()), id=f"{target}@{session.isoformat()}",
                name=f"{RETRAIN}: early, drift ({session})",
                kwargs={"job": target, "session": session.isoformat(), "fire_time": fire_time.isoformat()},
                replace_existing=True, misfire_grace_time=self.grace(target), coalesce=True,
                max_instances=1,
            )  # fmt: skip
            self.echo(f"{_stamp(self.clock())} {target}: queued early (drift, session {session})")

    def run_now(self, job_or_pipeline: str, *, after: bool = True) -> list[RunOutcome]:
        """Fire a job now (``wb schedule run-now``), for the session of its latest fire time,
        then (``after``) the jobs that run after it, as the scheduler would: each only when the
        one it follows ended ok, all for the same session. Return the outcomes in run order.

        The session filter is ignored (a weekly job run now is for the latest session).
        """
        first = len(self.outcomes)
        self._run_now(job_or_pipeline, after)
        return self.outcomes[first:]

    def _run_now(self, job_or_pipeline: str, after: bool) -> RunOutcome:
        spec = self.schedule.job(job_or_pipeline)
        now = self.clock()
        up = self.schedule.upstream(spec.name)
        trig = self.schedule.triggers[up]
        from workbench.pipeline.triggers import MarketTrigger

        every = MarketTrigger(
            at=trig.at, cron=trig.cron, market_hours=trig.market_hours, calendar=trig.calendar
        )
        last = every.last_fire(now)
        if last is None:
            return self.fire(spec.name, inline_after=after)
        return self.fire(spec.name, session=last[1], fire_time=now, inline_after=after)

    def _queue_dependents(self, job: str, session: date, fire_time: datetime) -> None:
        for dep in self.schedule.dependents(job):
            if self.scheduler is None or not self.scheduler.running:
                continue
            self.scheduler.add_job(
                FUNC, DateTrigger(run_date=self.clock()), id=f"{dep.name}@{session.isoformat()}",
                name=f"{dep.pipeline}: after {job} ({session})",
                kwargs={"job": dep.name, "session": session.isoformat(), "fire_time": fire_time.isoformat()},
                replace_existing=True, misfire_grace_time=self.grace(dep.name), coalesce=True,
                max_instances=1,
            )  # fmt: skip
            self.echo(f"{_stamp(self.clock())} {dep.name}: queued after {job} (session {session})")

    def _finished(self, out: RunOutcome) -> None:
        self.outcomes.append(out)
        line = f"{_stamp(self.clock())} {out.job}: {out.status} in {out.seconds:.1f}s"
        if out.run_dir:
            line += f" (run folder {out.run_dir})"
        if out.message:
            line += f": {out.message}"
        self.echo(line)
        values = {"pipeline": out.pipeline, "session": out.session, "run_dir": out.run_dir}
        if out.status == "failed":
            self.alert(
                "critical",
                f"scheduled run of {out.pipeline!r} failed: {out.message}",
                values,
                out.pipeline,
            )
        elif out.status == "locked":
            self.alert(
                "warning",
                f"scheduled run of {out.pipeline!r} not started: {out.message}",
                values,
                out.pipeline,
            )
        elif out.status == "error":
            self.alert(
                "critical",
                f"scheduled run of {out.pipeline!r} could not start: {out.message}",
                values,
                out.pipeline,
            )
        for fn in self.listeners:
            try:
                fn(out)
            except Exception:
                log.exception("run listener failed")

    def _on_event(self, event: Any) -> None:
        job = str(event.job_id).split("@", 1)[0]
        spec = self.schedule.jobs.get(job)
        pipeline = spec.pipeline if spec else job
        if event.code == EVENT_JOB_MISSED and isinstance(event, JobExecutionEvent):
            late = self.clock() - event.scheduled_run_time
            msg = (
                f"missed the fire of {event.scheduled_run_time.astimezone(UTC):%Y-%m-%d %H:%M} UTC by "
                f"{_human(late)} (grace {_human(timedelta(seconds=self.grace(job) if spec else 0))}): "
                "not run; the next fire runs as scheduled"
            )
            self.echo(f"{_stamp(self.clock())} {job}: {msg}")
            self.outcomes.append(
                RunOutcome(job, pipeline, "", event.scheduled_run_time.isoformat(), "missed", msg)
            )
            self.alert("warning", f"{pipeline}: {msg}", {"job": job}, pipeline)
        elif event.code == EVENT_JOB_MAX_INSTANCES and isinstance(event, JobSubmissionEvent):
            run_at = event.scheduled_run_times[-1]
            held = self.running.get(job, ("?", None))[0]
            msg = f"still running (session {held}): the fire of {run_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC is skipped"
            self.echo(f"{_stamp(self.clock())} {job}: {msg}")
            self.outcomes.append(
                RunOutcome(job, pipeline, "", run_at.isoformat(), "overlap_skipped", msg)
            )
        elif event.code == EVENT_JOB_ERROR:
            self.alert(
                "critical",
                f"{pipeline}: scheduled job raised {event.exception!r}",
                {"job": job},
                pipeline,
            )

    def alert(self, severity: str, message: str, values: dict[str, Any], key: str) -> None:
        """Send an alert; a failing alert channel never stops the scheduler."""
        try:
            if self._alert is None:
                from workbench.monitoring.alerts import Alert, Alerter

                alerter = Alerter.from_config(self.cfg, on_delivery=self._on_delivery)
                self._alert = lambda s, m, v, k: alerter.send(Alert(s, "pipeline", m, v, key=k))  # type: ignore[func-returns-value]
            self._alert(severity, message, values, key)
        except Exception:
            log.exception("could not send the alert %r", message)

    # ------------------------------------------------------------------ the process

    def acquire_process_lock(self) -> None:
        """Refuse a second scheduler process on this job store (it would run every job twice)."""
        locks = RunLock(self.jobstore_url)
        try:
            holder = locks.acquire(SCHEDULER_LOCK, session="-", trigger="wb schedule start")
        except PipelineLocked as exc:
            locks.close()
            h = exc.holder
            raise ScheduleError(
                f"another scheduler already runs on the job store {self.jobstore_url}: pid {h.pid} on "
                f"host {h.host}, started {h.started_at:%Y-%m-%d %H:%M:%S} UTC. Two schedulers on one "
                "store run every job twice. Fix: stop that one (SIGTERM); if its process is gone, "
                "clear the stale lock with `wb schedule unlock --scheduler`."
            ) from None
        self._guard = (locks, holder)

    def release_process_lock(self) -> None:
        if self._guard is not None:
            locks, holder = self._guard
            locks.release(holder)
            locks.close()
            self._guard = None

    def serve(self, *, stop: threading.Event | None = None, install_signals: bool = True) -> int:
        """Run the schedule in the foreground until SIGTERM/SIGINT (or ``stop`` is set).

        The first signal stops new fires and waits for running pipelines to finish; a second
        one exits at once (:meth:`exit_now`: their kernels ended, their run locks released).
        """
        stop = stop or threading.Event()
        if install_signals:  # from here on a signal stops the start-up gracefully too
            self._install_signals(stop)
        self.acquire_process_lock()
        exporter = None
        try:
            if self.cfg.metrics.scheduler_port:
                from workbench.monitoring.metrics import start_exporter

                metrics, exporter = start_exporter(self.cfg, "scheduler")
                self.listeners.append(metrics.run_listener())
                self._on_delivery = metrics.observe_alert
                if exporter is not None:
                    self.echo(f"metrics on {exporter.url}")
            sched = self.build(BackgroundScheduler)
            sched.start(paused=True)
            changes = self.sync()
            for name, what in changes.items():
                job = sched.get_job(name)
                nxt = (
                    f", next {_both(job.next_run_time, self.cfg.schedule.display_timezone)}"
                    if job
                    else ""
                )
                self.echo(f"job {name}: {what}{nxt}")
            for job in self.schedule.jobs.values():
                if job.after is not None:
                    self.echo(
                        f"job {job.name}: after {job.after} (when its run for a session is ok)"
                    )
            for name, why in self.schedule.left_out.items():
                self.echo(f"job {name}: left out ({why})")
            if not stop.is_set():  # a signal during start-up: stop without firing anything
                sched.resume()
            self.echo(
                f"scheduler running (pid {os.getpid()}, job store {self.jobstore_url}); SIGTERM or Ctrl-C stops it"
            )
            while not stop.wait(1.0):
                pass
            sched.pause()
            running = dict(self.running)
            if running:
                self.echo(
                    "stopping: no new fires; waiting for "
                    + ", ".join(f"{j} (session {s})" for j, (s, _) in running.items())
                    + " to finish (signal again to exit now)"
                )
            else:
                self.echo("stopping: no run in progress")
            sched.shutdown(wait=True)
            self.echo("scheduler stopped")
            return 0
        finally:
            global _SERVICE
            _SERVICE = None
            if exporter is not None:
                exporter.close()
            self.release_process_lock()

    def _install_signals(self, stop: threading.Event) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if stop.is_set():
                self.echo(f"{signal.Signals(signum).name} again: exiting now")
                self.exit_now()
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def exit_now(self, code: int = 1) -> None:
        """Leave at once (a second signal): end the runs' child processes (notebook kernels),
        release the run locks this process holds and the scheduler lock, then ``os._exit``.

        The runs' own ``finally`` blocks do not run, so without this their locks would stay in
        the database as stale rows until the next run on this host took them over.
        """
        from workbench.pipeline.lock import release_held

        running = dict(self.running)
        try:
            _end_children()
            for h in release_held():
                self.echo(f"released the run lock of {h.pipeline} (session {h.session})")
            self._guard = None  # released with the rest
            for job, (session, _) in running.items():
                self.echo(f"{job}: interrupted (session {session}); its run folder is incomplete")
        except Exception:
            log.exception("could not clean up before exiting")
        finally:
            os._exit(code)


def _end_children(timeout: float = 5.0) -> None:
    """Terminate this process's children (papermill's kernels), then kill what is left."""
    import psutil

    kids = psutil.Process().children(recursive=True)
    for p in kids:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(kids, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def stored_jobs(cfg: WorkbenchConfig) -> dict[str, datetime | None]:
    """Next fire time of each job in the job store (without starting a scheduler)."""
    url = project_url(cfg, cfg.schedule.jobstore_url)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return {}
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            if not sa.inspect(c).has_table("apscheduler_jobs"):
                return {}
            rows = c.execute(sa.text("SELECT id, next_run_time FROM apscheduler_jobs")).all()
    finally:
        eng.dispose()
    return {r[0]: datetime.fromtimestamp(r[1], UTC) if r[1] is not None else None for r in rows}


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _both(t: datetime | None, tz: str) -> str:
    if t is None:
        return "-"
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({t.astimezone(ZoneInfo(tz)):%a %H:%M %Z})"


def _human(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}min"
    return f"{s / 3600:.1f}h"
