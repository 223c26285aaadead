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
# # 01 · Ingest
# Fetch bars from a source (the embedded simulator by default, or Alpaca) into the bar store,
# check coverage and quality, and look at one symbol. Re-running fetches only what the store lacks.

# %% tags=["parameters"]
symbols: list[str] = ["SYN000", "SYN001", "SYN002", "SYN003"]  # universe to ingest
timeframe: str = "5Min"  # bar length: 1Min | 5Min | 15Min | 1Hour | 1Day
start: str = "2024-01-02"  # first session (YYYY-MM-DD)
end: str = "2024-02-29"  # last session, inclusive (YYYY-MM-DD)
source: str = "synthetic"  # data source: synthetic | alpaca
seed: int = 7  # simulator seed (synthetic source only)
alpha: float = 0.0  # simulator planted predictability (0 means nothing to find)
vwap_reversion: float = 0.0  # simulator planted reversion to the session VWAP (0 means none)
trend: float = 0.0  # simulator planted multi-day drift (0 means none)
store_root: str = ""  # bar store folder, relative to the project; empty means config store.root
chart_symbol: str = ""  # symbol for the candlestick; empty means the first symbol
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
from workbench.config import load_config
from workbench.notebook import setup_display
from workbench.stages.ingest import candlestick, run_ingest
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
params = dict(symbols=symbols, timeframe=timeframe, start=start, end=end, source=source, seed=seed,
              alpha=alpha, vwap_reversion=vwap_reversion, trend=trend, store_root=store_root,
              chart_symbol=chart_symbol)
stage = start_stage("ingest", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)

# %%
res = run_ingest(cfg, source=source, symbols=symbols, timeframe=timeframe, start=start, end=end, seed=seed,
                 alpha=alpha, vwap_reversion=vwap_reversion, trend=trend, store_root=store_root)
stage.set_fingerprint(res.fingerprint)
stage.log_params({f"provenance.{k}": v for k, v in res.provenance.items()})
stage.log_metrics({"bars": res.coverage["rows"].sum(), "chunks_fetched": res.report.fetched,
                   "chunks_skipped": res.report.skipped, "bars_inserted": res.report.total("inserted")})
res.report.frame

# %% [markdown]
# ## Coverage

# %%
# NBVAL_CHECK_OUTPUT
stage.log_table(res.coverage, "coverage")
res.coverage.select("timeframe", "symbol", "rows")

# %% [markdown]
# ## Data quality
# Gaps against the exchange calendar, OHLC consistency, zero-volume runs, price jumps, staleness.
# Errors fail this step (after the report is logged); warnings are shown and logged.

# %%
print(res.quality.to_text())
stage.log_metrics(res.quality.metrics())
stage.log_table(res.quality.findings, "quality_findings")
fig = res.quality.figure()
stage.log_figure(fig, "quality")
fig.show()

# %% [markdown]
# ## One symbol

# %%
bars = res.store.read(symbols, timeframe, start=start)
fig = candlestick(bars, chart_symbol or symbols[0])
stage.log_figure(fig, "candlestick")
fig.show()

# %%
stage.hand_on(store_root=str(res.store.root), data_fingerprint=res.fingerprint)
stage.finish("FAILED" if res.quality.severe else "FINISHED")
res.quality.raise_if_severe()
