"""Promotion gates: compare out-of-sample measurements with per-strategy thresholds.

Each gate reads one measured value and a threshold from :class:`workbench.config.GatesConfig`;
an unset threshold (``None``) skips the gate. A missing or non-finite measurement fails its gate:
the model must prove it, not be given the benefit of the doubt.

One exception, stated in the report: the PBO is *not measurable* when the search's candidates
hold fewer than ``pbo_min_distinct`` distinct ones (``values["pbo_distinct"]``, the clusters of
near-duplicate out-of-sample returns, see :mod:`workbench.validation.cpcv`). Choosing among
copies of one configuration cannot overfit, and CSCV over them ranks noise (a PBO near 0.5
whatever the edge), so the ``max_pbo`` gate is not applied; its row says why (``note``) and the
other gates (the deflated Sharpe ratio among them) still judge the model.
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
    "min_sharpe_ci_low": ("sharpe_ci_low", ">="),  # stationary bootstrap (validation.montecarlo)
    "beats_baseline": ("baseline_p_value", "<="),  # paired test against the rule (.baseline)
}


@dataclass(frozen=True)
class GateReport:
    """One row per active gate: gate, metric, op, value, threshold, passed, note (why a gate
    was not applied, else empty)."""

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
            f"gate.{r['gate']}": "not measurable"
            if r["note"]
            else ("pass" if r["passed"] else "fail")
            for r in self.frame.iter_rows(named=True)
        }
        out["gates"] = "pass" if self.passed else "fail"
        return out


def evaluate_gates(values: Mapping[str, float | None], gates: GatesConfig) -> GateReport:
    """Evaluate every configured gate against measured ``values``.

    ``max_drawdown`` is compared as a positive fraction (``abs`` of the measured drawdown).
    ``max_pbo`` is not applied (passed, with a ``note``) when ``values["pbo_distinct"]`` is below
    ``gates.pbo_min_distinct``: see the module docstring.
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
        note = ""
        distinct = values.get("pbo_distinct")
        if (
            gate == "max_pbo"
            and distinct is not None
            and math.isfinite(float(distinct))
            and float(distinct) < gates.pbo_min_distinct
        ):
            ok, value = True, float("nan")
            note = (
                f"PBO not measurable: {int(distinct)} distinct candidate(s) after merging "
                f"near-duplicate out-of-sample returns, fewer than pbo_min_distinct = "
                f"{gates.pbo_min_distinct}; the gate is not applied"
            )
        rows.append(
            {
                "gate": gate,
                "metric": metric,
                "op": op,
                "value": value,
                "threshold": float(threshold),
                "passed": ok,
                "note": note,
            }
        )
    schema = {
        "gate": pl.String,
        "metric": pl.String,
        "op": pl.String,
        "value": pl.Float64,
        "threshold": pl.Float64,
        "passed": pl.Boolean,
        "note": pl.String,
    }
    return GateReport(pl.DataFrame(rows, schema=schema))
