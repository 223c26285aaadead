"""Train an :class:`LGBMForecaster` with LightGBM's Dask estimators (``model.distributed: true``).

>>> with open_client(cfg.dask) as client:  # doctest: +SKIP
...     model = fit_on_dask(["features/part-*.parquet"], feats, params={...}, client=client)

The feature table is read by the workers as a Dask DataFrame (parquet files, or a polars frame
cut into partitions), so no single process needs to hold it: ``lightgbm.dask`` concatenates the
partitions each worker holds and runs one LightGBM worker per Dask worker (data-parallel tree
learning). The booster comes back as a plain :class:`LGBMForecaster` (``to_local()``), which
predicts, saves and registers like any other.

Distributed histograms and partition placement change the trees slightly: a Dask model equals a
local one only approximately (compare predictions by correlation, never bit for bit).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.errors import ParameterError
from workbench.models.estimator import LGBMForecaster


def _frame(data: pl.DataFrame | Sequence[str | Path], columns: list[str], partitions: int) -> Any:
    import dask.dataframe as dd

    if isinstance(data, pl.DataFrame):
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ParameterError(
                f"the feature table has no column(s) {missing}. Fix: pass the features and "
                "label columns the table holds."
            )
        return dd.from_pandas(data.select(columns).to_pandas(), npartitions=partitions)
    paths = [str(p) for p in data]
    if not paths:
        raise ParameterError("no parquet files given. Fix: pass the feature table's files.")
    return dd.read_parquet(paths, columns=columns)


def fit_on_dask(
    data: pl.DataFrame | Sequence[str | Path],
    features: Sequence[str],
    *,
    client: Any,
    params: Mapping[str, Any] | None = None,
    label: str = "label",
    partitions: int | None = None,
) -> LGBMForecaster:
    """Fit ``LGBMForecaster(**params)`` with ``lightgbm.dask`` on the client's workers.

    Parameters
    ----------
    data : pl.DataFrame or list of parquet paths
        The feature table (rows with a non-finite label are dropped on the workers).
    params : Mapping, optional
        :class:`LGBMForecaster` keyword arguments (``num_boost_round`` rounds; ``n_jobs`` and the
        number of machines are set by the cluster).
    partitions : int, optional
        Partitions of an in-memory frame (default: two per worker).

    Returns
    -------
    LGBMForecaster
        Fitted, holding the booster trained on the cluster.
    """
    from lightgbm.dask import DaskLGBMClassifier, DaskLGBMRegressor

    est = LGBMForecaster(**dict(params or {}))
    est._check_params()
    cols = [*features, label]
    n_workers = max(1, len(client.scheduler_info()["workers"]))
    ddf = _frame(data, cols, partitions or 2 * n_workers)
    ddf = ddf[ddf[label].notnull() & np.isfinite(ddf[label])]
    x, y = ddf[list(features)], ddf[label]
    lgb = est.lgb_params()
    lgb.pop("num_threads", None)
    lgb.pop("n_jobs", None)
    binary = lgb.get("objective") == "binary"
    if binary:
        y = (y > 0).astype("int64")
    cls = DaskLGBMClassifier if binary else DaskLGBMRegressor
    model = cls(client=client, n_estimators=est.num_boost_round, **lgb)
    with warnings.catch_warnings():  # the cluster sets the threads per worker, as documented
        warnings.filterwarnings("ignore", message="Parameter (n_jobs|num_threads) will be ignored")
        model.fit(x, y, feature_name=list(features))
    local = model.to_local()
    est.booster_ = local.booster_
    est.feature_names_ = list(features)
    est.n_features_in_ = len(features)
    est.best_iteration_ = local.booster_.current_iteration()
    est.evals_result_ = {}
    return est
