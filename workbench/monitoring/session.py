"""The trading session's observer: Prometheus series per bar and event, drift against the model's
reference, and alerts (drift, kill-switch trip).

Pass a :class:`SessionMonitor` as ``SessionEngine(observer=...)``; the engine calls it once per
bar (after the bar's work and timing) and on orders sent, orders refused, fills and the finish.
Nothing here runs on the decision path or can stop the session.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from workbench.config import MonitoringConfig
from workbench.data.calendar import last_expected_bar
from workbench.data.timeframe import Timeframe
from workbench.monitoring.alerts import Alert, Alerter
from workbench.monitoring.drift import DriftReport, drift
from workbench.monitoring.metrics import KILL_SWITCH, STREAM_STATES, Metrics
from workbench.monitoring.reference import PREDICTION
from workbench.risk import _kernel as K

log = logging.getLogger("workbench.monitoring")


def _reason(why: str) -> str:
    """A short label for a refusal sentence (bounded label values)."""
    head = re.split(r"[:;,.(]", why.strip(), maxsplit=1)[0].lower()
    return re.sub(r"[^a-z0-9]+", "_", head).strip("_")[:40] or "unknown"


def drift_alerts(report: DriftReport, *, model: str, where: str = "") -> list[Alert]:
    """One alert per column at the warning or alert level (critical past ``psi_alert``)."""
    out = []
    for row in report.frame.iter_rows(named=True):
        if row["level"] == "ok":
            continue
        sev = "critical" if row["level"] == "alert" else "warning"
        limit = report.alert if sev == "critical" else report.warn
        out.append(
            Alert(
                sev, "drift",
                f"{row['column']} of {model} drifted{where}: PSI {row['psi']:.3f} >= {limit}",
                values={
                    "column": row["column"], "psi": row["psi"], "ks_statistic": row["ks_statistic"],
                    "ks_pvalue": row["ks_pvalue"], "n_live": row["n_live"], "model": model,
                },
                key=f"{model}:{row['column']}",
            )
        )  # fmt: skip
    return out


class SessionMonitor:
    """Metrics, drift and alerts of one session (a :class:`~workbench.execution.engine.SessionObserver`).

    Parameters
    ----------
    metrics : Metrics, optional
        Where the series go (None: no metrics, drift and alerts only).
    strategy, timeframe, calendar : str
        Labels, and the calendar-expected bar for staleness.
    model : str
        ``name vN``: the PSI gauges' label and the alerts' subject.
    reference : pl.DataFrame, optional
        The model's reference distributions (None: no drift).
    monitoring : MonitoringConfig
        Bins, thresholds, ``min_rows`` and ``session_drift_bars``.
    alerter : Alerter, optional
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        strategy: str,
        timeframe: str = "5Min",
        calendar: str = "XNYS",
        model: str = "",
        reference: pl.DataFrame | None = None,
        monitoring: MonitoringConfig | None = None,
        alerter: Alerter | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.m = metrics
        self.strategy, self.model = strategy, model
        self.timeframe = Timeframe.parse(timeframe)
        self.calendar = calendar
        self.reference = reference
        self.cfg = monitoring or MonitoringConfig()
        self.alerter = alerter
        self._now = now
        self._engine: Any = None
        self._last_bar: datetime | None = None
        self._peak: float | None = None
        self._equity0: float | None = None
        self._close: dict[str, float] = {}
        self._n_den = 0
        self._sent: dict[str, datetime] = {}
        self._live: list[pl.DataFrame] = []
        self._n_live_bars = 0
        self._halted = False
        self.report: DriftReport | None = None
        if self.m is not None:
            self.m.staleness.labels(strategy).set_function(self.staleness_seconds)

    # ------------------------------------------------------------------ engine hooks

    def on_bar(
        self, engine: Any, t: datetime, bars: pl.DataFrame, features: pl.DataFrame,
        predictions: dict, orders: dict, timing: Any,
    ) -> None:  # fmt: skip
        self._engine = engine
        self._last_bar = t
        risk = engine.risk
        if self.m is not None:
            self._bar_metrics(engine, t, bars, risk, timing)
        if risk is not None and risk.halted and not self._halted:
            self._halted = True
            self._alert(self._trip_alert(risk))
        if self.reference is not None and features.height and predictions:
            cols = [c for c in self._columns() if c in features.columns]
            rows = features.select("symbol", *cols).with_columns(
                pl.col("symbol").replace_strict(predictions, default=None, return_dtype=pl.Float64)
                .alias(PREDICTION)
            )  # fmt: skip
            self._live.append(rows)
            self._n_live_bars += 1
            every = self.cfg.session_drift_bars
            if every and self._n_live_bars % every == 0:
                self.measure_drift(alert=True)

    def on_submit(self, engine: Any, request: Any) -> None:
        self._sent[request.client_order_id] = engine.clock.now()
        if self.m is not None:
            self.m.orders.labels(self.strategy, request.side.value).inc()

    def on_refused(self, engine: Any, client_order_id: str, why: str) -> None:
        if self.m is not None:
            self.m.rejections.labels(self.strategy, "broker", _reason(why)).inc()

    def on_fills(self, engine: Any, fills: list) -> None:
        if self.m is None:
            return
        for f in fills:
            self.m.fills.labels(self.strategy, "buy" if f.qty > 0 else "sell").inc()
            sent = self._sent.get(f.client_order_id)
            if sent is not None:
                lag = (f.ts - sent).total_seconds()
                self.m.fill_latency.labels(self.strategy).observe(max(0.0, lag))

    def on_finish(self, engine: Any, result: Any) -> None:
        if self.reference is not None:
            self.measure_drift(alert=True)

    # ------------------------------------------------------------------ parts

    def _columns(self) -> list[str]:
        assert self.reference is not None
        return [c for c in self.reference["column"].unique(maintain_order=True) if c != PREDICTION]

    def live_window(self) -> pl.DataFrame:
        """The feature rows and predictions the session saw so far (wide)."""
        return pl.concat(self._live, how="vertical_relaxed") if self._live else pl.DataFrame()

    def measure_drift(self, *, alert: bool = False) -> DriftReport | None:
        """PSI/KS of the session's rows so far against the reference; sets the PSI gauges and,
        with ``alert``, sends drift alerts (deduplicated by the alerter)."""
        live = self.live_window()
        if self.reference is None or live.height < self.cfg.min_rows:
            return None
        c = self.cfg
        self.report = rep = drift(
            self.reference, live, bins=c.psi_bins, warn=c.psi_warn, alert=c.psi_alert,
            min_rows=c.min_rows,
        )  # fmt: skip
        if self.m is not None:
            for col, v in rep.psi().items():
                if np.isfinite(v):
                    self.m.psi.labels(self.model, col).set(v)
        if alert:
            for a in drift_alerts(rep, model=self.model, where=f" in session {self.strategy}"):
                self._alert(a)
        return rep

    def staleness_seconds(self) -> float:
        """Seconds the last bar is behind the calendar's last complete bar now (0: current)."""
        if self._last_bar is None:
            return 0.0
        now = self._now() if self._now else (self._engine.clock.now() if self._engine else None)
        if now is None:
            return 0.0
        expected = last_expected_bar(self.timeframe, now, self.calendar)
        if expected is None or expected <= self._last_bar:
            return 0.0
        return (expected - self._last_bar).total_seconds()

    def _bar_metrics(
        self, engine: Any, t: datetime, bars: pl.DataFrame, risk: Any, timing: Any
    ) -> None:
        m, s = self.m, self.strategy
        assert m is not None
        m.last_bar.labels(s).set(t.timestamp())
        if timing is not None:
            m.bars.labels(s).inc()
            m.decision_latency.labels(s).observe(timing.decision_latency)
            m.submit_latency.labels(s).observe(timing.send)
        state = getattr(engine.broker, "stream_state", "n/a")
        m.stream.labels(s).state(state if state in STREAM_STATES else "n/a")
        if risk is None:
            return
        eq = risk.equity
        if self._equity0 is None:
            self._equity0 = eq
        self._peak = eq if self._peak is None else max(self._peak, eq)
        m.equity.labels(s).set(eq)
        m.pnl.labels(s).set(eq - self._equity0)
        m.drawdown.labels(s).set((self._peak - eq) / self._peak if self._peak > 0 else 0.0)
        self._close.update(zip(bars["symbol"].to_list(), bars["close"].to_list(), strict=True))
        gross = sum(abs(q) * self._close.get(sym, 0.0) for sym, q in risk.positions().items())
        m.gross.labels(s).set(gross)
        m.heat.labels(s).set(float(K.heat_nb(risk.s)) / eq if eq > 0 else 0.0)
        ks = "halted" if risk.halted else "reducing" if engine.stop_requested else "armed"
        m.kill_switch.labels(s).set(KILL_SWITCH[ks])
        den = risk.rejections()
        if den.height > self._n_den:
            for reason, n in den[self._n_den :].group_by("reason").len().iter_rows():
                m.rejections.labels(s, "risk", reason).inc(n)
            self._n_den = den.height

    def _trip_alert(self, risk: Any) -> Alert:
        trip = risk.kill_switch()
        row = trip.row(0, named=True) if trip.height else {}
        return Alert(
            "critical", "session",
            f"kill switch of {self.strategy} tripped: {row.get('reason', 'halted')}",
            values={k: row[k] for k in ("rule", "value", "limit") if k in row},
            key=f"{self.strategy}:kill_switch",
        )  # fmt: skip

    def _alert(self, alert: Alert) -> None:
        if self.alerter is not None:
            self.alerter.send(alert)
        else:
            log.warning("%s", alert.text())
