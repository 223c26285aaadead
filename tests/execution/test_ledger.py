"""Order ledger: write-ahead intents, idempotent writes, fills derived once from cumulative qty."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import count
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.errors import ParameterError, StoreError
from workbench.execution import ledger as ledger_mod
from workbench.execution.ledger import INTENT_STATES, OrderLedger, _order_dict
from workbench.execution.orders import BrokerOrder, OrderRequest, OrderStatus, Side

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
DAY = date(2024, 1, 2)


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> OrderLedger:
    """The ledger on SQLite only: for tests that read its file from another connection."""
    lg = OrderLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    lg.open_session("s1", strategy="rev", broker="sim", mode="paper", session_date=DAY)
    yield lg
    lg.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> OrderLedger:
    """A ledger with session s1, on SQLite and on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres").database()
    lg = OrderLedger(url)
    lg.open_session("s1", strategy="rev", broker="sim", mode="paper", session_date=DAY)
    yield lg
    lg.close()


def req(
    cid: str = "c1", symbol: str = "AAPL", side: Side = Side.BUY, qty: float = 100
) -> OrderRequest:
    return OrderRequest(cid, symbol, side, qty=qty, decided_at=T0, intent="entry")


def bo(
    filled: float = 0.0,
    avg: float | None = None,
    status: OrderStatus = OrderStatus.NEW,
    *,
    oid: str = "o1",
    cid: str = "c1",
    symbol: str = "AAPL",
    side: Side = Side.BUY,
    qty: float = 100,
    **kw: object,
) -> BrokerOrder:
    return BrokerOrder(oid, cid, symbol, side, qty, filled, avg, status, **kw)


def sent(lg: OrderLedger, cid: str = "c1", seq: int = 0, **kw: object) -> None:
    """An intent committed and acknowledged (nothing filled yet)."""
    r = req(cid, **kw)
    lg.add_intent("s1", seq, r, bar_ts=T0)
    lg.mark_acked(cid, bo(oid=f"o-{cid}", cid=cid, symbol=r.symbol, side=r.side), T0)


# -- sessions ----------------------------------------------------------------------------------------


def test_open_session_is_idempotent_and_refuses_a_different_session(ledger: OrderLedger) -> None:
    first = ledger.session("s1")
    assert first is not None and first.status == "running" and first.next_seq == 0
    again = ledger.open_session(
        "s1", strategy="rev", broker="sim", mode="paper", session_date=DAY, params={"x": 1}
    )
    assert again == first and again.params == {}  # params are stored once, on creation
    with pytest.raises(StoreError, match=r"already exists.*broker 'sim' \(asked 'alpaca'\)"):
        ledger.open_session("s1", strategy="rev", broker="alpaca", mode="paper", session_date=DAY)
    with pytest.raises(StoreError, match="session_date"):
        ledger.open_session(
            "s1", strategy="rev", broker="sim", mode="paper", session_date=date(2024, 1, 3)
        )
    s2 = ledger.open_session(
        "s2", strategy="mom", broker="sim", mode="live", session_date=DAY, params={"k": [1, 2.5]}
    )
    assert s2.params == {"k": [1, 2.5]} and s2.session_date == DAY
    assert s2.started_at.tzinfo is not None and s2.started_at.utcoffset() == timedelta(0)
    assert [s.session_id for s in ledger.sessions()] == ["s1", "s2"]
    assert [s.session_id for s in ledger.sessions("mom")] == ["s2"]
    assert ledger.session("nope") is None


def test_progress_never_moves_backwards_and_status(ledger: OrderLedger) -> None:
    ledger.set_progress("s1", T0 + timedelta(minutes=5))
    ledger.set_progress("s1", T0 + timedelta(minutes=5))  # same bar: fine
    with pytest.raises(StoreError, match="cannot move backwards"):
        ledger.set_progress("s1", T0)
    est = timezone(timedelta(hours=-5))
    ledger.set_progress("s1", datetime(2024, 1, 2, 9, 40, tzinfo=est))  # 14:40 UTC
    s = ledger.session("s1")
    assert s is not None and s.last_bar_ts == T0 + timedelta(minutes=10)
    assert s.last_bar_ts.tzinfo == UTC
    with pytest.raises(ParameterError, match="naive"):
        ledger.set_progress("s1", datetime(2024, 1, 3))
    ledger.set_status("s1", "halted", "daily loss")
    s = ledger.session("s1")
    assert s is not None and (s.status, s.reason) == ("halted", "daily loss")
    with pytest.raises(ParameterError, match="status"):
        ledger.set_status("s1", "paused")
    with pytest.raises(StoreError, match="no session 'zz'.*Fix"):
        ledger.set_progress("zz", T0)


# -- intents -----------------------------------------------------------------------------------------


def test_add_intent_is_write_ahead_idempotent_and_refuses_other_content(
    ledger: OrderLedger,
) -> None:
    r = req("c1", qty=12.5)
    a = ledger.add_intent("s1", 3, r, bar_ts=T0)
    assert (a.state, a.seq, a.symbol, a.broker_order_id, a.error) == (
        "pending",
        3,
        "AAPL",
        None,
        "",
    )
    assert a.request == r and a.bar_ts == T0
    assert ledger.next_seq("s1") == 4  # max(next_seq, seq + 1)
    assert ledger.add_intent("s1", 3, r, bar_ts=T0) == a  # same content: the existing record
    with pytest.raises(StoreError, match="different content.*request"):
        ledger.add_intent("s1", 3, replace(r, qty=13.0), bar_ts=T0)
    with pytest.raises(StoreError, match="seq 3 \\(asked 4\\)"):
        ledger.add_intent("s1", 4, r, bar_ts=T0)
    with pytest.raises(StoreError, match="already has intent seq 3"):
        ledger.add_intent("s1", 3, req("c2"), bar_ts=T0)
    ledger.add_intent("s1", 1, req("c0"), bar_ts=T0)  # an earlier seq does not lower next_seq
    assert ledger.next_seq("s1") == 4 and ledger.session("s1").next_seq == 4
    assert [i.seq for i in ledger.intents("s1")] == [1, 3]
    with pytest.raises(StoreError, match="no session"):
        ledger.add_intent("nope", 0, req("c9"), bar_ts=T0)


def test_intent_states(ledger: OrderLedger) -> None:
    for i, cid in enumerate(["a", "b", "c"]):
        ledger.add_intent("s1", i, req(cid), bar_ts=T0)
    ledger.mark_acked("a", bo(oid="oa", cid="a"), T0)
    ledger.mark_refused("b", "insufficient buying power")
    ledger.mark_not_found("c")
    assert [(i.client_order_id, i.state) for i in ledger.intents("s1")] == [
        ("a", "acked"),
        ("b", "refused"),
        ("c", "not_found"),
    ]
    assert ledger.intent("a").broker_order_id == "oa"
    assert ledger.intent("b").error == "insufficient buying power"
    assert [i.client_order_id for i in ledger.intents("s1", ["refused", "not_found"])] == ["b", "c"]
    with pytest.raises(StoreError, match="cannot be refused"):
        ledger.mark_refused("a", "late")
    with pytest.raises(StoreError, match="no intent"):
        ledger.mark_acked("zz", bo(oid="oz", cid="zz"), T0)
    assert ledger.intent("zz") is None
    with pytest.raises(StoreError, match="client order id 'other'"):
        ledger.mark_acked("c", bo(oid="oc", cid="other"), T0)
    ledger.mark_acked("c", bo(oid="oc", cid=""), T0)  # a broker that echoes no id: the intent's
    assert ledger.order_by_client_id("c").id == "oc"
    # a stream event for a pending intent proves the broker got it
    ledger.add_intent("s1", 3, req("d"), bar_ts=T0)
    ledger.apply_order("s1", bo(oid="od", cid="d"), event="new", ts=T0)
    assert (ledger.intent("d").state, ledger.intent("d").broker_order_id) == ("acked", "od")


