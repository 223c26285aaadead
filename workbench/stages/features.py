"""Features stage: feature set + label from stored bars, IC diagnostics, the feature table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import polars as pl

from workbench.config import WorkbenchConfig
from workbench.data.ingest import to_window
from workbench.data.schema import KEY
from workbench.data.store import BarStore, frame_fingerprint
from workbench.features.diagnostics import diagnostics_figures, ic_summary
from workbench.features.sets import resolve_feature_set
from workbench.features.store import FeatureStore
from workbench.labels import build_labels


@dataclass
class FeaturesResult:
    """The feature table (features, label, t1) and what the notebook shows."""

    table: pl.DataFrame
    path: Path
    features: list[str]
    data_fingerprint: str
    ic_table: pl.DataFrame
    figures: dict[str, go.Figure]
    metrics: dict[str, float]


def run_features(
    cfg: WorkbenchConfig,
    *,
    store_root: str,
    symbols: list[str],
    timeframe: str,
    start: str,
    end: str,
    strategy: str,
    out_dir: Path,
    max_decile_figures: int = 3,
) -> FeaturesResult:
    """Build the strategy's features (cached by definition hash and data fingerprint) and label.

    Rows keep every bar whose features are all defined (warm-up rows are dropped); the label and
    its end time ``t1`` are null where the outcome is unknown or the label does not apply.
    """
    strat = cfg.strategy(strategy)
    lo, hi = to_window(start, end)
    bars = BarStore(cfg.path(store_root), cfg.store.partition).read(symbols, timeframe, lo, hi)
    fp = frame_fingerprint(bars)
    fs = resolve_feature_set(strat.feature_set, cfg)
    fstore = FeatureStore.from_config(cfg)
    if cfg.dask.executor == "dask":  # per-symbol features fanned out over Dask workers
        from workbench.features.distributed import get_or_compute_on_dask

        feats = get_or_compute_on_dask(fstore, bars, fs, fp, cfg)
    else:
        feats = fstore.get_or_compute(bars, fs, fp, cfg)
    labels = build_labels(bars, strat.label)
    cols = list(fs.columns)
    table = (
        feats.drop_nulls(cols)
        .join(labels.select(*KEY, "label", "t1"), on=list(KEY), how="left")
        .sort(list(KEY))
    )
    path = out_dir / "features.parquet"
    table.write_parquet(path)
    summary = ic_summary(table.select(*KEY, *cols), table.select(*KEY, "label"), columns=cols)
    top = (
        summary.sort(pl.col("rank_ic").abs(), descending=True)["feature"]
        .head(max_decile_figures)
        .to_list()
    )
    figs = diagnostics_figures(table.select(*KEY, *cols), table.select(*KEY, "label"), columns=cols)
    figs = {
        k: v
        for k, v in figs.items()
        if not k.startswith("deciles_") or k.removeprefix("deciles_") in top
    }
    metrics = {
        "rows": float(table.height),
        "labelled_rows": float(table["label"].is_not_null().sum()),
        "features": float(len(cols)),
        "feature_cache_hit": float(fstore.hits),
    }
    return FeaturesResult(table, path, cols, fp, summary, figs, metrics)
