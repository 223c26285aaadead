"""A local Alpaca-compatible TRADING server for tests: REST ``/v2/...`` and the ``/stream`` websocket.

Built on aiohttp, it runs in a background thread on ``127.0.0.1`` (port 0) and serves both on the
same port, like paper (``https://paper-api.alpaca.markets`` and ``wss://.../stream``). It follows
the wire format of the trading API (project reference ``trading_ops.md`` section 2): numbers as
strings, ISO timestamps with ``Z``, ``order_class`` ``""`` for simple orders (alpaca-py maps it to
``simple``), every required field of alpaca-py's ``Order``/``Position``/``TradeAccount``/``Asset``/
``Clock``, no PDT fields on the account (removed 2026-07-06), trade_updates as BINARY frames.

Server-side order rules (Alpaca's, checked in this order):

* 401 ``{"code":40110000,"message":"request is not authorized"}`` without the key headers;
* 400 40010001: neither or both of ``qty`` and ``notional``;
* 422 40010001: missing fields, a limit without ``limit_price``, a stop without ``stop_price``,
  fractional/notional not DAY, ``client_order_id`` longer than 128 or **not unique**
  (``"client_order_id must be unique"``), ``"requested asset is not fractionable"``;
* 422 42210000: ``extended_hours`` not a DAY limit, bracket/oco/oto leg rules (TP > SL for a buy),
  ``"bracket orders must be entry orders"``, and an order opposite to an open same-symbol order:
  ``"potential wash trade detected. use complex orders"``;
* 403 40310000: a fractional/notional short, a sell larger than the available long position
  (``"insufficient qty available for order (requested: X, available: Y)"``) unless the position is
  flat/short and the asset and account allow shorting. **One order crossing zero** (long -> short
  or short -> long) is refused with that same 403 insufficient-qty message (what Alpaca does for a
  sell larger than a long position); buying power: 403 ``"insufficient buying power"``.

State machine: POST returns the order ``accepted``; it then moves to ``new`` (event ``new``),
``partially_filled``/``filled`` on fills, ``canceled`` (or ``pending_cancel`` and stuck there with
``cancel_mode="pending"``), ``expired`` (:meth:`TradingStub.expire`), ``replaced`` (PATCH creates a
new order with ``replaces``; the old one gets ``replaced_by``), ``rejected`` (:meth:`reject_next`).
Bracket/OTO legs are ``held`` until the entry is completely filled; a filled leg cancels its
sibling.

Fills: market orders fill at the symbol's price (:meth:`set_price`, default 100.0) right after
creation (``fill_mode="immediate"``) or when the test calls :meth:`fill`; limit orders fill when a
:meth:`set_price` crosses them (or on creation when already marketable); stops trigger likewise.
``partial_fill_prob`` splits a fill into 2-3 partial fills, deterministic given ``seed`` and the
``client_order_id``. Fills move positions and cash, and emit ``trade_updates`` events.

Faults (:meth:`inject`): ``429`` (``Retry-After: 0``), ``500``, ``502``, ``503``, ``504``, ``timeout``
(hang ``hang_seconds`` then 504), ``drop`` (close the connection without an answer), and the same
with ``-after-create`` (``504-after-create``, ``timeout-after-create``, ``drop-after-create``,
``500-after-create``...): the request is processed (the order created) before the fault. Stream
faults: :meth:`drop_streams`, :meth:`silence_stream` (no events and no pongs; the socket stays
open), ``replay_fills`` (each fill event sent N times with one ``execution_id``), a second
concurrent stream refused (``max_streams``, ``stream_refusal="406"`` on upgrade or ``"close"``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import WSMsgType, web

from .stub_server import KEY_ID, SECRET

__all__ = ["FAULTS", "KEY_ID", "SECRET", "TradingStub"]

FAULTS = (
    "429",
    "500",
    "502",
    "503",
    "504",
    "timeout",
    "drop",
    "500-after-create",
    "503-after-create",
    "504-after-create",
    "timeout-after-create",
    "drop-after-create",
)

ACCOUNT_ID = "9f2a6c1e-0b4d-4f43-9a55-3c1f0e7b2d11"
OPEN_STATUSES = frozenset(
    {
        "new",
        "partially_filled",
        "accepted",
        "pending_new",
        "pending_cancel",
        "pending_replace",
        "held",
        "done_for_day",
        "accepted_for_bidding",
        "stopped",
        "suspended",
        "calculated",
        "pending_review",
    }
)
EPS = 1e-9


class _Refused(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _num(v: float | None) -> str | None:
    """A number as Alpaca sends it: a string, no trailing zeros (``"10"``, ``"100.25"``)."""
    if v is None:
        return None
    s = f"{v:.9f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_float(v: Any, name: str) -> float | None:
    if v is None or v == "":
        return None
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise _Refused(422, 40010001, f"invalid {name}: {v!r}") from None
    if not math.isfinite(out):
        raise _Refused(422, 40010001, f"invalid {name}: {v!r}")
    return out


def _parse_time(v: str) -> datetime:
    s = v.strip().replace("Z", "+00:00").replace(" ", "+")
    t = datetime.fromisoformat(s)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


@dataclass
class _Order:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: float | None
    notional: float | None
    limit_price: float | None
    stop_price: float | None
    order_class: str  # simple | bracket | oco | oto
    extended_hours: bool
    created_at: datetime
    status: str = "accepted"
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    parent: str | None = None
    legs: list[str] = field(default_factory=list)
    triggered: bool = False  # a stop that has triggered
    qty_target: float | None = None  # a notional order's qty, fixed at its first fill
    external: bool = False

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> float:
        if self.qty is None:
            return math.inf
        return max(0.0, self.qty - self.filled_qty)


@dataclass
class _Conn:
    ws: web.WebSocketResponse
    request: web.Request
    queue: asyncio.Queue[bytes | None]
    authorized: bool = False
    listening: bool = False


@dataclass
class _Fault:
    method: str
    prefix: str
    fault: str
    times: int


class TradingStub:
    """An Alpaca trading server on ``127.0.0.1``: REST and the trade_updates stream, one port.

    Parameters
    ----------
    fill_mode : {"immediate", "manual"}
        Market orders fill right after creation, or only when the test calls :meth:`fill`.
    partial_fill_prob : float
        Probability that a fill is split into 2-3 partial fills (seeded per client order id).
    seed : int
        Seed of the partial-fill RNG.
    cash : float
        Starting cash (equity with no positions).
    multiplier : float
        Buying power is ``equity * multiplier`` minus gross position value and open buy orders.
    shorting_enabled : bool
        Account-level shorting (assets still need ``shortable``).
    max_streams : int or None
        Concurrent stream connections per account (Alpaca: 1); None means unlimited.
    stream_refusal : {"406", "close"}
        How an extra stream is refused: HTTP 406 on the upgrade, or accepted then closed (1008).
    hang_seconds : float
        How long the ``timeout`` faults hang (longer than the client timeout).
    cancel_mode : {"immediate", "pending"}
        A cancel goes straight to ``canceled``, or to ``pending_cancel`` and stays there.
    short_qty_sign : {"negative", "positive"}
        How a short position's ``qty`` is written on the wire (``side`` is ``short`` either way).
    simple_class : str
        ``order_class`` written for simple orders (``""`` as Alpaca often does, or ``"simple"``).
    """

    def __init__(
        self,
        *,
        fill_mode: str = "immediate",
        partial_fill_prob: float = 0.0,
        seed: int = 0,
        cash: float = 100_000.0,
        multiplier: float = 2.0,
        shorting_enabled: bool = True,
        max_streams: int | None = 1,
        stream_refusal: str = "406",
        hang_seconds: float = 2.0,
        cancel_mode: str = "immediate",
        short_qty_sign: str = "negative",
        simple_class: str = "",
    ) -> None:
        if fill_mode not in ("immediate", "manual"):
            raise ValueError(f"fill_mode must be 'immediate' or 'manual', got {fill_mode!r}")
        if stream_refusal not in ("406", "close"):
            raise ValueError(f"stream_refusal must be '406' or 'close', got {stream_refusal!r}")
        self.fill_mode = fill_mode
        self.partial_fill_prob = float(partial_fill_prob)
        self.seed = seed
        self.cash = float(cash)
        self.multiplier = float(multiplier)
        self.shorting_enabled = shorting_enabled
        self.max_streams = max_streams
        self.stream_refusal = stream_refusal
        self.hang_seconds = float(hang_seconds)
        self.cancel_mode = cancel_mode
        self.short_qty_sign = short_qty_sign
        self.simple_class = simple_class
        self.replay_fills = 1
        self.clock_open = True
        self.omit_easy_to_borrow = False
        self.port = 0
        self._lock = threading.RLock()
        self._orders: dict[str, _Order] = {}
        self._by_cid: dict[str, str] = {}
        self._cid_count: dict[str, int] = {}
        self._positions: dict[str, tuple[float, float]] = {}  # symbol -> (signed qty, avg price)
        self._prices: dict[str, float] = {}
        self._assets: dict[str, dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self._requests: list[tuple[str, str, int]] = []
        self._reject: list[str] = []
        self.rejected_reasons: dict[str, str] = {}
        self._conns: list[_Conn] = []
        self._silent = False
        self.stream_connections = 0  # accepted stream connections, ever
        self.stream_refused = 0
        self.events_sent: list[dict[str, Any]] = []  # trade_updates data as broadcast (each once)
        self._last_ts = datetime.now(UTC)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_evt: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def start(self) -> TradingStub:
        self._thread = threading.Thread(target=self._run, name="trading-stub", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"TradingStub did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop_evt is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop_evt.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> TradingStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TradingStub({self.url}, orders={len(self._orders)})"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # pragma: no cover - reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_evt = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop_evt.wait()
        for c in list(self._conns):
            c.queue.put_nowait(None)
            c.request.transport and c.request.transport.close()
        self._conns.clear()
        await runner.cleanup()

    # ------------------------------------------------------------------ test API

    def inject(self, method: str, path_prefix: str, fault: str, times: int = 1) -> None:
        """Make the next ``times`` requests ``method path_prefix*`` fail with ``fault``.

        ``path_prefix`` is matched against the request path (``/v2/orders`` also matches
        ``/v2/orders:by_client_order_id`` and ``/v2/orders/{id}``); ``method`` may be ``"*"``.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; use one of {FAULTS}")
        with self._lock:
            self._faults.append(_Fault(method.upper(), path_prefix, fault, int(times)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_price(self, symbol: str, price: float) -> None:
        """Set the symbol's price; open limit/stop orders that it crosses fill now."""
        with self._lock:
            self._prices[symbol] = float(price)
            for o in sorted(self._orders.values(), key=lambda o: o.created_at):
                if o.symbol == symbol and o.is_open and o.status != "held":
                    self._try_fill(o, manual=self.fill_mode == "manual")

    def price(self, symbol: str) -> float:
        with self._lock:
            return self._prices.get(symbol, 100.0)

    def set_asset(self, symbol: str, **flags: Any) -> None:
        """Override asset facts (``fractionable``, ``shortable``, ``easy_to_borrow``, ...)."""
        with self._lock:
            self._assets.setdefault(symbol, {}).update(flags)

    def set_position(self, symbol: str, qty: float, avg_price: float | None = None) -> None:
        """Force a position (no cash change), e.g. to create a mismatch with the ledger."""
        with self._lock:
            if abs(qty) < EPS:
                self._positions.pop(symbol, None)
            else:
                self._positions[symbol] = (float(qty), float(avg_price or self.price(symbol)))

    def fill(self, order_id: str, qty: float | None = None, price: float | None = None) -> None:
        """Fill an open order: ``qty`` (default: the rest, maybe split) at ``price``."""
        with self._lock:
            o = self._orders[order_id]
            if not o.is_open or o.status == "held":
                raise ValueError(f"order {order_id} is {o.status}, cannot fill")
            px = price if price is not None else self._fill_price(o)
            if qty is None:
                self._fill_split(o, px)
            else:
                self._fill(o, min(float(qty), o.remaining), px)

    def expire(self, order_id: str) -> None:
        with self._lock:
            o = self._orders[order_id]
            if o.is_open:
                self._finish(o, "expired")

    def reject_next(self, reason: str = "rejected by the stub") -> None:
        """The next order is accepted (HTTP 200) and then rejected through an event."""
        with self._lock:
            self._reject.append(reason)

    def place_external_order(
        self,
        symbol: str,
        side: str,
        qty: float,
        *,
        type: str = "market",
        limit_price: float | None = None,
        time_in_force: str = "day",
        client_order_id: str | None = None,
    ) -> dict[str, Any]:
        """Create an order as if placed outside the workbench (the id does not start with wb-)."""
        body: dict[str, Any] = {
            "symbol": symbol,
            "side": side,
            "qty": _num(qty),
            "type": type,
            "time_in_force": time_in_force,
            "client_order_id": client_order_id or str(uuid.uuid4()),
        }
        if limit_price is not None:
            body["limit_price"] = _num(limit_price)
        with self._lock:
            try:
                _o, snap = self._create(body, external=True)
            except _Refused as exc:
                raise ValueError(f"HTTP {exc.status} {exc.code}: {exc.message}") from None
            return snap

    def silence_stream(self, on: bool = True) -> None:
        """Keep the sockets open but send no events and answer no pings (a 'silent' socket)."""
        with self._lock:
            self._silent = bool(on)

    def drop_streams(self) -> int:
        """Abort every stream connection (no close frame); return how many were dropped."""
        assert self._loop is not None

        async def _drop() -> int:
            conns = list(self._conns)
            self._conns.clear()
            for c in conns:
                c.queue.put_nowait(None)
                if c.request.transport is not None:
                    c.request.transport.close()
            return len(conns)

        return asyncio.run_coroutine_threadsafe(_drop(), self._loop).result(5)

    @property
    def active_streams(self) -> int:
        return len(self._conns)

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request; status 0 for a dropped connection."""
        with self._lock:
            return list(self._requests)

    @property
    def orders(self) -> dict[str, dict[str, Any]]:
        """Every order by id, as the wire shows it (legs not nested)."""
        with self._lock:
            return {oid: self._order_json(o, nested=False) for oid, o in self._orders.items()}

    @property
    def positions(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            return dict(self._positions)

    def count_orders(self, client_order_id: str) -> int:
        """How many orders were created with this client order id (Alpaca: at most one)."""
        with self._lock:
            return self._cid_count.get(client_order_id, 0)

    def order_by_cid(self, client_order_id: str) -> dict[str, Any] | None:
        with self._lock:
            oid = self._by_cid.get(client_order_id)
            return None if oid is None else self._order_json(self._orders[oid], nested=True)

    # ------------------------------------------------------------------ HTTP plumbing

    def _take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for f in self._faults:
                if f.times > 0 and f.method in (method, "*") and path.startswith(f.prefix):
                    f.times -= 1
                    return f.fault
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    @staticmethod
    def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        if status == 204:
            return web.Response(status=204, headers=headers)
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=headers,
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        if path == "/stream":
            return await self._stream(request)
        if (
            request.headers.get("APCA-API-KEY-ID") != KEY_ID
            or request.headers.get("APCA-API-SECRET-KEY") != SECRET
        ):
            self._log(method, path, 401)
            return self._json(401, {"code": 40110000, "message": "request is not authorized"})
        fault = self._take_fault(method, path)
        after = False
        if fault and fault.endswith("-after-create"):
            fault, after = fault[: -len("-after-create")], True
        if fault and not after:
            return await self._fault(request, fault, None)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._log(method, path, 400)
            return self._json(400, {"code": 40010000, "message": "request body format is invalid"})
        query = {k: request.query.getall(k)[-1] for k in request.query}
        try:
            with self._lock:
                status, payload = self._route(method, path, query, body)
        except _Refused as exc:
            status, payload = exc.status, {"code": exc.code, "message": exc.message}
        resp = self._json(status, payload)
        if fault:
            return await self._fault(request, fault, resp)
        self._log(method, path, status)
        return resp

    async def _fault(
        self, request: web.Request, fault: str, real: web.Response | None
    ) -> web.StreamResponse:
        method, path = request.method, request.path
        if fault == "drop":
            self._log(method, path, 0)
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if fault == "timeout":  # logged on arrival, answered after the hang
            self._log(method, path, real.status if real is not None else 504)
            await asyncio.sleep(self.hang_seconds)
            if real is not None:
                return real
            return web.Response(status=504, text="<html>504 Gateway Time-out</html>")
        status = int(fault)
        self._log(method, path, status)
        if status == 429:
            return self._json(
                429, {"code": 42910000, "message": "rate limit exceeded"}, {"Retry-After": "0"}
            )
        if status == 504:
            return web.Response(
                status=504,
                text="<html><h1>504 Gateway Time-out</h1></html>",
                content_type="text/html",
            )
        return self._json(status, {"code": status * 100000, "message": "internal server error"})

    def _route(self, method: str, path: str, q: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.rstrip("/").split("/")[1:]  # ["v2", "orders", ...]
        if not parts or parts[0] != "v2" or len(parts) < 2:
            return 404, {"code": 40410000, "message": "endpoint not found"}
        head, rest = parts[1], parts[2:]
        if head == "orders" and not rest:
            if method == "POST":
                if not isinstance(body, dict):
                    raise _Refused(422, 40010001, "request body must be a JSON object")
                return 200, self._create(body)[1]
            if method == "GET":
                return 200, self._list_orders(q)
            if method == "DELETE":
                return 207, self._cancel_all()
        elif head == "orders:by_client_order_id" and not rest and method == "GET":
            cid = q.get("client_order_id")
            if not cid:
                raise _Refused(422, 40010001, "client_order_id is missing")
            oid = self._by_cid.get(cid)
            if oid is None:
                raise _Refused(404, 40410000, "order not found")
            return 200, self._order_json(self._orders[oid], nested=_truthy(q.get("nested")))
        elif head == "orders" and len(rest) == 1:
            o = self._orders.get(rest[0])
            if o is None:
                raise _Refused(404, 40410000, "order not found")
            if method == "GET":
                return 200, self._order_json(o, nested=_truthy(q.get("nested")))
            if method == "DELETE":
                self._cancel(o)
                return 204, None
            if method == "PATCH":
                return 200, self._replace(o, body if isinstance(body, dict) else {})
        elif head == "positions" and not rest:
            if method == "GET":
                return 200, [self._position_json(s) for s in sorted(self._positions)]
            if method == "DELETE":
                out = []
                if _truthy(q.get("cancel_orders")):
                    self._cancel_all()
                for s in sorted(self._positions):
                    try:
                        out.append({"symbol": s, "status": 200, "body": self._close(s, {})})
                    except _Refused as exc:
                        body_ = {"code": exc.code, "message": exc.message}
                        out.append({"symbol": s, "status": exc.status, "body": body_})
                return 207, out
        elif head == "positions" and len(rest) == 1:
            sym = rest[0]
            if sym not in self._positions:
                raise _Refused(404, 40410000, "position does not exist")
            if method == "GET":
                return 200, self._position_json(sym)
            if method == "DELETE":
                return 200, self._close(sym, q)
        elif head == "account" and not rest and method == "GET":
            return 200, self._account_json()
        elif head == "account" and rest == ["configurations"] and method == "GET":
            return 200, {
                "dtbp_check": "entry",
                "fractional_trading": True,
                "max_margin_multiplier": _num(self.multiplier),
                "no_shorting": not self.shorting_enabled,
                "suspend_trade": False,
                "trade_confirm_email": "none",
                "ptp_no_exception_entry": False,
            }
        elif head == "clock" and not rest and method == "GET":
            now = datetime.now(UTC)
            return 200, {
                "timestamp": _iso(now),
                "is_open": self.clock_open,
                "next_open": _iso(now + timedelta(hours=16)),
                "next_close": _iso(now + timedelta(hours=4)),
            }
        elif head == "assets" and len(rest) == 1 and method == "GET":
            return 200, self._asset_json(rest[0])
        return 404, {"code": 40410000, "message": "endpoint not found"}

    # ------------------------------------------------------------------ wire shapes

    def _now(self) -> datetime:
        """Strictly increasing timestamps (so ordering and ``after`` pagination are exact)."""
        t = datetime.now(UTC)
        if t <= self._last_ts:
            t = self._last_ts + timedelta(microseconds=1)
        self._last_ts = t
        return t

    def _asset(self, symbol: str) -> dict[str, Any]:
        facts = {
            "tradable": True,
            "marginable": True,
            "shortable": True,
            "easy_to_borrow": True,
            "fractionable": True,
        }
        facts.update(self._assets.get(symbol, {}))
        return facts

    def _asset_json(self, symbol: str) -> dict[str, Any]:
        f = self._asset(symbol)
        out = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"asset/{symbol}")),
            "class": "us_equity",
            "exchange": "NASDAQ",
            "symbol": symbol,
            "name": f"{symbol} Inc.",
            "status": "active",
            "tradable": f["tradable"],
            "marginable": f["marginable"],
            "maintenance_margin_requirement": 30,
            "margin_requirement_long": "30",
            "margin_requirement_short": "100",
            "shortable": f["shortable"],
            "easy_to_borrow": f["easy_to_borrow"],
            "borrow_status": "easy_to_borrow" if f["easy_to_borrow"] else "hard_to_borrow",
            "fractionable": f["fractionable"],
            "attributes": ["fractional_eh_enabled"] if f["fractionable"] else [],
        }
        if self.omit_easy_to_borrow:
            del out["easy_to_borrow"]
        return out

    def _order_json(self, o: _Order, *, nested: bool) -> dict[str, Any]:
        legs = (
            [self._order_json(self._orders[i], nested=False) for i in o.legs]
            if nested and o.legs
            else None
        )
        return {
            "id": o.id,
            "client_order_id": o.client_order_id,
            "created_at": _iso(o.created_at),
            "updated_at": _iso(o.updated_at or o.created_at),
            "submitted_at": _iso(o.created_at),
            "filled_at": _iso(o.filled_at),
            "expired_at": _iso(o.expired_at),
            "canceled_at": _iso(o.canceled_at),
            "failed_at": _iso(o.failed_at),
            "replaced_at": _iso(o.replaced_at),
            "replaced_by": o.replaced_by,
            "replaces": o.replaces,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"asset/{o.symbol}")),
            "symbol": o.symbol,
            "asset_class": "us_equity",
            "notional": _num(o.notional),
            "qty": _num(o.qty),
            "filled_qty": _num(o.filled_qty),
            "filled_avg_price": _num(o.filled_avg_price),
            "order_class": self.simple_class if o.order_class == "simple" else o.order_class,
            "order_type": o.type,
            "type": o.type,
            "side": o.side,
            "position_intent": _intent(o.side, self._positions.get(o.symbol, (0.0, 0.0))[0]),
            "time_in_force": o.time_in_force,
            "limit_price": _num(o.limit_price),
            "stop_price": _num(o.stop_price),
            "status": o.status,
            "extended_hours": o.extended_hours,
            "legs": legs,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
            "expires_at": _iso(o.created_at + timedelta(days=90)),
        }

    def _position_json(self, symbol: str) -> dict[str, Any]:
        qty, avg = self._positions[symbol]
        px = self.price(symbol)
        held = sum(
            o.remaining
            for o in self._orders.values()
            if o.symbol == symbol
            and o.is_open
            and o.status != "held"
            and o.qty is not None
            and (o.side == "sell") == (qty > 0)
        )
        avail = max(0.0, abs(qty) - held)
        wire_qty = qty if qty > 0 or self.short_qty_sign == "negative" else abs(qty)
        mv = qty * px
        cost = qty * avg
        upl = mv - cost
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"asset/{symbol}")),
            "symbol": symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "avg_entry_price": _num(avg),
            "qty": _num(wire_qty),
            "side": "long" if qty > 0 else "short",
            "market_value": _num(mv),
            "cost_basis": _num(cost),
            "unrealized_pl": _num(upl),
            "unrealized_plpc": _num(upl / abs(cost) if cost else 0.0),
            "unrealized_intraday_pl": _num(upl),
            "unrealized_intraday_plpc": _num(upl / abs(cost) if cost else 0.0),
            "current_price": _num(px),
            "lastday_price": _num(px),
            "change_today": "0",
            "qty_available": _num(
                avail if qty > 0 or self.short_qty_sign == "positive" else -avail
            ),
        }

    def _equity(self) -> float:
        return self.cash + sum(q * self.price(s) for s, (q, _) in self._positions.items())

    def _buying_power(self) -> float:
        gross = sum(abs(q) * self.price(s) for s, (q, _) in self._positions.items())
        reserved = 0.0
        for o in self._orders.values():
            if o.is_open and o.parent is None and o.side == "buy":
                if o.notional is not None:
                    reserved += max(0.0, o.notional - o.filled_qty * (o.filled_avg_price or 0.0))
                else:
                    reserved += o.remaining * (o.limit_price or self.price(o.symbol))
        return max(0.0, self._equity() * self.multiplier - gross - reserved)

    def _account_json(self) -> dict[str, Any]:
        long_mv = sum(q * self.price(s) for s, (q, _) in self._positions.items() if q > 0)
        short_mv = sum(q * self.price(s) for s, (q, _) in self._positions.items() if q < 0)
        eq = self._equity()
        bp = self._buying_power()
        return {
            "id": ACCOUNT_ID,
            "account_number": "PA3STUB0001",
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": _num(bp),
            "regt_buying_power": _num(bp),
            "non_marginable_buying_power": _num(max(0.0, self.cash)),
            "options_buying_power": _num(max(0.0, self.cash)),
            "cash": _num(self.cash),
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "portfolio_value": _num(eq),
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": "2024-01-02T14:30:00.000000Z",
            "trade_suspended_by_user": False,
            "multiplier": _num(self.multiplier),
            "shorting_enabled": self.shorting_enabled,
            "equity": _num(eq),
            "last_equity": _num(eq),
            "long_market_value": _num(long_mv),
            "short_market_value": _num(short_mv),
            "position_market_value": _num(long_mv - short_mv),
            "initial_margin": _num(0.5 * (long_mv - short_mv)),
            "maintenance_margin": _num(0.3 * (long_mv - short_mv)),
            "last_maintenance_margin": "0",
            "sma": "0",
            "options_approved_level": 0,
            "options_trading_level": 0,
        }

    # ------------------------------------------------------------------ orders

    def _list_orders(self, q: dict[str, str]) -> list[dict[str, Any]]:
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise _Refused(422, 40010001, f"invalid status: {status}")
        try:
            limit = min(500, max(1, int(q.get("limit", "50"))))
        except ValueError:
            raise _Refused(422, 40010001, f"invalid limit: {q.get('limit')}") from None
        nested = _truthy(q.get("nested"))
        direction = q.get("direction", "desc")
        after = _parse_time(q["after"]) if q.get("after") else None
        until = _parse_time(q["until"]) if q.get("until") else None
        symbols = {s for s in q.get("symbols", "").split(",") if s} or None
        side = q.get("side")
        out = []
        for o in self._orders.values():
            if nested and o.parent is not None:
                continue
            if (status == "open" and not o.is_open) or (status == "closed" and o.is_open):
                continue
            if after is not None and not o.created_at > after:
                continue
            if until is not None and not o.created_at < until:
                continue
            if (symbols is not None and o.symbol not in symbols) or (side and o.side != side):
                continue
            out.append(o)
        out.sort(key=lambda o: o.created_at, reverse=direction != "asc")
        return [self._order_json(o, nested=nested) for o in out[:limit]]

    def _create(
        self, body: dict[str, Any], *, external: bool = False, replaces: _Order | None = None
    ) -> tuple[_Order, dict[str, Any]]:
        """Validate like Alpaca, store, return (order, its JSON at acceptance); then advance it."""
        symbol = body.get("symbol")
        side = body.get("side")
        typ = body.get("type") or body.get("order_type")
        tif = body.get("time_in_force")
        for name, v in (("symbol", symbol), ("side", side), ("type", typ), ("time_in_force", tif)):
            if not v:
                raise _Refused(422, 40010001, f"{name} is required")
        if side not in ("buy", "sell"):
            raise _Refused(422, 40010001, f"invalid side: {side}")
        if typ not in ("market", "limit", "stop", "stop_limit"):
            raise _Refused(422, 40010001, f"invalid order type: {typ}")
        if tif not in ("day", "gtc", "ioc", "fok", "opg", "cls"):
            raise _Refused(422, 40010001, f"invalid time_in_force: {tif}")
        qty = _parse_float(body.get("qty"), "qty")
        notional = _parse_float(body.get("notional"), "notional")
        if (qty is None) == (notional is None):
            msg = (
                "qty or notional is required"
                if qty is None
                else "only one of qty or notional can be specified"
            )
            raise _Refused(400, 40010001, msg)
        amount = qty if qty is not None else notional
        assert amount is not None
        if amount <= 0:
            raise _Refused(422, 40010001, f"{'qty' if qty is not None else 'notional'} must be > 0")
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if len(cid) > 128:
            raise _Refused(422, 40010001, "client_order_id must be no more than 128 characters")
        if cid in self._by_cid:
            raise _Refused(422, 40010001, "client_order_id must be unique")
        limit = _parse_float(body.get("limit_price"), "limit_price")
        stop = _parse_float(body.get("stop_price"), "stop_price")
        oclass = body.get("order_class") or "simple"
        if oclass not in ("simple", "bracket", "oco", "oto"):
            raise _Refused(422, 40010001, f"invalid order_class: {oclass}")
        if typ in ("limit", "stop_limit") and limit is None and oclass != "oco":
            raise _Refused(422, 40010001, "limit_price is required for limit orders")
        if typ in ("stop", "stop_limit") and stop is None:
            raise _Refused(422, 40010001, "stop_price is required for stop orders")
        ext = bool(body.get("extended_hours"))
        fractional = notional is not None or (qty is not None and abs(qty - round(qty)) > EPS)
        asset = self._asset(symbol)
        if not asset["tradable"]:
            raise _Refused(422, 40010001, f"asset {symbol} is not tradable")
        if fractional:
            if not asset["fractionable"]:
                raise _Refused(422, 40010001, "requested asset is not fractionable")
            if tif != "day":
                raise _Refused(422, 40010001, "fractional orders must be DAY orders")
            if oclass != "simple":
                raise _Refused(422, 40010001, "fractional orders must be simple orders")
        if ext and (typ != "limit" or tif != "day"):
            raise _Refused(422, 42210000, "extended hours order must be DAY limit orders")
        tp = body.get("take_profit") or {}
        sl = body.get("stop_loss") or {}
        tp_px = _parse_float(tp.get("limit_price"), "take_profit.limit_price")
        sl_px = _parse_float(sl.get("stop_price"), "stop_loss.stop_price")
        sl_lim = _parse_float(sl.get("limit_price"), "stop_loss.limit_price")
        if oclass in ("bracket", "oco"):
            if tp_px is None:
                raise _Refused(422, 42210000, f"{oclass} orders require take_profit.limit_price")
            if sl_px is None:
                raise _Refused(422, 42210000, f"{oclass} orders require stop_loss.stop_price")
            long_side = (side == "buy") != (oclass == "oco")
            if (long_side and not tp_px > sl_px) or (not long_side and not tp_px < sl_px):
                rel = ">" if long_side else "<"
                raise _Refused(
                    422, 42210000, f"take_profit.limit_price must be {rel} stop_loss.stop_price"
                )
            if oclass == "bracket":
                if ext:
                    raise _Refused(
                        422, 42210000, "extended hours is not supported for bracket orders"
                    )
                if tif not in ("day", "gtc"):
                    raise _Refused(422, 42210000, "bracket orders must be day or gtc")
                if typ in ("stop", "stop_limit") and side == "sell":
                    raise _Refused(422, 42210000, "bracket orders must be entry orders")
        elif oclass == "oto":
            if (tp_px is None) == (sl_px is None):
                raise _Refused(
                    422, 42210000, "oto orders require exactly one of take_profit or stop_loss"
                )
        elif tp or sl:
            raise _Refused(
                422, 42210000, "take_profit/stop_loss require a bracket, oco or oto order_class"
            )
        # wash trade: an open opposite-side order in the symbol (legs excluded)
        skip = replaces.id if replaces is not None else None
        for other in self._orders.values():
            if (
                other.symbol == symbol
                and other.is_open
                and other.side != side
                and other.parent is None
                and other.id != skip
                and oclass != "oco"
            ):
                raise _Refused(422, 42210000, "potential wash trade detected. use complex orders")
        pos = self._positions.get(symbol, (0.0, 0.0))[0]
        price = (
            limit if limit is not None and typ in ("limit", "stop_limit") else self.price(symbol)
        )
        want = qty if qty is not None else notional / self.price(symbol)  # type: ignore[operator]
        held = sum(
            o.remaining
            for o in self._orders.values()
            if o.symbol == symbol
            and o.is_open
            and o.id != skip
            and o.parent is None
            and o.qty is not None
            and o.side == side
        )
        if side == "sell":
            if pos > EPS:
                available = max(0.0, pos - held)
                if want > available + EPS:
                    raise _Refused(
                        403,
                        40310000,
                        f"insufficient qty available for order (requested: {_num(want)}, "
                        f"available: {_num(available)})",
                    )
            else:
                if fractional:
                    raise _Refused(403, 40310000, "fractional orders cannot be sold short")
                if not (asset["shortable"] and asset["easy_to_borrow"] and self.shorting_enabled):
                    raise _Refused(
                        403,
                        40310000,
                        f"insufficient qty available for order (requested: {_num(want)}, "
                        "available: 0)",
                    )
        elif pos < -EPS:
            available = max(0.0, -pos - held)
            if want > available + EPS:
                raise _Refused(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {_num(want)}, "
                    f"available: {_num(available)})",
                )
        opening = (side == "buy" and pos >= -EPS) or (side == "sell" and pos <= EPS)
        if opening:
            cost = notional if notional is not None else want * price
            if cost > self._buying_power() + EPS:
                raise _Refused(403, 40310000, "insufficient buying power")
        # accepted
        now = self._now()
        o = _Order(
            id=str(uuid.uuid4()),
            client_order_id=cid,
            symbol=symbol,
            side=side,
            type=typ,
            time_in_force=tif,
            qty=qty,
            notional=notional,
            limit_price=limit,
            stop_price=stop,
            order_class=oclass,
            extended_hours=ext,
            created_at=now,
            updated_at=now,
            external=external,
            replaces=replaces.id if replaces is not None else None,
        )
        self._store(o)
        exit_side = "sell" if side == "buy" else "buy"
        if oclass in ("bracket", "oto", "oco"):
            leg_status = "new" if oclass == "oco" else "held"
            if tp_px is not None and oclass != "oco":
                self._leg(o, exit_side, "limit", tp_px, None, leg_status)
            if sl_px is not None:
                ltype = "stop_limit" if sl_lim is not None else "stop"
                self._leg(
                    o, exit_side if oclass != "oco" else side, ltype, sl_lim, sl_px, leg_status
                )
            if oclass == "oco" and o.type == "limit" and o.limit_price is None:
                o.limit_price = tp_px
        snap = self._order_json(o, nested=True)
        if replaces is not None:
            replaces.status = "replaced"
            replaces.replaced_by = o.id
            replaces.replaced_at = replaces.updated_at = now
            self._event("replaced", replaces)
        self._advance(o)
        return o, snap

    def _store(self, o: _Order) -> None:
        self._orders[o.id] = o
        self._by_cid[o.client_order_id] = o.id
        self._cid_count[o.client_order_id] = self._cid_count.get(o.client_order_id, 0) + 1

    def _leg(
        self,
        parent: _Order,
        side: str,
        typ: str,
        limit: float | None,
        stop: float | None,
        status: str,
    ) -> None:
        leg = _Order(
            id=str(uuid.uuid4()),
            client_order_id=str(uuid.uuid4()),
            symbol=parent.symbol,
            side=side,
            type=typ,
            time_in_force=parent.time_in_force,
            qty=parent.qty,
            notional=None,
            limit_price=limit,
            stop_price=stop,
            order_class=parent.order_class,
            extended_hours=False,
            created_at=self._now(),
            status=status,
            parent=parent.id,
        )
        self._store(leg)
        parent.legs.append(leg.id)

    def _advance(self, o: _Order) -> None:
        if self._reject:
            reason = self._reject.pop(0)
            self.rejected_reasons[o.id] = reason
            o.failed_at = self._now()
            self._finish(o, "rejected")
            return
        o.status = "new"
        o.updated_at = self._now()
        self._event("new", o)
        for lid in o.legs:
            leg = self._orders[lid]
            if leg.status == "new":
                self._event("new", leg)
        self._try_fill(o, manual=self.fill_mode == "manual")
        for lid in o.legs:
            leg = self._orders[lid]
            if leg.is_open and leg.status != "held":
                self._try_fill(leg, manual=False)

    def _fill_price(self, o: _Order) -> float:
        return self.price(o.symbol)

    def _marketable(self, o: _Order) -> bool:
        px = self.price(o.symbol)
        if o.type in ("stop", "stop_limit") and not o.triggered:
            hit = px >= o.stop_price if o.side == "buy" else px <= o.stop_price  # type: ignore[operator]
            if not hit:
                return False
            o.triggered = True
        if o.type in ("limit", "stop_limit"):
            assert o.limit_price is not None
            return px <= o.limit_price + EPS if o.side == "buy" else px >= o.limit_price - EPS
        return True

    def _try_fill(self, o: _Order, *, manual: bool) -> None:
        if not o.is_open or o.status in ("held", "pending_cancel"):
            return
        if o.type == "market" and manual:
            return
        if self._marketable(o):
            self._fill_split(o, self.price(o.symbol))

    def _fill_split(self, o: _Order, price: float) -> None:
        total = o.remaining if o.qty is not None else None
        if total is None:  # notional: buy what the dollars buy at this price
            total = round((o.notional or 0.0) / price, 9)
            o.qty_target = total
        rng = random.Random(f"{self.seed}:{o.client_order_id}:{o.filled_qty}")
        parts = [total]
        if self.partial_fill_prob > 0 and rng.random() < self.partial_fill_prob:
            n = rng.choice((2, 3))
            whole = o.qty is not None and abs(total - round(total)) < EPS
            if whole and total >= n:
                cuts = sorted(rng.sample(range(1, round(total)), n - 1))
                edges = [0, *cuts, round(total)]
                parts = [float(b - a) for a, b in itertools.pairwise(edges)]
            elif not whole:
                w = sorted(rng.random() for _ in range(n - 1))
                edges = [0.0, *w, 1.0]
                parts = [round(total * (b - a), 9) for a, b in itertools.pairwise(edges)]
                parts[-1] = round(total - sum(parts[:-1]), 9)
        for q in parts:
            if q > EPS and o.is_open:
                self._fill(o, q, price)

    def _fill(self, o: _Order, q: float, price: float) -> None:
        if q <= EPS:
            return
        prev = o.filled_qty
        o.filled_qty = round(prev + q, 9)
        o.filled_avg_price = ((o.filled_avg_price or 0.0) * prev + price * q) / o.filled_qty
        now = self._now()
        o.updated_at = now
        target = o.qty if o.qty is not None else (o.qty_target or o.filled_qty)
        done = o.filled_qty >= target - EPS
        o.status = "filled" if done else "partially_filled"
        if done:
            o.filled_at = now
        signed = q if o.side == "buy" else -q
        pos, avg = self._positions.get(o.symbol, (0.0, 0.0))
        new = pos + signed
        if abs(new) < EPS:
            self._positions.pop(o.symbol, None)
        else:
            if pos == 0 or (pos > 0) != (new > 0):
                avg = price
            elif abs(new) > abs(pos):
                avg = (avg * abs(pos) + price * q) / abs(new)
            self._positions[o.symbol] = (new, avg)
        self.cash -= signed * price
        self._event("fill" if done else "partial_fill", o, qty=q, price=price, position_qty=new)
        if done:
            self._on_filled(o)

    def _on_filled(self, o: _Order) -> None:
        for lid in o.legs:  # the entry filled: activate the exits
            leg = self._orders[lid]
            if leg.status == "held":
                leg.status = "new"
                leg.updated_at = self._now()
                self._event("new", leg)
        if o.parent is not None:  # an exit filled: cancel its siblings
            parent = self._orders[o.parent]
            for lid in [parent.id, *parent.legs]:
                sib = self._orders[lid]
                if sib.id != o.id and sib.is_open:
                    self._finish(sib, "canceled")
        elif o.order_class == "oco":
            for lid in o.legs:
                if self._orders[lid].is_open:
                    self._finish(self._orders[lid], "canceled")
        for lid in o.legs:
            leg = self._orders[lid]
            if leg.is_open and leg.status != "held":
                self._try_fill(leg, manual=False)

    def _finish(self, o: _Order, status: str) -> None:
        now = self._now()
        o.status = status
        o.updated_at = now
        if status == "canceled":
            o.canceled_at = now
        elif status == "expired":
            o.expired_at = now
        self._event(status, o)

    def _cancel(self, o: _Order) -> None:
        if not o.is_open or (o.status == "pending_cancel" and self.cancel_mode == "pending"):
            if o.status == "pending_cancel":
                return
            raise _Refused(422, 42210000, "order is not cancelable")
        if self.cancel_mode == "pending":
            o.status = "pending_cancel"
            o.updated_at = self._now()
            self._event("pending_cancel", o)
            return
        self._finish(o, "canceled")
        for lid in o.legs:
            if self._orders[lid].is_open:
                self._finish(self._orders[lid], "canceled")

    def _cancel_all(self) -> list[dict[str, Any]]:
        out = []
        for o in sorted(self._orders.values(), key=lambda o: o.created_at):
            if o.is_open:
                try:
                    self._cancel(o)
                    out.append({"id": o.id, "status": 200, "body": None})
                except _Refused as exc:
                    body = {"code": exc.code, "message": exc.message}
                    out.append({"id": o.id, "status": exc.status, "body": body})
        return out

    def _replace(self, o: _Order, body: dict[str, Any]) -> dict[str, Any]:
        if not o.is_open or o.status in (
            "accepted",
            "pending_new",
            "pending_cancel",
            "pending_replace",
        ):
            raise _Refused(422, 42210000, f"order is not replaceable (status {o.status})")
        qty = _parse_float(body.get("qty"), "qty")
        limit = _parse_float(body.get("limit_price"), "limit_price")
        stop = _parse_float(body.get("stop_price"), "stop_price")
        tif = body.get("time_in_force") or o.time_in_force
        changed = (
            (qty is not None and abs(qty - (o.qty or 0.0)) > EPS)
            or (limit is not None and limit != o.limit_price)
            or (stop is not None and stop != o.stop_price)
            or tif != o.time_in_force
        )
        if not changed:
            raise _Refused(403, 40310000, "order parameters are not changed")
        new_body: dict[str, Any] = {
            "symbol": o.symbol,
            "side": o.side,
            "type": o.type,
            "time_in_force": tif,
            "qty": qty if qty is not None else o.remaining,
            "limit_price": limit if limit is not None else o.limit_price,
            "stop_price": stop if stop is not None else o.stop_price,
            "extended_hours": o.extended_hours,
            "client_order_id": body.get("client_order_id") or str(uuid.uuid4()),
        }
        if o.notional is not None:
            raise _Refused(422, 42210000, "notional orders cannot be replaced")
        _, snap = self._create(new_body, replaces=o)
        return snap

    def _close(self, symbol: str, q: dict[str, str]) -> dict[str, Any]:
        pos = self._positions[symbol][0]
        qty = abs(pos)
        if q.get("qty"):
            qty = min(qty, float(q["qty"]))
        elif q.get("percentage"):
            qty = round(qty * float(q["percentage"]) / 100.0, 9)
        body = {
            "symbol": symbol,
            "side": "sell" if pos > 0 else "buy",
            "type": "market",
            "time_in_force": "day",
            "qty": _num(qty),
        }
        return self._create(body)[1]

    # ------------------------------------------------------------------ stream

    def _event(self, event: str, o: _Order, **extra: Any) -> None:
        """Broadcast a trade_updates event (called with the lock held, so events stay in order)."""
        data: dict[str, Any] = {
            "event": event,
            "timestamp": _iso(o.updated_at or self._now()),
            "order": self._order_json(o, nested=False),
        }
        if event in ("fill", "partial_fill"):
            data["execution_id"] = str(uuid.uuid4())
            data["price"] = _num(extra["price"])
            data["qty"] = _num(extra["qty"])
            data["position_qty"] = _num(extra["position_qty"])
        self.events_sent.append(data)
        times = self.replay_fills if event in ("fill", "partial_fill") else 1
        raw = json.dumps({"stream": "trade_updates", "data": data}).encode()
        if self._loop is not None:
            for _ in range(max(1, times)):
                self._loop.call_soon_threadsafe(self._broadcast, raw)

    def _broadcast(self, raw: bytes) -> None:
        if self._silent:
            return
        for c in self._conns:
            if c.listening:
                c.queue.put_nowait(raw)

    async def _sender(self, c: _Conn) -> None:
        while True:
            raw = await c.queue.get()
            if raw is None:
                return
            try:
                await c.ws.send_bytes(raw)
            except (ConnectionError, RuntimeError):
                return

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        full = self.max_streams is not None and len(self._conns) >= self.max_streams
        if full and self.stream_refusal == "406":
            self.stream_refused += 1
            self._log("GET", "/stream", 406)
            return web.Response(status=406, text="connection limit exceeded")
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self._log("GET", "/stream", 101)
        if full:
            self.stream_refused += 1
            await ws.close(code=1008, message=b"connection limit exceeded")
            return ws
        c = _Conn(ws, request, asyncio.Queue())
        self._conns.append(c)
        self.stream_connections += 1
        sender = asyncio.get_running_loop().create_task(self._sender(c))

        def reply(msg: dict[str, Any]) -> None:
            c.queue.put_nowait(json.dumps(msg).encode())

        try:
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    if not self._silent:
                        await ws.pong(msg.data)
                    continue
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    m = json.loads(msg.data)
                except ValueError:
                    reply({"stream": "error", "data": {"error_message": "invalid syntax"}})
                    continue
                action = m.get("action")
                data = m.get("data") or {}
                if action in ("authenticate", "auth"):
                    ok = data.get("key_id") == KEY_ID and data.get("secret_key") == SECRET
                    c.authorized = ok
                    status = "authorized" if ok else "unauthorized"
                    reply(
                        {
                            "stream": "authorization",
                            "data": {"status": status, "action": "authenticate"},
                        }
                    )
                    if not ok:
                        c.queue.put_nowait(None)
                        await sender
                        await ws.close(code=1008, message=b"unauthorized")
                        break
                elif action == "listen":
                    if not c.authorized:
                        reply(
                            {
                                "stream": "authorization",
                                "data": {"status": "unauthorized", "action": "listen"},
                            }
                        )
                        continue
                    streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                    c.listening = bool(streams)
                    reply({"stream": "listening", "data": {"streams": streams}})
                else:
                    reply(
                        {"stream": "error", "data": {"error_message": f"unknown action {action!r}"}}
                    )
        finally:
            if c in self._conns:
                self._conns.remove(c)
            c.queue.put_nowait(None)
            sender.cancel()
        return ws


def _truthy(v: str | None) -> bool:
    return str(v).lower() in ("true", "1", "yes")


def _intent(side: str, pos: float) -> str:
    if side == "buy":
        return "buy_to_close" if pos < 0 else "buy_to_open"
    return "sell_to_close" if pos > 0 else "sell_to_open"
