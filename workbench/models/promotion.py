"""Promotion: move ``champion`` to the ``challenger`` only on evidence, and roll it back.

The evidence is rebuilt from what MLflow holds: the challenger's gate record names the
validation run whose ``evaluation/window.json`` says which bars it was judged on (symbols,
timeframe, sessions, split, the store relative to the project, fingerprints); the feature table is
rebuilt from the bar store (:func:`workbench.validation.evaluate.reproduce_window`), so neither the
run folder nor the feature cache is needed, and a store that no longer holds the window is
refused by name. Both versions are backtested on that window by
:func:`~workbench.validation.evaluate.evaluate_model` (same bars, costs, risk policy), and judged by

* a paired test of their per-bar returns (Newey-West t-test of the mean difference, one-sided:
  the challenger must be better at level ``models.promotion.alpha``),
* the challenger's deflated Sharpe ratio on the window (corrected for its search's trials),
  at least ``models.promotion.min_deflated_sharpe`` (default: the strategy's gate, else 0.95),
* shadow sessions when recorded (paired session returns, champion and challenger on the same bars):
  at least ``models.promotion.min_shadow_sessions`` of them, and the challenger not behind on
  average (their paired t-test is recorded).

Every decision, forced or not, and every rollback (:func:`demote`) is recorded: model-version
tags, the registered model's ``last_promotion_decision`` and champion lineage
(``workbench.champions``), and an MLflow run in the ``promotions`` experiment (decision JSON,
metrics, the two equity curves as a figure).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from workbench.config import WorkbenchConfig
from workbench.errors import WorkbenchError
from workbench.models.lifecycle import gate_record, validated_decision
from workbench.models.registry import (
    CHALLENGER,
    CHAMPION,
    ModelNotFoundError,
    ModelRef,
    load_model,
    resolve_alias,
)
from workbench.validation.significance import PairedTest, paired_test, session_test

LINEAGE_TAG = "workbench.champions"
"""Registered-model tag: the versions ``champion`` pointed at through promotions (JSON list, last
is the current one when nobody moved the alias by hand); :func:`demote` pops it."""
LAST_DECISION_TAG = "last_promotion_decision"
_KEEP = 50


class PromotionError(WorkbenchError):
    """The challenger cannot be compared or promoted, or the champion cannot be rolled back."""


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
    window_test: PairedTest | None = None
    shadow_test: PairedTest | None = None
    deflated_sharpe: float | None = None
    run_id: str = ""


@dataclass(frozen=True)
class DemotionResult:
    """What ``demote`` did: the version that was champion, the one that is now, and why."""

    demoted: str
    champion: str
    reason: str
    run_id: str = ""


@dataclass
class _Comparison:
    window_test: PairedTest
    chal_sharpe: float
    champ_sharpe: float
    dsr: float
    curves: pl.DataFrame
    span: str
    metrics: dict[str, float] = field(default_factory=dict)


Evaluator = Callable[[ModelRef, Any, pl.DataFrame, pl.DataFrame], Any]


def _evaluator(cfg: WorkbenchConfig) -> Evaluator:
    from workbench.validation.evaluate import evaluate_model

    def run(ref: ModelRef, window: Any, table: pl.DataFrame, bars: pl.DataFrame) -> Any:
        return evaluate_model(
            cfg, load_model(ref), table, bars, split=window.split, strategy=window.strategy,
            timeframe=window.timeframe, trial_sharpes=window.trial_sharpes,
            n_trials=window.n_trials, trial_correlation=window.trial_correlation,
            decision=validated_decision(cfg, window.strategy, ref),  # as it was validated
        )  # fmt: skip

    return run


def compare_on_window(
    cfg: WorkbenchConfig,
    challenger: ModelRef,
    champion: ModelRef,
    *,
    evaluate: Evaluator | None = None,
) -> _Comparison:
    """Rebuild the challenger's validation window from the store and evaluate both versions on
    it; raise :class:`PromotionError` naming what is missing when it cannot be rebuilt."""
    from workbench.validation.evaluate import (
        FeatureMismatchError,
        WindowUnavailableError,
        reproduce_window,
    )

    label = f"{challenger.name} v{challenger.version}"
    gate = gate_record(challenger)
    if gate is None or not gate.passed:
        raise PromotionError(
            f"{label} has no passing gate record, so there is no validated window to judge it "
            "on. Fix: validate it (`wb run research`), or promote with --force and a reason."
        )
    try:
        window = gate.window()
        table, bars = reproduce_window(cfg, window)
    except WindowUnavailableError as exc:
        raise PromotionError(
            f"cannot re-evaluate {label} on its validation window: {exc} "
            "(or promote with --force and a reason)"
        ) from None
    run = evaluate or _evaluator(cfg)
    a = run(challenger, window, table, bars)
    try:
        b = run(champion, window, table, bars)
    except FeatureMismatchError as exc:
        raise PromotionError(
            f"champion {champion.name} v{champion.version} reads a feature the challenger's "
            f"window does not have ({exc}): the two were built on different "
            "feature sets and cannot be compared on the same rows. Fix: promote with --force and "
            "a reason, or retrain the challenger on the champion's features."
        ) from None
    ra = a.backtest.equity.select("ts", pl.col("returns").fill_nan(0).fill_null(0).alias("a"))
    rb = b.backtest.equity.select("ts", pl.col("returns").fill_nan(0).fill_null(0).alias("b"))
    both = ra.join(rb, on="ts", how="inner").sort("ts")
    test = paired_test(both["a"].to_numpy(), both["b"].to_numpy(),
                       lags=cfg.models.promotion.hac_lags)  # fmt: skip
    curves = both.select(
        "ts",
        ((1 + pl.col("a")).cum_prod() - 1).alias("challenger"),
        ((1 + pl.col("b")).cum_prod() - 1).alias("champion"),
    )
    span = f"{window.split_ts} to {window.end} ({test.n} bars)"
    return _Comparison(
        test, float(a.metrics.get("sharpe", math.nan)), float(b.metrics.get("sharpe", math.nan)),
        float(a.metrics.get("deflated_sharpe", math.nan)), curves, span,
    )  # fmt: skip


def min_deflated_sharpe(cfg: WorkbenchConfig, strategy: str) -> float:
    """The challenger's required deflated Sharpe ratio (config, else the strategy's gate, else
    0.95)."""
    p = cfg.models.promotion.min_deflated_sharpe
    if p is not None:
        return float(p)
    g = cfg.strategy(strategy).gates.min_deflated_sharpe
    return 0.95 if g is None else float(g)


def _judge(
    cfg: WorkbenchConfig,
    strategy: str,
    chal: ModelRef,
    champ: ModelRef,
    cmp: _Comparison,
    shadow: Sequence[tuple[float, float]] | None,
) -> tuple[bool, str, PairedTest | None]:
    pc = cfg.models.promotion
    t = cmp.window_test
    need = min_deflated_sharpe(cfg, strategy)
    better = t.mean_diff > 0 and t.p_value <= pc.alpha
    dsr_ok = math.isfinite(cmp.dsr) and cmp.dsr >= need
    parts = [
        f"challenger v{chal.version} vs champion v{champ.version} on {cmp.span}: mean paired "
        f"difference {t.mean_diff:+.3g}/bar, {t.method} t {t.t:.2f}, one-sided p {t.p_value:.3g} "
        f"{'<=' if better else 'not <='} alpha {pc.alpha:g} (Sharpe {cmp.chal_sharpe:.3f} vs "
        f"{cmp.champ_sharpe:.3f})",
        f"challenger deflated Sharpe {cmp.dsr:.3f} {'>=' if dsr_ok else '<'} {need:g}",
    ]
    sh = session_test(shadow) if shadow else None
    shadow_ok = True
    if pc.min_shadow_sessions and (sh is None or sh.n < pc.min_shadow_sessions):
        shadow_ok = False
        parts.append(
            f"{0 if sh is None else sh.n} shadow session(s) < models.promotion.min_shadow_sessions "
            f"{pc.min_shadow_sessions}"
        )
    elif sh is not None:
        shadow_ok = sh.mean_diff >= 0
        parts.append(
            f"{sh.n} shadow session(s): mean difference {sh.mean_diff:+.3g} "
            f"({'not behind' if shadow_ok else 'behind'}; paired t p {sh.p_value:.3g})"
        )
    return better and dsr_ok and shadow_ok, "; ".join(parts), sh


def shadow_pairs(name: str, champion: str, challenger: str) -> list[tuple[float, float]]:
    """``(champion, challenger)`` session returns of the shadow sessions recorded for these two
    versions (:func:`workbench.execution.shadow.shadow_sessions`), paired by session date."""
    from workbench.execution.shadow import shadow_sessions

    s = shadow_sessions(name)

    def side(version: str, role: str) -> dict[str, float]:
        f = s.filter((pl.col("version") == version) & (pl.col("role") == role))
        return dict(zip(f["session_date"], f["session_return"], strict=True))

    a, b = side(champion, "champion"), side(challenger, "challenger")
    pairs = [(float(a[d]), float(b[d])) for d in sorted(set(a) & set(b))]
    return [p for p in pairs if math.isfinite(p[0]) and math.isfinite(p[1])]


def _lineage(client: Any, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(LINEAGE_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


def _record(
    cfg: WorkbenchConfig,
    name: str,
    record: dict[str, Any],
    metrics: dict[str, float | None],
    *,
    lineage: list[str] | None,
    curves: pl.DataFrame | None = None,
) -> str:
    """The registered model's last decision and lineage tags, and a ``promotions`` run."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_registered_model_tag(name, LAST_DECISION_TAG, json.dumps(record, default=str))
    if lineage is not None:
        client.set_registered_model_tag(name, LINEAGE_TAG, json.dumps(lineage[-_KEEP:]))
    exp = mlflow.get_experiment_by_name("promotions")
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
    tags = {
        "strategy": name,
        "action": str(record["action"]),
        "model_name": name,
        "promoted": str(record.get("promoted", False)).lower(),
        "forced": str(record.get("forced", False)).lower(),
    }
    for k in ("challenger", "champion_before", "champion_after"):
        if record.get(k):
            tags[k] = str(record[k])
    run = client.create_run(exp_id, run_name=f"{record['action']} {name}", tags=tags)
    rid = run.info.run_id
    client.log_dict(rid, record, "decision.json")
    for k, v in metrics.items():
        if v is not None and math.isfinite(v):
            client.log_metric(rid, k, float(v))
    if curves is not None and curves.height:
        import plotly.graph_objects as go

        fig = go.Figure()
        x = curves["ts"].to_list()
        for col in ("challenger", "champion"):
            fig.add_trace(go.Scatter(x=x, y=curves[col].to_list(), name=col))
        fig.update_layout(title=f"{name}: cumulative return on the challenger's window",
                          yaxis_title="cumulative return", height=420)  # fmt: skip
        client.log_figure(rid, fig, "figures/promotion_window.html")
    client.set_terminated(rid)
    return rid


