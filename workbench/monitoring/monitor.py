"""The nightly monitor run (``notebooks/08_monitor``, pipeline ``nightly_monitor``).

:func:`run_monitor` compares what the model saw and did in the last sessions with what it was
trained and validated on, and alerts: drift of every feature and of the predictions against the
version's reference (:mod:`workbench.monitoring.drift`), staleness of the store against the
calendar, data quality of the window (:func:`workbench.data.quality.check_quality`), execution lag
from the order ledger, performance anomalies of the live sessions against a backtest of the same
model over its validation window, and the model's age. :func:`nightly_monitor` gathers the inputs
(registry, store, ledger) and calls it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.config import WorkbenchConfig
from workbench.data.calendar import sessions as calendar_sessions
from workbench.data.quality import QualityReport, check_quality
from workbench.monitoring import checks
from workbench.monitoring.alerts import Alert, Alerter
from workbench.monitoring.drift import DriftReport, drift
from workbench.monitoring.reference import PREDICTION
from workbench.monitoring.retrain import RetrainDecision, retrain_decision
from workbench.monitoring.session import drift_alerts

log = logging.getLogger("workbench.monitoring")


@dataclass
class MonitorReport:
    """Everything one monitor run measured, the alerts it raised and the retrain decision."""

    model: str
    as_of: datetime
    live: pl.DataFrame
    reference: pl.DataFrame | None
    drift: DriftReport | None
    staleness: pl.DataFrame
    quality: QualityReport | None
    lags: pl.DataFrame
    live_sessions: pl.DataFrame
    backtest_sessions: pl.DataFrame
    anomalies: pl.DataFrame
    age_days: float | None
    alerts: list[Alert] = field(default_factory=list)
    retrain: RetrainDecision = field(default_factory=lambda: RetrainDecision(False, "not decided"))

    def outputs(self) -> dict[str, Any]:
        """What the step hands on (JSON-able): PSI per column, alert counts, the retrain decision."""
        psi = {
            k: (None if not math.isfinite(v) else v)
            for k, v in (self.drift.psi() if self.drift else {}).items()
        }
        sev = [a.severity for a in self.alerts]
        return {
            "model": self.model,
            "psi": psi,
            "max_psi": max((v for v in psi.values() if v is not None), default=None),
            "drift_alerts": self.drift.alerts if self.drift else [],
            "alerts": len(sev),
            "critical_alerts": sev.count("critical"),
            "stale_symbols": self.staleness.filter(pl.col("bars_behind").fill_null(10**9) > 0)[
                "symbol"
            ].to_list(),
            "model_age_days": self.age_days,
            "retrain": self.retrain.retrain,
            "retrain_reason": self.retrain.reason,
        }

    def metrics(self) -> dict[str, float]:
        out = {
            f"psi.{k}": v
            for k, v in (self.drift.psi() if self.drift else {}).items()
            if math.isfinite(v)
        }
        out.update(
            {f"lag.{k}": v for k, v in checks.lag_summary(self.lags).items() if math.isfinite(v)}
        )
        out["alerts"] = float(len(self.alerts))
        out["live_rows"] = float(self.live.height)
        if self.age_days is not None:
            out["model_age_days"] = self.age_days
        return out


def nothing_to_monitor(reason: str) -> dict[str, Any]:
    """What the step hands on when there is no model to monitor (a new project: no champion or
    challenger yet): the keys of :meth:`MonitorReport.outputs`, empty, and no early retrain."""
    return {
        "model": "",
        "psi": {},
        "max_psi": None,
        "drift_alerts": [],
        "alerts": 0,
        "critical_alerts": 0,
        "stale_symbols": [],
        "model_age_days": None,
        "retrain": False,
        "retrain_reason": f"nothing to monitor: {reason}",
    }


def live_features(
    bars: pl.DataFrame, feature_set: Any, cfg: WorkbenchConfig, *, start: datetime,
    predict: Callable[[pl.DataFrame], np.ndarray] | None = None, columns: Sequence[str] | None = None,
) -> pl.DataFrame:  # fmt: skip
    """Feature rows of the bars at or after ``start`` (earlier bars only warm up), complete rows
    only, with the model's ``prediction`` when ``predict`` is given."""
    from workbench.features.sets import build_features

    feats = build_features(bars, feature_set, cfg).filter(pl.col("ts") >= start)
    cols = (
        list(columns)
        if columns is not None
        else [c for c in feats.columns if c not in ("symbol", "ts")]
    )
    feats = feats.drop_nulls(cols)
    if predict is not None and feats.height:
        feats = feats.with_columns(pl.Series(PREDICTION, np.asarray(predict(feats), dtype=float)))
    return feats


