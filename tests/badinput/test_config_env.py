"""Bad input: the config file and its environment overrides (WB_*, WB_ENV, WB_CONFIG_DIR,
MLFLOW_TRACKING_URI).

Each case runs `wb ingest` (which would write a store) and asserts: exit 2, a message naming the
field or file, the bad value and the fix, and nothing written anywhere (no store, no MLflow).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import assert_clean_message, fingerprint, nothing_written, wb

INGEST = ("ingest", "--symbols", "SYN000", "--timeframe", "1Day", "--no-progress")

# name: (text appended to config/workbench.yaml, what the message must name)
CONFIG_FILE = {
    "impossible date": (
        "data:\n  start: 2024-02-30\n",
        ["data.start", "'2024-02-30'", "line", "Fix"],
    ),
    "end before start": (
        "data:\n  start: 2024-03-02\n  end: 2024-01-02\n",
        ["data.end", "2024-01-02", "before start", "Fix"],
    ),
    "unknown key": (
        "data:\n  startt: 2024-01-02\n",
        ["data.startt", "line", "did you mean 'start'"],
    ),
    "alpha out of range": (
        "simulator:\n  alpha: 0.9\n",
        ["simulator.alpha", "0.9", "less than or equal to 0.5"],
    ),
    "unknown timeframe": (
        "data:\n  timeframe: 7Min\n",
        ["data.timeframe", "'7Min'", "Did you mean '5Min'"],
    ),
    "symbols not a list": ("data:\n  symbols: 5\n", ["data.symbols", "= 5", "tuple", "Fix"]),
    "secret in the file": (
        "secrets:\n  apca_api_key_id: PKFILE000\n",
        ["secrets", "read only from the environment", "Fix: remove the key"],
    ),
    "broken YAML": (
        "data:\n  start: [2024\n",
        ["workbench.yaml", "not valid YAML", "column 10", "Fix the syntax"],
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_FILE))
def test_bad_config_file(case: str, project: Path, isolated: Path) -> None:
    text, must = CONFIG_FILE[case]
    cfg = project / "config" / "workbench.yaml"
    cfg.write_text(cfg.read_text() + "\n" + text if case != "unknown key" else text)
    before = fingerprint(isolated)
    res = wb(*INGEST)
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", " "), *must)
    nothing_written(isolated, before)


ENV = {
    "impossible date": (
        {"WB_DATA__START": "2024-02-30"},
        ["data.start", "'2024-02-30'", "WB_DATA__START", "Fix"],
    ),
    "unknown field": (
        {"WB_SIMULATOR__ALHPA": "0.1"},
        ["simulator.alhpa", "WB_SIMULATOR__ALHPA", "did you mean 'alpha'"],
    ),
    "no field named": (
        {"WB_SIMULATOR": "1"},
        ["WB_SIMULATOR", "WB_<SECTION>__<FIELD>", "did you mean 'simulator'"],
    ),
    "unknown timeframe": (
        {"WB_DATA__TIMEFRAME": "7Min"},
        ["data.timeframe", "'7Min'", "WB_DATA__TIMEFRAME"],
    ),
    "negative seed": (
        {"WB_SIMULATOR__SEED": "-1"},
        ["simulator.seed", "-1", "WB_SIMULATOR__SEED", "greater than or equal to 0"],
    ),
    "missing overlay": (
        {"WB_ENV": "prodd"},
        ["WB_ENV='prodd'", "prodd.yaml does not exist", "Fix"],
    ),
    "config folder that does not exist": (
        {"WB_CONFIG_DIR": "/nonexistent/config"},
        ["WB_CONFIG_DIR='/nonexistent/config'", "not a folder", "Fix: point WB_CONFIG_DIR"],
    ),
    "negative deadline": (
        {"WB_ALPACA__DEADLINE_SECONDS": "-5"},
        ["alpaca.deadline_seconds", "-5", "greater than 0"],
    ),
}


@pytest.mark.parametrize("case", list(ENV))
def test_bad_environment_override(
    case: str, project: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, must = ENV[case]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = fingerprint(isolated)
    res = wb(*INGEST)
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", " "), *must)
    nothing_written(isolated, before)


@pytest.mark.parametrize(
    "uri",
    ["sqlite:///{tmp}/missing/mlflow.db", "file://{tmp}/missing/mlruns", "{tmp}/missing/mlruns"],
)
def test_tracking_uri_into_a_missing_folder_is_refused(
    uri: str, project: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding: MLflow created the missing folder and ran there. Now refused, before the
    pipeline's run folder or lock exist."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=isolated))
    before = fingerprint(isolated)
    res = wb("run", "research", "-p", "n_trials=1")
    assert res.exit_code == 2, res.output
    assert_clean_message(
        res.output.replace("\n", " "),
        "MLFLOW_TRACKING_URI",
        str(isolated / "missing"),
        "does not exist",
        "mkdir -p",
    )
    nothing_written(isolated, before)
    assert not (isolated / "missing").exists() and not (project / "runs").exists()
