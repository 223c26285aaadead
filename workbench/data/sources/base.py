"""The source protocol every market-data source implements, and a small registry by name."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import polars as pl

from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError


@runtime_checkable
class Source(Protocol):
    """A market-data source.

    ``fetch`` returns bars for ``symbols`` with ``start <= ts < end`` (half-open, UTC) that satisfy
    the bar contract (:func:`workbench.data.schema.validate_bars`). Sources never write; ingest does.
    ``provenance`` describes where the bars came from (source name, feed, adjustment, seed ...); it
    is stored beside the bars and logged with runs. It never contains secrets.
    """

    name: str

    def fetch(
        self, symbols: Sequence[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame: ...

    def provenance(self) -> dict[str, str]: ...


_REGISTRY: dict[str, Callable[..., Source]] = {}


def register_source(name: str) -> Callable[[Callable[..., Source]], Callable[..., Source]]:
    """Register a source factory under ``name`` (used by config ``data.source`` and ``wb ingest``)."""

    def deco(factory: Callable[..., Source]) -> Callable[..., Source]:
        _REGISTRY[name] = factory
        return factory

    return deco


def source_names() -> list[str]:
    """Return the registered source names."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_source_factory(name: str) -> Callable[..., Source]:
    """Return the factory registered as ``name``; unknown names get a did-you-mean error."""
    _load_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown data source {name!r}; registered: {sorted(_REGISTRY)}.{hint}")
    return _REGISTRY[name]


def _load_builtin() -> None:
    import importlib

    for mod in ("synthetic", "files", "alpaca"):
        try:
            importlib.import_module(f"workbench.data.sources.{mod}")
        except ModuleNotFoundError as exc:  # a source not written yet
            if exc.name != f"workbench.data.sources.{mod}":
                raise
