"""The simulated venue: matching on bars, order rules, brackets, durability, and the backtest's costs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from workbench.backtest import run_backtest
from workbench.backtest.costs import CostModel
from workbench.config import BacktestConfig, CostsConfig
from workbench.data.assets import AssetFacts
from workbench.execution import broker as broker_mod
from workbench.execution.broker import Broker, NotFound, OrderRefused
from workbench.execution.orders import (
    Leg,
    OrderClass,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from workbench.execution.sim_broker import SimulatedBroker

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
COSTS = CostsConfig(
    commission_per_share=0.01, commission_min=1.0, half_spread_bps=5.0, slippage_bps=1.0
)
FREE = CostsConfig(half_spread_bps=0.0)


def bar(i: int, o: float, h: float, lo: float, c: float, v: float = 1000.0, sym: str = "A"):
    return {
        "symbol": sym,
        "ts": T0 + timedelta(minutes=5 * i),
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
    }


def req(cid: str, side: Side, qty: float, sym: str = "A", **kw) -> OrderRequest:
    kw.setdefault("time_in_force", TimeInForce.GTC)
    return OrderRequest(cid, sym, side, qty=qty, **kw)


def names(b: SimulatedBroker) -> list[str]:
    return [e.event for e in b.events()]


def test_protocol_and_registry() -> None:
    b = SimulatedBroker(1_000)
    assert isinstance(b, Broker)
    assert broker_mod._REGISTRY["sim"] is SimulatedBroker
    acct = b.account()
    assert acct.endpoint == "sim://memory" and acct.paper and acct.cash == 1_000


def test_market_round_trip_hand_computed() -> None:
    b = SimulatedBroker(10_000, COSTS)
    o = b.submit(req("o1", Side.BUY, 100, decided_at=T0))
    assert o.status is OrderStatus.NEW
    assert b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.5))
    (f,) = b.fills
    assert f.price == pytest.approx(50.0 * 1.0006)  # 5 bps half-spread + 1 bp slippage, adverse
    assert f.commission == pytest.approx(1.0)  # 100 x $0.01 = $1, the minimum
    assert f.ref_price == 50.0 and f.venue == "sim" and f.ts == T0 + timedelta(minutes=5)
    assert b.cash == pytest.approx(10_000 - 100 * 50.03 - 1.0)
    ev = b.events()
    assert [e.event for e in ev] == ["new", "fill"]
    assert ev[1].execution_id == f.execution_id and ev[1].qty == 100
    assert ev[1].commission == pytest.approx(1.0) and ev[1].position_qty == 100
    got = b.get_order(o.id)
    assert got.status is OrderStatus.FILLED and got.filled_avg_price == pytest.approx(50.03)
    b.submit(req("o2", Side.SELL, 100, decided_at=T0 + timedelta(minutes=5)))
    b.on_bar(bar(2, 51.0, 51.5, 50.5, 51.0))
    g = b.fills[-1]
    assert g.price == pytest.approx(51.0 * 0.9994) and g.qty == -100
    assert g.execution_id != f.execution_id
    assert b.position("A") == 0 and b.positions() == []
    assert b.mark({"A": 52.0}) == pytest.approx(10_000 + 100 * (51 * 0.9994 - 50.03) - 2.0)


def test_limit_buy_fills_through_the_limit_at_the_limit_or_the_open() -> None:
    b = SimulatedBroker(100_000, COSTS)  # no spread or slippage on a limit price
    b.submit(req("l1", Side.BUY, 100, type=OrderType.LIMIT, limit_price=49.5))
    b.on_bar(bar(1, 50.0, 51.0, 49.6, 50.0))  # low above the limit: no fill
    assert b.fills == []
    b.on_bar(bar(2, 50.0, 50.5, 49.0, 49.8))
    (f,) = b.fills
    assert f.price == 49.5 and f.commission == pytest.approx(1.0)
    b.submit(req("l2", Side.BUY, 100, type=OrderType.LIMIT, limit_price=49.5))
    b.on_bar(bar(3, 48.0, 49.0, 47.5, 48.5))  # gaps down through the limit: the open
    assert b.fills[-1].price == 48.0
    b.submit(req("l3", Side.SELL, 50, type=OrderType.LIMIT, limit_price=51.0))
    b.on_bar(bar(4, 52.0, 52.5, 51.5, 52.0))  # gaps up through a sell limit: the open
    assert b.fills[-1].price == 52.0 and b.fills[-1].qty == -50


def test_stop_buy_triggers_and_fills_like_a_market_order() -> None:
    b = SimulatedBroker(100_000, COSTS)
    b.submit(req("s1", Side.BUY, 100, type=OrderType.STOP, stop_price=52.0))
    b.on_bar(bar(1, 50.0, 51.9, 49.5, 51.0))
    assert b.fills == []
    b.on_bar(bar(2, 51.0, 53.0, 50.8, 52.5))  # trades through 52 from below: at the stop
    assert b.fills[-1].price == pytest.approx(52.0 * 1.0006)
    assert b.fills[-1].ref_price == 52.0
    b.submit(req("s2", Side.BUY, 100, type=OrderType.STOP, stop_price=52.0))
    b.on_bar(bar(3, 53.0, 54.0, 52.8, 53.5))  # gaps over the stop: the open
    assert b.fills[-1].price == pytest.approx(53.0 * 1.0006)
    # stop-limit: the trigger, then no worse than the limit
    b.submit(req("s3", Side.SELL, 50, type=OrderType.STOP_LIMIT, stop_price=50.0, limit_price=49.0))
    b.on_bar(bar(4, 51.0, 51.0, 48.0, 48.5))
    assert b.fills[-1].price == 50.0 and b.fills[-1].qty == -50


def test_participation_cap_partial_fills_across_bars() -> None:
    costs = CostsConfig(commission_per_share=0.001, commission_min=1.0, half_spread_bps=0.0)
    b = SimulatedBroker(100_000, costs, participation=0.1)
    o = b.submit(req("p", Side.BUY, 250))
    for i, px in enumerate((10.0, 11.0, 12.0), start=1):
        b.on_bar(bar(i, px, px + 0.5, px - 0.5, px, v=1000.0))
    assert [f.qty for f in b.fills] == [100, 100, 50]
    assert sum(f.qty for f in b.fills) == 250
    got = b.get_order(o.id)
    assert got.status is OrderStatus.FILLED
    assert got.filled_avg_price == pytest.approx((100 * 10 + 100 * 11 + 50 * 12) / 250)  # 10.8
    # the order's commission is charged once on its cumulative fills: $0.25 -> the $1 minimum
    assert [f.commission for f in b.fills] == pytest.approx([1.0, 0.0, 0.0])
    assert names(b) == ["new", "partial_fill", "partial_fill", "fill"]
    b.submit(req("q", Side.SELL, 3))
    b.on_bar(bar(4, 12.0, 12.5, 11.5, 12.0, v=5.0))  # floor(0.5) -> at least one share
    assert b.fills[-1].qty == -1


def test_bracket_take_profit_fill_cancels_the_stop_loss() -> None:
    b = SimulatedBroker(100_000, FREE)
    o = b.submit(
        req(
            "br",
            Side.BUY,
            100,
            order_class=OrderClass.BRACKET,
            take_profit=Leg(limit_price=55.0),
            stop_loss=Leg(stop_price=45.0),
        )
    )
    assert [leg.status for leg in o.legs] == [OrderStatus.HELD, OrderStatus.HELD]
    b.on_bar(bar(1, 50.0, 56.0, 49.0, 52.0))  # the entry fills; the legs work from the next bar
    assert b.position("A") == 100 and len(b.fills) == 1
    tp, sl = b.get_order(o.id).legs
    assert tp.status is OrderStatus.NEW and sl.status is OrderStatus.NEW
    assert tp.type is OrderType.LIMIT and sl.type is OrderType.STOP and tp.side is Side.SELL
    b.on_bar(bar(2, 52.0, 56.0, 51.0, 55.5))
    assert b.fills[-1].price == 55.0 and b.position("A") == 0
    tp, sl = b.get_order(o.id).legs
    assert tp.status is OrderStatus.FILLED and sl.status is OrderStatus.CANCELED
    assert names(b) == ["new", "fill", "new", "new", "fill", "canceled"]
    assert b.open_orders() == []


def test_bracket_both_legs_in_one_bar_takes_the_stop_loss() -> None:
    b = SimulatedBroker(100_000, FREE)
    o = b.submit(
        req(
            "br",
            Side.BUY,
            100,
            order_class=OrderClass.BRACKET,
            take_profit=Leg(limit_price=55.0),
            stop_loss=Leg(stop_price=45.0),
        )
    )
    b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    b.on_bar(bar(2, 50.0, 56.0, 44.0, 50.0))  # no gap through the take-profit: the pessimistic path
    assert b.fills[-1].price == 45.0 and b.position("A") == 0
    tp, sl = b.get_order(o.id).legs
    assert sl.status is OrderStatus.FILLED and tp.status is OrderStatus.CANCELED


def test_day_orders_expire_gtc_orders_stay() -> None:
    b = SimulatedBroker(100_000, FREE)
    day = b.submit(req("d", Side.BUY, 10, type=OrderType.LIMIT, limit_price=40.0,
                       time_in_force=TimeInForce.DAY))  # fmt: skip
    gtc = b.submit(req("g", Side.BUY, 10, type=OrderType.LIMIT, limit_price=40.0))
    b.on_bars(pl.DataFrame([bar(1, 50.0, 51.0, 49.0, 50.0)]), end_of_day=True)
    assert b.get_order(day.id).status is OrderStatus.EXPIRED
    assert b.get_order(gtc.id).status is OrderStatus.NEW
    assert names(b) == ["new", "new", "expired"]
    assert b.expire_day() == 0


def test_rule_refusals() -> None:
    b = SimulatedBroker(100_000, FREE, alpaca_rules=True)  # Alpaca: no single order across zero
    b.submit(req("x", Side.BUY, 100))
    with pytest.raises(OrderRefused, match="client_order_id must be unique"):
        b.submit(req("x", Side.BUY, 1))
    b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    with pytest.raises(OrderRefused, match="would cross zero") as e:
        b.submit(req("y", Side.SELL, 150))
    assert e.value.status == 422
    assert b.get_order_by_client_id("y") is None
    flip = SimulatedBroker(100_000, FREE)  # the default: one fill from long to short, as backtested
    flip.submit(req("x", Side.BUY, 100))
    flip.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    assert flip.submit(req("y", Side.SELL, 150)).status is OrderStatus.NEW
    with pytest.raises(OrderRefused, match="limit_price"):
        b.submit(req("z", Side.BUY, 1, type=OrderType.LIMIT))
    no_short = SimulatedBroker(100_000, FREE, shortable=False)
    with pytest.raises(OrderRefused, match="cannot be shorted"):
        no_short.submit(req("s", Side.SELL, 1))


def test_venue_rejections_not_shortable_buying_power_halted() -> None:
    b = SimulatedBroker(1_000, FREE, assets={"A": AssetFacts("A", shortable=False)}, margin=1.0)
    o = b.submit(req("s", Side.SELL, 10))
    assert o.status is OrderStatus.REJECTED and "not shortable" in b.reason(o.id)
    assert names(b) == ["new", "rejected"]
    b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    o = b.submit(req("bp", Side.BUY, 100))  # $5,000 at the last price > $1,000 of buying power
    assert o.status is OrderStatus.REJECTED and "buying power" in b.reason(o.id)
    ok = b.submit(req("ok", Side.BUY, 10))  # $500 fits
    assert ok.status is OrderStatus.NEW
    assert b.account().buying_power == pytest.approx(500.0)  # the open order holds $500
    margin = SimulatedBroker(1_000, FREE, margin=10.0)
    margin.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    assert margin.submit(req("bp", Side.BUY, 100)).status is OrderStatus.NEW
    h = SimulatedBroker(1_000, FREE, halted=["A"])
    o = h.submit(req("h", Side.BUY, 1))
    assert o.status is OrderStatus.REJECTED and "halted" in h.reason(o.id)
    h.set_halted("A", False)
    assert h.submit(req("h2", Side.BUY, 1)).status is OrderStatus.NEW


def test_replace_cancel_and_lookups() -> None:
    b = SimulatedBroker(100_000, FREE)
    old = b.submit(req("r", Side.BUY, 100, type=OrderType.LIMIT, limit_price=49.0))
    new = b.replace(old.id, limit_price=49.5)
    assert new.id != old.id and new.replaces == old.id and new.limit_price == 49.5
    got_old = b.get_order(old.id)
    assert got_old.status is OrderStatus.REPLACED and got_old.replaced_by == new.id
    assert b.get_order_by_client_id("r").id == old.id  # the original, like Alpaca
    assert b.get_order_by_client_id(new.client_order_id).id == new.id
    assert [o.id for o in b.open_orders()] == [new.id]
    b.on_bar(bar(1, 50.0, 50.5, 49.4, 50.0))  # 49.4 < 49.5: the replacement fills
    assert b.fills[-1].price == 49.5 and b.fills[-1].order_id == new.id
    assert names(b) == ["new", "replaced", "new", "fill"]
    for call in (lambda: b.replace(new.id, limit_price=48.0), lambda: b.cancel(new.id)):
        with pytest.raises(OrderRefused, match="filled"):
            call()
    with pytest.raises(NotFound):
        b.get_order("nope")
    c = b.submit(req("c", Side.BUY, 1, type=OrderType.LIMIT, limit_price=10.0))
    b.cancel(c.id)
    assert b.get_order(c.id).status is OrderStatus.CANCELED
    assert [o.client_order_id for o in b.recent_orders()][:2] == ["c", new.client_order_id]


def test_same_bar_twice_fills_once_and_latency_waits() -> None:
    b = SimulatedBroker(100_000, COSTS)
    b.submit(req("o", Side.BUY, 10))
    assert b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    assert not b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))  # a restarted session re-delivers it
    assert b.on_bars(pl.DataFrame([bar(1, 50.0, 51.0, 49.0, 50.0)])) == 0
    assert len(b.fills) == 1 and b.position("A") == 10
    slow = SimulatedBroker(100_000, COSTS, latency_bars=1)
    slow.on_bar(bar(0, 50.0, 51.0, 49.0, 50.0))
    slow.submit(req("o", Side.BUY, 10, decided_at=T0))
    slow.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    assert slow.fills == []
    slow.on_bar(bar(2, 52.0, 53.0, 51.0, 52.0))
    assert slow.fills[0].ref_price == 52.0


def test_borrow_hand_computed_act_360() -> None:
    costs = CostsConfig(half_spread_bps=0.0, borrow_bps_annual=360.0)  # 0.01% per calendar day
    b = SimulatedBroker(100_000, costs)
    day = datetime(2024, 1, 4, 21, tzinfo=UTC)  # Thu, Fri, then Mon (3 calendar days)
    stamps = [day, day + timedelta(days=1), day + timedelta(days=4)]
    closes = [100.0, 110.0, 120.0]
    b.submit(req("s", Side.SELL, 100))
    for ts, c in zip(stamps, closes, strict=True):
        b.on_bars(pl.DataFrame([{**bar(0, c, c, c, c), "ts": ts}]))
    assert not b.intraday
    # the first timestamp accrues nothing; then 100 x close x 1e-4 x days
    expected = [100 * 110.0 * 1e-4 * 1, 100 * 120.0 * 1e-4 * 3]
    assert [a for _, _, a in b.borrow_charges] == pytest.approx(expected)
    assert b.cash == pytest.approx(100_000 + 100 * 100.0 - sum(expected))


def test_state_url_round_trip(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'venue.db'}"
    b = SimulatedBroker(10_000, COSTS, state_url=url, participation=0.05)
    o = b.submit(req("p", Side.BUY, 100))
    b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))  # 50 of 100
    b.submit(req("l", Side.BUY, 5, type=OrderType.LIMIT, limit_price=10.0))
    state = (b.cash, b.position("A"), b.fills, b.open_orders(), b.account().equity)
    b.close()
    r = SimulatedBroker(1.0, COSTS, state_url=url, participation=0.05)  # cash only for a new store
    assert (r.cash, r.position("A"), r.fills, r.open_orders(), r.account().equity) == state
    assert r.account().endpoint == f"sim://{tmp_path / 'venue.db'}"
    assert names(r) == ["new", "partial_fill", "new"]  # undrained events survive
    r.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))  # already seen
    r.on_bar(bar(2, 51.0, 52.0, 50.0, 51.0))
    assert r.get_order(o.id).status is OrderStatus.FILLED
    r.close()
    r2 = SimulatedBroker(1.0, COSTS, state_url=url)
    # a re-opened venue delivers its whole event history once (consumers dedupe by execution id)
    assert names(r2) == ["new", "partial_fill", "new", "fill"] and r2.events() == []
    assert [e.event for e in r2.replay_events()] == ["new", "partial_fill", "new", "fill"]
    assert r2.position("A") == 100
    r2.close()


DRIVER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime, timedelta
    from workbench.config import CostsConfig
    from workbench.execution.broker import OrderRefused
    from workbench.execution.orders import OrderRequest, OrderType, Side, TimeInForce
    from workbench.execution.sim_broker import SimulatedBroker

    T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    COSTS = CostsConfig(commission_per_share=0.01, commission_min=1.0, half_spread_bps=3.0,
                        slippage_bps=1.0, borrow_bps_annual=3000.0)
    N = 60

    def make(url=None):
        return SimulatedBroker(50_000, COSTS, state_url=url, participation=0.5)

    def drive(b, pause=0.0):
        for i in range(N):
            for k, sym in enumerate(("A", "B")):
                side, qty = [(Side.BUY, 10), (Side.SELL, 5), (Side.SELL, 5)][i % 3]
                if sym == "B":
                    side = Side.SELL if side is Side.BUY else Side.BUY
                kind = OrderType.LIMIT if i % 5 == 4 else OrderType.MARKET
                lim = 100.0 + i * 0.1 + (2.0 if side is Side.BUY else -2.0)
                try:
                    b.submit(OrderRequest(f"k{i}{sym}", sym, side, qty=qty, type=kind,
                             limit_price=lim if kind is OrderType.LIMIT else None,
                             time_in_force=TimeInForce.GTC))
                except OrderRefused as e:
                    if "unique" not in str(e) and "cross zero" not in str(e):
                        raise
            px = 100.0 + i * 0.1
            rows = [dict(symbol=s, ts=T0 + timedelta(minutes=5 * i), open=px, high=px + 1,
                         low=px - 1, close=px + 0.05, volume=12.0 + (i % 4)) for s in ("A", "B")]
            import polars as pl
            b.on_bars(pl.DataFrame(rows))
            b.events()
            print("step", i, flush=True)
            time.sleep(pause)

    if __name__ == "__main__":
        drive(make(sys.argv[1]), float(sys.argv[2]))
    """
)


