"""Prometheus metrics of the long-lived processes: the trading session and the scheduler.

:class:`Metrics` owns its own ``CollectorRegistry`` (never the global one: a notebook that builds
two gets no "Duplicated timeseries"), with every series the workbench exposes, and
:func:`serve` puts it on ``http://127.0.0.1:<port>/metrics`` (a daemon thread; port 0 picks a
free one). The session feeds it through :class:`~workbench.monitoring.session.SessionMonitor`;
the scheduler calls :meth:`Metrics.observe_pipeline` after each run and
:meth:`Metrics.observe_monitor` with the nightly monitor's outputs.

Series (``deploy/grafana/workbench.json`` draws them; README "Operate it" lists them):

=============================================  ==========  ===================================
name                                           type        labels
=============================================  ==========  ===================================
wb_bars_total                                  counter     strategy
wb_orders_submitted_total                      counter     strategy, side
wb_fills_total                                 counter     strategy, side
wb_rejections_total                            counter     strategy, source (risk|broker), reason
wb_session_pnl / _equity / _drawdown           gauge       strategy ($, $, fraction of the peak)
wb_gross_exposure / wb_heat_ratio              gauge       strategy ($; stop risk / equity)
wb_kill_switch_state                           gauge       strategy (0 armed, 1 reducing, 2 halted)
wb_bar_staleness_seconds                       gauge       strategy (behind the calendar's bar)
wb_last_bar_timestamp_seconds                  gauge       strategy
wb_stream_state                                enum        strategy, wb_stream_state
wb_decision_latency_seconds                    histogram   strategy (bar in -> orders out)
wb_submit_latency_seconds                      histogram   strategy (decided -> last order sent)
wb_fill_latency_seconds                        histogram   strategy (order sent -> fill, clock)
wb_psi                                         gauge       model, column
wb_model_age_days                              gauge       model
wb_pipeline_runs_total                         counter     pipeline, outcome
wb_pipeline_duration_seconds                   histogram   pipeline
wb_pipeline_step_seconds                       gauge       pipeline, step (last run)
wb_pipeline_last_success_timestamp_seconds     gauge       pipeline
wb_alerts_total                                counter     kind, severity, outcome
=============================================  ==========  ===================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

STREAM_STATES = ("connecting", "up", "down", "silent", "off", "n/a")
KILL_SWITCH = {"armed": 0.0, "reducing": 1.0, "halted": 2.0}
# bar in -> orders out is ~1e-4..1e-2 s on the simulated venue: the default buckets are too coarse
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                3600.0)  # fmt: skip
PIPELINE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class Metrics:
    """Every workbench series on one registry of its own (see the module doc)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        s = ("strategy",)
        self.bars = Counter("wb_bars", "Bars processed by the session", s, registry=r)
        self.orders = Counter(
            "wb_orders_submitted", "Orders handed to the broker", (*s, "side"), registry=r
        )
        self.fills = Counter("wb_fills", "Fills recorded", (*s, "side"), registry=r)
        self.rejections = Counter(
            "wb_rejections", "Risk denials and cuts (source=risk) and orders the broker or the "
            "order rules refused (source=broker), by reason", (*s, "source", "reason"), registry=r,
        )  # fmt: skip
        self.pnl = Gauge("wb_session_pnl", "Session PnL so far ($)", s, registry=r)
        self.equity = Gauge(
            "wb_session_equity", "Account equity marked at the last bar", s, registry=r
        )
        self.drawdown = Gauge(
            "wb_session_drawdown",
            "Drawdown from the session's equity peak (fraction)",
            s,
            registry=r,
        )
        self.gross = Gauge(
            "wb_gross_exposure", "Gross exposure at the last close ($)", s, registry=r
        )
        self.heat = Gauge(
            "wb_heat_ratio", "Portfolio heat: stop distance x shares over equity", s, registry=r
        )
        self.kill_switch = Gauge(
            "wb_kill_switch_state", "Kill switch: 0 armed, 1 reducing (stopping), 2 halted", s,
            registry=r,
        )  # fmt: skip
        self.staleness = Gauge(
            "wb_bar_staleness_seconds", "How far the last bar is behind the calendar's last "
            "complete bar (0: current)", s, registry=r,
        )  # fmt: skip
        self.last_bar = Gauge(
            "wb_last_bar_timestamp_seconds", "Start of the last bar processed (unix)", s, registry=r
        )
        self.stream = Enum(
            "wb_stream_state", "Trade-update stream of the broker", s, states=list(STREAM_STATES),
            registry=r,
        )  # fmt: skip
        self.decision_latency = Histogram(
            "wb_decision_latency_seconds", "Bar in -> orders out (SessionEngine.timings)", s,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.submit_latency = Histogram(
            "wb_submit_latency_seconds", "Decided -> last order handed to the broker (plans, "
            "intents committed, submits)", s, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.fill_latency = Histogram(
            "wb_fill_latency_seconds", "Order sent -> fill, on the session clock (bar time in "
            "replay)", s, buckets=FILL_BUCKETS, registry=r,
        )  # fmt: skip
        self.psi = Gauge(
            "wb_psi", "Population stability index of a column against the model's reference",
            ("model", "column"), registry=r,
        )  # fmt: skip
        self.model_age = Gauge(
            "wb_model_age_days", "Age of the traded model version", ("model",), registry=r
        )
        self.pipeline_runs = Counter(
            "wb_pipeline_runs", "Pipeline runs by outcome", ("pipeline", "outcome"), registry=r
        )
        self.pipeline_duration = Histogram(
            "wb_pipeline_duration_seconds", "Pipeline run duration", ("pipeline",),
            buckets=PIPELINE_BUCKETS, registry=r,
        )  # fmt: skip
        self.pipeline_step = Gauge(
            "wb_pipeline_step_seconds", "Duration of each step in the pipeline's last run",
            ("pipeline", "step"), registry=r,
        )  # fmt: skip
        self.pipeline_success = Gauge(
            "wb_pipeline_last_success_timestamp_seconds", "When the pipeline last succeeded (unix)",
            ("pipeline",), registry=r,
        )  # fmt: skip
        self.alerts = Counter(
            "wb_alerts", "Alerts by kind, severity and outcome (sent, deduplicated, rate_limited)",
            ("kind", "severity", "outcome"), registry=r,
        )  # fmt: skip

    # ------------------------------------------------------------------ hooks for other parts

    def observe_pipeline(
        self, pipeline: str, outcome: str, seconds: float,
        steps: Iterable[tuple[str, float]] = (), finished_at: float | None = None,
    ) -> None:  # fmt: skip
        """Record one pipeline run: ``outcome`` ``ok`` or ``failed`` (or ``skipped``, ``locked``),
        its duration, each step's ``(name, seconds)``; a success stamps the last-success gauge."""
        self.pipeline_runs.labels(pipeline, outcome).inc()
        self.pipeline_duration.labels(pipeline).observe(max(0.0, float(seconds)))
        for step, sec in steps:
            self.pipeline_step.labels(pipeline, step).set(float(sec))
        if outcome == "ok":
            self.pipeline_success.labels(pipeline).set(finished_at or time.time())

    def observe_pipeline_result(self, result: Any, seconds: float | None = None) -> None:
        """Record a :class:`~workbench.pipeline.runner.PipelineResult` (duck-typed: ``pipeline``,
        ``ok``, ``steps`` with ``step``, ``status``, ``seconds``)."""
        steps = [(s.step, float(s.seconds)) for s in result.steps]
        total = seconds if seconds is not None else sum(sec for _, sec in steps)
        self.observe_pipeline(result.pipeline, "ok" if result.ok else "failed", total, steps)

    def run_listener(self) -> Callable[[Any], None]:
        """A scheduler run listener: ``scheduler.listeners.append(metrics.run_listener())``.

        Records each run outcome (duck-typed ``pipeline, status, seconds, run_dir``) and, after a
        run whose folder holds ``monitor.outputs.json`` (the nightly monitor), its PSI and model
        age gauges."""

        def listen(out: Any) -> None:
            self.observe_pipeline(out.pipeline, out.status, float(out.seconds or 0.0))
            path = Path(out.run_dir) / "monitor.outputs.json" if out.run_dir else None
            if out.status == "ok" and path is not None and path.exists():
                self.observe_monitor(json.loads(path.read_text()).get("outputs", {}))

        return listen

    def observe_monitor(self, outputs: Mapping[str, Any]) -> None:
        """Set the PSI and model-age gauges from the nightly monitor's step outputs (``model``,
        ``psi``: {column: value}, ``model_age_days``)."""
        model = str(outputs.get("model", ""))
        for col, v in (outputs.get("psi") or {}).items():
            if v is not None:
                self.psi.labels(model, col).set(float(v))
        if outputs.get("model_age_days") is not None:
            self.model_age.labels(model).set(float(outputs["model_age_days"]))

    def observe_alert(self, delivery: Any) -> None:
        """Count an alert delivery (an :class:`~workbench.monitoring.alerts.Alerter`'s
        ``on_delivery``)."""
        a = delivery.alert
        self.alerts.labels(a.kind, a.severity, delivery.outcome).inc()

    def text(self) -> str:
        """The exposition text of every series (what a scrape returns)."""
        return generate_latest(self.registry).decode()

    def names(self) -> set[str]:
        """Every sample name the registry can expose (``_total``, ``_bucket``... included)."""
        out = set()
        for fam in self.registry.collect():
            out.add(fam.name)
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",),
                "stateset": ("",),
            }.get(fam.type, ("",))
            out.update(fam.name + s for s in suffixes)
        return out


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (close it when done)."""

    host: str
    port: int
    _server: Any
    _thread: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(metrics: Metrics, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
    """Expose ``metrics`` on ``http://host:port/metrics`` in a daemon thread (port 0: a free
    port, see :attr:`MetricsServer.port`)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(host, int(server.server_port), server, thread)


def start_exporter(cfg: Any, which: str = "scheduler") -> tuple[Metrics, MetricsServer | None]:
    """A :class:`Metrics` and, when ``metrics.<which>_port`` is set (not 0), its server on
    ``metrics.host`` (``which``: ``session`` or ``scheduler``)."""
    m = Metrics()
    port = int(getattr(cfg.metrics, f"{which}_port"))
    return m, (serve(m, port, cfg.metrics.host) if port else None)
