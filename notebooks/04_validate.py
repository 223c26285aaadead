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
# # 04 · Validate
# Backtest the registered model's out-of-sample signals with costs (commission, half spread), then
# validate it walk-forward over the same period (its hyperparameters retrained per window,
# predictions stitched, costs on). The gates judge the walk-forward result, with the deflated
# Sharpe ratio (corrected for every trial of the search) and the search's PBO.
# Passing sets the registry alias `challenger`; failing says why.

# %% tags=["parameters"]
features_path: str = ""  # feature table (parquet) from the features step
store_root: str = ""  # bar store folder (from the ingest step)
model_name: str = "intraday_reversal"  # registered model
model_version: str = ""  # version to validate (from the train step)
split_ts: str = ""  # first out-of-sample timestamp, ISO 8601 (from the train step)
strategy: str = "intraday_reversal"  # strategy: thresholds, sizing and gates
timeframe: str = "5Min"  # bar length
trial_sharpes: list[float] = []  # per-bar Sharpe ratio of every search trial (from the train step)
n_trials: int = 0  # trials the search tried, pruned ones included (from the train step)
trial_correlation: float = 0.0  # average correlation of the trials returns; 0 treats trials as independent
pbo: float = float("nan")  # probability of backtest overfitting (from the train step; nan means not measured)
walk_forward_folds: int = 4  # retraining windows over the out-of-sample period (0 skips walk-forward)
seed: int = 7  # LightGBM seed of the walk-forward models
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
import mlflow

from workbench.backtest import tearsheet_figures
from workbench.config import load_config
from workbench.models.registry import ModelRef
from workbench.notebook import fill_empty, setup_display, store_root_or_default
from workbench.stages.validate import (
    apply_gates,
    risk_figure,
    risk_summary,
    run_validate,
    walk_forward_returns,
)
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
features_path = fill_empty(cfg, "features", dict(features_path=features_path), required="features_path",
                           hint="run 02_features (or `wb run research`) or set features_path")["features_path"]
store_root = store_root_or_default(cfg, store_root)  # empty: the latest ingest step's store
globals().update(fill_empty(  # empty: what the latest train step handed on
    cfg, "train", dict(model_name=model_name, model_version=model_version, split_ts=split_ts,
                       trial_sharpes=trial_sharpes, n_trials=n_trials, trial_correlation=trial_correlation, pbo=pbo),
    required="model_version", also_zero=("n_trials", "trial_correlation"),
    hint="run 03_train (or `wb run research`) or set model_version and split_ts"))
params = dict(features_path=features_path, store_root=store_root, model_name=model_name, model_version=model_version,
              split_ts=split_ts, strategy=strategy, timeframe=timeframe, n_trials=n_trials,
              trial_correlation=trial_correlation, pbo=pbo, walk_forward_folds=walk_forward_folds, seed=seed)
stage = start_stage("validate", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)
mlflow.set_tag("strategy", strategy)  # 06_portfolio finds each strategy's latest validation by it

# %%
model = ModelRef(model_name, model_version, None, "", f"models:/{model_name}/{model_version}")
res = run_validate(cfg, features_path=features_path, store_root=store_root, model=model, split_ts=split_ts,
                   strategy=strategy, timeframe=timeframe, trial_sharpes=trial_sharpes, n_trials=n_trials,
                   trial_correlation=trial_correlation, pbo=pbo, walk_forward_folds=walk_forward_folds, seed=seed)
stage.set_fingerprint(res.data_fingerprint)
stage.log_metrics(res.metrics)
{k: round(v, 4) for k, v in res.metrics.items()}

# %% [markdown]
# ## Tearsheet (out of sample, costs on)

# %%
for name, fig in tearsheet_figures(res.backtest).items():
    stage.log_figure(fig, f"tearsheet_{name}")
    fig.show()

# %% [markdown]
# ## Risk policy (the rules the session will trade under)
# Decisions, sizing, limits, kill switch and end-of-day flatten ran bar by bar in the backtest;
# every denial is recorded with its rule, the measured value and the limit.

# %%
stage.log_table(risk_summary(res.backtest), "risk_denials_by_rule")
stage.log_table(res.backtest.rejections.head(5000), "risk_denials")
fig = risk_figure(res.backtest)
stage.log_figure(fig, "risk_denials")
fig.show()
display(res.backtest.kill_switch)

# %% [markdown]
# ## Walk-forward (what the gates judge)

# %%
if res.walk_forward is not None:
    stage.log_table(res.walk_forward.folds, "walk_forward_folds")
    stage.log_table(walk_forward_returns(res), "walk_forward_returns")  # read by 06_portfolio
    display(res.walk_forward.folds)
    if res.walk_forward.backtest is not None:
        for name, fig in tearsheet_figures(res.walk_forward.backtest).items():
            if name in ("equity", "drawdown"):
                fig.update_layout(title=f"Walk-forward {name}")
                stage.log_figure(fig, f"walk_forward_{name}")
                fig.show()

# %% [markdown]
# ## Monte Carlo and the rule baseline
# A stationary bootstrap of the judged daily returns (its Sharpe interval feeds the gate
# `min_sharpe_ci_low`; the interval and its point `mc_sharpe` are Sharpe ratios of daily returns,
# annualised with 252 sessions, so they differ from the backtest's `sharpe` of bar returns), and
# the strategy's rule (momentum or mean reversion, fitted on the
# training rows) traded on the same window with the same costs (`beats_baseline`).

# %%
if res.monte_carlo is not None:
    fig = res.monte_carlo.figure()
    stage.log_figure(fig, "monte_carlo")
    fig.show()
if res.baseline is not None:
    fig = res.baseline.figure()
    stage.log_figure(fig, "baseline")
    fig.show()
    display(res.baseline.fitted)

# %% [markdown]
# ## Gates

# %%
# NBVAL_CHECK_OUTPUT
stage.log_table(res.gates.frame, "gate_report")
print(apply_gates(res, model, features_path=features_path, store_root=store_root, split_ts=split_ts,
                  timeframe=timeframe))

# %%
res.gates.frame

# %%
stage.hand_on(passed=res.gates.passed)
stage.finish()
