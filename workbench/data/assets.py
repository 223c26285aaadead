"""Asset facts the backtest and brokers obey: can it be shorted, bought in fractions, on margin."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AssetFacts:
    """Trading facts for one symbol (from config, the simulator, or the Alpaca assets endpoint)."""

    symbol: str
    shortable: bool = True
    easy_to_borrow: bool = True
    fractionable: bool = True
    marginable: bool = True
    tradable: bool = True


def facts_for(
    symbols: list[str] | tuple[str, ...], known: Mapping[str, AssetFacts] | None = None
) -> dict[str, AssetFacts]:
    """Return facts for every symbol, defaulting unknown symbols to fully permissive facts."""
    known = known or {}
    return {s: known.get(s, AssetFacts(s)) for s in symbols}
