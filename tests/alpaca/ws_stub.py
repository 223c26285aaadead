"""A msgpack websocket stub of Alpaca's market-data stream (``/v2/iex``), for stream tests.

Handshake as the real server: ``[{"T":"success","msg":"connected"}]``, then the client's
``{"action":"auth",...}`` answered with ``authenticated`` (or an error), then the client's
subscribe answered with a ``subscription`` frame. Data frames follow, ``t`` packed as a msgpack
Timestamp. The stub replays a list of trades to subscribers, can drop the first connection after
N messages (the client must reconnect and resume) and can go silent (for staleness tests).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .stub_server import KEY_ID, SECRET


def trade_msg(symbol: str, ts: datetime, price: float, size: float, i: int) -> dict[str, Any]:
    """Return a trade frame as Alpaca sends it (``t`` a msgpack Timestamp)."""
    return {
        "T": "t",
        "S": symbol,
        "i": i,
        "x": "V",
        "p": price,
        "s": size,
        "t": msgpack.Timestamp.from_datetime(ts),
        "c": ["@"],
        "z": "C",
    }


class StreamStub:
    """Serve ``messages`` (trade frames) on ``ws://127.0.0.1:<port>/v2/iex``.

    Parameters
    ----------
    messages : sequence of dict
        Frames to replay, in order, across connections (a reconnect resumes where it stopped).
    drop_after : int, optional
        Abort the first connection after sending this many frames.
    batch : int
        Frames per websocket message.
    """

    def __init__(
        self, messages: Sequence[dict[str, Any]] = (), drop_after: int | None = None, batch: int = 7
    ) -> None:
        self.messages = list(messages)
        self.drop_after = drop_after
        self.batch = batch
        self.sent = 0
        self.connections = 0
        self.auth_failures = 0
        self.subscriptions: list[dict[str, Any]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2/iex"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        try:
            await ws.send(msgpack.packb([{"T": "success", "msg": "connected"}]))
            auth = msgpack.unpackb(await ws.recv())
            if auth.get("key") != KEY_ID or auth.get("secret") != SECRET:
                self.auth_failures += 1
                await ws.send(msgpack.packb([{"T": "error", "code": 402, "msg": "auth failed"}]))
                return
            await ws.send(msgpack.packb([{"T": "success", "msg": "authenticated"}]))
            sub = msgpack.unpackb(await ws.recv())
            self.subscriptions.append(sub)
            ack = {"T": "subscription"}
            ack.update({k: v for k, v in sub.items() if k != "action"})
            await ws.send(msgpack.packb([ack]))
            wanted = set(sub.get("trades", []))
            sent_here = 0
            while self.sent < len(self.messages):
                if first and self.drop_after is not None and sent_here >= self.drop_after:
                    await ws.close(code=1011, reason="stub drop")
                    return
                chunk = self.messages[self.sent : self.sent + self.batch]
                if first and self.drop_after is not None:
                    chunk = chunk[: self.drop_after - sent_here]
                frames = [m for m in chunk if m["S"] in wanted or "*" in wanted]
                if frames:
                    await ws.send(msgpack.packb(frames, datetime=False))
                self.sent += len(chunk)
                sent_here += len(chunk)
                await asyncio.sleep(0)
            await ws.wait_closed()
        except ConnectionClosed:
            pass

    def start(self) -> StreamStub:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def __enter__(self) -> StreamStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
