"""A throwaway PostgreSQL cluster for tests: initdb in a temporary folder, a server on 127.0.0.1 on
a free port, a fresh database per test, stopped and removed at the end.

PostgreSQL refuses to run as root; as root (containers, CI) the cluster is run as ``nobody``
through ``runuser``. Without the PostgreSQL binaries the tests that need it are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_BIN = ("initdb", "pg_ctl", "postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster; :meth:`database` gives a new, empty database URL (SQLAlchemy, psycopg 3)."""

    def __init__(self) -> None:
        missing = [b for b in _BIN if shutil.which(b) is None]
        if missing:
            raise RuntimeError(f"PostgreSQL binaries not found: {missing}")
        self.root = Path(tempfile.mkdtemp(prefix="wb-pg-"))
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root and runuser is missing")
            shutil.chown(self.root, "nobody")
            os.chmod(self.root, 0o700)
            self._as = ["runuser", "-u", "nobody", "--"]
        self.data = self.root / "data"
        self._n = itertools.count()
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "wb", "--no-sync"])
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=50 -c shared_buffers=16MB"
        )
        self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                   "-w", "-t", "60", "start"])  # fmt: skip

    def _run(self, cmd: list[str]) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True, timeout=120)

    def database(self) -> str:
        import psycopg

        name = f"t{next(self._n)}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="wb", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://wb@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster, SIGKILL after 5 s), then remove it all."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