def run_monitor(
    cfg: WorkbenchConfig,
    *,
    model: str,
    live: pl.DataFrame,
    reference: pl.DataFrame | None,
    as_of: datetime,
    last_bars: dict[str, datetime | None] | None = None,
    timeframe: str = "5Min",
    quality: QualityReport | None = None,
    lags: pl.DataFrame | None = None,
    live_sessions: pl.DataFrame | None = None,
    backtest_sessions: pl.DataFrame | None = None,
    age_days: float | None = None,
    alerter: Alerter | None = None,
) -> MonitorReport:
    """Measure, alert (through ``alerter`` when given) and decide on an early retrain.

    Every input but ``live`` is optional; a missing one is a check not run.
    """
    m = cfg.monitoring
    rep = None
    if reference is not None and reference.height and live.height:
        rep = drift(
            reference,
            live,
            bins=m.psi_bins,
            warn=m.psi_warn,
            alert=m.psi_alert,
            min_rows=m.min_rows,
        )
    stale = checks.staleness(last_bars or {}, timeframe, as_of, cfg.data.calendar)
    lags = lags if lags is not None else pl.DataFrame(schema=checks.LAG_SCHEMA)
    live_s = live_sessions if live_sessions is not None else pl.DataFrame(schema=checks.PERF_SCHEMA)
    bt_s = (
        backtest_sessions
        if backtest_sessions is not None
        else pl.DataFrame(schema=checks.PERF_SCHEMA)
    )
    anom = checks.anomalies(live_s, bt_s, m.anomaly_window)
    alerts = drift_alerts(rep, model=model) if rep is not None else []
    alerts += checks.check_alerts(
        m, model=model, staleness_frame=stale, quality=quality, lags=lags, anomaly_frame=anom,
        age_days=age_days,
    )  # fmt: skip
    decision = retrain_decision(rep.psi() if rep else {}, age_days=age_days, cfg=m)
    if alerter is not None:
        alerter.send_all(alerts)
    return MonitorReport(model, as_of, live, reference, rep, stale, quality, lags, live_s, bt_s,
                         anom, age_days, alerts, decision)  # fmt: skip


def nightly_monitor(
    cfg: WorkbenchConfig,
    *,
    store_root: str,
    model_name: str,
    strategy: str,
    timeframe: str,
    symbols: list[str],
    sessions: int = 5,
    as_of: str = "",
    model_alias: str = "",
    ledger_url: str = "",
    backtest_sessions: int = 20,
    alerter: Alerter | None = None,
) -> MonitorReport:
    """Gather the inputs and :func:`run_monitor` the model of ``strategy``.

    The live window is the last ``sessions`` sessions in the store up to ``as_of`` (default: now;
    the last stored session when the store ends before). The backtest distribution of the
    anomaly check runs the model over up to ``backtest_sessions`` sessions from its validation
    split (model-version tag ``split_ts``) to the live window.
    """
    from workbench.data.store import BarStore
    from workbench.models.registry import CHALLENGER, CHAMPION, load_model, resolve_alias
    from workbench.monitoring.reference import load_reference

    now = datetime.fromisoformat(as_of).astimezone(UTC) if as_of else datetime.now(UTC)
    ref = resolve_alias(model_name, (model_alias,) if model_alias else (CHAMPION, CHALLENGER))
    label = f"{ref.name} v{ref.version}"
    lgbm = load_model(ref)
    feats = list(getattr(lgbm, "booster_", lgbm).feature_name())
    strat = cfg.strategy(strategy)

    def predict(rows: pl.DataFrame) -> np.ndarray:
        return np.asarray(lgbm.predict(rows.select(feats).to_pandas()), dtype=float)

    store = BarStore(store_root, cfg.store.partition)
    last_bars = checks.store_last_bars(store, symbols, timeframe)
    have = [t for t in last_bars.values() if t is not None]
    end_day = min(now, max(have)).astimezone(checks.NY).date() if have else now.date()
    days = checks.sessions_window(end_day, sessions, cfg.data.calendar)
    sch = calendar_sessions(days[0], days[-1], cfg.data.calendar)
    live_start: datetime = sch["open"].min()
    live_end: datetime = sch["close"].max()
    warm = calendar_sessions(days[0] - timedelta(days=30), days[0], cfg.data.calendar)["open"].min()
    bars = store.read(symbols, timeframe, start=warm, end=live_end, strict=False)
    live = live_features(
        bars, strat.feature_set, cfg, start=live_start, predict=predict, columns=feats
    )
    quality = check_quality(
        bars.filter(pl.col("ts") >= live_start), timeframe, symbols=symbols, start=days[0], end=days[-1],
        now=now, calendar=cfg.data.calendar,
    )  # fmt: skip
    lags, live_perf = _ledger_checks(cfg, ledger_url, strategy, days, bars, timeframe)
    bt = _backtest_sessions(cfg, store, ref, strategy, timeframe, symbols, strat.feature_set, feats,
                            predict, live_start, backtest_sessions)  # fmt: skip
    age = _age_days(ref, now)
    rep = run_monitor(
        cfg, model=label, live=live, reference=load_reference(ref), as_of=now, last_bars=last_bars,
        timeframe=timeframe, quality=quality, lags=lags, live_sessions=live_perf,
        backtest_sessions=bt, age_days=age, alerter=alerter,
    )  # fmt: skip
    # drift past the alert threshold flags the version: a session then refuses (or warns about,
    # per models.on_drift) trading it until the flag is cleared or a retrained version replaces it
    from workbench.models.lifecycle import flag_drift_from_outputs

    flag_drift_from_outputs(cfg, ref, rep.outputs(), at=now)
    return rep


