"""The indicator registry: name -> factory, default parameters and documented warm-up.

A factory is a function of keyword arguments that returns a polars expression. Registering it
makes it usable from config (``FeatureSpec(name=...)``) and puts it under the look-ahead guard in
the test suite, which iterates :func:`feature_names`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import polars as pl

from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError
from workbench.features._expr import did_you_mean

Warmup = Callable[[Mapping[str, Any], Timeframe], int]
Kind = Literal["series", "cross_section"]


@dataclass(frozen=True)
class FeatureDef:
    """A registered indicator.

    Attributes
    ----------
    name : str
        Registry name (the ``name`` of a ``FeatureSpec``).
    factory : callable
        Keyword-only function returning a ``pl.Expr``.
    defaults : mapping
        Default keyword arguments, read from the factory's signature.
    warmup : callable
        ``warmup(params, timeframe) -> int``: bars of history after which the value no longer
        depends on anything earlier (exactly for finite windows, to a residual weight of 1e-12 for
        recursive smoothers).
    kind : {'series', 'cross_section'}
        Per-symbol time series, or computed across symbols at each timestamp.
    fields : tuple of str
        Struct fields for multi-output indicators (empty for a single column).
    version : int
        Bump when the formula changes; part of every feature-set hash.
    """

    name: str
    factory: Callable[..., pl.Expr]
    defaults: Mapping[str, Any]
    warmup: Warmup
    kind: Kind = "series"
    fields: tuple[str, ...] = ()
    version: int = 1
    summary: str = field(default="", compare=False)

    def params(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return the defaults overlaid with ``given``; unknown keys raise with the valid ones."""
        given = dict(given or {})
        unknown = [k for k in given if k not in self.defaults]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"feature {self.name!r} has no parameter {key!r}{did_you_mean(key, self.defaults)}. "
                f"Valid parameters: {sorted(self.defaults)}."
            )
        for key, value in given.items():  # 2 and 2.0 are one parameter value (one hash)
            if (
                isinstance(self.defaults[key], float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                given[key] = float(value)
        return {**self.defaults, **given}

    def expr(self, given: Mapping[str, Any] | None = None) -> pl.Expr:
        """Return the expression for ``given`` parameters (defaults fill the rest)."""
        return self.factory(**self.params(given))

    def warmup_bars(
        self, given: Mapping[str, Any] | None = None, timeframe: str | Timeframe = "5Min"
    ) -> int:
        """Return the documented warm-up in bars for ``given`` parameters and ``timeframe``."""
        return int(self.warmup(self.params(given), Timeframe.parse(timeframe)))


_REGISTRY: dict[str, FeatureDef] = {}


def register_feature(
    name: str | None = None,
    *,
    warmup: Warmup | int,
    kind: Kind = "series",
    fields: tuple[str, ...] = (),
    version: int = 1,
) -> Callable[[Callable[..., pl.Expr]], Callable[..., pl.Expr]]:
    """Register an indicator factory under ``name`` (default: the function's name).

    Parameters
    ----------
    name : str, optional
        Registry name.
    warmup : callable or int
        ``warmup(params, timeframe) -> int`` bars, or a constant.
    kind : {'series', 'cross_section'}
        How the feature is evaluated.
    fields : tuple of str
        Struct fields if the expression returns a struct.
    version : int
        Formula version, part of feature-set hashes.

    Returns
    -------
    callable
        A decorator that registers and returns the factory unchanged.
    """

    def deco(fn: Callable[..., pl.Expr]) -> Callable[..., pl.Expr]:
        key = name or fn.__name__
        sig = inspect.signature(fn)
        bad = [p.name for p in sig.parameters.values() if p.default is inspect.Parameter.empty]
        if bad:
            raise TypeError(
                f"feature factory {key!r}: every parameter needs a default; missing {bad}"
            )
        defaults = MappingProxyType({p.name: p.default for p in sig.parameters.values()})
        wu: Warmup = warmup if callable(warmup) else (lambda _p, _tf, n=int(warmup): n)
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = FeatureDef(
            name=key,
            factory=fn,
            defaults=defaults,
            warmup=wu,
            kind=kind,
            fields=fields,
            version=version,
            summary=doc[0] if doc else "",
        )
        return fn

    return deco


def unregister_feature(name: str) -> None:
    """Remove ``name`` from the registry (for temporary features in tests and notebooks)."""
    _REGISTRY.pop(name, None)


def get_feature(name: str) -> FeatureDef:
    """Return the registered feature ``name``; unknown names raise with a suggestion."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown feature {name!r}{did_you_mean(name, _REGISTRY)}. "
            f"Registered features: {sorted(_REGISTRY)}."
        ) from None


def feature_names() -> list[str]:
    """Return the names of every registered feature, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def _load_builtins() -> None:
    import workbench.features.indicators  # noqa: F401  (registers on import)
