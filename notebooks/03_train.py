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
# Fit the strategy's LightGBM model on a chronological split of the feature table. Training rows
# whose label ends after the split are purged, so nothing about the validation period leaks in.
# The model is logged to MLflow with its signature and input example and registered under the
# strategy's name.

# %% tags=["parameters"]
features_path: str = ""  # feature table (parquet) from the features step
strategy: str = "intraday_reversal"  # strategy: registered model name, model parameters
seed: int = 7  # LightGBM seed
train_frac: float = 0.6  # share of timestamps used for training; the rest validates
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
from workbench.config import load_config
from workbench.models.registry import log_lightgbm
from workbench.notebook import setup_display
from workbench.stages.train import importance_figure, run_train
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
params = dict(features_path=features_path, strategy=strategy, seed=seed, train_frac=train_frac)
stage = start_stage("train", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)

# %%
res = run_train(cfg, features_path=features_path, strategy=strategy, seed=seed, train_frac=train_frac)
stage.log_params({"split_ts": res.split.split_ts.isoformat(), "features": ",".join(res.features),
                  **{f"lgbm.{k}": v for k, v in res.model.get_params().items() if v is not None}})
stage.set_fingerprint(res.data_fingerprint)
stage.log_metrics(res.metrics)
res.metrics

# %%
fig = importance_figure(res.importance)
stage.log_figure(fig, "feature_importance")
fig.show()

# %%
ref = log_lightgbm(res.model, res.split.train.select(res.features).to_pandas(), registered_name=strategy,
                   tags={"split_ts": res.split.split_ts.isoformat(), "strategy": strategy})
print(f"registered {ref.name} version {ref.version}")
stage.hand_on(model_name=ref.name, model_version=ref.version, split_ts=res.split.split_ts.isoformat())
stage.finish()
