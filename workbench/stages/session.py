"""Trade-session stage: replay one session bar by bar with the champion (else challenger) model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import plotly.graph_objects as go
import polars as pl

from workbench.config import WorkbenchConfig
from workbench.data.calendar import sessions
from workbench.data.store import BarStore, frame_fingerprint
from workbench.errors import ConfigError
from workbench.execution.bars import ReplayBars, split_session
from workbench.execution.broker import Broker, make_broker
from workbench.execution.clock import ReplayClock, WallClock
from workbench.execution.engine import SessionEngine, SessionResult, session_id
from workbench.execution.ledger import OrderLedger
from workbench.execution.policy import ExecutionPolicy
from workbench.execution.recording import BarRecorder, record_bars, recorded_bars
from workbench.features.sets import FeatureEngine
from workbench.models.lifecycle import check_tradeable
from workbench.models.registry import (
    CHALLENGER,
    CHAMPION,
    RISK_TAG,
    ModelRef,
    load_model,
    resolve_alias,
    version_tag,
)
from workbench.risk import DecisionPolicy, RiskPolicy
from workbench.risk.state import KillSwitchStore
from workbench.stages.validate import default_sectors

NY = ZoneInfo("America/New_York")


@dataclass
class SessionStageResult:
    """The model traded, the session replayed and its results."""

    model: ModelRef
    session_date: date
    result: SessionResult
    data_fingerprint: str
    bars: pl.DataFrame | None = None  # warm-up and session bars (what the session saw)
    session_start: datetime | None = None  # the session's first bar
    policy: RiskPolicy | None = None  # the risk policy it traded under
    model_object: Any = None  # the loaded model (predicts the divergence report's backtest)
    feature_names: tuple[str, ...] = ()
    session_id: str = ""
    bars_source: str = ""  # where ``bars`` came from (the store replayed, the live recording)
    bars_missing: str = ""  # why the session's bars could not be recovered (empty: they were)


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


def project_url(cfg: WorkbenchConfig, url: str) -> str:
    """An SQLAlchemy URL with a relative SQLite path made absolute under the project root."""
    if not url.startswith("sqlite:///") or url.startswith("sqlite:////"):
        return url
    path = url[len("sqlite:///") :]
    if not path or path.startswith(":memory:") or Path(path).is_absolute():
        return url
    return f"sqlite:///{cfg.path(path)}"


def _safe(session: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", session)


def health_path(cfg: WorkbenchConfig, session: str) -> Path:
    """Where a running session writes its health status (JSON, replaced atomically per bar)."""
    return cfg.path("runs") / "sessions" / f"{_safe(session)}.health.json"


def sim_venue_url(cfg: WorkbenchConfig, ledger_url: str, session: str) -> str | None:
    """Where the simulated venue keeps its state: ``execution.sim_state_url`` (``{session}``
    replaced: a venue per session), else one SQLite file beside an SQLite ledger, else in memory.

    By default the venue is one simulated *account* per ledger, as a broker account is: its cash,
    positions and order ids carry from one day's session to the next, so a swing strategy's
    next session reconciles against what the last one left, and order ids never repeat in the
    ledger (a venue per session would start each day flat, with fresh cash, reusing its ids).
    """
    if cfg.execution.sim_state_url:
        return project_url(cfg, cfg.execution.sim_state_url.replace("{session}", _safe(session)))
    led = project_url(cfg, ledger_url)
    if led.startswith("sqlite:///") and ":memory:" not in led:
        path = Path(led[len("sqlite:///") :])
        return f"sqlite:///{path.with_name(f'{path.stem}-sim.db')}"
    return None


def session_bars_dir(cfg: WorkbenchConfig, ledger_url: str, session: str) -> Path:
    """Where a live session records the bars it saw: beside an SQLite ledger
    (``<ledger>-bars/<session>``), else under ``runs/sessions``."""
    led = project_url(cfg, ledger_url)
    if led.startswith("sqlite:///") and ":memory:" not in led:
        path = Path(led[len("sqlite:///") :])
        return path.with_name(f"{path.stem}-bars") / _safe(session)
    return cfg.path("runs") / "sessions" / f"{_safe(session)}.bars"


def make_session_broker(
    cfg: WorkbenchConfig,
    name: str,
    *,
    session: str,
    ledger_url: str,
    live: bool = False,
    assets: dict | None = None,
    environ: Mapping[str, str] | None = None,
) -> Broker:
    """The session's broker: ``sim`` (a durable simulated account beside the ledger, unless
    ``execution.sim_state_url`` says where: see :func:`sim_venue_url`) or ``alpaca``.

    Live trading needs both ``--live`` and ``WB_LIVE_TRADING=yes``; paper is the default.
    """
    if name == "sim":
        url = sim_venue_url(cfg, ledger_url, session)
        return make_broker(
            "sim", cash=cfg.backtest.initial_cash, costs=cfg.backtest.costs, state_url=url,
            assets=assets,
        )  # fmt: skip
    if name == "alpaca":
        from workbench.execution.alpaca import AlpacaBroker

        return AlpacaBroker.from_config(
            cfg, live=live, environ=os.environ if environ is None else environ
        )
    return make_broker(name)


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
    broker: str = "sim",
    mode: str = "replay",
    ledger_url: str = "",
    model_alias: str = "",
    live: bool = False,
    install_signals: bool = False,
    echo: Callable[[str], None] = print,
    allow_model: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> SessionStageResult:
    """Trade one session of ``strategy`` with ``model_name@model_alias`` (default: champion,
    else challenger) under the strategy's risk policy (the one its validation used).

    ``mode='replay'`` replays a stored session as fast as the broker allows through the whole
    path (ledger, reconcile, risk, execution policy, broker); ``mode='live'`` waits for the open
    and trades live bars until the close. A restart with the same arguments reconciles and
    resumes. The broker's account endpoint is printed before anything is sent.
    The version must pass :func:`workbench.models.lifecycle.check_tradeable` (gate record, age,
    drift); ``allow_model`` names what it may let through (``ungated``, ``expired``, ``drifted``).
    ``environ`` is where an Alpaca broker reads its keys (default :data:`os.environ`; a shadow
    challenger's own paper account passes its own). A live session records the bars it saw
    (:func:`session_bars_dir`): the result's ``bars`` are what its divergence report re-runs.
    """
    if mode not in ("replay", "live"):
        raise ConfigError(f"mode must be 'replay' or 'live'. Got {mode!r} instead.")
    if broker not in ("sim", "alpaca"):
        raise ConfigError(f"broker must be 'sim' or 'alpaca'. Got {broker!r} instead (--broker).")
    if live and broker != "alpaca":
        raise ConfigError(
            f"--live trades a real Alpaca account; it needs --broker alpaca (got {broker!r})."
        )
    if broker == "alpaca":  # refuse a live request without both opt-ins before any other work
        from workbench.execution.alpaca import resolve_trading_endpoint

        resolve_trading_endpoint(
            cfg.alpaca.trading_url, live=live, environ=os.environ if environ is None else environ
        )
    strat = cfg.strategy(strategy)
    aliases = (model_alias,) if model_alias else (CHAMPION, CHALLENGER)
    ref = resolve_alias(model_name, aliases)
    lgbm = load_model(ref)
    feats = list(getattr(lgbm, "booster_", lgbm).feature_name())
    store = BarStore(store_root, cfg.store.partition)
    if mode == "live":
        day = datetime.now(NY).date() if not session_date else date.fromisoformat(session_date)
    else:
        day = pick_session(store, symbols, timeframe, session_date)
    sess = sessions(day - timedelta(days=warmup_days * 2), day, cfg.data.calendar)
    today = sess.filter(pl.col("session") == day)
    if today.is_empty():
        raise ValueError(f"{day} is not a {cfg.data.calendar} session; pick a trading day.")
    start_ts: datetime = today["open"].item()
    close_ts: datetime = today["close"].item()
    first_ts: datetime = sess["open"].min()
    check_tradeable(cfg, ref, at=start_ts, allow=allow_model, echo=echo)  # gate, age, drift
    bars = store.read(symbols, timeframe, start=first_ts, end=start_ts + timedelta(days=1))
    history, session_bars = (
        split_session(bars, start_ts)
        if mode == "replay"
        else (bars.filter(pl.col("ts") < start_ts), bars[:0])
    )
    fe = FeatureEngine(strat.feature_set, cfg, timeframe=timeframe)
    policy = session_policy(cfg, strategy, timeframe, symbols, ref)
    sid = session_id(strategy, day, broker, mode)
    lurl = project_url(cfg, ledger_url or cfg.execution.ledger_url)
    venue = make_session_broker(
        cfg, broker, session=sid, ledger_url=lurl, live=live, environ=environ
    )
    ledger = OrderLedger(lurl)
    recorder = BarRecorder(session_bars_dir(cfg, lurl, sid)) if mode == "live" else None
    ks = KillSwitchStore(project_url(cfg, cfg.risk.state_url))
    exporter = None
    try:
        acct = venue.account()
        echo(
            f"session {sid}: broker {venue.name} at {acct.endpoint} "
            f"({'PAPER' if acct.paper else 'LIVE'} account, equity {acct.equity:,.2f})"
        )

        def predict(rows: pl.DataFrame):
            return lgbm.predict(rows.select(feats).to_pandas())

        ex = cfg.execution
        observer, exporter = session_monitor(cfg, strategy, timeframe, ref, echo=echo)
        engine = SessionEngine(
            session_id=sid, policy=policy, symbols=symbols, features=fe, predict=predict,
            feature_names=feats, broker=venue, ledger=ledger,
            execution=execution_policy(cfg, venue.capabilities), session_date=day,
            mode=mode, clock=ReplayClock(start_ts) if mode == "replay" else WallClock(),
            killswitch=ks, settle_seconds=ex.settle_seconds if mode == "replay" else None,
            on_shutdown=ex.on_shutdown, reconcile_config=ex.reconcile,
            health_path=health_path(cfg, sid),
            model=f"{ref.name} v{ref.version}", observer=observer,
        )  # fmt: skip
        report = engine.start(history, strategy=strategy, broker_name=broker)
        if report.resolved or report.missed_fills or report.orphans:
            echo(f"reconcile: {report.frame()}")
        if mode == "replay":
            source = ReplayBars(session_bars).stream()
        else:
            source = record_bars(
                _live_source(cfg, symbols, timeframe, engine.clock, start_ts, close_ts), recorder
            )
        res = _run_sync(_run(engine, source, install_signals))
    finally:
        if exporter is not None:
            exporter.close()
        venue.close()
        ledger.close()
    source, missing = "replayed from the store", ""
    if recorder is not None:
        bars, source, missing = _live_session_bars(
            store, history, recorder.root, symbols, timeframe, start_ts, sid
        )
    return SessionStageResult(
        ref, day, res, frame_fingerprint(bars), bars=bars, session_start=start_ts, policy=policy,
        model_object=lgbm, feature_names=tuple(feats), session_id=sid, bars_source=source,
        bars_missing=missing,
    )  # fmt: skip


def _live_session_bars(
    store: BarStore, history: pl.DataFrame, recorded_at: Path, symbols: list[str],
    timeframe: str, start_ts: datetime, sid: str,
) -> tuple[pl.DataFrame, str, str]:  # fmt: skip
    """A live session's warm-up and session bars: the ones it recorded, else the store's
    bars of the day (ingested since); with neither, the reason they cannot be recovered."""
    seen = recorded_bars(recorded_at)
    if seen.height:
        both = pl.concat([history.select(seen.columns).cast(seen.schema), seen])
        return both.sort("ts", "symbol"), f"recorded by the session ({recorded_at})", ""
    stored = store.read(
        symbols, timeframe, start=start_ts, end=start_ts + timedelta(days=1), strict=False
    )
    if stored.height:
        both = pl.concat([history, stored.select(history.columns).cast(history.schema)])
        return both.sort("ts", "symbol"), f"the store ({store.root}; none were recorded)", ""
    why = (
        f"session {sid} recorded no bars ({recorded_at} holds none: it saw no bar, or the "
        f"recording was removed) and the store {store.root} holds no {timeframe} bars of "
        f"{symbols} from {start_ts.isoformat()}: the backtest of its bars cannot be re-run, "
        "so no divergence was computed (a live session keeps its recording there; do not "
        "clean it before the review)."
    )
    return history, "", why


def execution_policy(cfg: WorkbenchConfig, capabilities: Any) -> ExecutionPolicy:
    """The session's execution policy: limit orders buffered by at least the slippage model's
    forecast when one is saved (``backtest.costs.slippage_path``), else the configured buffer."""
    from workbench.execution.slippage import SlippageAwarePolicy, SlippageStore

    if cfg.execution.policy.order_type != "limit":
        return ExecutionPolicy(cfg.execution.policy, capabilities)
    curve = SlippageStore(cfg.path(cfg.backtest.costs.slippage_path)).latest()
    return SlippageAwarePolicy(cfg.execution.policy, capabilities, curve=curve)


def session_monitor(
    cfg: WorkbenchConfig, strategy: str, timeframe: str, ref: ModelRef,
    echo: Callable[[str], None] = print,
) -> tuple[Any, Any]:  # fmt: skip
    """The session's observer (drift against the version's reference, alerts, metrics) and, when
    ``metrics.session_port`` is set, its ``/metrics`` server (close it after the session)."""
    from workbench.monitoring.alerts import Alerter
    from workbench.monitoring.metrics import start_exporter
    from workbench.monitoring.reference import load_reference
    from workbench.monitoring.session import SessionMonitor

    metrics, server = start_exporter(cfg, "session") if cfg.metrics.session_port else (None, None)
    if server is not None:
        echo(f"metrics on {server.url}")
    observer = SessionMonitor(
        metrics, strategy=strategy, timeframe=timeframe, calendar=cfg.data.calendar,
        model=f"{ref.name} v{ref.version}", reference=load_reference(ref),
        monitoring=cfg.monitoring,
        alerter=Alerter.from_config(cfg, on_delivery=metrics.observe_alert if metrics else None),
    )  # fmt: skip
    return observer, server


def _run_sync(coro: Any) -> SessionResult:
    """Run the session's event loop; inside a running loop (Jupyter) in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="wb-session") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _run(engine: SessionEngine, source: Any, install_signals: bool) -> SessionResult:
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, engine.request_stop)
    return await engine.run(source)


