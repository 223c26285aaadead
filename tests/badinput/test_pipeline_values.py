"""Bad input: pipeline specs and `-p` values of `wb run`.

The finding: `-p timeframe=7Min`, `-p strategy=nosuch` and `-p alpha=0.9` passed validation and
failed 12-22 s later inside a notebook, after a run was recorded; `-p seed=-1` was accepted;
impossible dates ended in a bare ValueError; `steps: []` was recorded as a success. Each case now:
exit 2, a message naming the parameter (or spec field), the bad value and the fix, and nothing
written (no run folder, no lock, no MLflow store).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import assert_clean_message, fingerprint, nothing_written, wb

P_VALUES = {
    "timeframe=7Min": ["'timeframe' = '7Min'", "valid timeframes", "Did you mean '5Min'"],
    "strategy=nosuch": [
        "'strategy' = 'nosuch'",
        "not a configured strategy",
        "Fix: add config/strategies/nosuch.yaml",
    ],
    "alpha=0.9": ["'alpha' = 0.9", "less than or equal to 0.5", "Fix"],
    "vwap_reversion=0.7": ["'vwap_reversion' = 0.7", "less than or equal to 0.5", "Fix"],
    "trend=-0.1": ["'trend' = -0.1", "greater than or equal to 0", "Fix"],
    "seed=-1": ["'seed' = -1", "0 <= seed", "Fix: a non-negative integer"],
    "start=2024-02-30": ["'start' = '2024-02-30'", "day is out of range", "Fix: a real date"],
    "end=2023-12-01": [
        "end = '2023-12-01' is before start = '2024-01-02'",
        "Fix: set end on or after start",
    ],
    "symbols=[]": ["'symbols' = []", "empty symbol list", "Fix: list at least one symbol"],
    "n_trials=-3": ["'n_trials' = -3", "must be >= 0", "Fix"],
    "alpah=0.1": ["no parameter 'alpah'", "Did you mean 'alpha'"],
    "alpha": ["override 'alpha' is not key=value", "e.g. -p alpha=0.05"],
}


@pytest.mark.parametrize("param", list(P_VALUES))
def test_bad_p_value_is_refused_before_anything_runs(
    param: str, project: Path, isolated: Path
) -> None:
    before = fingerprint(isolated)
    res = wb("run", "research", "-p", param)
    assert res.exit_code == 2, res.output
    text = res.output.replace("\n", " ")
    assert_clean_message(text, *P_VALUES[param])
    if "=" in param and not param.startswith("alpah"):
        assert "nothing was run" in text
    nothing_written(isolated, before)
    assert not (project / "runs").exists()


STEP = "  - name: {name}\n    notebook: notebooks/01_ingest.ipynb\n    parameters: {params}\n"
SPECS = {
    "no steps": (
        "name: bad\nsteps: []\n",
        ["steps", "at least 1 item", "bad.yaml", "Fix: list at least one step"],
    ),
    "misspelt key": (
        "name: bad\nstepz: []\n",
        ["stepz", "Extra inputs are not permitted", "bad.yaml"],
    ),
    "repeated step name": (
        "name: bad\nsteps:\n"
        + STEP.format(name="a", params="{}")
        + STEP.format(name="a", params="{}"),
        ["step names must be unique", "['a']"],
    ),
    "undefined reference": (
        "name: bad\nsteps:\n" + STEP.format(name="a", params='{seed: "${sed}"}'),
        ["undefined reference ${sed}", "step 'a'"],
    ),
    "parameter the notebook lacks": (
        "name: bad\nsteps:\n" + STEP.format(name="a", params="{sede: 3}"),
        ["parameter 'sede' is not in notebooks/01_ingest.ipynb", "Did you mean 'seed'"],
    ),
    "notebook that does not exist": (
        "name: bad\nsteps:\n  - name: a\n    notebook: notebooks/99_nothing.ipynb\n",
        ["notebooks/99_nothing.ipynb does not exist", "step 'a'", "proj/"],
    ),
    "impossible date in the spec": (
        "name: bad\nparameters: {start: 2024-02-30}\nsteps:\n"
        + STEP.format(name="a", params='{start: "${start}"}'),
        ["'start' = '2024-02-30'", "not a calendar date", "Fix"],
    ),
    "a type the notebook refuses": (
        "name: bad\nsteps:\n" + STEP.format(name="a", params="{seed: seven}"),
        ["parameter 'seed' = 'seven'", "does not fit its annotation int"],
    ),
    "a schedule run as a pipeline": (
        "jobs: {}\n",
        ["is a schedule, not a pipeline", "Fix: run a pipeline it names"],
    ),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_bad_spec_is_refused_before_anything_runs(case: str, project: Path, isolated: Path) -> None:
    text, must = SPECS[case]
    (project / "pipelines" / "bad.yaml").write_text(text)
    before = fingerprint(isolated)
    res = wb("run", "bad")
    assert res.exit_code == 2, res.output
    assert_clean_message(res.output.replace("\n", " "), *must)
    nothing_written(isolated, before)
    assert not (project / "runs").exists()


def test_unknown_pipeline_names_the_available_ones(project: Path, isolated: Path) -> None:
    before = fingerprint(isolated)
    res = wb("run", "reserch")
    assert res.exit_code == 2
    assert_clean_message(
        res.output.replace("\n", " "), "pipeline 'reserch' not found", "'research'"
    )
    nothing_written(isolated, before)
