"""The trading stub speaks Alpaca's wire format: alpaca-py's own TradingClient and TradingStream
parse every answer, the server-side order rules refuse like Alpaca, and the faults fire."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderStatus, PositionSide, QueryOrderStatus
from alpaca.trading.models import TradeUpdate
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream

from .trading_stub import KEY_ID, SECRET, TradingStub


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


def client(stub: TradingStub, secret: str = SECRET) -> TradingClient:
    c = TradingClient(KEY_ID, secret, url_override=stub.url)
    c._retry = 0  # the SDK's 429/504 retry is tested explicitly below
    return c


def raw(stub: TradingStub, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    h = {"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET}
    return requests.request(method, stub.url + path, json=body, headers=h, timeout=5, **kw)


def market(symbol: str = "AAPL", qty: float | None = 10, side: str = "buy", **kw: Any) -> Any:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force="day", **kw)


def refused(fn: Callable[[], Any]) -> APIError:
    with pytest.raises(APIError) as ei:
        fn()
    return ei.value


@contextlib.contextmanager
def sdk_stream(stub: TradingStub, raw_data: bool = False) -> Iterator[list[Any]]:
    """alpaca-py's TradingStream on the stub, in a thread; stopped fast (its stop() takes ~5 s)."""
    got: list[Any] = []
    s = TradingStream(KEY_ID, SECRET, raw_data=raw_data, url_override=stub.stream_url)

    async def handler(d: Any) -> None:
        got.append(d)

    s.subscribe_trade_updates(handler)
    t = threading.Thread(target=s.run, daemon=True)
    t.start()
    wait_for(lambda: stub._conns and stub._conns[0].listening, what="stream listening")
    try:
        yield got
    finally:
        loop = s._loop
        asyncio.run_coroutine_threadsafe(s.stop_ws(), loop).result(2)
        asyncio.run_coroutine_threadsafe(s.close(), loop).result(2)
        t.join(5)


# --------------------------------------------------------------------------- REST routes


def test_orders_round_trip_through_alpaca_py(stub: TradingStub) -> None:
    c = client(stub)
    o = c.submit_order(market(client_order_id="wb-t-1"))
    assert o.status is OrderStatus.ACCEPTED  # POST answers at acceptance
    assert o.order_class is OrderClass.SIMPLE  # the wire says "" (alpaca-py maps it)
    assert stub.orders[str(o.id)]["order_class"] == ""
    assert stub.orders[str(o.id)]["qty"] == "10"  # numbers as strings
    got = c.get_order_by_id(o.id)
    assert got.status is OrderStatus.FILLED and float(got.filled_qty) == 10
    assert float(got.filled_avg_price) == 100.0
    assert str(c.get_order_by_client_id("wb-t-1").id) == str(o.id)
    (pos,) = c.get_all_positions()
    assert pos.symbol == "AAPL" and pos.qty == "10" and pos.side is PositionSide.LONG
    assert c.get_open_position("AAPL").avg_entry_price == "100"
    acct = c.get_account()
    assert float(acct.cash) == pytest.approx(99_000) and float(acct.equity) == pytest.approx(1e5)
    assert acct.pattern_day_trader is None and acct.daytrade_count is None  # PDT fields gone
    assert c.get_clock().is_open
    asset = c.get_asset("AAPL")
    assert asset.fractionable and asset.shortable


def test_list_filters_and_pagination(stub: TradingStub) -> None:
    c = client(stub)
    stub.fill_mode = "manual"
    ids = [str(c.submit_order(market(qty=1, client_order_id=f"wb-p-{i}")).id) for i in range(7)]
    c.submit_order(market("MSFT", qty=1))
    assert len(c.get_orders()) == 8  # default status=open
    assert [str(o.id) for o in c.get_orders(GetOrdersRequest(symbols=["AAPL"]))] == ids[::-1]
    page1 = c.get_orders(GetOrdersRequest(status="all", limit=3, direction="asc"))
    assert [str(o.id) for o in page1] == ids[:3]
    page2 = c.get_orders(
        GetOrdersRequest(status="all", limit=3, direction="asc", after=page1[-1].submitted_at)
    )
    assert [str(o.id) for o in page2] == ids[3:6]
    until = c.get_orders(GetOrdersRequest(status="all", until=page1[1].submitted_at))
    assert [str(o.id) for o in until] == [ids[0]]
    assert c.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED)) == []
    stub.fill(ids[0])
    (closed,) = c.get_orders(GetOrdersRequest(status="closed"))
    assert str(closed.id) == ids[0] and closed.status is OrderStatus.FILLED
    r = raw(stub, "GET", "/v2/orders", params={"status": "all", "limit": "9999"})
    assert r.status_code == 200 and len(r.json()) == 8  # limit capped at 500


