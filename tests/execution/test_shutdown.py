"""Graceful shutdown and the live opt-ins.

SIGTERM in the middle of a session: the loop finishes the bar it is on, sends no new entries,
cancels its working entry orders (and waits for the cancels), keeps the positions and the
working exits (``execution.on_shutdown: keep``), marks the session stopped and exits 0; the ledger and the venue
agree afterwards (nothing half-recorded). Live trading without both opt-ins is refused, naming them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from workbench.cli import app
from workbench.execution.ledger import OrderLedger
from workbench.execution.sim_broker import SimulatedBroker

CHILD = Path(__file__).with_name("session_child.py")


def test_sigterm_mid_session_exits_0_with_nothing_half_recorded(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    args = [
        sys.executable, str(CHILD), "--ledger", str(tmp_path / "l.db"), "--venue",
        str(tmp_path / "v.db"), "--out", str(tmp_path / "out.json"), "--bar-delay", "0.15",
    ]  # fmt: skip
    proc = subprocess.Popen(args, env={**os.environ, "CHILD_READY": str(ready)})
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), "the session never started"
    time.sleep(1.5)  # about 10 bars in: positions and working orders exist
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["status"] == "stopped"
    n_bars = len({i["bar_ts"] for i in out["intents"]})
    assert 0 < n_bars < 26  # stopped in the middle of the day
    led = OrderLedger(f"sqlite:///{tmp_path / 'l.db'}")
    venue = SimulatedBroker(1, state_url=f"sqlite:///{tmp_path / 'v.db'}")
    try:
        sid = out["session_id"]
        assert led.session(sid).status == "stopped"
        assert led.intents(sid, states=("pending",)) == []  # every intent's outcome is known
        for o in venue.open_orders():  # working entries cancelled (confirmed); exits keep working
            assert led.intent(o.client_order_id).request.reduce_only, o
        theirs = {o.id: o for o in venue.recent_orders()}
        for o in led.orders(sid):
            assert (o.status, o.filled_qty) == (theirs[o.id].status, theirs[o.id].filled_qty)
        mine = led.positions(sid)
        assert mine == {p.symbol: p.qty for p in venue.positions() if abs(p.qty) > 1e-9}
    finally:
        led.close()
        venue.close()


def test_live_needs_both_opt_ins(monkeypatch) -> None:
    monkeypatch.delenv("WB_LIVE_TRADING", raising=False)
    runner = CliRunner()
    res = runner.invoke(
        app, ["session", "run", "--strategy", "intraday_reversal", "--broker", "alpaca", "--live"]
    )
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "--live" in text and "WB_LIVE_TRADING=yes" in text
    monkeypatch.setenv("WB_LIVE_TRADING", "yes")  # both opt-ins: the config still loads, and
    res = runner.invoke(  # the run gets past the opt-ins (no model registered here)
        app, ["session", "run", "--strategy", "nosuch", "--broker", "alpaca", "--live"]
    )
    assert res.exit_code == 2 and "unknown strategy 'nosuch'" in " ".join(res.output.split())
    monkeypatch.setenv("WB_ALPACA__TRADING_URL", "https://api.alpaca.markets")
    monkeypatch.delenv("WB_LIVE_TRADING")
    res = runner.invoke(
        app, ["session", "run", "--strategy", "intraday_reversal", "--broker", "alpaca"]
    )
    assert res.exit_code == 2 and "live (real money) endpoint" in " ".join(res.output.split())
    res = runner.invoke(app, ["session", "run", "--strategy", "intraday_reversal", "--live"])
    assert res.exit_code == 2 and "needs --broker alpaca" in " ".join(res.output.split())