def _consistent(b: SimulatedBroker) -> None:
    fills = b.fills
    assert len({f.execution_id for f in fills}) == len(fills)
    paid = sum(a for _, _, a in b.borrow_charges)
    assert b.cash == pytest.approx(
        50_000 - sum(f.qty * f.price + f.commission for f in fills) - paid
    )
    for sym in ("A", "B"):
        assert b.position(sym) == pytest.approx(sum(f.qty for f in fills if f.symbol == sym))
    for o in b.recent_orders():
        assert o.filled_qty == pytest.approx(sum(abs(f.qty) for f in fills if f.order_id == o.id))


def test_sigkill_mid_loop_reopens_consistent_and_resumes(tmp_path) -> None:
    script = tmp_path / "drive.py"
    script.write_text(DRIVER)
    url = f"sqlite:///{tmp_path / 'venue.db'}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, str(script), url, "0.01"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step 15"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ns: dict = {}
    exec(compile(DRIVER, "drive", "exec"), ns)
    b = ns["make"](url)
    steps = b._syms["A"].n_bars
    assert 15 <= steps < ns["N"]  # killed mid-loop
    _consistent(b)
    ns["drive"](b)  # the restarted session re-sends the same intents and bars
    _consistent(b)
    ref = ns["make"]()
    ns["drive"](ref)
    assert [(f.execution_id, f.qty, f.price, f.commission) for f in b.fills] == [
        (f.execution_id, f.qty, f.price, f.commission) for f in ref.fills
    ]
    assert b.cash == ref.cash and b.borrow_charges == ref.borrow_charges
    b.close()