def test_replace_cancel_and_close(stub: TradingStub) -> None:
    c = client(stub)
    c.submit_order(market(qty=10))
    lo = c.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=4, side="sell", time_in_force="gtc", limit_price=110)
    )
    new = c.replace_order_by_id(lo.id, ReplaceOrderRequest(limit_price=105))
    assert str(new.replaces) == str(lo.id) and new.id != lo.id
    old = c.get_order_by_id(lo.id)
    assert old.status is OrderStatus.REPLACED and str(old.replaced_by) == str(new.id)
    e = refused(lambda: c.replace_order_by_id(new.id, ReplaceOrderRequest(limit_price=105)))
    assert e.status_code == 403 and e.message == "order parameters are not changed"
    stub.set_price("AAPL", 104)
    assert c.get_order_by_id(new.id).status is OrderStatus.NEW  # not crossed
    stub.set_price("AAPL", 106)  # crosses the sell limit at 105
    filled = c.get_order_by_id(new.id)
    assert filled.status is OrderStatus.FILLED and float(filled.filled_avg_price) == 106
    assert c.get_open_position("AAPL").qty == "6"
    lo2 = c.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side="sell", time_in_force="day", limit_price=200)
    )
    assert c.cancel_order_by_id(lo2.id) is None
    assert c.get_order_by_id(lo2.id).status is OrderStatus.CANCELED
    e = refused(lambda: c.cancel_order_by_id(lo2.id))
    assert e.status_code == 422 and e.code == 42210000
    e = refused(lambda: c.get_order_by_id("00000000-0000-4000-8000-000000000000"))
    assert e.status_code == 404 and e.message == "order not found"
    close = c.close_position("AAPL", ClosePositionRequest(qty="2"))
    assert close.side.value == "sell" and close.qty == "2"
    assert c.get_open_position("AAPL").qty == "4"
    c.submit_order(market("MSFT", qty=3))
    responses = c.close_all_positions(cancel_orders=True)
    assert {r.symbol for r in responses} == {"AAPL", "MSFT"} and all(
        r.status == 200 for r in responses
    )
    assert c.get_all_positions() == []


def test_bracket_legs_held_until_entry_fills(stub: TradingStub) -> None:
    c = client(stub)
    stub.fill_mode = "manual"
    b = c.submit_order(
        market(
            "MSFT",
            qty=3,
            order_class="bracket",
            take_profit=TakeProfitRequest(limit_price=120),
            stop_loss=StopLossRequest(stop_price=90),
        )
    )
    assert b.order_class is OrderClass.BRACKET
    assert [(leg.type.value, leg.status) for leg in b.legs] == [
        ("limit", OrderStatus.HELD),
        ("stop", OrderStatus.HELD),
    ]
    nested = c.get_orders(GetOrdersRequest(status="open", nested=True))
    assert len(nested) == 1 and len(nested[0].legs) == 2
    assert len(c.get_orders(GetOrdersRequest(status="open"))) == 3  # legs listed flat
    stub.fill(str(b.id))
    tp, sl = c.get_order_by_id(b.id, GetOrderByIdRequest(nested=True)).legs
    assert tp.status is OrderStatus.NEW and sl.status is OrderStatus.NEW
    stub.set_price("MSFT", 121)  # take-profit fills, stop-loss is canceled
    assert c.get_order_by_id(tp.id).status is OrderStatus.FILLED
    assert c.get_order_by_id(sl.id).status is OrderStatus.CANCELED
    assert c.get_all_positions() == []


def test_unauthorized(stub: TradingStub) -> None:
    e = refused(lambda: client(stub, secret="wrong").get_account())
    assert e.status_code == 401 and e.code == 40110000


# --------------------------------------------------------------------------- order rules


