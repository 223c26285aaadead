"""Execution policy: how a decided change of position becomes broker orders, and how they are worked.

The risk engine says *how many* shares to trade in a symbol at a bar's close; this policy says
*how*:

* ``order_type: market`` (the default): one DAY market order, which fills at the next bar's open
  like the backtest assumes;
* ``order_type: limit``: a DAY limit at the reference price (the decision bar's close, or the mid
  when quotes are known) plus/minus ``limit_buffer_bps`` on the marketable side; unfilled after
  ``fallback_after_seconds`` it is cancelled and the remainder sent as a market order;
* a working order older than ``stale_after_seconds`` is cancelled, its cancel confirmed
  (terminal), and the remainder sent again at the current price, never replaced in place (a
  PATCH on a partly filled order re-uses the original quantity);
* a change that crosses zero goes out as a close, then the open once the close has filled, on a
  broker that refuses one order from long to short (Alpaca); an order opposite to a working
  order in the same symbol waits until that order is cancelled (Alpaca's wash-trade rule);
* with ``bracket_take_profit_atr`` and ``bracket_stop_loss_atr`` set, an entry that opens or
  grows a position carries a protective bracket: take-profit and stop-loss that many ATRs away;
* at most ``max_concurrent_orders`` working orders; more wait for a slot.

The trading-API request budget (``requests_per_minute``, at most Alpaca's 200) is enforced by the
broker's rate limiter on every request; the policy only keeps the order count in check.

Everything here is pure: the engine passes the clock's time in, and the policy returns
:class:`Planned` orders and cancels; the engine writes them to the ledger and sends them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from workbench.config import ExecutionPolicyConfig
from workbench.execution.orders import (
    BrokerOrder,
    Capabilities,
    Leg,
    OrderClass,
    OrderRequest,
    OrderType,
    Side,
    TimeInForce,
)


@dataclass(frozen=True, slots=True)
class Planned:
    """An order to send (the engine gives it its client order id), or cancels to confirm first.

    ``after_cancel`` lists broker order ids that must be terminal before this order is sent.
    """

    symbol: str
    qty: float  # signed shares
    type: OrderType = OrderType.MARKET
    limit_price: float | None = None
    intent: str = "entry"
    reduce_only: bool = False
    take_profit: float | None = None
    stop_loss: float | None = None
    decided_at: datetime | None = None
    after_cancel: tuple[str, ...] = ()

    def request(self, client_order_id: str) -> OrderRequest:
        """The broker request of this plan under ``client_order_id``."""
        bracket = self.take_profit is not None and self.stop_loss is not None
        return OrderRequest(
            client_order_id=client_order_id,
            symbol=self.symbol,
            side=Side.BUY if self.qty > 0 else Side.SELL,
            qty=abs(self.qty),
            type=self.type,
            time_in_force=TimeInForce.DAY,
            limit_price=self.limit_price,
            order_class=OrderClass.BRACKET if bracket else OrderClass.SIMPLE,
            take_profit=Leg(limit_price=self.take_profit) if bracket else None,
            stop_loss=Leg(stop_price=self.stop_loss) if bracket else None,
            decided_at=self.decided_at,
            intent=self.intent,
            reduce_only=self.reduce_only,
            after_cancel=tuple(self.after_cancel),
        )


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    """An open order as the policy sees it: the broker's view plus when it was sent and why."""

    order: BrokerOrder
    sent_at: datetime
    intent: str = "entry"