def test_costs_equal_the_backtest_fill_for_fill() -> None:
    """Random share targets on simulator bars: the venue's fills, commissions and borrow are the
    backtest's (spread from bars, U-shaped slippage, impact and borrow all on)."""
    from workbench.data.sources.synthetic import SyntheticSource
    from workbench.data.timeframe import Timeframe

    symbols = ["SYN000", "SYN001", "SYN002"]
    bars = SyntheticSource(seed=5).fetch(
        symbols,
        Timeframe.parse("5Min"),
        datetime(2024, 11, 25, tzinfo=UTC),
        datetime(2024, 11, 28, tzinfo=UTC),
    )
    costs = CostsConfig(
        commission_per_share=0.005, commission_min=1.0, commission_bps=0.3, commission_flat=0.05,
        half_spread_bps=2.0, spread_from_bars=True, slippage_bps=1.0, impact_coef=0.5,
        intraday_u_shape=1.5, borrow_bps_annual=500.0, estimate_span=10,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    rows = []
    for sym in symbols:
        last = 0.0
        for ts in bars.filter(pl.col("symbol") == sym)["ts"]:
            if rng.random() < 0.15:
                new = float(rng.integers(-300, 301))
                new = 0.0 if new * last < 0 else new  # the venue refuses crossing zero in one order
                rows.append((sym, ts, new))
                last = new
    targets = pl.DataFrame(
        rows,
        schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "target": pl.Float64},
        orient="row",
    )
    cfg = BacktestConfig(initial_cash=100_000, sizing="shares", max_leverage=10.0, costs=costs)
    bt = run_backtest(bars, targets, config=cfg)
    # the backtest's decision-row estimates, to compare with the venue's running ones
    grid = bars.pivot(on="symbol", index="ts", values=["high", "low", "close", "volume"]).sort("ts")
    arr = {c: grid.select(f"{c}_{s}" for s in symbols).to_numpy() for c in ("high", "low", "close", "volume")}  # fmt: skip
    ca = CostModel.from_config(costs).prepare(
        arr["high"], arr["low"], arr["close"], arr["volume"],
        grid["ts"].dt.epoch("us").to_numpy(), intraday=True,
    )  # fmt: skip

    b = SimulatedBroker(100_000, costs, margin=10.0)
    want = {(s, t): x for s, t, x in rows}
    last_target: dict[str, float] = {}
    k = 0
    for t, ((ts,), frame) in enumerate(
        bars.sort("ts", "symbol").group_by("ts", maintain_order=True)
    ):
        b.on_bars(frame)
        for j, sym in enumerate(symbols):
            assert b.estimates(sym) == pytest.approx(
                (ca.half_spread[t, j], ca.sigma[t, j], ca.volume[t, j]), rel=0, abs=0, nan_ok=True
            )
        for sym in frame["symbol"]:
            tg = want.get((sym, ts))
            if tg is None or tg == last_target.get(sym):
                continue
            last_target[sym] = tg
            d = tg - b.position(sym)
            if d != 0:
                k += 1
                side = Side.BUY if d > 0 else Side.SELL
                b.submit(req(f"c{k}", side, abs(d), sym=sym, decided_at=ts))
        b.events()
    assert b.intraday and bt.fills.height > 50
    venue = pl.DataFrame(
        [
            {"ts": f.ts, "symbol": f.symbol, "decision_ts": f.decided_at, "qty": f.qty,
             "ref_price": f.ref_price, "price": f.price, "commission": f.commission}
            for f in b.fills
        ]
    ).sort("symbol", "ts")  # fmt: skip
    back = bt.fills.select(venue.columns).sort("symbol", "ts")
    assert venue.equals(back)  # exact, float for float
    assert (back["qty"] < 0).any() and (bt.sim.cum_borrow > 0).all()
    assert [b.borrow_paid[s] for s in symbols] == bt.sim.cum_borrow.tolist()
    assert b.cash == pytest.approx(bt.equity["cash"][-1], rel=1e-12)
    assert b.equity == pytest.approx(bt.equity["equity"][-1], rel=1e-12)


