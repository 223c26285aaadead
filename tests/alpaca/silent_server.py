"""A dead endpoint for tests: a local TCP server that accepts every connection and never answers.

It reads what clients send without replying, so a test can count requests that reached it (the
first line of each HTTP request, e.g. ``POST /v2/orders HTTP/1.1``; a websocket upgrade is a
``GET``). Optionally it completes websocket upgrades and then stays silent (``upgrade=True``): the
market-data stream's SDK then waits for the server's ``connected`` frame forever.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SilentServer:
    """Accept on ``127.0.0.1``, read, never write. ``requests`` lists the request lines seen."""

    def __init__(self) -> None:
        self._srv = socket.socket()
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(64)
        self.port = self._srv.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def count(self, method: str, path: str) -> int:
        """How many requests ``method path`` (path without the query) reached the server."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.split(" ")[:1] == [method] and r.split(" ")[1].split("?")[0] == path
            )

    def _accept(self) -> None:
        self._srv.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
                self._held.append(conn)  # kept open, never answered
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.05)
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                text = line.decode("latin-1")
                if text.split(" ")[:1] and text.split(" ")[0] in (
                    "GET", "POST", "PATCH", "DELETE", "PUT",
                ):  # fmt: skip
                    with self._lock:
                        self.requests.append(text)

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            for c in self._held:
                c.close()
        self._srv.close()

    def __enter__(self) -> SilentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def silent_websocket() -> Iterator[str]:
    """A websocket server that completes the upgrade and then never sends a frame; yields its
    ``ws://`` URL."""
    from websockets.asyncio.server import serve

    ready = threading.Event()
    state: dict = {}

    async def handler(ws: object) -> None:
        await ws.wait_closed()  # type: ignore[attr-defined]

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = state["loop"].create_future()
        async with serve(handler, "127.0.0.1", 0) as server:
            state["port"] = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await state["stop"]

    t = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    t.start()
    ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{state['port']}/v2/iex"
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set_result, None)
        t.join(5)
