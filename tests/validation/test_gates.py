"""Promotion gates: thresholds, skipped gates, missing values fail."""

from __future__ import annotations

from workbench.config import GatesConfig
from workbench.validation.gates import evaluate_gates


def test_gates_pass_and_fail_with_reasons() -> None:
    g = GatesConfig(min_sharpe=1.0, max_drawdown=0.2, min_trades=10, min_ic=None)
    ok = evaluate_gates({"sharpe": 1.5, "max_drawdown": -0.1, "n_trades": 10}, g)
    assert ok.passed and ok.frame["gate"].to_list() == ["min_sharpe", "max_drawdown", "min_trades"]
    bad = evaluate_gates({"sharpe": 0.5, "max_drawdown": -0.3, "n_trades": 50}, g)
    assert not bad.passed
    assert bad.failures() == [
        "min_sharpe: sharpe = 0.5, >= 1 required",
        "max_drawdown: max_drawdown = 0.3, <= 0.2 required",
    ]
    assert bad.tags()["gates"] == "fail" and bad.tags()["gate.min_trades"] == "pass"


def test_missing_or_nan_measurement_fails() -> None:
    g = GatesConfig(min_sharpe=0.0, max_drawdown=None, min_trades=None)
    assert not evaluate_gates({}, g).passed
    nan = evaluate_gates({"sharpe": float("nan")}, g)
    assert not nan.passed
    assert nan.failures() == ["min_sharpe: sharpe not measured, >= 0 required"]


def test_no_active_gate_never_passes() -> None:
    g = GatesConfig(min_sharpe=None, max_drawdown=None, min_trades=None)
    assert not evaluate_gates({"sharpe": 3.0}, g).passed
