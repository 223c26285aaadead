"""A trading session in its own process, for the crash suite: run, get killed, run again.

    python session_child.py --ledger L --broker sim|alpaca [--venue V] [--url U] --out OUT

Replays one simulator session (day 1 warms up, day 2 trades) through the whole session engine:
ledger at ``L``, the simulated venue's durable state at ``V`` or the Alpaca-compatible server at
``U``. ``WB_FAILPOINTS`` (see :mod:`workbench.execution.failpoints`) kills it with SIGKILL at a
chosen point; a run that finishes writes a JSON summary to ``OUT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.config import (
    CostsConfig,
    DecisionConfig,
    ExecutionPolicyConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.timeframe import Timeframe
from workbench.execution import failpoints
from workbench.execution.bars import ReplayBars, split_session
from workbench.execution.clock import ReplayClock
from workbench.execution.engine import SessionEngine, session_id
from workbench.execution.ledger import OrderLedger
from workbench.execution.policy import ExecutionPolicy
from workbench.risk import RiskPolicy

SYMBOLS = ["SYN000", "SYN001"]
START = datetime(2024, 11, 25, tzinfo=UTC)
END = datetime(2024, 11, 27, tzinfo=UTC)
SESSION_START = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)
DAY = date(2024, 11, 26)
COSTS = CostsConfig(commission_per_share=0.005, commission_min=1.0, half_spread_bps=2.0)


def session_bars() -> pl.DataFrame:
    return SyntheticSource(seed=3, alpha=0.2).fetch(SYMBOLS, Timeframe.parse("15Min"), START, END)


def predictions(bars: pl.DataFrame) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    out = bars.select(
        "symbol", "ts",
        (-(pl.col("close") / pl.col("close").shift(1).over("symbol") - 1)).alias("prediction"),
    )  # fmt: skip
    return out.with_columns(pl.col("prediction") + rng.normal(0, 2e-4, out.height))


class Lookup:
    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        return bars.select("symbol", "ts")


def policy(**limits: float) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x",
        type="intraday",
        decision=DecisionConfig(long=5e-4, short=-5e-4),
        sizing=SizingConfig(fraction=0.2),
        risk=StrategyRiskConfig(
            limits=LimitsConfig(**{"max_position": 0.25, **limits}), eod_flatten_minutes=15
        ),
    )
    return RiskPolicy.from_strategy(strat, name="crash", timeframe="15Min")


def make_broker(kind: str, venue: str, url: str):
    if kind == "sim":
        from workbench.execution.sim_broker import SimulatedBroker

        return SimulatedBroker(100_000, COSTS, state_url=f"sqlite:///{venue}")
    from workbench.execution.alpaca import AlpacaBroker

    return AlpacaBroker(
        url, environ=os.environ, timeout=1.0, max_retries=3, poll_seconds=0.1,
        watchdog_seconds=1.0, resolve_wait=0.1,
    )  # fmt: skip


@dataclass
class SmallSession:
    """One replayed simulator session's engine, started (history warmed up), and its parts."""

    engine: SessionEngine
    broker: Any
    ledger: OrderLedger
    live: pl.DataFrame  # the session's bars, for ReplayBars
    policy: RiskPolicy

    def close(self) -> None:
        self.broker.close()
        self.ledger.close()


