"""Features: polars indicator expressions, a registry, feature sets, a feature store, diagnostics."""

from workbench.features.sets import (
    FeatureEngine,
    FeatureSet,
    build_features,
    default_alias,
    resolve_feature_set,
)

__all__ = [
    "FeatureEngine",
    "FeatureSet",
    "build_features",
    "default_alias",
    "resolve_feature_set",
]
