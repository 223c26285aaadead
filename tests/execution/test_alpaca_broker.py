"""AlpacaBroker against the local trading stub: orders, ambiguity resolution without duplicates,
retries, refusals with Alpaca's words, the trade_updates stream with REST as the truth, the live
opt-ins, and keys that never leak."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.alpaca.trading_stub import KEY_ID, SECRET, TradingStub
from workbench.config import AlpacaConfig, WorkbenchConfig
from workbench.data.ratelimit import RateLimiter
from workbench.data.sources._alpaca_http import RetryPolicy
from workbench.errors import ConfigError, CredentialsError
from workbench.execution import alpaca as A
from workbench.execution.alpaca import (
    LIVE_URL,
    PAPER_URL,
    AlpacaBroker,
    parse_event,
    parse_order,
    resolve_trading_endpoint,
)
from workbench.execution.broker import (
    Broker,
    NotFound,
    OrderRefused,
    OutcomeUnknown,
    Unreachable,
    make_broker,
)
from workbench.execution.orders import (
    Leg,
    OrderClass,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
    check_request,
)

ENV = {"APCA_API_KEY_ID": KEY_ID, "APCA_API_SECRET_KEY": SECRET}


def fast_policy(timeout: float = 0.5, retries: int = 3) -> RetryPolicy:
    return RetryPolicy(
        max_retries=retries,
        timeout=timeout,
        backoff_initial=0.01,
        backoff_max=0.05,
        rate_limit_wait_max=0.2,
    )


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def stub() -> Iterator[TradingStub]:
    with TradingStub() as s:
        yield s


@pytest.fixture
def make(stub: TradingStub) -> Iterator[Callable[..., AlpacaBroker]]:
    made: list[AlpacaBroker] = []

    def build(**kw: Any) -> AlpacaBroker:
        args: dict[str, Any] = {
            "environ": ENV,
            "retry": fast_policy(),
            "limiter": RateLimiter(1000, 1.0),
            "watchdog_seconds": 0.2,
            "poll_seconds": 0.1,
            "reconnect_min": 0.05,
            "reconnect_max": 0.2,
            "resolve_wait": 0.02,
            "stream": False,
        }
        args.update(kw)
        b = AlpacaBroker(args.pop("trading_url", stub.url), **args)
        made.append(b)
        if b._stream is not None:
            assert b.wait_stream(5)
        return b

    yield build
    for b in made:
        b.close()


def req(cid: str, symbol: str = "AAPL", side: Side = Side.BUY, qty: float = 10, **kw: Any):
    return OrderRequest(cid, symbol, side, qty=qty, **kw)


def collect(
    b: AlpacaBroker, until: Callable[[list[OrderEvent]], bool], timeout: float = 5.0
) -> list[OrderEvent]:
    got: list[OrderEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got.extend(b.events())
        if until(got):
            return got
        time.sleep(0.02)
    raise AssertionError(f"events never satisfied the condition: {[e.event for e in got]}")


def fills_of(events: list[OrderEvent], order_id: str) -> list[OrderEvent]:
    return [e for e in events if e.order.id == order_id and e.event in ("fill", "partial_fill")]


def posts(stub: TradingStub) -> list[int]:
    return [s for m, p, s in stub.requests if m == "POST" and p == "/v2/orders"]


# --------------------------------------------------------------------------- orders


def test_the_broker_protocol(make: Callable[..., AlpacaBroker], stub: TradingStub) -> None:
    b = make()
    assert isinstance(b, Broker) and b.name == "alpaca-paper" and b.stream_state == "off"
    r = check_request(req("wb-s-000001"), b.capabilities, position=0.0)
    o = b.submit(r)
    assert o.client_order_id == "wb-s-000001" and o.status is OrderStatus.ACCEPTED
    assert o.order_class is OrderClass.SIMPLE  # "" on the wire
    got = b.get_order(o.id)
    assert got.status is OrderStatus.FILLED and got.filled_qty == 10 and got.filled_avg_price == 100
    assert b.get_order_by_client_id("wb-s-000001").id == o.id
    assert b.get_order_by_client_id("wb-nope") is None
    with pytest.raises(NotFound):
        b.get_order("00000000-0000-4000-8000-000000000000")
    (pos,) = b.positions()
    assert (pos.symbol, pos.qty, pos.avg_entry_price) == ("AAPL", 10, 100)
    acct = b.account()
    assert acct.endpoint == stub.url and acct.paper and not acct.trading_blocked
    assert acct.cash == pytest.approx(99_000) and acct.equity == pytest.approx(100_000)
    assert acct.buying_power > 0 and "pattern_day_trader" not in acct.extra
    lim = b.submit(req("wb-s-000002", side=Side.SELL, qty=4, type=OrderType.LIMIT,
                       limit_price=110.0, time_in_force=TimeInForce.GTC))  # fmt: skip
    assert [x.id for x in b.open_orders()] == [lim.id]
    new = b.replace(lim.id, limit_price=105.0, client_order_id="wb-s-000002r")
    assert new.id != lim.id and new.replaces == lim.id and new.limit_price == 105
    assert b.get_order(lim.id).status is OrderStatus.REPLACED
    b.cancel(new.id)
    assert b.get_order(new.id).status is OrderStatus.CANCELED
    b.cancel(new.id)  # already canceled: 422 at Alpaca, fine here
    b.cancel(o.id)  # filled: 422, terminal, fine
    with pytest.raises(NotFound):
        b.cancel("00000000-0000-4000-8000-000000000000")
    assert b.open_orders() == []
    recent = b.recent_orders(datetime.now(UTC) - timedelta(minutes=1))
    assert [x.client_order_id for x in recent] == ["wb-s-000001", "wb-s-000002", "wb-s-000002r"]
    assert b.recent_orders(datetime.now(UTC) + timedelta(minutes=1)) == []


def test_bracket_and_fractional_payloads(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    stub.fill_mode = "manual"
    b = make()
    br = b.submit(req("wb-b-1", "MSFT", qty=3, order_class=OrderClass.BRACKET,
                      take_profit=Leg(limit_price=120.0), stop_loss=Leg(stop_price=90.0)))  # fmt: skip
    assert br.order_class is OrderClass.BRACKET
    assert [(leg.type, leg.status) for leg in br.legs] == [
        (OrderType.LIMIT, OrderStatus.HELD),
        (OrderType.STOP, OrderStatus.HELD),
    ]
    (listed,) = b.open_orders()
    assert listed.id == br.id and len(listed.legs) == 2  # nested=true
    frac = b.submit(req("wb-f-1", "NVDA", qty=0.25))
    assert frac.qty == 0.25
    notional = b.submit(OrderRequest("wb-n-1", "SPY", Side.BUY, notional=250.0))
    assert notional.qty is None and notional.notional == 250
    stub.fill(notional.id)
    assert b.get_order(notional.id).filled_qty == pytest.approx(2.5)
    b.replace(frac.id, qty=0.5)  # fractional qty: not expressible with ReplaceOrderRequest
    assert any(o["qty"] == "0.5" and o["replaces"] == frac.id for o in stub.orders.values())


def test_pagination_of_open_orders(
    make: Callable[..., AlpacaBroker], stub: TradingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(A, "_PAGE", 3)
    stub.fill_mode = "manual"
    b = make()
    ids = [b.submit(req(f"wb-pg-{i}", qty=1)).id for i in range(8)]
    assert [o.id for o in b.open_orders()] == ids
    gets = [p for m, p, s in stub.requests if m == "GET" and p == "/v2/orders"]
    assert len(gets) == 4  # pages overlap by one order (`after` is exclusive; ties stay in)


# --------------------------------------------------------------------------- ambiguity


def test_504_after_create_returns_the_one_order(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    b = make()
    stub.inject("POST", "/v2/orders", "504-after-create")
    o = b.submit(req("wb-504"))
    assert o.client_order_id == "wb-504" and stub.count_orders("wb-504") == 1
    assert posts(stub) == [504]  # never re-POSTed


def test_timeout_after_create_returns_the_one_order(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    stub.hang_seconds = 1.0
    b = make(retry=fast_policy(timeout=0.3))
    stub.inject("POST", "/v2/orders", "timeout-after-create")
    t0 = time.monotonic()
    o = b.submit(req("wb-slow"))
    assert time.monotonic() - t0 < 1.0
    assert o.client_order_id == "wb-slow" and stub.count_orders("wb-slow") == 1
    assert len(posts(stub)) == 1


def test_timeout_without_create_is_unknown_and_never_resent(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    stub.hang_seconds = 0.6
    b = make(retry=fast_policy(timeout=0.3), resolve_lookups=3)
    for fault in ("timeout", "500", "503", "drop"):
        stub.inject("POST", "/v2/orders", fault)
        with pytest.raises(OutcomeUnknown, match="get_order_by_client_id") as ei:
            b.submit(req(f"wb-lost-{fault}"))
        assert "new client_order_id" in str(ei.value)
        assert stub.count_orders(f"wb-lost-{fault}") == 0
    assert len(posts(stub)) == 4  # one POST per submit
    stub.inject("POST", "/v2/orders", "drop-after-create")
    assert b.submit(req("wb-dropped")).client_order_id == "wb-dropped"
    assert stub.count_orders("wb-dropped") == 1


def test_a_submit_hitting_the_deadline_is_unknown_posted_once_and_found_later(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    """The POST is accepted but answered after the deadline, and every lookup hangs too: the
    submit ends at the deadline as OutcomeUnknown naming the endpoint, with one POST; once the
    server answers again the order is found by its client order id (exactly one exists)."""
    stub.hang_seconds = 1.2
    policy = RetryPolicy(timeout=0.3, deadline=0.8, backoff_initial=0.01, backoff_max=0.05)
    b = make(retry=policy, resolve_lookups=10)
    stub.inject("POST", "/v2/orders", "timeout-after-create")
    stub.inject("GET", "/v2/orders:by_client_order_id", "timeout", times=1000)
    t0 = time.monotonic()
    with pytest.raises(OutcomeUnknown) as ei:
        b.submit(req("wb-deadline"))
    assert time.monotonic() - t0 < 0.8 + 0.4
    msg = str(ei.value)
    assert f"{stub.url}/v2/orders" in msg and "within the 0.8 s deadline" in msg
    assert "get_order_by_client_id('wb-deadline')" in msg and "new client_order_id" in msg
    lookups = [p for m, p, _ in stub.requests if p == "/v2/orders:by_client_order_id"]
    assert 1 <= len(lookups) < 10  # the deadline, not the lookup count, ended it
    stub.clear_faults()
    assert len(posts(stub)) == 1  # never re-POSTed
    found = b.get_order_by_client_id("wb-deadline")
    assert found is not None and stub.count_orders("wb-deadline") == 1
    assert len(posts(stub)) == 1


def test_429_on_submit_is_resent_once_with_the_same_id(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    b = make()
    stub.inject("POST", "/v2/orders", "429")
    o = b.submit(req("wb-429"))
    assert o.client_order_id == "wb-429" and stub.count_orders("wb-429") == 1
    assert posts(stub) == [429, 200]
    stub.inject("POST", "/v2/orders", "429", times=5)
    with pytest.raises(OutcomeUnknown):
        b.submit(req("wb-429b"))
    assert posts(stub)[2:] == [429, 429]  # resent once, not more
    assert stub.count_orders("wb-429b") == 0


def test_duplicate_client_order_id_returns_the_existing_order(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    b = make()
    first = b.submit(req("wb-dup"))
    again = b.submit(req("wb-dup", qty=3))
    assert again.id == first.id and again.qty == 10
    assert stub.count_orders("wb-dup") == 1
    assert posts(stub) == [200, 422]


def test_refusals_carry_alpacas_code_and_message(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    b = make()
    b.submit(req("wb-r-1", qty=5))
    b.submit(req("wb-r-2", "TSLA", qty=2, type=OrderType.LIMIT, limit_price=50.0))
    with pytest.raises(OrderRefused) as ei:
        b.submit(req("wb-r-3", "TSLA", side=Side.SELL, qty=1))
    e = ei.value
    assert (e.status, e.code) == (422, 42210000)
    assert "potential wash trade detected. use complex orders" in str(e) and "42210000" in str(e)
    with pytest.raises(OrderRefused) as ei:
        b.submit(req("wb-r-4", side=Side.SELL, qty=8))
    assert (ei.value.status, ei.value.code) == (403, 40310000)
    assert "insufficient qty available for order (requested: 8, available: 5)" in str(ei.value)
    with pytest.raises(OrderRefused, match="insufficient buying power"):
        b.submit(req("wb-r-5", "MSFT", qty=5000))
    assert stub.count_orders("wb-r-3") == stub.count_orders("wb-r-4") == 0


def test_reads_are_retried(make: Callable[..., AlpacaBroker], stub: TradingStub) -> None:
    b = make(retry=fast_policy(retries=4))
    for fault in ("500", "503", "429", "drop"):
        stub.inject("GET", "/v2/account", fault)
    stub.hang_seconds = 0.6
    b2 = make(retry=fast_policy(timeout=0.2, retries=5))
    assert b.account().equity == pytest.approx(100_000)
    assert [s for m, p, s in stub.requests if p == "/v2/account"] == [500, 503, 429, 0, 200]
    stub.inject("GET", "/v2/positions", "timeout")
    assert b2.positions() == []
    stub.inject("GET", "/v2/positions", "503", times=10)
    with pytest.raises(Unreachable, match="did not answer"):
        b.positions()
    stub.clear_faults()
    stub.inject("DELETE", "/v2/orders/", "504-after-create")  # cancel applied, then 504
    stub.fill_mode = "manual"
    o = b.submit(req("wb-c-1"))
    b.cancel(o.id)  # retried: 422 not cancelable, the order is canceled: fine
    assert b.get_order(o.id).status is OrderStatus.CANCELED


def test_short_positions_are_negative_whatever_the_wire_sign(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    b = make()
    stub.set_position("AMD", -3, 50.0)
    stub.set_position("SPY", 2, 400.0)
    for sign in ("negative", "positive"):
        stub.short_qty_sign = sign
        assert {p.symbol: p.qty for p in b.positions()} == {"AMD": -3, "SPY": 2}


# --------------------------------------------------------------------------- stream and events


def test_fills_arrive_on_the_stream(make: Callable[..., AlpacaBroker], stub: TradingStub) -> None:
    b = make(stream=True)
    assert b.stream_state == "up" and b.stream_url == stub.stream_url
    o = b.submit(req("wb-st-1"))
    got = collect(b, lambda evs: any(e.event == "fill" for e in evs))
    (fill,) = fills_of(got, o.id)
    assert fill.qty == 10 and fill.price == 100 and fill.position_qty == 10
    assert not fill.execution_id.startswith("poll:")  # from the stream, not polling
    assert any(e.event == "new" and e.order.id == o.id for e in got)


def test_replayed_fill_events_are_reported_once(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    stub.replay_fills = 3
    stub.partial_fill_prob = 1.0
    b = make(stream=True)
    o = b.submit(req("wb-rp-1"))
    sent = lambda: [e for e in stub.events_sent if e["event"] in ("fill", "partial_fill")]  # noqa: E731
    wait_for(lambda: b.dropped_replays == 2 * len(sent()) and sent(), what="replays")
    got = fills_of(b.events(), o.id)
    assert len(got) == len(sent()) >= 2
    assert len({e.execution_id for e in got}) == len(got)
    assert sum(e.qty for e in got) == 10


def test_dropped_stream_reconnects_and_polling_reports_the_outage(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    stub.fill_mode = "manual"
    b = make(stream=True)
    o = b.submit(req("wb-dr-1"))
    collect(b, lambda evs: any(e.event == "new" for e in evs))
    stub.max_streams = 0  # every reconnect is refused (406) for now
    stub.drop_streams()
    wait_for(lambda: b.stream_state == "down", what="stream down")
    stub.fill(o.id, qty=4)
    got = collect(b, lambda evs: bool(fills_of(evs, o.id)))
    (pf,) = fills_of(got, o.id)
    assert (pf.event, pf.qty, pf.execution_id) == ("partial_fill", 4, f"poll:{o.id}:4")
    stub.max_streams = 1
    wait_for(lambda: b.stream_state == "up", what="reconnect")
    assert stub.stream_connections == 2 and stub.stream_refused >= 1
    # the rest arrives once: on the new connection, or by the catch-up poll that follows a
    # reconnect when that poll sees it first (the two never both report it)
    stub.fill(o.id)
    got = collect(b, lambda evs: any(e.event == "fill" for e in evs))
    (fill,) = fills_of(got, o.id)
    assert fill.qty == 6
    if fill.execution_id.startswith("poll:"):
        assert fill.execution_id == f"poll:{o.id}:10"
    assert b.get_order(o.id).filled_qty == 10


def test_silent_stream_is_caught_by_the_watchdog(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    stub.fill_mode = "manual"
    b = make(stream=True, watchdog_seconds=0.2)
    stub.silence_stream(True)
    time.sleep(0.4)
    assert b.stream_state == "up"  # no orders open: silence is normal
    o = b.submit(req("wb-si-1"))
    wait_for(lambda: b.stream_state == "silent", what="watchdog")
    stub.fill(o.id)
    got = collect(b, lambda evs: bool(fills_of(evs, o.id)))
    (fill,) = fills_of(got, o.id)
    assert fill.event == "fill" and fill.qty == 10 and fill.execution_id.startswith("poll:")
    stub.silence_stream(False)
    wait_for(lambda: b.stream_state == "up", what="stream back")
    assert b.events() == [] or not fills_of(b.events(), o.id)  # not reported twice


def test_rest_polling_only_without_a_stream(
    make: Callable[..., AlpacaBroker], stub: TradingStub
) -> None:
    stub.fill_mode = "manual"
    b = make(stream=False)
    o = b.submit(req("wb-po-1"))
    stub.fill(o.id, qty=3)
    got = collect(b, lambda evs: bool(fills_of(evs, o.id)))
    b.cancel(o.id)
    got += collect(b, lambda evs: any(e.event == "canceled" for e in evs))
    # "new" was never seen: the order was already partially filled at the first poll
    assert [e.event for e in got if e.order.id == o.id] == ["partial_fill", "canceled"]
    ext = stub.place_external_order("SPY", "buy", 1, type="limit", limit_price=1.0)
    wait_for(lambda: b.events() == [] and ext["id"] in {o.id for o in b.iter_known()})
    # seen by the poll, but no invented history (no event for an order first seen open)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_partial_fills_add_up(
    make: Callable[..., AlpacaBroker], stub: TradingStub, seed: int
) -> None:
    stub.partial_fill_prob = 0.8
    stub.seed = seed
    stub.replay_fills = 2
    stub.fill_mode = "manual"
    b = make(stream=True)
    ids = [b.submit(req(f"wb-rf-{seed}-{i}", "AAPL", qty=5 + i)).id for i in range(6)]
    for n, oid in enumerate(ids):
        if n == 3:  # an outage in the middle: polling covers it
            stub.max_streams = 0
            stub.drop_streams()
            wait_for(lambda: b.stream_state == "down")
        if n == 5:
            stub.max_streams = 1
        stub.fill(oid)
    got = collect(
        b, lambda evs: {e.order.id for e in evs if e.event == "fill"} >= set(ids), timeout=8
    )
    reported: dict[str, float] = defaultdict(float)
    for e in got:
        if e.event in ("fill", "partial_fill"):
            reported[e.order.id] += e.qty or 0.0
    for oid in ids:
        assert reported[oid] == pytest.approx(b.get_order(oid).filled_qty)


def test_close_stops_the_stream_thread(make: Callable[..., AlpacaBroker]) -> None:
    b = make(stream=True)
    thread = b._stream._thread
    t0 = time.monotonic()
    b.close()
    assert not thread.is_alive() and time.monotonic() - t0 < 2
    assert b.stream_state == "off"


def test_tolerant_parsing() -> None:
    o = parse_order({"id": "x", "status": "brand_new_status", "order_class": "", "qty": 5,
                     "side": "sell", "type": "trailing_stop", "legs": None})  # fmt: skip
    assert o.status is OrderStatus.UNKNOWN and o.raw_status == "brand_new_status"
    assert o.qty == 5 and o.filled_qty == 0 and o.side is Side.SELL
    assert o.order_class is OrderClass.SIMPLE and o.client_order_id == "" and o.created_at is None
    e = parse_event({"event": "order_replace_rejected", "order": {"id": "y", "status": "new"},
                     "timestamp": "2026-07-30T14:30:00.123456789Z"})  # fmt: skip
    assert e.event == "order_replace_rejected" and e.ts.microsecond == 123456
    assert e.execution_id is None and e.qty is None


# --------------------------------------------------------------------------- live and keys


def test_live_needs_both_opt_ins() -> None:
    assert resolve_trading_endpoint(PAPER_URL, live=False, environ={}) == (PAPER_URL, False)
    yes = {"WB_LIVE_TRADING": "yes"}
    assert resolve_trading_endpoint(PAPER_URL, live=True, environ=yes) == (LIVE_URL, True)
    assert resolve_trading_endpoint(LIVE_URL, live=True, environ=yes) == (LIVE_URL, True)
    for url, live, env in (
        (PAPER_URL, True, {}),
        (PAPER_URL, True, {"WB_LIVE_TRADING": "1"}),
        (LIVE_URL, False, yes),
        (LIVE_URL, False, {}),
        (LIVE_URL + "/", True, {}),
    ):
        with pytest.raises(ConfigError) as ei:
            resolve_trading_endpoint(url, live=live, environ=env)
        assert "--live" in str(ei.value) and "WB_LIVE_TRADING=yes" in str(ei.value)
    with pytest.raises(ConfigError, match="WB_LIVE_TRADING=yes"):
        AlpacaBroker(LIVE_URL, environ=ENV, stream=False)


def test_from_config(stub: TradingStub) -> None:
    cfg = WorkbenchConfig()
    local = cfg.model_copy(
        update={
            "alpaca": AlpacaConfig(
                trading_url=stub.url, timeout_seconds=0.5, max_retries=1, deadline_seconds=3
            )
        }
    )
    with AlpacaBroker.from_config(local, environ=ENV, stream=False) as b:
        assert b.policy.timeout == 0.5 and b.policy.max_retries == 1 and not b.live
        assert b.policy.deadline == 3
        assert b.account().endpoint == stub.url
    with pytest.raises(ConfigError, match="--live"):
        AlpacaBroker.from_config(cfg, live=True, environ=ENV, stream=False)
    live_env = {**ENV, "WB_LIVE_TRADING": "yes"}
    with AlpacaBroker.from_config(cfg, live=True, environ=live_env, stream=False) as b:
        assert b.url == LIVE_URL and b.live and b.name == "alpaca-live"
        assert b.stream_url == "wss://api.alpaca.markets/stream"
    with make_broker("alpaca", cfg=local, environ=ENV, stream=False) as b:
        assert b.stream_url == stub.stream_url
    with pytest.raises(CredentialsError, match="APCA_API_SECRET_KEY"):
        AlpacaBroker(stub.url, environ={"APCA_API_KEY_ID": KEY_ID}, stream=False)


def test_the_secret_never_leaks(
    make: Callable[..., AlpacaBroker], stub: TradingStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    b = make(stream=True)
    texts += [repr(b), repr(b._http), repr(b._stream), repr(b._keys), str(vars(b._stream))]
    stub.inject("GET", "/v2/account", "500")
    b.account()
    stub.inject("POST", "/v2/orders", "500")
    stub.set_asset("GME", shortable=False)
    for call in (
        lambda: b.submit(req("wb-leak-1")),
        lambda: b.submit(req("wb-leak-2", "GME", side=Side.SELL, qty=100)),
        lambda: b.get_order("00000000-0000-4000-8000-000000000000"),
    ):
        with pytest.raises(Exception) as ei:
            call()
        texts += [str(ei.value), repr(ei.value)]
    stub.inject("GET", "/v2/positions", "503", times=10)
    with pytest.raises(Unreachable) as ei:
        b.positions()
    texts.append(str(ei.value))
    stub.drop_streams()
    wait_for(lambda: stub.stream_connections == 2 and b.stream_state == "up", what="reconnect")
    bad = AlpacaBroker(stub.url, environ={**ENV, "APCA_API_SECRET_KEY": "wrong-" + SECRET},
                       stream=False, retry=fast_policy())  # fmt: skip
    with pytest.raises(CredentialsError) as ei:
        bad.account()
    bad.close()
    texts.append(str(ei.value))
    texts += [r.getMessage() for r in caplog.records]
    assert caplog.records  # the run did log (retries, stream state)
    assert not [t for t in texts if SECRET in t]