def promote(
    cfg: WorkbenchConfig,
    strategy: str,
    *,
    force: bool = False,
    reason: str = "",
    shadow: Sequence[tuple[float, float]] | None = None,
    evaluate: Evaluator | None = None,
    now: datetime | None = None,
) -> PromotionResult:
    """Point ``champion`` at the challenger if the evidence says it is better (module doc).

    Parameters
    ----------
    cfg : WorkbenchConfig
    strategy : str
        Strategy name (= registered model name).
    force : bool
        Promote without the comparison; ``reason`` is then required and recorded.
    reason : str
        Why (recorded with the decision).
    shadow : sequence of (champion, challenger) session returns, optional
        Shadow sessions of the challenger beside the champion on the same bars (default: the
        ones recorded in MLflow for these two versions, :func:`shadow_pairs`).
    evaluate : callable, optional
        ``(version, window, table, bars) -> Evaluation``; default
        :func:`~workbench.validation.evaluate.evaluate_model` of the version's model.
    now : datetime, optional
        Time recorded with the decision (default: now, UTC).
    """
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
    cmp: _Comparison | None = None
    sh: PairedTest | None = None
    if champ is not None and champ.version == chal.version:
        decision, why = False, f"v{chal.version} is already the champion"
    elif force:
        decision, why = True, f"forced: {reason.strip()}"
    elif champ is None:
        gate = gate_record(chal)
        decision = gate is not None and gate.passed
        why = "no champion yet" if decision else (
            f"no champion yet, but v{chal.version} has no passing gate record: validate it "
            "first, or promote with --force and a reason"
        )  # fmt: skip
    else:
        cmp = compare_on_window(cfg, chal, champ, evaluate=evaluate)
        if shadow is None:
            shadow = shadow_pairs(name, champ.version, chal.version)
        decision, why, sh = _judge(cfg, strategy, chal, champ, cmp, shadow)
    client = mlflow.MlflowClient()
    at = (now or datetime.now(UTC)).isoformat()
    record = {
        "action": "promote",
        "at": at,
        "challenger": chal.version,
        "champion_before": champ.version if champ else None,
        "promoted": decision,
        "forced": force,
        "reason": why,
        "window_test": cmp.window_test.to_dict() if cmp else None,
        "shadow_test": sh.to_dict() if sh else None,
        "deflated_sharpe": cmp.dsr if cmp else None,
    }
    lineage = None
    if decision:
        lineage = _lineage(client, name)
        if champ is not None and (not lineage or lineage[-1] != champ.version):
            lineage.append(champ.version)  # a champion set by hand (MLflow UI) is kept too
        lineage.append(chal.version)
        client.set_registered_model_alias(name, CHAMPION, chal.version)
        client.set_model_version_tag(name, chal.version, "promoted_at", at)
        client.set_model_version_tag(name, chal.version, "promotion_reason", why[:4900])
        client.set_model_version_tag(name, chal.version, "promotion_forced", str(force).lower())
    metrics = {
        "challenger_sharpe": cmp.chal_sharpe if cmp else None,
        "champion_sharpe": cmp.champ_sharpe if cmp else None,
        "challenger_deflated_sharpe": cmp.dsr if cmp else None,
        "paired_t": cmp.window_test.t if cmp else None,
        "paired_p": cmp.window_test.p_value if cmp else None,
        "paired_mean_diff": cmp.window_test.mean_diff if cmp else None,
        "shadow_sessions": float(sh.n) if sh else None,
        "shadow_p": sh.p_value if sh else None,
    }
    rid = _record(cfg, name, record, metrics, lineage=lineage,
                  curves=cmp.curves if cmp else None)  # fmt: skip
    return PromotionResult(
        decision, why, chal.version, champ.version if champ else None,
        cmp.chal_sharpe if cmp else None, cmp.champ_sharpe if cmp else None, force,
        cmp.window_test if cmp else None, sh, cmp.dsr if cmp else None, rid,
    )  # fmt: skip


