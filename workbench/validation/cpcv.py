"""Probability of backtest overfitting of a search, measured on combinatorial purged CV paths.

For each candidate configuration (e.g. the best trials of an Optuna search) a model is fitted on
every CPCV split's purged training rows and predicts its test groups; the predictions stitch into
φ complete out-of-sample paths over the whole window (López de Prado 2018, ch. 12). Each path is
backtested per configuration, giving one T x N matrix of per-bar returns per path, and CSCV
(:func:`~workbench.validation.overfitting.pbo_from_cpcv`) asks how often the configuration that
looks best on half the blocks is below the median on the other half.

PBO is measured among *distinct* candidates. A configuration that never trades on any path
(identically zero returns: the do-nothing option, not a strategy one would select) is not a
candidate. Configurations whose out-of-sample returns are near-duplicates (correlation above ``duplicate_correlation`` over every path) are one candidate:
picking among copies cannot overfit, and CSCV over them ranks noise (PBO ~0.5 by symmetry,
whatever the edge). Candidates are clustered by complete linkage on ``1 - correlation`` (every
pair inside a cluster correlates above the threshold), each cluster is represented by its first
configuration in the given order (the search's ranking on the training folds), and CSCV runs
over the representatives. With fewer than ``min_distinct`` distinct candidates the PBO is *not
measurable* (``CPCVResult.measurable`` is False, ``CPCVResult.value`` NaN). The dispersion of the
estimate is the spread of the per-path PBOs (``pbo.pbo_std``).

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
from workbench.models.binned import BinnedRows
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
    clusters : numpy.ndarray, shape (N,)
        Cluster of each configuration (near-duplicates share one); 0-based, in order of first
        appearance; -1 for a configuration that never trades (not a candidate).
    representatives : list of int
        Column of each cluster's representative (the PBO's candidates).
    min_distinct : int
        Distinct candidates needed for the PBO to be measurable.
    """

    pbo: PBOResult
    path_sharpes: np.ndarray
    correlation: float
    configs: list[dict[str, Any]]
    figures: dict[str, Any] = field(repr=False)
    clusters: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    representatives: list[int] = field(default_factory=list)
    min_distinct: int = 2

    @property
    def n_distinct(self) -> int:
        """Number of distinct candidates (clusters of near-duplicates among those that trade)."""
        return len(self.representatives)

    @property
    def measurable(self) -> bool:
        """Whether enough distinct candidates were tried for PBO to mean anything."""
        return self.n_distinct >= max(2, self.min_distinct)

    @property
    def value(self) -> float:
        """The PBO when measurable, else NaN."""
        return self.pbo.pbo if self.measurable else float("nan")

    def describe(self) -> str:
        """One sentence for a report: the PBO and its spread, or why it is not measurable."""
        n, k = len(self.configs), self.n_distinct
        if not self.measurable:
            return (
                f"PBO not measurable: {k} distinct candidate(s) among {n} configurations "
                f"(near-duplicate out-of-sample returns merged, never-trading ones left out); "
                f"it needs {self.min_distinct}"
            )
        return (
            f"PBO {self.pbo.pbo:.3f} (per-path std {self.pbo.pbo_std:.3f}) over {k} distinct "
            f"candidates among {n} configurations"
        )


