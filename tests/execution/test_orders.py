"""Order requests against Alpaca's rules, client order ids, and the order state machine.

Rules from the trading-ops reference §2.3-2.9 and §2.14 (orders-at-alpaca, fractional-trading,
bracket docs): every refusal names the field, the bad value and a fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.execution.orders import (
    EVENT_STATUS,
    OPEN,
    TERMINAL,
    BrokerOrder,
    Capabilities,
    Fill,
    Leg,
    OrderClass,
    OrderRequest,
    OrderRuleError,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
    check_request,
    client_order_id,
    next_status,
    parse_status,
)

FAST = settings(max_examples=100, deadline=None)
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
BUY, SELL = Side.BUY, Side.SELL
MKT, LMT, STP, STPLMT = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT
DAY, GTC, IOC, FOK = TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
SIMPLE, BRACKET, OCO, OTO = OrderClass.SIMPLE, OrderClass.BRACKET, OrderClass.OCO, OrderClass.OTO
TP110, SL90 = Leg(limit_price=110.0), Leg(stop_price=90.0)
TP90, SL110 = Leg(limit_price=90.0), Leg(stop_price=110.0)


def req(**kw: Any) -> OrderRequest:
    """A whole-share DAY market buy of 10 AAPL, with ``kw`` changed."""
    base = OrderRequest(client_order_id="t-000001", symbol="AAPL", side=BUY, qty=10.0)
    return replace(base, **kw)


def refused(r: OrderRequest, field_value: str, rule: str, fix: str, **kw: Any) -> str:
    """``check_request`` refuses ``r``; the message names the field=value, the rule and a fix."""
    with pytest.raises(OrderRuleError) as ei:
        check_request(r, **kw)
    msg = str(ei.value)
    assert r.client_order_id in msg
    assert field_value in msg, msg
    assert rule in msg, msg
    _head, sep, tail = msg.partition("Fix:")
    assert sep, msg
    assert fix in tail, msg
    return msg


# ---------------------------------------------------------------------------------------------
# check_request: accepted
# ---------------------------------------------------------------------------------------------

ACCEPTED: list[tuple[str, OrderRequest, dict[str, Any]]] = [
    ("market buy", req(), {}),
    ("market sell opens a whole-share short", req(side=SELL), {}),
    ("gtc market", req(time_in_force=GTC), {}),
    ("limit", req(type=LMT, limit_price=100.0), {}),
    ("stop", req(side=SELL, type=STP, stop_price=95.0), {"position": 10.0}),
    ("stop limit", req(type=STPLMT, stop_price=101.0, limit_price=102.0), {}),
    ("notional buy day", req(qty=None, notional=500.0), {}),
    ("fractional buy day", req(qty=0.5), {}),
    ("fractional limit day", req(qty=2.25, type=LMT, limit_price=10.0), {}),
    ("fractional sell closing a long", req(side=SELL, qty=0.5), {"position": 0.5}),
    ("notional sell of a long", req(side=SELL, qty=None, notional=500.0), {"position": 20.0}),
    ("extended hours limit day", req(type=LMT, limit_price=100.0, extended_hours=True), {}),
    ("sell to flat", req(side=SELL, qty=100.0), {"position": 100.0}),
    ("reduce only", req(side=SELL, qty=40.0, reduce_only=True), {"position": 100.0}),
    ("reduce only cover", req(qty=40.0, reduce_only=True), {"position": -40.0}),
    ("bracket buy", req(order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {}),
    (
        "bracket buy limit gtc",
        req(
            type=LMT,
            limit_price=100.0,
            time_in_force=GTC,
            order_class=BRACKET,
            take_profit=TP110,
            stop_loss=Leg(stop_price=90.0, limit_price=89.5),
        ),
        {},
    ),
    (
        "bracket buy grows a long",
        req(order_class=BRACKET, take_profit=TP110, stop_loss=SL90),
        {"position": 50.0},
    ),
    ("bracket sell", req(side=SELL, order_class=BRACKET, take_profit=TP90, stop_loss=SL110), {}),
    ("oto take profit", req(order_class=OTO, take_profit=TP110), {}),
    ("oto stop loss", req(order_class=OTO, stop_loss=SL90), {}),
    (
        "oco exits a long, limit_price omitted",
        req(side=SELL, type=LMT, order_class=OCO, take_profit=TP110, stop_loss=SL90),
        {"position": 10.0},
    ),
    (
        "oco exits a short",
        req(type=LMT, limit_price=90.0, order_class=OCO, take_profit=TP90, stop_loss=SL110),
        {"position": -10.0},
    ),
    ("48-char client order id", req(client_order_id="a" * 48), {}),
    ("client order id charset", req(client_order_id="wb-Ab.9:x_-Z"), {}),
]


@pytest.mark.parametrize(
    ("r", "kw"), [(r, kw) for _, r, kw in ACCEPTED], ids=[a[0] for a in ACCEPTED]
)
def test_check_request_accepts(r: OrderRequest, kw: dict[str, Any]) -> None:
    assert check_request(r, **kw) is r


# ---------------------------------------------------------------------------------------------
# check_request: refused, with field, value and fix
# ---------------------------------------------------------------------------------------------

REFUSED: list[tuple[str, OrderRequest, dict[str, Any], str, str, str]] = [
    # (id, request, check kwargs, "field=value", rule, fix)
    ("empty client order id", req(client_order_id=""), {}, "client_order_id=''", "1-48", "client_order_id(strategy"),
    ("49-char client order id", req(client_order_id="a" * 49), {}, f"client_order_id='{'a' * 49}'", "1-48", "client_order_id("),
    ("client order id with a space", req(client_order_id="wb 1"), {}, "client_order_id='wb 1'", "[A-Za-z0-9._:-]", "client_order_id("),
    ("qty and notional", req(notional=500.0), {}, "qty=10.0 and notional=500.0", "exactly one", "not both"),
    ("neither qty nor notional", req(qty=None), {}, "qty=None and notional=None", "exactly one", "qty (shares) or notional"),
    ("zero qty", req(qty=0.0), {}, "qty=0.0", "must be > 0", "positive size"),
    ("negative qty", req(qty=-5.0), {}, "qty=-5.0", "must be > 0", "direction in side"),
    ("nan qty", req(qty=math.nan), {}, "qty=nan", "must be > 0", "positive size"),
    ("negative notional", req(qty=None, notional=-1.0), {}, "notional=-1.0", "must be > 0", "positive size"),
    ("limit without price", req(type=LMT), {}, "limit_price=None", "required (> 0) for a limit", "set limit_price"),
    ("limit with zero price", req(type=LMT, limit_price=0.0), {}, "limit_price=0.0", "required", "set limit_price"),
    ("stop without price", req(type=STP), {}, "stop_price=None", "required (> 0) for a stop", "set stop_price"),
    ("stop limit without limit", req(type=STPLMT, stop_price=101.0), {}, "limit_price=None", "stop_limit", "set limit_price"),
    ("market with limit price", req(limit_price=100.0), {}, "limit_price=100.0", "not allowed on a market", "drop limit_price"),
    ("market with stop price", req(stop_price=90.0), {}, "stop_price=90.0", "not allowed on a market", "drop stop_price"),
    # fractional / notional: DAY only, never short, simple only
    ("notional gtc", req(qty=None, notional=500.0, time_in_force=GTC), {}, "time_in_force='gtc'", "fractional/notional order (notional=500.0)", "time_in_force=day"),
    ("fractional gtc", req(qty=0.5, time_in_force=GTC), {}, "time_in_force='gtc'", "fractional/notional order (qty=0.5)", "time_in_force=day"),
    ("fractional ioc", req(qty=1.5, time_in_force=IOC), {}, "time_in_force='ioc'", "fractional", "time_in_force=day"),
    ("fractional sell from flat", req(side=SELL, qty=0.5), {}, "qty=0.5", "would open a short", "short whole shares only"),
    ("fractional sell past a long", req(side=SELL, qty=0.5), {"position": 0.3}, "qty=0.5", "would open a short (position 0.3)", "whole shares"),
    ("notional sell from flat", req(side=SELL, qty=None, notional=500.0), {}, "notional=500.0", "would open a short", "short whole shares only"),
    ("notional sell while short", req(side=SELL, qty=None, notional=500.0), {"position": -3.0}, "notional=500.0", "would open a short", "whole shares"),
    ("fractional bracket", req(qty=2.5, order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {}, "order_class='bracket'", "fractional", "whole shares"),
    # extended hours: limit + DAY
    ("extended market", req(extended_hours=True), {}, "extended_hours=True", "type=limit and time_in_force=day (got market/day)", "DAY limit"),
    ("extended limit gtc", req(type=LMT, limit_price=100.0, time_in_force=GTC, extended_hours=True), {}, "extended_hours=True", "(got limit/gtc)", "drop extended_hours"),
    ("extended stop", req(type=STP, stop_price=101.0, extended_hours=True), {}, "extended_hours=True", "(got stop/day)", "DAY limit"),
    # bracket
    ("bracket without stop loss", req(order_class=BRACKET, take_profit=TP110), {}, "order_class='bracket'", "needs both take_profit.limit_price and stop_loss.stop_price", "give both legs"),
    ("bracket without take profit", req(order_class=BRACKET, stop_loss=SL90), {}, "order_class='bracket'", "needs both", "use oto for one"),
    ("buy bracket tp below sl", req(order_class=BRACKET, take_profit=TP90, stop_loss=SL110), {}, "take_profit.limit_price=90.0", "above stop_loss.stop_price=110.0 for a buy bracket", "swap"),
    ("sell bracket tp above sl", req(side=SELL, order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {}, "take_profit.limit_price=110.0", "below stop_loss.stop_price=90.0 for a sell bracket", "swap"),
    ("bracket tp equal sl", req(order_class=BRACKET, take_profit=Leg(limit_price=100.0), stop_loss=Leg(stop_price=100.0)), {}, "take_profit.limit_price=100.0", "above", "fix the leg prices"),
    ("bracket ioc", req(time_in_force=IOC, order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {}, "time_in_force='ioc'", "not allowed on a bracket", "use day or gtc"),
    ("bracket opg", req(time_in_force=TimeInForce.OPG, order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {}, "time_in_force='opg'", "bracket", "day or gtc"),
    ("bracket extended", req(type=LMT, limit_price=100.0, extended_hours=True, order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {}, "extended_hours=True", "not allowed on a bracket", "drop it"),
    ("bracket sell-stop entry", req(side=SELL, type=STP, stop_price=99.0, order_class=BRACKET, take_profit=TP90, stop_loss=SL110), {}, "type='stop'", "bracket orders must be entry orders", "market or limit"),
    ("bracket closing a long", req(side=SELL, order_class=BRACKET, take_profit=TP90, stop_loss=SL110), {"position": 100.0}, "order_class='bracket'", "bracket orders must be entry orders", "simple or oco"),
    ("bracket covering a short", req(order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {"position": -100.0}, "order_class='bracket'", "against position -100", "oco"),
    # legs: trailing stops are never legs; prices required
    ("trailing stop as a leg", req(order_class=BRACKET, take_profit=TP110, stop_loss=Leg(limit_price=89.0)), {}, "stop_loss.stop_price=None", "trailing stops cannot be legs", "set the stop-loss stop price"),
    ("take profit without a price", req(order_class=BRACKET, take_profit=Leg(stop_price=110.0), stop_loss=SL90), {}, "take_profit.limit_price=None", "required", "take-profit limit price"),
    ("simple with legs", req(take_profit=TP110), {}, "order_class='simple'", "has take_profit/stop_loss legs", "order_class=bracket"),
    # oto: exactly one leg
    ("oto with both legs", req(order_class=OTO, take_profit=TP110, stop_loss=SL90), {}, "order_class='oto'", "exactly one of take_profit and stop_loss", "bracket for both"),
    ("oto without legs", req(order_class=OTO), {}, "order_class='oto'", "exactly one", "bracket"),
    # oco: an exit with both legs
    ("oco from flat", req(side=SELL, type=LMT, order_class=OCO, take_profit=TP110, stop_loss=SL90), {}, "order_class='oco'", "only exits an open position", "bracket"),
    ("oco growing a long", req(type=LMT, order_class=OCO, take_profit=TP90, stop_loss=SL110), {"position": 10.0}, "order_class='oco'", "position 10", "bracket"),
    ("oco with one leg", req(side=SELL, type=LMT, order_class=OCO, take_profit=TP110), {"position": 10.0}, "order_class='oco'", "needs both", "give both legs"),
    ("sell oco tp below sl", req(side=SELL, type=LMT, order_class=OCO, take_profit=TP90, stop_loss=SL110), {"position": 10.0}, "take_profit.limit_price=90.0", "above stop_loss.stop_price=110.0 for a sell oco", "swap"),
    # one order may not cross zero
    ("long to short in one order", req(side=SELL, qty=150.0), {"position": 100.0}, "qty=150.0", "cross zero (position 100 -> -50)", "close first"),
    ("short to long in one order", req(qty=150.0), {"position": -100.0}, "qty=150.0", "cross zero (position -100 -> 50)", "close first"),
    # shortable / short capability
    ("not shortable", req(side=SELL), {"shortable": False}, "side='sell'", "would open a short in AAPL", "long only"),
    ("not shortable while short", req(side=SELL, qty=15.0), {"shortable": False, "position": -1.0}, "side='sell'", "cannot be shorted", "long only"),
    ("broker cannot short", req(side=SELL), {"caps": Capabilities(short=False)}, "side='sell'", "cannot be shorted", "long only"),
    # fractionable
    ("not fractionable", req(qty=0.5), {"fractionable": False}, "qty=0.5", "AAPL is not fractionable", "round qty to whole shares"),
    ("notional not fractionable", req(qty=None, notional=500.0), {"fractionable": False}, "notional=500.0", "not fractionable", "whole shares"),
    ("broker without fractions", req(qty=0.5), {"caps": Capabilities(fractional=False)}, "qty=0.5", "not fractionable", "round qty"),
    ("broker without notional", req(qty=None, notional=500.0), {"caps": Capabilities(notional=False)}, "notional=500.0", "not supported by this broker", "send whole qty"),
    # reduce only
    ("reduce only grows a long", req(reduce_only=True), {"position": 100.0}, "qty=10.0", "grows the position (100 -> 110) on a reduce-only order", "at most the open position"),
    ("reduce only from flat", req(side=SELL, reduce_only=True), {}, "qty=10.0", "grows the position (0 -> -10)", "at most the open position"),
    # capabilities: types, time in force, classes, extended hours
    ("type not supported", req(type=LMT, limit_price=100.0), {"caps": Capabilities(order_types=frozenset({MKT}))}, "type='limit'", "not supported by this broker", "one of ['market']"),
    ("tif not supported", req(time_in_force=GTC), {"caps": Capabilities(time_in_force=frozenset({DAY}))}, "time_in_force='gtc'", "not supported", "one of ['day']"),
    ("fok not in the default capabilities", req(time_in_force=FOK), {}, "time_in_force='fok'", "not supported", "use one of"),
    ("class not supported", req(order_class=BRACKET, take_profit=TP110, stop_loss=SL90), {"caps": Capabilities(order_classes=frozenset({SIMPLE}))}, "order_class='bracket'", "not supported", "one of ['simple']"),
    ("extended hours not supported", req(type=LMT, limit_price=100.0, extended_hours=True), {"caps": Capabilities(extended_hours=False)}, "extended_hours=True", "not supported by this broker", "drop it"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("r", "kw", "field_value", "rule", "fix"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_check_request_refuses_naming_field_value_and_fix(
    r: OrderRequest, kw: dict[str, Any], field_value: str, rule: str, fix: str
) -> None:
    refused(r, field_value, rule, fix, **kw)


def test_cross_zero_capability_allows_a_flip_in_one_order() -> None:
    flip = req(side=SELL, qty=150.0)
    refused(flip, "qty=150.0", "cross zero", "close first", position=100.0)
    assert check_request(flip, Capabilities(cross_zero=True), position=100.0) is flip
    cover = req(qty=150.0)
    assert check_request(cover, Capabilities(cross_zero=True), position=-100.0) is cover


def test_shortable_false_only_refuses_a_sell_that_opens_a_short() -> None:
    assert check_request(req(side=SELL, qty=10.0), shortable=False, position=10.0)
    assert check_request(req(side=SELL, qty=4.0), shortable=False, position=10.0)
    assert check_request(req(qty=10.0), shortable=False)  # buys are never shorts
    refused(req(side=SELL, qty=11.0), "side='sell'", "open a short", "long only",
            shortable=False, position=10.0, caps=Capabilities(cross_zero=True))  # fmt: skip


def test_fractionable_false_accepts_whole_shares() -> None:
    assert check_request(req(qty=3.0), fractionable=False)
    assert check_request(req(qty=3.0 + 1e-12), fractionable=False)  # float noise is whole


# ---------------------------------------------------------------------------------------------
# client_order_id
# ---------------------------------------------------------------------------------------------

CID_CHARS = re.compile(r"[A-Za-z0-9._:-]+")


def test_client_order_id_is_deterministic_and_readable() -> None:
    a = client_order_id("momentum", "20240102", 7, salt="r1")
    assert a == client_order_id("momentum", "20240102", 7, salt="r1")
    assert a.startswith("wb-momentum-20240102-000007-")
    assert len(a) <= 48 and CID_CHARS.fullmatch(a)
    assert check_request(req(client_order_id=a))


def test_client_order_id_differs_by_seq_salt_session_and_truncated_names() -> None:
    base = client_order_id("momentum", "20240102", 7)
    others = {
        client_order_id("momentum", "20240102", 8),
        client_order_id("momentum", "20240102", 7, salt="x"),
        client_order_id("momentum", "20240103", 7),
        client_order_id("momentum_v2", "20240102", 7),
        # identical after truncation to 10/8 characters: the hash still tells them apart
        client_order_id("abcdefghij-long-1", "20240102-a", 7),
        client_order_id("abcdefghij-long-2", "20240102-b", 7),
    }
    assert base not in others and len(others) == 6


def test_client_order_id_separator_inside_a_name_does_not_collide() -> None:
    # regression: the hashed fields were joined by a bare \x1f, so ("s\x1f", "d") and
    # ("s", "\x1fd") hashed alike and also sanitised to the same readable prefix
    assert client_order_id("strat\x1f", "sess", 1) != client_order_id("strat", "\x1fsess", 1)
    assert client_order_id("a\\", "\x1fb", 1) != client_order_id("a", "\\\x1fb", 1)


def test_client_order_id_refuses_negative_seq() -> None:
    with pytest.raises(ValueError, match="seq must be >= 0"):
        client_order_id("s", "d", -1)


@FAST
@given(st.text(), st.text(), st.integers(0, 10**6), st.text())
def test_client_order_id_shape(strategy: str, session: str, seq: int, salt: str) -> None:
    cid = client_order_id(strategy, session, seq, salt)
    assert cid == client_order_id(strategy, session, seq, salt)
    assert 0 < len(cid) <= 48
    assert CID_CHARS.fullmatch(cid), cid
    assert check_request(req(client_order_id=cid))


@FAST
@given(
    st.lists(
        st.tuples(
            st.text(max_size=30), st.text(max_size=30), st.integers(0, 10**6), st.text(max_size=8)
        ),
        unique=True,
        min_size=2,
        max_size=40,
    )
)
def test_client_order_id_distinct_inputs_distinct_ids(
    tuples: list[tuple[str, str, int, str]],
) -> None:
    ids = [client_order_id(*t) for t in tuples]
    assert len(set(ids)) == len(ids)


# ---------------------------------------------------------------------------------------------
# order status: parse_status / next_status
# ---------------------------------------------------------------------------------------------

S = OrderStatus


def run(events: list[str], start: OrderStatus = S.PENDING_SUBMIT) -> OrderStatus:
    s = start
    for e in events:
        s = next_status(s, e)
    return s


def test_happy_path() -> None:
    s = S.PENDING_SUBMIT
    seen = []
    for e in ("pending_new", "new", "partial_fill", "partial_fill", "fill"):
        s = next_status(s, e)
        seen.append(s)
    assert seen == [S.PENDING_NEW, S.NEW, S.PARTIALLY_FILLED, S.PARTIALLY_FILLED, S.FILLED]


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("event", ["canceled", "expired", "new", "pending_cancel", "replaced"])
def test_terminal_stays_terminal(terminal: OrderStatus, event: str) -> None:
    if event == terminal.value:
        return
    assert next_status(terminal, event) is terminal


def test_late_cancel_after_fill_does_nothing() -> None:
    assert run(["new", "fill", "canceled"]) is S.FILLED
    assert run(["new", "fill", "expired", "pending_cancel"]) is S.FILLED


@pytest.mark.parametrize("dead", [S.EXPIRED, S.CANCELED])
def test_late_fill_after_expired_or_canceled_moves_to_filled(dead: OrderStatus) -> None:
    assert next_status(dead, "fill") is S.FILLED
    # a late partial fill keeps the terminal status (the fill itself is applied by the ledger)
    assert next_status(dead, "partial_fill") is dead


@pytest.mark.parametrize("dead", [S.REJECTED, S.REPLACED])
def test_no_late_fill_after_rejected_or_replaced(dead: OrderStatus) -> None:
    assert next_status(dead, "fill") is dead


@pytest.mark.parametrize("current", [S.NEW, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_SUBMIT])
def test_unknown_event_keeps_status(current: OrderStatus) -> None:
    assert next_status(current, "some_future_event") is current
    assert next_status(current, "") is current
    assert next_status(current, "some_future_event", "no_such_status") is current


def test_restated_takes_the_reported_status() -> None:
    assert next_status(S.NEW, "restated", "partially_filled") is S.PARTIALLY_FILLED
    assert next_status(S.NEW, "restated", S.PENDING_REVIEW) is S.PENDING_REVIEW
    assert next_status(S.NEW, "restated") is S.NEW  # nothing reported: keep
    assert next_status(S.NEW, "restated", "gibberish") is S.NEW
    assert next_status(S.FILLED, "restated", "new") is S.FILLED  # terminal stays terminal
    assert next_status(S.PENDING_CANCEL, "order_cancel_rejected", "new") is S.NEW


def test_every_known_event_maps_to_its_status() -> None:
    for event, status in EVENT_STATUS.items():
        if status is not None:
            assert next_status(S.PENDING_NEW, event) is status, event


def test_parse_status() -> None:
    assert parse_status("filled") is S.FILLED
    assert parse_status(S.HELD) is S.HELD
    assert parse_status("done_for_day") is S.DONE_FOR_DAY

    class AlpacaEnum:  # anything with a .value, like alpaca-py's enums
        value = "pending_cancel"

    assert parse_status(AlpacaEnum()) is S.PENDING_CANCEL
    for junk in ("", "FILLED", "order_cancel_rejected", None, 3):
        assert parse_status(junk) is S.UNKNOWN


STICKY = {S.FILLED, S.REJECTED, S.REPLACED}
EVENTS = st.one_of(st.sampled_from(sorted(EVENT_STATUS)), st.text(max_size=12))
REPORTED = st.one_of(st.none(), st.sampled_from(list(S)), st.text(max_size=12))


@FAST
@given(st.sampled_from(list(S)), st.lists(st.tuples(EVENTS, REPORTED), max_size=30))
def test_filled_rejected_replaced_never_change(
    start: OrderStatus, steps: list[tuple[str, Any]]
) -> None:
    s = start
    sticky: OrderStatus | None = s if s in STICKY else None
    for event, reported in steps:
        s = next_status(s, event, reported)
        assert isinstance(s, OrderStatus)
        if sticky is not None:
            assert s is sticky
        elif s in STICKY:
            sticky = s


# ---------------------------------------------------------------------------------------------
# OrderRequest: to_dict / from_dict, signed_qty
# ---------------------------------------------------------------------------------------------

PRICES = st.floats(0.01, 10_000, allow_nan=False)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[OrderRequest, float]:
    """A request ``check_request`` accepts, and the position it is accepted at."""
    side = draw(st.sampled_from(list(Side)))
    sign = 1.0 if side is BUY else -1.0
    size = draw(st.sampled_from(["whole", "fractional", "notional"]))
    qty = notional = None
    if size == "whole":
        qty = float(draw(st.integers(1, 10**6)))
    elif size == "fractional":
        qty = draw(st.floats(0.001, 1000).filter(lambda q: abs(q - round(q)) > 1e-6))
    else:
        notional = draw(st.floats(1.0, 1e6))
    whole = size == "whole"
    cls = draw(st.sampled_from([SIMPLE, BRACKET, OTO]) if whole else st.just(SIMPLE))
    kinds = [MKT, LMT] if cls is not SIMPLE else [MKT, LMT, STP, STPLMT]
    type_ = draw(st.sampled_from(kinds))
    limit = draw(PRICES) if type_ in (LMT, STPLMT) else None
    stop = draw(PRICES) if type_ in (STP, STPLMT) else None
    if not whole:
        tif = DAY
    elif cls is SIMPLE:
        tif = draw(st.sampled_from(sorted(Capabilities().time_in_force)))
    else:
        tif = draw(st.sampled_from([DAY, GTC]))
    extended = cls is SIMPLE and type_ is LMT and tif is DAY and draw(st.booleans())
    tp = sl = None
    if cls is not SIMPLE:
        lo = draw(PRICES)
        hi = lo + draw(st.floats(0.01, 1000))
        tp, sl = (Leg(limit_price=hi), Leg(stop_price=lo)) if side is BUY else (
            Leg(limit_price=lo), Leg(stop_price=hi)
        )  # fmt: skip
        if cls is OTO:
            tp, sl = draw(st.sampled_from([(tp, None), (None, sl)]))
    reduce_only = cls is SIMPLE and qty is not None and draw(st.booleans())
    if reduce_only:
        position = -sign * (qty or 0.0) * draw(st.floats(1.0, 3.0))
    elif side is SELL and not whole:
        position = (qty or 1.0) * draw(st.floats(1.0, 3.0))  # fractional sells close longs
    elif cls is not SIMPLE:
        position = sign * draw(st.integers(0, 1000))  # brackets open or grow
    else:
        position = 0.0
    r = OrderRequest(
        client_order_id=client_order_id(draw(st.text(max_size=12)), "20240102", draw(st.integers(0, 10**6))),
        symbol=draw(st.sampled_from(["AAPL", "BRK.B", "SPY"])),
        side=side, qty=qty, notional=notional, type=type_, time_in_force=tif,
        limit_price=limit, stop_price=stop, extended_hours=extended, order_class=cls,
        take_profit=tp, stop_loss=sl,
        decided_at=draw(st.none() | st.datetimes(timezones=st.just(UTC)) | st.datetimes()),
        intent=draw(st.sampled_from(["entry", "exit", "reduce", "flip_open"]) | st.text(max_size=10)),
        reduce_only=reduce_only,
    )  # fmt: skip
    return r, position


@FAST
@given(valid_requests())
def test_to_dict_from_dict_round_trip(case: tuple[OrderRequest, float]) -> None:
    r, position = case
    assert check_request(r, position=position) is r  # the generator makes valid requests
    d = r.to_dict()
    assert OrderRequest.from_dict(d) == r
    assert OrderRequest.from_dict(json.loads(json.dumps(d))) == r  # JSON-safe for the ledger
    assert d["side"] == r.side.value and d["type"] == r.type.value


def test_from_dict_defaults() -> None:
    r = OrderRequest.from_dict({"client_order_id": "c", "symbol": "A", "side": "sell", "qty": 2})
    assert (r.side, r.type, r.time_in_force, r.order_class) == (SELL, MKT, DAY, SIMPLE)
    assert r.take_profit is None and r.decided_at is None


def test_signed_qty_and_with_id() -> None:
    assert req(qty=10.0).signed_qty == 10.0
    assert req(side=SELL, qty=2.5).signed_qty == -2.5
    assert req(qty=None, notional=500.0).signed_qty == 0.0  # shares unknown for notional
    r = req()
    assert r.with_id("other").client_order_id == "other"
    assert r.with_id("other").qty == r.qty and r.client_order_id == "t-000001"


# ---------------------------------------------------------------------------------------------
# Fill, BrokerOrder
# ---------------------------------------------------------------------------------------------


def fill(qty: float, price: float, ref: float = math.nan, commission: float = 0.0) -> Fill:
    return Fill("e1", "c1", "o1", "AAPL", T0, qty, price, commission, ref_price=ref)


def test_fill_cost() -> None:
    # a buy 3 cents above the arrival price: 100 x 0.03 + $1 commission
    assert fill(100, 50.03, 50.0, 1.0).cost == pytest.approx(4.0)
    # a sell 3 cents below it costs the same (qty is signed; cost is not)
    assert fill(-100, 49.97, 50.0, 1.0).cost == pytest.approx(4.0)
    assert fill(100, 50.0, 50.0, 0.0).cost == 0.0
    # no reference price: only the commission is known
    assert fill(100, 50.03, commission=1.25).cost == 1.25
    assert fill(-100, 50.0).notional == -5000.0


def border(status: OrderStatus, qty: float | None = 10.0, filled: float = 0.0) -> BrokerOrder:
    return BrokerOrder("o1", "c1", "AAPL", BUY, qty, filled, None, status)


def test_broker_order_remaining() -> None:
    assert border(S.NEW).remaining == 10.0
    assert border(S.PARTIALLY_FILLED, filled=4.0).remaining == 6.0
    assert border(S.FILLED, filled=10.0).remaining == 0.0
    assert border(S.FILLED, filled=10.5).remaining == 0.0  # never negative
    assert border(S.NEW, qty=None).remaining == 0.0  # notional: no share count
    sell = replace(border(S.PARTIALLY_FILLED, filled=4.0), side=SELL)
    assert sell.remaining == 6.0 and sell.signed_filled == -4.0


def test_broker_order_open_and_terminal() -> None:
    assert border(S.PENDING_CANCEL).is_open and not border(S.PENDING_CANCEL).is_terminal
    assert border(S.PENDING_REPLACE).is_open
    assert border(S.HELD).is_open  # the inactive bracket stop leg
    assert border(S.UNKNOWN).is_open  # a submit of unknown outcome may be working
    assert not border(S.PENDING_SUBMIT).is_open and not border(S.PENDING_SUBMIT).is_terminal
    for s in (S.FILLED, S.CANCELED, S.EXPIRED, S.REPLACED, S.REJECTED):
        assert border(s).is_terminal and not border(s).is_open
    for s in S:
        o = border(s)
        assert not (o.is_open and o.is_terminal)
        assert o.is_open == (s in OPEN)