def small_session(
    ledger: str | Path, *, broker: str = "sim", venue: str | Path = "", url: str = "",
    observer: Any = None, settle_seconds: float | None = None, pol: RiskPolicy | None = None,
) -> SmallSession:  # fmt: skip
    """Build and start the session engine of this module's session (day 1 warms up, day 2 is
    replayed): ledger at ``ledger``, the simulated venue's state at ``venue`` (sim) or the
    Alpaca-compatible server at ``url``; ``observer`` sees every bar (metrics)."""
    bars = session_bars()
    table = {(s, t): p for s, t, p in predictions(bars).iter_rows()}
    history, live = split_session(bars, SESSION_START)
    brk = make_broker(broker, str(venue), url)
    led = OrderLedger(f"sqlite:///{ledger}")
    pol = pol or policy()
    engine = SessionEngine(
        session_id=session_id(pol.name, DAY, broker, "replay"), policy=pol, symbols=SYMBOLS,
        features=Lookup(),
        predict=lambda rows: np.array([table.get(k, np.nan) for k in rows.select("symbol", "ts").iter_rows()]),
        feature_names=[], broker=brk, ledger=led,
        execution=ExecutionPolicy(ExecutionPolicyConfig(), brk.capabilities),
        session_date=DAY, clock=ReplayClock(SESSION_START), settle_seconds=settle_seconds,
        observer=observer,
    )  # fmt: skip
    try:
        engine.start(history, strategy=pol.name, broker_name=broker)
    except BaseException:
        brk.close()
        led.close()
        raise
    return SmallSession(engine, brk, led, live, pol)


def run_child(argv: list[str], failpoint_spec: str = "", env: dict | None = None) -> None:
    """Entry point of a forked child (the fork server has the modules imported already; its
    environment is the server's, so the caller passes what it needs in ``env``)."""
    os.environ.update(env or {})
    failpoints.arm(failpoint_spec)
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # everything is closed and durable: skip the interpreter's slow teardown


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ledger", required=True)
    ap.add_argument("--broker", default="sim")
    ap.add_argument("--venue", default="")
    ap.add_argument("--url", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bar-delay", type=float, default=0.0, help="seconds per bar (async loop)")
    a = ap.parse_args(argv)
    sess = small_session(
        a.ledger, broker=a.broker, venue=a.venue, url=a.url,
        settle_seconds=5.0 if a.broker != "sim" else None,
    )  # fmt: skip
    engine = sess.engine
    try:
        if a.bar_delay:  # the live loop: asyncio, SIGTERM/SIGINT handled gracefully
            res = asyncio.run(_run_async(engine, sess.live, a.bar_delay))
        else:
            for t, now in ReplayBars(sess.live):
                engine.step(t, now)
            res = engine.finish()
    finally:
        sess.close()
    by_seq = intents_summary(a.ledger, engine.session_id)
    Path(a.out).write_text(
        json.dumps(
            {
                "intents": by_seq,
                "orders": res.orders.height,
                "status": res.status,
                "session_id": engine.session_id,
                "seen": failpoints.seen(),
            }
        )
    )
    return 0


async def _run_async(engine: SessionEngine, session: pl.DataFrame, delay: float):
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.request_stop)
    Path(os.environ.get("CHILD_READY", "/dev/null")).write_text("ready")

    async def slow():
        async for item in ReplayBars(session).stream():
            yield item
            await asyncio.sleep(delay)

    return await engine.run(slow())


def intents_summary(ledger_path: str, sid: str) -> list[dict]:
    """Per intent (by sequence): symbol, signed qty asked, signed qty filled, its VWAP, its
    commission: what an interrupted run must reproduce (ids differ between ledgers)."""
    led = OrderLedger(f"sqlite:///{ledger_path}")
    try:
        fills: dict[str, list] = {}
        for fr in led.fills(sid):
            fills.setdefault(fr.fill.client_order_id, []).append(fr.fill)
        out = []
        for it in led.intents(sid):
            fs = fills.get(it.client_order_id, [])
            q = sum(f.qty for f in fs)
            out.append(
                {
                    "seq": it.seq,
                    "symbol": it.symbol,
                    "bar_ts": it.bar_ts.isoformat(),
                    "asked": it.request.signed_qty,
                    "filled": round(q, 9),
                    "vwap": round(sum(f.qty * f.price for f in fs) / q, 9) if q else None,
                    "commission": round(sum(f.commission for f in fs), 9),
                    "state": it.state,
                }
            )
        return out
    finally:
        led.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
