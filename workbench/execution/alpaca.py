"""Alpaca broker: orders over REST (our HTTP layer, alpaca-py's models), fills from trade_updates.

alpaca-py supplies the request models (``MarketOrderRequest``, ``GetOrdersRequest``,
``ReplaceOrderRequest`` ... and their client-side checks), the base URL, API version and auth
headers of its ``TradingClient``, and the reconnect backoff of its stream. Requests are sent here,
not by the SDK: its ``RESTClient`` re-POSTs an order on 429/504 and sends no timeout
(``trading_ops.md`` section 2.13). Our rules:

* every request goes through a :class:`~workbench.data.ratelimit.RateLimiter` (default 180 per
  minute, the trading API's budget with a margin) and has a timeout, and every call a total
  deadline (``alpaca.deadline_seconds``, 25 s by default; the data side's
  :class:`~workbench.data.sources._alpaca_http.Deadline`): attempts, their timeouts and the waits
  between them, and for a submit the lookups resolving it, all fit in it, so an endpoint that
  accepts connections and never answers fails within 30 s with an error naming it;
* reads and cancels are retried with backoff on 429 (``Retry-After`` honoured), 5xx, timeouts and
  dropped connections, a bounded number of times;
* ``POST /v2/orders`` is sent **once**. A 4xx is a refusal (:class:`OrderRefused` with Alpaca's
  code and message), except ``client_order_id must be unique``, which means the order exists: it
  is looked up and returned. A timeout, dropped connection, 429 or 5xx is resolved in-process by
  looking the order up by its client order id (bounded, with backoff); only after a 429, which
  proves the order was not accepted, and a definite 404 is it sent again, once, with the same
  client order id. Otherwise (the deadline included) :class:`OutcomeUnknown`. Never a new
  client order id.

Payloads are parsed tolerantly (raw JSON, not alpaca-py's strict models): unknown statuses and
events are kept as ``raw_status``/``event``, missing optional fields are fine, numbers may be
strings or numbers, a short position's ``qty`` may be signed or not.

The trade_updates stream is a hint; REST is the truth. It runs in a background thread (our own
``websockets`` client: alpaca-py's ``TradingStream`` exposes no connection state, hides pings,
needs up to 5 s to stop and uses the deprecated ``websockets.legacy`` API). A watchdog pings the
server and marks the stream ``silent`` when nothing (message or pong) has arrived for
``watchdog_seconds`` while orders are open, and reconnects when the silence lasts three times as
long. While the stream is not ``up``, :meth:`AlpacaBroker.events` also polls the open orders and
every known non-terminal order at most every ``poll_seconds`` (and once after every reconnect),
and reports changes as synthetic events. A stream that cannot connect within the deadline at the
start gives up (``stream_state == "off"``, :attr:`AlpacaBroker.stream_error` names the endpoint);
polling carries on. Fills are reported as the change in the cumulative
``filled_qty``, so a replayed event (same ``execution_id``) or a fill already reported by polling
is dropped, and the reported fill quantities always add up to ``filled_qty``.

Paper is the default. Live trading needs both the ``--live`` flag (``live=True``) and
``WB_LIVE_TRADING=yes`` in the environment (:func:`resolve_trading_endpoint`). The keys come
only from ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY`` and are never logged, raised or shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from workbench.data.ratelimit import RateLimiter, process_limiter
from workbench.data.sources._alpaca_client import (
    KEY_ENV,
    SECRET_ENV,
    Keys,
    base_url,
    public_url,
    resolve_keys,
    trading_client,
)
from workbench.data.sources._alpaca_http import (
    DEFAULT_DEADLINE,
    MIN_ATTEMPT,
    Deadline,
    RetryPolicy,
    deadline_message,
    rate_limit_wait,
)
from workbench.errors import ConfigError, CredentialsError
from workbench.execution.broker import (
    BrokerError,
    NotFound,
    OrderRefused,
    OutcomeUnknown,
    Unreachable,
    register_broker,
)
from workbench.execution.orders import (
    Account,
    BrokerOrder,
    Capabilities,
    OrderClass,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Side,
    TimeInForce,
    parse_status,
)

log = logging.getLogger("workbench.execution.alpaca")
# websockets logs every frame at DEBUG, the authenticate frame (with the secret) included: give it
# a logger of its own that never emits below WARNING, whatever the root level is.
_WS_LOG = logging.getLogger("workbench.execution.alpaca.websocket")
_WS_LOG.setLevel(logging.WARNING)

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
LIVE_HOST = "api.alpaca.markets"
PAPER_HOST = "paper-api.alpaca.markets"
LIVE_ENV = "WB_LIVE_TRADING"
DEFAULT_RATE_PER_MINUTE = 180
STREAM_STATES = ("connecting", "up", "down", "silent", "off")
_PAGE = 500
_EPS = 1e-9
_SHOWN = 200


# --------------------------------------------------------------------------- endpoint


def resolve_trading_endpoint(
    trading_url: str, *, live: bool, environ: Mapping[str, str]
) -> tuple[str, bool]:
    """Return ``(url, is_live)`` for the trading API; live needs two explicit opt-ins.

    Live trading (real money) needs BOTH ``live=True`` (the ``--live`` flag) AND
    ``WB_LIVE_TRADING=yes`` in the environment. Asking for live without both, or pointing
    ``trading_url`` at the live host ``https://api.alpaca.markets`` without both, raises
    :class:`ConfigError`. With both opt-ins and the default paper URL, the live URL is used.
    """
    url = base_url(trading_url, "trading_url")
    host = (urlsplit(url).hostname or "").lower()
    env_yes = str(environ.get(LIVE_ENV, "")).strip() == "yes"
    points_live = host == LIVE_HOST
    if not (live or points_live):
        return url, False
    if not (live and env_yes):
        why = (
            f"alpaca.trading_url={public_url(url)!r} is the live (real money) endpoint"
            if points_live
            else "live trading was requested"
        )
        got = f"--live {'given' if live else 'not given'}, {LIVE_ENV}={environ.get(LIVE_ENV, '')!r}"
        raise ConfigError(
            f"{why}, but live trading needs both opt-ins: the --live flag AND "
            f"{LIVE_ENV}=yes in the environment (got: {got}). Fix: pass --live and export "
            f"{LIVE_ENV}=yes to trade real money, or trade paper at {PAPER_URL} (the default)."
        )
    if host == PAPER_HOST:
        url = LIVE_URL
    return url, True


def stream_url_for(trading_url: str) -> str:
    """The trade_updates websocket URL of a trading REST URL (http->ws, https->wss, ``/stream``)."""
    parts = urlsplit(trading_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/stream", "", ""))


# --------------------------------------------------------------------------- tolerant parsing

_E = TypeVar("_E", bound=Enum)


def _f(v: Any) -> float | None:
    if v is None or v == "" or isinstance(v, bool):
        return None
    try:
        out = float(v)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _s(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def _enum(cls: type[_E], v: Any, default: _E) -> _E:
    try:
        return cls(str(getattr(v, "value", v)).lower())
    except ValueError:
        return default


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _ts(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if not v or not isinstance(v, str):
        return None
    s = _FRACTION.sub(r"\1", v.strip().replace("Z", "+00:00"))
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_order(d: Mapping[str, Any]) -> BrokerOrder:
    """An Alpaca order JSON as a :class:`BrokerOrder` (tolerant: unknown words kept raw)."""
    raw_status = str(d.get("status") or "")
    legs = tuple(parse_order(x) for x in (d.get("legs") or ()) if isinstance(x, Mapping))
    return BrokerOrder(
        id=str(d.get("id") or ""),
        client_order_id=str(d.get("client_order_id") or ""),
        symbol=str(d.get("symbol") or ""),
        side=_enum(Side, d.get("side"), Side.BUY),
        qty=_f(d.get("qty")),
        filled_qty=_f(d.get("filled_qty")) or 0.0,
        filled_avg_price=_f(d.get("filled_avg_price")),
        status=parse_status(raw_status),
        type=_enum(OrderType, d.get("type") or d.get("order_type"), OrderType.MARKET),
        time_in_force=_enum(TimeInForce, d.get("time_in_force"), TimeInForce.DAY),
        limit_price=_f(d.get("limit_price")),
        stop_price=_f(d.get("stop_price")),
        order_class=_enum(OrderClass, d.get("order_class") or "simple", OrderClass.SIMPLE),
        notional=_f(d.get("notional")),
        created_at=_ts(d.get("created_at") or d.get("submitted_at")),
        updated_at=_ts(d.get("updated_at")),
        replaced_by=_s(d.get("replaced_by")),
        replaces=_s(d.get("replaces")),
        legs=legs,
        raw_status=raw_status,
    )


def parse_event(data: Mapping[str, Any]) -> OrderEvent:
    """A ``trade_updates`` ``data`` object as an :class:`OrderEvent` (unknown events kept)."""
    order = parse_order(data.get("order") or {})
    return OrderEvent(
        event=str(data.get("event") or ""),
        order=order,
        ts=_ts(data.get("timestamp")) or order.updated_at or datetime.now(UTC),
        execution_id=_s(data.get("execution_id")),
        qty=_f(data.get("qty")),
        price=_f(data.get("price")),
        position_qty=_f(data.get("position_qty")),
    )


def parse_position(d: Mapping[str, Any]) -> Position:
    """An Alpaca position as a signed :class:`Position` (short: negative, whatever the wire sign)."""
    q = _f(d.get("qty")) or 0.0
    side = str(d.get("side") or "").lower()
    if side == "short":
        q = -abs(q)
    elif side == "long":
        q = abs(q)
    return Position(
        symbol=str(d.get("symbol") or ""),
        qty=q,
        avg_entry_price=_f(d.get("avg_entry_price")) or 0.0,
        market_value=_f(d.get("market_value")),
    )


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def code(self) -> Any:
        return self.body.get("code") if isinstance(self.body, dict) else None

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and self.body.get("message") is not None:
            text = str(self.body["message"])
        elif isinstance(self.body, str):
            text = self.body
        else:
            text = ""
        text = " ".join(text.split())
        return text[:_SHOWN] + ("..." if len(text) > _SHOWN else "")


class _NoAnswer(Exception):
    """No usable answer: ``kind`` is ``429``, ``5xx``, ``timeout``, ``dropped`` or ``malformed``.

    ``attempts`` is how many requests were sent, ``out_of_time`` whether the call's deadline
    stopped them (rather than the retry count or a request sent only once).
    """

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after
        self.attempts = 1
        self.out_of_time = False

    @property
    def server_failing(self) -> bool:
        """The server answered, only not usefully (429 or 5xx): it is up, not dead."""
        return self.kind in ("429", "5xx")


def _wire(v: Any) -> Any:
    """Request values as Alpaca's docs send them: enums by value, numbers as decimal strings."""
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, bool):
        return v
    if isinstance(v, float | int):
        s = f"{float(v):.9f}".rstrip("0").rstrip(".")
        return s or "0"
    if isinstance(v, dict):
        return {k: _wire(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_wire(x) for x in v]
    return v


def _query(fields: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, Enum):
            v = v.value
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, list | tuple):
            out[k] = ",".join(str(getattr(x, "value", x)) for x in v)
        else:
            out[k] = str(v)
    return out


