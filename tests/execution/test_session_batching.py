"""A bar's writes are grouped: its intents in one durable transaction before any order is sent,
the orders' acceptance recorded after they are out; a crash between the two still sends each
order exactly once."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tests.execution import session_child as child
from workbench.execution import failpoints
from workbench.execution import ledger as ledger_mod
from workbench.execution.bars import ReplayBars
from workbench.execution.ledger import OrderLedger
from workbench.execution.orders import BrokerOrder, OrderRequest, OrderStatus, Side
from workbench.execution.sim_broker import SimulatedBroker

DAY = date(2024, 11, 26)


class _Crash(BaseException):
    """The process dies here (nothing after it runs, nothing is closed)."""


def _run(tmp: Path) -> tuple[str, list[dict]]:
    tmp.mkdir(exist_ok=True)
    sess = child.small_session(tmp / "ledger.db", venue=tmp / "venue.db")
    for t, now in ReplayBars(sess.live):
        sess.engine.step(t, now)
    sess.engine.finish()
    sess.close()
    sid = sess.engine.session_id
    return sid, child.intents_summary(str(tmp / "ledger.db"), sid)


def test_a_crash_after_the_intent_commit_leaves_the_bar_durable_and_sends_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, want = _run(tmp_path / "uninterrupted")
    first_bar = min(w["bar_ts"] for w in want)
    n_first = sum(w["bar_ts"] == first_bar for w in want)
    assert n_first >= 2  # the bar decides several orders: one transaction holds them all

    tmp = tmp_path / "crashed"
    tmp.mkdir()
    sess = child.small_session(tmp / "ledger.db", venue=tmp / "venue.db")
    real_hit = failpoints.hit

    def hit(name: str) -> None:
        if name == "intent.after_commit":
            raise _Crash(name)
        real_hit(name)

    monkeypatch.setattr(failpoints, "hit", hit)
    with pytest.raises(_Crash):
        for t, now in ReplayBars(sess.live):
            sess.engine.step(t, now)
    monkeypatch.setattr(failpoints, "hit", real_hit)
    sess.close()  # releases the connections; writes nothing

    # what a restart finds: every intent of the bar committed (durably, before any send), none
    # of them at the venue
    led = OrderLedger(f"sqlite:///{tmp / 'ledger.db'}")
    found = led.intents(sid)
    led.close()
    assert [(i.bar_ts.isoformat(), i.state) for i in found] == [(first_bar, "pending")] * n_first
    venue = SimulatedBroker(1.0, child.COSTS, state_url=f"sqlite:///{tmp / 'venue.db'}")
    assert venue.recent_orders() == []
    venue.close()

    # the restart reconciles (the intents were never sent), sends each once, ends as the
    # uninterrupted run did
    sid2, got = _run(tmp)
    assert sid2 == sid
    assert got == want
    venue = SimulatedBroker(1.0, child.COSTS, state_url=f"sqlite:///{tmp / 'venue.db'}")
    cids = [o.client_order_id for o in venue.recent_orders()]
    venue.close()
    assert len(cids) == len(set(cids)) == sum(w["state"] == "acked" for w in got)


def test_the_orders_acceptance_is_recorded_after_they_are_out(tmp_path: Path) -> None:
    sess = child.small_session(tmp_path / "ledger.db", venue=tmp_path / "venue.db")
    eng = sess.engine
    for t, now in ReplayBars(sess.live):
        if eng.step(t, now):
            break
    sent = [i.client_order_id for i in sess.ledger.intents(eng.session_id)]
    assert sent
    # the venue's "new" events of the bar's orders are in the ledger before the next bar: the
    # next bar's decision path records only what the venue does at that bar
    accepted = {e["client_order_id"] for e in sess.ledger.events(eng.session_id)
                if e["event"] == "new"}  # fmt: skip
    assert accepted == set(sent)
    assert sess.broker.events() == []
    sess.close()


def _ledger_rows(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows with each value's SQLite storage class (wall-clock columns left out)."""
    wall = {"sessions": {"started_at", "updated_at"}, "intents": {"created_at", "updated_at"}}
    con = sqlite3.connect(path)
    try:
        out = {}
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            keep = [c for c in cols if c not in wall.get(table, set())]
            sel = ", ".join(f'"{c}", typeof("{c}")' for c in keep)
            out[table] = con.execute(f"SELECT {sel} FROM {table} ORDER BY rowid").fetchall()
        return out
    finally:
        con.close()


def _ledger_workload(path: Path) -> None:
    t0 = datetime(2024, 11, 26, 15, tzinfo=UTC)
    lg = OrderLedger(f"sqlite:///{path}")
    lg.open_session("s", strategy="x", broker="sim", mode="paper", session_date=DAY)
    lg.snapshot_positions("s", {"SPY": 5.0}, kind="start", ts=t0)
    with lg.batch():
        for i in range(6):
            req = OrderRequest(f"c{i}", "SPY" if i % 2 else "QQQ", Side.BUY if i % 3 else Side.SELL,
                               qty=10.0 + i, decided_at=t0)  # fmt: skip
            lg.add_intent("s", i, req, bar_ts=t0)
    with lg.batch(durable=False):
        for i in range(6):
            side = Side.BUY if i % 3 else Side.SELL
            sym = "SPY" if i % 2 else "QQQ"
            new = BrokerOrder(f"o{i}", f"c{i}", sym, side, 10.0 + i, 0.0, None, OrderStatus.NEW,
                              created_at=t0)  # fmt: skip
            lg.mark_acked(f"c{i}", new, t0)
            part = replace(new, filled_qty=4.0, filled_avg_price=100.25 + i,
                           status=OrderStatus.PARTIALLY_FILLED)  # fmt: skip
            lg.apply_order("s", part, event="partial_fill", ts=t0 + timedelta(minutes=5),
                           execution_id=f"e{i}a", price=100.25 + i, qty=4.0, commission=1.0)  # fmt: skip
            if i % 2:
                done = replace(part, filled_qty=10.0 + i, filled_avg_price=100.5 + i,
                               status=OrderStatus.FILLED)  # fmt: skip
                lg.apply_order("s", done, event="fill", ts=t0 + timedelta(minutes=10),
                               price=float("nan"), qty=6.0 + i, commission=0.5)  # fmt: skip
            else:
                lg.apply_order("s", replace(part, status=OrderStatus.CANCELED), event="canceled",
                               ts=t0 + timedelta(minutes=10))  # fmt: skip
        lg.book_fills("s", t0 + timedelta(minutes=10))
        lg.set_progress("s", t0 + timedelta(minutes=10))
    lg.close()


def test_the_ledgers_queued_writes_store_what_sqlalchemy_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ledger_workload(tmp_path / "driver.db")
    monkeypatch.setattr(ledger_mod, "_RAW_MANY", False)
    _ledger_workload(tmp_path / "sqlalchemy.db")
    got, want = _ledger_rows(tmp_path / "driver.db"), _ledger_rows(tmp_path / "sqlalchemy.db")
    assert got == want
    assert len(want["events"]) == 18 and len(want["fills"]) == 9  # the workload wrote them