def _ledger_checks(
    cfg: WorkbenchConfig, ledger_url: str, strategy: str, days: list[date], bars: pl.DataFrame,
    timeframe: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:  # fmt: skip
    from workbench.execution.ledger import OrderLedger

    url = ledger_url or cfg.execution.ledger_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = f"sqlite:///{cfg.path(url[len('sqlite:///') :])}"
        if not cfg.path(url[len("sqlite:///") :]).exists():
            return pl.DataFrame(schema=checks.LAG_SCHEMA), pl.DataFrame(schema=checks.PERF_SCHEMA)
    ledger = OrderLedger(url)
    try:
        recs = [s for s in ledger.sessions(strategy) if s.session_date in set(days)]
        lags = checks.ledger_lags(ledger, recs, timeframe)
        perf = [checks.sessions_performance(checks.ledger_equity(ledger, s, bars)) for s in recs]
    finally:
        ledger.close()
    live = pl.concat(perf).sort("session") if perf else pl.DataFrame(schema=checks.PERF_SCHEMA)
    return lags, live


def _backtest_sessions(
    cfg: WorkbenchConfig, store: Any, ref: Any, strategy: str, timeframe: str, symbols: list[str],
    feature_set: str, feats: list[str], predict: Callable, live_start: datetime, n: int,
) -> pl.DataFrame:  # fmt: skip
    from workbench.backtest import run_backtest
    from workbench.models.registry import RISK_TAG, version_tag
    from workbench.risk import DecisionPolicy, RiskPolicy

    if n <= 0:
        return pl.DataFrame(schema=checks.PERF_SCHEMA)
    split = version_tag(ref, "split_ts")
    first = live_start.date() - timedelta(days=2 * n + 10)
    days = calendar_sessions(first, live_start.date() - timedelta(days=1), cfg.data.calendar)
    if split:
        days = days.filter(pl.col("open") >= datetime.fromisoformat(split))
    days = days.tail(n)
    if days.is_empty():
        return pl.DataFrame(schema=checks.PERF_SCHEMA)
    start: datetime = days["open"].min()
    warm = start - timedelta(days=30)
    bars = store.read(symbols, timeframe, start=warm, end=live_start, strict=False)
    rows = live_features(bars, feature_set, cfg, start=start, predict=predict, columns=feats)
    strat = cfg.strategy(strategy)
    decision = None
    if strat.decision.method == "quantile":
        raw = version_tag(ref, RISK_TAG)
        if not raw:
            return pl.DataFrame(schema=checks.PERF_SCHEMA)
        d = json.loads(raw)["decision"]
        decision = DecisionPolicy(strat.decision, float(d["long"]), float(d["short"]))
    policy = RiskPolicy.from_config(cfg, strategy, timeframe=timeframe, decision=decision)
    window = bars.filter(pl.col("ts") >= start)
    if window.is_empty() or rows.is_empty():
        return pl.DataFrame(schema=checks.PERF_SCHEMA)
    bt = run_backtest(
        window, rows.select("symbol", "ts", PREDICTION), config=cfg.backtest, risk=policy
    )
    return checks.sessions_performance(bt.equity.select("ts", "equity"))


def _age_days(ref: Any, now: datetime) -> float | None:
    """Days since the end of the version's training window (what a session's expiry reads),
    else since the version was registered."""
    import mlflow

    from workbench.models.lifecycle import age_days, train_end

    end = train_end(ref)
    if end is not None:
        return age_days(end, now)
    mv = mlflow.MlflowClient().get_model_version(ref.name, str(ref.version))
    return checks.model_age_days(mv.creation_timestamp, now) if mv.creation_timestamp else None


# ------------------------------------------------------------------------------------ figures


def psi_figure(report: DriftReport) -> go.Figure:
    """PSI per column with the warning and alert lines."""
    f = report.frame.filter(pl.col("psi").is_finite())
    colors = {"ok": "#4c78a8", "warn": "#f58518", "alert": "#e45756"}
    fig = go.Figure(go.Bar(x=f["column"].to_list(), y=f["psi"].to_list(),
                           marker_color=[colors[x] for x in f["level"]]))  # fmt: skip
    for y, name in ((report.warn, "warn"), (report.alert, "alert")):
        fig.add_hline(y=y, line_dash="dash", annotation_text=f"{name} {y}")
    fig.update_layout(
        title="PSI per column against the model's reference", yaxis_title="PSI", height=380
    )
    return fig


def histograms_figure(
    report: DriftReport, reference: pl.DataFrame, live: pl.DataFrame
) -> go.Figure:
    """Reference vs live shares in the PSI bins of every column (one panel each)."""
    cols = report.frame.filter(pl.col("psi").is_finite())["column"].to_list()
    n = max(len(cols), 1)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=[
        f"{c} (PSI {report.psi()[c]:.3f})" for c in cols])  # fmt: skip
    for i, c in enumerate(cols):
        b = report.bins.filter(pl.col("column") == c)
        labels = [f"{k}" for k in b["bin"].to_list()]
        r, col = i // ncol + 1, i % ncol + 1
        fig.add_trace(go.Bar(x=labels, y=b["reference"].to_list(), name="reference",
                             marker_color="#4c78a8", showlegend=i == 0), row=r, col=col)  # fmt: skip
        fig.add_trace(go.Bar(x=labels, y=b["current"].to_list(), name="live",
                             marker_color="#f58518", showlegend=i == 0), row=r, col=col)  # fmt: skip
    fig.update_layout(title="Reference vs live, share per reference-decile bin", barmode="group",
                      height=260 * nrow)  # fmt: skip
    return fig


