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
# # 07 · Session review
# For one model version (default: the `champion`, else the `challenger`): how its trading
# sessions tracked the backtest of the same bars (each session's divergence report, logged after
# every session by 05_trade_session and `wb session run`, replayed or live: the PnL difference
# split into signal, execution, costs, risk denials and timing; a session whose bars could not be
# recovered is listed with the reason), the slippage model's fit (per-symbol fixed cost and impact shrunk toward the
# cross-sectional prior, the time-of-day curve) with its forecasts against the realised costs of
# every fill, and the shadow comparison of champion and challenger (`wb shadow`, `wb compare`).

# %% tags=["parameters"]
model_name: str = "intraday_reversal"  # registered model to review
model_version: str = ""  # version to review; empty means the champion, else the challenger
slippage_path: str = ""  # slippage model folder; empty means backtest.costs.slippage_path
strategy: str = ""  # only this strategy's shadow sessions; empty means all
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
import polars as pl

from workbench.config import load_config
from workbench.execution.divergence import divergence_history, history_figure
from workbench.execution.shadow import compare_versions, shadow_figure, shadow_sessions
from workbench.execution.slippage import SlippageStore, curve_figure, curve_table, forecasts
from workbench.models.registry import CHALLENGER, CHAMPION, ModelNotFoundError, resolve_alias
from workbench.notebook import setup_display
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
stage = start_stage("session_review", dict(model_name=model_name, model_version=model_version,
                    slippage_path=slippage_path, strategy=strategy), pipeline=pipeline,
                    parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)
try:
    version = model_version or resolve_alias(model_name, (CHAMPION, CHALLENGER)).version
except ModelNotFoundError as exc:
    version = ""
    print(f"nothing to review: {exc}")

# %% [markdown]
# ## Sessions against their backtests

# %%
history = divergence_history(model_name, version) if version else pl.DataFrame()
if history.height:
    compared = history.filter(pl.col("status") == "ok")  # sessions whose bars were recovered
    stage.log_metrics({"sessions": history.height, "sessions_without_report": history.height - compared.height})
    if compared.height:
        stage.log_metrics({"mean_pnl_diff": float(compared["pnl_diff"].mean()),
                           "mean_attr_execution": float(compared["attr_execution"].mean())})
    for day, why in history.filter(pl.col("status") != "ok").select("session_date", "reason").iter_rows():
        print(f"{day}: no divergence report: {why}")
    display(history.drop("run_id", "reason"))
    fig = history_figure(compared, f"{model_name} v{version}: sessions vs their backtests")
    stage.log_figure(fig, "divergence_history")
    fig.show()
else:
    print(f"no divergence reports for {model_name} v{version} yet (trade a session: 05_trade_session)")

# %% [markdown]
# ## Slippage model: fit and forecasts vs realised

# %%
store = SlippageStore(cfg.path(slippage_path or cfg.backtest.costs.slippage_path))
curve = store.latest()
if curve is not None:
    obs = store.observations()
    display(curve_table(curve))
    fc = forecasts(curve, obs)
    err = fc.select((pl.col("slip_bps") - pl.col("forecast_bps")).alias("error_bps"))
    stage.log_metrics({"slippage_version": curve.version, "slippage_fills": obs.height})
    if obs.height:
        stage.log_metrics({"slippage_mae_bps": float(err["error_bps"].abs().mean())})
    fig = curve_figure(curve, obs)
    stage.log_figure(fig, "slippage_model")
    fig.show()
else:
    print(f"no slippage model in {store.root} yet (each replayed session fits one from its fills)")

# %% [markdown]
# ## Shadow sessions: champion vs challenger

# %%
shadow = shadow_sessions(model_name, strategy or None)
if shadow.height:
    champ = shadow.filter(pl.col("role") == "champion")["version"]
    chall = shadow.filter(pl.col("role") == "challenger")["version"]
    if champ.len() and chall.len():
        v_ch, v_cl = champ[-1], chall[-1]
        cmp = compare_versions(shadow, v_ch, v_cl)
        display(pl.DataFrame([{k: v for k, v in cmp.items() if k != "sessions"}]))
        print(cmp["verdict"])
        fig = shadow_figure(shadow, v_ch, v_cl)
        stage.log_figure(fig, "shadow_sessions")
        fig.show()
else:
    print("no shadow sessions yet (`wb shadow` trades the challenger beside the champion)")

# %%
stage.finish()
