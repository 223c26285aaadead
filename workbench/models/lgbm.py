"""LightGBM training on a feature table with a chronological, purged train/validation split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import lightgbm as lgb
import polars as pl

from workbench.errors import SchemaError

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "n_estimators": 200,
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_child_samples": 200,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "verbose": -1,
    "n_jobs": 1,
}


@dataclass(frozen=True)
class Split:
    """A chronological split: train rows end (by label end time ``t1``) before validation starts."""

    train: pl.DataFrame
    valid: pl.DataFrame
    split_ts: datetime
    purged: int


def chronological_split(
    table: pl.DataFrame, *, train_frac: float = 0.6, label: str = "label"
) -> Split:
    """Split a feature table by time, purging training rows whose label ends after the split.

    Rows with ``ts < split_ts`` and ``t1 < split_ts`` train; rows with ``ts >= split_ts`` validate.
    Training rows whose outcome is only known after ``split_ts`` are dropped (purged), so no
    training label overlaps the validation period.
    """
    if not 0 < train_frac < 1:
        raise SchemaError(
            f"The 'train_frac' parameter must be in (0, 1). Got {train_frac} instead."
        )
    for col in ("ts", "t1", label):
        if col not in table.columns:
            raise SchemaError(
                f"feature table has no {col!r} column; build it with workbench.stages.features."
            )
    data = table.filter(pl.col(label).is_not_null() & pl.col(label).is_finite())
    stamps = data["ts"].unique().sort()
    if stamps.len() < 10:
        raise SchemaError(f"only {stamps.len()} timestamps with labels; need at least 10 to split.")
    split_ts = stamps[int(stamps.len() * train_frac)]
    before = data.filter(pl.col("ts") < split_ts)
    train = before.filter(pl.col("t1") < split_ts)
    valid = data.filter(pl.col("ts") >= split_ts)
    return Split(train, valid, split_ts, before.height - train.height)


def fit_lgbm(
    train: pl.DataFrame,
    features: Sequence[str],
    *,
    label: str = "label",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> lgb.LGBMRegressor:
    """Fit a LightGBM regressor of ``label`` on ``features`` (pandas at the LightGBM edge)."""
    p = {**DEFAULT_PARAMS, **(params or {}), "random_state": seed}
    model = lgb.LGBMRegressor(**p)
    x = train.select(features).to_pandas()
    model.fit(x, train[label].to_numpy())
    return model


def predict(model: lgb.LGBMRegressor, table: pl.DataFrame, features: Sequence[str]) -> pl.DataFrame:
    """Return (symbol, ts, prediction) for every row of ``table``."""
    pred = model.predict(table.select(features).to_pandas())
    return table.select("symbol", "ts").with_columns(prediction=pl.Series(pred, dtype=pl.Float64))


def importance_frame(model: lgb.LGBMRegressor, features: Sequence[str]) -> pl.DataFrame:
    """Return gain and split importances per feature, largest gain first."""
    booster = model.booster_
    return pl.DataFrame(
        {
            "feature": list(features),
            "gain": booster.feature_importance("gain").astype(float),
            "split": booster.feature_importance("split").astype(float),
        }
    ).sort("gain", descending=True)
