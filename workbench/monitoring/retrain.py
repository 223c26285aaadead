"""Whether drift asks for ``weekly_retrain`` before its scheduled day.

The scheduler calls :func:`retrain_decision_from_outputs` with the nightly monitor's outputs
(``<run_dir>/monitor.outputs.json``) and runs ``weekly_retrain`` when the decision says so. The
switch is ``monitoring.retrain_on_drift`` (off by default); ``retrain_min_features`` columns must be
at or past ``psi_alert``; a model younger than ``retrain_cooldown_days`` is never retrained early
(its reference is new: what drifts is the world, and a retrain on the same data would not help).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import MonitoringConfig, WorkbenchConfig


@dataclass(frozen=True)
class RetrainDecision:
    """``retrain`` and the reason (always given, also for no)."""

    retrain: bool
    reason: str
    columns: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.retrain


def retrain_decision(
    psi: Mapping[str, float], *, age_days: float | None, cfg: MonitoringConfig
) -> RetrainDecision:
    """Decide from PSI per column and the model's age (see the module doc)."""
    past = sorted(
        (c for c, v in psi.items() if v is not None and math.isfinite(v) and v >= cfg.psi_alert),
        key=lambda c: -psi[c],
    )
    if not past:
        return RetrainDecision(False, f"no column at PSI >= {cfg.psi_alert}")
    what = ", ".join(f"{c} {psi[c]:.3f}" for c in past)
    if not cfg.retrain_on_drift:
        return RetrainDecision(
            False,
            f"drift past {cfg.psi_alert} ({what}) but monitoring.retrain_on_drift is off",
            past,
        )
    if len(past) < cfg.retrain_min_features:
        return RetrainDecision(
            False, f"{len(past)} column(s) past {cfg.psi_alert} ({what}); "
            f"monitoring.retrain_min_features is {cfg.retrain_min_features}", past,
        )  # fmt: skip
    if age_days is not None and age_days < cfg.retrain_cooldown_days:
        return RetrainDecision(
            False, f"drift past {cfg.psi_alert} ({what}) but the model is {age_days:.1f} days old "
            f"(< monitoring.retrain_cooldown_days {cfg.retrain_cooldown_days})", past,
        )  # fmt: skip
    return RetrainDecision(True, f"drift past {cfg.psi_alert}: {what}", past)


def retrain_decision_from_outputs(
    outputs: Mapping[str, Any] | str | Path, cfg: WorkbenchConfig
) -> RetrainDecision:
    """:func:`retrain_decision` from the nightly monitor step's outputs: the dict the step handed
    on, or its outputs file (``{"outputs": {...}}``) or the run folder holding
    ``monitor.outputs.json``."""
    if not isinstance(outputs, Mapping):
        path = Path(outputs)
        if path.is_dir():
            path = path / "monitor.outputs.json"
        if not path.exists():
            return RetrainDecision(False, f"no monitor outputs at {path}")
        outputs = json.loads(path.read_text()).get("outputs", {})
    psi = {k: float(v) for k, v in (outputs.get("psi") or {}).items() if v is not None}
    age = outputs.get("model_age_days")
    return retrain_decision(
        psi, age_days=float(age) if age is not None else None, cfg=cfg.monitoring
    )
