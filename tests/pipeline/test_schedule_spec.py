"""schedule.yaml is validated like a pipeline spec: every error names the job, the field, the bad
value and the fix; unknown keys, pipelines, parameters and variables are refused."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from workbench.pipeline.schedule_spec import ScheduleError, load_schedule, resolve_parameters

REPO = Path(__file__).resolve().parents[2]


def refuse(root: Path, text: str, *fragments: str, deep: bool = False) -> str:
    p = root / "pipelines" / "schedule.yaml"
    p.write_text(text)
    with pytest.raises(ScheduleError) as err:
        load_schedule(p, root, deep=deep)
    msg = str(err.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_unknown_keys_name_the_field_and_suggest(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "jobs:\n  - {name: n, pipeline: tiny, at: at_open, sesions: first_of_week}\n",
        "jobs[0] (n).sesions: unknown key",
        "Did you mean 'sessions'?",
    )
    refuse(
        tiny_project,
        "calender: XNYS\njobs: []\n",
        "calender: unknown key",
        "Did you mean 'calendar'?",
    )


def test_unknown_pipeline_lists_the_valid_ones(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "jobs:\n  - {name: n, pipeline: tinny, at: at_open}\n",
        "jobs[0] (n).pipeline = 'tinny': no pipelines/tinny.yaml",
        "available pipelines: ['tiny']",
        "Did you mean 'tiny'?",
    )


def test_bad_triggers_name_the_value_and_the_fix(tiny_project: Path) -> None:
    msg = refuse(
        tiny_project,
        """jobs:
  - {name: a, pipeline: tiny, at: before_open + 60min}
  - {name: b, pipeline: tiny, cron: "0 10 * * 1-5"}
  - {name: c, pipeline: tiny, at: at_close, sessions: first_of_year}
  - {name: d, pipeline: tiny}
  - {name: e, pipeline: tiny, after: zz}
  - {name: f, pipeline: tiny, after: a, sessions: first_of_week}
""",
        "jobs[0] (a).at = 'before_open + 60min'",
        "Fix: 'before_open - 60min'",
        "jobs[1] (b).cron = '0 10 * * 1-5'",
        "use names, e.g. 'mon-fri'",
        "jobs[2] (c).sessions = 'first_of_year'",
        "jobs[3] (d): give exactly one of at, cron or after; got none",
        "jobs[4] (e).after = 'zz': not another job of this schedule",
        "jobs[5] (f): sessions/market_hours do not apply to an after job",
    )
    assert msg.count("\n  - ") == 6  # every problem reported at once


def test_unknown_parameters_and_variables(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        """jobs:
  - name: n
    pipeline: tiny
    at: after_close + 30min
    parameters: {xx: 1, label: "${sesion}"}
""",
        "jobs[0] (n).parameters.xx: pipeline 'tiny' has no shared parameter 'xx'; valid: ['fail', 'x']",
    )
    refuse(
        tiny_project,
        "jobs:\n  - {name: n, pipeline: tiny, at: at_open, parameters: {x: '${sesion}'}}\n",
        "unknown variable ${sesion}",
        "Did you mean 'session'?",
    )


def test_deep_validation_checks_the_pipeline_with_its_parameters(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "jobs:\n  - {name: n, pipeline: tiny, at: at_open, parameters: {x: '${session}'}}\n",
        "jobs[0] (n): with its parameters, pipeline 'tiny' is invalid",
        "parameter 'x' = '2024-03-05' does not fit its annotation int",
        deep=True,
    )


def test_duplicate_names_and_cycles(tiny_project: Path) -> None:
    refuse(
        tiny_project,
        "jobs:\n  - {name: n, pipeline: tiny, at: at_open}\n  - {name: n, pipeline: tiny, at: at_close}\n",
        "job names must be unique; repeated: ['n']",
    )
    refuse(
        tiny_project,
        "jobs:\n  - {name: a, pipeline: tiny, after: b}\n  - {name: b, pipeline: tiny, after: a}\n",
        "in a cycle",
    )


def test_an_optional_job_is_left_out_only_while_its_pipeline_file_is_missing(
    tiny_project: Path,
) -> None:
    text = """jobs:
  - {name: ingest, pipeline: tiny, at: after_close + 30min}
  - {name: monitor, pipeline: monitor, after: ingest, optional: true}
  - {name: report, pipeline: tiny, after: monitor}
"""
    p = tiny_project / "pipelines" / "schedule.yaml"
    p.write_text(text)
    sch = load_schedule(p, tiny_project)
    assert set(sch.jobs) == {"ingest"}
    assert sch.left_out == {
        "monitor": "pipelines/monitor.yaml does not exist yet",
        "report": "runs after 'monitor', which is left out",
    }
    # without optional the same job is refused
    refuse(tiny_project, text.replace(", optional: true", ""), "pipelines/monitor.yaml")
    # once the file exists it is validated and scheduled like any other
    (tiny_project / "pipelines" / "monitor.yaml").write_text(
        (tiny_project / "pipelines" / "tiny.yaml")
        .read_text()
        .replace("name: tiny", "name: monitor")
    )
    sch = load_schedule(p, tiny_project)
    assert set(sch.jobs) == {"ingest", "monitor", "report"} and sch.left_out == {}
    assert [d.name for d in sch.dependents("ingest")] == ["monitor"]
    refuse(
        tiny_project,
        text.replace(
            "after: ingest, optional: true", "after: ingest, optional: true, parameters: {nope: 1}"
        ),
        "jobs[1] (monitor).parameters.nope",
    )


def test_schedule_variables() -> None:
    got = resolve_parameters(
        {"start": "${session-364d}", "end": "${session}", "open": "${session_open}",
         "close": "${session_close}", "at": "${fire_time}", "n": 3, "l": ["${session}"]},
        session=date(2024, 7, 3), fire_time=datetime(2024, 7, 3, 17, 30, tzinfo=UTC),
    )  # fmt: skip
    assert got == {
        "start": "2023-07-05",
        "end": "2024-07-03",
        "open": "2024-07-03T13:30:00+00:00",
        "close": "2024-07-03T17:00:00+00:00",  # the half day's 13:00 New York
        "at": "2024-07-03T17:30:00+00:00",
        "n": 3,
        "l": ["2024-07-03"],
    }


def test_the_repository_schedule_validates_with_every_pipeline() -> None:
    sch = load_schedule(REPO / "pipelines" / "schedule.yaml", REPO, deep=True)
    assert {"daily_ingest", "trading_day", "weekly_retrain"} <= set(sch.jobs)
    assert sch.jobs["daily_ingest"].at == "after_close + 30min"
    assert sch.jobs["weekly_retrain"].sessions == "first_of_week"
    assert sch.jobs["nightly_monitor"].after == "daily_ingest" and sch.left_out == {}
    assert not any(j.optional for j in sch.jobs.values())  # every default job is there
    assert [d.name for d in sch.dependents("daily_ingest")] == ["nightly_monitor"]
    assert set(sch.triggers) == {"daily_ingest", "trading_day", "weekly_retrain"}