def test_rule_refusals_like_alpaca(stub: TradingStub) -> None:
    c = client(stub)
    both = raw(stub, "POST", "/v2/orders", {"symbol": "AAPL", "qty": "1", "notional": "100",
                                            "side": "buy", "type": "market",
                                            "time_in_force": "day"})  # fmt: skip
    assert both.status_code == 400
    c.submit_order(market(qty=5, client_order_id="wb-dup"))
    e = refused(lambda: c.submit_order(market(qty=1, client_order_id="wb-dup")))
    assert (e.status_code, e.code, e.message) == (422, 40010001, "client_order_id must be unique")
    assert stub.count_orders("wb-dup") == 1
    e = refused(lambda: c.submit_order(market(qty=8, side="sell")))  # long 5, sell 8: crosses zero
    assert (e.status_code, e.code) == (403, 40310000)
    assert e.message == "insufficient qty available for order (requested: 8, available: 5)"
    gtc = MarketOrderRequest(symbol="AAPL", qty=0.5, side="buy", time_in_force="gtc")
    e = refused(lambda: c.submit_order(gtc))
    assert e.status_code == 422 and "DAY" in e.message
    e = refused(lambda: c.submit_order(market("NVDA", qty=0.5, side="sell")))  # fractional short
    assert e.status_code == 403
    stub.set_asset("BRK.A", fractionable=False)
    e = refused(lambda: c.submit_order(market("BRK.A", qty=0.5)))
    assert e.message == "requested asset is not fractionable"
    e = refused(lambda: c.submit_order(market(qty=1, extended_hours=True)))
    assert e.status_code == 422 and e.code == 42210000
    e = refused(
        lambda: c.submit_order(
            market(
                "MSFT",
                qty=1,
                order_class="bracket",
                take_profit=TakeProfitRequest(limit_price=90),
                stop_loss=StopLossRequest(stop_price=95),
            )
        )
    )
    assert e.status_code == 422 and "take_profit" in e.message
    e = refused(lambda: c.submit_order(market("MSFT", qty=5000)))  # $500k > 2x equity
    assert (e.status_code, e.message) == (403, "insufficient buying power")


def test_wash_trade_and_shorting(stub: TradingStub) -> None:
    c = client(stub)
    c.submit_order(
        LimitOrderRequest(symbol="TSLA", qty=2, side="buy", time_in_force="day", limit_price=50)
    )
    e = refused(lambda: c.submit_order(market("TSLA", qty=1, side="sell")))
    assert (e.status_code, e.code) == (422, 42210000)
    assert e.message == "potential wash trade detected. use complex orders"
    short = c.submit_order(market("AMD", qty=3, side="sell"))  # flat + shortable: opens a short
    assert c.get_order_by_id(short.id).status is OrderStatus.FILLED
    pos = c.get_open_position("AMD")
    assert pos.side is PositionSide.SHORT and pos.qty == "-3"
    e = refused(lambda: c.submit_order(market("AMD", qty=5)))  # short 3, buy 5: crosses zero
    assert e.status_code == 403 and "available: 3" in e.message
    stub.set_asset("GME", shortable=False)
    e = refused(lambda: c.submit_order(market("GME", qty=1, side="sell")))
    assert e.message == "insufficient qty available for order (requested: 1, available: 0)"
    stub.short_qty_sign = "positive"
    assert c.get_open_position("AMD").qty == "3"  # some payloads send it unsigned


# --------------------------------------------------------------------------- fills and state


def test_partial_fills_are_seeded_by_client_order_id() -> None:
    def run() -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
        with TradingStub(partial_fill_prob=1.0, seed=7) as s:
            c = client(s)
            for i in range(3):
                c.submit_order(market(qty=10, client_order_id=f"wb-pf-{i}"))
            c.submit_order(market("NVDA", qty=None, notional=250, client_order_id="wb-pf-n"))
            sent = [
                (e["event"], e["order"]["client_order_id"], e.get("qty", "")) for e in s.events_sent
            ]
            return sent, s.orders

    (a, orders), (b, _) = run(), run()
    assert a == b  # deterministic given the seed and the client order ids
    for cid, total in (("wb-pf-0", 10), ("wb-pf-1", 10), ("wb-pf-2", 10), ("wb-pf-n", 2.5)):
        qs = [float(q) for ev, c, q in a if c == cid and ev in ("fill", "partial_fill")]
        assert 2 <= len(qs) <= 3 and sum(qs) == pytest.approx(total)
    (n,) = [o for o in orders.values() if o["client_order_id"] == "wb-pf-n"]
    assert n["qty"] is None and n["notional"] == "250" and float(n["filled_qty"]) == 2.5


