"""Build the configured source by name."""

from __future__ import annotations

from collections.abc import Sequence

from workbench.config import WorkbenchConfig
from workbench.data.sources.base import Source, get_source_factory
from workbench.errors import ConfigError


def make_source(
    cfg: WorkbenchConfig, name: str | None = None, *, paths: Sequence[str] | None = None
) -> Source:
    """Return the source called ``name`` (default ``cfg.data.source``) configured from ``cfg``."""
    name = name or cfg.data.source
    factory = get_source_factory(name)
    if name == "files":
        if not paths:
            raise ConfigError(
                "source 'files' needs file paths. Fix: pass --path data/import/*.csv (repeatable)."
            )
        return factory(list(paths))
    from_config = getattr(factory, "from_config", None)
    if from_config is None:
        raise ConfigError(
            f"source {name!r} cannot be built from config; construct it in code instead."
        )
    return from_config(cfg)