def cpcv_pbo(
    table: pl.DataFrame,
    features: Sequence[str],
    *,
    configs: Sequence[Mapping[str, Any]],
    splitter: CombinatorialPurgedKFold,
    returns_fn: ReturnsFn | Sequence[ReturnsFn],
    n_splits: int = 8,
    label: str = "label",
    progress: bool = True,
    duplicate_correlation: float = 1.0,
    min_distinct: int = 2,
    jobs: int = 1,
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
    returns_fn : callable or sequence of callables
        Backtest of one path's predictions: see :data:`ReturnsFn`; one per configuration when
        the candidates trade differently (e.g. each with its own decision thresholds).
    n_splits : int, default 8
        CSCV row blocks per path (even).
    label : str, default "label"
        Label column.
    progress : bool, default True
        Show a progress bar over the fits.
    duplicate_correlation : float, default 1.0
        Configurations whose out-of-sample returns correlate above this are one candidate
        (1.0: only exact copies merge).
    min_distinct : int, default 2
        Distinct candidates below which the PBO is not measurable.
    jobs : int, default 1
        Splits fitted at once, each in a thread of its own (LightGBM lets go of the GIL while
        it trains); each fit keeps its own ``n_jobs``. The fits are independent and seeded, so
        the result is the same for any ``jobs``.

    Returns
    -------
    CPCVResult
    """
    if not (0.0 < duplicate_correlation <= 1.0):
        raise ParameterError(
            f"The 'duplicate_correlation' parameter of cpcv_pbo must be in (0, 1]. Got "
            f"{duplicate_correlation!r}. Fix: e.g. 0.9."
        )
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
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ParameterError(
            f"The 'jobs' parameter of cpcv_pbo must be an int >= 1. Got {jobs!r} instead. "
            "Fix: pass 1 (serial) or the number of cores to use."
        )
    for i, cfg in enumerate(configs):
        check_params(f"configs[{i}]", cfg)
    fns = list(returns_fn) if not callable(returns_fn) else [returns_fn] * len(configs)
    if len(fns) != len(configs) or not all(callable(f) for f in fns):
        raise ParameterError(
            f"The 'returns_fn' parameter of cpcv_pbo must be a callable or one callable per "
            f"configuration ({len(configs)}). Got {len(fns)} item(s). Fix: pass one backtest "
            "function, or a list as long as configs."
        )
    data = table.filter(pl.col(label).is_not_null() & pl.col(label).is_finite()).sort(
        "ts", "symbol", maintain_order=True
    )
    x, _ = feature_matrix(data, features)
    y = data[label].to_numpy()
    splits = list(splitter.split(data))
    keys = data.select("symbol", "ts")

    from tqdm.auto import tqdm

    largest = max(int(LGBMForecaster(**dict(cfg)).min_child_samples) for cfg in configs)
    bar = tqdm(total=len(configs) * len(splits), desc="CPCV fits", disable=not progress)

    def fit_split(split: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
        # every configuration on one split's training rows, binned once for all of them
        train, test = split
        rows = BinnedRows(x[train], y[train], max_min_data=largest)
        out = []
        for cfg in configs:
            out.append(LGBMForecaster(**dict(cfg)).fit_binned(rows).predict(x[test]))
            bar.update()
        return out

    try:
        if jobs > 1 and len(splits) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(jobs, len(splits)), thread_name_prefix="cpcv") as pool:
                per_split = list(pool.map(fit_split, splits))
        else:
            per_split = [fit_split(split) for split in splits]
    finally:
        bar.close()
    per_path: list[list[np.ndarray]] = [[] for _ in range(splitter.n_paths)]
    for i, fn in enumerate(fns):
        paths = splitter.stitch_paths(data, [preds[i] for preds in per_split])
        for p, row in enumerate(paths):
            per_path[p].append(_returns(fn, keys.with_columns(prediction=row), p))
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
    stacked = np.vstack(mats)
    trades = np.flatnonzero(np.any(stacked != 0.0, axis=0))  # never trading: not a candidate
    clusters = np.full(len(configs), -1, dtype=np.int64)
    if trades.size:
        clusters[trades] = distinct_candidates(stacked[:, trades], duplicate_correlation)
    reps = [int(np.flatnonzero(clusters == c)[0]) for c in range(int(clusters.max()) + 1)]
    pick = reps if len(reps) >= 2 else list(range(len(configs)))
    pbo = pbo_from_cpcv([m[:, pick] for m in mats], n_splits)
    sharpes = np.array([[sharpe_per_period(m[:, j]) for j in range(m.shape[1])] for m in mats])
    corr = float(np.mean([_mean_correlation(m) for m in mats]))
    return CPCVResult(
        pbo,
        sharpes,
        corr,
        [dict(c) for c in configs],
        _figures(pbo),
        clusters,
        reps,
        int(min_distinct),
    )


def distinct_candidates(returns: np.ndarray, duplicate_correlation: float) -> np.ndarray:
    """Cluster the columns of a T x N returns matrix into near-duplicates.

    Complete linkage on the distance ``1 - correlation`` cut at ``1 - duplicate_correlation``:
    every pair of columns inside a cluster correlates at least ``duplicate_correlation``.
    Columns that never move (a configuration that never trades) are duplicates of each other
    and distinct from the rest. Returns 0-based cluster labels numbered in column order.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    m = np.asarray(returns, dtype=np.float64)
    n = m.shape[1]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    sd = m.std(axis=0)
    live = sd > 0
    z = np.where(live, (m - m.mean(axis=0)) / np.where(live, sd, 1.0), 0.0)
    corr = np.clip((z.T @ z) / len(m), -1.0, 1.0)
    flat = ~live
    corr[np.ix_(flat, flat)] = 1.0  # two flat columns are the same (no) trading
    np.fill_diagonal(corr, 1.0)
    dist = squareform(np.clip(1.0 - corr, 0.0, 2.0), checks=False)
    raw = fcluster(
        linkage(dist, method="complete"),
        t=1.0 - duplicate_correlation + 1e-12,
        criterion="distance",
    )
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(c), len(order)) for c in raw], dtype=np.int64)


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