def demote(
    cfg: WorkbenchConfig,
    strategy: str,
    *,
    reason: str,
    to_version: str | None = None,
    now: datetime | None = None,
) -> DemotionResult:
    """Roll ``champion`` back to the previous champion (or to ``to_version``), with a reason.

    The previous champion is the last one in the registered model's lineage before the current
    one; a champion moved by hand in the MLflow UI rolls back to the last one promoted. The
    demoted version is tagged ``demoted_at`` / ``demotion_reason``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from workbench import tracking

    cfg.strategy(strategy)
    if not reason.strip():
        raise PromotionError(
            "demote needs --reason: say why the champion is rolled back (recorded)."
        )
    tracking.setup(cfg)
    name = strategy
    client = mlflow.MlflowClient()
    try:
        current = resolve_alias(name, (CHAMPION,)).version
    except ModelNotFoundError:
        raise PromotionError(
            f"{name!r} has no '{CHAMPION}' to demote. Fix: promote one first (`wb promote {name}`)."
        ) from None
    lineage = _lineage(client, name)
    if to_version is not None:
        target = str(to_version)
        try:
            client.get_model_version(name, target)
        except MlflowException:
            raise PromotionError(
                f"{name!r} has no version {target!r} to roll back to; pick an existing version."
            ) from None
        if target == current:
            raise PromotionError(f"v{target} is already the champion; pick another version.")
        lineage = lineage[: lineage.index(target) + 1] if target in lineage else [*lineage, target]
    else:
        if lineage and lineage[-1] == current:
            lineage.pop()
        while lineage and lineage[-1] == current:
            lineage.pop()
        if not lineage:
            raise PromotionError(
                f"no previous champion of {name!r} is recorded before v{current}. Fix: name the "
                "version to roll back to (`wb demote --to VERSION`), or remove the alias in the "
                "MLflow UI."
            )
        target = lineage[-1]
    at = (now or datetime.now(UTC)).isoformat()
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, current, "demoted_at", at)
    client.set_model_version_tag(name, current, "demotion_reason", reason.strip()[:4900])
    record = {
        "action": "demote",
        "at": at,
        "champion_before": current,
        "champion_after": target,
        "reason": reason.strip(),
    }
    rid = _record(cfg, name, record, {}, lineage=lineage)
    return DemotionResult(current, target, reason.strip(), rid)
