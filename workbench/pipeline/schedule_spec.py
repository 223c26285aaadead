"""Schedule specs: which pipeline runs when, in market terms (``pipelines/schedule.yaml``).

A schedule is YAML::

    calendar: XNYS                       # exchange calendar of every trigger
    jobs:
      - name: daily_ingest
        pipeline: daily_ingest           # pipelines/daily_ingest.yaml
        at: after_close + 30min          # or cron: "0 10 * * mon-fri", or after: <job>
        sessions: every                  # first_of_week | last_of_week | first_of_month | last_of_month
        parameters: {start: "${session}", end: "${session}"}   # the pipeline's shared parameters

A job fires at a market time of each kept session (``at``), at the times of a cron expression
on session days (``cron``, exchange-local time; ``market_hours: true`` keeps only times inside
the session), or when another job's run for a session finishes ok (``after``). Parameter values
may use ``${session}`` (ISO date of the session the fire belongs to), ``${session-364d}`` (days
before it), ``${session_open}``, ``${session_close}`` and ``${fire_time}`` (UTC, ISO 8601).

Validation is as strict as for pipeline specs: unknown keys, unknown pipelines, unknown pipeline
parameters and unknown ``${...}`` variables are refused with the valid names and the fix. A job
marked ``optional: true`` whose pipeline file does not exist yet is left out (and reported)
instead of refused; once the file exists, the job is validated like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workbench.errors import ConfigError, PipelineError
from workbench.pipeline.spec import _plain, _suggest, load_spec, validate_spec
from workbench.pipeline.triggers import SESSION_FILTERS, MarketTrigger, TriggerError, session_arrays

_VAR = re.compile(r"\$\{([^}]+)\}")
_DAYS = re.compile(r"^session\s*([+-])\s*(\d+)\s*d$")
VARIABLES = (
    "session",
    "session-<N>d",
    "session+<N>d",
    "session_open",
    "session_close",
    "fire_time",
)


class ScheduleError(PipelineError):
    """A schedule spec is invalid."""


class JobSpec(BaseModel):
    """One scheduled job: a pipeline, when it fires and the parameters it gets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    pipeline: str
    at: str | None = None  # market time, e.g. "after_close + 30min"
    cron: str | None = None  # cron in exchange-local time, session days only
    after: str | None = None  # another job: run when its run for a session finishes ok
    sessions: str = "every"  # every | first_of_week | last_of_week | first_of_month | last_of_month
    market_hours: bool = False  # cron only: keep times inside the session
    parameters: dict[str, Any] = Field(default_factory=dict)  # the pipeline's shared parameters
    misfire_grace_seconds: int | None = Field(None, ge=1)  # default: schedule.misfire_grace_seconds
    optional: bool = False  # leave out (reported) while the pipeline file does not exist
    description: str = ""


