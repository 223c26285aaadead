"""Orders and fills as the session engine and brokers exchange them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Order:
    """A market order for ``qty`` signed shares (positive buys), decided at the close of ``decided_at``."""

    client_order_id: str
    symbol: str
    qty: float
    decided_at: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Fill:
    """An executed order: price includes spread and slippage; commission is separate."""

    client_order_id: str
    symbol: str
    ts: datetime
    qty: float
    ref_price: float
    price: float
    commission: float
    decided_at: datetime

    @property
    def notional(self) -> float:
        return self.qty * self.price

    @property
    def cost(self) -> float:
        """Total cost against the reference price: spread + slippage + commission."""
        return abs(self.qty) * abs(self.price - self.ref_price) + self.commission