class _TradingHttp:
    """Rate-limited requests to an alpaca-py client's base URL, with timeouts and bounded retries.

    Never logs or raises with headers (they carry the keys).
    """

    def __init__(
        self,
        client: Any,
        limiter: RateLimiter,
        policy: RetryPolicy,
        session: requests.Session | None = None,
    ) -> None:
        self._client = client
        self.limiter = limiter
        self.policy = policy
        self.session = session or requests.Session()
        self.stats: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"_TradingHttp({self.limiter!r}, retries={self.policy.max_retries})"

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        retry: bool = True,
        deadline: Deadline | None = None,
    ) -> _Reply:
        """Send ``method /v2{path}``; return any answer that is not 429/5xx.

        Every attempt's timeout and every wait between attempts is cut to ``deadline`` (default:
        the policy's, from now); no attempt starts after it. Raises :class:`_NoAnswer` when there
        is no answer (after the retries when ``retry``, or when the deadline has passed).
        """
        dl = deadline or self.policy.start()
        shown = f"{method} /{self._client._api_version}{path}"
        attempts = self.policy.max_retries + 1 if retry else 1
        last: _NoAnswer | None = None
        out_of_time = False
        for n in range(attempts):
            if dl.expired:
                out_of_time = True
                break
            try:
                return self._once(method, path, params, json_body, dl)
            except _NoAnswer as exc:
                last = exc
                last.attempts = n + 1
            if n + 1 >= attempts:
                break
            if last.retry_after is not None:
                wait = min(last.retry_after, self.policy.rate_limit_wait_max)
            else:
                cap = min(self.policy.backoff_max, self.policy.backoff_initial * 2**n)
                wait = random.uniform(0, cap)
            if dl.left() - wait < MIN_ATTEMPT:  # no attempt would fit after the wait
                out_of_time = True
                break
            if last.kind == "429":
                self.limiter.pause_for(wait)
            log.warning("%s: %s; retry %d/%d in %.2fs", shown, last.reason, n + 1,
                        attempts - 1, wait)  # fmt: skip
            self.policy.sleep(wait)
        if last is None:
            last = _NoAnswer("timeout", "no time left before the deadline")
            last.attempts = 0
        last.out_of_time = out_of_time or dl.expired
        raise last

    def endpoint(self, path: str) -> str:
        """``scheme://host[:port]/v2{path}``, as shown in messages."""
        return f"{public_url(self._client._base_url)}/{self._client._api_version}{path}"

    def _once(self, method: str, path: str, params: Any, json_body: Any, dl: Deadline) -> _Reply:
        url = f"{self._client._base_url}/{self._client._api_version}{path}"
        self.limiter.acquire()
        self._count("requests")
        timeout = dl.cap(self.policy.timeout)
        try:
            resp = self.session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers=self._client._get_default_headers(),
                timeout=timeout,
                allow_redirects=False,
            )
        except requests.exceptions.Timeout:
            self._count("timeout")
            raise _NoAnswer("timeout", f"no answer within {timeout:.3g}s (timeout)") from None
        except requests.exceptions.RequestException as exc:
            self._count("dropped")
            raise _NoAnswer("dropped", f"connection failed ({type(exc).__name__})") from None
        status = resp.status_code
        try:
            body: Any = resp.json() if resp.content else None
        except ValueError:
            body = resp.text
        reply = _Reply(status, body, resp.headers)
        if status == 429:
            self._count("429")
            raise _NoAnswer(
                "429", "HTTP 429 rate limited", rate_limit_wait(resp.headers, time.time())
            )
        if status >= 500:
            self._count("5xx")
            raise _NoAnswer("5xx", f"HTTP {status} ({reply.message or 'no message'})")
        if 200 <= status < 300 and status != 204 and resp.content and isinstance(body, str):
            self._count("malformed")
            raise _NoAnswer("malformed", f"HTTP {status} with a body that is not JSON")
        return reply


