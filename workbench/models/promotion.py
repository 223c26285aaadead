"""Promotion: move ``champion`` to the ``challenger`` only if it beats the champion out of sample.

Both models are judged on the challenger's out-of-sample window (recorded as model-version tags by
the validate step), with the same backtest, costs and configuration. Every decision, forced or not,
is recorded on the model versions (tags) and as an MLflow run in the ``promotions`` experiment.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from workbench.config import WorkbenchConfig
from workbench.errors import WorkbenchError
from workbench.models.registry import (
    CHALLENGER,
    CHAMPION,
    ModelNotFoundError,
    ModelRef,
    resolve_alias,
)

OOS_TAGS = ("oos.features_path", "oos.store_root", "oos.split_ts", "oos.timeframe")


class PromotionError(WorkbenchError):
    """The challenger cannot be compared or promoted."""


@dataclass(frozen=True)
class PromotionResult:
    """What ``promote`` decided and why."""

    promoted: bool
    reason: str
    challenger: str
    champion_before: str | None
    challenger_sharpe: float | None
    champion_sharpe: float | None
    forced: bool


def record_oos_window(
    name: str,
    version: str,
    *,
    features_path: str,
    store_root: str,
    split_ts: str,
    timeframe: str,
    sharpe: float,
) -> None:
    """Tag a validated model version with the out-of-sample window it was judged on."""
    import mlflow

    client = mlflow.MlflowClient()
    values = {
        "oos.features_path": features_path,
        "oos.store_root": store_root,
        "oos.split_ts": split_ts,
        "oos.timeframe": timeframe,
        "oos.sharpe": repr(float(sharpe)),
    }
    for k, v in values.items():
        client.set_model_version_tag(name, version, k, v)


def _oos(name: str, version: str) -> dict[str, str]:
    import mlflow

    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    missing = [t for t in OOS_TAGS if t not in tags]
    if missing:
        raise PromotionError(
            f"{name} v{version} has no recorded out-of-sample window ({missing}); validate it with "
            "the research pipeline (04_validate) first, or promote with --force and a reason."
        )
    return tags


def promote(
    cfg: WorkbenchConfig,
    strategy: str,
    *,
    evaluate: Callable[[ModelRef, Mapping[str, str]], float],
    force: bool = False,
    reason: str = "",
) -> PromotionResult:
    """Point ``champion`` at the challenger if it beats the champion on the challenger's window.

    Parameters
    ----------
    cfg : WorkbenchConfig
    strategy : str
        Strategy name (= registered model name).
    evaluate : callable
        ``(model version, out-of-sample window tags) -> Sharpe ratio``; the validate stage
        provides it (:func:`workbench.stages.validate.oos_sharpe`), so both versions are judged
        the way validation judges, risk policy included.
    force : bool
        Promote without the comparison; ``reason`` is then required and recorded.
    reason : str
        Why (recorded with the decision).
    """
    import math

    import mlflow

    from workbench import tracking

    cfg.strategy(strategy)
    if force and not reason.strip():
        raise PromotionError(
            "--force needs --reason: say why the comparison is skipped (it is recorded)."
        )
    tracking.setup(cfg)
    name = strategy
    try:
        chal = resolve_alias(name, (CHALLENGER,))
    except ModelNotFoundError as exc:
        raise PromotionError(f"nothing to promote: {exc}") from None
    try:
        champ: ModelRef | None = resolve_alias(name, (CHAMPION,))
    except ModelNotFoundError:
        champ = None
    chal_sr = champ_sr = None
    if champ is not None and champ.version == chal.version:
        decision, why = False, f"v{chal.version} is already the champion"
    elif force:
        decision, why = True, f"forced: {reason.strip()}"
    elif champ is None:
        decision, why = True, "no champion yet"
    else:
        window = _oos(name, chal.version)
        chal_sr = evaluate(ModelRef(name, chal.version, None, "", ""), window)
        champ_sr = evaluate(ModelRef(name, champ.version, None, "", ""), window)
        better = math.isfinite(chal_sr) and (not math.isfinite(champ_sr) or chal_sr > champ_sr)
        decision = better
        why = (
            f"challenger v{chal.version} Sharpe {chal_sr:.3f} {'>' if better else '<='} champion "
            f"v{champ.version} Sharpe {champ_sr:.3f} on the window from {window['oos.split_ts']}"
        )
    client = mlflow.MlflowClient()
    now = datetime.now(UTC).isoformat()
    record = {
        "at": now,
        "challenger": chal.version,
        "champion_before": champ.version if champ else None,
        "promoted": decision,
        "forced": force,
        "reason": why,
    }
    if decision:
        client.set_registered_model_alias(name, CHAMPION, chal.version)
        client.set_model_version_tag(name, chal.version, "promoted_at", now)
        client.set_model_version_tag(name, chal.version, "promotion_reason", why)
        client.set_model_version_tag(name, chal.version, "promotion_forced", str(force).lower())
    client.set_registered_model_tag(name, "last_promotion_decision", json.dumps(record))
    exp = mlflow.get_experiment_by_name("promotions") or None
    exp_id = (
        exp.experiment_id
        if exp
        else mlflow.create_experiment(
            "promotions",
            artifact_location=(
                cfg.path(cfg.mlflow.artifact_root).resolve() / "promotions"
            ).as_uri(),
        )
    )
    run = client.create_run(
        exp_id,
        run_name=f"promote {name}",
        tags={"strategy": name, "promoted": str(decision).lower(), "forced": str(force).lower()},
    )
    client.log_dict(run.info.run_id, record, "decision.json")
    for k, v in (("challenger_sharpe", chal_sr), ("champion_sharpe", champ_sr)):
        if v is not None and math.isfinite(v):
            client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id)
    return PromotionResult(
        decision, why, chal.version, champ.version if champ else None, chal_sr, champ_sr, force
    )