# -- fill derivation (hand cases) --------------------------------------------------------------------


def test_two_partials_then_a_fill(ledger: OrderLedger) -> None:
    sent(ledger)
    t = T0 + timedelta(seconds=1)
    (f1,) = ledger.apply_order(
        "s1", bo(30, 10.0, OrderStatus.PARTIALLY_FILLED, oid="o-c1"), event="partial_fill", ts=t,
        execution_id="e1", price=10.0, qty=30, commission=0.3, venue="sim",
    )  # fmt: skip
    (f2,) = ledger.apply_order(
        "s1", bo(70, 10.4, OrderStatus.PARTIALLY_FILLED, oid="o-c1"), event="partial_fill", ts=t,
        execution_id="e2", price=10.7, qty=40,
    )  # fmt: skip
    # the event's own qty (25) is not F - F0 (30): the price is derived from the averages
    (f3,) = ledger.apply_order(
        "s1", bo(100, 10.5, OrderStatus.FILLED, oid="o-c1"), event="fill", ts=t,
        execution_id="e3", price=10.9, qty=25,
    )  # fmt: skip
    assert [(f.execution_id, f.qty) for f in (f1, f2, f3)] == [("e1", 30), ("e2", 40), ("e3", 30)]
    assert (f1.price, f2.price) == (10.0, 10.7)
    assert f3.price == pytest.approx((100 * 10.5 - 70 * 10.4) / 30)  # 10.7333...
    assert f1.commission == 0.3 and f1.venue == "sim" and f1.decided_at == T0
    assert f1.client_order_id == "c1" and f1.order_id == "o-c1" and f1.symbol == "AAPL"
    o = ledger.order("o-c1")
    assert o is not None and (o.filled_qty, o.filled_avg_price, o.status) == (
        100,
        10.5,
        OrderStatus.FILLED,
    )
    assert [r.fill for r in ledger.fills("s1")] == [f1, f2, f3]
    assert ledger.positions("s1") == {"AAPL": 100}


def test_replayed_execution_ids_make_one_fill(ledger: OrderLedger) -> None:
    sent(ledger)
    o = bo(40, 10.0, OrderStatus.PARTIALLY_FILLED, oid="o-c1")
    got = [
        ledger.apply_order(
            "s1", o, event="partial_fill", ts=T0, execution_id="e1", price=10.0, qty=40
        )
        for _ in range(3)
    ]
    assert [len(g) for g in got] == [1, 0, 0]
    assert len(ledger.fills("s1")) == 1
    assert len([e for e in ledger.events("s1") if e["event"] == "partial_fill"]) == 3  # all kept


def test_rest_poll_after_stream_fill_adds_nothing(ledger: OrderLedger) -> None:
    sent(ledger)
    filled = bo(100, 10.0, OrderStatus.FILLED, oid="o-c1")
    assert (
        len(
            ledger.apply_order(
                "s1", filled, event="fill", ts=T0, execution_id="e1", price=10.0, qty=100
            )
        )
        == 1
    )
    assert ledger.apply_order("s1", filled, event="rest", ts=T0) == []
    assert [r.fill.execution_id for r in ledger.fills("s1")] == ["e1"]


def test_stream_fill_after_poll_adds_nothing(ledger: OrderLedger) -> None:
    sent(ledger)
    filled = bo(100, 10.0, OrderStatus.FILLED, oid="o-c1")
    (f,) = ledger.apply_order("s1", filled, event="rest", ts=T0)
    assert (f.execution_id, f.qty, f.price) == ("o-c1@100", 100, 10.0)
    assert (
        ledger.apply_order(
            "s1", filled, event="fill", ts=T0, execution_id="e1", price=10.0, qty=100
        )
        == []
    )
    assert len(ledger.fills("s1")) == 1


def test_avg_price_derivation_and_sell_sign(ledger: OrderLedger) -> None:
    sent(ledger, side=Side.SELL)
    sell = {"oid": "o-c1", "side": Side.SELL}
    (a,) = ledger.apply_order(
        "s1", bo(40, 10.0, OrderStatus.PARTIALLY_FILLED, **sell), event="rest", ts=T0
    )
    (b,) = ledger.apply_order("s1", bo(100, 10.6, OrderStatus.FILLED, **sell), event="rest", ts=T0)
    assert (a.qty, a.price) == (-40, 10.0)
    assert b.qty == -60 and b.price == pytest.approx(11.0)  # (100*10.6 - 40*10) / 60
    assert ledger.positions("s1") == {"AAPL": -100.0}
    ledger.snapshot_positions("s1", {"AAPL": 100.0}, kind="start", ts=T0)
    assert ledger.positions("s1") == {}  # 100 - 100: zero dropped


def test_a_reused_execution_id_with_more_filled_still_books_the_new_qty(
    ledger: OrderLedger,
) -> None:
    sent(ledger)
    ledger.apply_order(
        "s1", bo(10, 5.0, oid="o-c1"), event="partial_fill", ts=T0, execution_id="e1"
    )
    (f,) = ledger.apply_order(
        "s1", bo(25, 5.0, oid="o-c1"), event="partial_fill", ts=T0, execution_id="e1"
    )
    assert (f.execution_id, f.qty) == ("o-c1@25", 15)  # cumulative is the truth


def test_stale_snapshot_keeps_the_cumulative_fill(ledger: OrderLedger) -> None:
    sent(ledger)
    ledger.apply_order(
        "s1", bo(60, 10.0, OrderStatus.PARTIALLY_FILLED, oid="o-c1"), event="rest", ts=T0
    )
    assert (
        ledger.apply_order(
            "s1", bo(20, 9.0, OrderStatus.PARTIALLY_FILLED, oid="o-c1"), event="partial_fill", ts=T0
        )
        == []
    )
    o = ledger.order("o-c1")
    assert (o.filled_qty, o.filled_avg_price) == (60, 10.0)


# -- property: any interleaving and duplication of snapshots --------------------------------------

_PROP = OrderLedger("sqlite://")
_PROP.open_session("p", strategy="prop", broker="sim", mode="paper", session_date=DAY)
_IDS = count()

