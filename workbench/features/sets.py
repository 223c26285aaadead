"""Feature sets: resolve specs, build a feature frame from bars, and the live incremental engine.

A feature set is an ordered tuple of :class:`~workbench.config.FeatureSpec`. :func:`build_features`
turns bars plus a feature set into a frame keyed by ``(symbol, ts)`` with one Float64 column per
feature (struct indicators expand to ``<alias>_<field>``). A spec may read an earlier spec's alias,
e.g. a cross-sectional rank of a feature. :class:`FeatureEngine` serves a live session with the
same function over a bounded history tail.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from workbench.config import FeatureSpec, WorkbenchConfig
from workbench.data.schema import BAR_COLUMNS, KEY
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, SchemaError
from workbench.features._expr import did_you_mean
from workbench.features.registry import FeatureDef, get_feature

FEATURES_VERSION = 1  # bump to invalidate every stored feature frame


def default_alias(spec: FeatureSpec) -> str:
    """Return ``spec.alias`` or ``<name>[_<value>...]`` from the explicitly given parameters."""
    if spec.alias:
        return spec.alias
    parts = [spec.name, *(str(spec.params[k]) for k in sorted(spec.params))]
    return "_".join(parts)


@dataclass(frozen=True)
class ResolvedFeature:
    """One spec checked against the registry: its definition, full parameters and columns."""

    spec: FeatureSpec
    definition: FeatureDef
    params: Mapping[str, Any]
    alias: str

    @property
    def columns(self) -> tuple[str, ...]:
        """Return the output columns (``alias`` or ``alias_<field>`` for struct indicators)."""
        if self.definition.fields:
            return tuple(f"{self.alias}_{f}" for f in self.definition.fields)
        return (self.alias,)

    def expr(self) -> pl.Expr:
        """Return the indicator expression aliased to the spec's alias."""
        return self.definition.factory(**self.params).alias(self.alias)


