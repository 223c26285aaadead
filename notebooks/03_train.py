# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Train
# Search the strategy's LightGBM hyperparameters with Optuna on the training part of a
# chronological split (rows whose label ends after the split are purged). Each trial is scored
# by purged K-fold with embargo: the per-bar Sharpe ratio of a costed backtest of every fold's
# predictions (or the IC). Every trial is a nested MLflow run. The best configuration is refit on
# the whole training window and registered, with its signature and input example, under the
# strategy's name. The best few configurations are re-run on combinatorial purged CV paths to
# measure the probability of backtest overfitting (PBO). The trials' Sharpe ratios and the PBO
# go to validation, where the deflated Sharpe ratio and the gates use them.

# %% tags=["parameters"]
features_path: str = ""  # feature table (parquet) from the features step
store_root: str = ""  # bar store folder (from the ingest step): fold backtests read its bars
strategy: str = "intraday_reversal"  # strategy: registered model name, search settings, costs
timeframe: str = "5Min"  # bar length
seed: int = 7  # seed of the TPE sampler and of every LightGBM fit
train_frac: float = 0.6  # share of timestamps used for training; the rest validates
n_trials: int = 0  # Optuna trials (0 means the strategy's search.n_trials)
n_folds: int = 0  # purged K-fold folds (0 means the strategy's search.n_folds)
pbo_configs: int = 0  # best trials re-run on CPCV paths for PBO (0 means the strategy's)
optuna_storage: str = ""  # Optuna RDB URL (empty means the strategy's search.storage)
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
from workbench.config import load_config
from workbench.models.registry import log_lightgbm
from workbench.notebook import fill_empty, setup_display, store_root_or_default
from workbench.stages.train import importance_figure, loggable_params, run_train
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
features_path = fill_empty(cfg, "features", dict(features_path=features_path), required="features_path",
                           hint="run 02_features (or `wb run research`) or set features_path")["features_path"]
store_root = store_root_or_default(cfg, store_root)  # empty: the latest ingest step's store
params = dict(features_path=features_path, store_root=store_root, strategy=strategy, timeframe=timeframe,
              seed=seed, train_frac=train_frac, n_trials=n_trials, n_folds=n_folds, pbo_configs=pbo_configs)
stage = start_stage("train", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)

# %% [markdown]
# ## Search (purged K-fold, one nested MLflow run per trial)

# %%
res = run_train(cfg, features_path=features_path, store_root=store_root, strategy=strategy, timeframe=timeframe,
                seed=seed, train_frac=train_frac, n_trials=n_trials, n_folds=n_folds, pbo_configs=pbo_configs,
                storage=optuna_storage)
stage.log_params({"split_ts": res.split.split_ts.isoformat(), "features": ",".join(res.features),
                  "study_name": res.study_name, **loggable_params(res.model)})
stage.set_fingerprint(res.data_fingerprint)
stage.log_metrics(res.metrics)
{k: round(v, 4) for k, v in res.metrics.items()}

# %%
for name in ("optimization_history", "param_importances", "fold_scores"):
    if name in res.search.figures:
        res.search.figures[name].show()

# %%
res.search.fold_scores.pivot(on="fold", index=["trial", "state"], values="score")

# %% [markdown]
# ## Probability of backtest overfitting (CPCV paths of the best configurations)

# %%
if res.cpcv is not None:
    for name, fig in res.cpcv.figures.items():
        stage.log_figure(fig, f"pbo_{name}")
        fig.show()
else:
    print("fewer than two completed trials: PBO not measured, a max_pbo gate will refuse")

# %% [markdown]
# ## Refit on the whole training window

# %%
fig = importance_figure(res.importance)
stage.log_figure(fig, "feature_importance")
fig.show()

# %%
ref = log_lightgbm(res.model, res.split.train.select(res.features).to_pandas(), registered_name=strategy,
                   tags={"split_ts": res.split.split_ts.isoformat(), "strategy": strategy,
                         "study_name": res.study_name}, reference=res.reference)
print(f"registered {ref.name} version {ref.version}")
stage.hand_on(model_name=ref.name, model_version=ref.version, split_ts=res.split.split_ts.isoformat(),
              trial_sharpes=res.trial_sharpes, n_trials=int(res.metrics["search_trials"]),
              trial_correlation=res.metrics["trial_correlation"], pbo=res.metrics["pbo"])
stage.finish()
