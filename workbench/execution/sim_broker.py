"""Simulated broker: market orders fill at the next bar's open plus half-spread, slippage, commission.

The costs come from the same :class:`workbench.backtest.costs.CostModel` configuration the
backtest uses, so a replayed session and a backtest of the same decisions agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from workbench.backtest.costs import CostModel
from workbench.config import CostsConfig
from workbench.errors import WorkbenchError
from workbench.execution.orders import Fill, Order


class BrokerError(WorkbenchError):
    """An order the broker cannot accept."""


class SimulatedBroker:
    """A cash account that fills queued market orders at the next bar's open of their symbol.

    Parameters
    ----------
    cash : float
        Starting cash.
    costs : CostsConfig
        Commission, half-spread and base slippage (bps) applied to every fill.
    """

    name = "simulated"

    def __init__(self, cash: float, costs: CostsConfig | None = None) -> None:
        if cash <= 0:
            raise BrokerError(
                f"The 'cash' parameter of SimulatedBroker must be > 0. Got {cash} instead."
            )
        self.cash = float(cash)
        self.costs = CostModel.from_config(costs)
        self.positions: dict[str, float] = {}
        self.pending: dict[str, list[Order]] = {}
        self.fills: list[Fill] = []
        self._last: dict[str, float] = {}

    def submit(self, order: Order) -> None:
        """Queue a market order; it fills at the open of the symbol's next bar."""
        if order.qty == 0:
            raise BrokerError(
                f"order {order.client_order_id} for {order.symbol} has qty 0; do not send empty orders."
            )
        self.pending.setdefault(order.symbol, []).append(order)

    def on_bar_open(self, symbol: str, ts: datetime, open_price: float) -> list[Fill]:
        """Fill the symbol's queued orders at this bar's open plus costs; return the fills."""
        fills = []
        cfg = self.costs.config
        adverse = (cfg.half_spread_bps + cfg.slippage_bps) / 1e4
        for order in self.pending.pop(symbol, []):
            if ts <= order.decided_at:
                raise BrokerError(
                    f"order {order.client_order_id} would fill at {ts}, not after its decision bar {order.decided_at}."
                )
            price = open_price * (1 + adverse if order.qty > 0 else 1 - adverse)
            commission = float(self.costs.commission(abs(order.qty), price))
            self.cash -= order.qty * price + commission
            self.positions[symbol] = self.positions.get(symbol, 0.0) + order.qty
            fill = Fill(
                order.client_order_id,
                symbol,
                ts,
                order.qty,
                open_price,
                price,
                commission,
                order.decided_at,
            )
            self.fills.append(fill)
            fills.append(fill)
        return fills

    def mark(self, closes: Mapping[str, float]) -> float:
        """Update last prices and return equity (cash + positions at the latest close)."""
        self._last.update(closes)
        return self.equity

    @property
    def equity(self) -> float:
        return self.cash + sum(q * self._last.get(s, 0.0) for s, q in self.positions.items())

    def position(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0)
