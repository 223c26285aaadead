"""Asset facts cached on disk with a time-to-live, shared by every process using the same file.

The cache is a small JSON file (default ``<store root>/_assets.json``)::

    {"version": 1, "assets": {"AAPL": {"fetched_at": 1732200000.0, "facts": {...}}}}

Entries older than ``ttl_seconds`` are fetched again; :meth:`AssetCache.clear` forgets everything.
Writes replace the file atomically under a lock, so concurrent processes never read half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.data.assets import AssetFacts
from workbench.errors import ConfigError

if TYPE_CHECKING:
    from workbench.config import WorkbenchConfig

log = logging.getLogger(__name__)

_VERSION = 1
BULK_THRESHOLD = 25  # more missing symbols than this: one /v2/assets call instead of one per symbol


class AssetCache:
    """Asset facts with a TTL, persisted across processes.

    Parameters
    ----------
    path : str or Path
        JSON file of the cache (created on first write).
    fetch_one : callable
        ``symbol -> AssetFacts`` (e.g. :meth:`AlpacaAssets.get`).
    fetch_all : callable, optional
        ``() -> list[AssetFacts]`` for bulk refreshes (e.g. :meth:`AlpacaAssets.all`).
    ttl_seconds : float
        Age after which an entry is fetched again (0: always fetch).
    clock : callable
        Epoch seconds (tests inject a fake clock).
    """

    def __init__(
        self,
        path: str | Path,
        fetch_one: Callable[[str], AssetFacts],
        fetch_all: Callable[[], list[AssetFacts]] | None = None,
        *,
        ttl_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_seconds < 0:
            raise ConfigError(
                f"The 'ttl_seconds' parameter of AssetCache must be >= 0. Got {ttl_seconds!r} instead."
            )
        self.path = Path(path)
        self.ttl_seconds = float(ttl_seconds)
        self._fetch_one = fetch_one
        self._fetch_all = fetch_all
        self._clock = clock
        self.fetches = 0  # remote calls made by this instance

    @classmethod
    def from_config(cls, cfg: WorkbenchConfig, path: str | Path | None = None) -> AssetCache:
        """Return a cache over Alpaca's assets endpoint configured from ``cfg.alpaca``.

        Parameters
        ----------
        cfg : WorkbenchConfig
        path : str or Path, optional
            Cache file (default ``<store root>/_assets.json``).

        Raises
        ------
        CredentialsError
            If the Alpaca keys are not in the environment.
        """
        from workbench.data.sources._alpaca_assets import AlpacaAssets

        api = AlpacaAssets.from_config(cfg)
        target = Path(path) if path is not None else cfg.path(cfg.store.root) / "_assets.json"
        return cls(target, api.get, api.all, ttl_seconds=cfg.alpaca.asset_cache_ttl_seconds)

    def __repr__(self) -> str:
        return f"AssetCache({str(self.path)!r}, ttl_seconds={self.ttl_seconds:g})"

    # ------------------------------------------------------------------ file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("asset cache %s unreadable (%s); starting empty", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return {}
        return dict(data.get("assets", {}))

    def _save(self, assets: dict[str, dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"version": _VERSION, "assets": assets}, sort_keys=True))
        os.replace(tmp, self.path)

    def _fresh(self, entry: dict[str, Any] | None, now: float) -> bool:
        return entry is not None and now - float(entry["fetched_at"]) < self.ttl_seconds

    # ------------------------------------------------------------------ API

    def get(self, symbol: str) -> AssetFacts:
        """Return the facts of ``symbol``, from the cache when younger than the TTL."""
        return self.get_many([symbol])[symbol]

    def get_many(self, symbols: Sequence[str]) -> dict[str, AssetFacts]:
        """Return facts for every symbol, fetching only the missing or expired ones.

        More than ``BULK_THRESHOLD`` missing symbols are fetched with one bulk call when
        ``fetch_all`` was given; symbols the bulk answer lacks are fetched one by one.
        """
        syms = list(dict.fromkeys(symbols))
        with self._locked():
            assets = self._load()
            now = self._clock()
            stale = [s for s in syms if not self._fresh(assets.get(s), now)]
            if stale:
                if len(stale) > BULK_THRESHOLD and self._fetch_all is not None:
                    self.fetches += 1
                    for f in self._fetch_all():
                        assets[f.symbol] = {"fetched_at": now, "facts": dataclasses.asdict(f)}
                for s in stale:
                    if not self._fresh(assets.get(s), now):
                        self.fetches += 1
                        f = self._fetch_one(s)
                        assets[s] = {"fetched_at": now, "facts": dataclasses.asdict(f)}
                self._save(assets)
        return {s: AssetFacts(**assets[s]["facts"]) for s in syms}

    def refresh_all(self) -> int:
        """Fetch every asset in one bulk call, replace the cache and return how many were stored."""
        if self._fetch_all is None:
            raise ConfigError(
                "AssetCache.refresh_all needs fetch_all. Fix: build the cache with "
                "AssetCache.from_config(cfg) or pass fetch_all=AlpacaAssets(...).all."
            )
        facts = self._fetch_all()
        self.fetches += 1
        now = self._clock()
        with self._locked():
            self._save(
                {f.symbol: {"fetched_at": now, "facts": dataclasses.asdict(f)} for f in facts}
            )
        return len(facts)

    def age(self, symbol: str) -> float | None:
        """Return the seconds since ``symbol`` was fetched, or None if it is not cached."""
        entry = self._load().get(symbol)
        return None if entry is None else self._clock() - float(entry["fetched_at"])

    def clear(self) -> None:
        """Forget every cached asset (the next lookup fetches again)."""
        with self._locked(), contextlib.suppress(FileNotFoundError):
            self.path.unlink()
