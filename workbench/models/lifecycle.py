"""Model lifecycle: the gate record, the training window's end, drift flags, and whether a
session may trade a version.

A version's record lives in the MLflow registry, so it holds whoever moved an alias (``wb
promote`` or a researcher in the MLflow UI):

* ``workbench.gate`` (``pass`` / ``fail``), ``workbench.gate_run`` (the validation run holding
  ``evaluation/window.json``, the :class:`~workbench.validation.evaluate.EvaluationWindow`) and
  ``workbench.gated_at``: written by validation (:func:`record_gate`);
* ``workbench.train_end``: the last training timestamp (else the ``split_ts`` tag the train step
  writes: every training row is before it);
* ``workbench.drift``: a drift flag from monitoring (:func:`flag_drift`, JSON: when, which
  columns, the largest PSI, the run), cleared by :func:`clear_drift`.

:func:`check_tradeable` is what a session calls before it sends anything: a version without a
passing gate record is refused unless ``ungated`` is allowed; one older than
``models.max_age_days`` or flagged as drifted is refused or warned about as
``models.on_expired`` / ``models.on_drift`` say, unless ``expired`` / ``drifted`` is allowed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workbench.config import WorkbenchConfig
from workbench.errors import WorkbenchError
from workbench.models.registry import ModelRef

GATE_TAG = "workbench.gate"
GATE_RUN_TAG = "workbench.gate_run"
GATED_AT_TAG = "workbench.gated_at"
TRAIN_END_TAG = "workbench.train_end"
DRIFT_TAG = "workbench.drift"
WINDOW_ARTIFACT = "evaluation/window.json"
"""Where :func:`record_gate` stores the evaluation window, in the validation run."""
ALLOWANCES = ("ungated", "expired", "drifted")


class ModelNotTradeableError(WorkbenchError):
    """A session must not trade this model version (no passing gate record, expired, drifted)."""


def _client() -> Any:
    import mlflow

    return mlflow.MlflowClient()


def _tags(ref: ModelRef) -> dict[str, str]:
    return dict(_client().get_model_version(ref.name, str(ref.version)).tags or {})


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# ------------------------------------------------------------------------------ gate record


@dataclass(frozen=True)
class GateRecord:
    """A version's validation verdict as the registry holds it."""

    passed: bool
    run_id: str
    at: str

    def window(self) -> Any:
        """The :class:`~workbench.validation.evaluate.EvaluationWindow` of the validation."""
        import mlflow

        from workbench.models.registry import quiet_downloads
        from workbench.validation.evaluate import EvaluationWindow, WindowUnavailableError

        try:
            with quiet_downloads():
                raw = mlflow.artifacts.load_dict(f"runs:/{self.run_id}/{WINDOW_ARTIFACT}")
        except Exception as exc:  # MLflow raises several kinds for a missing run or artifact
            raise WindowUnavailableError(
                f"the validation run {self.run_id} holds no {WINDOW_ARTIFACT} ({exc}). Fix: "
                "re-validate the model version (`wb run research`)."
            ) from None
        if raw.get("unreproducible"):
            raise WindowUnavailableError(
                f"the validation run {self.run_id} could not record a reproducible window: "
                f"{raw['unreproducible']}. Fix: validate through the research pipeline "
                "(`wb run research`), which records the features step's window."
            )
        return EvaluationWindow.from_dict(raw)


def record_gate(
    ref: ModelRef,
    *,
    passed: bool,
    run_id: str,
    window: Mapping[str, Any] | None,
    metrics: Mapping[str, float] | None = None,
    train_end: datetime | None = None,
    at: datetime | None = None,
) -> None:
    """Record a validation verdict on the version: the gate tags, the training window's end, the
    out-of-sample summary (``oos.*``) and, in run ``run_id``, the window (``window`` as a dict:
    :meth:`EvaluationWindow.to_dict`, or ``{"unreproducible": why}``)."""
    client = _client()
    if window is not None:
        client.log_dict(run_id, dict(window), WINDOW_ARTIFACT)
    now = _utc(at or datetime.now(UTC)).isoformat()
    tags = {GATE_TAG: "pass" if passed else "fail", GATE_RUN_TAG: run_id, GATED_AT_TAG: now}
    if train_end is not None:
        tags[TRAIN_END_TAG] = _utc(train_end).isoformat()
    if window is not None and "split_ts" in window:
        tags["oos.split_ts"] = str(window["split_ts"])
        tags["oos.timeframe"] = str(window["timeframe"])
        tags["oos.data_fingerprint"] = str(window["bars_fingerprint"])
    for k in ("sharpe", "deflated_sharpe"):
        v = (metrics or {}).get(k)
        if v is not None and math.isfinite(v):
            tags[f"oos.{k}"] = repr(float(v))
    for k, v in tags.items():
        client.set_model_version_tag(ref.name, str(ref.version), k, v)


