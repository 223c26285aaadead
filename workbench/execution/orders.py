"""Orders: requests, Alpaca's order rules checked before sending, client order ids, the state machine.

An :class:`OrderRequest` is what the execution policy asks a broker to do. :func:`check_request`
applies Alpaca's rules (orders-at-alpaca, fractional-trading and bracket docs) before anything is
sent, so a bad order is refused locally with the field, the value and the fix:

* exactly one of ``qty`` and ``notional``; fractional quantities and notional orders are DAY only
  and never short (all fractional sells are long closes);
* ``extended_hours`` needs a limit order with DAY;
* limit needs ``limit_price``, stop needs ``stop_price``, stop-limit both; market has neither;
* a bracket has both legs, take-profit above stop-loss for a buy (below for a sell), DAY or GTC,
  no extended hours; an OTO has exactly one leg; an OCO is an exit with both legs;
* trailing stops are never legs (Alpaca refuses them).

Order status follows Alpaca's ``OrderStatus`` (plus the local ``pending_submit`` for an intent
committed but not yet acknowledged, and ``unknown`` for a submit of unknown outcome).
:func:`next_status` drives it from broker events; an unknown event name keeps the status and is
recorded by the caller, never fatal.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from workbench.errors import WorkbenchError


class OrderRuleError(WorkbenchError):
    """An order that breaks a broker rule; refused before it is sent."""


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    OPG = "opg"
    CLS = "cls"


class OrderClass(StrEnum):
    SIMPLE = "simple"
    BRACKET = "bracket"
    OCO = "oco"
    OTO = "oto"


class OrderStatus(StrEnum):
    """Alpaca's order statuses plus two local ones (``pending_submit``, ``unknown``)."""

    PENDING_SUBMIT = "pending_submit"  # local: intent committed, not yet acknowledged
    UNKNOWN = "unknown"  # local: a submit whose outcome is not known yet
    PENDING_NEW = "pending_new"
    ACCEPTED = "accepted"
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    DONE_FOR_DAY = "done_for_day"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REPLACED = "replaced"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    PENDING_REVIEW = "pending_review"
    ACCEPTED_FOR_BIDDING = "accepted_for_bidding"
    STOPPED = "stopped"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    CALCULATED = "calculated"
    HELD = "held"


#: Finished: nothing more will happen to the order (late fills after ``expired`` are still applied).
TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REPLACED,
        OrderStatus.REJECTED,
    }
)
#: Working at the broker, or possibly so (``pending_cancel`` still counts as open).
OPEN = frozenset(OrderStatus) - TERMINAL - {OrderStatus.PENDING_SUBMIT}

#: trade_updates event -> the status it moves the order to (None: the order's own status field).
EVENT_STATUS: dict[str, OrderStatus | None] = {
    "pending_new": OrderStatus.PENDING_NEW,
    "accepted": OrderStatus.ACCEPTED,
    "new": OrderStatus.NEW,
    "partial_fill": OrderStatus.PARTIALLY_FILLED,
    "fill": OrderStatus.FILLED,
    "done_for_day": OrderStatus.DONE_FOR_DAY,
    "canceled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "replaced": OrderStatus.REPLACED,
    "pending_cancel": OrderStatus.PENDING_CANCEL,
    "pending_replace": OrderStatus.PENDING_REPLACE,
    "rejected": OrderStatus.REJECTED,
    "stopped": OrderStatus.STOPPED,
    "suspended": OrderStatus.SUSPENDED,
    "calculated": OrderStatus.CALCULATED,
    "held": OrderStatus.HELD,
    "restated": None,
    "order_replace_rejected": None,
    "order_cancel_rejected": None,
}


def parse_status(value: Any) -> OrderStatus:
    """Map a broker's status string (or enum) to :class:`OrderStatus`; unknown -> ``unknown``."""
    raw = getattr(value, "value", value)
    try:
        return OrderStatus(str(raw))
    except ValueError:
        return OrderStatus.UNKNOWN


