"""Does the model beat its strategy's rule? The baseline comparison of the validate step.

The strategy's ``baseline:`` section names the rule its model must beat (momentum or mean
reversion on one past-return feature, :class:`~workbench.models.baselines.RuleBaseline`). The
rule is fitted on the training rows only (``ts < split``), then evaluated exactly as the model
is (:func:`~workbench.validation.evaluate.evaluate_model`: same out-of-sample window, costs,
decision policy and risk rules). The two daily return streams are compared by a one-sided
paired test with HAC standard errors (:func:`~workbench.validation.significance.paired_test`):
``baseline_p_value`` is the probability of a difference this large if the model were no better
than the rule, and the gate ``beats_baseline`` requires it at or below its level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import plotly.graph_objects as go
import polars as pl

from workbench.backtest import BacktestResult
from workbench.config import WorkbenchConfig
from workbench.models.baselines import RuleBaseline
from workbench.validation.evaluate import Evaluation, evaluate_model, feature_columns
from workbench.validation.significance import PairedTest, paired_test

__all__ = ["BaselineComparison", "compare_with_baseline", "daily_returns"]


def daily_returns(bt: BacktestResult, tz: str = "America/New_York") -> pl.DataFrame:
    """Compounded equity return per session day (``date, returns``) of a backtest."""
    eq = bt.equity.select("ts", "returns")
    if eq.is_empty():
        return pl.DataFrame(schema={"date": pl.Date, "returns": pl.Float64})
    return (
        eq.with_columns(date=pl.col("ts").dt.convert_time_zone(tz).dt.date())
        .group_by("date", maintain_order=True)
        .agg(((1.0 + pl.col("returns")).product() - 1.0).alias("returns"))
        .sort("date")
    )


@dataclass(frozen=True)
class BaselineComparison:
    """The rule's evaluation and the paired test of the model's daily returns against it."""

    rule: str
    fitted: dict[str, Any]
    baseline: Evaluation
    test: PairedTest
    days: pl.DataFrame  # date, model, baseline

    def metrics(self) -> dict[str, float]:
        """``baseline_*`` metrics for MLflow and the gates (``baseline_p_value`` is the gate's)."""
        out = {
            "baseline_p_value": float(self.test.p_value),
            "baseline_mean_daily_diff": float(self.test.mean_diff),
            "baseline_days": float(self.test.n),
        }
        for k in ("sharpe", "total_return", "n_trades"):
            v = self.baseline.metrics.get(k)
            if v is not None:
                out[f"baseline_{k}"] = float(v)
        return out

    def figure(self) -> go.Figure:
        """Cumulative daily return of the model and of its rule baseline, same window, costs on."""
        fig = go.Figure()
        for col in ("model", "baseline"):
            cum = (1.0 + self.days[col]).cum_prod() - 1.0
            fig.add_scatter(x=self.days["date"], y=cum, name=col, mode="lines")
        p = self.test.p_value
        fig.update_layout(
            title=(
                f"Model vs its {self.rule.replace('_', ' ')} baseline after costs "
                f"(paired HAC test: p = {p:.3g})"
            ),
            yaxis_tickformat=".1%",
            height=380,
        )
        return fig


def compare_with_baseline(
    cfg: WorkbenchConfig,
    model_backtest: BacktestResult,
    table: pl.DataFrame,
    bars: pl.DataFrame,
    *,
    split: datetime,
    strategy: str,
    timeframe: str,
    decision: Any = None,
) -> BaselineComparison | None:
    """Fit the strategy's baseline rule on ``table``'s training rows, evaluate it like the model
    and test the model's daily returns (``model_backtest``: the out-of-sample backtest the gates
    judge, walk-forward or single) against it; None when the strategy names no baseline."""
    spec = cfg.strategy(strategy).baseline
    if spec is None:
        return None
    # the labelled training rows (a label may not apply to a row: a rule that does not trade there)
    train = table.filter((pl.col("ts") < split) & pl.col("label").is_finite())
    cols = feature_columns(train)
    rule = RuleBaseline(spec.rule, feature=spec.feature).fit(train.select(cols), train["label"])
    ev = evaluate_model(
        cfg, rule, table, bars, split=split, strategy=strategy, timeframe=timeframe,
        decision=decision,
    )  # fmt: skip
    a = daily_returns(model_backtest).rename({"returns": "model"})
    b = daily_returns(ev.backtest).rename({"returns": "baseline"})
    days = a.join(b, on="date", how="full", coalesce=True).sort("date").fill_null(0.0)
    test = paired_test(days["model"].to_numpy(), days["baseline"].to_numpy())
    if not math.isfinite(test.p_value):  # pragma: no cover - paired_test always gives one
        test = PairedTest(test.n, test.mean_diff, test.t, 1.0, test.method)
    return BaselineComparison(spec.rule, rule.describe(), ev, test, days)
