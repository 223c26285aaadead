"""Replay a stored session through the session engine in one call (notebooks, tests, parity).

:func:`run_session` is the whole trading path of :class:`~workbench.execution.engine.SessionEngine`
(ledger, reconcile, risk engine, execution policy, broker) driven synchronously over stored
bars: bars before ``session_start`` warm the feature and risk engines up; every bar from
``session_start`` on is processed as the live loop processes it. On the simulated broker with
market orders it equals ``run_backtest(bars, predictions, risk=policy)`` of the same bars: same
orders, denials and fills.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from workbench.config import ExecutionPolicyConfig
from workbench.data.assets import AssetFacts
from workbench.execution.bars import ReplayBars, split_session
from workbench.execution.broker import Broker
from workbench.execution.clock import ReplayClock
from workbench.execution.engine import FeatureUpdater, SessionEngine, SessionResult, session_id
from workbench.execution.ledger import OrderLedger
from workbench.execution.policy import ExecutionPolicy
from workbench.risk.policy import RiskPolicy

if TYPE_CHECKING:
    from workbench.risk.state import KillSwitchStore

__all__ = ["FeatureUpdater", "SessionResult", "run_session"]


def run_session(
    bars: pl.DataFrame,
    session_start: datetime,
    *,
    engine: FeatureUpdater,
    predict: Callable[[pl.DataFrame], np.ndarray],
    features: list[str],
    policy: RiskPolicy,
    broker: Broker,
    assets: Mapping[str, AssetFacts] | None = None,
    store: KillSwitchStore | None = None,
    ledger: OrderLedger | None = None,
    execution: ExecutionPolicy | None = None,
    settle_seconds: float | None = None,
) -> SessionResult:
    """Replay the bars from ``session_start`` on, bar by bar, and trade them through ``broker``.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars of the session and the warm-up before it.
    session_start : datetime
        First bar of the session; earlier bars only warm the engines up.
    engine : FeatureUpdater
        Incremental features (``FeatureEngine``).
    predict : callable
        Feature rows -> predictions.
    features : list of str
        Columns the model reads (rows with a null among them are not predicted).
    policy : RiskPolicy
        The strategy's risk policy (the one its backtest and gates used).
    broker : Broker
        Where orders go (the simulated broker, or any registered broker).
    assets, store : optional
        Asset facts for the limits; the persisted kill-switch state.
    ledger : OrderLedger, optional
        The order ledger (default: a fresh one in a temporary folder).
    execution : ExecutionPolicy, optional
        How orders are worked (default: market orders, as the backtest assumes).
    settle_seconds : float, optional
        Against a broker API: wait up to this long after each bar for its orders to finish.
    """
    history, session = split_session(bars, session_start)
    symbols = sorted(bars["symbol"].unique().to_list())
    tmp = None
    if ledger is None:
        tmp = tempfile.TemporaryDirectory(prefix="wb-session-")
        ledger = OrderLedger(f"sqlite:///{Path(tmp.name) / 'ledger.db'}")
    day = session_start.date()
    engine_ = SessionEngine(
        session_id=session_id(policy.name, day, broker.name, "replay"),
        policy=policy,
        symbols=symbols,
        features=engine,
        predict=predict,
        feature_names=features,
        broker=broker,
        ledger=ledger,
        execution=execution or ExecutionPolicy(ExecutionPolicyConfig(), broker.capabilities),
        session_date=day,
        clock=ReplayClock(session_start),
        killswitch=store,
        assets=assets,
        settle_seconds=settle_seconds,
    )
    try:
        engine_.start(history, strategy=policy.name, broker_name=broker.name)
        for t, now in ReplayBars(session):
            engine_.step(t, now)
        return engine_.finish()
    finally:
        if tmp is not None:
            ledger.close()
            tmp.cleanup()
