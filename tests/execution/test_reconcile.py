"""Start-up reconciliation scenarios against the Alpaca-compatible test server and the sim venue.

An order placed outside the workbench, a fill missed while the session was down, a partial fill
then a cancel, an intent whose outcome was unknown, and a position the ledger cannot explain
(which must halt the session and trip the kill switch, never be adopted).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from tests.alpaca.trading_stub import KEY_ID, SECRET, TradingStub
from workbench.config import (
    CostsConfig,
    ExecutionPolicyConfig,
    ReconcileConfig,
    SizingConfig,
    StrategyConfig,
)
from workbench.execution.alpaca import AlpacaBroker
from workbench.execution.clock import ReplayClock
from workbench.execution.engine import SessionEngine, SessionHalted
from workbench.execution.ledger import OrderLedger
from workbench.execution.orders import OrderRequest, OrderStatus, Side
from workbench.execution.policy import ExecutionPolicy
from workbench.execution.reconcile import reconcile
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk import RiskPolicy
from workbench.risk.state import KillSwitchStore

ENV = {"APCA_API_KEY_ID": KEY_ID, "APCA_API_SECRET_KEY": SECRET}
NOW = datetime(2024, 11, 26, 15, 0, tzinfo=UTC)
SID = "rec:2024-11-26:alpaca:replay"


@pytest.fixture
def stub():
    with TradingStub(fill_mode="manual") as s:
        yield s


@pytest.fixture
def ledger(tmp_path: Path):
    led = OrderLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.open_session(
        SID, strategy="rec", broker="alpaca", mode="replay", session_date=date(2024, 11, 26)
    )
    led.snapshot_positions(SID, {}, kind="start", ts=NOW)
    yield led
    led.close()


def _broker(stub: TradingStub) -> AlpacaBroker:
    return AlpacaBroker(stub.url, environ=ENV, stream=False, timeout=2.0, max_retries=2)


def _req(cid: str, side: Side = Side.BUY, qty: float = 10) -> OrderRequest:
    return OrderRequest(cid, "SYN000", side, qty=qty, decided_at=NOW)


def _send(ledger: OrderLedger, broker, cid: str, seq: int, **kw):
    req = _req(cid, **kw)
    ledger.add_intent(SID, seq, req, bar_ts=NOW)
    order = broker.submit(req)
    ledger.mark_acked(cid, order, NOW)
    return order


def test_order_placed_outside_the_workbench_is_cancelled(stub, ledger) -> None:
    stub.place_external_order("SYN001", "buy", 5, type="limit", limit_price=1.0)
    with _broker(stub) as b:
        rep = reconcile(ledger, b, SID, now=NOW, config=ReconcileConfig(orphan_orders="cancel"))
        assert [(s, a) for _, s, a in rep.orphans] == [("SYN001", "cancel")]
        assert b.open_orders() == []
        assert rep.ok


def test_orphan_can_be_adopted_or_halt(stub, ledger) -> None:
    ext = stub.place_external_order("SYN001", "buy", 5, type="limit", limit_price=1.0)
    with _broker(stub) as b:
        rep = reconcile(ledger, b, SID, now=NOW, config=ReconcileConfig(orphan_orders="halt"))
        assert not rep.ok and "orphan order" in rep.reason
        rep = reconcile(ledger, b, SID, now=NOW, config=ReconcileConfig(orphan_orders="adopt"))
        assert rep.ok
        oid = ext["id"] if isinstance(ext, dict) else ext
        assert ledger.order(oid) is not None  # recorded, still working at the broker
        assert len(b.open_orders()) == 1


def test_fill_missed_while_down_is_recorded(stub, ledger) -> None:
    with _broker(stub) as b:
        o = _send(ledger, b, "wb-rec-1", 0)
    stub.fill(o.id)  # the session is down: nobody hears the event
    with _broker(stub) as b:
        rep = reconcile(ledger, b, SID, now=NOW)
    assert rep.ok
    assert [(f.symbol, f.qty) for f in rep.missed_fills] == [("SYN000", 10.0)]
    assert ledger.positions(SID) == {"SYN000": 10.0}
    assert ledger.order(o.id).status is OrderStatus.FILLED


def test_partial_fill_then_cancel(stub, ledger) -> None:
    with _broker(stub) as b:
        o = _send(ledger, b, "wb-rec-2", 0)
        stub.fill(o.id, qty=4)
        b.cancel(o.id)
    with _broker(stub) as b:
        rep = reconcile(ledger, b, SID, now=NOW)
    assert rep.ok
    got = ledger.order(o.id)
    assert got.status is OrderStatus.CANCELED and got.filled_qty == 4
    assert got.remaining == 6  # the engine releases this remainder from its pending orders
    assert ledger.positions(SID) == {"SYN000": 4.0}


def test_intent_of_unknown_outcome_is_resolved_by_client_order_id(stub, ledger) -> None:
    with _broker(stub) as b:
        sent = _req("wb-rec-3")
        ledger.add_intent(SID, 0, sent, bar_ts=NOW)
        b.submit(sent)  # reached the broker; the answer was never recorded (a crash)
        ledger.add_intent(SID, 1, _req("wb-rec-4"), bar_ts=NOW)  # never sent
        rep = reconcile(ledger, b, SID, now=NOW)
    assert dict(rep.resolved)["wb-rec-4"] == "not_found"
    assert dict(rep.resolved)["wb-rec-3"].startswith("found")
    assert ledger.intent("wb-rec-3").state == "acked"
    assert ledger.intent("wb-rec-4").state == "not_found"
    assert stub.count_orders("wb-rec-3") == 1 and stub.count_orders("wb-rec-4") == 0


def test_position_mismatch_halts_and_trips_never_adopts(stub, tmp_path, caplog) -> None:
    stub.set_position("SYN000", 25, 100.0)  # a manual trade the ledger knows nothing about
    ledger = OrderLedger(f"sqlite:///{tmp_path / 'fresh.db'}")
    ks = KillSwitchStore(f"sqlite:///{tmp_path / 'risk.db'}")
    strat = StrategyConfig(feature_set="x", sizing=SizingConfig(fraction=0.1))
    policy = RiskPolicy.from_strategy(strat, name="rec", timeframe="5Min")
    with _broker(stub) as b:
        eng = SessionEngine(
            session_id=SID, policy=policy, symbols=["SYN000"], features=None, predict=None,
            feature_names=[], broker=b, ledger=ledger,
            execution=ExecutionPolicy(ExecutionPolicyConfig(), b.capabilities),
            session_date=date(2024, 11, 26), clock=ReplayClock(NOW), killswitch=ks,
        )  # fmt: skip
        with (
            caplog.at_level(logging.ERROR),
            pytest.raises(SessionHalted, match="SYN000: ledger 0 vs broker 25"),
        ):
            eng.start(pl.DataFrame(), strategy="rec", broker_name="alpaca")
    state = ks.load("rec")
    assert state.halted and state.rule == "reconcile" and "SYN000" in state.reason
    assert ledger.session(SID).status == "halted"
    assert ledger.positions(SID) == {}  # not adopted
    assert any("position mismatch" in r.getMessage() for r in caplog.records)
    ks.close()
    ledger.close()


def test_sim_venue_replays_events_for_exact_fills(tmp_path: Path) -> None:
    """A fill whose event was lost (crash) comes back exactly, commission included."""
    url = f"sqlite:///{tmp_path / 'venue.db'}"
    led = OrderLedger(f"sqlite:///{tmp_path / 'l.db'}")
    sid = "rec:2024-11-26:sim:replay"
    led.open_session(
        sid, strategy="rec", broker="sim", mode="replay", session_date=date(2024, 11, 26)
    )
    led.snapshot_positions(sid, {}, kind="start", ts=NOW)
    bar = {
        "symbol": "SYN000",
        "ts": NOW,
        "open": 50.0,
        "high": 51.0,
        "low": 49.0,
        "close": 50.0,
        "volume": 1e5,
    }
    v = SimulatedBroker(100_000, CostsConfig(commission_min=1.0), state_url=url)
    v.on_bar(bar)
    req = _req("wb-rec-5")
    led.add_intent(sid, 0, req, bar_ts=NOW)
    led.mark_acked("wb-rec-5", v.submit(req), NOW)
    v.on_bar({**bar, "ts": datetime(2024, 11, 26, 15, 5, tzinfo=UTC), "open": 50.5})
    v.events()  # drained by a process that died before recording them
    v.close()
    v = SimulatedBroker(1, state_url=url)
    rep = reconcile(led, v, sid, now=NOW)
    (f,) = rep.missed_fills
    assert (f.qty, f.price, f.commission) == (10.0, v.fills[0].price, v.fills[0].commission)
    assert f.commission > 0
    v.close()
    led.close()
