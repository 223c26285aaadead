"""Probability of backtest overfitting of a search, measured on combinatorial purged CV paths.

For each candidate configuration (e.g. the best trials of an Optuna search) a model is fitted on
every CPCV split's purged training rows and predicts its test groups; the predictions stitch into
φ complete out-of-sample paths over the whole window (López de Prado 2018, ch. 12). Each path is
backtested per configuration, giving one T x N matrix of per-bar returns per path, and CSCV
(:func:`~workbench.validation.overfitting.pbo_from_cpcv`) asks how often the configuration that
looks best on half the blocks is below the median on the other half.

>>> res = cpcv_pbo(train_table, features, configs=search.top_params(8),  # doctest: +SKIP
...                splitter=CombinatorialPurgedKFold(6, 2, embargo=0.01),
...                returns_fn=lambda preds: backtest(preds).equity["returns"].to_numpy())
>>> res.pbo.pbo  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from workbench.errors import ParameterError
from workbench.models.estimator import LGBMForecaster, check_params
from workbench.models.lgbm import feature_matrix
from workbench.validation.cv import CombinatorialPurgedKFold
from workbench.validation.overfitting import PBOResult, pbo_from_cpcv, sharpe_per_period

ReturnsFn = Callable[[pl.DataFrame], np.ndarray]
"""``returns_fn(predictions) -> per-bar returns``: ``predictions`` holds ``symbol, ts,
prediction`` for every row of the window; the returns must have the same length for every call
(one value per bar of the window, 0 where flat)."""


@dataclass(frozen=True)
class CPCVResult:
    """PBO over the CPCV paths and the per-path Sharpe ratios behind it.

    Attributes
    ----------
    pbo : PBOResult
        Pooled CSCV result (``pbo.pbo`` is the probability of backtest overfitting).
    path_sharpes : numpy.ndarray, shape (n_paths, N)
        Per-bar Sharpe ratio of each configuration on each path.
    correlation : float
        Average pairwise correlation of the configurations' per-bar returns (mean over paths;
        a configuration that never trades counts as uncorrelated with the others).
    configs : list of dict
        The configurations, in column order.
    figures : dict
        ``logits`` (histogram of the CSCV logits) and ``is_vs_oos`` (performance degradation).
    """

    pbo: PBOResult
    path_sharpes: np.ndarray
    correlation: float
    configs: list[dict[str, Any]]
    figures: dict[str, Any] = field(repr=False)


def cpcv_pbo(
    table: pl.DataFrame,
    features: Sequence[str],
    *,
    configs: Sequence[Mapping[str, Any]],
    splitter: CombinatorialPurgedKFold,
    returns_fn: ReturnsFn,
    n_splits: int = 8,
    label: str = "label",
    progress: bool = True,
) -> CPCVResult:
    """Return the PBO of choosing among ``configs``, from CPCV paths and CSCV.

    Parameters
    ----------
    table : pl.DataFrame
        The window's feature table with ``symbol, ts, t1``, ``features`` and ``label``; rows
        without a finite label are dropped, the rest ordered by ``(ts, symbol)``.
    features : sequence of str
        Feature columns.
    configs : sequence of mapping
        :class:`LGBMForecaster` keyword arguments, one per configuration (N >= 2).
    splitter : CombinatorialPurgedKFold
        Purges by ``t1`` and embargoes; its paths cover every row.
    returns_fn : callable
        Backtest of one path's predictions: see :data:`ReturnsFn`.
    n_splits : int, default 8
        CSCV row blocks per path (even).
    label : str, default "label"
        Label column.
    progress : bool, default True
        Show a progress bar over the fits.

    Returns
    -------
    CPCVResult
    """
    if len(configs) < 2:
        raise ParameterError(
            f"The 'configs' parameter of cpcv_pbo needs at least 2 configurations to choose "
            f"among. Got {len(configs)}. Fix: pass more trials (e.g. search.top_params(8))."
        )
    if not isinstance(splitter, CombinatorialPurgedKFold):
        raise ParameterError(
            f"The 'splitter' parameter of cpcv_pbo must be a CombinatorialPurgedKFold (its paths "
            f"cover every row). Got {type(splitter).__name__}."
        )
    for i, cfg in enumerate(configs):
        check_params(f"configs[{i}]", cfg)
    data = table.filter(pl.col(label).is_not_null() & pl.col(label).is_finite()).sort(
        "ts", "symbol", maintain_order=True
    )
    x, _ = feature_matrix(data, features)
    y = data[label].to_numpy()
    splits = list(splitter.split(data))
    keys = data.select("symbol", "ts")

    from tqdm.auto import tqdm

    bar = tqdm(total=len(configs) * len(splits), desc="CPCV fits", disable=not progress)
    per_path: list[list[np.ndarray]] = [[] for _ in range(splitter.n_paths)]
    try:
        for cfg in configs:
            preds = []
            for train, test in splits:
                model = LGBMForecaster(**dict(cfg)).fit(x[train], y[train])
                preds.append(model.predict(x[test]))
                bar.update()
            paths = splitter.stitch_paths(data, preds)
            for p, row in enumerate(paths):
                per_path[p].append(_returns(returns_fn, keys.with_columns(prediction=row), p))
    finally:
        bar.close()
    mats = []
    for p, cols in enumerate(per_path):
        lengths = {len(c) for c in cols}
        if len(lengths) != 1:
            raise ParameterError(
                f"returns_fn returned series of lengths {sorted(lengths)} on path {p}; every call "
                "must return one value per bar of the same window. Fix: backtest on a fixed bar "
                "range and keep flat bars as 0."
            )
        mats.append(np.column_stack(cols))
    pbo = pbo_from_cpcv(mats, n_splits)
    sharpes = np.array([[sharpe_per_period(m[:, j]) for j in range(m.shape[1])] for m in mats])
    corr = float(np.mean([_mean_correlation(m) for m in mats]))
    return CPCVResult(pbo, sharpes, corr, [dict(c) for c in configs], _figures(pbo))


def _mean_correlation(m: np.ndarray) -> float:
    """Mean off-diagonal correlation of the columns; constant columns correlate 0."""
    sd = m.std(axis=0)
    z = np.where(sd > 0, (m - m.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)
    c = (z.T @ z) / len(m)
    n = c.shape[0]
    return float((c.sum() - np.trace(c)) / (n * (n - 1)))


def _returns(fn: ReturnsFn, preds: pl.DataFrame, path: int) -> np.ndarray:
    r = np.asarray(fn(preds), dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(r)):
        raise ParameterError(
            f"returns_fn returned {int((~np.isfinite(r)).sum())} non-finite value(s) on path "
            f"{path}. Fix: return 0 for bars without a position."
        )
    return r


def _figures(res: PBOResult) -> dict[str, Any]:
    import plotly.graph_objects as go

    logits = res.logits[np.isfinite(res.logits)]
    hist = go.Figure(go.Histogram(x=logits.tolist(), nbinsx=30, name="logit"))
    hist.add_vline(x=0, line_dash="dash", annotation_text=f"PBO = {res.pbo:.2f}")
    hist.update_layout(
        title="CSCV logits of the in-sample best configuration (left of 0: overfit)",
        xaxis_title="logit of out-of-sample relative rank",
        yaxis_title="combinations",
    )
    ok = np.isfinite(res.is_performance) & np.isfinite(res.oos_performance)
    scatter = go.Figure(
        go.Scatter(
            x=res.is_performance[ok].tolist(),
            y=res.oos_performance[ok].tolist(),
            mode="markers",
            marker={"opacity": 0.4},
        )
    )
    scatter.update_layout(
        title="Performance degradation: out-of-sample vs in-sample Sharpe of the selected config",
        xaxis_title="in-sample Sharpe (per bar)",
        yaxis_title="out-of-sample Sharpe (per bar)",
    )
    return {"logits": hist, "is_vs_oos": scatter}
