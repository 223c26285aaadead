"""Rule-based baselines: momentum and mean reversion as forecasters with the model's interface.

A model earns its place only if it beats the simple rule its strategy is built on, after costs,
on the same window. :class:`RuleBaseline` is that rule as an estimator (the scikit-learn
contract, polars or pandas frames in, like :class:`~workbench.models.estimator.LGBMForecaster`):

* ``momentum``: the next return follows the past one, ``prediction = beta * x``;
* ``mean_reversion``: it reverses, ``prediction = -beta * x``;

where ``x`` is one past-return feature of the feature set. :meth:`RuleBaseline.fit` chooses, on
the training rows only, the feature among the candidates with the highest in-sample correlation
of ``direction * x`` with the label, and ``beta >= 0`` by least squares through the origin, so
predictions are in the label's return units: the strategy's decision policy turns them into
sides with the same thresholds (quantiles of the training predictions, or the cost-aware rule
whose multiple the search's purged CV picks) as it does the model's. A rule that the training
window contradicts (no candidate with a positive correlation) gets ``beta = 0``: it predicts
zero and never trades, which is what such a rule is worth.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from workbench.errors import ParameterError
from workbench.models.lgbm import feature_matrix, label_vector

RULES = {"momentum": 1.0, "mean_reversion": -1.0}
#: names of past-return features a rule may read (first match wins per column)
RETURN_LIKE = re.compile(r"^(ret|log_ret|logret|roc|mom|return)(_|\d|$)", re.IGNORECASE)


class RuleBaseline(BaseEstimator):
    """Momentum or mean-reversion rule on one past-return feature (see the module doc).

    Parameters
    ----------
    rule : {"momentum", "mean_reversion"}
    feature : str, optional
        The feature to read; default: chosen in-sample among ``candidates``.
    candidates : sequence of str, optional
        Features to choose from; default: every column whose name looks like a past return
        (``ret_1``, ``log_ret_3``, ``roc_12``, ``mom_5``...).
    """

    def __init__(
        self,
        rule: str = "mean_reversion",
        feature: str | None = None,
        candidates: Sequence[str] | None = None,
    ) -> None:
        self.rule = rule
        self.feature = feature
        self.candidates = candidates

    def fit(self, X: Any, y: Any) -> RuleBaseline:
        """Choose the feature and ``beta`` on these (training) rows."""
        if self.rule not in RULES:
            raise ParameterError(
                f"baseline rule {self.rule!r} is unknown. Fix: use one of {sorted(RULES)}."
            )
        columns = list(getattr(X, "columns", []))
        if self.feature is not None:
            cands = [self.feature]
        elif self.candidates is not None:
            cands = list(self.candidates)
        else:
            cands = [c for c in columns if RETURN_LIKE.match(c)]
        missing = [c for c in cands if c not in columns]
        if missing or not cands:
            raise ParameterError(
                f"baseline {self.rule}: feature(s) {missing or cands} not in the frame "
                f"(columns: {columns}). Fix: name a past-return feature of the feature set with "
                "feature=, or add one (ret_1, log_ret_3, roc_12...) to the set."
            )
        yv = label_vector(y, len(X))
        d = RULES[self.rule]
        best: tuple[float, str, float] | None = None
        for c in cands:
            x = d * feature_matrix(X, [c])[0][:, 0]
            ok = np.isfinite(x) & np.isfinite(yv)
            if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(yv[ok]) == 0:
                corr = float("nan")
            else:
                corr = float(np.corrcoef(x[ok], yv[ok])[0, 1])
            beta = float(np.dot(x[ok], yv[ok]) / np.dot(x[ok], x[ok])) if ok.any() else 0.0
            if best is None or (np.isfinite(corr) and (not np.isfinite(best[0]) or corr > best[0])):
                best = (corr, c, beta)
        assert best is not None
        corr, col, beta = best
        self.feature_ = col
        self.in_sample_corr_ = corr
        self.beta_ = max(beta, 0.0) if np.isfinite(corr) and corr > 0 else 0.0
        self.direction_ = d
        self.n_features_in_ = len(columns)
        self.feature_names_in_ = np.asarray(columns, dtype=object)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """``direction * beta * x``; NaN where the feature is missing (no decision there)."""
        check_is_fitted(self, "beta_")
        x = feature_matrix(X, [self.feature_])[0][:, 0]
        return self.direction_ * self.beta_ * x

    def describe(self) -> dict[str, Any]:
        """What was fitted (MLflow params of a baseline run)."""
        check_is_fitted(self, "beta_")
        return {
            "baseline_rule": self.rule,
            "baseline_feature": self.feature_,
            "baseline_beta": self.beta_,
            "baseline_in_sample_corr": self.in_sample_corr_,
        }
