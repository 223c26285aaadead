"""``wb risk``: status exit codes and JSON, manual trip, re-arm messages and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.risk.cli import risk_app
from workbench.risk.state import KillSwitchStore

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root in ``tmp_path`` with the default state URL (``runs/risk.db`` under it)."""
    monkeypatch.setenv("WB_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("WB_RISK__STATE_URL", raising=False)
    monkeypatch.setattr("getpass.getuser", lambda: "ops")
    return tmp_path


def _invoke(*args: str):
    return runner.invoke(risk_app, list(args))


def _store(project: Path) -> KillSwitchStore:
    return KillSwitchStore("sqlite:///runs/risk.db", root=project)


def test_status_is_0_when_nothing_is_tripped(project):
    res = _invoke("status")
    assert res.exit_code == 0, res.output
    assert "every strategy is active" in res.output
    assert (project / "runs" / "risk.db").is_file()  # the default URL resolved to the project


def test_status_is_3_when_any_is_halted_and_json_says_which(project):
    with _store(project) as store:
        store.trip("s1", rule="daily_loss", reason="loss 2.1% > 2%", values={"loss": 0.021})
        store.trip("s2", rule="drawdown", reason="dd", values={})
        store.rearm("s2", reason="drawdown reviewed", actor="ops")
    res = _invoke("status")
    assert res.exit_code == 3
    assert "s1" in res.output and "halted" in res.output and "daily_loss" in res.output

    res = _invoke("status", "--json")
    assert res.exit_code == 3
    doc = json.loads(res.stdout)
    assert doc["halted"] == ["s1"]
    states = {s["strategy"]: s for s in doc["strategies"]}
    assert states["s1"]["state"] == "halted" and states["s1"]["values"] == {"loss": 0.021}
    assert states["s1"]["tripped_at"].endswith("+00:00")
    assert states["s2"]["state"] == "active"
    assert [e["event"] for e in doc["events"]] == ["trip", "trip", "rearm"]
    assert doc["events"][-1]["reason"] == "drawdown reviewed"

    res = _invoke("status", "--strategy", "s2", "--json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["halted"] == [] and [s["strategy"] for s in doc["strategies"]] == ["s2"]
    assert {e["strategy"] for e in doc["events"]} == {"s2"}


def test_status_shows_the_last_5_events_only(project):
    with _store(project) as store:
        for i in range(7):
            store.trip("s1", rule="manual", reason=f"r{i}", values={})
    doc = json.loads(_invoke("status", "--json").stdout)
    assert [e["reason"] for e in doc["events"]] == ["r2", "r3", "r4", "r5", "r6"]


def test_status_of_an_unknown_strategy_is_active(project):
    res = _invoke("status", "--strategy", "new_one", "--json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["strategies"][0]["strategy"] == "new_one"
    assert doc["strategies"][0]["state"] == "active" and doc["events"] == []


def test_status_url_option_wins_over_the_environment(project, monkeypatch):
    monkeypatch.setenv("WB_RISK__STATE_URL", "sqlite:///env.db")
    with KillSwitchStore("sqlite:///other.db", root=project) as store:
        store.trip("s9", rule="manual", reason="stop", values={})
    assert _invoke("status").exit_code == 0  # env.db: nothing tripped
    assert (project / "env.db").is_file()
    assert _invoke("status", "--url", "sqlite:///other.db").exit_code == 3


def test_trip_then_rearm_round_trip(project):
    res = _invoke("trip", "--strategy", "s1", "--reason", "desk says stop")
    assert res.exit_code == 0, res.output
    assert "tripped 's1'" in res.output and "manual" in res.output
    with _store(project) as store:
        s = store.load("s1")
    assert s.halted and s.rule == "manual" and s.reason == "desk says stop"

    res = _invoke("trip", "--strategy", "s1", "--reason", "second stop")
    assert res.exit_code == 0 and "already halted" in res.output

    res = _invoke("rearm", "--strategy", "s1", "--reason", "desk cleared it")
    assert res.exit_code == 0, res.output
    assert "re-armed 's1'" in res.output and "'manual'" in res.output
    assert "'desk cleared it'" in res.output and "ops" in res.output
    with _store(project) as store:
        assert not store.load("s1").halted
        h = store.history("s1")
    assert h["event"].to_list() == ["trip", "trip", "rearm"]
    assert h["actor"].to_list() == ["ops", "ops", "ops"]


@pytest.mark.parametrize("reason", [None, "", "   ", "ok"])
def test_rearm_without_a_reason_is_refused_with_exit_2(project, reason):
    with _store(project) as store:
        store.trip("s1", rule="manual", reason="stop", values={})
    args = ["rearm", "--strategy", "s1"] + ([] if reason is None else ["--reason", reason])
    res = _invoke(*args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "reason" in lines[0]
    assert "Traceback" not in res.output
    with _store(project) as store:
        assert store.load("s1").halted


def test_rearm_of_an_active_switch_is_refused_with_exit_2(project):
    res = _invoke("rearm", "--strategy", "s1", "--reason", "nothing happened")
    assert res.exit_code == 2
    assert res.output.startswith("error:") and "not tripped" in res.output
    assert "Traceback" not in res.output


def test_trip_without_a_reason_is_refused_with_exit_2(project):
    res = _invoke("trip", "--strategy", "s1")
    assert res.exit_code == 2
    assert res.output.startswith("error:") and "reason" in res.output
    with _store(project) as store:
        assert not store.load("s1").halted


def test_garbage_database_is_a_one_line_error(project):
    (project / "runs").mkdir()
    (project / "runs" / "risk.db").write_text("not sqlite at all\n" * 20)
    res = _invoke("status")
    assert res.exit_code == 2
    assert res.output.startswith("error:") and "move the file away" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_help_documents_the_exit_codes():
    res = runner.invoke(risk_app, ["status", "--help"])
    assert res.exit_code == 0
    assert "3 when any is halted" in " ".join(res.output.split())