def test_manual_fill_reject_and_expire(stub: TradingStub) -> None:
    c = client(stub)
    stub.fill_mode = "manual"
    o = c.submit_order(market(qty=10))
    stub.fill(str(o.id), qty=4, price=101)
    got = c.get_order_by_id(o.id)
    assert got.status is OrderStatus.PARTIALLY_FILLED and got.filled_qty == "4"
    stub.fill(str(o.id), price=103)
    got = c.get_order_by_id(o.id)
    assert got.status is OrderStatus.FILLED and float(got.filled_avg_price) == pytest.approx(102.2)
    stub.reject_next("no luck")
    r = c.submit_order(market(qty=1))
    assert r.status is OrderStatus.ACCEPTED  # accepted, then rejected by an event
    assert c.get_order_by_id(r.id).status is OrderStatus.REJECTED
    e = c.submit_order(market("MSFT", qty=1))
    stub.expire(str(e.id))
    assert c.get_order_by_id(e.id).status is OrderStatus.EXPIRED
    stub.cancel_mode = "pending"
    p = c.submit_order(market("NVDA", qty=1))
    c.cancel_order_by_id(p.id)
    assert c.get_order_by_id(p.id).status is OrderStatus.PENDING_CANCEL  # stuck, still open
    assert [str(x.id) for x in c.get_orders()] == [str(p.id)]


def test_set_position_and_external_orders(stub: TradingStub) -> None:
    c = client(stub)
    stub.set_position("SPY", 7, 400.0)
    assert c.get_open_position("SPY").qty == "7"
    ext = stub.place_external_order("SPY", "sell", 2, type="limit", limit_price=500)
    assert not ext["client_order_id"].startswith("wb-")
    (o,) = c.get_orders()
    assert str(o.id) == ext["id"] and o.status is OrderStatus.NEW
    assert c.get_open_position("SPY").qty_available == "5"  # 2 held for the open sell


# --------------------------------------------------------------------------- stream


def test_trading_stream_parses_events_from_binary_frames(stub: TradingStub) -> None:
    stub.partial_fill_prob = 1.0
    with sdk_stream(stub) as got:
        c = client(stub)
        o = c.submit_order(market(qty=10, client_order_id="wb-s-1"))
        wait_for(lambda: got and got[-1].event == "fill", what="fill event")
    assert all(isinstance(u, TradeUpdate) for u in got)
    assert got[0].event == "new"
    fills = [u for u in got if u.event in ("fill", "partial_fill")]
    assert len(fills) >= 2 and sum(u.qty for u in fills) == 10
    assert fills[-1].position_qty == 10 and fills[-1].order.id == o.id
    assert len({u.execution_id for u in fills}) == len(fills)


def test_stream_replay_reject_and_raw_data(stub: TradingStub) -> None:
    stub.replay_fills = 3
    with sdk_stream(stub, raw_data=True) as got:
        c = client(stub)
        stub.reject_next()
        c.submit_order(market(qty=1))
        c.submit_order(market(qty=2))
        wait_for(lambda: sum(1 for m in got if m["data"]["event"] == "fill") == 3, what="fills")
    events = [m["data"]["event"] for m in got]
    assert "rejected" in events
    fills = [m["data"] for m in got if m["data"]["event"] == "fill"]
    assert len({f["execution_id"] for f in fills}) == 1  # the same fill, sent three times


async def _ws_try(url: str, auth: bool = True) -> Any:
    from websockets.asyncio.client import connect

    ws = await connect(url, ping_interval=None)
    if auth:
        await ws.send(json.dumps({"action": "authenticate",
                                  "data": {"key_id": KEY_ID, "secret_key": SECRET}}))  # fmt: skip
        await ws.recv()
    return ws


def test_one_stream_per_account(stub: TradingStub) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    async def main() -> None:
        first = await _ws_try(stub.stream_url)
        with pytest.raises(InvalidStatus) as ei:
            await _ws_try(stub.stream_url)
        assert ei.value.response.status_code == 406
        stub.stream_refusal = "close"
        second = await _ws_try(stub.stream_url, auth=False)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(second.recv(), 2)
        assert second.close_code == 1008
        await first.close()
        wait_for(lambda: stub.active_streams == 0)
        third = await _ws_try(stub.stream_url)  # the slot is free again
        await third.close()

    asyncio.run(main())
    assert stub.stream_refused == 2


