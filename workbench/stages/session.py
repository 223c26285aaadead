"""Trade-session stage: replay one session bar by bar with the champion (else challenger) model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import plotly.graph_objects as go
import polars as pl

from workbench.config import WorkbenchConfig
from workbench.data.calendar import sessions
from workbench.data.store import BarStore, frame_fingerprint
from workbench.errors import ConfigError
from workbench.execution.session import SessionResult, run_session
from workbench.execution.sim_broker import SimulatedBroker
from workbench.features.sets import FeatureEngine
from workbench.models.registry import RISK_TAG, ModelRef, load_model, resolve_alias, version_tag
from workbench.risk import DecisionPolicy, RiskPolicy
from workbench.stages.validate import default_sectors


@dataclass
class SessionStageResult:
    """The model traded, the session replayed and its results."""

    model: ModelRef
    session_date: date
    result: SessionResult
    data_fingerprint: str


def pick_session(store: BarStore, symbols: list[str], timeframe: str, session_date: str) -> date:
    """Return ``session_date`` or, when empty, the last session present in the store."""
    if session_date:
        return date.fromisoformat(session_date)
    last = (
        store.scan(symbols, timeframe).select(pl.col("ts").max()).collect(engine="in-memory").item()
    )
    if last is None:
        raise ValueError(
            f"no {timeframe} bars for {symbols} in {store.root}; run the ingest step first."
        )
    return last.astimezone(ZoneInfo("America/New_York")).date()


def run_trade_session(
    cfg: WorkbenchConfig,
    *,
    store_root: str,
    model_name: str,
    strategy: str,
    timeframe: str,
    symbols: list[str],
    session_date: str = "",
    warmup_days: int = 10,
) -> SessionStageResult:
    """Load ``model_name@champion`` (else ``@challenger``) and replay one session against a
    simulated broker under the strategy's risk policy (the one its validation used)."""
    strat = cfg.strategy(strategy)
    ref = resolve_alias(model_name)
    lgbm = load_model(ref)
    feats = list(getattr(lgbm, "booster_", lgbm).feature_name())
    store = BarStore(store_root, cfg.store.partition)
    day = pick_session(store, symbols, timeframe, session_date)
    sess = sessions(day - timedelta(days=warmup_days * 2), day, cfg.data.calendar)
    today = sess.filter(pl.col("session") == day)
    if today.is_empty():
        raise ValueError(f"{day} is not a {cfg.data.calendar} session; pick a trading day.")
    start_ts: datetime = today["open"].item()
    first_ts: datetime = sess["open"].min()
    bars = store.read(symbols, timeframe, start=first_ts, end=start_ts + timedelta(days=1))
    engine = FeatureEngine(strat.feature_set, cfg, timeframe=timeframe)
    broker = SimulatedBroker(cfg.backtest.initial_cash, cfg.backtest.costs)
    policy = session_policy(cfg, strategy, timeframe, symbols, ref)

    def predict(rows: pl.DataFrame):
        return lgbm.predict(rows.select(feats).to_pandas())

    res = run_session(
        bars,
        start_ts,
        engine=engine,
        predict=predict,
        features=feats,
        policy=policy,
        broker=broker,
    )
    return SessionStageResult(ref, day, res, frame_fingerprint(bars))


def session_policy(
    cfg: WorkbenchConfig, strategy: str, timeframe: str, symbols: list[str], ref: ModelRef
) -> RiskPolicy:
    """The strategy's risk policy for the traded model version.

    Quantile decisions take the thresholds the version was validated with (model-version tag
    ``workbench.risk``, written when its gates passed): the session never re-fits them.
    """
    strat = cfg.strategy(strategy)
    sectors = default_sectors(cfg, symbols) if strat.risk.limits.sector_cap else None
    if strat.decision.method != "quantile":
        return RiskPolicy.from_config(cfg, strategy, timeframe=timeframe, sectors=sectors)
    raw = version_tag(ref, RISK_TAG)
    if not raw:
        raise ConfigError(
            f"strategies.{strategy}.decision.method is 'quantile' but {ref.name} v{ref.version} "
            f"has no '{RISK_TAG}' tag with its validated thresholds. Fix: validate the version "
            "(04_validate) before trading it."
        )
    d = json.loads(raw)["decision"]
    decision = DecisionPolicy(strat.decision, float(d["long"]), float(d["short"]))
    return RiskPolicy.from_config(
        cfg, strategy, timeframe=timeframe, sectors=sectors, decision=decision
    )


def equity_figure(pnl: pl.DataFrame, title: str) -> go.Figure:
    """Return the session's equity and gross exposure through the day."""
    x = pnl["ts"].dt.convert_time_zone("America/New_York").to_list()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=pnl["equity"].to_list(), name="equity"))
    fig.add_trace(
        go.Scatter(
            x=x, y=pnl["gross_exposure"].to_list(), name="gross exposure", yaxis="y2", opacity=0.5
        )
    )
    fig.update_layout(
        title=title,
        yaxis_title="equity ($)",
        yaxis2={"overlaying": "y", "side": "right", "title": "exposure ($)"},
        height=420,
    )
    return fig