class ScheduleSpec(BaseModel):
    """A schedule file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    calendar: str = "XNYS"
    description: str = ""
    jobs: tuple[JobSpec, ...]


@dataclass(frozen=True)
class Schedule:
    """A validated schedule: jobs to run, their triggers, and jobs left out (with why)."""

    path: Path
    calendar: str
    jobs: dict[str, JobSpec]
    triggers: dict[str, MarketTrigger]  # timed jobs (at or cron)
    left_out: dict[str, str] = field(default_factory=dict)  # optional jobs without a pipeline

    def dependents(self, name: str) -> list[JobSpec]:
        """Jobs that run after ``name``."""
        return [j for j in self.jobs.values() if j.after == name]

    def upstream(self, name: str) -> str:
        """The timed job a chain of ``after`` jobs starts from."""
        while self.jobs[name].after is not None:
            name = self.jobs[name].after  # type: ignore[assignment]
        return name

    def job(self, name_or_pipeline: str) -> JobSpec:
        """Look a job up by name, else by pipeline; raise naming the jobs."""
        if name_or_pipeline in self.jobs:
            return self.jobs[name_or_pipeline]
        by_pipeline = [j for j in self.jobs.values() if j.pipeline == name_or_pipeline]
        if len(by_pipeline) == 1:
            return by_pipeline[0]
        names = sorted(self.jobs)
        extra = (
            f" ({name_or_pipeline!r} is left out: {self.left_out[name_or_pipeline]})"
            if name_or_pipeline in self.left_out
            else ""
        )
        raise ScheduleError(
            f"no scheduled job or pipeline {name_or_pipeline!r} in {self.path}{extra}; jobs: {names}."
            f"{_suggest(name_or_pipeline, names)}"
        )


def _where(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
        jobs = raw.get("jobs") or []
        name = (
            jobs[loc[1]].get("name")
            if loc[1] < len(jobs) and isinstance(jobs[loc[1]], dict)
            else None
        )
        head = f"jobs[{loc[1]}]" + (f" ({name})" if name else "")
        return ".".join([head, *(str(x) for x in loc[2:])])
    return ".".join(str(x) for x in loc)


def _read(path: Path) -> tuple[dict[str, Any], ScheduleSpec]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScheduleError(
            f"schedule file {path} does not exist. Fix: create it (see pipelines/schedule.yaml in the "
            "repository) or point schedule.file at one."
        ) from None
    except yaml.YAMLError as exc:
        raise ScheduleError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(raw, dict):
        raise ScheduleError(
            f"{path}: expected a mapping with calendar and jobs, got {type(raw).__name__}."
        )
    raw = _plain(raw)
    try:
        return raw, ScheduleSpec(**raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = _where(raw, loc)
            if err["type"] == "extra_forbidden":
                model = JobSpec if loc[0] == "jobs" else ScheduleSpec
                valid = sorted(model.model_fields)
                lines.append(
                    f"{where}: unknown key; valid keys: {valid}.{_suggest(str(loc[-1]), valid)}"
                )
            else:
                lines.append(f"{where} = {err.get('input')!r}: {err['msg']}.")
        raise ScheduleError(f"{path}: invalid schedule:\n  - " + "\n  - ".join(lines)) from None


def pipeline_names(root: Path) -> list[str]:
    """Pipelines a schedule may name (``pipelines/*.yaml`` except the schedule itself)."""
    return sorted(p.stem for p in (root / "pipelines").glob("*.yaml") if p.stem != "schedule")


def resolve_parameters(
    params: dict[str, Any], *, session: date, fire_time: datetime, calendar: str = "XNYS",
    where: str = "schedule",
) -> dict[str, Any]:  # fmt: skip
    """Replace the schedule variables in a job's parameter values (strings only)."""
    days, opens, closes = session_arrays(calendar)
    i = int(np.searchsorted(days, np.datetime64(session, "D")))
    found = i < days.size and days[i] == np.datetime64(session, "D")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def look(ref: str) -> str:
        ref = ref.strip()
        if ref == "session":
            return session.isoformat()
        if ref == "fire_time":
            return fire_time.astimezone(UTC).isoformat()
        if ref in ("session_open", "session_close") and found:
            us = (opens if ref == "session_open" else closes)[i]
            return (epoch + timedelta(microseconds=int(us))).isoformat()
        m = _DAYS.match(ref)
        if m:
            n = int(m.group(2)) * (1 if m.group(1) == "+" else -1)
            return (session + timedelta(days=n)).isoformat()
        raise ScheduleError(
            f"{where}: unknown variable ${{{ref}}}; schedule variables: {list(VARIABLES)}."
            f"{_suggest(ref, [v for v in VARIABLES if '<' not in v])}"
        )

    def sub(v: Any) -> Any:
        if isinstance(v, str):
            return _VAR.sub(lambda m: look(m.group(1)), v)
        if isinstance(v, list):
            return [sub(x) for x in v]
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        return v

    return {k: sub(v) for k, v in params.items()}


def load_schedule(path: str | Path, root: str | Path, *, deep: bool = False) -> Schedule:
    """Read and validate a schedule; ``deep`` also validates each pipeline with its parameters.

    Raises
    ------
    ScheduleError
        Listing every problem, each naming the job, the field, the bad value and the fix.
    """
    path, root = Path(path), Path(root)
    _, spec = _read(path)
    problems: list[str] = []
    names = [j.name for j in spec.jobs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"job names must be unique; repeated: {dup}. Fix: rename one of each.")
    have = pipeline_names(root)
    jobs: dict[str, JobSpec] = {}
    triggers: dict[str, MarketTrigger] = {}
    left_out: dict[str, str] = {}
    for i, job in enumerate(spec.jobs):
        where = f"{path.name}: jobs[{i}] ({job.name})"
        kinds = [k for k in ("at", "cron", "after") if getattr(job, k) is not None]
        if len(kinds) != 1:
            problems.append(
                f"{where}: give exactly one of at, cron or after; got {kinds or 'none'}. Fix: e.g. "
                "at: after_close + 30min, cron: '0 10 * * mon-fri' or after: daily_ingest."
            )
        elif job.after is not None:
            if job.sessions != "every" or job.market_hours:
                problems.append(
                    f"{where}: sessions/market_hours do not apply to an after job (it runs for the "
                    f"sessions {job.after!r} runs for). Fix: remove them."
                )
            if job.after not in names or job.after == job.name:
                valid = sorted(n for n in names if n != job.name)
                problems.append(
                    f"{where}.after = {job.after!r}: not another job of this schedule; jobs: {valid}."
                    f"{_suggest(job.after, valid)}"
                )
        else:
            if job.sessions not in SESSION_FILTERS:
                problems.append(
                    f"{where}.sessions = {job.sessions!r}: not a session filter; valid: "
                    f"{list(SESSION_FILTERS)}.{_suggest(job.sessions, SESSION_FILTERS)}"
                )
            else:
                field_name = kinds[0]
                try:
                    triggers[job.name] = MarketTrigger(
                        at=job.at, cron=job.cron, sessions=job.sessions,
                        market_hours=job.market_hours, calendar=spec.calendar,
                    )  # fmt: skip
                except TriggerError as exc:
                    problems.append(f"{where}.{field_name} = {getattr(job, field_name)!r}: {exc}")
                except ConfigError as exc:  # an unknown calendar
                    problems.append(f"{path.name}: calendar = {spec.calendar!r}: {exc}")
                    break
        pipe = root / "pipelines" / f"{job.pipeline}.yaml"
        if not pipe.is_file():
            if job.optional:
                left_out[job.name] = f"pipelines/{job.pipeline}.yaml does not exist yet"
                triggers.pop(job.name, None)
                continue
            problems.append(
                f"{where}.pipeline = {job.pipeline!r}: no pipelines/{job.pipeline}.yaml; available "
                f"pipelines: {have}.{_suggest(job.pipeline, have)}"
            )
            continue
        try:
            pspec = load_spec(pipe)
        except PipelineError as exc:
            problems.append(f"{where}.pipeline = {job.pipeline!r}: {exc}")
            continue
        unknown = [k for k in job.parameters if k not in pspec.parameters]
        for k in unknown:
            valid = sorted(pspec.parameters)
            problems.append(
                f"{where}.parameters.{k}: pipeline {job.pipeline!r} has no shared parameter {k!r}; "
                f"valid: {valid}.{_suggest(k, valid)}"
            )
        sample_day = date(2024, 3, 5)
        try:
            resolved = resolve_parameters(
                job.parameters, session=sample_day,
                fire_time=datetime(2024, 3, 5, 21, 30, tzinfo=UTC), calendar=spec.calendar,
                where=f"{where}.parameters",
            )  # fmt: skip
        except ScheduleError as exc:
            problems.append(str(exc))
            continue
        if deep and not unknown:
            try:
                validate_spec(pspec, resolved, root)
            except PipelineError as exc:
                problems.append(f"{where}: with its parameters, {exc}")
        jobs[job.name] = job
    # after-chains must end at a timed job
    for name, job in list(jobs.items()):
        seen = {name}
        cur = job
        while cur.after is not None and cur.after in jobs:
            if cur.after in seen:
                problems.append(
                    f"{path.name}: jobs {sorted(seen)} depend on each other in a cycle. Fix: break it."
                )
                break
            seen.add(cur.after)
            cur = jobs[cur.after]
        if cur.after is not None and cur.after not in jobs and cur.after in left_out:
            left_out[name] = f"runs after {cur.after!r}, which is left out"
            jobs.pop(name)
    if problems:
        raise ScheduleError(
            f"{path}: invalid schedule; nothing was scheduled:\n  - " + "\n  - ".join(problems)
        )
    return Schedule(path, spec.calendar, jobs, triggers, left_out)