@dataclass(frozen=True)
class FeatureSet:
    """A resolved, validated feature set."""

    name: str
    features: tuple[ResolvedFeature, ...]

    @property
    def specs(self) -> tuple[FeatureSpec, ...]:
        """Return the original specs."""
        return tuple(f.spec for f in self.features)

    @property
    def columns(self) -> list[str]:
        """Return the feature columns of :func:`build_features` output, in order."""
        return [c for f in self.features for c in f.columns]

    def definition(self) -> list[dict[str, Any]]:
        """Return the canonical definition (names, full parameters, aliases, formula versions)."""
        return [
            {
                "name": f.definition.name,
                "params": dict(sorted(f.params.items())),
                "alias": f.alias,
                "version": f.definition.version,
            }
            for f in self.features
        ]

    @cached_property
    def hash(self) -> str:
        """Return the sha256 of the canonical definition (the feature store's first key)."""
        payload = json.dumps(
            {"features_version": FEATURES_VERSION, "features": self.definition()},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def warmup(self, timeframe: str | Timeframe = "5Min") -> int:
        """Return the largest documented warm-up of the set, in bars of ``timeframe``."""
        tf = Timeframe.parse(timeframe)
        return max((int(f.definition.warmup(f.params, tf)) for f in self.features), default=0)


def resolve_feature_set(
    feature_set: str | Sequence[FeatureSpec | Mapping[str, Any]] | FeatureSet,
    cfg: WorkbenchConfig | None = None,
) -> FeatureSet:
    """Resolve a feature-set name or a sequence of specs into a validated :class:`FeatureSet`.

    Parameters
    ----------
    feature_set : str, sequence of FeatureSpec or mapping, or FeatureSet
        A key of ``cfg.feature_sets`` or the specs themselves.
    cfg : WorkbenchConfig, optional
        Config holding named feature sets (default: :func:`workbench.config.load_config`).

    Returns
    -------
    FeatureSet

    Raises
    ------
    ConfigError
        Unknown set, unknown indicator or parameter, bad parameter value, duplicate alias.
    """
    if isinstance(feature_set, FeatureSet):
        return feature_set
    if isinstance(feature_set, str):
        if cfg is None:
            from workbench.config import load_config

            cfg = load_config()
        if feature_set not in cfg.feature_sets:
            raise ConfigError(
                f"unknown feature set {feature_set!r}{did_you_mean(feature_set, cfg.feature_sets)}; "
                f"configured: {sorted(cfg.feature_sets)}. Fix: add it under feature_sets: in "
                "config/workbench.yaml or pass the specs directly."
            )
        name, specs = feature_set, cfg.feature_sets[feature_set]
    else:
        name = "custom"
        specs = tuple(s if isinstance(s, FeatureSpec) else FeatureSpec(**s) for s in feature_set)
    if not specs:
        raise ConfigError(f"feature set {name!r} is empty. Fix: list at least one feature.")
    resolved: list[ResolvedFeature] = []
    seen: dict[str, str] = {}
    for spec in specs:
        definition = get_feature(spec.name)
        params = definition.params(spec.params)
        definition.factory(**params)  # validate values now, not at build time
        rf = ResolvedFeature(spec, definition, params, default_alias(spec))
        for col in rf.columns:
            if col in BAR_COLUMNS:
                raise ConfigError(
                    f"feature alias {col!r} (feature {spec.name!r}) shadows a bar column. "
                    "Fix: choose another alias."
                )
            if col in seen:
                raise ConfigError(
                    f"feature set {name!r}: column {col!r} is produced twice ({seen[col]!r} and "
                    f"{spec.name!r}). Fix: give one of them a distinct alias."
                )
            seen[col] = spec.name
        resolved.append(rf)
    return FeatureSet(name, tuple(resolved))


def _is_sorted(df: pl.DataFrame) -> bool:
    """Return whether rows are sorted by (symbol, ts) with ts strictly increasing per symbol."""
    sym = df.get_column("symbol")
    if not sym.is_sorted():
        return False
    us = df.get_column("ts").to_physical().to_numpy()
    back = np.flatnonzero(us[1:] <= us[:-1]) + 1  # allowed only where a new symbol starts
    if back.size == 0:
        return True
    return bool((sym.gather(back) != sym.gather(back - 1)).all())


def ensure_sorted(df: pl.DataFrame) -> pl.DataFrame:
    """Return ``df`` sorted by ``(symbol, ts)`` (itself when already sorted).

    Raises
    ------
    SchemaError
        If ``(symbol, ts)`` is not unique.
    """
    if df.height < 2 or _is_sorted(df):
        return df
    out = df.sort(KEY)
    if not _is_sorted(out):
        raise SchemaError(
            "bars rejected: (symbol, ts) is not unique. Fix: deduplicate, e.g. "
            "df.unique(subset=['symbol', 'ts'], keep='last'), or run validate_bars first.",
            rule="unique (symbol, ts)",
        )
    return out


def _stages(fs: FeatureSet, columns: Sequence[str]) -> list[list[ResolvedFeature]]:
    """Group features into batches whose inputs all exist before the batch runs."""
    available = set(columns)
    produced: dict[str, str] = {}
    for f in fs.features:
        for col in f.columns:
            produced[col] = f.alias
        produced[f.alias] = f.alias
    stages: list[list[ResolvedFeature]] = [[]]
    pending: set[str] = set()
    for f in fs.features:
        roots = set(f.expr().meta.root_names())
        missing = sorted(r for r in roots if r not in available and r not in produced)
        if missing:
            col = missing[0]
            raise SchemaError(
                f"feature {f.alias!r} ({f.spec.name}) needs column {col!r}, which the bars do not "
                f"have{did_you_mean(col, available | set(produced))}. Fix: pass bars with that column "
                "or point the feature's parameter at an existing column.",
                rule="missing column",
            )
        if roots & pending:
            stages.append([])
            available |= pending
            pending = set()
        if roots - available - pending:
            later = sorted(roots - available - pending)
            raise ConfigError(
                f"feature {f.alias!r} reads {later} before they are computed. Fix: list the features "
                "it depends on earlier in the set."
            )
        stages[-1].append(f)
        pending |= {f.alias, *f.columns}
    return stages


def build_features(
    bars: pl.DataFrame,
    feature_set: str | Sequence[FeatureSpec | Mapping[str, Any]] | FeatureSet,
    cfg: WorkbenchConfig | None = None,
) -> pl.DataFrame:
    """Compute a feature set on bars.

    Each feature at row ``ts`` uses only the symbol's bars with ``ts' <= ts`` (cross-sectional
    features: every symbol's bars at ``ts``). The input is never modified; rows are returned in
    ``(symbol, ts)`` order, one per input bar, with nulls before each feature's first value.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars with at least ``symbol``, ``ts`` and the columns the features read. Unsorted input is
        sorted by ``(symbol, ts)``.
    feature_set : str, sequence of FeatureSpec, or FeatureSet
        A configured feature-set name or the specs.
    cfg : WorkbenchConfig, optional
        Config for named sets (default: :func:`workbench.config.load_config`).

    Returns
    -------
    pl.DataFrame
        ``symbol``, ``ts`` and one Float64 column per feature (see :attr:`FeatureSet.columns`).

    Raises
    ------
    SchemaError
        A required column is missing or ``(symbol, ts)`` is not unique.
    ConfigError
        The feature set does not resolve.
    """
    fs = resolve_feature_set(feature_set, cfg)
    if not isinstance(bars, pl.DataFrame):
        raise SchemaError(
            f"bars must be a polars DataFrame, got {type(bars).__name__}. "
            "Fix: convert with pl.from_pandas(df.reset_index()).",
            rule="not a frame",
        )
    missing = [k for k in KEY if k not in bars.columns]
    if missing:
        raise SchemaError(
            f"bars rejected: missing key column(s) {missing}; got {bars.columns}. "
            "Fix: pass bars in the bar contract (symbol, ts, ...).",
            rule="missing column",
        )
    stages = _stages(fs, bars.columns)
    frame = ensure_sorted(bars).lazy()
    for stage in stages:
        frame = frame.with_columns(f.expr() for f in stage)
        structs = [f for f in stage if f.definition.fields]
        if structs:
            frame = frame.with_columns(
                pl.col(f.alias).struct.field(field).alias(f"{f.alias}_{field}")
                for f in structs
                for field in f.definition.fields
            ).drop([f.alias for f in structs])
    out = frame.select(*KEY, *(pl.col(c).cast(pl.Float64) for c in fs.columns))
    return out.collect(engine="in-memory")


class FeatureEngine:
    """Incremental feature computation for a live session.

    Each :meth:`update` appends new closed bars to a per-symbol history tail, recomputes the
    feature set on tail + new bars with :func:`build_features`, and returns the rows of the new
    bars. The tail keeps ``warmup + 1`` bars per symbol (the set's documented warm-up), so a bar
    costs O(warm-up) and the values equal the batch computation over the full history: exactly
    for finite windows and to within the 1e-12 settling weight for recursive smoothers.

    Parameters
    ----------
    feature_set : str, sequence of FeatureSpec, or FeatureSet
        The set to compute.
    cfg : WorkbenchConfig, optional
        Config for named sets.
    timeframe : str or Timeframe
        Bar timeframe (sets the warm-up of session-anchored features).
    history : int, optional
        Bars kept per symbol; default ``warmup + 1``. Must be at least that.

    Notes
    -----
    Deliver each timestamp's cross-section in a single update: cross-sectional features of rows
    already returned are not revised.
    """

    def __init__(
        self,
        feature_set: str | Sequence[FeatureSpec | Mapping[str, Any]] | FeatureSet,
        cfg: WorkbenchConfig | None = None,
        *,
        timeframe: str | Timeframe = "5Min",
        history: int | None = None,
    ) -> None:
        self.feature_set = resolve_feature_set(feature_set, cfg)
        self.timeframe = Timeframe.parse(timeframe)
        need = self.feature_set.warmup(self.timeframe) + 1
        if history is not None and (
            isinstance(history, bool) or not isinstance(history, int) or history < need
        ):
            raise ConfigError(
                f"The 'history' parameter of FeatureEngine must be an int >= {need} (the feature "
                f"set's warm-up + 1). Got {history!r} instead."
            )
        self.history = history if history is not None else need
        self._tail: pl.DataFrame | None = None

    @property
    def tail(self) -> pl.DataFrame | None:
        """Return the bars currently kept as history (None before the first update)."""
        return self._tail

    def reset(self) -> None:
        """Forget all history."""
        self._tail = None

    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        """Add closed bars and return their feature rows.

        Parameters
        ----------
        bars : pl.DataFrame
            New bars (one or more per symbol), each strictly after the last bar already seen for
            its symbol. The first call may carry a long history to warm up from.

        Returns
        -------
        pl.DataFrame
            Feature rows for exactly the new bars, keyed and ordered by ``(symbol, ts)``.

        Raises
        ------
        SchemaError
            A bar is not after the last bar seen for its symbol, or columns differ from earlier
            updates.
        """
        new = ensure_sorted(bars)
        if self._tail is not None:
            if set(new.columns) != set(self._tail.columns):
                raise SchemaError(
                    f"FeatureEngine.update got columns {sorted(new.columns)}, earlier updates had "
                    f"{sorted(self._tail.columns)}. Fix: pass bars with the same columns every time.",
                    rule="columns",
                )
            new = new.select(self._tail.columns)
            last = self._tail.group_by("symbol").agg(pl.col("ts").max().alias("_last"))
            stale = new.join(last, on="symbol", how="inner").filter(pl.col("ts") <= pl.col("_last"))
            if stale.height:
                row = stale.row(0, named=True)
                raise SchemaError(
                    f"FeatureEngine.update got a bar for {row['symbol']!r} at {row['ts']} that is not "
                    f"after the last bar already seen ({row['_last']}). Fix: pass only new, closed bars "
                    "in time order (reset() to start over).",
                    rule="append only",
                )
            combined = pl.concat([self._tail, new], how="vertical_relaxed").sort(KEY)
        else:
            combined = new
        feats = build_features(combined, self.feature_set)
        out = feats.join(new.select(KEY), on=list(KEY), how="semi", maintain_order="left")
        n = pl.len().over("symbol").cast(pl.Int64)  # UInt32 would wrap below zero
        keep = pl.int_range(pl.len(), dtype=pl.Int64).over("symbol") >= n - self.history
        self._tail = combined.filter(keep)
        return out