def gate_record(ref: ModelRef, tags: Mapping[str, str] | None = None) -> GateRecord | None:
    """The version's gate record, None when it was never validated (e.g. registered by hand)."""
    t = _tags(ref) if tags is None else tags
    if GATE_TAG not in t:
        return None
    return GateRecord(t[GATE_TAG] == "pass", t.get(GATE_RUN_TAG, ""), t.get(GATED_AT_TAG, ""))


def validated_decision(cfg: WorkbenchConfig, strategy: str, ref: ModelRef) -> Any:
    """The decision thresholds a version was validated with (its ``workbench.risk`` tag, written
    by validation), as a :class:`~workbench.risk.DecisionPolicy`; None when it has none (the
    strategy's thresholds, or quantiles of its training predictions, then apply)."""
    from workbench.models.registry import RISK_TAG
    from workbench.risk import DecisionPolicy

    raw = _tags(ref).get(RISK_TAG)
    if not raw:
        return None
    d = json.loads(raw).get("decision") or {}
    if "long" not in d or "short" not in d:
        return None
    return DecisionPolicy(cfg.strategy(strategy).decision, float(d["long"]), float(d["short"]))


# ---------------------------------------------------------------------------------- age


def train_end(ref: ModelRef, tags: Mapping[str, str] | None = None) -> datetime | None:
    """The end of the version's training window (``workbench.train_end``, else ``split_ts``)."""
    t = _tags(ref) if tags is None else tags
    raw = t.get(TRAIN_END_TAG) or t.get("split_ts")
    return _utc(datetime.fromisoformat(raw)) if raw else None


def age_days(end: datetime | None, at: datetime) -> float | None:
    """Days from the training window's end to ``at`` (None when the end is unknown)."""
    if end is None:
        return None
    return (_utc(at) - _utc(end)).total_seconds() / 86400.0


# -------------------------------------------------------------------------------- drift


def flag_drift(
    ref: ModelRef,
    columns: Sequence[str],
    *,
    max_psi: float,
    run_id: str = "",
    at: datetime | None = None,
) -> None:
    """Flag the version as drifted (monitoring found ``columns`` past its alert threshold)."""
    value = {
        "at": _utc(at or datetime.now(UTC)).isoformat(),
        "columns": list(columns),
        "max_psi": float(max_psi),
        "run_id": run_id,
    }
    _client().set_model_version_tag(ref.name, str(ref.version), DRIFT_TAG, json.dumps(value))


def flag_drift_from_outputs(
    cfg: WorkbenchConfig,
    ref: ModelRef,
    outputs: Mapping[str, Any],
    *,
    run_id: str = "",
    at: datetime | None = None,
) -> list[str]:
    """Flag the version from a monitor run's outputs (``psi``: {column: value}) when any column
    is at or past ``monitoring.psi_alert``; return the flagged columns (empty: no flag set)."""
    psi = {k: float(v) for k, v in (outputs.get("psi") or {}).items() if v is not None}
    past = sorted(c for c, v in psi.items() if math.isfinite(v) and v >= cfg.monitoring.psi_alert)
    if past:
        flag_drift(ref, past, max_psi=max(psi[c] for c in past), run_id=run_id, at=at)
    return past


def clear_drift(ref: ModelRef) -> None:
    """Remove the version's drift flag (after a look that found the drift harmless)."""
    client = _client()
    if DRIFT_TAG in _tags(ref):
        client.delete_model_version_tag(ref.name, str(ref.version), DRIFT_TAG)


