"""Simulated broker: market orders fill at the next bar's open plus half-spread, slippage, commission.

Prices and commissions come from the backtest kernel's own cost function
(:func:`workbench.backtest._kernels.fill_cost_nb`) with the same :class:`CostsConfig`, so a
replayed session and a backtest of the same decisions fill at the same prices. Not modelled yet
(the backtest models them): spreads estimated from bars, square-root impact and borrow.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import numpy as np

from workbench.backtest import _kernels as BK
from workbench.backtest.costs import CostModel, u_shape
from workbench.config import CostsConfig
from workbench.errors import WorkbenchError
from workbench.execution.orders import Fill, Order

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        c = self.costs.config
        self._half = np.full((1, 1), c.half_spread_bps * 1e-4)
        self._nan = np.full((1, 1), np.nan)
        p = np.zeros(BK.N_PARAMS)
        p[BK.P_PER_SHARE] = c.commission_per_share
        p[BK.P_MIN] = c.commission_min
        p[BK.P_BPS] = c.commission_bps
        p[BK.P_FLAT] = c.commission_flat
        self._params = p

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
        for order in self.pending.pop(symbol, []):
            if ts <= order.decided_at:
                raise BrokerError(
                    f"order {order.client_order_id} would fill at {ts}, not after its decision bar {order.decided_at}."
                )
            price, commission = self._execution(open_price, order.qty, ts)
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

    def _execution(self, ref: float, qty: float, ts: datetime) -> tuple[float, float]:
        """Price and commission of a fill through the backtest kernel's own cost function."""
        c = self.costs.config
        us = np.array([(ts - _EPOCH) // timedelta(microseconds=1)], dtype=np.int64)
        slip = c.slippage_bps * 1e-4
        if slip > 0 and c.intraday_u_shape > 0:
            slip = slip * (1.0 + c.intraday_u_shape * float(u_shape(us)[0]))
        px, comm, _, _ = BK.fill_cost_nb(
            float(ref), float(qty), 0, 0, 0, self._half, self._nan, self._nan,
            np.array([slip]), self._params,
        )  # fmt: skip
        return float(px), float(comm)

    def mark(self, closes: Mapping[str, float]) -> float:
        """Update last prices and return equity (cash + positions at the latest close)."""
        self._last.update(closes)
        return self.equity

    @property
    def equity(self) -> float:
        return self.cash + sum(q * self._last.get(s, 0.0) for s, q in self.positions.items())

    def position(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0)
