"""Where a live bar's time goes (``SessionEngine.timings``) and the ledger's WAL checkpoint."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from tests.execution import session_child as child
from workbench.execution.bars import ReplayBars
from workbench.execution.ledger import OrderLedger
from workbench.execution.orders import OrderRequest, Side

DAY = date(2024, 11, 26)


def test_every_live_bar_has_its_timing_and_the_parts_add_up(tmp_path: Path) -> None:
    sess = child.small_session(tmp_path / "ledger.db", venue=tmp_path / "venue.db")
    eng = sess.engine
    decided = {t: len(eng.step(t, now)) for t, now in ReplayBars(sess.live)}
    eng.finish()
    sess.close()
    tm = eng.timings
    assert [b.ts for b in tm] == list(decided)  # one per live bar, in order
    assert [b.orders for b in tm] == list(decided.values())
    assert sum(b.orders for b in tm) > 5  # the replay traded
    for b in tm:
        parts = (b.venue, b.record, b.decide, b.send, b.after, b.broker)
        assert all(p >= 0 for p in parts)
        assert b.broker <= b.record + b.send + 1e-9  # the broker's calls are part of those
        assert b.session_latency <= b.decision_latency < b.total
        assert abs(b.total - (b.venue + b.record + b.decide + b.send + b.after)) < 1e-9
    with_orders = [b for b in tm if b.orders]
    assert all(b.broker > 0 for b in with_orders)  # submits were timed as the broker's


def test_checkpoint_moves_the_log_into_the_database(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    lg = OrderLedger(f"sqlite:///{db}")
    lg.open_session("s", strategy="x", broker="sim", mode="paper", session_date=DAY)
    t = datetime(2024, 11, 26, 15, tzinfo=UTC)
    with lg.batch():
        for i in range(300):
            lg.add_intent("s", i, OrderRequest(f"c{i}", "SPY", Side.BUY, qty=1), bar_ts=t)
    before = db.stat().st_size
    with lg.batch():  # a checkpoint inside a batch waits for it: nothing happens
        lg.checkpoint(force=True)
    lg.checkpoint()  # the log is smaller than WAL_CHECKPOINT_BYTES: not yet
    assert db.stat().st_size == before
    lg.checkpoint(force=True)
    assert db.stat().st_size > before  # the intents' pages are in the database file now
    assert len(OrderLedger(f"sqlite:///{db}").intents("s")) == 300
    lg.close()