def test_unauthorized_stream_and_drop_and_silence(stub: TradingStub) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def main() -> None:
        async with connect(stub.stream_url, ping_interval=None) as ws:
            await ws.send(json.dumps({"action": "authenticate",
                                      "data": {"key_id": KEY_ID, "secret_key": "nope"}}))  # fmt: skip
            reply = json.loads(await ws.recv())
            assert reply["data"]["status"] == "unauthorized"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)
        ws = await _ws_try(stub.stream_url)
        await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        ack = await ws.recv()
        assert isinstance(ack, bytes)  # binary frames, like paper
        assert json.loads(ack) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
        await asyncio.wait_for(await ws.ping(), 2)  # answered
        stub.silence_stream(True)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(await ws.ping(), 0.3)  # silent: no pong
        await asyncio.get_running_loop().run_in_executor(None, client(stub).submit_order,
                                                         market(qty=1))  # fmt: skip
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)  # and no events
        stub.silence_stream(False)
        await asyncio.get_running_loop().run_in_executor(None, stub.drop_streams)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)

    asyncio.run(main())


# --------------------------------------------------------------------------- faults


def test_504_after_create_trips_the_sdk_retry(stub: TradingStub) -> None:
    """alpaca-py's own retry re-POSTs on 504 and then fails on 422 although the order exists."""
    c = TradingClient(KEY_ID, SECRET, url_override=stub.url)
    c._retry_wait = 0
    stub.inject("POST", "/v2/orders", "504-after-create")
    e = refused(lambda: c.submit_order(market(client_order_id="wb-sdk-1")))
    assert e.status_code == 422 and e.message == "client_order_id must be unique"
    assert stub.count_orders("wb-sdk-1") == 1
    assert [s for m, p, s in stub.requests if m == "POST"] == [504, 422]


def test_rest_faults(stub: TradingStub) -> None:
    h = {"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET}
    stub.inject("GET", "/v2/account", "429")
    r = raw(stub, "GET", "/v2/account")
    assert r.status_code == 429 and r.headers["Retry-After"] == "0"
    for code in ("500", "503"):
        stub.inject("GET", "/v2/account", code)
        assert raw(stub, "GET", "/v2/account").status_code == int(code)
    assert raw(stub, "GET", "/v2/account").status_code == 200  # times=1 each
    stub.inject("*", "/v2/positions", "drop", times=2)
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            requests.get(stub.url + "/v2/positions", headers=h, timeout=2)
    stub.hang_seconds = 0.6
    stub.inject("POST", "/v2/orders", "timeout")
    with pytest.raises(requests.Timeout):
        requests.post(stub.url + "/v2/orders", json=market().to_request_fields(), headers=h,
                      timeout=0.2)  # fmt: skip
    assert stub.orders == {}  # "timeout" hangs before doing anything
    stub.inject("POST", "/v2/orders", "timeout-after-create")
    body = {**market().to_request_fields(), "client_order_id": "wb-late"}
    with pytest.raises(requests.Timeout):
        requests.post(stub.url + "/v2/orders", json=body, headers=h, timeout=0.2)
    assert stub.count_orders("wb-late") == 1  # created before the hang
    stub.inject("POST", "/v2/orders", "drop-after-create")
    with pytest.raises(requests.ConnectionError):
        requests.post(stub.url + "/v2/orders", json={**body, "client_order_id": "wb-drop"},
                      headers=h, timeout=2)  # fmt: skip
    assert stub.count_orders("wb-drop") == 1
    assert ("POST", "/v2/orders", 0) in stub.requests
    with pytest.raises(ValueError, match="unknown fault"):
        stub.inject("GET", "/", "teapot")


def test_timestamps_are_iso_and_increasing(stub: TradingStub) -> None:
    c = client(stub)
    a = c.submit_order(market(qty=1))
    b = c.submit_order(market(qty=1))
    assert b.created_at - a.created_at >= timedelta(microseconds=1)
    assert stub.orders[str(a.id)]["created_at"].endswith("Z")