# --------------------------------------------------------------------------- stream


class _AuthRefused(Exception):
    pass


class _TradeStream:
    """The trade_updates websocket in a background thread: connect, authenticate, listen, watch.

    ``on_data`` gets each trade_updates ``data`` dict; ``on_up`` is called on every (re)connect
    and when a silence ends (the caller polls REST then); ``has_open`` says whether silence is
    suspicious (orders are open).

    Until its first connection the stream tries for ``connect_deadline`` seconds in total (each
    attempt's connect and handshake cut to what is left); then it gives up: ``state`` is
    ``off`` and ``error`` says which endpoint to check (the broker polls REST instead). Once it
    has been up it reconnects for as long as it runs (each attempt bounded by ``open_timeout``).
    """

    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        on_data: Callable[[dict[str, Any]], None],
        on_up: Callable[[], None],
        has_open: Callable[[], bool],
        watchdog_seconds: float,
        ping_interval: float,
        reconnect_min: float,
        reconnect_max: float,
        open_timeout: float,
        connect_deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.url = url
        self._keys = keys
        self._on_data = on_data
        self._on_up = on_up
        self._has_open = has_open
        self.watchdog_seconds = watchdog_seconds
        self.ping_interval = ping_interval
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.open_timeout = open_timeout
        self.connect_deadline = connect_deadline
        self.error: str | None = None  # why it gave up before a first connection
        self.state = "connecting"
        self.connects = 0  # successful (authorized and listening) connections
        self.last_message = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alpaca-trade-updates", daemon=True)

    def __repr__(self) -> str:
        return f"_TradeStream({public_url(self.url)!r}, state={self.state!r})"

    def start(self) -> None:
        self._thread.start()
        self._started.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.state = "off"

    def _set(self, state: str) -> None:
        if state != self.state:
            log.info("trade_updates stream %s -> %s", self.state, state)
            self.state = state

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # never let the thread die with a traceback
            log.error("trade_updates stream thread stopped: %s", type(exc).__name__)
        finally:
            self.state = "off"
            self._started.set()

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))

    async def _main(self) -> None:
        from alpaca.common.utils import reconnect_delay
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        self._was_up = False

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopping:
            return
        self._started.set()
        failures = attempts = 0
        last = ""
        first = Deadline(time.monotonic() + self.connect_deadline, self.connect_deadline)
        while not self._stop.is_set():
            self._set("connecting")
            budget = first.cap(self.open_timeout) if self.connects == 0 else self.open_timeout
            attempts += 1
            task = asyncio.ensure_future(self._connect_once(connect, budget))
            stopper = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not task.done():  # stop requested: abandon the connection attempt or session
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                break
            refused = False
            try:
                task.result()
            except InvalidStatus as exc:
                code = getattr(getattr(exc, "response", None), "status_code", "?")
                last = f"HTTP {code} on the upgrade"
                log.warning("trade_updates stream refused with HTTP %s (only one stream "
                            "connection per account; another may still be open)", code)  # fmt: skip
            except _AuthRefused as exc:
                last, refused = str(exc), True
                log.error("trade_updates stream: %s. Fix: check %s / %s (paper and live keys "
                          "differ)", exc, KEY_ENV, SECRET_ENV)  # fmt: skip
            except TimeoutError:
                last = f"no answer within {budget:.3g}s (timeout)"
                log.warning("trade_updates stream: %s", last)
            except (OSError, WebSocketException, ValueError) as exc:
                last = f"connection failed ({type(exc).__name__})"
                log.warning("trade_updates stream lost: %s", type(exc).__name__)
            else:
                last = "the server closed the connection"
            if self._stop.is_set():
                break
            self._set("down")
            failures = 1 if self._was_up else failures + 1
            delay = reconnect_delay(failures, self.reconnect_min, self.reconnect_max)
            if self.connects == 0 and first.left() - delay < MIN_ATTEMPT:
                self._give_up(attempts, last, refused)  # no attempt would fit after the wait
                break
            await self._sleep(delay)
        self._set("off")

    def _give_up(self, attempts: int, last: str, refused: bool) -> None:
        what = "trade_updates stream (the broker polls REST for order updates instead)"
        msg = deadline_message(
            what, public_url(self.url), self.connect_deadline, attempts, last,
            "alpaca.trading_stream_url, else alpaca.trading_url",
        )  # fmt: skip
        if refused:
            msg += f" The server refused the keys: check {KEY_ENV} / {SECRET_ENV}."
        self.error = msg
        log.error("%s", msg)

    async def _connect_once(self, connect: Any, budget: float) -> None:
        host = (urlsplit(self.url).hostname or "").lower()
        proxy: Any = None if host in ("127.0.0.1", "localhost", "::1") else True
        self._was_up = False
        due = time.monotonic() + budget  # connect and handshake together
        async with connect(
            self.url,
            open_timeout=budget,
            ping_interval=None,  # our own pings: the pongs feed the watchdog
            close_timeout=1.0,
            max_queue=1024,
            logger=_WS_LOG,
            proxy=proxy,
        ) as ws:
            await self._handshake(ws, due)
            self._was_up = True
            self.connects += 1
            self.last_message = time.monotonic()
            self._set("up")
            self._on_up()
            await self._session(ws)

    async def _recv(self, ws: Any, timeout: float) -> Any:
        return json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))

    async def _handshake(self, ws: Any, deadline: float) -> None:
        auth = {
            "action": "authenticate",
            "data": {
                "key_id": self._keys.key_id.get_secret_value(),
                "secret_key": self._keys.secret.get_secret_value(),
            },
        }
        await ws.send(json.dumps(auth))
        while True:
            msg = await self._recv(ws, max(0.01, deadline - time.monotonic()))
            if isinstance(msg, dict) and msg.get("stream") == "authorization":
                status = (msg.get("data") or {}).get("status")
                if status != "authorized":
                    raise _AuthRefused(f"authentication refused (status {status!r})")
                break
        await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        while True:
            msg = await self._recv(ws, max(0.01, deadline - time.monotonic()))
            if not isinstance(msg, dict):
                continue
            if msg.get("stream") == "listening":
                streams = (msg.get("data") or {}).get("streams") or []
                if "trade_updates" not in streams:
                    raise _AuthRefused(f"the server did not listen to trade_updates ({streams})")
                return
            if msg.get("stream") == "trade_updates":
                self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, dict) and msg.get("stream") == "trade_updates":
            data = msg.get("data")
            if isinstance(data, dict):
                try:
                    self._on_data(data)
                except Exception:  # a bad payload must not kill the stream
                    log.exception("trade_updates: could not handle an event")

    async def _session(self, ws: Any) -> None:
        assert self._stop is not None
        tick = max(0.01, min(0.1, self.ping_interval / 2, self.watchdog_seconds / 4))
        next_ping = time.monotonic() + self.ping_interval
        pongs: list[Any] = []  # outstanding ping waiters (a pong answers every earlier ping)
        while not self._stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=tick)
            except TimeoutError:
                raw = None
            now = time.monotonic()
            if raw is not None:
                self.last_message = now
                try:
                    msg = json.loads(raw)
                except ValueError:
                    log.warning("trade_updates: a frame that is not JSON (%d bytes)", len(raw))
                else:
                    self._dispatch(msg)
            for p in [p for p in pongs if p.done()]:
                pongs.remove(p)
                if not p.cancelled() and p.exception() is None:
                    self.last_message = max(self.last_message, now)
            if now >= next_ping:
                pongs.append(await ws.ping())
                del pongs[:-100]  # bounded while the server stays silent
                next_ping = now + self.ping_interval
            quiet = now - self.last_message
            suspicious = quiet > self.watchdog_seconds and self._has_open()
            if suspicious:
                if self.state == "up":
                    log.warning("trade_updates stream silent for %.1fs with orders open; "
                                "polling REST", quiet)  # fmt: skip
                    self._set("silent")
                if quiet > 3 * self.watchdog_seconds:
                    log.warning("trade_updates stream silent for %.1fs: reconnecting", quiet)
                    return
            elif self.state == "silent":
                self._set("up")
                self._on_up()


