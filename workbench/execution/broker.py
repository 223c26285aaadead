"""The broker protocol every venue implements, its error classes, and the registry of brokers by name.

A broker is synchronous (the session engine runs it from its event loop in a worker thread).
Outcomes of a command fall in three classes (NautilusTrader's command-outcome policy):

* definitive local or venue refusal: :class:`OrderRefused` (the order does not exist);
* success: the call returns the broker's :class:`~workbench.execution.orders.BrokerOrder`;
* unknown: :class:`OutcomeUnknown` (timeouts, dropped connections, 5xx after retries, a 504
  after the order may have been created). The caller resolves it with
  :meth:`Broker.get_order_by_client_id`, never by sending again under a new id.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from workbench.errors import ConfigError, WorkbenchError
from workbench.execution.orders import (
    Account,
    BrokerOrder,
    Capabilities,
    OrderEvent,
    OrderRequest,
    Position,
)


class BrokerError(WorkbenchError):
    """A broker call that failed (see the subclasses for what the caller must do)."""


class OrderRefused(BrokerError):
    """The broker (or the local rule check) definitively refused the order: it does not exist.

    ``code`` is the broker's error code when it sent one (e.g. Alpaca's 40310000), ``status`` the
    HTTP status.
    """

    def __init__(self, message: str, *, status: int | None = None, code: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class OutcomeUnknown(BrokerError):
    """The command may or may not have taken effect; ask the broker by client order id."""


class NotFound(BrokerError):
    """The broker has no such order (or position)."""


class Unreachable(BrokerError):
    """The broker did not answer after the bounded retries (a read; nothing was changed)."""


@runtime_checkable
class Broker(Protocol):
    """What the session engine, reconcile and the CLI need from a venue."""

    name: str
    capabilities: Capabilities

    def submit(self, request: OrderRequest) -> BrokerOrder:
        """Send one order. Raises :class:`OrderRefused` or :class:`OutcomeUnknown`."""
        ...

    def cancel(self, order_id: str) -> None:
        """Ask to cancel; the order's terminal state arrives as an event or on the next read."""
        ...

    def replace(
        self,
        order_id: str,
        *,
        qty: float | None = None,
        limit_price: float | None = None,
        stop_price: float | None = None,
        client_order_id: str | None = None,
    ) -> BrokerOrder:
        """Replace a working order; returns the new order (a new id)."""
        ...

    def get_order(self, order_id: str) -> BrokerOrder:
        """The order by broker id (raises :class:`NotFound`)."""
        ...

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order by client order id, or None when the broker never received it."""
        ...

    def open_orders(self) -> list[BrokerOrder]: ...

    def recent_orders(self, after: datetime | None = None) -> list[BrokerOrder]:
        """Orders of any status created after ``after`` (newest first is fine)."""
        ...

    def positions(self) -> list[Position]: ...

    def account(self) -> Account: ...

    def events(self) -> list[OrderEvent]:
        """Order events that arrived since the last call (drains; never blocks)."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


_REGISTRY: dict[str, Callable[..., Broker]] = {}


def register_broker(name: str) -> Callable[[Callable[..., Broker]], Callable[..., Broker]]:
    """Register a broker factory under ``name`` (``sim``, ``alpaca``)."""

    def deco(factory: Callable[..., Broker]) -> Callable[..., Broker]:
        _REGISTRY[name] = factory
        return factory

    return deco


def broker_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def make_broker(name: str, **kwargs: Any) -> Broker:
    """Build the broker registered as ``name`` (keyword arguments go to its factory)."""
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown broker {name!r}. Fix: use one of {sorted(_REGISTRY)} (--broker)."
        ) from None
    return factory(**kwargs)


def _load_builtin() -> None:
    # importing registers them; the modules import this one, so import lazily
    import workbench.execution.alpaca
    import workbench.execution.sim_broker  # noqa: F401
