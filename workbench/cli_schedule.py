"""``wb schedule``: run the market-calendar schedule of pipelines and look at it.

start (foreground, SIGTERM-graceful), list, next, run-now, unlock. The schedule is
``pipelines/schedule.yaml`` (``schedule.file``); times are shown in UTC and in
``schedule.display_timezone`` (America/New_York).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench.config import WorkbenchConfig, load_config
from workbench.errors import WorkbenchError

schedule_app = typer.Typer(
    help="Market-calendar schedule of pipelines: start, list, next, run-now, unlock.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)


def _fail(exc: Exception) -> None:
    _err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code=2)


def _schedule(cfg: WorkbenchConfig, deep: bool = False):
    from workbench.pipeline.schedule_spec import load_schedule

    return load_schedule(cfg.path(cfg.schedule.file), cfg.project_root, deep=deep)


def _parse_from(value: str | None, tz: str) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        if "T" not in value and " " not in value:
            d = date.fromisoformat(value)  # a date: its midnight in the display time zone
            return datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(tz))
        t = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"--from {value!r} is not ISO 8601. Fix: e.g. 2024-03-04 (midnight {tz}) or "
            "2024-03-04T14:00:00+00:00 (a datetime without offset is UTC)."
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _fmt(t: datetime | None, tz: str | None = None, *, day: bool = False) -> str:
    if t is None:
        return "-"
    if tz is None:
        return f"{t.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    return f"{t.astimezone(ZoneInfo(tz)):{'%a %Y-%m-%d' if day else '%a'} %H:%M %Z}"


def _short(tz: str) -> str:
    return tz.rsplit("/", 1)[-1].replace("_", " ")


@schedule_app.command("start")
def start_cmd() -> None:
    """Run the schedule in the foreground (one process per job store).

    Stored jobs keep their next fire time across restarts: a fire missed while the scheduler was
    down runs once if it is at most the grace time late (schedule.misfire_grace_seconds, or the
    job's own), and is skipped otherwise. SIGTERM or Ctrl-C stops new fires and waits for running
    pipelines; a second signal exits at once.
    """
    from workbench.pipeline.scheduler import SchedulerService

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config()
        service = SchedulerService(cfg, _schedule(cfg, deep=True), echo=_out.print)
        code = service.serve()
    except WorkbenchError as exc:
        _fail(exc)
    raise typer.Exit(code)


@schedule_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """The scheduled jobs: pipeline, when, grace, next fire (UTC and New York), locks held."""
    from workbench.pipeline.lock import RunLock
    from workbench.pipeline.runner import lock_url
    from workbench.pipeline.scheduler import stored_jobs, upcoming

    try:
        cfg = load_config()
        sch = _schedule(cfg)
        now = datetime.now(UTC)
        stored = stored_jobs(cfg)
        tz = cfg.schedule.display_timezone
        rows = []
        for name, job in sch.jobs.items():
            if job.after:
                when = f"after {job.after}"
            else:
                trig = sch.triggers[name]
                when = trig.when + ("" if trig.sessions == "every" else f", {trig.sessions}")
            nxt = upcoming(sch, now, count=1, job=name)
            grace = job.misfire_grace_seconds or cfg.schedule.misfire_grace_seconds
            rows.append(
                {
                    "job": name,
                    "pipeline": job.pipeline,
                    "when": when,
                    "grace_seconds": grace,
                    "next_utc": nxt[0].fire_time.isoformat() if nxt else None,
                    "next_session": nxt[0].session.isoformat() if nxt else None,
                    "stored_next_utc": stored[name].isoformat() if stored.get(name) else None,
                }
            )
        locks = RunLock(lock_url(cfg, cfg.project_root / "runs"))
        held = [h.as_dict() for h in locks.holders()]
        locks.close()
    except WorkbenchError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"jobs": rows, "left_out": sch.left_out, "locks": held}))
        return
    table = Table(title=f"schedule {sch.path.name} ({sch.calendar})")
    for col in ("job", "when", "grace", "next (UTC)", f"next ({_short(tz)})", "job store"):
        table.add_column(col)
    for r in rows:
        nxt = datetime.fromisoformat(r["next_utc"]) if r["next_utc"] else None
        st = datetime.fromisoformat(r["stored_next_utc"]) if r["stored_next_utc"] else None
        job = r["job"] if r["job"] == r["pipeline"] else f"{r['job']} ({r['pipeline']})"
        table.add_row(
            job, r["when"], f"{r['grace_seconds']}s", _fmt(nxt), _fmt(nxt, tz, day=False),
            "same" if st and st == nxt else _fmt(st),
        )  # fmt: skip
    _out.print(table)
    for name, why in sch.left_out.items():
        _out.print(f"left out: {name} ({why})")
    for h in held:
        _out.print(
            f"lock held: {h['pipeline']} by {h['trigger']} (pid {h['pid']} on {h['host']}, since "
            f"{h['started_at']}); clear a stale one with `wb schedule unlock {h['pipeline']}`"
        )


@schedule_app.command("next")
def next_cmd(
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="Only this job or pipeline.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="ISO date (midnight New York) or datetime (default: now).")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="How many fire times.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:  # fmt: skip
    """Upcoming fire times, in UTC and New York, with the session each is for."""
    from workbench.pipeline.scheduler import upcoming

    try:
        cfg = load_config()
        sch = _schedule(cfg)
        tz = cfg.schedule.display_timezone
        fires = upcoming(sch, _parse_from(start, tz), count=count, job=pipeline)
    except WorkbenchError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps([f.as_dict(tz) for f in fires]))
        return
    table = Table(title=f"next {len(fires)} fire time(s)")
    for col in ("session", "job", "UTC", _short(tz), "note"):
        table.add_column(col)
    for f in fires:
        job = f.job if f.job == f.pipeline else f"{f.job} ({f.pipeline})"
        note = f"after {f.after} finishes" if f.after else ""
        table.add_row(f.session.isoformat(), job, _fmt(f.fire_time), _fmt(f.fire_time, tz), note)
    _out.print(table)


@schedule_app.command("run-now")
def run_now_cmd(
    job: Annotated[str, typer.Argument(help="Scheduled job or its pipeline, e.g. daily_ingest.")],
    after: Annotated[bool, typer.Option("--after/--no-after", help="Also run the jobs that run after it (default), as the scheduler would.")] = True,
) -> None:  # fmt: skip
    """Run a scheduled job now, in the foreground, with the schedule's parameters, then the jobs
    that run after it (e.g. nightly_monitor after daily_ingest), each only if the one it follows
    ended ok.

    The session is the one of the job's latest fire time (any session, even for a weekly job).
    The pipeline's run lock applies: a run in progress makes this one refuse (exit 2). Exit 1
    when a run failed. Example: wb schedule run-now daily_ingest --no-after
    """
    from workbench.pipeline.scheduler import SchedulerService

    try:
        cfg = load_config()
        svc = SchedulerService(cfg, _schedule(cfg), echo=_out.print, alert=lambda *a: None)
        outs = svc.run_now(job, after=after)
    except WorkbenchError as exc:
        _fail(exc)
    for out in outs:
        _out.print(f"{out.job}: {out.status} (session {out.session})")
    statuses = {o.status for o in outs}
    if statuses - {"ok", "failed"}:
        raise typer.Exit(2)
    if "failed" in statuses:
        raise typer.Exit(1)


@schedule_app.command("unlock")
def unlock_cmd(
    pipeline: Annotated[str | None, typer.Argument(help="Pipeline whose run lock to clear.")] = None,
    scheduler: Annotated[bool, typer.Option("--scheduler", help="Clear the scheduler process lock instead.")] = False,
) -> None:  # fmt: skip
    """Clear a stale lock (its holder is gone). A lock of a live run is not yours to clear."""
    from workbench.pipeline.lock import RunLock
    from workbench.pipeline.runner import lock_url
    from workbench.pipeline.scheduler import SCHEDULER_LOCK, project_url

    if bool(pipeline) == scheduler:
        _fail(WorkbenchError("give a pipeline name or --scheduler (one of them)."))
    try:
        cfg = load_config()
        if scheduler:
            locks = RunLock(project_url(cfg, cfg.schedule.jobstore_url))
            name = SCHEDULER_LOCK
        else:
            locks = RunLock(lock_url(cfg, cfg.project_root / "runs"))
            name = str(pipeline)
        old = locks.clear(name)
        locks.close()
    except WorkbenchError as exc:
        _fail(exc)
    if old is None:
        _out.print(f"no lock held for {name}")
    else:
        _out.print(f"cleared the lock of {name} held by {old.describe()}")
