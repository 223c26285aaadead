"""Live market data: alpaca-py's StockDataStream behind handlers, trade-to-bar aggregation and a
staleness watchdog.

* :class:`TradeBarAggregator` turns trades into 1Min (or N-minute) bars exactly as the historical
  bars endpoint reports them for the same trades: open/close are the first/last trade price in
  time order, high/low the extremes, volume the summed size, vwap the size-weighted price,
  trade_count the number of trades, ``ts`` the UTC start of the bar. A bar is emitted when a trade
  of a later bar arrives for the symbol, when the clock passes the bar's end (:meth:`advance`) or
  on :meth:`flush`. It needs no network. (Alpaca's SIP bars also leave out trades with some sale
  conditions; feed the aggregator the trades you want counted.)
* :class:`StalenessMonitor` says when the stream has been quiet too long while the exchange is open.
* :class:`LiveStream` registers any number of handlers per channel and symbol (the SDK keeps one),
  runs the SDK stream in a thread, reconnects with exponential backoff (the SDK's, with our bounds)
  and runs the watchdog. Every connection attempt (connect, the server's ``connected``,
  authentication) is bounded by ``timeout`` (the SDK waits on the server's first frames forever),
  and until the first connection all attempts and the waits between them by ``connect_deadline``
  (``alpaca.deadline_seconds``, the data side's :class:`~workbench.data.sources._alpaca_http.Deadline`):
  then the stream gives up with a :class:`~workbench.errors.SourceError` naming the endpoint
  (:attr:`LiveStream.error`, raised by :meth:`LiveStream.wait_connected` and by the next
  :meth:`TradeBarAggregator.advance` of its aggregators), instead of waiting for data that never
  comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import SecretStr

from workbench.data import calendar as cal
from workbench.data.schema import BAR_SCHEMA, empty_bars, validate_bars
from workbench.data.sources._alpaca_http import DEFAULT_DEADLINE, MIN_ATTEMPT, Deadline
from workbench.data.sources._alpaca_http import deadline_message as _deadline_message
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig

log = logging.getLogger("workbench.data.stream")

Bar = dict[str, Any]
Handler = Callable[[Any], Any]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@dataclass
class _Open:
    start: datetime
    trades: list[tuple[datetime, int, float, float]] = field(default_factory=list)


class TradeBarAggregator:
    """Aggregate trades into bars of ``timeframe`` (``1Min``, ``5Min``, ``15Min``, ``1Hour``).

    Parameters
    ----------
    timeframe : str or Timeframe
        Intraday timeframe; bars are clock-aligned in UTC (as Alpaca's).
    on_bar : callable, optional
        Called with each completed bar (a dict with the bar contract's columns).

    Attributes
    ----------
    late : int
        Trades dropped because their bar had already been emitted.
    failed : Exception or None
        Set by :meth:`fail` when the feed behind the aggregator is gone for good.
    """

    def __init__(self, timeframe: str | Timeframe = "1Min", on_bar: Handler | None = None) -> None:
        tf = Timeframe.parse(timeframe)
        if not tf.is_intraday:
            raise ConfigError(
                f"TradeBarAggregator needs an intraday timeframe (1Min, 5Min, 15Min, 1Hour). Got {tf.name!r}. "
                "Fix: take daily bars from the historical endpoint."
            )
        self.timeframe = tf
        self.on_bar = on_bar
        self.late = 0
        self.failed: Exception | None = None
        self._open: dict[str, _Open] = {}
        self._emitted: dict[str, datetime] = {}  # last emitted bar start per symbol
        self._seq = 0
        self._lock = threading.Lock()

    def bar_start(self, ts: datetime) -> datetime:
        """Return the UTC start of the bar containing ``ts``."""
        step = self.timeframe.delta
        return _EPOCH + ((_utc(ts) - _EPOCH) // step) * step

    def add(self, symbol: str, ts: datetime, price: float, size: float) -> list[Bar]:
        """Add one trade; return the bars it completed (at most one)."""
        start = self.bar_start(ts)
        with self._lock:
            done = self._emitted.get(symbol)
            if done is not None and start <= done:
                self.late += 1
                log.debug("late trade for %s at %s dropped (bar already emitted)", symbol, ts)
                return []
            out = []
            cur = self._open.get(symbol)
            if cur is not None and start < cur.start:
                self.late += 1  # older than the open bar: that bar is gone for good
                return []
            if cur is not None and start > cur.start:
                out.append(self._close(symbol))
                cur = None
            if cur is None:
                cur = self._open[symbol] = _Open(start)
            self._seq += 1
            cur.trades.append((_utc(ts), self._seq, float(price), float(size)))
        return self._deliver(out)

    def add_trade(self, trade: Any) -> list[Bar]:
        """Add an alpaca-py ``Trade`` (or a raw ``{"S", "t", "p", "s"}`` dict)."""
        if isinstance(trade, dict):
            t = trade["t"]
            t = t.to_datetime() if hasattr(t, "to_datetime") else t
            return self.add(trade["S"], t, trade["p"], trade["s"])
        return self.add(trade.symbol, trade.timestamp, trade.price, trade.size)

    def fail(self, error: Exception) -> None:
        """Mark the feed as gone for good: the next :meth:`advance` raises ``error`` (a consumer
        waiting for bars stops instead of waiting forever); :meth:`flush` still emits."""
        self.failed = error

    def advance(self, now: datetime) -> list[Bar]:
        """Emit every open bar that ended at or before ``now``.

        Raises the error given to :meth:`fail`, once the feed has failed."""
        if self.failed is not None:
            raise self.failed
        now = _utc(now)
        with self._lock:
            due = [s for s, o in self._open.items() if o.start + self.timeframe.delta <= now]
            out = [self._close(s) for s in sorted(due)]
        return self._deliver(out)

    def flush(self) -> list[Bar]:
        """Emit every open bar (end of stream)."""
        with self._lock:
            out = [self._close(s) for s in sorted(self._open)]
        return self._deliver(out)

    def _close(self, symbol: str) -> Bar:
        cur = self._open.pop(symbol)
        trades = sorted(cur.trades)  # time order; arrival order breaks ties
        prices = [p for _, _, p, _ in trades]
        volume = sum(s for _, _, _, s in trades)
        notional = sum(p * s for _, _, p, s in trades)
        self._emitted[symbol] = cur.start
        return {
            "symbol": symbol,
            "ts": cur.start,
            "open": prices[0],
            "high": max(prices),
            "low": min(prices),
            "close": prices[-1],
            "volume": float(volume),
            "vwap": notional / volume if volume > 0 else None,
            "trade_count": len(trades),
        }

    def _deliver(self, bars: list[Bar]) -> list[Bar]:
        if self.on_bar is not None:
            for b in bars:
                self.on_bar(b)
        return bars

    @staticmethod
    def to_frame(bars: list[Bar]) -> pl.DataFrame:
        """Return emitted bars as a validated bar frame."""
        if not bars:
            return empty_bars()
        return validate_bars(pl.DataFrame(bars, schema=BAR_SCHEMA))


class StalenessMonitor:
    """Flag a stream that has been quiet for ``stale_after`` while the exchange is open.

    Parameters
    ----------
    stale_after : timedelta
        Longest silence tolerated in market hours.
    calendar : str
        exchange_calendars code for market hours.
    now : callable
        Wall clock returning an aware datetime (tests inject one).
    """

    def __init__(
        self,
        stale_after: timedelta = timedelta(seconds=60),
        calendar: str = cal.DEFAULT_CALENDAR,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.stale_after = stale_after
        self.calendar = calendar
        self._now = now or (lambda: datetime.now(UTC))
        self.last_message: datetime = self._now()
        self.stale = False

    def touch(self, when: datetime | None = None) -> None:
        """Record that a message arrived."""
        self.last_message = _utc(when) if when is not None else self._now()
        self.stale = False

    def quiet_for(self, now: datetime | None = None) -> timedelta:
        """Return how long the stream has been silent."""
        return (now or self._now()) - self.last_message

    def check(self, now: datetime | None = None) -> bool:
        """Return True exactly when the stream has just become stale (once per quiet spell)."""
        now = now or self._now()
        is_stale = self.quiet_for(now) > self.stale_after and bool(cal.is_open(now, self.calendar))
        fired = is_stale and not self.stale
        self.stale = is_stale
        return fired


def _as_async(fn: Handler) -> Callable[[Any], Any]:
    if inspect.iscoroutinefunction(fn):
        return fn

    async def wrapper(msg: Any) -> None:
        fn(msg)

    return wrapper


class LiveStream:
    """Alpaca live stock data with many handlers, trade-to-bar aggregation and a watchdog.

    Parameters
    ----------
    key_id, secret : str or SecretStr, optional
        Default ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``.
    feed : {"iex", "sip"}
    url : str, optional
        Full websocket endpoint (``alpaca.stream_url``; default Alpaca's ``/v2/{feed}``).
    reconnect_min, reconnect_max : float
        Bounds of the exponential reconnect backoff, seconds.
    stale_after : timedelta
        Silence in market hours that counts as stale (handlers of :meth:`on_stale` are called).
    reconnect_after_quiet : float, optional
        Force a reconnect after this many silent seconds (the SDK's ``data_timeout``).
    timeout : float
        Seconds one connection attempt may take (connect, ``connected``, authentication).
    connect_deadline : float
        Seconds the stream may try (attempts and the waits between them) before its first
        connection; then it gives up (:attr:`error`). 25 s by default (``alpaca.deadline_seconds``).
    check_every : float
        Watchdog period, seconds (also closes finished bars of quiet symbols).
    now : callable, optional
        Wall clock (tests).
    """

    def __init__(
        self,
        *,
        key_id: str | SecretStr | None = None,
        secret: str | SecretStr | None = None,
        feed: str = "iex",
        url: str | None = None,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        stale_after: timedelta = timedelta(seconds=60),
        reconnect_after_quiet: float | None = None,
        timeout: float = 10.0,
        connect_deadline: float = DEFAULT_DEADLINE,
        check_every: float = 1.0,
        calendar: str = cal.DEFAULT_CALENDAR,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        from alpaca.data.enums import DataFeed
        from alpaca.data.live.stock import StockDataStream

        from workbench.data.sources._alpaca_client import public_url, resolve_keys

        if feed not in ("iex", "sip"):
            raise ConfigError(
                f"alpaca.feed must be 'iex' or 'sip' for streaming. Got {feed!r} instead."
            )
        keys = resolve_keys(key_id, secret)
        self.url = url
        self.feed = feed
        self._sdk = StockDataStream(
            keys.key_id.get_secret_value(),
            keys.secret.get_secret_value(),
            feed=DataFeed(feed),
            url_override=url,
            data_timeout=reconnect_after_quiet,
        )
        self._sdk._reconnect_min_backoff = reconnect_min
        self._sdk._reconnect_max_backoff = reconnect_max
        self.endpoint = public_url(self._sdk._endpoint)
        self.timeout = float(timeout)
        # a cancelled or failed connect waits close_timeout for the TCP close (10 s by default in
        # the SDK's websockets.legacy): a part of the attempt's time, not on top of it
        self._close_timeout = min(1.0, 0.2 * self.timeout)
        self._sdk._websocket_params = {
            **self._sdk._websocket_params,
            "close_timeout": self._close_timeout,
        }
        self.connect_deadline = float(connect_deadline)
        self.error: SourceError | None = None  # why it gave up before a first connection
        self.connected = threading.Event()  # set at the first connection
        self.attempts = 0
        self._first: Deadline | None = None
        self._last = ""
        self._sdk_start_ws = self._sdk._start_ws
        self._sdk._start_ws = self._start_ws  # type: ignore[method-assign]
        self._sdk_wait_before_reconnect = self._sdk._wait_before_reconnect
        self._sdk._wait_before_reconnect = self._wait_before_reconnect  # type: ignore[method-assign]
        self._now = now or (lambda: datetime.now(UTC))
        self.monitor = StalenessMonitor(stale_after, calendar, self._now)
        self.check_every = check_every
        self._handlers: dict[str, dict[str, list[Callable[[Any], Any]]]] = {
            "trades": defaultdict(list),
            "quotes": defaultdict(list),
            "bars": defaultdict(list),
        }
        self._aggregators: list[tuple[TradeBarAggregator, set[str]]] = []
        self._stale_handlers: list[Callable[[timedelta], Any]] = []
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self.messages = 0

    @classmethod
    def from_config(cls, cfg: WorkbenchConfig, **kwargs: Any) -> LiveStream:
        """Build from ``cfg.alpaca`` (feed, stream_url, timeout_seconds, deadline_seconds) with
        keys from the environment."""
        args: dict[str, Any] = {
            "key_id": cfg.secrets.apca_api_key_id,
            "secret": cfg.secrets.apca_api_secret_key,
            "feed": cfg.alpaca.feed,
            "url": cfg.alpaca.stream_url,
            "calendar": cfg.data.calendar,
            "timeout": cfg.alpaca.timeout_seconds,
            "connect_deadline": cfg.alpaca.deadline_seconds,
        }
        return cls(**{**args, **kwargs})

    # ------------------------------------------------------------------ connecting

    def _before_first(self) -> Deadline | None:
        """The first-connection deadline, while it applies (started, never connected)."""
        return None if self.connected.is_set() else self._first

    async def _start_ws(self) -> None:
        """One connection attempt of the SDK's loop, bounded in time (see the module docstring)."""
        import websockets

        first = self._before_first()
        if first is not None and first.expired:
            self._give_up(self._last or "no attempt fitted before the deadline")
            raise websockets.WebSocketException(self._last)
        budget = self.timeout if first is None else first.cap(self.timeout)
        self.attempts += 1
        try:
            limit = max(MIN_ATTEMPT, budget - self._close_timeout)
            await asyncio.wait_for(self._sdk_start_ws(), timeout=limit)
        except Exception as exc:
            if isinstance(exc, ValueError) and "insufficient subscription" in str(exc):
                raise  # the SDK stops on it, logging why
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {budget:.3g}s (timeout)"
            elif isinstance(exc, ValueError):
                reason = f"refused: {exc}"
            else:
                reason = f"connection failed ({type(exc).__name__})"
            self._last = reason
            log.warning("market-data stream %s: %s", self.endpoint, reason)
            if first is not None and first.expired:
                self._give_up(reason)
            # the SDK's loop logs any other exception with a traceback: hand it one it handles
            raise websockets.WebSocketException(reason) from None
        self.connected.set()

    async def _wait_before_reconnect(self, retries: int) -> None:
        """The SDK's backoff, cut to the first-connection deadline while that applies."""
        first = self._before_first()
        if first is None:
            return await self._sdk_wait_before_reconnect(retries)
        event = self._sdk._stop_stream_event
        if event is None or event.is_set():
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                event.wait(), timeout=first.wait(self._sdk._reconnect_delay(retries))
            )
        return None

    def _give_up(self, last: str) -> None:
        fix = "alpaca.stream_url, empty for Alpaca's own"
        msg = _deadline_message(
            "market-data stream", self.endpoint, self.connect_deadline, self.attempts, last, fix
        )
        if last.startswith("refused:"):
            msg += (
                " The server refused the connection: check APCA_API_KEY_ID / APCA_API_SECRET_KEY "
                "and alpaca.feed (sip needs a paid plan)."
            )
        self.error = SourceError(msg)
        log.error("%s", msg)
        self._sdk._should_run = False  # the SDK's loop returns at its next turn
        if self._sdk._stop_stream_event is not None:
            self._sdk._stop_stream_event.set()  # no wait before that turn
        for agg, _ in self._aggregators:
            agg.fail(self.error)

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until the first connection; raise :attr:`error` when the stream gave up.

        ``timeout`` (default: the connect deadline plus one attempt) bounds the wait itself."""
        limit = self.connect_deadline + self.timeout if timeout is None else timeout
        end = time.monotonic() + limit
        while not self.connected.is_set() and self.error is None and time.monotonic() < end:
            self.connected.wait(0.02)
        if self.error is not None:
            raise self.error
        if not self.connected.is_set():
            raise SourceError(
                f"market-data stream: not connected to {self.endpoint} after {limit:g} s. Fix: "
                "check that the endpoint is up and reachable (alpaca.stream_url), or call start() "
                "first."
            )

    def __repr__(self) -> str:
        return f"LiveStream(feed={self.feed!r}, url={self.url!r})"

    # ------------------------------------------------------------------ registration

    def _register(self, channel: str, handler: Handler, symbols: tuple[str, ...]) -> None:
        if not symbols:
            raise ConfigError(
                f"subscribe to {channel} with at least one symbol (or '*' for all). Got none."
            )
        sdk_sub = {
            "trades": self._sdk.subscribe_trades,
            "quotes": self._sdk.subscribe_quotes,
            "bars": self._sdk.subscribe_bars,
        }[channel]
        dispatch = self._dispatcher(channel)
        new = [s for s in symbols if not self._handlers[channel].get(s)]
        for s in symbols:
            self._handlers[channel][s].append(_as_async(handler))
        if new:
            sdk_sub(dispatch, *new)

    def _dispatcher(self, channel: str) -> Callable[[Any], Any]:
        async def dispatch(msg: Any) -> None:
            self.messages += 1
            self.monitor.touch()
            sym = getattr(msg, "symbol", None) or (msg.get("S") if isinstance(msg, dict) else None)
            if channel == "trades":
                for agg, syms in self._aggregators:
                    if sym in syms or "*" in syms:
                        agg.add_trade(msg)
            handlers = self._handlers[channel].get(sym) or self._handlers[channel].get("*") or []
            for h in handlers:
                await h(msg)

        return dispatch

    def on_trades(self, handler: Handler, *symbols: str) -> None:
        """Call ``handler(trade)`` (sync or async) for each trade of ``symbols``."""
        self._register("trades", handler, symbols)

    def on_quotes(self, handler: Handler, *symbols: str) -> None:
        """Call ``handler(quote)`` for each quote of ``symbols``."""
        self._register("quotes", handler, symbols)

    def on_bars(self, handler: Handler, *symbols: str) -> None:
        """Call ``handler(bar)`` for each minute bar Alpaca publishes for ``symbols``."""
        self._register("bars", handler, symbols)

    def aggregate_trades(
        self, on_bar: Handler, *symbols: str, timeframe: str | Timeframe = "1Min"
    ) -> TradeBarAggregator:
        """Subscribe to trades of ``symbols`` and call ``on_bar(bar_dict)`` with bars built from them."""
        agg = TradeBarAggregator(timeframe, on_bar)
        self._aggregators.append((agg, set(symbols)))
        self._register("trades", _noop, symbols)
        return agg

    def on_stale(self, handler: Callable[[timedelta], Any]) -> None:
        """Call ``handler(quiet_for)`` when the stream goes quiet in market hours."""
        self._stale_handlers.append(handler)

    # ------------------------------------------------------------------ running

    def start(self) -> LiveStream:
        """Run the stream and the watchdog in background threads."""
        if self._thread is not None:
            raise RuntimeError("LiveStream already started; call stop() first.")
        self._stop.clear()
        self.monitor.touch()
        if not self.connected.is_set():
            self._first = Deadline(time.monotonic() + self.connect_deadline, self.connect_deadline)
        self._thread = threading.Thread(target=self._sdk.run, name="alpaca-stream", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="stream-watchdog", daemon=True)
        self._thread.start()
        self._watchdog.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every) and self.error is None:
            try:
                self.tick()
            except SourceError:  # the stream gave up (wait_connected and advance raise it)
                return

    def tick(self, now: datetime | None = None) -> None:
        """Run one watchdog step: close finished bars and report staleness."""
        now = now or self._now()
        for agg, _ in self._aggregators:
            agg.advance(now)
        if self.monitor.check(now):
            quiet = self.monitor.quiet_for(now)
            log.warning("stream quiet for %.1fs during market hours", quiet.total_seconds())
            for h in self._stale_handlers:
                h(quiet)

    def __enter__(self) -> LiveStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the stream and the watchdog, flushing open aggregated bars."""
        self._stop.set()
        sdk = self._sdk
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive():
            loop = sdk._loop
            if loop is not None and loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(_shutdown(sdk), loop)
                try:
                    fut.result(timeout=max(0.1, deadline - time.monotonic()))
                except Exception as exc:  # the loop may finish while we wait
                    log.debug("stream shutdown: %s", type(exc).__name__)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        for t in (self._thread, self._watchdog):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        self._thread = self._watchdog = None
        for agg, _ in self._aggregators:
            agg.flush()


async def _noop(_: Any) -> None:
    return None


async def _shutdown(sdk: Any) -> None:
    await sdk.stop_ws()
    ws = sdk._ws
    if ws is not None:  # wake the SDK's 5 s receive wait at once
        await ws.close()