def next_status(current: OrderStatus, event: str, reported: Any = None) -> OrderStatus:
    """The status after broker ``event`` (a trade_updates event name).

    ``reported`` is the order status carried by the event, used for events that do not name a
    status themselves (``restated``, ``order_cancel_rejected``) and for unknown events. A terminal
    order stays terminal, except that a late fill after ``expired``/``canceled`` moves it to
    ``filled``/``partially_filled`` as reported (fills are never dropped).
    """
    target = EVENT_STATUS.get(event)
    if target is None:
        target = parse_status(reported) if reported is not None else current
        if target is OrderStatus.UNKNOWN:
            return current
    if current in TERMINAL:
        late_fill = event in ("fill", "partial_fill") and current in (
            OrderStatus.EXPIRED,
            OrderStatus.CANCELED,
        )
        return OrderStatus.FILLED if late_fill and event == "fill" else current
    return target


@dataclass(frozen=True, slots=True)
class Leg:
    """A take-profit (limit) or stop-loss (stop, optional limit) leg of a bracket/OCO/OTO."""

    limit_price: float | None = None
    stop_price: float | None = None


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One order the workbench asks a broker for.

    ``qty`` is unsigned; ``side`` says buy or sell. ``intent`` names the decision that produced it
    (``entry``, ``exit``, ``flatten``, ``flip_close``, ``flip_open``, ``fallback``, ...), and
    ``decided_at`` the bar close it was decided at.
    """

    client_order_id: str
    symbol: str
    side: Side
    qty: float | None = None
    notional: float | None = None
    type: OrderType = OrderType.MARKET
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: float | None = None
    stop_price: float | None = None
    extended_hours: bool = False
    order_class: OrderClass = OrderClass.SIMPLE
    take_profit: Leg | None = None
    stop_loss: Leg | None = None
    decided_at: datetime | None = None
    intent: str = "entry"
    reduce_only: bool = False  # closes (part of) a position; never opens or grows one
    after_cancel: tuple[str, ...] = ()  # broker order ids that must end before this is sent

    @property
    def signed_qty(self) -> float:
        q = self.qty or 0.0
        return q if self.side is Side.BUY else -q

    def with_id(self, client_order_id: str) -> OrderRequest:
        return replace(self, client_order_id=client_order_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for the ledger)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            if isinstance(v, Leg):
                v = {"limit_price": v.limit_price, "stop_price": v.stop_price}
            elif isinstance(v, datetime):
                v = v.isoformat()
            elif isinstance(v, StrEnum):
                v = v.value
            elif isinstance(v, tuple):
                v = list(v)
            out[name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OrderRequest:
        kw = dict(d)
        kw["side"] = Side(kw["side"])
        kw["type"] = OrderType(kw.get("type", "market"))
        kw["time_in_force"] = TimeInForce(kw.get("time_in_force", "day"))
        kw["order_class"] = OrderClass(kw.get("order_class", "simple"))
        for leg in ("take_profit", "stop_loss"):
            if kw.get(leg) is not None:
                kw[leg] = Leg(**kw[leg])
        if kw.get("decided_at"):
            kw["decided_at"] = datetime.fromisoformat(kw["decided_at"])
        kw["after_cancel"] = tuple(kw.get("after_cancel") or ())
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker accepts; :func:`check_request` refuses the rest before sending."""

    order_types: frozenset[OrderType] = frozenset(OrderType)
    time_in_force: frozenset[TimeInForce] = frozenset(
        {TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.OPG, TimeInForce.CLS}
    )
    order_classes: frozenset[OrderClass] = frozenset(OrderClass)
    fractional: bool = True
    short: bool = True
    extended_hours: bool = True
    notional: bool = True
    cross_zero: bool = False  # one order may take a position from long to short (Alpaca: no)


def _fractional(q: float | None) -> bool:
    return q is not None and abs(q - round(q)) > 1e-9


def _bad(field_name: str, value: Any, rule: str, fix: str, cid: str) -> OrderRuleError:
    return OrderRuleError(f"order {cid}: {field_name}={value!r} {rule}. Fix: {fix}.")


