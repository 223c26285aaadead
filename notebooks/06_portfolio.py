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
# # 06 · Portfolio
# Allocate capital across the strategies validated by 04_validate. Each strategy's walk-forward
# returns (its latest validate run, or the run ids given) are compounded into one return per New
# York session, then allocated (equal, inverse volatility, risk parity, Kelly or volatility target)
# under per-strategy and per-type caps. The portfolio is then measured: each strategy's share of its
# risk, the correlation of the strategies, VaR and CVaR, and the trades that bring the current
# weights back to target.

# %% tags=["parameters"]
method: str = "risk_parity"  # allocation rule: equal, inverse_vol, risk_parity, kelly or vol_target
options: dict[str, float] = {}  # extra options of the rule, e.g. target_vol for vol_target
level: float = 0.95  # confidence level of the VaR and CVaR
experiment: str = ""  # MLflow experiment holding the validate runs; empty means the config's
run_ids: dict[str, str] = {}  # strategy to its validate run id; empty means each one's latest run
strategies: list[str] = []  # keep only these strategies; empty keeps every one found
frequency: str = "daily"  # daily compounds the bars of each New York session; native keeps bars
max_weight: float = 1.0  # cap on each strategy's weight (1 means no cap)
strategy_caps: dict[str, float] = {}  # caps on named strategies' weights
type_caps: dict[str, float] = {"intraday": 0.5}  # cap on the summed weight of a strategy type
current_weights: dict[str, float] = {}  # weights held now; empty means the last portfolio run's
threshold: float = 0.05  # drift in weight units beyond which a strategy is traded to target
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
from workbench.config import load_config
from workbench.notebook import setup_display
from workbench.stages.portfolio import (
    portfolio_figures,
    portfolio_tables,
    resolve_validate_runs,
    run_portfolio,
)
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
# the validate runs to allocate across, found before this run is recorded
chosen = resolve_validate_runs(cfg, run_ids=run_ids or None, experiment=experiment or None,
                               strategies=strategies)
params = dict(method=method, options=options, level=level, experiment=experiment, run_ids=run_ids,
              strategies=strategies, frequency=frequency, max_weight=max_weight,
              strategy_caps=strategy_caps, type_caps=type_caps, current_weights=current_weights,
              threshold=threshold)
stage = start_stage("portfolio", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path, cfg=cfg)

# %%
res = run_portfolio(cfg, run_ids=chosen, method=method, options=options, frequency=frequency,
                    max_weight=max_weight, strategy_caps=strategy_caps, type_caps=type_caps, current_weights=current_weights,
                    threshold=threshold, level=level, exclude_run_id=stage.run_id)
stage.set_fingerprint(res.data_fingerprint)
stage.log_params({"validate_run_ids": res.run_ids, "current_source": res.current_source})
stage.log_metrics(res.metrics)  # weight.<strategy> metrics: the next run's current weights
for name, table in portfolio_tables(res).items():
    stage.log_table(table, name)
figures = portfolio_figures(res)
for name, fig in figures.items():
    stage.log_figure(fig, name)
print(f"{len(res.run_ids)} strategies, {res.allocation_returns.height} {res.frequency} periods")

# %% [markdown]
# ## Weights
# Target weights of the rule under the caps (what is not allocated is cash).

# %%
# NBVAL_CHECK_OUTPUT
print({s: round(w, 4) for s, w in res.weights.items()})

# %%
display(res.weights_table)
figures["weights"].show()

# %% [markdown]
# ## Risk
# Euler contributions to the portfolio's volatility, per strategy and per strategy type.

# %%
display(res.risk_contributions)
figures["risk_contributions"].show()

# %%
display(res.correlation)
figures["correlation"].show()

# %% [markdown]
# ## VaR and CVaR of the allocated portfolio
# Losses are positive, per period of the allocation's returns.

# %%
display(res.var_table)
figures["var_cvar"].show()

# %% [markdown]
# ## Performance (walk-forward, costs on)

# %%
display(res.performance)
figures["cumulative_returns"].show()

# %% [markdown]
# ## Rebalance
# Only strategies that drifted beyond the threshold are traded, to exactly their target.

# %%
print(f"current weights: {res.current_source}")
display(res.rebalance.drift)
res.rebalance.trades

# %%
stage.hand_on(weights=res.weights, run_ids=res.run_ids, needs_rebalance=res.rebalance.needs_rebalance,
              trades=res.rebalance.trades.to_dicts())
stage.finish()