# --------------------------------------------------------------------------- the broker


@dataclass(slots=True)
class _Seen:
    """What events have told the consumer about one order."""

    status: OrderStatus | None
    filled: float
    avg: float | None


_FILL_STATUS = {OrderStatus.FILLED: "fill", OrderStatus.PARTIALLY_FILLED: "partial_fill"}
_TERMINAL_STATUSES = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REPLACED,
        OrderStatus.REJECTED,
    }
)


def _dup_cid(reply: _Reply) -> bool:
    m = reply.message.lower()
    return ("client_order_id" in m or "client order id" in m) and "unique" in m


class AlpacaBroker:
    """The :class:`~workbench.execution.broker.Broker` for Alpaca (paper by default).

    Parameters
    ----------
    trading_url : str
        Trading REST base URL (no version path). Paper by default; see
        :func:`resolve_trading_endpoint` for live.
    live : bool
        The ``--live`` opt-in (also needs ``WB_LIVE_TRADING=yes`` in ``environ``).
    environ : mapping, optional
        Where the opt-in and the keys (``APCA_API_KEY_ID``/``APCA_API_SECRET_KEY``) are read
        (default :data:`os.environ`).
    stream : bool
        Run the trade_updates stream (False: REST polling only, ``stream_state == "off"``).
    stream_url : str, optional
        Websocket URL (default: derived from ``trading_url``).
    timeout, max_retries : float, int
        Per-request timeout (seconds) and retries of reads and cancels.
    deadline : float
        Seconds one call may take in total (attempts, their timeouts, the waits between them, and
        for a submit or replace the lookups that resolve a missing answer); also the longest the
        stream tries before its first connection. 25 s by default: a dead endpoint fails within
        30 s, naming it.
    retry : RetryPolicy, optional
        Full retry policy (overrides ``timeout``/``max_retries``/``deadline``).
    limiter : RateLimiter, optional
        Default: the process-wide ``alpaca-trading`` limiter at ``rate_limit_per_minute``.
    watchdog_seconds, poll_seconds : float
        Silence that marks the stream ``silent`` (while orders are open); the least time between
        two REST polls while the stream is not up.
    ping_interval : float, optional
        Seconds between websocket pings (default ``watchdog_seconds / 3``).
    reconnect_min, reconnect_max : float
        Reconnect backoff bounds (exponential with jitter; Alpaca keeps a dead stream connection
        for a while and refuses a second one, so do not go below ~1 s against the real server).
    resolve_lookups, resolve_wait : int, float
        Lookups by client order id after an ambiguous submit, and the first wait between them
        (doubling).
    """

    def __init__(
        self,
        trading_url: str = PAPER_URL,
        *,
        live: bool = False,
        environ: Mapping[str, str] | None = None,
        stream: bool = True,
        stream_url: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 6,
        deadline: float = DEFAULT_DEADLINE,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        rate_limit_per_minute: int = DEFAULT_RATE_PER_MINUTE,
        watchdog_seconds: float = 30.0,
        poll_seconds: float = 5.0,
        ping_interval: float | None = None,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        resolve_lookups: int = 4,
        resolve_wait: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        url, is_live = resolve_trading_endpoint(trading_url, live=live, environ=env)
        self.url = url
        self.live = is_live
        self.name = "alpaca-live" if is_live else "alpaca-paper"
        self.capabilities = Capabilities(
            order_types=frozenset(
                {OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT}
            ),
            time_in_force=frozenset(
                {
                    TimeInForce.DAY,
                    TimeInForce.GTC,
                    TimeInForce.IOC,
                    TimeInForce.OPG,
                    TimeInForce.CLS,
                }
            ),
            order_classes=frozenset(OrderClass),
            fractional=True,
            short=True,
            extended_hours=True,
            notional=True,
        )
        keys = resolve_keys(env.get(KEY_ENV) or None, env.get(SECRET_ENV) or None)
        self._keys = keys
        policy = retry or RetryPolicy(max_retries=max_retries, timeout=timeout, deadline=deadline)
        self.policy = policy
        self.limiter = limiter or process_limiter("alpaca-trading", rate_limit_per_minute, 60.0)
        self._http = _TradingHttp(trading_client(keys, url), self.limiter, policy, session)
        self.watchdog_seconds = float(watchdog_seconds)
        self.poll_seconds = float(poll_seconds)
        self.resolve_lookups = max(1, int(resolve_lookups))
        self.resolve_wait = float(resolve_wait)
        self._lock = threading.RLock()
        self._known: dict[str, BrokerOrder] = {}  # latest REST/stream view by broker id
        self._seen: dict[str, _Seen] = {}  # what events reported, by broker id
        self._exec_ids: set[str] = set()
        self._out: deque[OrderEvent] = deque()
        self._last_poll = float("-inf")
        self._force_poll = False
        self.dropped_replays = 0
        self._closed = False
        self.stream_url = stream_url or stream_url_for(url)
        self._stream: _TradeStream | None = None
        if stream:
            self._stream = _TradeStream(
                self.stream_url,
                keys,
                on_data=self._on_stream_data,
                on_up=self._on_stream_up,
                has_open=self._has_open,
                watchdog_seconds=self.watchdog_seconds,
                ping_interval=ping_interval or max(0.05, self.watchdog_seconds / 3),
                reconnect_min=reconnect_min,
                reconnect_max=reconnect_max,
                open_timeout=policy.timeout,
                connect_deadline=policy.deadline,
            )
            self._stream.start()

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        *,
        live: bool = False,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> AlpacaBroker:
        """Build from ``cfg.alpaca`` (trading_url, timeout_seconds, deadline_seconds, max_retries,
        trading_stream_url) and ``cfg.execution.policy.requests_per_minute``; ``overrides`` win."""
        a = cfg.alpaca
        kw: dict[str, Any] = {
            "trading_url": a.trading_url,
            "live": live,
            "environ": os.environ if environ is None else environ,
            "stream_url": getattr(a, "trading_stream_url", None),
            "timeout": a.timeout_seconds,
            "deadline": a.deadline_seconds,
            "max_retries": a.max_retries,
        }
        policy = getattr(getattr(cfg, "execution", None), "policy", None)
        per_minute = getattr(policy, "requests_per_minute", None)
        if per_minute:
            kw["rate_limit_per_minute"] = int(per_minute)
        kw.update(overrides)
        return cls(**kw)

    def __repr__(self) -> str:
        return (
            f"AlpacaBroker({public_url(self.url)!r}, {'LIVE' if self.live else 'paper'}, "
            f"stream={self.stream_state!r})"
        )

    def __enter__(self) -> AlpacaBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    @property
    def endpoint(self) -> str:
        return public_url(self.url)

    @property
    def stream_state(self) -> str:
        """``connecting``, ``up``, ``down``, ``silent`` or ``off``."""
        return "off" if self._stream is None else self._stream.state

    @property
    def stream_error(self) -> str | None:
        """Why the stream gave up (no first connection within the deadline), else None.

        Orders and fills go on over REST (polled while the stream is not up)."""
        return None if self._stream is None else self._stream.error

    def wait_stream(self, timeout: float = 10.0) -> bool:
        """Block until the stream is up (LEAN gates orders on it); False on timeout, no stream or
        a stream that gave up (:attr:`stream_error` says why)."""
        deadline = time.monotonic() + timeout
        while self._stream is not None and time.monotonic() < deadline:
            if self._stream.state == "up":
                return True
            if self._stream.error is not None:
                return False
            time.sleep(0.01)
        return self._stream is not None and self._stream.state == "up"

    def close(self) -> None:
        """Stop the stream thread and close the HTTP session."""
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            self._stream.stop()
        self._http.session.close()

    # ------------------------------------------------------------------ requests

    def _order_payload(self, req: OrderRequest) -> dict[str, Any]:
        """The POST body, built and checked by alpaca-py's request models."""
        from alpaca.trading.requests import (
            LimitOrderRequest,
            MarketOrderRequest,
            StopLimitOrderRequest,
            StopLossRequest,
            StopOrderRequest,
            TakeProfitRequest,
        )

        kw: dict[str, Any] = {
            "symbol": req.symbol,
            "qty": req.qty,
            "notional": req.notional,
            "side": req.side.value,
            "time_in_force": req.time_in_force.value,
            "client_order_id": req.client_order_id,
            "extended_hours": True if req.extended_hours else None,
        }
        if req.order_class is not OrderClass.SIMPLE:
            kw["order_class"] = req.order_class.value
        if req.take_profit is not None and req.take_profit.limit_price is not None:
            kw["take_profit"] = TakeProfitRequest(limit_price=req.take_profit.limit_price)
        if req.stop_loss is not None and req.stop_loss.stop_price is not None:
            kw["stop_loss"] = StopLossRequest(
                stop_price=req.stop_loss.stop_price, limit_price=req.stop_loss.limit_price
            )
        model: Any
        try:
            if req.type is OrderType.MARKET:
                model = MarketOrderRequest(**kw)
            elif req.type is OrderType.LIMIT:
                model = LimitOrderRequest(**kw, limit_price=req.limit_price)
            elif req.type is OrderType.STOP:
                model = StopOrderRequest(**kw, stop_price=req.stop_price)
            else:
                model = StopLimitOrderRequest(
                    **kw, stop_price=req.stop_price, limit_price=req.limit_price
                )
        except ValueError as exc:  # pydantic's client-side checks
            first = str(exc).splitlines()
            raise OrderRefused(
                f"order {req.client_order_id} refused before sending by alpaca-py's checks: "
                f"{' '.join(first[:3])}"
            ) from None
        return _wire(model.to_request_fields())

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        retry: bool = True,
        deadline: Deadline | None = None,
    ) -> _Reply:
        """A read or cancel: transport failures after the retries raise :class:`Unreachable`."""
        try:
            reply = self._http.request(
                method, path, params=params, json_body=json_body, retry=retry, deadline=deadline
            )
        except _NoAnswer as exc:
            raise Unreachable(self._no_answer(what, f"{method} {path}", exc)) from None
        if reply.status == 401:
            raise CredentialsError(
                f"{what}: HTTP 401, Alpaca rejected the credentials ({reply.message}). Fix: check "
                f"{KEY_ENV} / {SECRET_ENV} (paper and live keys differ)."
            )
        return reply

    def _no_answer(self, what: str, request: str, exc: _NoAnswer) -> str:
        """Why ``request`` (``"GET /orders"``) got no usable answer, naming the endpoint and the fix.

        A server that answered 429/5xx until the retries ran out is up but failing; anything else
        (no answer before the deadline, refused or dropped connections) is an endpoint to check.
        """
        method, path = request.split(" ", 1)
        endpoint = self._http.endpoint(path)
        if exc.server_failing and not exc.out_of_time:
            return (
                f"{what}: Alpaca at {endpoint} did not answer usefully ({exc.reason}) after "
                f"{exc.attempts} attempt(s). Fix: the server is up but failing; check "
                "https://status.alpaca.markets, or raise alpaca.max_retries."
            )
        deadline = self.policy.deadline if exc.out_of_time else None
        return deadline_message(
            f"{what} ({method})", endpoint, deadline, exc.attempts, exc.reason, "alpaca.trading_url"
        )

    def _refusal(self, what: str, reply: _Reply) -> str:
        code = f", code {reply.code}" if reply.code is not None else ""
        return (
            f"{what}: Alpaca answered HTTP {reply.status}{code}: {reply.message or '(no message)'}"
        )

    def _lookup_cid(
        self, cid: str, *, retry: bool = True, deadline: Deadline | None = None
    ) -> BrokerOrder | None:
        reply = self._http.request(
            "GET",
            "/orders:by_client_order_id",
            params={"client_order_id": cid, "nested": "true"},
            retry=retry,
            deadline=deadline,
        )
        if reply.status == 404:
            return None
        if reply.status == 200 and isinstance(reply.body, dict):
            return parse_order(reply.body)
        raise BrokerError(self._refusal(f"look up order {cid}", reply))

    # ------------------------------------------------------------------ Broker protocol

    def submit(self, request: OrderRequest) -> BrokerOrder:
        """Send ``request`` once (see the module docstring for how ambiguity is resolved)."""
        if self._closed:
            raise OrderRefused(f"order {request.client_order_id}: the broker is closed")
        body = self._order_payload(request)
        dl = self.policy.start()  # the POST and every lookup resolving it share one deadline
        try:
            reply = self._http.request("POST", "/orders", json_body=body, retry=False, deadline=dl)
        except _NoAnswer as exc:
            return self._resolve_submit(request, body, exc, dl)
        return self._submit_reply(request, reply, dl)

    def _submit_reply(
        self, req: OrderRequest, reply: _Reply, dl: Deadline | None = None
    ) -> BrokerOrder:
        cid = req.client_order_id
        size = req.qty if req.qty is not None else req.notional
        what = f"order {cid} ({req.side.value} {size:g} {req.symbol})"
        if reply.status == 200 and isinstance(reply.body, dict):
            order = parse_order(reply.body)
            self._track(order, fresh=True)
            return order
        if reply.status == 422 and _dup_cid(reply):
            # the order exists already (an earlier attempt, maybe another process): return it
            try:
                found = self._lookup_cid(cid, deadline=dl)
            except _NoAnswer as exc:
                raise OutcomeUnknown(
                    f"{what}: Alpaca says the client_order_id exists, but the lookup failed "
                    f"({exc.reason}). Resolve with get_order_by_client_id({cid!r})."
                ) from None
            if found is not None:
                self._track(found, fresh=True)
                return found
            raise OutcomeUnknown(
                f"{what}: Alpaca says the client_order_id is not unique but has no order under it "
                f"yet. Resolve with get_order_by_client_id({cid!r}); never resend under a new id."
            )
        if reply.status == 401:
            raise OrderRefused(
                f"{self._refusal(what, reply)}. Fix: check {KEY_ENV} / {SECRET_ENV}.",
                status=reply.status,
                code=reply.code,
            )
        raise OrderRefused(self._refusal(what, reply), status=reply.status, code=reply.code)

    def _resolve_submit(
        self, req: OrderRequest, body: dict[str, Any], failure: _NoAnswer, dl: Deadline
    ) -> BrokerOrder:
        """Find out what became of a POST without an answer, by its client order id, within the
        submit's deadline ``dl``; never POST again except once after a 429 and a definite 404."""
        cid = req.client_order_id
        resent = False
        reasons = [failure.reason]
        last = failure
        wait = self.resolve_wait
        lookups = 0
        for i in range(self.resolve_lookups):
            if last.kind == "429":
                pause = wait if last.retry_after is None else last.retry_after
                pause = min(pause, self.policy.rate_limit_wait_max)
            else:
                pause = random.uniform(wait / 2, wait) if i > 0 else 0.0
                if i > 0:
                    wait = min(wait * 2, self.policy.backoff_max)
            if dl.left() - pause < MIN_ATTEMPT:
                break  # no lookup would fit before the deadline
            if pause:
                if last.kind == "429":
                    self.limiter.pause_for(pause)
                self.policy.sleep(pause)
            lookups += 1
            try:
                found = self._lookup_cid(cid, deadline=dl)
            except _NoAnswer as exc:
                reasons.append(f"lookup: {exc.reason}")
                continue
            except BrokerError as exc:
                reasons.append(str(exc))
                continue
            if found is not None:
                log.warning("order %s: submit got no answer (%s); found it by client_order_id "
                            "(%s)", cid, failure.reason, found.status.value)  # fmt: skip
                self._track(found, fresh=True)
                return found
            if last.kind == "429" and not resent:
                # a 429 proves the order was not accepted, and the lookup says it does not exist
                resent = True
                log.warning("order %s: HTTP 429 on submit and not found: sending it again once "
                            "with the same client_order_id", cid)  # fmt: skip
                try:
                    reply = self._http.request(
                        "POST", "/orders", json_body=body, retry=False, deadline=dl
                    )
                except _NoAnswer as exc:
                    last = exc
                    reasons.append(f"resend: {exc.reason}")
                    continue
                return self._submit_reply(req, reply, dl)
            reasons.append("lookup: not found (yet)")
        timing = (
            f" within the {self.policy.deadline:g} s deadline" if dl.expired or lookups < 1 else ""
        )
        endpoint = self._http.endpoint("/orders")
        raise OutcomeUnknown(
            f"order {cid} ({req.side.value} {req.symbol}): outcome unknown after "
            f"{lookups} lookup(s) by client_order_id{timing} at {endpoint} "
            f"({'; '.join(reasons)}). Fix: check that this endpoint is up and reachable "
            "(alpaca.trading_url, your network, https://status.alpaca.markets), then resolve the "
            f"order with get_order_by_client_id({cid!r}) before doing anything else; never "
            "resend it under a new client_order_id."
        )

    def cancel(self, order_id: str) -> None:
        """DELETE the order: 204 done; 422 fine if it is already terminal; 404 NotFound."""
        what = f"cancel order {order_id}"
        path = f"/orders/{quote(order_id, safe='')}"
        try:
            reply = self._http.request("DELETE", path)
        except _NoAnswer as exc:
            raise OutcomeUnknown(
                f"{self._no_answer(what, f'DELETE {path}', exc)} The cancel may or may not have "
                "been applied: re-read the order once the endpoint answers."
            ) from None
        if reply.status in (200, 204):
            return
        if reply.status == 404:
            raise NotFound(self._refusal(what, reply))
        if reply.status == 422:
            order = self.get_order(order_id)
            if order.is_terminal:
                return
            raise OrderRefused(
                f"{self._refusal(what, reply)} (the order is {order.raw_status or order.status})",
                status=422,
                code=reply.code,
            )
        if reply.status == 401:
            raise CredentialsError(f"{self._refusal(what, reply)}. Fix: check {KEY_ENV}.")
        raise OrderRefused(self._refusal(what, reply), status=reply.status, code=reply.code)

    def replace(
        self,
        order_id: str,
        *,
        qty: float | None = None,
        limit_price: float | None = None,
        stop_price: float | None = None,
        client_order_id: str | None = None,
    ) -> BrokerOrder:
        """PATCH the order; returns the new order (new id, ``replaces`` = ``order_id``). Sent once."""
        from alpaca.trading.requests import ReplaceOrderRequest

        what = f"replace order {order_id}"
        whole = qty is None or abs(qty - round(qty)) < _EPS
        try:
            model = ReplaceOrderRequest(
                qty=round(qty) if qty is not None and whole else None,
                limit_price=limit_price,
                stop_price=stop_price,
                client_order_id=client_order_id,
            )
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise OrderRefused(f"{what}: refused before sending: {first}") from None
        body = _wire(model.to_request_fields())
        if qty is not None and not whole:  # ReplaceOrderRequest.qty is an int
            body["qty"] = _wire(float(qty))
        path = f"/orders/{quote(order_id, safe='')}"
        dl = self.policy.start()  # the PATCH and the lookups resolving it share one deadline
        try:
            reply = self._http.request("PATCH", path, json_body=body, retry=False, deadline=dl)
        except _NoAnswer as exc:
            found = self._resolve_replace(order_id, client_order_id, dl)
            if found is not None:
                return found
            raise OutcomeUnknown(
                f"{self._no_answer(what, f'PATCH {path}', exc)} No replacement was found: re-read "
                f"order {order_id} (replaced_by) before replacing again."
            ) from None
        if reply.status == 200 and isinstance(reply.body, dict):
            new = parse_order(reply.body)
            self._track(new, fresh=True)
            return new
        if reply.status == 422 and _dup_cid(reply) and client_order_id:
            found = self._resolve_replace(order_id, client_order_id, dl)
            if found is not None:
                return found
        if reply.status == 404:
            raise NotFound(self._refusal(what, reply))
        raise OrderRefused(self._refusal(what, reply), status=reply.status, code=reply.code)

    def _resolve_replace(self, order_id: str, cid: str | None, dl: Deadline) -> BrokerOrder | None:
        try:
            if cid:
                new = self._lookup_cid(cid, deadline=dl)
            else:
                old = self.get_order(order_id, deadline=dl)
                new = self.get_order(old.replaced_by, deadline=dl) if old.replaced_by else None
        except (_NoAnswer, BrokerError):
            return None
        if new is not None and new.replaces == order_id:
            self._track(new, fresh=True)
            return new
        return None

    def get_order(self, order_id: str, *, deadline: Deadline | None = None) -> BrokerOrder:
        what = f"get order {order_id}"
        reply = self._call(
            "GET",
            f"/orders/{quote(order_id, safe='')}",
            what,
            params={"nested": "true"},
            deadline=deadline,
        )
        if reply.status == 404:
            raise NotFound(self._refusal(what, reply))
        if reply.status != 200 or not isinstance(reply.body, dict):
            raise BrokerError(self._refusal(what, reply))
        order = parse_order(reply.body)
        self._track(order)
        return order

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        try:
            order = self._lookup_cid(client_order_id)
        except _NoAnswer as exc:
            what = f"look up order {client_order_id}"
            raise Unreachable(
                self._no_answer(what, "GET /orders:by_client_order_id", exc)
            ) from None
        if order is not None:
            self._track(order)
        return order

    def _orders(
        self, status: str, after: datetime | None, *, retry: bool = True
    ) -> list[BrokerOrder]:
        from alpaca.trading.requests import GetOrdersRequest

        out: dict[str, BrokerOrder] = {}
        cursor = after
        for _ in range(1000):  # bound: 500k orders
            fields = GetOrdersRequest(
                status=status, limit=_PAGE, after=cursor, direction="asc", nested=True
            ).to_request_fields()
            reply = self._call("GET", "/orders", f"list {status} orders", params=_query(fields),
                               retry=retry)  # fmt: skip
            if reply.status != 200 or not isinstance(reply.body, list):
                raise BrokerError(self._refusal(f"list {status} orders", reply))
            page = [parse_order(d) for d in reply.body if isinstance(d, Mapping)]
            new = [o for o in page if o.id not in out]
            for o in page:
                out[o.id] = o
            if len(reply.body) < _PAGE or not new:
                break
            last = max((o.created_at for o in page if o.created_at), default=None)
            if last is None:
                break
            cursor = last - timedelta(microseconds=1)  # `after` is exclusive: ties stay in
        return sorted(out.values(), key=lambda o: o.created_at or datetime.min.replace(tzinfo=UTC))

    def open_orders(self) -> list[BrokerOrder]:
        orders = self._orders("open", None)
        for o in orders:
            self._track(o)
        return orders

    def recent_orders(self, after: datetime | None = None) -> list[BrokerOrder]:
        return self._orders("all", after)

    def positions(self) -> list[Position]:
        reply = self._call("GET", "/positions", "list positions")
        if reply.status != 200 or not isinstance(reply.body, list):
            raise BrokerError(self._refusal("list positions", reply))
        return [parse_position(d) for d in reply.body if isinstance(d, Mapping)]

    def account(self) -> Account:
        reply = self._call("GET", "/account", "get account")
        if reply.status != 200 or not isinstance(reply.body, dict):
            raise BrokerError(self._refusal("get account", reply))
        d = reply.body
        equity = _f(d.get("equity"))
        if equity is None:
            equity = _f(d.get("portfolio_value")) or 0.0
        blocked = any(
            bool(d.get(k))
            for k in ("trading_blocked", "account_blocked", "trade_suspended_by_user")
        )
        extra_keys = (
            "account_number", "status", "currency", "multiplier", "shorting_enabled",
            "portfolio_value", "long_market_value", "short_market_value", "regt_buying_power",
            "non_marginable_buying_power", "initial_margin", "maintenance_margin",
            "daytrade_count", "pattern_day_trader", "daytrading_buying_power",
        )  # fmt: skip
        return Account(
            id=str(d.get("id") or ""),
            equity=equity,
            cash=_f(d.get("cash")) or 0.0,
            buying_power=_f(d.get("buying_power")) or 0.0,
            endpoint=self.endpoint,
            paper=not self.live,
            trading_blocked=blocked,
            extra={k: d[k] for k in extra_keys if k in d and d[k] is not None},
        )

    def asset(self, symbol: str) -> dict[str, Any]:
        """The raw asset facts (``fractionable``, ``shortable``, ``easy_to_borrow`` may be absent)."""
        reply = self._call("GET", f"/assets/{quote(symbol, safe='')}", f"get asset {symbol}")
        if reply.status == 404:
            raise NotFound(self._refusal(f"get asset {symbol}", reply))
        if reply.status != 200 or not isinstance(reply.body, dict):
            raise BrokerError(self._refusal(f"get asset {symbol}", reply))
        return dict(reply.body)

    # ------------------------------------------------------------------ events

    def _track(self, order: BrokerOrder, *, fresh: bool = False) -> None:
        """Remember an order seen over REST. ``fresh``: ours, just created: report all its fills."""
        with self._lock:
            prev = self._known.get(order.id)
            if prev is None or order.filled_qty >= prev.filled_qty - _EPS:
                self._known[order.id] = order
            if order.id not in self._seen:
                if fresh:
                    self._seen[order.id] = _Seen(order.status, 0.0, None)
                else:
                    self._seen[order.id] = _Seen(
                        order.status, order.filled_qty, order.filled_avg_price
                    )
            for leg in order.legs:
                self._track(leg, fresh=fresh)

    def _has_open(self) -> bool:
        with self._lock:
            return any(s.status not in _TERMINAL_STATUSES for s in self._seen.values())

    def _on_stream_up(self) -> None:
        with self._lock:
            self._force_poll = True

    def _on_stream_data(self, data: dict[str, Any]) -> None:
        ev = parse_event(data)
        with self._lock:
            if ev.event in ("fill", "partial_fill") and ev.execution_id:
                key = f"{ev.order.id}:{ev.execution_id}"
                if key in self._exec_ids:
                    self.dropped_replays += 1
                    return
                self._exec_ids.add(key)
            self._observe(ev.order, ev)
            for leg in ev.order.legs:
                self._observe(leg, None)

    def _observe(self, order: BrokerOrder, ev: OrderEvent | None) -> None:
        """Queue the events that take the consumer from what it was told to ``order``."""
        if not order.id:
            return
        seen = self._seen.get(order.id)
        if seen is None:
            seen = self._seen[order.id] = _Seen(None, 0.0, None)
        prev = self._known.get(order.id)
        if prev is None or order.filled_qty >= prev.filled_qty - _EPS:
            self._known[order.id] = order
        ts = (ev.ts if ev is not None else None) or order.updated_at or datetime.now(UTC)
        is_fill_ev = ev is not None and ev.event in ("fill", "partial_fill")
        dq = order.filled_qty - seen.filled
        if dq > _EPS:
            price: float | None
            if is_fill_ev and ev is not None and ev.qty is not None and abs(ev.qty - dq) < 1e-7:
                price = ev.price
            elif order.filled_avg_price is not None:
                before = (seen.avg or 0.0) * seen.filled
                price = (order.filled_avg_price * order.filled_qty - before) / dq
            else:
                price = ev.price if ev is not None else None
            name = "fill" if order.status is OrderStatus.FILLED else "partial_fill"
            if is_fill_ev and ev is not None:
                exec_id = ev.execution_id
            else:
                exec_id = f"poll:{order.id}:{order.filled_qty:.9g}"
            self._out.append(
                OrderEvent(
                    event=name,
                    order=order,
                    ts=ts,
                    execution_id=exec_id,
                    qty=dq,
                    price=price,
                    position_qty=ev.position_qty if is_fill_ev and ev is not None else None,
                )
            )
            seen.filled, seen.avg = order.filled_qty, order.filled_avg_price
        if ev is not None and not is_fill_ev:
            stale = seen.status in _TERMINAL_STATUSES and order.status is not seen.status
            same = order.status is seen.status and ev.event == _event_name(order.status)
            if not stale and not same:
                self._out.append(replace(ev, order=order))
        elif ev is None and order.status is not seen.status:
            stale = seen.status in _TERMINAL_STATUSES and order.status not in _TERMINAL_STATUSES
            if not stale and order.status not in _FILL_STATUS:
                self._out.append(OrderEvent(event=_event_name(order.status), order=order, ts=ts))
        if not (seen.status in _TERMINAL_STATUSES and order.status not in _TERMINAL_STATUSES):
            seen.status = order.status

    def _poll(self) -> None:
        """Read open orders and every known non-terminal order; queue what changed."""
        self._last_poll = time.monotonic()
        try:
            listed = self._orders("open", None, retry=False)
        except BrokerError as exc:
            log.warning("poll open orders: %s", exc)
            return
        flat: list[BrokerOrder] = []
        for o in listed:
            flat.append(o)
            flat.extend(o.legs)
        with self._lock:
            listed_ids = {o.id for o in flat}
            for o in flat:
                if o.id not in self._seen:  # an order we did not place or know: no history
                    self._seen[o.id] = _Seen(o.status, o.filled_qty, o.filled_avg_price)
                    self._known[o.id] = o
                else:
                    self._observe(o, None)
            pending = [
                oid
                for oid, s in self._seen.items()
                if s.status not in _TERMINAL_STATUSES and oid not in listed_ids
            ]
        for oid in pending:
            try:
                reply = self._call(
                    "GET", f"/orders/{quote(oid, safe='')}", f"poll order {oid}", retry=False
                )
            except BrokerError as exc:
                log.warning("poll order %s: %s", oid, exc)
                continue
            if reply.status == 200 and isinstance(reply.body, dict):
                with self._lock:
                    self._observe(parse_order(reply.body), None)
            elif reply.status == 404:
                log.warning("poll order %s: Alpaca has no such order (404)", oid)

    def events(self) -> list[OrderEvent]:
        """Drain the events queued since the last call; poll REST first while the stream is not up."""
        state = self.stream_state
        now = time.monotonic()
        with self._lock:
            force = self._force_poll
            self._force_poll = False
        if force or (state != "up" and now - self._last_poll >= self.poll_seconds):
            self._poll()
        with self._lock:
            out = list(self._out)
            self._out.clear()
        return out

    def iter_known(self) -> Iterator[BrokerOrder]:
        """The latest view of every order this broker has seen (for diagnostics)."""
        with self._lock:
            yield from list(self._known.values())


def _event_name(status: OrderStatus) -> str:
    return _FILL_STATUS.get(status, status.value)


@register_broker("alpaca")
def alpaca_broker(**kw: Any) -> AlpacaBroker:
    """Factory for ``make_broker("alpaca", ...)``: ``cfg=`` builds from a WorkbenchConfig."""
    cfg = kw.pop("cfg", None)
    if cfg is not None:
        return AlpacaBroker.from_config(cfg, **kw)
    return AlpacaBroker(**kw)
