"""Feature computation fanned out over symbols on Dask, equal to :func:`build_features` exactly.

>>> with open_client(cfg.dask) as client:  # doctest: +SKIP
...     feats = build_features_on_dask(bars, "intraday_reversal", cfg, client=client)

A per-symbol (``series``) feature at a row reads only that symbol's past bars, so the symbols can
be cut into chunks and each chunk computed on a worker with the very same
:func:`~workbench.features.sets.build_features`; the chunks are put back in ``(symbol, ts)``
order. Cross-sectional features (``kind="cross_section"``), and every feature that reads one,
need all symbols at a timestamp: they are computed afterwards in this process on the gathered
per-symbol columns. The result is the frame :func:`build_features` returns, value for value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from workbench.config import FeatureSpec, WorkbenchConfig
from workbench.data.schema import KEY
from workbench.features.sets import (
    FeatureSet,
    ResolvedFeature,
    build_features,
    ensure_sorted,
    resolve_feature_set,
)


def split_by_symbol(fs: FeatureSet, columns: Sequence[str]) -> tuple[list[ResolvedFeature], list]:
    """Return ``(per_symbol, rest)``: the features computable on one symbol's bars, and the others.

    A feature is per-symbol when it is a ``series`` feature whose inputs are bar columns or
    outputs of per-symbol features listed before it.
    """
    local = set(columns)
    per_symbol: list[ResolvedFeature] = []
    rest: list[ResolvedFeature] = []
    for f in fs.features:
        roots = set(f.expr().meta.root_names())
        if f.definition.kind == "series" and roots <= local:
            per_symbol.append(f)
            local |= {f.alias, *f.columns}
        else:
            rest.append(f)
    return per_symbol, rest


def _chunks(symbols: list[str], n: int) -> list[list[str]]:
    n = max(1, min(n, len(symbols)))
    size, extra = divmod(len(symbols), n)
    out, i = [], 0
    for k in range(n):
        j = i + size + (k < extra)
        out.append(symbols[i:j])
        i = j
    return out


def _compute_chunk(bars: pl.DataFrame, specs: list[FeatureSpec]) -> pl.DataFrame:
    """One Dask task: the per-symbol features of one chunk of symbols."""
    return build_features(bars, specs)


def build_features_on_dask(
    bars: pl.DataFrame,
    feature_set: str | Sequence[FeatureSpec | Mapping[str, Any]] | FeatureSet,
    cfg: WorkbenchConfig | None = None,
    *,
    client: Any,
    partitions: int | None = None,
) -> pl.DataFrame:
    """Compute a feature set with its per-symbol features on Dask workers.

    Parameters
    ----------
    bars, feature_set, cfg
        As for :func:`~workbench.features.sets.build_features`.
    client : distributed.Client
        Where the chunks run (:func:`workbench.cluster.open_client`).
    partitions : int, optional
        Symbol chunks (default: twice the cluster's threads).

    Returns
    -------
    pl.DataFrame
        Exactly what ``build_features(bars, feature_set, cfg)`` returns.
    """
    from workbench.cluster import n_threads

    fs = resolve_feature_set(feature_set, cfg)
    if not isinstance(bars, pl.DataFrame) or any(k not in bars.columns for k in KEY):
        return build_features(bars, fs)  # the same errors as the in-process path
    bars = ensure_sorted(bars)
    per_symbol, rest = split_by_symbol(fs, bars.columns)
    symbols = bars["symbol"].unique(maintain_order=True).to_list()
    if not per_symbol or len(symbols) < 2:
        return build_features(bars, fs)
    specs = [f.spec for f in per_symbol]
    chunks = _chunks(symbols, partitions or 2 * n_threads(client))
    # bars are sorted by (symbol, ts): each chunk is one contiguous slice
    counts = bars.group_by("symbol", maintain_order=True).len()["len"].to_list()
    offsets, pos = [], 0
    for c in counts:
        offsets.append(pos)
        pos += c
    slices, k = [], 0
    for chunk in chunks:
        start = offsets[k]
        k += len(chunk)
        end = offsets[k] if k < len(offsets) else bars.height
        slices.append(bars.slice(start, end - start))
    futures = client.map(_compute_chunk, slices, specs=specs, pure=False)
    parts = client.gather(futures)
    out = pl.concat(parts, how="vertical")
    if rest:
        cols = [c for f in per_symbol for c in f.columns]
        wide = bars.with_columns(out.select(cols))  # same rows, same order
        tail = build_features(wide, [f.spec for f in rest])
        out = out.with_columns(tail.drop(KEY))
    return out.select(*KEY, *fs.columns)


def get_or_compute_on_dask(
    store: Any, bars: pl.DataFrame, fs: FeatureSet, fingerprint: str, cfg: WorkbenchConfig
) -> pl.DataFrame:
    """:meth:`FeatureStore.get_or_compute`, computing a miss on ``cfg.dask``'s cluster."""
    from workbench.cluster import open_client

    cached = store.get(fs, fingerprint)
    if cached is not None:
        store.hits += 1
        return cached
    store.misses += 1
    with open_client(cfg.dask) as client:
        frame = build_features_on_dask(bars, fs, client=client)
    store.put(frame, fs, fingerprint)
    return frame
