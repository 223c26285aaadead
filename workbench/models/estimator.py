"""A thin scikit-learn-contract wrapper around ``lightgbm.train`` that reads polars or pandas frames.

>>> model = LGBMForecaster(num_leaves=15, num_boost_round=200, seed=7)  # doctest: +SKIP
>>> model.fit(train.select(features), train["label"]).predict(valid)  # doctest: +SKIP

Hyperparameters are stored untouched in ``__init__`` (so ``sklearn.base.clone``, ``get_params`` and
``set_params`` work) and checked in :meth:`LGBMForecaster.fit`. Frames become one numeric array at
the edge (:func:`workbench.models.lgbm.feature_matrix`); the booster is LightGBM's own, so
``predict`` equals ``lightgbm.train(model.lgb_params(), ...).predict`` exactly.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral
from typing import Any

import lightgbm as lgb
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from workbench.errors import ParameterError
from workbench.models.binned import BinnedRows
from workbench.models.lgbm import feature_matrix, label_vector

VALID_NAME = "valid"
"""Name of the evaluation set in ``valid_names`` (``LightGBMPruningCallback(valid_name=...)``)."""

# hyperparameters with their own argument, and the LightGBM aliases that would override them
_RESERVED = {
    "objective": ("objective", "application", "app", "objective_type", "loss"),
    "num_boost_round": ("num_iterations", "num_iteration", "n_iter", "num_tree", "num_trees",
                        "num_round", "num_rounds", "nrounds", "num_boost_round", "n_estimators",
                        "max_iter"),
    "learning_rate": ("learning_rate", "shrinkage_rate", "eta"),
    "num_leaves": ("num_leaves", "num_leaf", "max_leaves", "max_leaf", "max_leaf_nodes"),
    "max_depth": ("max_depth",),
    "min_child_samples": ("min_data_in_leaf", "min_data_per_leaf", "min_data",
                          "min_child_samples", "min_samples_leaf"),
    "feature_fraction": ("feature_fraction", "sub_feature", "colsample_bytree"),
    "bagging_fraction": ("bagging_fraction", "sub_row", "subsample", "bagging"),
    "bagging_freq": ("bagging_freq", "subsample_freq"),
    "lambda_l1": ("lambda_l1", "reg_alpha", "l1_regularization"),
    "lambda_l2": ("lambda_l2", "reg_lambda", "lambda", "l2_regularization"),
    "metric": ("metric", "metrics", "metric_types"),
    "early_stopping_rounds": ("early_stopping_round", "early_stopping_rounds", "early_stopping",
                              "n_iter_no_change"),
    "seed": ("seed", "random_seed", "random_state"),
    "n_jobs": ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs"),
    "deterministic": ("deterministic",),
}  # fmt: skip


class LGBMForecaster(BaseEstimator):
    """Gradient-boosted trees through ``lightgbm.train``, with the scikit-learn estimator contract.

    Parameters
    ----------
    objective : str, default "regression"
        LightGBM objective (``"regression"``, ``"binary"``, ``"huber"``...).
    num_boost_round : int, default 100
        Boosting rounds (the upper bound when ``early_stopping_rounds`` is set).
    learning_rate, num_leaves, max_depth : float, int, int
        Tree growth (LightGBM defaults 0.1, 31, -1; here 0.05, 31, -1).
    min_child_samples : int, default 20
        Minimum rows per leaf (LightGBM ``min_data_in_leaf``).
    feature_fraction, bagging_fraction : float, default 1.0
        Column and row subsampling per tree (``bagging_freq`` rounds apart).
    bagging_freq : int, default 1
        Re-draw the bagging sample every ``bagging_freq`` rounds (1 so that ``bagging_fraction``
        below 1 takes effect; LightGBM's own default 0 silently disables bagging).
    lambda_l1, lambda_l2 : float, default 0.0
        L1 and L2 regularisation of leaf values.
    metric : str, optional
        Evaluation metric on ``eval_X`` (default: the objective's; ``"None"`` for only
        ``eval_metric``).
    early_stopping_rounds : int, optional
        Stop when the first metric on ``eval_X`` has not improved for this many rounds.
    seed : int, default 0
        Seed of every random choice (bagging, feature fraction); with ``deterministic`` the fit is
        bit-for-bit repeatable.
    n_jobs : int, default 1
        Threads (one per Optuna worker process is the scalable shape; 0 means all cores).
    deterministic : bool, default True
        LightGBM ``deterministic`` with ``force_col_wise`` (stable results across runs).
    extra_params : Mapping[str, Any], optional
        Any other LightGBM parameter (``max_bin``, ``min_gain_to_split``...), passed through.

    Attributes
    ----------
    booster_ : lightgbm.Booster
        The trained booster.
    feature_names_ : list of str
        Feature names seen in ``fit`` (frame columns, or ``Column_<i>`` for an array).
    n_features_in_ : int
        Number of features seen in ``fit``.
    best_iteration_ : int
        Rounds used by ``predict`` (the early-stopping best round, else ``num_boost_round``).
    evals_result_ : dict
        Metric history on the evaluation set (``{"valid": {metric: [...]}}``; empty without one).
    """

    def __init__(
        self,
        *,
        objective: str = "regression",
        num_boost_round: int = 100,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        feature_fraction: float = 1.0,
        bagging_fraction: float = 1.0,
        bagging_freq: int = 1,
        lambda_l1: float = 0.0,
        lambda_l2: float = 0.0,
        metric: str | None = None,
        early_stopping_rounds: int | None = None,
        seed: int = 0,
        n_jobs: int = 1,
        deterministic: bool = True,
        extra_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.objective = objective
        self.num_boost_round = num_boost_round
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.lambda_l1 = lambda_l1
        self.lambda_l2 = lambda_l2
        self.metric = metric
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.n_jobs = n_jobs
        self.deterministic = deterministic
        self.extra_params = extra_params

    def lgb_params(self) -> dict[str, Any]:
        """Return the ``params`` dict this estimator hands to ``lightgbm.train``.

        Returns
        -------
        dict
            LightGBM parameters (``num_boost_round`` and early stopping are ``train`` arguments).

        Raises
        ------
        ParameterError
            When ``extra_params`` repeats a hyperparameter that has its own argument.
        """
        extra = dict(self.extra_params or {})
        for arg, aliases in _RESERVED.items():
            clash = sorted(set(aliases) & set(extra))
            if clash:
                raise ParameterError(
                    f"The 'extra_params' parameter of LGBMForecaster must not set {clash}. "
                    f"Got {clash[0]}={extra[clash[0]]!r}. Fix: pass {arg}= instead."
                )
        params: dict[str, Any] = {
            "objective": self.objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l1": self.lambda_l1,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "num_threads": self.n_jobs,
            "deterministic": self.deterministic,
            "verbosity": -1,
        }
        if self.deterministic:
            params["force_col_wise"] = True
        if self.metric is not None:
            params["metric"] = self.metric
        return {**params, **extra}

    def fit(
        self,
        X: Any,
        y: Any,
        eval_X: Any = None,
        eval_y: Any = None,
        *,
        eval_metric: Callable[..., Any] | Sequence[Callable[..., Any]] | None = None,
        callbacks: Sequence[Callable[..., Any]] | None = None,
    ) -> LGBMForecaster:
        """Train a booster on ``X, y``, evaluating on ``eval_X, eval_y`` when given.

        Parameters
        ----------
        X : pl.DataFrame, pd.DataFrame or np.ndarray
            Feature matrix; every column of a frame is a feature.
        y : pl.Series, pd.Series or array-like
            Finite labels, one per row.
        eval_X, eval_y : optional
            Evaluation rows (named ``"valid"`` in LightGBM, see :data:`VALID_NAME`); a frame is
            read by the training feature names.
        eval_metric : callable or list of callables, optional
            LightGBM ``feval``: ``f(preds, dataset) -> (name, value, is_higher_better)``.
        callbacks : list of callables, optional
            LightGBM callbacks (e.g. ``optuna_integration.LightGBMPruningCallback``).

        Returns
        -------
        LGBMForecaster
            ``self``, fitted.

        Raises
        ------
        ParameterError
            When a hyperparameter is out of range or only one of ``eval_X``/``eval_y`` is given.
        SchemaError
            When the features or labels break their contract.
        """
        self._check_params()
        x, names = feature_matrix(X)
        label = label_vector(y, x.shape[0], name="y")
        params = self.lgb_params()
        train_set = lgb.Dataset(x, label=label, feature_name=names, params=params)
        if (eval_X is None) != (eval_y is None):
            given, missing = ("eval_X", "eval_y") if eval_y is None else ("eval_y", "eval_X")
            raise ParameterError(
                f"The '{missing}' parameter of LGBMForecaster.fit must be given with '{given}'. "
                f"Got {missing}=None. Fix: pass both or neither."
            )
        valid_set = None
        if eval_X is not None:
            ex, _ = feature_matrix(eval_X, names if not isinstance(eval_X, np.ndarray) else None)
            ey = label_vector(eval_y, ex.shape[0], name="eval_y")
            valid_set = lgb.Dataset(ex, label=ey, reference=train_set)
        return self._train(params, train_set, valid_set, names, eval_metric, callbacks)

    def fit_binned(
        self,
        rows: BinnedRows,
        *,
        evaluate: bool = False,
        eval_metric: Callable[..., Any] | Sequence[Callable[..., Any]] | None = None,
        callbacks: Sequence[Callable[..., Any]] | None = None,
    ) -> LGBMForecaster:
        """Train on rows binned once (:class:`BinnedRows`): the same booster as :meth:`fit` on
        ``rows``' arrays, without binning them again.

        Parameters
        ----------
        rows : BinnedRows
            The training rows (and evaluation rows, read when ``evaluate`` is set).
        evaluate : bool, default False
            Evaluate on ``rows``' evaluation rows (named ``"valid"``), as ``fit(..., eval_X,
            eval_y)`` does.
        eval_metric, callbacks
            As in :meth:`fit`.

        Returns
        -------
        LGBMForecaster
            ``self``, fitted.
        """
        self._check_params()
        params = self.lgb_params()
        if evaluate and rows.eval_x is None:
            raise ParameterError(
                "The 'evaluate' parameter of LGBMForecaster.fit_binned needs evaluation rows. "
                "Got evaluate=True and BinnedRows without eval_x. Fix: pass eval_x and eval_y "
                "to BinnedRows, or evaluate=False."
            )
        train_set, valid_set = rows.datasets(params, evaluate=evaluate)
        return self._train(params, train_set, valid_set, rows.names, eval_metric, callbacks)

    def _train(
        self,
        params: dict[str, Any],
        train_set: lgb.Dataset,
        valid_set: lgb.Dataset | None,
        names: list[str],
        eval_metric: Callable[..., Any] | Sequence[Callable[..., Any]] | None,
        callbacks: Sequence[Callable[..., Any]] | None,
    ) -> LGBMForecaster:
        valid_sets = [] if valid_set is None else [valid_set]
        cbs = list(callbacks or ())
        evals: dict[str, Any] = {}
        if valid_sets:
            cbs.append(lgb.record_evaluation(evals))
        if self.early_stopping_rounds is not None:
            if not valid_sets:
                raise ParameterError(
                    "The 'early_stopping_rounds' parameter of LGBMForecaster needs evaluation "
                    f"rows. Got early_stopping_rounds={self.early_stopping_rounds} and no eval_X. "
                    "Fix: pass eval_X and eval_y to fit, or set early_stopping_rounds=None."
                )
            cbs.append(
                lgb.early_stopping(
                    self.early_stopping_rounds, first_metric_only=True, verbose=False
                )
            )
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=self.num_boost_round,
            valid_sets=valid_sets or None,
            valid_names=[VALID_NAME] if valid_sets else None,
            feval=eval_metric,
            callbacks=cbs or None,
        )
        self.booster_ = booster
        self.feature_names_ = names
        self.n_features_in_ = len(names)
        stopped = self.early_stopping_rounds is not None and booster.best_iteration > 0
        self.best_iteration_ = booster.best_iteration if stopped else booster.current_iteration()
        self.evals_result_ = evals
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Return predictions (probabilities for ``binary``) for the rows of ``X``.

        Parameters
        ----------
        X : pl.DataFrame, pd.DataFrame or np.ndarray
            Rows to score; a frame is read by the fitted feature names (extra columns such as
            ``symbol``, ``ts`` or ``label`` are ignored), an array must have the fitted columns.

        Returns
        -------
        np.ndarray
            One float per row, using ``best_iteration_`` rounds.
        """
        check_is_fitted(self, "booster_")
        x, _ = feature_matrix(X, self.feature_names_)
        return self.booster_.predict(x, num_iteration=self.best_iteration_)

    def _check_params(self) -> None:
        def whole(name: str, value: Any, low: int, *, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
                raise ParameterError(
                    f"The '{name}' parameter of LGBMForecaster must be an int >= {low}. "
                    f"Got {value!r} instead. Fix: pass a whole number >= {low}."
                )

        whole("num_boost_round", self.num_boost_round, 1)
        whole("early_stopping_rounds", self.early_stopping_rounds, 1, allow_none=True)
        whole("num_leaves", self.num_leaves, 2)
        for name in ("feature_fraction", "bagging_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ParameterError(
                    f"The '{name}' parameter of LGBMForecaster must be in (0, 1]. "
                    f"Got {value!r} instead. Fix: pass a fraction such as 0.8."
                )


def estimator_params() -> list[str]:
    """Return the names of :class:`LGBMForecaster`'s keyword arguments."""
    return list(inspect.signature(LGBMForecaster.__init__).parameters)[1:]


def check_params(arg: str, names: Iterable[str], allowed: Sequence[str] | None = None) -> None:
    """Raise :class:`ParameterError` for the first name that is no :class:`LGBMForecaster` argument.

    ``arg`` names the offending argument or config field in the message; ``allowed`` narrows the
    valid names (default: every keyword argument).
    """
    valid = list(estimator_params() if allowed is None else allowed)
    for name in names:
        if name not in valid:
            hint = difflib.get_close_matches(name, valid, n=1)
            raise ParameterError(
                f"The '{arg}' parameter has the key {name!r}, which is no LGBMForecaster "
                "parameter."
                + (f" Did you mean {hint[0]!r}?" if hint else "")
                + f" Allowed: {valid}."
            )