def lag_figure(lags: pl.DataFrame) -> go.Figure:
    """Histograms of decision -> submit, submit -> fill and decision -> fill (seconds)."""
    fig = go.Figure()
    for c in ("decision_to_submit", "submit_to_fill", "decision_to_fill"):
        fig.add_trace(go.Histogram(x=lags[c].drop_nulls().to_list(), name=c, opacity=0.6))
    fig.update_layout(title="Execution lag (s)", barmode="overlay", height=340)
    return fig


def performance_figure(live: pl.DataFrame, backtest: pl.DataFrame) -> go.Figure:
    """Per-session return and hit rate: live sessions over the backtest's."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["session return", "hit rate"])
    for k, metric in enumerate(("ret", "hit_rate"), start=1):
        fig.add_trace(go.Box(y=backtest[metric].drop_nulls().to_list(), name="backtest",
                             boxpoints="all", showlegend=k == 1, marker_color="#4c78a8"), row=1, col=k)  # fmt: skip
        fig.add_trace(go.Scatter(x=["live"] * live.height, y=live[metric].to_list(), mode="markers",
                                 name="live", showlegend=k == 1, marker_color="#e45756"), row=1, col=k)  # fmt: skip
    fig.update_layout(title="Live sessions against the backtest's", height=360)
    return fig