@dataclass
class ExecutionPolicy:
    """Plans orders for decided position changes and works the open ones (see the module doc).

    Parameters
    ----------
    config : ExecutionPolicyConfig
    capabilities : Capabilities
        The broker's; decides whether a flip can be one order.
    """

    config: ExecutionPolicyConfig
    capabilities: Capabilities = field(default_factory=Capabilities)

    def plan(
        self,
        symbol: str,
        delta: float,
        *,
        position: float,
        price: float,
        atr: float = float("nan"),
        working: list[WorkingOrder] | tuple[WorkingOrder, ...] = (),
        decided_at: datetime | None = None,
    ) -> list[Planned]:
        """Orders for a change of ``delta`` signed shares in ``symbol`` from ``position``.

        ``working`` are the symbol's open orders; an opposite-side one is cancelled first (the
        new orders carry its id in ``after_cancel``). Returns the orders in sending order.
        """
        if delta == 0 or not math.isfinite(delta):
            return []
        c = self.config
        side = 1.0 if delta > 0 else -1.0
        opposite = tuple(
            w.order.id
            for w in working
            if w.order.is_open and (1.0 if w.order.side is Side.BUY else -1.0) != side
        )
        target = position + delta
        crosses = position * target < 0
        legs: list[tuple[float, str, bool]] = []
        if crosses and not self.capabilities.cross_zero:
            legs.append((-position, "flip_close", True))
            legs.append((target, "flip_open", False))
        else:
            reduce = abs(target) < abs(position) and position * target >= 0
            intent = "exit" if target == 0 else ("reduce" if reduce else "entry")
            legs.append((delta, intent, reduce))
        out = []
        for qty, intent, reduce in legs:
            kind, limit = self._price(qty, price)
            tp = sl = None
            # a one-order flip (cross_zero) is part exit: legs sized to it would overshoot
            grows = not reduce and (intent == "flip_open" or (intent == "entry" and not crosses))
            if (
                grows
                and c.bracket_take_profit_atr
                and c.bracket_stop_loss_atr
                and math.isfinite(atr)
                and atr > 0
                and abs(qty - round(qty)) < 1e-9
            ):
                s = 1.0 if qty > 0 else -1.0
                tp = _tick(price + s * c.bracket_take_profit_atr * atr)
                sl = _tick(price - s * c.bracket_stop_loss_atr * atr)
                if sl <= 0 or tp <= 0 or tp == sl:  # below zero, or collapsed by the tick
                    tp = sl = None
            out.append(
                Planned(
                    symbol,
                    qty,
                    kind,
                    limit,
                    intent,
                    reduce,
                    tp,
                    sl,
                    decided_at,
                    after_cancel=opposite,
                )
            )
        return out

    def _price(self, qty: float, price: float) -> tuple[OrderType, float | None]:
        if self.config.order_type == "market" or not math.isfinite(price) or price <= 0:
            return OrderType.MARKET, None
        buf = self.config.limit_buffer_bps * 1e-4
        return OrderType.LIMIT, _tick(price * (1.0 + buf) if qty > 0 else price * (1.0 - buf))

    def manage(
        self, working: list[WorkingOrder], now: datetime, prices: dict[str, float]
    ) -> list[Planned]:
        """Work the open orders at ``now``: limit fallback to market, stale cancel and re-send.

        Returns the replacement orders, each with the order it replaces in ``after_cancel`` (the
        engine cancels, confirms the cancel, then sends the remainder it finds then).
        """
        c = self.config
        out = []
        for w in working:
            o = w.order
            if not o.is_open or o.remaining <= 0 or w.intent.startswith("protect"):
                continue
            age = now - w.sent_at
            signed = o.remaining if o.side is Side.BUY else -o.remaining
            fallback = (
                c.fallback_after_seconds is not None
                and o.type is OrderType.LIMIT
                and age >= timedelta(seconds=c.fallback_after_seconds)
            )
            stale = c.stale_after_seconds is not None and age >= timedelta(
                seconds=c.stale_after_seconds
            )
            if fallback:
                out.append(
                    Planned(o.symbol, signed, OrderType.MARKET, None, "fallback",
                            w.intent in ("exit", "reduce", "flip_close"), after_cancel=(o.id,))
                )  # fmt: skip
            elif stale:
                kind, limit = self._price(signed, prices.get(o.symbol, float("nan")))
                out.append(
                    Planned(o.symbol, signed, kind, limit, "stale_resend",
                            w.intent in ("exit", "reduce", "flip_close"), after_cancel=(o.id,))
                )  # fmt: skip
        return out

    def slots(self, n_working: int) -> int:
        """How many new orders may be sent now."""
        return max(0, self.config.max_concurrent_orders - n_working)


def _tick(px: float) -> float:
    """Round to Alpaca's price increment: $0.01 at or above $1, $0.0001 below."""
    return round(px, 2) if px >= 1.0 else round(px, 4)
