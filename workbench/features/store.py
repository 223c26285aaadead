"""Feature store: parquet frames keyed by (feature-set definition hash, input data fingerprint).

Layout under ``root``::

    <definition hash>/definition.json          the feature set that produced the frames
    <definition hash>/<data fingerprint>.parquet

A frame is computed once per key; unchanged inputs are read back, never recomputed. Writes go to a
temporary file in the same folder and are moved into place with ``os.replace``, so readers never
see a partial file and concurrent writers of the same key leave one complete copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from workbench.config import FeatureSpec, WorkbenchConfig
from workbench.data.schema import KEY
from workbench.errors import StoreError
from workbench.features.sets import FeatureSet, build_features, resolve_feature_set

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
FeatureSetLike = str | Sequence[FeatureSpec | Mapping[str, Any]] | FeatureSet


def _atomic_write(target: Path, write: Any) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class FeatureStore:
    """Parquet cache of feature frames.

    Parameters
    ----------
    root : str or Path
        Folder of the store (created on first write).

    Attributes
    ----------
    hits, misses : int
        Counts of :meth:`get_or_compute` calls served from disk and computed.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"FeatureStore(root={str(self.root)!r})"

    @classmethod
    def from_config(cls, cfg: WorkbenchConfig) -> FeatureStore:
        """Return the store at ``cfg.store.features_root`` (relative to the project root)."""
        return cls(cfg.path(cfg.store.features_root))

    @staticmethod
    def _key(fingerprint: str) -> str:
        if not isinstance(fingerprint, str) or not fingerprint:
            raise StoreError(
                f"The 'fingerprint' parameter of FeatureStore must be a non-empty str. Got "
                f"{fingerprint!r} instead. Fix: pass BarStore.fingerprint(...) of the input bars."
            )
        if _SAFE.match(fingerprint):
            return fingerprint
        return hashlib.sha256(fingerprint.encode()).hexdigest()

    def path(
        self, feature_set: FeatureSetLike, fingerprint: str, cfg: WorkbenchConfig | None = None
    ) -> Path:
        """Return the parquet path of a (feature set, fingerprint) key."""
        fs = resolve_feature_set(feature_set, cfg)
        return self.root / fs.hash / f"{self._key(fingerprint)}.parquet"

    def contains(
        self, feature_set: FeatureSetLike, fingerprint: str, cfg: WorkbenchConfig | None = None
    ) -> bool:
        """Return whether a frame is stored for the key."""
        return self.path(feature_set, fingerprint, cfg).is_file()

    def get(
        self, feature_set: FeatureSetLike, fingerprint: str, cfg: WorkbenchConfig | None = None
    ) -> pl.DataFrame | None:
        """Return the stored frame for the key, or None if absent or unreadable."""
        fs = resolve_feature_set(feature_set, cfg)
        path = self.root / fs.hash / f"{self._key(fingerprint)}.parquet"
        if not path.is_file():
            return None
        try:
            frame = pl.read_parquet(path)
        except Exception:  # a foreign or damaged file is recomputed, not trusted
            return None
        if frame.columns != [*KEY, *fs.columns]:
            return None
        return frame

    def put(
        self,
        frame: pl.DataFrame,
        feature_set: FeatureSetLike,
        fingerprint: str,
        cfg: WorkbenchConfig | None = None,
    ) -> Path:
        """Store ``frame`` under the key atomically and return its path.

        Raises
        ------
        StoreError
            If the frame's columns are not ``symbol, ts`` plus the feature set's columns.
        """
        fs = resolve_feature_set(feature_set, cfg)
        want = [*KEY, *fs.columns]
        if frame.columns != want:
            raise StoreError(
                f"feature frame has columns {frame.columns}, expected {want} for feature set "
                f"{fs.name!r}. Fix: store the output of build_features for this set."
            )
        folder = self.root / fs.hash
        folder.mkdir(parents=True, exist_ok=True)
        definition = folder / "definition.json"
        if not definition.is_file():
            text = json.dumps(
                {"name": fs.name, "hash": fs.hash, "features": fs.definition()},
                indent=2,
                default=str,
            )
            _atomic_write(definition, lambda p: p.write_text(text))
        target = folder / f"{self._key(fingerprint)}.parquet"
        _atomic_write(target, lambda p: frame.write_parquet(p, compression="zstd", statistics=True))
        return target

    def get_or_compute(
        self,
        bars: pl.DataFrame,
        feature_set: FeatureSetLike,
        fingerprint: str | None = None,
        cfg: WorkbenchConfig | None = None,
    ) -> pl.DataFrame:
        """Return the features of ``bars``, from the store if the key is present.

        Parameters
        ----------
        bars : pl.DataFrame
            Input bars.
        feature_set : str, sequence of FeatureSpec, or FeatureSet
            The set to compute.
        fingerprint : str, optional
            Fingerprint of ``bars`` as the bar store computes it (``BarStore.fingerprint``);
            default: :func:`workbench.data.store.frame_fingerprint` of ``bars``.
        cfg : WorkbenchConfig, optional
            Config for named sets.

        Returns
        -------
        pl.DataFrame
            The output of :func:`build_features` for ``bars``.
        """
        fs = resolve_feature_set(feature_set, cfg)
        if fingerprint is None:
            from workbench.data.store import frame_fingerprint

            fingerprint = frame_fingerprint(bars)
        cached = self.get(fs, fingerprint)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        frame = build_features(bars, fs)
        self.put(frame, fs, fingerprint)
        return frame

    def entries(self) -> pl.DataFrame:
        """Return one row per stored frame: definition hash, set name, fingerprint, bytes."""
        rows = []
        for definition in sorted(self.root.glob("*/definition.json")):
            meta = json.loads(definition.read_text())
            for f in sorted(definition.parent.glob("*.parquet")):
                rows.append(
                    {
                        "definition_hash": meta.get("hash", definition.parent.name),
                        "feature_set": meta.get("name", ""),
                        "fingerprint": f.stem,
                        "bytes": f.stat().st_size,
                    }
                )
        schema = {
            "definition_hash": pl.String,
            "feature_set": pl.String,
            "fingerprint": pl.String,
            "bytes": pl.Int64,
        }
        return pl.DataFrame(rows, schema=schema)
