"""LightGBM at the frame edge: chronological purged split, fitting, and frame-to-matrix conversion."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from workbench.errors import SchemaError

if TYPE_CHECKING:
    from workbench.models.estimator import LGBMForecaster

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "num_boost_round": 200,
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_child_samples": 200,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "lambda_l2": 1.0,
    "n_jobs": 1,
}
"""Baseline :class:`~workbench.models.estimator.LGBMForecaster` parameters of :func:`fit_lgbm`."""


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
) -> LGBMForecaster:
    """Fit an :class:`LGBMForecaster` of ``label`` on ``features``.

    ``params`` are ``LGBMForecaster`` keyword arguments laid over :data:`DEFAULT_PARAMS`; ``seed``
    is the model's seed. An unknown name raises :class:`~workbench.errors.ParameterError` naming
    the closest valid one.
    """
    from workbench.models.estimator import LGBMForecaster, check_params  # it imports this module

    p = {**DEFAULT_PARAMS, **(params or {})}
    check_params("params", p)
    model = LGBMForecaster(**{**p, "seed": seed})
    return model.fit(train.select(features), train[label].to_numpy())


def predict(model: Any, table: pl.DataFrame, features: Sequence[str]) -> pl.DataFrame:
    """Return (symbol, ts, prediction) for every row of ``table``."""
    pred = model.predict(table.select(features).to_pandas())
    return table.select("symbol", "ts").with_columns(prediction=pl.Series(pred, dtype=pl.Float64))


def importance_frame(model: Any, features: Sequence[str]) -> pl.DataFrame:
    """Return gain and split importances per feature, largest gain first (model or booster)."""
    booster = getattr(model, "booster_", model)
    return pl.DataFrame(
        {
            "feature": list(features),
            "gain": booster.feature_importance("gain").astype(float),
            "split": booster.feature_importance("split").astype(float),
        }
    ).sort("gain", descending=True)


def feature_matrix(X: Any, features: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Return the 2-D array LightGBM reads and its feature names (the pandas/polars edge).

    Polars frames become one Fortran-ordered array (a single copy; LightGBM reads column-major
    arrays without copying again); pandas frames of one float dtype come back as a view; numpy
    arrays pass through untouched. Frames are read by column name, so extra columns (``symbol``,
    ``ts``, ``label``...) are ignored and the column order may differ from ``features``.

    Parameters
    ----------
    X : pl.DataFrame, pd.DataFrame or np.ndarray
        The rows to convert.
    features : sequence of str, optional
        Feature columns to take, in this order (default: every column of a frame;
        ``Column_<i>`` for an array, as LightGBM names them).

    Returns
    -------
    matrix : np.ndarray
        A 2-D numeric array, one row per row of ``X``.
    names : list of str
        The feature names, one per column of ``matrix``.

    Raises
    ------
    SchemaError
        When a feature column is missing or not numeric, or an array has the wrong shape.
    TypeError
        When ``X`` is not a polars or pandas frame or a numpy array.
    """
    if isinstance(X, pl.DataFrame):
        names = list(features) if features is not None else list(X.columns)
        _check_columns(names, list(X.columns))
        bad = [f"{c} ({X.schema[c]})" for c in names if not _numeric_pl(X.schema[c])]
        if bad:
            raise SchemaError(_non_numeric(bad), rule="feature dtype")
        return X.select(names).to_numpy(), names
    if isinstance(X, np.ndarray):
        return _array_matrix(X, features)
    pd = _pandas()
    if pd is not None and isinstance(X, pd.DataFrame):
        names = list(features) if features is not None else [str(c) for c in X.columns]
        _check_columns(names, [str(c) for c in X.columns])
        frame = X[names] if list(X.columns) != names else X
        bad = [
            f"{c} ({frame[c].dtype})"
            for c in names
            if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
        ]
        if bad:
            raise SchemaError(_non_numeric(bad), rule="feature dtype")
        return frame.to_numpy(), names
    raise TypeError(
        f"The 'X' parameter must be a polars DataFrame, a pandas DataFrame or a 2-D numpy array. "
        f"Got {type(X).__name__} instead. Fix: pass table.select(features)."
    )


def label_vector(y: Any, n_rows: int, *, name: str = "y") -> np.ndarray:
    """Return ``y`` as a finite float64 vector of length ``n_rows`` (no copy when it already is).

    Parameters
    ----------
    y : pl.Series, pd.Series or array-like
        Labels, one per row.
    n_rows : int
        Number of rows of the matching feature matrix.
    name : str, default "y"
        Parameter name used in error messages.

    Returns
    -------
    np.ndarray
        A 1-D float64 array.

    Raises
    ------
    SchemaError
        When the length differs from ``n_rows`` or a value is null, NaN or infinite.
    """
    if isinstance(y, pl.Series):
        arr = y.cast(pl.Float64).to_numpy()
    elif hasattr(y, "to_numpy"):  # pandas Series
        arr = y.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise SchemaError(
            f"The {name!r} parameter must be 1-D with one value per row ({n_rows}). "
            f"Got shape {arr.shape} instead. Fix: pass the label column of the same rows.",
            rule="label shape",
        )
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise SchemaError(
            f"The {name!r} parameter has {bad} null/NaN/infinite value(s). Fix: drop those rows "
            "first, e.g. table.filter(pl.col('label').is_finite()).",
            rule="label finite",
            n_rows=bad,
        )
    return arr


def _array_matrix(X: np.ndarray, features: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    if X.ndim != 2:
        raise SchemaError(
            f"The 'X' parameter must be 2-D (rows x features). Got shape {X.shape} instead. "
            "Fix: reshape a single feature with X.reshape(-1, 1).",
            rule="feature shape",
        )
    if features is None:
        return X, [f"Column_{i}" for i in range(X.shape[1])]
    names = list(features)
    if len(names) != X.shape[1]:
        raise SchemaError(
            f"The 'X' parameter must have {len(names)} columns (the fitted features). Got "
            f"{X.shape[1]} instead. Fix: pass a frame and let columns be selected by name.",
            rule="feature shape",
        )
    return X, names


def _check_columns(names: list[str], columns: list[str]) -> None:
    missing = [c for c in names if c not in columns]
    if missing:
        hints = {c: difflib.get_close_matches(c, columns, n=1) for c in missing}
        hint = "; ".join(f"{c!r}: did you mean {h[0]!r}?" for c, h in hints.items() if h)
        raise SchemaError(
            f"feature column(s) {missing} not in the frame (columns: {columns}). "
            f"Fix: build them with workbench.stages.features or pass the right names. {hint}".rstrip(),
            rule="missing column",
        )


def _numeric_pl(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype == pl.Boolean


def _non_numeric(bad: list[str]) -> str:
    return (
        f"feature column(s) {bad} are not numeric. Fix: cast them "
        "(pl.col(...).cast(pl.Float64)) or drop them from the feature list."
    )


def _pandas() -> Any:
    import sys

    return sys.modules.get("pandas")  # a pandas frame can only exist if pandas is imported