def check_request(
    req: OrderRequest,
    caps: Capabilities | None = None,
    *,
    position: float = 0.0,
    fractionable: bool = True,
    shortable: bool = True,
) -> OrderRequest:
    """Check ``req`` against Alpaca's order rules and the broker's capabilities; return it.

    ``position`` is the current signed position in the symbol (a sell larger than a long position
    opens a short; one order may not cross zero). Raises :class:`OrderRuleError` naming the field,
    the value and the fix.
    """
    caps = caps or Capabilities()
    cid = req.client_order_id
    if not cid or len(cid) > 48 or not re.fullmatch(r"[A-Za-z0-9._:-]+", cid):
        raise _bad("client_order_id", cid, "must be 1-48 characters of [A-Za-z0-9._:-]",
                   "build it with client_order_id(strategy, session, seq)", cid)  # fmt: skip
    if (req.qty is None) == (req.notional is None):
        raise _bad("qty", req.qty, f"and notional={req.notional!r}: exactly one must be set",
                   "give qty (shares) or notional (dollars), not both", cid)  # fmt: skip
    amount = req.qty if req.qty is not None else req.notional
    if amount is None or not math.isfinite(amount) or amount <= 0:
        raise _bad("qty" if req.qty is not None else "notional", amount, "must be > 0",
                   "send a positive size and put the direction in side", cid)  # fmt: skip
    if req.type not in caps.order_types:
        raise _bad("type", req.type.value, "is not supported by this broker",
                   f"use one of {sorted(t.value for t in caps.order_types)}", cid)  # fmt: skip
    if req.time_in_force not in caps.time_in_force:
        raise _bad("time_in_force", req.time_in_force.value, "is not supported by this broker",
                   f"use one of {sorted(t.value for t in caps.time_in_force)}", cid)  # fmt: skip
    if req.order_class not in caps.order_classes:
        raise _bad("order_class", req.order_class.value, "is not supported by this broker",
                   f"use one of {sorted(c.value for c in caps.order_classes)}", cid)  # fmt: skip
    # an OCO's exit price is take_profit.limit_price: its limit_price may be omitted
    need_limit = req.type is OrderType.STOP_LIMIT or (
        req.type is OrderType.LIMIT and req.order_class is not OrderClass.OCO
    )
    need_stop = req.type in (OrderType.STOP, OrderType.STOP_LIMIT)
    for name, need in (("limit_price", need_limit), ("stop_price", need_stop)):
        v = getattr(req, name)
        if need and (v is None or not math.isfinite(v) or v <= 0):
            raise _bad(name, v, f"is required (> 0) for a {req.type.value} order",
                       f"set {name}, or send a market order", cid)  # fmt: skip
        if not need and v is not None and req.order_class is not OrderClass.OCO:
            raise _bad(name, v, f"is not allowed on a {req.type.value} order",
                       f"drop {name} or change type", cid)  # fmt: skip
    fractional = _fractional(req.qty) or req.notional is not None
    if fractional:
        what = "notional" if req.notional is not None else "qty"
        shown = req.notional if req.notional is not None else req.qty
        if req.notional is not None and not caps.notional:
            raise _bad("notional", shown, "is not supported by this broker", "send whole qty", cid)
        if not caps.fractional or not fractionable:
            raise _bad(what, shown, f"is fractional but {req.symbol} is not fractionable here",
                       "round qty to whole shares", cid)  # fmt: skip
        if req.time_in_force is not TimeInForce.DAY:
            raise _bad("time_in_force", req.time_in_force.value,
                       f"is not allowed with a fractional/notional order ({what}={shown})",
                       "use time_in_force=day or whole shares", cid)  # fmt: skip
        # a notional sell's shares are unknown here: it opens a short unless there is a long
        opens_short = position - req.qty < -1e-9 if req.qty is not None else position <= 1e-9
        if req.side is Side.SELL and opens_short:
            raise _bad(what, shown, "is a fractional/notional sell that would open a short "
                       f"(position {position:g})", "short whole shares only", cid)  # fmt: skip
        if req.order_class is not OrderClass.SIMPLE:
            raise _bad("order_class", req.order_class.value, "is not allowed with fractional "
                       "quantities", "use whole shares for brackets", cid)  # fmt: skip
    if req.extended_hours and (
        req.type is not OrderType.LIMIT or req.time_in_force is not TimeInForce.DAY
    ):
        raise _bad("extended_hours", True, f"needs type=limit and time_in_force=day (got "
                   f"{req.type.value}/{req.time_in_force.value})",
                   "send a DAY limit order, or drop extended_hours", cid)  # fmt: skip
    if req.extended_hours and not caps.extended_hours:
        raise _bad("extended_hours", True, "is not supported by this broker", "drop it", cid)
    q = req.qty or 0.0
    after = position + (q if req.side is Side.BUY else -q)
    if req.qty is not None and position * after < -1e-12 and not caps.cross_zero:
        raise _bad("qty", req.qty, f"{req.side.value} would cross zero (position {position:g} -> "
                   f"{after:g}); Alpaca refuses one order from long to short",
                   "close first, then open the other side once the close has filled", cid)  # fmt: skip
    if req.side is Side.SELL and after < -1e-12 and (not caps.short or not shortable):
        raise _bad("side", "sell", f"would open a short in {req.symbol}, which cannot be "
                   "shorted here", "trade long only in this symbol", cid)  # fmt: skip
    if req.reduce_only and abs(after) > abs(position) + 1e-9:
        raise _bad("qty", req.qty, f"grows the position ({position:g} -> {after:g}) on a "
                   "reduce-only order", "size it to at most the open position", cid)  # fmt: skip
    buy = req.side is Side.BUY
    if req.order_class is OrderClass.BRACKET and (position < -1e-9 if buy else position > 1e-9):
        raise _bad("order_class", "bracket", f"is a {req.side.value} against position "
                   f"{position:g}; bracket orders must be entry orders",
                   "close with a simple or oco order", cid)  # fmt: skip
    if req.order_class is OrderClass.OCO and not (position < -1e-9 if buy else position > 1e-9):
        raise _bad("order_class", "oco", f"is a {req.side.value} with position {position:g}; "
                   "an oco only exits an open position",
                   "use bracket (or oto) to enter with exits", cid)  # fmt: skip
    _check_legs(req, cid)
    return req


