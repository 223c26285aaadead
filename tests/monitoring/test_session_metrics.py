"""``/metrics`` scraped while a replayed session runs: the counters move with what the session did.

The oracles are the session's own records: the ledger's orders and fills, the risk engine's
denials, ``SessionEngine.timings`` and the per-bar PnL frame.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.execution import session_child as child
from workbench.data.timeframe import Timeframe
from workbench.execution.bars import ReplayBars
from workbench.monitoring.metrics import Metrics, serve
from workbench.monitoring.session import SessionMonitor


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


@pytest.fixture
def session(tmp_path: Path):
    metrics = Metrics()
    monitor = SessionMonitor(metrics, strategy="crash", timeframe="15Min", model="crash v1")
    sess = child.small_session(
        tmp_path / "ledger.db", venue=tmp_path / "venue.db", observer=monitor
    )
    assert sess.policy.name == "crash"
    server = serve(metrics, port=0)
    yield sess.engine, sess.live, sess.ledger, server, sess.policy.name
    server.close()
    sess.close()


def test_metrics_move_with_the_session(session) -> None:
    eng, live, ledger, server, strategy = session
    assert server.host == "127.0.0.1" and server.port > 0
    before = scrape(server.url)
    assert total(before, "wb_bars_total") == 0
    steps = list(ReplayBars(live))
    half = len(steps) // 2
    for t, now in steps[:half]:
        eng.step(t, now)
    mid = scrape(server.url)
    for t, now in steps[half:]:
        eng.step(t, now)
    res = eng.finish()
    end = scrape(server.url)

    # bars: one per live bar, moving between scrapes
    assert total(mid, "wb_bars_total", strategy=strategy) == half
    assert total(end, "wb_bars_total", strategy=strategy) == len(steps)
    # orders handed to the broker: every order the ledger recorded for the session
    orders = ledger.frames(eng.session_id)["orders"]
    assert orders.height > 5
    assert total(end, "wb_orders_submitted_total") == orders.height
    for side in ("buy", "sell"):
        n = orders.filter(pl.col("side") == side).height
        assert total(end, "wb_orders_submitted_total", side=side) == n
    assert total(mid, "wb_orders_submitted_total") < orders.height
    # fills: the ledger's
    fills = ledger.frames(eng.session_id)["fills"]
    assert fills.height > 0 and total(end, "wb_fills_total") == fills.height
    assert total(end, "wb_fill_latency_seconds_count") == fills.height
    # risk denials by reason: the risk engine's
    den = res.rejections
    for reason, n in den.group_by("reason").len().iter_rows():
        assert total(end, "wb_rejections_total", source="risk", reason=reason) == n
    assert total(end, "wb_rejections_total", source="risk") == den.height
    # latency histograms fed from SessionEngine.timings
    tm = eng.timings
    assert total(end, "wb_decision_latency_seconds_count") == len(tm)
    assert total(end, "wb_decision_latency_seconds_sum") == pytest.approx(
        sum(b.decision_latency for b in tm), rel=1e-9
    )
    assert total(end, "wb_submit_latency_seconds_sum") == pytest.approx(
        sum(b.send for b in tm), rel=1e-9
    )
    # PnL, equity, exposure: the session's per-bar frame at its last bar
    last = res.pnl.row(-1, named=True)
    assert total(end, "wb_session_pnl", strategy=strategy) == pytest.approx(last["cum_pnl"])
    assert total(end, "wb_session_equity", strategy=strategy) == pytest.approx(last["equity"])
    assert total(end, "wb_gross_exposure", strategy=strategy) == pytest.approx(
        last["gross_exposure"]
    )
    eq = res.pnl["equity"]
    peak = eq.cum_max()[-1]
    assert total(end, "wb_session_drawdown") == pytest.approx((peak - eq[-1]) / peak)
    assert total(end, "wb_kill_switch_state") == (2.0 if res.kill_switch.height else 0.0)
    assert total(end, "wb_last_bar_timestamp_seconds") == steps[-1][0].timestamp()
    assert total(end, "wb_bar_staleness_seconds") == 0.0  # replay: the clock is the bar
    assert total(end, "wb_stream_state", wb_stream_state="n/a") == 1.0


def test_staleness_counts_the_calendar_bars_missed(session) -> None:
    eng, live, _, server, _ = session
    steps = list(ReplayBars(live))
    for t, now in steps[:4]:
        eng.step(t, now)
    mon = eng.observer
    last = steps[3][0]
    # one hour after the last bar's close, four 15-minute bars should have closed since
    mon._now = lambda: last + (Timeframe.parse("15Min").delta * 5)
    assert mon.staleness_seconds() == pytest.approx(4 * 15 * 60)
    assert total(scrape(server.url), "wb_bar_staleness_seconds") == pytest.approx(3600)


def test_heat_is_the_stop_risk_of_positions_and_pending_orders(tmp_path: Path) -> None:
    """wb_heat_ratio against the bars: each position (and pending order) risks atr_k = 2 ATRs
    (mean true range of the 14 bars to the decision that opened or grew it) per share."""
    metrics = Metrics()
    sess = child.small_session(
        tmp_path / "ledger.db", venue=tmp_path / "venue.db", pol=child.policy(heat_max=10.0),
        observer=SessionMonitor(metrics, strategy="crash", timeframe="15Min", model="crash v1"),
    )  # fmt: skip
    bars = child.session_bars().sort("symbol", "ts")
    tr = bars.with_columns(pc=pl.col("close").shift(1).over("symbol")).with_columns(
        tr=pl.max_horizontal("high", "pc") - pl.min_horizontal("low", "pc")
    )
    atr = tr.with_columns(atr=pl.col("tr").rolling_mean(14).over("symbol"))
    atr_at = {(s, t): a for s, t, a in atr.select("symbol", "ts", "atr").rows()}
    steps = list(ReplayBars(sess.live))
    seen = []
    for t, now in steps[: len(steps) - 3]:  # before the end-of-day flatten
        sess.engine.step(t, now)
        held: dict[str, tuple[float, float]] = {}  # symbol -> (shares incl. pending, stop)
        for sym, bar_ts, qty in _orders(sess):
            q0, stop = held.get(sym, (0.0, 0.0))
            q1 = q0 + qty
            if q1 == 0:
                stop = 0.0
            elif q0 * q1 <= 0 or abs(q1) > abs(q0):
                stop = 2.0 * atr_at[(sym, bar_ts)]
            held[sym] = (q1, stop)
        heat = sum(abs(q) * s for q, s in held.values())
        equity = sess.engine.risk.equity
        got = metrics.registry.get_sample_value("wb_heat_ratio", {"strategy": "crash"})
        assert got == pytest.approx(heat / equity, rel=1e-9, abs=1e-12), t
        seen.append(got)
    sess.close()
    assert max(seen) > 0.001  # positions were held and their stop risk counted


def _orders(sess) -> list[tuple[str, object, float]]:
    """The session's committed orders in sequence: symbol, decision bar, signed quantity."""
    its = sorted(sess.ledger.intents(sess.engine.session_id), key=lambda i: i.seq)
    return [(i.symbol, i.bar_ts, i.request.signed_qty) for i in its]