def test_oco_exit_and_oto_leg() -> None:
    b = SimulatedBroker(100_000, FREE)
    b.submit(req("e", Side.BUY, 100))
    b.on_bar(bar(1, 50.0, 51.0, 49.0, 50.0))
    oco = b.submit(
        req("x", Side.SELL, 100, type=OrderType.LIMIT, limit_price=55.0,
            order_class=OrderClass.OCO, take_profit=Leg(limit_price=55.0),
            stop_loss=Leg(stop_price=45.0))
    )  # fmt: skip
    (sl,) = oco.legs
    assert oco.status is OrderStatus.NEW and sl.status is OrderStatus.NEW  # both work at once
    b.on_bar(bar(2, 47.0, 48.0, 44.0, 45.0))  # the stop-loss trades at 45
    assert b.fills[-1].price == 45.0 and b.position("A") == 0
    assert b.get_order(oco.id).status is OrderStatus.CANCELED
    oto = b.submit(
        req("o", Side.BUY, 10, order_class=OrderClass.OTO, stop_loss=Leg(stop_price=40.0),
            time_in_force=TimeInForce.DAY)
    )  # fmt: skip
    assert [leg.status for leg in oto.legs] == [OrderStatus.HELD]
    b.on_bar(bar(3, 46.0, 47.0, 45.0, 46.0))
    assert b.get_order(oto.id).legs[0].status is OrderStatus.NEW
    b.expire_day()
    assert b.get_order(oto.id).legs[0].status is OrderStatus.EXPIRED