def drift_flag(ref: ModelRef, tags: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The version's drift flag, None when not flagged."""
    t = _tags(ref) if tags is None else tags
    return json.loads(t[DRIFT_TAG]) if t.get(DRIFT_TAG) else None


# --------------------------------------------------------------------------- tradeable


@dataclass(frozen=True)
class Tradeable:
    """What :func:`check_tradeable` found: the version's age and the problems, refused or not."""

    model: str
    train_end: datetime | None
    age_days: float | None
    gate: GateRecord | None
    drift: dict[str, Any] | None
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refusals

    def describe(self) -> str:
        """One line for the session's output and the notebook."""
        age = (
            f"trained to {self.train_end:%Y-%m-%d %H:%M} UTC, {self.age_days:.1f} days old"
            if self.train_end is not None and self.age_days is not None
            else "training window end unknown"
        )
        gate = (
            "no gate record"
            if self.gate is None
            else f"gates {'passed' if self.gate.passed else 'failed'} (run {self.gate.run_id})"
        )
        drift = "drift-flagged" if self.drift else "no drift flag"
        return f"model {self.model}: {age}; {gate}; {drift}"


def check_tradeable(
    cfg: WorkbenchConfig,
    ref: ModelRef,
    *,
    at: datetime,
    allow: Iterable[str] = (),
    echo: Callable[[str], None] | None = None,
) -> Tradeable:
    """Decide whether a session at ``at`` may trade ``ref``; raise when it may not.

    ``allow`` names what an explicit flag lets through: ``ungated`` (no passing gate record),
    ``expired`` (older than ``models.max_age_days``), ``drifted`` (flagged by monitoring).
    ``echo`` receives the version's description and every warning.

    Raises
    ------
    ModelNotTradeableError
        Naming the version, every reason and the flag that would allow it.
    """
    allowed = set(allow)
    bad = sorted(allowed - set(ALLOWANCES))
    if bad:
        raise ModelNotTradeableError(
            f"unknown allowance(s) {bad}; use some of {list(ALLOWANCES)} (--allow ungated ...)."
        )
    m = cfg.models
    tags = _tags(ref)
    label = f"{ref.name} v{ref.version}" + (f" ({ref.alias})" if ref.alias else "")
    end = train_end(ref, tags)
    age = age_days(end, at)
    gate = gate_record(ref, tags)
    drift = drift_flag(ref, tags)
    refusals: list[str] = []
    warnings: list[str] = []

    def judge(problem: str, allowance: str, policy: str) -> None:
        if allowance in allowed:
            warnings.append(f"{problem} (allowed by --allow {allowance})")
        elif policy == "warn":
            warnings.append(problem)
        else:
            refusals.append(f"{problem}; to trade it anyway pass --allow {allowance}")

    if gate is None or not gate.passed:
        what = "has no gate record" if gate is None else f"failed its gates (run {gate.run_id})"
        judge(
            f"{label} {what}: validate it (04_validate, `wb run research`) before trading it",
            "ungated",
            "refuse",
        )
    if m.max_age_days is not None:
        if age is None:
            judge(
                f"{label} has no training window end ('{TRAIN_END_TAG}' or 'split_ts' tag), so "
                f"its age against models.max_age_days {m.max_age_days:g} is unknown",
                "expired",
                m.on_expired,
            )
        elif age > m.max_age_days:
            judge(
                f"{label} is {age:.1f} days past its training window end ({end:%Y-%m-%d}), "
                f"older than models.max_age_days {m.max_age_days:g}: retrain it "
                "(`wb run weekly_retrain`) or raise the limit",
                "expired",
                m.on_expired,
            )
    if drift:
        judge(
            f"{label} is flagged as drifted by monitoring since {drift.get('at')} (columns "
            f"{drift.get('columns')}, PSI up to {float(drift.get('max_psi', math.nan)):.3f}): "
            "retrain it, or clear the flag (workbench.models.lifecycle.clear_drift)",
            "drifted",
            m.on_drift,
        )
    out = Tradeable(label, end, age, gate, drift, refusals, warnings)
    if echo is not None:
        echo(out.describe())
        for w in warnings:
            echo(f"warning: {w}")
    if refusals:
        raise ModelNotTradeableError(f"refusing to trade {label}:\n  " + "\n  ".join(refusals))
    return out


def model_age_status(cfg: WorkbenchConfig, model: str, at: datetime | None) -> dict[str, Any]:
    """The age of a traded model named ``"<name> v<version>"`` (as a session records it) at
    ``at`` (None: now), as plain data for ``wb session status`` and the session notebook; ``{}``
    when it cannot be looked up."""
    at = at or datetime.now(UTC)
    name, sep, version = model.rpartition(" v")
    if not sep or not name:
        return {}
    try:
        ref = ModelRef(name, version.split()[0], None, "", "")
        tags = _tags(ref)
    except Exception:  # no registry at hand, or the version was deleted
        return {}
    end = train_end(ref, tags)
    age = age_days(end, at)
    return {
        "model_train_end": end.isoformat() if end else None,
        "model_age_days": None if age is None else round(age, 2),
        "model_max_age_days": cfg.models.max_age_days,
        "model_expired": bool(
            age is not None
            and cfg.models.max_age_days is not None
            and age > cfg.models.max_age_days
        ),
        "model_gate": (gate_record(ref, tags) or GateRecord(False, "", "")).passed,
        "model_drift_flag": drift_flag(ref, tags) is not None,
    }