def _check_legs(req: OrderRequest, cid: str) -> None:
    tp, sl = req.take_profit, req.stop_loss
    cls_ = req.order_class
    if cls_ is OrderClass.SIMPLE:
        if tp is not None or sl is not None:
            raise _bad("order_class", "simple", "has take_profit/stop_loss legs",
                       "use order_class=bracket (both legs) or oto (one leg)", cid)  # fmt: skip
        return
    if tp is not None and (tp.limit_price is None or tp.limit_price <= 0):
        raise _bad("take_profit.limit_price", tp.limit_price, "is required (> 0)",
                   "set the take-profit limit price", cid)  # fmt: skip
    if sl is not None and (sl.stop_price is None or sl.stop_price <= 0):
        raise _bad("stop_loss.stop_price", sl.stop_price, "is required (> 0); trailing stops "
                   "cannot be legs", "set the stop-loss stop price", cid)  # fmt: skip
    if cls_ is OrderClass.OTO:
        if (tp is None) == (sl is None):
            raise _bad("order_class", "oto", "needs exactly one of take_profit and stop_loss",
                       "use bracket for both legs", cid)  # fmt: skip
        return
    if tp is None or sl is None:
        raise _bad("order_class", cls_.value, "needs both take_profit.limit_price and "
                   "stop_loss.stop_price", "give both legs, or use oto for one", cid)  # fmt: skip
    buy = req.side is Side.BUY
    # a long-side order set has take-profit above stop-loss: a buy entry, or a sell OCO that exits
    # a long (a buy OCO exits a short)
    long_side = buy != (cls_ is OrderClass.OCO)
    ok = tp.limit_price > sl.stop_price if long_side else tp.limit_price < sl.stop_price
    if not ok:
        raise _bad("take_profit.limit_price", tp.limit_price,
                   f"must be {'above' if long_side else 'below'} stop_loss.stop_price="
                   f"{sl.stop_price} for a {req.side.value} {cls_.value}",
                   "swap or fix the leg prices", cid)  # fmt: skip
    if cls_ is OrderClass.BRACKET:
        if req.extended_hours:
            raise _bad("extended_hours", True, "is not allowed on a bracket", "drop it", cid)
        if req.time_in_force not in (TimeInForce.DAY, TimeInForce.GTC):
            raise _bad("time_in_force", req.time_in_force.value, "is not allowed on a bracket",
                       "use day or gtc", cid)  # fmt: skip
        if req.type in (OrderType.STOP, OrderType.STOP_LIMIT) and not buy:
            raise _bad("type", req.type.value, "bracket orders must be entry orders",
                       "enter with market or limit", cid)  # fmt: skip


