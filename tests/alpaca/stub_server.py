"""A local Alpaca-compatible REST server for tests and benchmarks (stdlib only, 127.0.0.1, port 0).

It speaks the real paths and JSON shapes alpaca-py uses (see the project's dependency notes, section
1): ``GET /v2/stocks/bars`` (multi-symbol, ``{"bars": {sym: [...]}, "next_page_token": ...}``,
sorted by symbol then time, ``end`` inclusive), ``GET /v1beta3/crypto/us/bars``, ``GET /v2/assets``,
``GET /v2/assets/{symbol}`` and ``GET /v2/clock``. It serves a ground-truth bar frame, checks the
auth headers, records every request (arrival time, path, query, status) and injects faults on
chosen requests: 429 with ``X-RateLimit-Reset`` or ``Retry-After``, 5xx, slow answers, hangs longer
than the client timeout, truncated JSON, dropped connections and short bodies. It can also enforce
a server-side rate limit like Alpaca's.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import polars as pl

KEY_ID = "PKSTUBKEY0123456789"
SECRET = "stubSECRETvalue-do-not-log-0123456789"

FAULTS = (
    "429",  # X-RateLimit-Reset (epoch seconds) in the near future
    "429-retry-after",  # Retry-After: 0
    "429-bare",  # no headers at all: client must back off on its own
    "500",
    "502",
    "503",
    "504",
    "slow",  # answers after slow_seconds (< client timeout)
    "hang",  # answers after hang_seconds (> client timeout)
    "malformed",  # 200 with truncated JSON
    "drop",  # closes the connection without an answer
    "partial",  # sends headers and part of the body, then closes
)

_TRUTH_COLS = ("symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count")


@dataclass
class RequestRecord:
    """One request the stub saw."""

    n: int
    t: float  # time.monotonic() on arrival
    path: str
    query: dict[str, str]
    status: int = 0
    fault: str | None = None


@dataclass
class StubState:
    """Everything the handler reads and writes; tests change it between calls."""

    bars: dict[str, pl.DataFrame] = field(default_factory=dict)  # timeframe -> truth
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    page_size: int = 1000
    faults: dict[int, str] = field(default_factory=dict)  # request number (1-based) -> fault
    fault_fn: Callable[[int, str], str | None] | None = None
    reset_in: float = 0.05  # seconds until X-RateLimit-Reset on a 429
    slow_seconds: float = 0.05
    hang_seconds: float = 1.0
    limit: tuple[int, float] | None = None  # server-side limit: (requests, window seconds)
    clock_open: bool = True
    log: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _recent: deque[float] = field(default_factory=deque)

    def begin(self, path: str, query: dict[str, str]) -> RequestRecord:
        with self.lock:
            rec = RequestRecord(len(self.log) + 1, time.monotonic(), path, query)
            self.log.append(rec)
            fault = self.faults.get(rec.n)
            if fault is None and self.fault_fn is not None:
                fault = self.fault_fn(rec.n, path)
            if fault is None and self.limit is not None:
                n, window = self.limit
                while self._recent and self._recent[0] <= rec.t - window:
                    self._recent.popleft()
                if len(self._recent) >= n:
                    fault = "429"
                else:
                    self._recent.append(rec.t)
            rec.fault = fault
            return rec

    def arrivals(self, prefix: str = "/") -> list[float]:
        """Return arrival times of requests whose path starts with ``prefix``."""
        with self.lock:
            return [r.t for r in self.log if r.path.startswith(prefix)]


def _token(offset: int) -> str:
    return base64.b64encode(f"o|{offset}".encode()).decode()


def _offset(token: str | None) -> int:
    if not token:
        return 0
    return int(base64.b64decode(token).decode().split("|", 1)[1])


def _iso(ts: str) -> datetime:
    v = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed ACK
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: int, message: str, **headers: str) -> None:
        self._send(status, {"code": code, "message": message}, headers)

    def do_GET(self) -> None:
        st = self.server.state
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        rec = st.begin(parts.path, query)
        try:
            rec.status = self._serve(st, rec, parts.path, query)
        except (BrokenPipeError, ConnectionResetError):
            rec.status = -1

    def _serve(self, st: StubState, rec: RequestRecord, path: str, q: dict[str, str]) -> int:
        if (
            self.headers.get("APCA-API-KEY-ID") != KEY_ID
            or self.headers.get("APCA-API-SECRET-KEY") != SECRET
        ):
            self._error(401, 40110000, "request is not authorized")
            return 401
        fault = rec.fault
        if fault is not None:
            status = self._fault(st, fault)
            if status:
                return status
        if path == "/v2/stocks/bars":
            return self._bars(st, q, crypto=False)
        if path == "/v1beta3/crypto/us/bars":
            return self._bars(st, q, crypto=True)
        if path == "/v2/assets":
            self._send(200, list(st.assets.values()))
            return 200
        if path.startswith("/v2/assets/"):
            sym = unquote(path[len("/v2/assets/") :])
            if sym not in st.assets:
                self._error(404, 40410000, f"asset not found for {sym}")
                return 404
            self._send(200, st.assets[sym])
            return 200
        if path == "/v2/clock":
            now = datetime.now(UTC)
            self._send(
                200,
                {
                    "timestamp": now.isoformat(),
                    "is_open": st.clock_open,
                    "next_open": (now + timedelta(hours=16)).isoformat(),
                    "next_close": (now + timedelta(hours=2)).isoformat(),
                },
            )
            return 200
        self._error(404, 40410000, f"not found: {path}")
        return 404

    def _fault(self, st: StubState, fault: str) -> int:
        if fault == "429":
            reset = time.time() + st.reset_in
            self._error(
                429,
                42910000,
                "too many requests.",
                **{
                    "X-RateLimit-Limit": "200",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{reset:.3f}",
                },
            )
            return 429
        if fault == "429-retry-after":
            self._error(429, 42910000, "too many requests.", **{"Retry-After": "0"})
            return 429
        if fault == "429-bare":
            self._error(429, 42910000, "too many requests.")
            return 429
        if fault in ("500", "502", "503", "504"):
            self._error(int(fault), int(fault) * 100000, "internal server error")
            return int(fault)
        if fault == "slow":
            time.sleep(st.slow_seconds)
            return 0
        if fault == "hang":
            time.sleep(st.hang_seconds)
            return 0  # then answer into a socket the client has already given up on
        if fault == "malformed":
            self._send(200, b'{"bars": {"AAPL": [{"t": "2024-01-02T14:3')
            return 200
        if fault == "drop":
            self.close_connection = True
            return -1
        if fault == "partial":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b'{"bars": {')
            self.wfile.flush()
            self.close_connection = True
            return -1
        raise AssertionError(f"unknown fault {fault!r}; known: {FAULTS}")

    def _bars(self, st: StubState, q: dict[str, str], *, crypto: bool) -> int:
        tf = q.get("timeframe", "")
        if tf not in st.bars:
            self._error(422, 42210000, f"invalid timeframe {tf!r}")
            return 422
        if not crypto and (
            q.get("feed") not in ("iex", "sip")
            or q.get("adjustment") not in ("raw", "split", "dividend", "all")
        ):
            self._error(422, 42210000, "invalid feed or adjustment")
            return 422
        if "symbols" not in q or "start" not in q:
            self._error(422, 42210000, "symbols and start are required")
            return 422
        syms = q["symbols"].split(",")
        lo = _iso(q["start"])
        hi = _iso(q["end"]) if "end" in q else datetime.now(UTC)
        limit = min(int(q.get("limit", 1000)), st.page_size)
        df = st.bars[tf].filter(
            pl.col("symbol").is_in(syms) & (pl.col("ts") >= lo) & (pl.col("ts") <= hi)
        )
        off = _offset(q.get("page_token"))
        page = df.slice(off, limit)
        nxt = _token(off + limit) if off + limit < df.height else None
        out: dict[str, list[dict[str, Any]]] = {}
        wire = page.select(
            "symbol",
            t=pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            o="open",
            h="high",
            l="low",
            c="close",
            v="volume",
            n="trade_count",
            vw="vwap",
        )
        for row in wire.iter_rows(named=True):
            sym = row.pop("symbol")
            out.setdefault(sym, []).append(row)
        self._send(200, {"bars": out, "next_page_token": nxt})
        return 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: StubState

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet on client hang-ups
        pass


class AlpacaStub:
    """Start the stub on 127.0.0.1 (port 0) in a background thread.

    Parameters
    ----------
    bars : dict, optional
        Timeframe name -> ground-truth bars (contract columns, ``volume`` may be integer).
    assets : sequence of dict, optional
        Asset JSON objects (``/v2/assets``).
    page_size : int
        Largest page the server returns, whatever ``limit`` asks for.
    """

    def __init__(
        self,
        bars: dict[str, pl.DataFrame] | None = None,
        assets: Sequence[dict[str, Any]] = (),
        page_size: int = 1000,
    ) -> None:
        self.state = StubState(page_size=page_size)
        for tf, df in (bars or {}).items():
            self.set_bars(tf, df)
        for a in assets:
            self.state.assets[a["symbol"]] = dict(a)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def set_bars(self, timeframe: str, df: pl.DataFrame) -> None:
        """Serve ``df`` as the truth for ``timeframe`` (sorted by symbol then time)."""
        self.state.bars[timeframe] = df.select(_TRUTH_COLS).sort("symbol", "ts")

    def start(self) -> AlpacaStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> AlpacaStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[RequestRecord]:
        with self.state.lock:
            return list(self.state.log)


# ---------------------------------------------------------------------- ground truth


def _walk(rng: np.random.Generator, n: int, start: float) -> dict[str, np.ndarray]:
    close = np.round(start * np.exp(np.cumsum(rng.normal(0, 0.002, n))), 4)
    open_ = np.round(np.r_[start, close[:-1]] * (1 + rng.normal(0, 0.0005, n)), 4)
    up = np.round(rng.uniform(0.0001, 0.003, n) * close, 4) + 0.0001
    dn = np.round(rng.uniform(0.0001, 0.003, n) * close, 4) + 0.0001
    high = np.round(np.maximum(open_, close) + up, 4)
    low = np.round(np.minimum(open_, close) - dn, 4)
    vwap = np.round(low + (high - low) * rng.uniform(0.2, 0.8, n), 4)
    return {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": rng.integers(1, 50_000, n),
        "vwap": vwap,
        "trade_count": rng.integers(1, 500, n),
    }


def make_truth(
    symbols: Sequence[str],
    timeframe: str,
    start: date,
    end: date,
    *,
    seed: int = 0,
    drop_fraction: float = 0.0,
) -> pl.DataFrame:
    """Return deterministic ground-truth bars on the XNYS calendar (crypto pairs: every bar, 24/7).

    ``drop_fraction`` removes that share of bars at random (IEX-like sparse minutes).
    """
    from workbench.data.calendar import bar_starts

    stamps = bar_starts(timeframe, start, end)
    frames = []
    for k, sym in enumerate(symbols):
        rng = np.random.default_rng([seed, k, sum(map(ord, sym))])
        if "/" in sym:
            step = {"1Min": "1m", "5Min": "5m", "15Min": "15m", "1Hour": "1h", "1Day": "1d"}[
                timeframe
            ]
            ts = pl.datetime_range(
                datetime(start.year, start.month, start.day, tzinfo=UTC),
                datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1),
                step,
                closed="left",
                time_unit="us",
                eager=True,
            )
        else:
            ts = stamps
        cols = _walk(rng, len(ts), 50.0 + 10 * k)
        df = pl.DataFrame({"symbol": sym, "ts": ts, **cols})
        if drop_fraction:
            keep = rng.uniform(0, 1, df.height) >= drop_fraction
            df = df.filter(pl.Series(keep))
        frames.append(df)
    return pl.concat(frames).select(_TRUTH_COLS).sort("symbol", "ts")


def asset_json(
    symbol: str,
    *,
    shortable: bool = True,
    easy_to_borrow: bool = True,
    fractionable: bool = True,
    marginable: bool = True,
    tradable: bool = True,
) -> dict[str, Any]:
    """Return an ``/v2/assets`` object as Alpaca sends it."""
    crypto = "/" in symbol
    return {
        "id": f"00000000-0000-4000-8000-{zlib.crc32(symbol.encode()):012d}",
        "class": "crypto" if crypto else "us_equity",
        "exchange": "CRYPTO" if crypto else "NASDAQ",
        "symbol": symbol,
        "name": f"{symbol} Inc.",
        "status": "active",
        "tradable": tradable,
        "marginable": marginable,
        "shortable": shortable,
        "easy_to_borrow": easy_to_borrow,
        "fractionable": fractionable,
        "attributes": [],
    }