qtys = st.one_of(st.integers(1, 500).map(float), st.floats(0.001, 1000, allow_nan=False))
prices = st.floats(0.5, 5000, allow_nan=False)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[float, float]], list[tuple[int, str]], Side]:
    execs = draw(st.lists(st.tuples(qtys, prices), min_size=1, max_size=6))
    n = len(execs)
    seq = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.sampled_from(["stream", "rest", "weird"])),
            max_size=3 * n,
        )
    )
    seq.insert(draw(st.integers(0, len(seq))), (n - 1, draw(st.sampled_from(["stream", "rest"]))))
    return execs, seq, draw(st.sampled_from(list(Side)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_fills_follow_cumulative_qty_under_any_delivery(case: tuple) -> None:
    execs, seq, side = case
    oid = f"p{next(_IDS)}"
    snaps, f, notional = [], 0.0, 0.0
    for q, p in execs:
        f += q
        notional += q * p
        snaps.append((f, notional / f, q, p))
    fills = []
    for i, kind in seq:
        cum, avg, q, p = snaps[i]
        status = OrderStatus.FILLED if i == len(snaps) - 1 else OrderStatus.PARTIALLY_FILLED
        o = bo(cum, avg, status, oid=oid, cid=f"x-{oid}", side=side, qty=snaps[-1][0])
        if kind == "stream":
            fills += _PROP.apply_order(
                "p", o, event="partial_fill", ts=T0, execution_id=f"{oid}-e{i}", price=p, qty=q
            )
        else:
            fills += _PROP.apply_order("p", o, event=kind, ts=T0)
    final_qty, final_avg = snaps[-1][0], snaps[-1][1]
    sign = 1.0 if side is Side.BUY else -1.0
    total = sum(x.qty for x in fills)
    assert total == pytest.approx(sign * final_qty, rel=1e-9)
    vwap = sum(x.qty * x.price for x in fills) / total
    assert vwap == pytest.approx(final_avg, rel=1e-9)
    assert len({x.execution_id for x in fills}) == len(fills)
    stored = _PROP.order(oid)
    assert (
        stored is not None
        and stored.filled_qty == final_qty
        and stored.filled_avg_price == final_avg
    )


# -- booking, positions, snapshots ---------------------------------------------------------------


def test_book_fills_is_idempotent_and_survives_a_crash_between_book_and_use(
    ledger: OrderLedger,
) -> None:
    sent(ledger, "a", 0)
    sent(ledger, "b", 1, symbol="MSFT", side=Side.SELL)
    ledger.apply_order("s1", bo(50, 10.0, oid="o-a", cid="a"), event="partial_fill", ts=T0)
    ledger.apply_order(
        "s1", bo(20, 30.0, oid="o-b", cid="b", symbol="MSFT", side=Side.SELL), event="fill", ts=T0
    )
    bar1 = T0 + timedelta(minutes=5)
    first = ledger.book_fills("s1", bar1)
    assert [(f.symbol, f.qty) for f in first] == [("AAPL", 50), ("MSFT", -20)]
    assert ledger.book_fills("s1", bar1) == first  # the restart books nothing new, returns the same
    assert ledger.fills_booked_at("s1", bar1) == first
    assert ledger.fills("s1", unbooked_only=True) == []
    ledger.apply_order(
        "s1", bo(100, 10.0, OrderStatus.FILLED, oid="o-a", cid="a"), event="fill", ts=T0
    )
    assert len(ledger.fills("s1", unbooked_only=True)) == 1
    bar2 = bar1 + timedelta(minutes=5)
    (late,) = ledger.book_fills("s1", bar2)
    assert late.qty == 50
    assert [r.booked_bar_ts for r in ledger.fills("s1")] == [bar1, bar1, bar2]
    assert ledger.book_fills("s1", bar1) == first  # still the same set


def test_positions_are_the_start_snapshot_plus_fills(ledger: OrderLedger) -> None:
    assert ledger.snapshot("s1") is None
    ledger.snapshot_positions("s1", {"AAPL": 10.0, "TSLA": -5.0, "IBM": 0.1}, kind="start", ts=T0)
    ledger.snapshot_positions("s1", {"AAPL": 999.0}, kind="start", ts=T0)  # kept the first
    assert ledger.snapshot("s1") == {"AAPL": 10.0, "TSLA": -5.0, "IBM": 0.1}
    sent(ledger, "a", 0)
    sent(ledger, "b", 1, symbol="TSLA")
    sent(ledger, "c", 2, symbol="IBM", side=Side.SELL)
    ledger.apply_order("s1", bo(7, 1.0, oid="o-a", cid="a"), event="partial_fill", ts=T0)
    ledger.apply_order("s1", bo(5, 1.0, oid="o-b", cid="b", symbol="TSLA"), event="fill", ts=T0)
    ledger.apply_order(
        "s1", bo(0.3, 1.0, oid="o-c", cid="c", symbol="IBM", side=Side.SELL), event="fill", ts=T0
    )
    pos = ledger.positions("s1")
    assert pos.keys() == {"AAPL", "IBM"} and pos["AAPL"] == 17.0
    assert pos["IBM"] == pytest.approx(-0.2)
    ledger.snapshot_positions("s1", {"AAPL": 17.0}, kind="reconcile", ts=T0)
    ledger.snapshot_positions("s1", {"AAPL": 16.0}, kind="reconcile", ts=T0)
    assert ledger.snapshot("s1", "reconcile") == {"AAPL": 16.0}  # the latest
    assert ledger.snapshot("s1", "end") is None
    with pytest.raises(ParameterError, match="kind"):
        ledger.snapshot_positions("s1", {}, kind="middle", ts=T0)


# -- orders, transitions, events -----------------------------------------------------------------


def test_transitions_and_unknown_events_are_recorded(ledger: OrderLedger) -> None:
    ledger.add_intent("s1", 0, req(), bar_ts=T0)
    t = [T0 + timedelta(seconds=i) for i in range(5)]
    ledger.mark_acked("c1", bo(status=OrderStatus.ACCEPTED), t[0])
    ledger.apply_order("s1", bo(status=OrderStatus.NEW), event="new", ts=t[1])
    ledger.apply_order("s1", bo(status=OrderStatus.NEW), event="brand_new_event", ts=t[2])
    ledger.apply_order(
        "s1", bo(40, 9.5, OrderStatus.PARTIALLY_FILLED), event="partial_fill", ts=t[3]
    )
    ledger.apply_order("s1", bo(100, 9.5, OrderStatus.FILLED), event="fill", ts=t[4])
    assert ledger.transitions("c1") == [
        ("pending_submit", "accepted", "ack", t[0]),
        ("accepted", "new", "new", t[1]),
        ("new", "partially_filled", "partial_fill", t[3]),
        ("partially_filled", "filled", "fill", t[4]),
    ]
    events = ledger.events("s1", "c1")
    assert [e["event"] for e in events] == ["ack", "new", "brand_new_event", "partial_fill", "fill"]
    assert events[3]["order"]["filled_qty"] == 40 and events[3]["ts"] == t[3]
    assert ledger.events("s1", "other") == []
    o = ledger.order_by_client_id("c1")
    assert o is not None and o.status is OrderStatus.FILLED and not o.is_open


def test_rest_status_is_the_truth_and_open_orders(ledger: OrderLedger) -> None:
    sent(ledger, "a", 0)
    sent(ledger, "b", 1)
    ledger.apply_order(
        "s1", bo(oid="o-a", cid="a", status=OrderStatus.CANCELED), event="canceled", ts=T0
    )
    # a stream event cannot revive a terminal order, a REST read says what the broker has
    ledger.apply_order("s1", bo(oid="o-a", cid="a", status=OrderStatus.NEW), event="new", ts=T0)
    assert ledger.order("o-a").status is OrderStatus.CANCELED
    ledger.apply_order(
        "s1", bo(oid="o-b", cid="b", status=OrderStatus.EXPIRED), event="rest", ts=T0
    )
    assert ledger.order("o-b").status is OrderStatus.EXPIRED
    assert [o.id for o in ledger.orders("s1")] == ["o-a", "o-b"]
    assert ledger.orders("s1", open_only=True) == []
    sent(ledger, "c", 2)
    assert [o.id for o in ledger.orders(open_only=True)] == ["o-c"]


def test_replaced_orders_and_external_orders(ledger: OrderLedger) -> None:
    sent(ledger)
    ledger.apply_order(
        "s1",
        bo(oid="o-c1", status=OrderStatus.NEW, limit_price=10.0),
        event="pending_replace",
        ts=T0,
    )
    new = bo(oid="o2", cid="c1-r", status=OrderStatus.NEW, limit_price=10.5, replaces="o-c1")
    ledger.apply_order("s1", new, event="new", ts=T0)
    ledger.apply_order("s1", bo(oid="o-c1", status=OrderStatus.REPLACED), event="replaced", ts=T0)
    assert ledger.order("o-c1").replaced_by == "o2"
    latest = ledger.order_by_client_id("c1")
    assert latest is not None and latest.id == "o2" and latest.limit_price == 10.5
    assert [tr[1] for tr in ledger.transitions("c1")][-1] == "replaced"
    # an order the session never intended (e.g. placed by hand) is recorded too
    ext = bo(5, 20.0, OrderStatus.FILLED, oid="manual", cid="hand-1", symbol="SPY")
    (f,) = ledger.apply_order("s1", ext, event="rest", ts=T0)
    assert f.decided_at is None and ledger.order_by_client_id("hand-1").id == "manual"
    assert ledger.order("missing") is None and ledger.order_by_client_id("missing") is None


def test_exact_round_trips_and_frames(ledger: OrderLedger) -> None:
    x = 0.1 + 0.2  # not representable in fewer digits
    ledger.add_intent("s1", 0, req(qty=x), bar_ts=T0)
    legs = (bo(oid="leg", cid="leg-c", status=OrderStatus.HELD),)
    t = datetime(2024, 1, 2, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
    ledger.mark_acked("c1", bo(qty=x, limit_price=1 / 3, legs=legs, created_at=t), t)
    (f,) = ledger.apply_order("s1", bo(x, 1 / 7, qty=x, oid="o1"), event="fill", ts=t)
    assert ledger.intent("c1").request.qty == x
    o = ledger.order("o1")
    assert (o.qty, o.limit_price, o.filled_avg_price) == (x, 1 / 3, 1 / 7)
    assert o.legs == legs and o.created_at == t and o.created_at.tzinfo == UTC
    (rec,) = ledger.fills("s1")
    assert rec.fill == f and rec.fill.price == 1 / 7 and rec.fill.ts == t
    assert math.isnan(rec.fill.ref_price) and rec.booked_bar_ts is None
    frames = ledger.frames("s1")
    assert set(frames) == {"intents", "orders", "fills", "transitions"}
    assert frames["intents"]["qty"].to_list() == [x]
    assert frames["fills"].schema["ts"] == pl.Datetime("us", "UTC")
    assert frames["fills"]["ts"].to_list() == [t]
    assert frames["orders"]["status"].to_list() == ["filled"]
    assert frames["transitions"].height == 2
    assert ledger.frames("empty")["fills"].height == 0


# -- the database ------------------------------------------------------------------------------------


def test_sqlite_is_wal_with_full_sync_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    lg = OrderLedger("sqlite:///sub/dir/l.db")
    assert (tmp_path / "sub" / "dir" / "l.db").exists()
    assert lg.url == f"sqlite:///{tmp_path / 'sub' / 'dir' / 'l.db'}"
    with lg._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    lg.close()
    with sqlite3.connect(tmp_path / "sub" / "dir" / "l.db") as raw:
        assert raw.execute(
            "SELECT value FROM ledger_meta WHERE key='schema_version'"
        ).fetchone() == ("1",)
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "sessions",
        "intents",
        "orders",
        "transitions",
        "events",
        "fills",
        "position_snapshots",
    } <= tables


def test_bad_urls_garbage_files_and_newer_schemas_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"'not a url' is not an SQLAlchemy URL.*Fix"):
        OrderLedger("not a url")
    with pytest.raises(StoreError, match=r"nosuchdb://x/y.*Fix"):
        OrderLedger("nosuchdb://x/y")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just text\n" * 200)
    with pytest.raises(
        StoreError, match=r"junk\.db is not an SQLite database.*Fix: move the file"
    ) as e:
        OrderLedger(f"sqlite:///{junk}")
    assert f"sqlite:///{junk}" in str(e.value) and e.value.__cause__ is None
    newer = tmp_path / "newer.db"
    OrderLedger(f"sqlite:///{newer}").close()
    with sqlite3.connect(newer) as raw:
        raw.execute("UPDATE ledger_meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match=r"schema_version '99', newer.*Fix: upgrade"):
        OrderLedger(f"sqlite:///{newer}")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE orders (x INTEGER)")
    with pytest.raises(StoreError, match=r"table 'orders' has an unknown schema.*Fix"):
        OrderLedger(f"sqlite:///{other}")


def test_the_same_file_reopened_by_a_second_ledger_sees_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = OrderLedger(url)
    a.open_session("s1", strategy="rev", broker="sim", mode="paper", session_date=DAY)
    a.add_intent("s1", 0, req(), bar_ts=T0)
    b = OrderLedger(url)
    assert b.intent("c1") == a.intent("c1")
    a.close()
    b.close()


_CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import UTC, date, datetime, timedelta
    from workbench.execution.ledger import OrderLedger
    from workbench.execution.orders import BrokerOrder, OrderRequest, OrderStatus, Side

    T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    lg = OrderLedger(sys.argv[1])
    lg.open_session("k", strategy="crash", broker="sim", mode="paper", session_date=date(2024, 1, 2))
    for i in range(100_000):
        cid = f"k-{i}"
        side = Side.BUY if i % 2 else Side.SELL
        lg.add_intent("k", i, OrderRequest(cid, "SYM", side, qty=10.0), bar_ts=T0)
        def o(f, avg, st):
            return BrokerOrder(f"o{i}", cid, "SYM", side, 10.0, f, avg, st)
        lg.mark_acked(cid, o(0.0, None, OrderStatus.NEW), T0)
        lg.apply_order("k", o(3.0, 10.0, OrderStatus.PARTIALLY_FILLED), event="partial_fill",
                       ts=T0, execution_id=f"e{i}a", price=10.0, qty=3.0)
        lg.apply_order("k", o(3.0, 10.0, OrderStatus.PARTIALLY_FILLED), event="rest", ts=T0)
        lg.apply_order("k", o(10.0, 10.7, OrderStatus.FILLED), event="fill", ts=T0,
                       execution_id=f"e{i}b", price=11.0, qty=7.0)
        lg.book_fills("k", T0 + timedelta(minutes=i))
        if i == 2:
            print("ready", flush=True)
    """
)


def test_a_sigkilled_writer_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"ready", proc.stderr.read().decode()
        time.sleep(0.4)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    lg = OrderLedger(url)
    intents = lg.intents("k")
    n = len(intents)
    assert n >= 3 and [i.seq for i in intents] == list(range(n))
    assert lg.next_seq("k") == n
    assert all(
        i.request.qty == 10.0 and i.request.client_order_id == i.client_order_id for i in intents
    )
    orders = {o.id: o for o in lg.orders("k")}
    assert len(orders) in (n - 1, n)  # the last intent may have died before its ack
    by_order: dict[str, float] = {}
    for rec in lg.fills("k"):
        by_order[rec.fill.order_id] = by_order.get(rec.fill.order_id, 0.0) + rec.fill.qty
    for oid, o in orders.items():
        assert by_order.get(oid, 0.0) == pytest.approx(o.signed_filled, abs=1e-12)
    assert sum(by_order.values()) == pytest.approx(sum(o.signed_filled for o in orders.values()))
    assert lg.positions("k") == (
        {"SYM": sum(by_order.values())} if abs(sum(by_order.values())) > 1e-9 else {}
    )
    with lg._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    lg.close()
    # and the ledger can be written again: a restarted session resumes at next_seq
    lg = OrderLedger(url)
    lg.add_intent("k", n, OrderRequest(f"k-{n}-again", "SYM", Side.BUY, qty=1.0), bar_ts=T0)
    assert lg.next_seq("k") == n + 1
    lg.close()


# -- batch(): one transaction, committed once ------------------------------------------------------


class _Count:
    """Commits and SQL statements of a ledger's engine."""

    def __init__(self, lg: OrderLedger) -> None:
        self.commits = self.statements = 0
        sqlalchemy.event.listen(lg._engine, "commit", self._commit)
        sqlalchemy.event.listen(lg._engine, "before_cursor_execute", self._stmt)

    def _commit(self, *_: object) -> None:
        self.commits += 1

    def _stmt(self, *_: object) -> None:
        self.statements += 1


def _outside(path: Path, sql: str) -> list[tuple]:
    """What another connection sees (a plain WAL reader: it does not wait for the writer)."""
    with sqlite3.connect(path) as raw:
        return raw.execute(sql).fetchall()


def _state(lg: OrderLedger, sid: str = "s1") -> dict[str, object]:
    """Everything a ledger reports about a session."""
    intents = lg.intents(sid)
    orders = lg.orders(sid)
    return {
        "session": lg.session(sid),
        "sessions": lg.sessions(),
        "next_seq": lg.next_seq(sid),
        "intents": intents,
        "by_state": {s: lg.intents(sid, states=[s]) for s in INTENT_STATES},
        "intent": {i.client_order_id: lg.intent(i.client_order_id) for i in intents},
        "orders": orders,
        "open": lg.orders(sid, open_only=True),
        "all_orders": lg.orders(),
        "order": {o.id: lg.order(o.id) for o in orders},
        "by_cid": {o.client_order_id: lg.order_by_client_id(o.client_order_id) for o in orders},
        "positions": lg.positions(sid),
        "fills": lg.fills(sid),
        "start": lg.snapshot(sid, "start"),
        "reconcile": lg.snapshot(sid, "reconcile"),
        "events": len(lg.events(sid)),
        "transitions": {i.client_order_id: lg.transitions(i.client_order_id) for i in intents},
    }


def test_batch_commits_once_at_the_outermost_exit(
    tmp_path: Path, sqlite_ledger: OrderLedger
) -> None:
    ledger = sqlite_ledger  # reads the SQLite file from outside
    db = tmp_path / "ledger.db"
    n = _Count(ledger)
    with ledger.batch() as lg:
        assert lg is ledger
        for i in range(5):
            ledger.add_intent("s1", i, req(f"c{i}"), bar_ts=T0)
        with ledger.batch():  # nested: part of the same transaction
            for i in range(5):
                ledger.mark_acked(f"c{i}", bo(oid=f"o{i}", cid=f"c{i}"), T0)
            ledger.apply_order("s1", bo(100, 10.0, OrderStatus.FILLED, oid="o0", cid="c0"),
                               event="fill", ts=T0)  # fmt: skip
        assert n.commits == 0
        assert _outside(db, "SELECT count(*) FROM intents") == [(0,)]  # not committed yet
        ledger.set_progress("s1", T0)
    assert n.commits == 1
    assert _outside(db, "SELECT count(*) FROM intents") == [(5,)]
    assert _outside(db, "SELECT count(*) FROM fills") == [(1,)]
    assert _outside(db, "SELECT state FROM intents ORDER BY seq") == [("acked",)] * 5
    # outside a batch every call is its own transaction again
    ledger.add_intent("s1", 5, req("c5"), bar_ts=T0)
    ledger.mark_refused("c5", "no")
    assert n.commits == 3
    assert _outside(db, "SELECT state FROM intents WHERE seq = 5") == [("refused",)]


def test_an_exception_inside_a_batch_rolls_back_all_of_it(
    tmp_path: Path, ledger: OrderLedger
) -> None:
    sent(ledger, "a", 0)
    ledger.apply_order("s1", bo(40, 10.0, oid="o-a", cid="a"), event="partial_fill", ts=T0)
    ledger.snapshot_positions("s1", {"MSFT": 3.0}, kind="start", ts=T0)
    ledger.set_progress("s1", T0)
    before = _state(ledger)
    with pytest.raises(RuntimeError, match="boom"), ledger.batch():
        sent(ledger, "b", 1, symbol="MSFT")
        ledger.apply_order("s1", bo(100, 10.0, OrderStatus.FILLED, oid="o-a", cid="a"),
                           event="fill", ts=T0)  # fmt: skip
        ledger.apply_order("s1", bo(5, 20.0, oid="o-b", cid="b", symbol="MSFT"), event="fill",
                           ts=T0)  # fmt: skip
        ledger.add_intent("s1", 2, req("c"), bar_ts=T0)
        ledger.mark_refused("c", "no")
        ledger.book_fills("s1", T0)
        ledger.book_release("s1", "refused:c", "AAPL", 100.0, T0)
        ledger.snapshot_positions("s1", {"AAPL": 1.0}, kind="reconcile", ts=T0)
        ledger.set_progress("s1", T0 + timedelta(minutes=5))
        ledger.set_status("s1", "halted", "x")
        assert _state(ledger) != before  # the batch sees its own writes
        raise RuntimeError("boom")
    assert _state(ledger) == before  # the caches were rolled back too
    fresh = OrderLedger(ledger.url)
    assert _state(fresh) == before
    assert fresh.releases_booked_at("s1", T0) == [] and fresh.fills("s1", unbooked_only=True)
    fresh.close()
    # and the ledger goes on
    sent(ledger, "b", 1, symbol="MSFT")
    assert ledger.next_seq("s1") == 2


def test_nested_batches_are_savepoints(ledger: OrderLedger) -> None:
    n = _Count(ledger)
    with ledger.batch():
        sent(ledger, "a", 0)
        with pytest.raises(KeyError), ledger.batch():
            sent(ledger, "b", 1)
            ledger.apply_order("s1", bo(100, 1.0, OrderStatus.FILLED, oid="o-b", cid="b"),
                               event="fill", ts=T0)  # fmt: skip
            assert ledger.positions("s1") == {"AAPL": 100.0}
            raise KeyError("inner")
        assert [i.client_order_id for i in ledger.intents("s1")] == ["a"]  # the inner undone
        assert ledger.positions("s1") == {} and ledger.order("o-b") is None
        with ledger.batch(), ledger.batch():
            ledger.apply_order("s1", bo(10, 1.0, oid="o-a", cid="a"), event="fill", ts=T0)
        assert ledger.positions("s1") == {"AAPL": 10.0}
    assert n.commits == 1
    fresh = OrderLedger(ledger.url)
    assert _state(fresh) == _state(ledger)
    assert [i.client_order_id for i in fresh.intents("s1")] == ["a"]
    assert fresh.positions("s1") == {"AAPL": 10.0}
    fresh.close()


def test_reads_inside_a_batch_see_its_own_writes(ledger: OrderLedger) -> None:
    with ledger.batch():
        rec = ledger.add_intent("s1", 0, req("a"), bar_ts=T0)
        assert ledger.intent("a") == rec and ledger.intents("s1", ["pending"]) == [rec]
        assert ledger.next_seq("s1") == 1 and ledger.session("s1").next_seq == 1
        ledger.mark_acked("a", bo(oid="o-a", cid="a"), T0)
        assert ledger.intent("a").state == "acked"
        assert [o.id for o in ledger.orders("s1", open_only=True)] == ["o-a"]
        assert ledger.order_by_client_id("a").id == "o-a"
        (f,) = ledger.apply_order(
            "s1", bo(100, 9.0, OrderStatus.FILLED, oid="o-a", cid="a"), event="fill", ts=T0
        )
        assert ledger.order("o-a").status is OrderStatus.FILLED
        assert ledger.orders("s1", open_only=True) == []
        assert ledger.positions("s1") == {"AAPL": 100.0}
        assert [r.fill for r in ledger.fills("s1", unbooked_only=True)] == [f]
        assert ledger.book_fills("s1", T0) == [f] and ledger.fills_booked_at("s1", T0) == [f]
        assert [e["event"] for e in ledger.events("s1")] == ["ack", "fill"]
        assert ledger.frames("s1")["fills"].height == 1
        ledger.set_progress("s1", T0)
        assert ledger.session("s1").last_bar_ts == T0


def test_a_call_failing_after_it_wrote_fails_its_batch(
    ledger: OrderLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent(ledger, "a", 0)
    before = _state(ledger)
    with pytest.raises(StoreError, match="rolled back"), ledger.batch():
        # validation errors are raised before anything is written: the batch goes on
        with pytest.raises(ParameterError):
            ledger.apply_order("s1", bo(oid=""), event="new", ts=T0)
        with pytest.raises(StoreError, match="different content"):
            ledger.add_intent("s1", 0, req("a", qty=1), bar_ts=T0)
        with pytest.raises(StoreError, match="already has intent seq 0"):
            ledger.add_intent("s1", 0, req("z"), bar_ts=T0)
        with pytest.raises(StoreError, match="cannot be refused"):
            ledger.mark_refused("a", "late")
        sent(ledger, "b", 1)

        def broken(*_: object, **__: object) -> str:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(ledger, "_insert_fill", broken)
        with pytest.raises(StoreError, match="disk I/O error"):  # after its event row
            ledger.apply_order("s1", bo(5, 1.0, oid="o-b", cid="b"), event="fill", ts=T0)
        monkeypatch.undo()
        with pytest.raises(StoreError, match="earlier call in this batch"):
            ledger.intent("b")
    assert _state(ledger) == before
    fresh = OrderLedger(ledger.url)
    assert _state(fresh) == before
    fresh.close()


def test_other_threads_wait_for_a_batch(ledger: OrderLedger) -> None:
    seen: list[object] = []
    started = threading.Event()

    def reader() -> None:
        started.set()
        seen.append(ledger.intent("a"))

    with ledger.batch():
        ledger.add_intent("s1", 0, req("a"), bar_ts=T0)
        t = threading.Thread(target=reader)
        t.start()
        started.wait(5)
        time.sleep(0.2)
        assert seen == []  # waiting for the batch
    t.join(5)
    assert [i.client_order_id for i in seen] == ["a"]


def test_a_reading_object_always_sees_the_writers_commits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    writer, reader = OrderLedger(url), OrderLedger(url)
    writer.open_session("s1", strategy="rev", broker="sim", mode="paper", session_date=DAY)
    assert reader.intents("s1") == [] and reader.positions("s1") == {}
    assert reader.orders("s1") == [] and reader.session("s1").next_seq == 0
    sent(writer, "a", 0)
    writer.apply_order("s1", bo(5, 2.0, oid="o-a", cid="a"), event="fill", ts=T0)
    writer.set_progress("s1", T0)
    assert _state(reader) == _state(writer)  # a reader caches nothing
    writer.apply_order("s1", bo(9, 2.0, OrderStatus.FILLED, oid="o-a", cid="a"), event="fill",
                       ts=T0)  # fmt: skip
    assert reader.positions("s1") == {"AAPL": 9.0} and reader.orders("s1", open_only=True) == []
    assert _state(reader) == _state(writer)
    writer.close()
    reader.close()


def test_apply_order_needs_few_statements(ledger: OrderLedger) -> None:
    n = _Count(ledger)

    def stmts(fn) -> int:
        s0 = n.statements
        with ledger.batch():
            fn()
        return n.statements - s0 - 1  # the batch's BEGIN

    assert stmts(lambda: ledger.add_intent("s1", 0, req("a"), bar_ts=T0)) <= 2
    new = bo(oid="o-a", cid="a", status=OrderStatus.NEW)
    assert stmts(lambda: ledger.apply_order("s1", new, event="new", ts=T0)) <= 4  # a new ack
    assert ledger.intent("a").state == "acked"
    accepted = replace(new, status=OrderStatus.ACCEPTED)
    assert stmts(lambda: ledger.apply_order("s1", accepted, event="rest", ts=T0)) <= 3
    part = bo(40, 10.0, OrderStatus.PARTIALLY_FILLED, oid="o-a", cid="a")
    args = {"event": "partial_fill", "ts": T0, "execution_id": "e1", "price": 10.0, "qty": 40}
    # a fill (the first of the session also loads its execution ids, once)
    assert stmts(lambda: ledger.apply_order("s1", part, **args)) <= 5
    assert stmts(lambda: ledger.apply_order("s1", part, **args)) <= 2  # its replay
    more = bo(70, 10.0, OrderStatus.PARTIALLY_FILLED, oid="o-a", cid="a")
    args2 = {**args, "execution_id": "e2", "qty": 30}
    assert stmts(lambda: ledger.apply_order("s1", more, **args2)) <= 3  # the next: queued rows
    assert [f.fill.execution_id for f in ledger.fills("s1")] == ["e1", "e2"]
    ledger.add_intent("s1", 1, req("b"), bar_ts=T0)
    assert stmts(lambda: ledger.mark_acked("b", bo(oid="o-b", cid="b"), T0)) <= 4
    # the per-bar reads of a session this object writes: loaded once, then no SQL at all

    def reads() -> None:
        ledger.orders("s1", open_only=True), ledger.orders("s1"), ledger.intents("s1")
        ledger.intents("s1", ["pending"]), ledger.positions("s1"), ledger.session("s1")
        ledger.intent("a"), ledger.order("o-a"), ledger.next_seq("s1")

    reads()
    s0 = n.statements
    reads()
    ledger.apply_order("s1", part, **args)
    s1 = n.statements
    reads()
    assert n.statements == s1 and s1 - s0 <= 1 + 2  # BEGIN, the event row, the order row


def test_an_event_without_legs_keeps_the_latest_legs(ledger: OrderLedger) -> None:
    held = (bo(oid="leg", cid="leg-c", status=OrderStatus.HELD),)
    new = (bo(oid="leg", cid="leg-c", status=OrderStatus.NEW),)
    sent(ledger, "a")
    for legs in (held, new, ()):
        ledger.apply_order("s1", bo(oid="o-a", cid="a", legs=legs), event="new", ts=T0)
        want = legs or new
        assert ledger.order("o-a").legs == want
        with OrderLedger(ledger.url) as fresh:
            assert fresh.order("o-a").legs == want
            assert fresh.events("s1")[-1]["order"]["legs"] == [_order_dict(x) for x in legs]


_BATCH_CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, date, datetime
    from workbench.execution.ledger import OrderLedger
    from workbench.execution.orders import BrokerOrder, OrderRequest, OrderStatus, Side

    T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    lg = OrderLedger(sys.argv[1])
    lg.open_session("k", strategy="crash", broker="sim", mode="paper", session_date=date(2024, 1, 2))

    def one(i):
        cid = f"k-{i}"
        lg.add_intent("k", i, OrderRequest(cid, "SYM", Side.BUY, qty=10.0), bar_ts=T0)
        lg.mark_acked(cid, BrokerOrder(f"o{i}", cid, "SYM", Side.BUY, 10.0, 0.0, None,
                                       OrderStatus.NEW), T0)
        lg.apply_order("k", BrokerOrder(f"o{i}", cid, "SYM", Side.BUY, 10.0, 10.0, 5.0,
                                        OrderStatus.FILLED), event="fill", ts=T0)

    for i in range(3):  # each call its own transaction
        one(i)
    with lg.batch():  # committed
        for i in range(3, 6):
            one(i)
    with lg.batch():  # killed inside
        for i in range(6, 50):
            one(i)
        with lg.batch():
            lg.set_progress("k", T0)
            lg.book_fills("k", T0)
            print("in batch", flush=True)
            time.sleep(60)
    """
)


def test_a_writer_sigkilled_inside_a_batch_leaves_none_of_it(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _BATCH_CRASH_SCRIPT, f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"in batch", proc.stderr.read().decode()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    lg = OrderLedger(f"sqlite:///{db}")
    assert [i.client_order_id for i in lg.intents("k")] == [f"k-{i}" for i in range(6)]
    assert [o.id for o in lg.orders("k")] == [f"o{i}" for i in range(6)]
    assert all(i.state == "acked" for i in lg.intents("k"))
    assert len(lg.fills("k", unbooked_only=True)) == 6 and lg.positions("k") == {"SYM": 60.0}
    assert lg.session("k").last_bar_ts is None and lg.next_seq("k") == 6
    with lg._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    lg.add_intent("k", 6, OrderRequest("k-6", "SYM", Side.BUY, qty=1.0), bar_ts=T0)  # goes on
    lg.close()


# -- property: the caches never differ from the database ------------------------------------------

_CIDS = ["a", "b", "c", "d"]
_STATUSES = list(OrderStatus)
_EVENTS = ["new", "fill", "partial_fill", "rest", "ack", "canceled", "replaced", "weird"]


@st.composite
def _order_event(draw: st.DrawFn) -> tuple:
    cid = draw(st.sampled_from([*_CIDS, "ext"]))
    oid = draw(st.sampled_from([f"o-{cid}", f"o2-{cid}"]))
    qty = 10.0
    filled = draw(st.sampled_from([0.0, 2.0, 5.0, 10.0, 3.3]))
    avg = draw(st.sampled_from([None, 10.0, 11.5]))
    kw: dict[str, object] = {}
    if draw(st.booleans()) and oid.startswith("o2-"):
        kw["replaces"] = f"o-{cid}"
    leg = draw(st.sampled_from([None, None, OrderStatus.HELD, OrderStatus.NEW]))
    if leg is not None:  # an event without legs keeps the known ones
        kw["legs"] = (bo(oid=f"{oid}-leg", cid=f"{cid}-leg", status=leg),)
    if draw(st.integers(0, 5)) == 0:
        kw["limit_price"] = draw(st.sampled_from([9.0, 9.5]))
    o = BrokerOrder(oid, draw(st.sampled_from([cid, ""])), "AAPL" if cid < "c" else "MSFT",
                    Side.BUY if cid in "ac" else Side.SELL, qty, filled, avg,
                    draw(st.sampled_from(_STATUSES)), **kw)  # fmt: skip
    ev = draw(st.sampled_from(_EVENTS))
    exec_id = draw(st.sampled_from([None, "e1", "e2", f"{oid}@5"]))
    price = draw(st.sampled_from([None, 10.0, 12.0]))
    return ("apply", draw(st.sampled_from(["s1", "s2"])), o, ev, exec_id, price,
            draw(st.sampled_from([None, 2.0, 5.0])))  # fmt: skip


_intent_op = st.tuples(st.just("intent"), st.sampled_from(["s1", "s1", "s2"]),
                      st.sampled_from(_CIDS), st.sampled_from([None, None, None, 0, 9]),
                      st.sampled_from([10.0, 7.0]))  # fmt: skip
_ack_op = st.tuples(st.just("ack"), st.sampled_from([*_CIDS, "ext"]))
_read_op = st.tuples(st.just("read"), st.sampled_from(["s1", "s2"]))
_simple_ops = st.one_of(
    _intent_op, _intent_op, _ack_op, _ack_op, *[_order_event()] * 5, _read_op, _read_op,
    st.tuples(st.just("refuse"), st.sampled_from(_CIDS)),
    st.tuples(st.just("not_found"), st.sampled_from(_CIDS)),
    st.tuples(st.just("snapshot"), st.sampled_from(["start", "reconcile"]),
              st.sampled_from([{}, {"AAPL": 3.0}, {"MSFT": -1.5, "IBM": 2.0}])),
    st.tuples(st.just("progress"), st.integers(0, 3)),
    st.tuples(st.just("status"), st.sampled_from(["running", "halted"])),
    st.tuples(st.just("book"), st.integers(0, 3)),
)  # fmt: skip
_batch_op = st.tuples(
    st.just("batch"), st.lists(_simple_ops, max_size=8), st.booleans(), st.booleans()
)  # ops, abort, durable
_ops = st.lists(st.one_of(_simple_ops, _batch_op), min_size=4, max_size=30)


def _run_op(lg: OrderLedger, op: tuple) -> None:
    kind = op[0]
    try:
        if kind == "intent":
            _, sid, cid, seq, qty = op
            seq = _CIDS.index(cid) + (10 if sid == "s2" else 0) if seq is None else seq
            lg.add_intent(sid, seq, req(cid, symbol="AAPL" if cid < "c" else "MSFT",
                                        side=Side.BUY if cid in "ac" else Side.SELL, qty=qty),
                          bar_ts=T0)  # fmt: skip
        elif kind == "ack":
            lg.mark_acked(op[1], bo(oid=f"o-{op[1]}", cid=op[1], status=OrderStatus.ACCEPTED), T0)
        elif kind == "refuse":
            lg.mark_refused(op[1], "no")
        elif kind == "not_found":
            lg.mark_not_found(op[1])
        elif kind == "apply":
            _, sid, o, ev, exec_id, price, qty = op
            lg.apply_order(sid, o, event=ev, ts=T0, execution_id=exec_id, price=price, qty=qty)
        elif kind == "snapshot":
            lg.snapshot_positions("s1", op[2], kind=op[1], ts=T0)
        elif kind == "progress":
            lg.set_progress("s1", T0 + timedelta(minutes=op[1]))
        elif kind == "status":
            lg.set_status("s1", op[1], "why")
        elif kind == "book":
            lg.book_fills("s1", T0 + timedelta(minutes=op[1]))
        elif kind == "read":  # fill the caches at any point
            _state(lg, op[1])
        elif kind == "batch":
            with contextlib.suppress(_Abort), lg.batch(durable=op[3]):
                for sub in op[1]:
                    _run_op(lg, sub)
                if op[2]:
                    raise _Abort
    except StoreError:
        pass  # refused: unknown intents, content conflicts, progress backwards, ...


class _Abort(Exception):
    pass


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_cached_reads_equal_a_fresh_ledgers_reads(ops: list[tuple]) -> None:
    """One object runs every op (its caches filled by reads at any point); a fresh object reads
    the same file; a reference file gets each op from a new object (nothing cached across ops).
    All three report the same."""
    with tempfile.TemporaryDirectory() as d, mock.patch.object(ledger_mod, "_now", lambda: T0):
        url, ref = f"sqlite:///{Path(d) / 'ledger.db'}", f"sqlite:///{Path(d) / 'ref.db'}"
        lg = OrderLedger(url)
        for u in (url, ref):
            with OrderLedger(u) as opener:
                for sid in ("s1", "s2"):
                    opener.open_session(
                        sid, strategy="p", broker="sim", mode="paper", session_date=DAY
                    )
        for i, op in enumerate(ops):
            _run_op(lg, op)
            with OrderLedger(ref) as once:
                _run_op(once, op)
            if i == len(ops) // 2 or i == len(ops) - 1:
                with OrderLedger(url) as fresh, OrderLedger(ref) as reference:
                    for sid in ("s1", "s2"):
                        assert _state(lg, sid) == _state(fresh, sid) == _state(reference, sid)
        lg.close()


# -- durability classes and queued writes -------------------------------------------------------


def _sync_level(lg: OrderLedger) -> int:
    conn = lg._batch_conn
    assert conn is not None
    return conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]


def test_a_non_durable_batch_commits_without_a_flush_and_the_next_call_is_durable(
    tmp_path: Path, sqlite_ledger: OrderLedger
) -> None:
    ledger = sqlite_ledger  # reads the SQLite file from outside
    db = tmp_path / "ledger.db"
    with ledger.batch(durable=False):
        assert _sync_level(ledger) == 1  # NORMAL: committed to the WAL, not fsynced
        ledger.add_intent("s1", 0, req("c0"), bar_ts=T0)
        with pytest.raises(ParameterError, match="durable batch.*cannot be nested"), ledger.batch():
            pass
        ledger.set_progress("s1", T0)  # the refusal left the batch usable
    assert _outside(db, "SELECT count(*) FROM intents") == [(1,)]
    with ledger.batch():
        assert _sync_level(ledger) == 2  # FULL again: the pool's connection was reset
        with ledger.batch(durable=False):  # a non-durable block in a durable one: durable
            ledger.add_intent("s1", 1, req("c1"), bar_ts=T0)
        assert _sync_level(ledger) == 2
    with ledger._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    assert ledger.session("s1").last_bar_ts == T0 and ledger.next_seq("s1") == 2


def test_queued_writes_make_a_bars_records_a_few_statements(ledger: OrderLedger) -> None:
    ledger.intents("s1")  # the session's intents are known to this object
    n = _Count(ledger)
    with ledger.batch():
        for i in range(30):
            ledger.add_intent("s1", i, req(f"c{i}"), bar_ts=T0)
    assert n.statements <= 3  # BEGIN, one insert of 30 rows (and the session's next_seq)
    s0 = n.statements
    with ledger.batch(durable=False):
        for i in range(30):
            ledger.mark_acked(f"c{i}", bo(oid=f"o{i}", cid=f"c{i}"), T0)
    # BEGIN, the 30 orders (each checked for its id), one statement each for the events, the
    # transitions and the intents' state
    assert n.statements - s0 <= 1 + 30 + 3
    s0 = n.statements
    with ledger.batch(durable=False):
        for i in range(30):
            ledger.apply_order("s1", bo(100, 10.0, OrderStatus.FILLED, oid=f"o{i}", cid=f"c{i}"),
                               event="fill", ts=T0, execution_id=f"e{i}", price=10.0, qty=100)  # fmt: skip
    assert n.statements - s0 <= 1 + 30 + 3  # the fills (by execution id) + orders, events, ...
    fresh = OrderLedger(ledger.url)
    assert _state(fresh) == _state(ledger)
    assert fresh.positions("s1") == {"AAPL": 3000.0}
    assert [t[1] for t in fresh.transitions("c7")] == ["new", "filled"]
    fresh.close()


def test_an_intent_another_writer_took_fails_the_queued_batch_and_keeps_nothing(
    tmp_path: Path, sqlite_ledger: OrderLedger
) -> None:
    ledger = sqlite_ledger  # reads the SQLite file from outside
    ledger.add_intent("s1", 0, req("c0"), bar_ts=T0)
    ledger.intents("s1")
    other = OrderLedger(ledger.url)  # a second writer of the same session (not supported)
    other.add_intent("s1", 1, req("x1"), bar_ts=T0)
    with (
        pytest.raises(StoreError, match="could not all be recorded.*one session process"),
        ledger.batch(),
    ):
        ledger.add_intent("s1", 1, req("c1"), bar_ts=T0)
        ledger.add_intent("s1", 2, req("c2"), bar_ts=T0)
    db = tmp_path / "ledger.db"
    assert _outside(db, "SELECT client_order_id FROM intents ORDER BY seq") == [("c0",), ("x1",)]
    assert [i.client_order_id for i in ledger.intents("s1")] == ["c0", "x1"]  # read again
    other.close()


def test_new_orders_of_a_known_session_are_one_statement_and_a_taken_id_fails_the_batch(
    tmp_path: Path, sqlite_ledger: OrderLedger
) -> None:
    ledger = sqlite_ledger  # reads the SQLite file from outside
    for i in range(20):
        ledger.add_intent("s1", i, req(f"c{i}"), bar_ts=T0)
    ledger.orders("s1")  # the session's orders are all known to this object now
    n = _Count(ledger)
    with ledger.batch(durable=False):
        for i in range(10):
            ledger.mark_acked(f"c{i}", bo(oid=f"o{i}", cid=f"c{i}"), T0)
    # BEGIN, then one statement each for the orders, events, transitions and intents' state
    assert n.statements <= 1 + 4
    assert [o.id for o in OrderLedger(ledger.url).orders("s1")] == [f"o{i}" for i in range(10)]
    # another session, written by another process, holds o10 already (a venue reused its ids)
    other = OrderLedger(ledger.url)
    other.open_session("s2", strategy="rev", broker="sim", mode="paper", session_date=DAY)
    other.add_intent("s2", 0, req("x0"), bar_ts=T0)
    other.mark_acked("x0", bo(oid="o10", cid="x0"), T0)
    with (
        pytest.raises(StoreError, match="orders could not all be recorded.*order id is taken"),
        ledger.batch(durable=False),
    ):
        for i in (10, 11):
            ledger.mark_acked(f"c{i}", bo(oid=f"o{i}", cid=f"c{i}"), T0)
    db = tmp_path / "ledger.db"
    assert _outside(db, "SELECT count(*) FROM orders WHERE session_id = 's1'") == [(10,)]
    assert _outside(db, "SELECT state FROM intents WHERE client_order_id = 'c11'") == [("pending",)]
    assert ledger.intent("c11").state == "pending"  # the caches were read again
    assert other.order("o10").client_order_id == "x0"  # the other session's order untouched
    # this object knows o10 now (read back): the clash is refused before anything is written
    with pytest.raises(StoreError, match="is recorded .* for client order id 'x0'.*share an id"):
        ledger.mark_acked("c10", bo(oid="o10", cid="c10"), T0)
    assert other.order("o10").client_order_id == "x0" and ledger.intent("c10").state == "pending"
    other.close()


def test_a_non_durable_batch_on_postgres_turns_synchronous_commit_off_for_itself_only(
    postgres,
) -> None:
    """Postgres: ``SET LOCAL synchronous_commit TO OFF`` inside a non-durable batch, the server's
    default (on) in a durable one and after it; what the batch wrote is committed either way."""
    url = postgres.database()
    with OrderLedger(url) as lg:
        lg.open_session("s1", strategy="rev", broker="sim", mode="paper", session_date=DAY)
        lg.add_intent("s1", 0, req("c1"), bar_ts=T0)

        def level() -> str:
            return lg._batch_conn.exec_driver_sql("SHOW synchronous_commit").scalar()

        with lg.batch(durable=False):
            lg.mark_acked("c1", bo(oid="o1", cid="c1"), T0)
            assert level() == "off"
        with lg.batch(durable=True):
            lg.apply_order("s1", bo(100, 10.0, OrderStatus.FILLED), event="fill", ts=T0)
            assert level() == "on"
    with OrderLedger(url) as fresh:
        assert fresh.positions("s1") == {"AAPL": 100.0}
        assert fresh.intent("c1").state == "acked"


def test_a_fill_id_another_writer_took_fails_the_queued_batch_and_keeps_nothing(
    ledger: OrderLedger,
) -> None:
    """Fills inside a batch are queued with an execution id chosen from this object's cache of
    the session's ids; one another writer recorded meanwhile fails the batch: nothing of it is
    kept, the caches are read again, and the same events then record exactly once."""
    ledger.add_intent("s1", 0, req("a"), bar_ts=T0)
    ledger.mark_acked("a", bo(oid="o-a", cid="a"), T0)
    part = bo(40, 10.0, OrderStatus.PARTIALLY_FILLED, oid="o-a", cid="a")
    with ledger.batch(durable=False):  # the session's fill ids are loaded now
        ledger.apply_order("s1", part, event="partial_fill", ts=T0, execution_id="e1", qty=40,
                           price=10.0)  # fmt: skip
    other = OrderLedger(ledger.url)  # a second writer of the same session (not supported)
    more = bo(70, 10.0, OrderStatus.PARTIALLY_FILLED, oid="o-a", cid="a")
    other.apply_order("s1", more, event="partial_fill", ts=T0, execution_id="e2", qty=30,
                      price=10.0)  # fmt: skip
    other.close()
    with (
        pytest.raises(StoreError, match="fills could not all be recorded.*execution id"),
        ledger.batch(durable=False),
    ):
        # this object's order row still says 40 filled: it derives the same fill, e2
        ledger.apply_order("s1", more, event="partial_fill", ts=T0, execution_id="e2",
                           qty=30, price=10.0)  # fmt: skip
    with OrderLedger(ledger.url) as fresh:
        assert [f.fill.execution_id for f in fresh.fills("s1")] == ["e1", "e2"]
        assert fresh.positions("s1") == {"AAPL": 70.0}
    ledger.apply_order("s1", more, event="partial_fill", ts=T0, execution_id="e2", qty=30,
                       price=10.0)  # fmt: skip  (read again: already recorded, no fill)
    assert ledger.positions("s1") == {"AAPL": 70.0}