_ID_SAFE = re.compile(r"[^A-Za-z0-9]")


def client_order_id(strategy: str, session: str, seq: int, salt: str = "") -> str:
    """A deterministic client order id, at most 48 characters, unique per (strategy, session, seq).

    ``wb-{strategy[:10]}-{session[:8]}-{seq:06d}-{hash8}``: readable in the broker's UI; the hash
    of the full (strategy, session, seq, salt) keeps ids unique when names are truncated. The same
    inputs always give the same id: a restarted session re-derives the ids it already used, and
    the broker's uniqueness rule then refuses a second order for the same intent.
    """
    if seq < 0:
        raise ValueError(f"client_order_id: seq must be >= 0, got {seq}")
    # fields escaped so that a separator inside a name cannot make two inputs hash alike
    parts = [x.replace("\\", "\\\\").replace("\x1f", "\\x1f") for x in (strategy, session)]
    digest = hashlib.sha256(f"{parts[0]}\x1f{parts[1]}\x1f{seq}\x1f{salt}".encode()).hexdigest()[:8]
    s = _ID_SAFE.sub("", strategy)[:10] or "s"
    d = _ID_SAFE.sub("", session)[:8] or "x"
    cid = f"wb-{s}-{d}-{seq:06d}-{digest}"
    assert len(cid) <= 48
    return cid


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution: ``qty`` signed (positive buys), price includes spread and slippage."""

    execution_id: str
    client_order_id: str
    order_id: str
    symbol: str
    ts: datetime
    qty: float
    price: float
    commission: float = 0.0
    ref_price: float = float(
        "nan"
    )  # arrival price (the decision bar's close or the fill bar's open)
    decided_at: datetime | None = None
    venue: str = ""  # broker the fill came from (sim, alpaca-paper, alpaca-live)

    @property
    def notional(self) -> float:
        return self.qty * self.price

    @property
    def cost(self) -> float:
        """Total cost against the reference price: spread + slippage + commission."""
        if math.isnan(self.ref_price):
            return self.commission
        return abs(self.qty) * abs(self.price - self.ref_price) + self.commission


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """A broker's view of one order (REST is the truth; events update it)."""

    id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: float | None
    filled_qty: float
    filled_avg_price: float | None
    status: OrderStatus
    type: OrderType = OrderType.MARKET
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: float | None = None
    stop_price: float | None = None
    order_class: OrderClass = OrderClass.SIMPLE
    notional: float | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    legs: tuple[BrokerOrder, ...] = ()
    raw_status: str = ""  # the broker's own word, kept when it is not one we know

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def signed_filled(self) -> float:
        return self.filled_qty if self.side is Side.BUY else -self.filled_qty

    @property
    def remaining(self) -> float:
        return max(0.0, (self.qty or 0.0) - self.filled_qty)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """A broker event about one order (a ``trade_updates`` message or a simulated one).

    ``qty``/``price`` are this execution's (fills only); ``execution_id`` dedupes fills;
    ``order`` is the order as the event reports it (cumulative ``filled_qty`` is the truth).
    """

    event: str
    order: BrokerOrder
    ts: datetime
    execution_id: str | None = None
    qty: float | None = None
    price: float | None = None
    position_qty: float | None = None
    commission: float = 0.0


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    qty: float  # signed
    avg_entry_price: float = 0.0
    market_value: float | None = None


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    equity: float
    cash: float
    buying_power: float
    endpoint: str = ""  # where orders go (shown before the first order)
    paper: bool = True
    trading_blocked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
