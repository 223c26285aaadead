"""Rows binned once for every LightGBM fit that bins them alike (a search's folds, CPCV splits).

LightGBM turns the feature matrix into a ``Dataset`` of histogram bins before it grows a tree;
on the demo's folds that takes as long as a tenth of the fit, and a search fits the same folds
once per trial. A ``Dataset``'s bins depend on the binning parameters (``max_bin``, ``seed``,
``min_data_in_bin``..., every parameter but those of tree growth) and, through LightGBM's
feature pre-filter, on ``min_data_in_leaf``: a feature that no bin boundary can split into two
sides of ``min_data_in_leaf`` rows each is dropped. :class:`BinnedRows` builds its ``Dataset``
with the pre-filter off, so that fits with any ``min_data_in_leaf`` may share it, and shares it
only with a fit for which it is exactly the ``Dataset`` the fit would build for itself:

* the fit's binning parameters are those it was built with, and
* the pre-filter at the fit's ``min_data_in_leaf`` would drop no feature that it keeps. The
  filter drops more features the larger ``min_data_in_leaf`` is, so one check at the largest
  value a caller announces (``max_min_data``) covers every smaller one; the check builds the
  ``Dataset`` with the pre-filter on at that value and compares the bins of every feature.

Any other fit gets a ``Dataset`` of its own, built as :meth:`LGBMForecaster.fit` builds it. The
booster is then the same as ``fit`` on the same arrays, tree for tree (its parameters, as
``Booster.params`` and the model text list them, show ``feature_pre_filter`` off).

A ``Dataset`` must not be trained on by two fits at once: give each thread its own rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightgbm as lgb
import numpy as np

__all__ = ["TREE_GROWTH", "BinnedRows"]

TREE_GROWTH = (
    "learning_rate",
    "num_leaves",
    "max_depth",
    "feature_fraction",
    "bagging_fraction",
    "bagging_freq",
    "lambda_l1",
    "lambda_l2",
    "min_data_in_leaf",  # through the pre-filter only: checked (module docstring)
)
"""``LGBMForecaster.lgb_params`` keys a ``Dataset`` does not depend on (its bins are the same)."""

_MIN_DATA = "min_data_in_leaf"


class BinnedRows:
    """Training rows, and optionally evaluation rows, binned once for fits that bin them alike.

    Parameters
    ----------
    x : np.ndarray
        Training matrix (rows x features), as :func:`workbench.models.lgbm.feature_matrix`
        returns it.
    y : np.ndarray
        Finite float labels, one per row.
    names : list of str, optional
        Feature names (default ``Column_<i>``, as LightGBM names an array's columns).
    eval_x, eval_y : np.ndarray, optional
        Evaluation rows (binned with the training rows' bins).
    max_min_data : int, optional
        The largest ``min_data_in_leaf`` the fits will use (e.g. the search space's upper
        bound): the pre-filter is checked once there. Without it, each new largest value is
        checked when a fit first uses it.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        names: list[str] | None = None,
        eval_x: np.ndarray | None = None,
        eval_y: np.ndarray | None = None,
        *,
        max_min_data: int | None = None,
    ) -> None:
        self.x, self.y = x, np.asarray(y, dtype=np.float64)
        self.names = (
            list(names) if names is not None else [f"Column_{i}" for i in range(x.shape[1])]
        )
        self.eval_x = eval_x
        self.eval_y = None if eval_y is None else np.asarray(eval_y, dtype=np.float64)
        self.max_min_data = max_min_data
        self._key: tuple[tuple[str, str], ...] | None = None
        self._train: lgb.Dataset | None = None
        self._valid: lgb.Dataset | None = None
        self._safe_upto = -1  # largest min_data_in_leaf checked: the shared Dataset is exact
        self._unsafe_from: int | None = None  # smallest one checked where it is not
        self.shared_fits = 0  # fits that used the shared Dataset
        self.own_fits = 0  # fits that built their own

    def datasets(
        self, params: Mapping[str, Any], *, evaluate: bool = False
    ) -> tuple[lgb.Dataset, lgb.Dataset | None]:
        """Return the training ``Dataset`` (and the evaluation one when ``evaluate``) for a fit
        with LightGBM ``params``: the shared ones when they are exactly what the fit would build
        for itself, else new ones built as :meth:`LGBMForecaster.fit` builds them."""
        params = dict(params)
        key = _binning_key(params)
        if key != self._key:
            self._share(params, key)
        min_data = int(params.get(_MIN_DATA, 20))
        if self._exact_at(params, min_data):
            self.shared_fits += 1
            if evaluate and self._valid is None:
                self._valid = self._eval_set(self._train, _shared_params(params))
            return self._train, self._valid if evaluate else None
        self.own_fits += 1
        train = lgb.Dataset(self.x, label=self.y, feature_name=self.names, params=params)
        return train, self._eval_set(train, None) if evaluate else None

    def _share(self, params: dict[str, Any], key: tuple[tuple[str, str], ...]) -> None:
        self._key = key
        self._train = lgb.Dataset(
            self.x,
            label=self.y,
            feature_name=self.names,
            params=_shared_params(params),
            free_raw_data=True,
        ).construct()
        self._valid = None
        self._safe_upto, self._unsafe_from = -1, None

    def _exact_at(self, params: dict[str, Any], min_data: int) -> bool:
        if min_data <= self._safe_upto:
            return True
        if self._unsafe_from is not None and min_data >= self._unsafe_from:
            return False
        at = max(min_data, self.max_min_data or 0)
        if self._unchanged_by_prefilter(params, at):
            self._safe_upto = at
            return True
        if at == min_data:
            self._unsafe_from = min_data
            return False
        # not exact at the announced largest value: check the fit's own value
        if self._unchanged_by_prefilter(params, min_data):
            self._safe_upto = min_data
            return True
        self._unsafe_from = min_data
        return False

    def _unchanged_by_prefilter(self, params: dict[str, Any], min_data: int) -> bool:
        assert self._train is not None
        check = lgb.Dataset(
            self.x,
            label=self.y,
            feature_name=self.names,
            params={**params, _MIN_DATA: min_data, "feature_pre_filter": True},
        ).construct()
        n = len(self.names)
        return [check.feature_num_bin(i) for i in range(n)] == [
            self._train.feature_num_bin(i) for i in range(n)
        ]

    def _eval_set(self, train: lgb.Dataset, params: dict[str, Any] | None) -> lgb.Dataset:
        assert self.eval_x is not None and self.eval_y is not None
        valid = lgb.Dataset(self.eval_x, label=self.eval_y, reference=train, params=params)
        return valid.construct() if params is not None else valid


def _shared_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {**params, "feature_pre_filter": False}


def _binning_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k not in TREE_GROWTH))
