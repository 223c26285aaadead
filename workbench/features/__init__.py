"""Features: polars indicator expressions, a registry, feature sets, a feature store, diagnostics.

Public entry points::

    from workbench.features import build_features, FeatureEngine, FeatureStore
    feats = build_features(bars, "intraday_mean_reversion")          # batch, keyed by (symbol, ts)
    engine = FeatureEngine("intraday_mean_reversion"); engine.update(new_bars)   # live
    FeatureStore.from_config(cfg).get_or_compute(bars, name, fingerprint)       # cached

Indicator factories live in :mod:`workbench.features.indicators` (by family), the registry in
:mod:`workbench.features.registry`, the look-ahead guard in :mod:`workbench.features.lookahead`,
figures in :mod:`workbench.features.diagnostics`.
"""

from workbench.features.registry import (
    FeatureDef,
    feature_names,
    get_feature,
    register_feature,
    unregister_feature,
)
from workbench.features.sets import (
    FeatureEngine,
    FeatureSet,
    build_features,
    default_alias,
    ensure_sorted,
    resolve_feature_set,
)
from workbench.features.store import FeatureStore

__all__ = [
    "FeatureDef",
    "FeatureEngine",
    "FeatureSet",
    "FeatureStore",
    "build_features",
    "default_alias",
    "ensure_sorted",
    "feature_names",
    "get_feature",
    "register_feature",
    "resolve_feature_set",
    "unregister_feature",
]
