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
# # 02 · Features
# Build the strategy's feature set and its label from stored bars (features use only the past;
# the label carries `t1`, when its outcome is known), check each feature's information
# coefficient against the label, and write the feature table for training.

# %% tags=["parameters"]
store_root: str = ""  # bar store folder (from the ingest step); empty means config store.root
symbols: list[str] = ["SYN000", "SYN001", "SYN002", "SYN003"]  # universe
timeframe: str = "5Min"  # bar length
start: str = "2024-01-02"  # first session (YYYY-MM-DD)
end: str = "2024-02-29"  # last session, inclusive (YYYY-MM-DD)
strategy: str = "intraday_reversal"  # strategy whose feature set and label to build
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
from workbench.config import load_config
from workbench.notebook import setup_display, store_root_or_default, work_dir
from workbench.stages.features import run_features
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
store_root = store_root_or_default(cfg, store_root)  # empty: the latest ingest step's store
params = dict(store_root=store_root, symbols=symbols, timeframe=timeframe, start=start, end=end, strategy=strategy)
stage = start_stage("features", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)

# %%
res = run_features(cfg, store_root=store_root or str(cfg.path(cfg.store.root)), symbols=symbols,
                   timeframe=timeframe, start=start, end=end, strategy=strategy,
                   out_dir=work_dir(cfg, output_path, "features"))
stage.set_fingerprint(res.data_fingerprint)
stage.log_metrics(res.metrics)
res.table.head(10)

# %% [markdown]
# ## Information coefficient of each feature against the label

# %%
stage.log_table(res.ic_table, "feature_ic")
res.ic_table

# %%
for name, fig in res.figures.items():
    stage.log_figure(fig, name)
    fig.show()

# %%
stage.hand_on(features_path=str(res.path))
stage.finish()
