"""Train stage: LightGBM on a purged chronological split of the feature table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import plotly.graph_objects as go
import polars as pl

from workbench.config import WorkbenchConfig
from workbench.data.store import frame_fingerprint
from workbench.models.lgbm import Split, chronological_split, fit_lgbm, importance_frame, predict

NON_FEATURES = ("symbol", "ts", "label", "t1")


@dataclass
class TrainResult:
    """The fitted model, its split and in-/out-of-sample fit measures."""

    model: lgb.LGBMRegressor
    features: list[str]
    split: Split
    importance: pl.DataFrame
    metrics: dict[str, float]
    data_fingerprint: str


def feature_columns(table: pl.DataFrame) -> list[str]:
    """Return the feature columns of a feature table (everything but keys and label columns)."""
    return [c for c in table.columns if c not in NON_FEATURES]


def ic(pred: pl.Series | np.ndarray, label: pl.Series | np.ndarray) -> float:
    """Return the Pearson information coefficient between predictions and realised labels."""
    a, b = np.asarray(pred, dtype=float), np.asarray(label, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def run_train(
    cfg: WorkbenchConfig,
    *,
    features_path: str | Path,
    strategy: str,
    seed: int,
    train_frac: float = 0.6,
) -> TrainResult:
    """Fit the strategy's LightGBM model on the training part of the feature table."""
    strat = cfg.strategy(strategy)
    table = pl.read_parquet(features_path)
    feats = feature_columns(table)
    split = chronological_split(table, train_frac=train_frac)
    model = fit_lgbm(split.train, feats, params=dict(strat.model), seed=seed)
    p_train = predict(model, split.train, feats)["prediction"]
    p_valid = predict(model, split.valid, feats)["prediction"]
    metrics = {
        "train_rows": float(split.train.height),
        "valid_rows": float(split.valid.height),
        "purged_rows": float(split.purged),
        "ic_train": ic(p_train, split.train["label"]),
        "ic_valid": ic(p_valid, split.valid["label"]),
    }
    return TrainResult(
        model, feats, split, importance_frame(model, feats), metrics, frame_fingerprint(table)
    )


def importance_figure(importance: pl.DataFrame) -> go.Figure:
    """Return a horizontal bar chart of gain importance."""
    df = importance.sort("gain")
    fig = go.Figure(go.Bar(x=df["gain"].to_list(), y=df["feature"].to_list(), orientation="h"))
    fig.update_layout(
        title="Feature importance (gain)", height=max(300, 28 * df.height), xaxis_title="total gain"
    )
    return fig