def _live_source(
    cfg: WorkbenchConfig, symbols: list[str], timeframe: str, clock: Any, open_ts: datetime,
    close_ts: datetime,
) -> Any:  # fmt: skip
    from workbench.data.stream import LiveStream
    from workbench.execution.bars import LiveBars

    async def gen():
        await clock.sleep_until(open_ts)  # wait for the open
        stream = LiveStream.from_config(cfg)
        bars = LiveBars(stream, symbols, timeframe, clock=clock, session_close=close_ts)
        stream.start()
        try:
            async for item in bars.stream_bars():
                yield item
        finally:
            stream.stop()

    return gen()


def session_policy(
    cfg: WorkbenchConfig, strategy: str, timeframe: str, symbols: list[str], ref: ModelRef
) -> RiskPolicy:
    """The strategy's risk policy for the traded model version.

    Quantile and cost-aware decisions take the thresholds the version was validated with
    (model-version tag ``workbench.risk``, written when its gates passed): the session never
    re-fits them.
    """
    strat = cfg.strategy(strategy)
    sectors = default_sectors(cfg, symbols) if strat.risk.limits.sector_cap else None
    if strat.decision.method != "quantile" and not strat.decision.cost_multiples:
        return RiskPolicy.from_config(cfg, strategy, timeframe=timeframe, sectors=sectors)
    raw = version_tag(ref, RISK_TAG)
    if not raw:
        why = (
            "decision.method is 'quantile' (thresholds from the training predictions)"
            if strat.decision.method == "quantile"
            else f"decision.cost_multiples is {list(strat.decision.cost_multiples)} (the search "
            "chose the multiple)"
        )
        raise ConfigError(
            f"strategies.{strategy}.{why}, but {ref.name} v{ref.version} has no '{RISK_TAG}' tag "
            "with its validated thresholds. Fix: validate the version (04_validate) before "
            "trading it."
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


def flatten_session(
    cfg: WorkbenchConfig,
    *,
    strategy: str,
    broker: str = "sim",
    mode: str = "live",
    session_date: str = "",
    ledger_url: str = "",
    live: bool = False,
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Close the positions of ``strategy``'s session now (reduce-only market orders, written
    ahead); reconciles first, like any start. Returns the client order ids sent."""
    day = date.fromisoformat(session_date) if session_date else datetime.now(NY).date()
    sid = session_id(strategy, day, broker, mode)
    lurl = project_url(cfg, ledger_url or cfg.execution.ledger_url)
    ledger = OrderLedger(lurl)
    if ledger.session(sid) is None:
        ledger.close()
        raise ConfigError(
            f"no session {sid!r} in the ledger; pick --date/--broker/--mode of a session that ran "
            "(`wb session status` lists them)."
        )
    venue = make_session_broker(cfg, broker, session=sid, ledger_url=lurl, live=live)
    try:
        symbols = list(ledger.session(sid).params.get("symbols", []))
        policy = RiskPolicy.from_config(cfg, strategy, timeframe=cfg.data.timeframe)
        engine = SessionEngine(
            session_id=sid, policy=policy, symbols=symbols, features=_NoFeatures(),
            predict=lambda rows: rows.height * [0.0], feature_names=[], broker=venue,
            ledger=ledger, execution=ExecutionPolicy(cfg.execution.policy, venue.capabilities),
            session_date=day, mode=mode, clock=WallClock(),
            settle_seconds=cfg.execution.settle_seconds, reconcile_config=cfg.execution.reconcile,
            model=str(ledger.session(sid).params.get("model", "")),
        )  # fmt: skip
        engine.start(pl.DataFrame(), strategy=strategy, broker_name=broker)
        acct = venue.account()
        echo(f"flattening {sid} at {acct.endpoint} ({'PAPER' if acct.paper else 'LIVE'})")
        sent = engine.flatten()
        engine._settle()
        return sent
    finally:
        venue.close()
        ledger.close()


class _NoFeatures:
    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame()


def session_status(
    cfg: WorkbenchConfig, ledger_url: str | None, session: str | None
) -> dict[str, Any]:
    """The status of one session (default: the latest) as plain data.

    Reading never creates a ledger: a missing SQLite file is "no sessions yet" for the configured
    ledger, and an error naming the path for one given with ``--ledger``."""
    url = project_url(cfg, ledger_url or cfg.execution.ledger_url)
    file = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if file and not file.startswith(":memory:") and not Path(file).exists():
        if ledger_url:
            raise ConfigError(
                f"--ledger {ledger_url!r}: no order ledger at {file}. Fix: pass the ledger a "
                f"session wrote (`wb session run --ledger ...`), or leave --ledger out to read "
                f"{cfg.execution.ledger_url}."
            )
        return {"sessions": []}
    ledger = OrderLedger(url)
    try:
        recs = ledger.sessions()
        if not recs:
            return {"sessions": []}
        rec = next((r for r in recs if r.session_id == session), None) if session else None
        if session and rec is None:
            raise ConfigError(
                f"no session {session!r} in the ledger; known: {[r.session_id for r in recs][-10:]}"
            )
        rec = rec or max(recs, key=lambda r: r.updated_at)
        frames = ledger.frames(rec.session_id)
        fills = frames["fills"]
        ks = KillSwitchStore(project_url(cfg, cfg.risk.state_url))
        try:
            state = ks.load(rec.strategy)
        finally:
            ks.close()
        health_file = health_path(cfg, rec.session_id)
        health = json.loads(health_file.read_text()) if health_file.exists() else {}
        return {
            "session": rec.session_id,
            "status": rec.status,
            "reason": rec.reason,
            "last_bar": rec.last_bar_ts.isoformat() if rec.last_bar_ts else None,
            "positions": ledger.positions(rec.session_id),
            "open_orders": len(ledger.orders(rec.session_id, open_only=True)),
            "orders": frames["orders"].to_dicts(),
            "fills": fills.to_dicts(),
            "commission": float(fills["commission"].sum()) if fills.height else 0.0,
            "equity": health.get("equity"),
            "pnl": health.get("pnl"),
            "kill_switch": state.state,
            "kill_switch_reason": state.reason,
            "sessions": [r.session_id for r in recs],
        }
    finally:
        ledger.close()


def review_session(
    cfg: WorkbenchConfig,
    res: SessionStageResult,
    *,
    strategy: str,
    slippage_path: str = "",
    log: bool = True,
    learn_slippage: bool = True,
    echo: Callable[[str], None] = print,
) -> tuple[Any, Any]:
    """After every session (replayed or live, simulated or Alpaca): the divergence report against
    the backtest of its own bars (the store's for a replay, the ones it recorded for a live
    session; same model on batch features, same policy and costs) and the slippage model
    refitted with its fills. A session whose bars could not be recovered gets a report that
    says why (``report.reason``; logged all the same, never skipped in silence). With ``log`` (inside the session's MLflow run) the report becomes a child run
    tagged with the model version, its summary goes on the version's tags, and the new
    slippage version is logged as an artifact. The slippage model lives in ``slippage_path``
    (empty: ``backtest.costs.slippage_path``); ``learn_slippage=False`` leaves it alone (a
    shadow arm on bars the champion already taught). Returns ``(report, curve)``.
    """
    from workbench.execution.divergence import (
        divergence,
        log_divergence,
        replay_backtest,
        unavailable,
    )
    from workbench.execution.slippage import SlippageModel, SlippageStore, log_curve
    from workbench.features.sets import build_features

    if res.bars is None or res.session_start is None or res.policy is None:
        raise ConfigError("review_session needs the result of run_trade_session (bars, policy).")
    bars = res.bars
    costs = cfg.backtest.costs
    if res.bars_missing:
        report = unavailable(res.bars_missing, pnl_session=res.result.net_pnl)
        echo(f"divergence: not computed: {report.reason}")
    else:
        feats = list(res.feature_names)
        table = build_features(bars, cfg.strategy(strategy).feature_set, cfg)
        ready = table.drop_nulls(feats) if feats else table
        preds = ready.select("symbol", "ts").with_columns(
            pl.Series("prediction", res.model_object.predict(ready.select(feats).to_pandas()))
            if ready.height
            else pl.lit(None, dtype=pl.Float64).alias("prediction")
        )
        bt = replay_backtest(
            bars, preds, res.policy, res.session_start, costs=costs,
            initial_cash=cfg.backtest.initial_cash,
        )  # fmt: skip
        report = divergence(res.result, bt, bars, res.session_start, backtest_predictions=preds)
        m = report.metrics
        echo(
            f"divergence ({res.bars_source or 'bars given'}): session {m['pnl_session']:,.2f} vs "
            f"backtest {m['pnl_backtest']:,.2f} (signal {m['attr_signal']:,.2f}, execution "
            f"{m['attr_execution']:,.2f}, costs {m['attr_costs']:,.2f}, denials "
            f"{m['attr_denials']:,.2f}, timing {m['attr_timing']:,.2f})"
        )
    store = SlippageStore(cfg.path(slippage_path or costs.slippage_path))
    model = SlippageModel(
        estimate_span=costs.estimate_span, learn_paper_impact=costs.learn_paper_impact
    )
    learn = learn_slippage and res.result.fills.height > 0 and not res.bars_missing
    curve = store.update(res.result.fills, bars, model) if learn else None
    if log:
        import mlflow

        log_divergence(
            report, res.model, session_id=res.session_id,
            session_date=res.session_date.isoformat(),
            extra_tags={"bars_source": res.bars_source} if res.bars_source else None,
        )  # fmt: skip
        if curve is not None and mlflow.active_run() is not None:
            log_curve(curve, store.root)
    return report, curve


def review_and_log(
    cfg: WorkbenchConfig,
    res: SessionStageResult,
    *,
    strategy: str,
    echo: Callable[[str], None] = print,
) -> Any:
    """``wb session run``'s review of the session it traded: :func:`review_session` with the
    tracking store set up, the report logged as a run of its own (no stage run around it).
    Returns the report."""
    from workbench.tracking import setup

    setup(cfg)
    report, _ = review_session(cfg, res, strategy=strategy, echo=echo)
    return report
