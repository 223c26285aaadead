"""Promotion gates: compare out-of-sample measurements with per-strategy thresholds.

Each gate reads one measured value and a threshold from :class:`workbench.config.GatesConfig`;
an unset threshold (``None``) skips the gate. A missing or non-finite measurement fails its gate:
the model must prove it, not be given the benefit of the doubt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from workbench.config import GatesConfig

# gate field -> (measured key, comparison)
GATES: dict[str, tuple[str, str]] = {
    "min_sharpe": ("sharpe", ">="),
    "min_deflated_sharpe": ("deflated_sharpe", ">="),
    "max_pbo": ("pbo", "<="),
    "max_drawdown": ("max_drawdown", "<="),
    "min_trades": ("n_trades", ">="),
    "min_win_rate": ("win_rate", ">="),
    "min_ic": ("ic", ">="),
    "max_turnover": ("turnover", "<="),
}


@dataclass(frozen=True)
class GateReport:
    """One row per active gate: gate, metric, value, threshold, passed."""

    frame: pl.DataFrame

    @property
    def passed(self) -> bool:
        return bool(self.frame["passed"].all()) if self.frame.height else False

    def failures(self) -> list[str]:
        """Return readable reasons for every failed gate."""
        out = []
        for r in self.frame.filter(~pl.col("passed")).iter_rows(named=True):
            what = f"{r['op']} {r['threshold']:.4g} required"
            if math.isfinite(r["value"]):
                out.append(f"{r['gate']}: {r['metric']} = {r['value']:.4g}, {what}")
            else:  # nothing traded, or not measured (e.g. no search behind the model for PBO)
                out.append(f"{r['gate']}: {r['metric']} not measured, {what}")
        return out

    def tags(self) -> dict[str, str]:
        """Return MLflow tags (``gate.<name>`` = pass/fail, ``gates`` = pass/fail)."""
        out = {
            f"gate.{r['gate']}": "pass" if r["passed"] else "fail"
            for r in self.frame.iter_rows(named=True)
        }
        out["gates"] = "pass" if self.passed else "fail"
        return out


def evaluate_gates(values: Mapping[str, float | None], gates: GatesConfig) -> GateReport:
    """Evaluate every configured gate against measured ``values``.

    ``max_drawdown`` is compared as a positive fraction (``abs`` of the measured drawdown).
    """
    rows = []
    for gate, (metric, op) in GATES.items():
        threshold = getattr(gates, gate)
        if threshold is None:
            continue
        raw = values.get(metric)
        value = float("nan") if raw is None else float(raw)
        if metric == "max_drawdown":
            value = abs(value)
        ok = math.isfinite(value) and (value >= threshold if op == ">=" else value <= threshold)
        rows.append(
            {
                "gate": gate,
                "metric": metric,
                "op": op,
                "value": value,
                "threshold": float(threshold),
                "passed": ok,
            }
        )
    schema = {
        "gate": pl.String,
        "metric": pl.String,
        "op": pl.String,
        "value": pl.Float64,
        "threshold": pl.Float64,
        "passed": pl.Boolean,
    }
    return GateReport(pl.DataFrame(rows, schema=schema))
