"""Watch a model once it trades: drift, staleness, data quality, execution lag, performance
anomalies and model age; alerts; Prometheus metrics.

* :mod:`~workbench.monitoring.drift`: :func:`psi` and :func:`ks`, :func:`drift` over columns;
* :mod:`~workbench.monitoring.reference`: the distributions saved with each model version;
* :mod:`~workbench.monitoring.checks`: staleness, execution lag, performance anomalies, model age;
* :mod:`~workbench.monitoring.retrain`: whether drift asks for ``weekly_retrain`` early;
* :mod:`~workbench.monitoring.monitor`: the nightly monitor run (``08_monitor``);
* :mod:`~workbench.monitoring.alerts`: alerts, channels, dedupe and rate limits;
* :mod:`~workbench.monitoring.metrics` and :mod:`~workbench.monitoring.session`: ``/metrics``.
"""

from workbench.monitoring.alerts import Alert, Alerter, Delivery
from workbench.monitoring.drift import DriftReport, drift, ks, psi, psi_table
from workbench.monitoring.retrain import (
    RetrainDecision,
    retrain_decision,
    retrain_decision_from_outputs,
)

__all__ = [
    "Alert",
    "Alerter",
    "Delivery",
    "DriftReport",
    "RetrainDecision",
    "drift",
    "ks",
    "psi",
    "psi_table",
    "retrain_decision",
    "retrain_decision_from_outputs",
]
