"""Bad input: broker keys (missing, half set, in a file, as a parameter, live without the second
opt-in) and order ledgers (garbage, a truncated database, unusable URLs).

Each case: exit 2 (or the library error), a message naming the variable, file or URL and the
fix, no secret echoed, and nothing written or changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import assert_clean_message, fingerprint, nothing_written, wb

KEY_ID, SECRET = "PKBADINPUTKEYS0001", "bad-input-keys-secret-value"
INGEST_ALPACA = (
    "ingest", "--source", "alpaca", "--symbols", "AAPL", "--timeframe", "1Day",
    "--start", "2024-01-02", "--end", "2024-01-05", "--no-progress",
)  # fmt: skip


@pytest.mark.parametrize(
    ("env", "must"),
    [
        ({}, ["APCA_API_KEY_ID and APCA_API_SECRET_KEY not set", "Fix: export"]),
        ({"APCA_API_KEY_ID": KEY_ID}, ["APCA_API_SECRET_KEY not set", "Fix: export"]),
        ({"APCA_API_SECRET_KEY": SECRET}, ["APCA_API_KEY_ID not set", "Fix: export"]),
    ],
    ids=["no keys", "no secret", "no key id"],
)
def test_missing_keys_are_named(
    env: dict, must: list, project: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = fingerprint(isolated)
    res = wb(*INGEST_ALPACA)
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", " "), *must)
    assert KEY_ID not in res.output and SECRET not in res.output
    nothing_written(isolated, before)


def test_live_trading_without_the_second_opt_in(
    project: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    monkeypatch.delenv("WB_LIVE_TRADING", raising=False)
    before = fingerprint(isolated)
    res = wb(
        "session", "run", "--strategy", "intraday_reversal", "--broker", "alpaca", "--mode",
        "live", "--live", "--ledger", f"sqlite:///{isolated / 'ledger.db'}",
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert_clean_message(
        res.output.replace("\n", " "), "--live", "WB_LIVE_TRADING=''", "Fix: pass --live and export"
    )
    assert KEY_ID not in res.output and SECRET not in res.output
    nothing_written(isolated, before)


def test_a_credential_named_parameter_is_refused(project: Path, isolated: Path) -> None:
    spec = project / "pipelines" / "research.yaml"
    spec.write_text(spec.read_text().replace("parameters:\n", "parameters:\n  api_key: PK123\n", 1))
    before = fingerprint(isolated)
    res = wb("run", "research")
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", " "), "'api_key'", "credentials", "environment")
    nothing_written(isolated, before)
    assert not (project / "runs").exists()


def test_the_secret_as_a_p_value_is_refused_and_not_shown(
    project: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    before = fingerprint(isolated)
    res = wb("run", "research", "-p", f"data_dir={SECRET}")
    assert res.exit_code == 2, res.output
    assert_clean_message(
        res.output.replace("\n", " "), "'data_dir'", "configured secret (not shown)", "Fix"
    )
    assert SECRET not in res.output
    nothing_written(isolated, before)


def _garbage(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 12)
    return path


def _truncated_sqlite(path: Path) -> Path:
    path.write_bytes(b"SQLite format 3\x00" + b"\x10\x00" + b"\x00" * 30)
    return path


LEDGERS = {
    "a garbage file": (
        lambda d: f"sqlite:///{_garbage(d / 'ledger.db')}",
        ["ledger.db", "is not an SQLite database", "Fix: move the file away"],
    ),
    "a truncated database": (
        lambda d: f"sqlite:///{_truncated_sqlite(d / 'ledger.db')}",
        ["ledger.db", "Fix"],
    ),
    "an unknown database driver": (
        lambda d: "nosuchdb://host/ledger",
        ["'nosuchdb://host/ledger'", "cannot be used", "Fix"],
    ),
    "a file that does not exist (reading creates nothing)": (
        lambda d: f"sqlite:///{d / 'nowhere' / 'ledger.db'}",
        ["nowhere/ledger.db", "no order ledger at", "Fix: pass the ledger a session wrote"],
    ),
    "not a URL": (
        lambda d: "runs/ledger.db",
        ["'runs/ledger.db'", "not an SQLAlchemy URL", "Fix: use e.g. 'sqlite:///runs/ledger.db'"],
    ),
}


@pytest.mark.parametrize("case", list(LEDGERS))
def test_bad_order_ledger(case: str, project: Path, isolated: Path) -> None:
    make, must = LEDGERS[case]
    url = make(isolated)
    before = fingerprint(isolated)
    res = wb("session", "status", "--ledger", url)
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", " "), *must)
    nothing_written(isolated, before)
