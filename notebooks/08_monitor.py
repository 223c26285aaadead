# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Monitor
# The nightly check of the strategy's `champion` model (else `challenger`, or the alias given)
# against what it was trained and validated on: drift of every feature and of the predictions
# over the last sessions against the reference saved with the model version (PSI on the
# reference's deciles, KS), staleness of the store against the exchange calendar, data quality,
# execution lag (decision, submit, fill) from the order ledger, the live sessions' return and hit
# rate against a backtest of the same model, and the model's age. Findings past the
# `monitoring.*` thresholds become alerts (log; webhook and email when configured). With
# `monitoring.retrain_on_drift`, drift past the alert threshold asks for `weekly_retrain` early.

# %% tags=["parameters"]
store_root: str = ""  # bar store folder; empty means the latest ingest step's, else store.root
model_name: str = "intraday_reversal"  # registered model to load by alias
strategy: str = "intraday_reversal"  # strategy: feature set, risk policy of the backtest
timeframe: str = "5Min"  # bar length
symbols: list[str] = ["SYN000", "SYN001", "SYN002", "SYN003"]  # symbols the model trades
sessions: int = 5  # live window: the last N sessions in the store
backtest_sessions: int = 20  # sessions of the backtest the live results are compared with
as_of: str = ""  # ISO 8601 time the checks are made at; empty means now
model_alias: str = ""  # alias to check; empty means champion, else challenger
ledger_url: str = ""  # order ledger (SQLAlchemy URL); empty means execution.ledger_url
send_alerts: bool = True  # send alerts to the configured channels (False shows them only)
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
import json

import polars as pl

from workbench.config import load_config
from workbench.models.registry import ModelNotFoundError
from workbench.monitoring.alerts import Alerter, recent_alerts
from workbench.monitoring.monitor import (
    histograms_figure,
    lag_figure,
    nightly_monitor,
    nothing_to_monitor,
    performance_figure,
    psi_figure,
)
from workbench.notebook import setup_display, store_root_or_default
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
store_root = store_root_or_default(cfg, store_root, required=False)  # empty: the latest ingest's
params = dict(store_root=store_root, model_name=model_name, strategy=strategy, timeframe=timeframe,
              symbols=symbols, sessions=sessions, backtest_sessions=backtest_sessions, as_of=as_of,
              model_alias=model_alias, send_alerts=send_alerts)
stage = start_stage("monitor", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path,
                    cfg=cfg)
alerter = Alerter.from_config(cfg) if send_alerts else None

# %%
try:
    rep = nightly_monitor(cfg, store_root=store_root or str(cfg.path(cfg.store.root)), model_name=model_name,
                          strategy=strategy, timeframe=timeframe, symbols=symbols, sessions=sessions, as_of=as_of,
                          model_alias=model_alias, ledger_url=ledger_url, backtest_sessions=backtest_sessions,
                          alerter=alerter)
except ModelNotFoundError as exc:  # no champion or challenger yet: the step finishes, says why
    rep = None
    print(f"nothing to monitor: {exc}")
    stage.hand_on(**nothing_to_monitor(str(exc)))

# %% [markdown]
# ## Drift per feature and of the predictions

# %%
if rep is not None:
    stage.log_metrics(rep.metrics())
    if rep.drift is None:
        print("no drift measured: the model version has no reference (retrain it) or the window is empty")
    else:
        stage.log_table(rep.drift.frame, "drift")
        stage.log_table(rep.drift.bins, "drift_bins")
        for name, fig in (("psi", psi_figure(rep.drift)),
                          ("histograms", histograms_figure(rep.drift, rep.reference, rep.live))):
            stage.log_figure(fig, name)
            fig.show()
        display(rep.drift.frame)

# %% [markdown]
# ## Staleness and data quality

# %%
if rep is not None:
    stage.log_table(rep.staleness, "staleness")
    display(rep.staleness)
    if rep.quality is not None:
        stage.log_table(rep.quality.findings, "quality")
        display(rep.quality.summary())

# %% [markdown]
# ## Execution lag and performance against the backtest

# %%
if rep is not None:
    stage.log_table(rep.lags, "execution_lag")
    stage.log_table(rep.anomalies, "anomalies")
    for name, fig in (("execution_lag", lag_figure(rep.lags)),
                      ("performance", performance_figure(rep.live_sessions, rep.backtest_sessions))):
        stage.log_figure(fig, name)
        fig.show()
    display(rep.anomalies)
    print(f"model age: {rep.age_days:.1f} days" if rep.age_days is not None else "model age unknown")

# %% [markdown]
# ## Alerts of this run, recent alerts, early retrain

# %%
if rep is not None:
    cols = ("ts", "severity", "kind", "message", "outcome")
    display(pl.DataFrame([{**a.to_dict(), "values": json.dumps(a.to_dict()["values"], default=str)}
                          for a in rep.alerts]) if rep.alerts else "no alerts in this run")
    recent = recent_alerts(cfg.path(cfg.alerts.history_path), limit=20)
    display(pl.DataFrame([{c: str(a.get(c, "")) for c in cols} for a in recent]) if recent else "no alert history")
    print(f"retrain early: {rep.retrain.retrain} ({rep.retrain.reason})")
    stage.hand_on(**rep.outputs())

# %%
stage.finish()
