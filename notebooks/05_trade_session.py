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
# # 05 · Trade session
# Load the strategy's `champion` model (else `challenger`, or the alias given) from the registry
# and trade one session bar by bar through the whole trading path: features from the past only,
# decisions at each bar's close under the strategy's risk policy (the decision, sizing, limits,
# kill switch and end-of-day flatten its backtest and gates used), orders written ahead to the
# order ledger, sent to the broker (`sim`: the simulated venue, fills at the next bar's open plus
# costs; `alpaca`: Alpaca paper trading, keys from the environment only), reconciled at start.
# `replay` replays a stored day as fast as the broker allows; `live` trades today's bars until the
# close (run it with `wb session run` in a terminal rather than here: a notebook is not a
# long-lived trading process). Shows decisions, orders, fills, risk denials, equity and exposure;
# logs the session as an MLflow run tagged with the model name, version and alias it traded.

# %% tags=["parameters"]
store_root: str = ""  # bar store folder (from the ingest step)
model_name: str = "intraday_reversal"  # registered model to load by alias
strategy: str = "intraday_reversal"  # strategy: feature set, thresholds, sizing
timeframe: str = "5Min"  # bar length
symbols: list[str] = ["SYN000", "SYN001", "SYN002", "SYN003"]  # symbols to trade
session_date: str = ""  # session to replay (YYYY-MM-DD); empty means the last stored session
broker: str = "sim"  # sim (simulated venue) | alpaca (paper unless `wb session run --live`)
mode: str = "replay"  # replay a stored day | live (today, until the close)
model_alias: str = ""  # alias to trade; empty means champion, else challenger
ledger_url: str = ""  # order ledger (SQLAlchemy URL); empty means execution.ledger_url
slippage_path: str = ""  # slippage model folder (refitted with the fills); empty means backtest.costs.slippage_path
output_path: str = ""  # set by the pipeline runner: where this step hands on its outputs
parent_run_id: str = ""  # set by the pipeline runner: MLflow parent run
pipeline: str = ""  # set by the pipeline runner: pipeline name

# %%
import math

import polars as pl

from workbench.config import load_config
from workbench.models.lifecycle import model_age_status
from workbench.models.registry import ModelNotFoundError
from workbench.notebook import setup_display, store_root_or_default, work_dir
from workbench.stages.session import equity_figure, review_session, run_trade_session
from workbench.tracking import start_stage

setup_display()
cfg = load_config()
store_root = store_root_or_default(cfg, store_root)  # empty: the latest ingest step's store
params = dict(store_root=store_root, model_name=model_name, strategy=strategy, timeframe=timeframe, symbols=symbols,
              session_date=session_date, broker=broker, mode=mode, alias_requested=model_alias)
stage = start_stage("trade_session", params, pipeline=pipeline, parent_run_id=parent_run_id, output_path=output_path,
                    cfg=cfg)

# %%
try:
    res = run_trade_session(cfg, store_root=store_root or str(cfg.path(cfg.store.root)), model_name=model_name,
                            strategy=strategy, timeframe=timeframe, symbols=symbols, session_date=session_date,
                            broker=broker, mode=mode, model_alias=model_alias, ledger_url=ledger_url)
except ModelNotFoundError as exc:
    res = None
    print(f"nothing to trade: {exc}")

# %%
if res is not None:
    out = work_dir(cfg, output_path, "trade_session")
    stage.set_fingerprint(res.data_fingerprint)
    r = res.result
    r.fills.write_parquet(out / "fills.parquet")
    r.pnl.write_parquet(out / "pnl.parquet")
    r.decisions.write_parquet(out / "decisions.parquet")
    stage.tag_model(res.model)
    stage.log_params({"model_version": res.model.version, "model_alias": res.model.alias,
                      "traded_session": res.session_date.isoformat()})
    print("model at the session:", model_age_status(cfg, f"{res.model.name} v{res.model.version}", r.pnl["ts"].min()))
    stage.log_metrics({"fills": r.fills.height, "orders": r.orders.height, "denials": r.rejections.height,
                       "broker_orders": r.broker_orders.height,
                       "kill_switch_trips": r.kill_switch.height, "net_pnl": r.net_pnl,
                       "commission": float(r.fills["commission"].sum())})
    for name, frame in (("fills", r.fills), ("orders", r.orders), ("risk_denials", r.rejections),
                        ("kill_switch", r.kill_switch), ("broker_orders", r.broker_orders),
                        ("reconcile", r.reconcile.frame() if r.reconcile else pl.DataFrame())):
        stage.log_table(frame, name)
    fig = equity_figure(r.pnl, f"{strategy} on {res.session_date} with {model_name} v{res.model.version} "
                               f"({res.model.alias})")
    stage.log_figure(fig, "session_equity")
    fig.show()
    stage.hand_on(fills_path=str(out / "fills.parquet"), pnl_path=str(out / "pnl.parquet"))

# %% [markdown]
# ## Divergence from the backtest of the same bars; the slippage model
# After every session (replay or live, sim or Alpaca): the backtest re-run on the bars this session
# saw (the store's for a replay, the ones a live session recorded) with the same model (on batch
# features), policy and costs, compared decision by decision: the PnL difference split into
# signal, execution (slippage), costs, risk denials and timing. Logged as a child run tagged with
# the model version; its summary is written on the version's tags (`workbench.divergence.*`). A
# session whose bars cannot be recovered gets a report saying why. The slippage model is refitted
# with this session's fills and saved as a new version (`backtest.costs.slippage_path`).

# %%
if res is not None:
    report, curve = review_session(cfg, res, strategy=strategy, slippage_path=slippage_path)
    stage.log_metrics({f"divergence_{k}": v for k, v in report.metrics.items()
                       if k in ("pnl_diff", "attr_signal", "attr_execution", "attr_costs", "attr_denials",
                                "attr_timing", "missed_trades", "extra_trades", "fill_error_bps_p50")
                       and math.isfinite(v)})
    display(report.table())
    report.figure(f"{model_name} v{res.model.version} on {res.session_date}: session vs backtest").show()
    if curve is not None:
        print(f"slippage model v{curve.version}: {curve.meta['n_fills']} fills, prior "
              f"{curve.prior_fixed_bps:.2f} bps + impact {curve.prior_impact:.3f} x sigma x sqrt(q/V)")

# %% [markdown]
# ## Decisions, orders, fills and risk denials

# %%
if res is not None:
    print(f"session status: {res.result.status}")
    display(res.result.decisions.filter(pl.col("order_qty") != 0).head(50))
    display(res.result.broker_orders.head(50))
    display(res.result.rejections.head(50))
    display(res.result.kill_switch)
    display(res.result.fills)

# %%
stage.finish()
