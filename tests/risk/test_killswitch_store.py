"""Kill-switch state: durable across restarts, re-armed only with a reason, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from workbench.errors import ConfigError, ParameterError, WorkbenchError
from workbench.risk.state import (
    KillSwitchState,
    KillSwitchStore,
    KillSwitchStoreError,
    NotTrippedError,
    default_state_url,
)

T0 = datetime(2024, 3, 5, 15, 30, tzinfo=UTC)


class FrozenClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def store(tmp_path: Path, clock: FrozenClock):
    with KillSwitchStore("sqlite:///risk.db", root=tmp_path, clock=clock) as s:
        yield s


def _trip(store: KillSwitchStore, strategy: str = "s1", **kw) -> KillSwitchState:
    args = {"rule": "daily_loss", "reason": "loss 2.1% > 2%", "values": {"loss": 0.021}} | kw
    return store.trip(strategy, **args)


def test_unknown_strategy_is_active_and_allows_entries(store):
    s = store.load("never_seen")
    assert s == KillSwitchState("never_seen")
    assert not s.halted and s.allows_entries
    assert store.all_states().is_empty() and store.history().is_empty()


def test_trip_halts_and_survives_a_new_store_on_the_same_file(tmp_path, clock):
    with KillSwitchStore("sqlite:///risk.db", root=tmp_path, clock=clock) as first:
        tripped = _trip(first, ts=T0 - timedelta(minutes=5))
    assert tripped.halted and not tripped.allows_entries
    with KillSwitchStore("sqlite:///risk.db", root=tmp_path) as restarted:
        s = restarted.load("s1")
    assert s.halted and not s.allows_entries
    assert (s.rule, s.reason, s.values) == ("daily_loss", "loss 2.1% > 2%", {"loss": 0.021})
    assert s.tripped_at == T0 - timedelta(minutes=5)
    assert s.tripped_at.tzinfo is UTC


def test_trip_in_another_process_is_seen_halted(tmp_path):
    db = tmp_path / "runs" / "risk.db"
    code = (
        "from pathlib import Path; from workbench.risk.state import KillSwitchStore; "
        f"KillSwitchStore('sqlite:///runs/risk.db', root=Path({str(tmp_path)!r}))"
        ".trip('s1', rule='drawdown', reason='dd 11% > 10%', values={'dd': 0.11})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert db.is_file()
    with KillSwitchStore(f"sqlite:///{db}") as store:
        s = store.load("s1")
    assert s.halted and s.rule == "drawdown" and s.values == {"dd": 0.11}


@pytest.mark.parametrize("reason", ["", "   ", "\t\n", "ok", " abc  ", None])
def test_rearm_needs_a_reason(store, reason):
    _trip(store)
    with pytest.raises(ParameterError, match="reason") as err:
        store.rearm("s1", reason=reason, actor="ops")
    assert "at least 5 characters" in str(err.value) and "Fix:" in str(err.value)
    assert store.load("s1").halted
    assert store.history("s1")["event"].to_list() == ["trip"]


def test_rearm_of_an_active_switch_is_refused(store):
    with pytest.raises(NotTrippedError, match="not tripped"):
        store.rearm("s1", reason="just in case", actor="ops")
    _trip(store)
    store.rearm("s1", reason="loss explained", actor="ops")
    with pytest.raises(NotTrippedError, match="not tripped"):
        store.rearm("s1", reason="loss explained", actor="ops")
    assert store.history("s1")["event"].to_list() == ["trip", "rearm"]


def test_rearm_resumes_and_records_reason_actor_and_clock_time(store, clock):
    _trip(store, ts=T0)
    clock.now = T0 + timedelta(hours=2)
    s = store.rearm("s1", reason="  fills reconciled, loss explained  ", actor="alice")
    assert s == KillSwitchState("s1") and s.allows_entries
    assert store.load("s1") == KillSwitchState("s1")
    h = store.history("s1")
    assert h["event"].to_list() == ["trip", "rearm"]
    rearm = h.row(1, named=True)
    assert rearm["reason"] == "fills reconciled, loss explained"
    assert rearm["actor"] == "alice"
    assert rearm["ts"] == T0 + timedelta(hours=2)
    assert rearm["rule"] == "daily_loss"  # what was re-armed
    row = store.all_states().row(0, named=True)
    assert row["state"] == "active" and row["updated_at"] == T0 + timedelta(hours=2)


def test_default_actor_is_the_process_user(store, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "bob")
    _trip(store)
    store.rearm("s1", reason="checked it all")
    assert store.history("s1")["actor"].to_list() == ["bob", "bob"]


def test_double_trip_keeps_the_first_trip_and_records_both(store, clock):
    first = _trip(store, ts=T0)
    clock.now = T0 + timedelta(minutes=30)
    second = _trip(store, rule="drawdown", reason="dd 12%", values={"dd": 0.12})
    assert second == first
    assert store.load("s1") == first
    h = store.history("s1")
    assert h["rule"].to_list() == ["daily_loss", "drawdown"]
    assert h["ts"].to_list() == [T0, T0 + timedelta(minutes=30)]
    assert store.all_states()["updated_at"].to_list() == [T0]


def test_trip_is_atomic_when_the_event_write_fails(store, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk gone between the two writes")

    monkeypatch.setattr(store, "_insert_event", boom)
    with pytest.raises(RuntimeError, match="disk gone"):
        _trip(store)
    assert store.all_states().is_empty()
    assert store.load("s1") == KillSwitchState("s1")
    # a halted row stays exactly as it was when a re-arm fails half-way
    monkeypatch.undo()
    first = _trip(store)
    before = store.all_states()
    monkeypatch.setattr(store, "_insert_event", boom)
    with pytest.raises(RuntimeError):
        store.rearm("s1", reason="should not stick", actor="ops")
    assert store.all_states().equals(before)
    assert store.load("s1") == first
    assert store.history("s1")["event"].to_list() == ["trip"]


def test_datetimes_are_utc_and_naive_ones_refused(store, clock):
    est = timezone(timedelta(hours=-5))
    s = _trip(store, ts=datetime(2024, 3, 5, 10, 30, tzinfo=est))
    assert s.tripped_at == T0 and s.tripped_at.tzinfo is UTC
    assert store.load("s1").tripped_at.utcoffset() == timedelta(0)
    assert str(store.history()["ts"].dtype) == "Datetime(time_unit='us', time_zone='UTC')"
    with pytest.raises(ParameterError, match="timezone-aware") as err:
        _trip(store, "s2", ts=datetime(2024, 3, 5, 15, 30))
    assert "naive" in str(err.value) and "2024-03-05T15:30:00" in str(err.value)
    clock.now = datetime(2024, 3, 5, 15, 30)
    with pytest.raises(ParameterError, match=r"clock\(\) must be timezone-aware"):
        _trip(store, "s3")
    assert store.load("s2") == KillSwitchState("s2")


def test_values_non_finite_floats_become_null_and_others_refused(store):
    import numpy as np

    vals = {"a": float("nan"), "b": float("inf"), "c": np.float64(1.5), "d": np.int64(3), "e": "x"}
    s = _trip(store, values=vals)
    assert s.values == {"a": None, "b": None, "c": 1.5, "d": 3, "e": "x"}
    assert json.loads(store.history()["values"][0]) == s.values
    with pytest.raises(ParameterError, match=r"values\['when'\]"):
        _trip(store, "s2", values={"when": T0})
    with pytest.raises(ParameterError, match="values"):
        _trip(store, "s2", values=[1, 2])


@pytest.mark.parametrize("arg", ["strategy", "rule", "reason"])
def test_trip_refuses_empty_names(store, arg):
    kw = {"strategy": "s1", "rule": "daily_loss", "reason": "loss", "values": {}} | {arg: " "}
    with pytest.raises(ParameterError, match=arg):
        store.trip(kw.pop("strategy"), **kw)


def test_history_filters_limits_and_orders_oldest_first(store, clock):
    for i in range(4):
        clock.now = T0 + timedelta(minutes=i)
        _trip(store, f"s{i % 2}", reason=f"r{i}")
    assert store.history()["reason"].to_list() == ["r0", "r1", "r2", "r3"]
    assert store.history(limit=2)["reason"].to_list() == ["r2", "r3"]
    assert store.history("s1")["reason"].to_list() == ["r1", "r3"]
    assert store.all_states()["strategy"].to_list() == ["s0", "s1"]
    with pytest.raises(ParameterError, match="limit"):
        store.history(limit=0)


def test_garbage_file_gives_a_clear_error(tmp_path):
    bad = tmp_path / "risk.db"
    bad.write_bytes(b"this is not a database, just some text\n" * 50)
    with pytest.raises(KillSwitchStoreError) as err:
        KillSwitchStore(f"sqlite:///{bad}")
    msg = str(err.value)
    assert str(bad) in msg and "not an SQLite database" in msg and "move the file away" in msg
    assert isinstance(err.value, WorkbenchError)


def test_relative_sqlite_url_resolves_against_root_and_creates_the_folder(tmp_path):
    with KillSwitchStore("sqlite:///runs/sub/risk.db", root=tmp_path) as store:
        assert store.url == f"sqlite:///{tmp_path / 'runs' / 'sub' / 'risk.db'}"
    assert (tmp_path / "runs" / "sub" / "risk.db").is_file()


def test_relative_sqlite_url_defaults_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with KillSwitchStore() as store:
        _trip(store)
    assert (tmp_path / "runs" / "risk.db").is_file()


def test_in_memory_and_other_urls_create_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with KillSwitchStore("sqlite://", root=tmp_path) as store:
        assert _trip(store).halted
        assert store.load("s1").halted
    assert list(tmp_path.iterdir()) == []
    # a non-sqlite URL is handed to SQLAlchemy as is: no folder appears for its path
    with pytest.raises((ConfigError, KillSwitchStoreError)):
        KillSwitchStore("postgresql+nosuchdriver://u:secret@h/runs/db", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bad_url_is_a_config_error_with_the_password_hidden(tmp_path):
    with pytest.raises(ConfigError, match="not an SQLAlchemy URL"):
        KillSwitchStore("not a url", root=tmp_path)
    with pytest.raises(ConfigError) as err:
        KillSwitchStore("postgresql+nosuchdriver://u:secret@h/db", root=tmp_path)
    assert "secret" not in str(err.value) and "***" in str(err.value)


def test_sqlite_uses_wal_and_a_busy_timeout(store):
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_tables_hold_the_documented_columns(store):
    cols = {
        t: {c["name"] for c in sa.inspect(store._engine).get_columns(t)}
        for t in ("kill_switch", "kill_switch_events")
    }
    assert cols["kill_switch"] == {
        "strategy",
        "state",
        "tripped_at",
        "rule",
        "reason",
        "values",
        "updated_at",
    }
    assert cols["kill_switch_events"] == {
        "id",
        "strategy",
        "ts",
        "event",
        "rule",
        "reason",
        "values",
        "actor",
    }


def test_default_state_url_reads_the_environment(monkeypatch):
    monkeypatch.delenv("WB_RISK__STATE_URL", raising=False)
    assert default_state_url() == "sqlite:///runs/risk.db"
    monkeypatch.setenv("WB_RISK__STATE_URL", "sqlite:///elsewhere.db")
    assert default_state_url() == "sqlite:///elsewhere.db"
