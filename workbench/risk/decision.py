"""Decision policy: a model's prediction becomes a side (long, flat, short) and a conviction.

Three methods, all resolved to a pair of thresholds before trading (so the backtest kernel and
the session compare numbers, never re-fit anything):

- ``threshold``: long above ``long``, short below ``short`` (in the prediction's units);
- ``quantile``: the thresholds are the ``long`` and ``short`` quantiles of the model's
  predictions on its *training* rows (never on the rows it trades);
- ``probability``: long when the predicted probability is above ``long``, short below
  ``short``; the conviction (probability of winning) feeds the Kelly sizer.

An optional trend filter keeps longs to closes above their ``trend_filter``-bar moving average
and shorts to closes below it. The side itself is computed by
:func:`workbench.risk._kernel.side_nb`, the one implementation every path calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from workbench.config import DecisionConfig
from workbench.errors import ParameterError
from workbench.risk import _kernel as K


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    """A decision config with its thresholds resolved.

    Attributes
    ----------
    config : DecisionConfig
        The strategy's ``decision:`` section.
    long, short : float
        Thresholds in prediction units (quantiles already turned into values).
    """

    config: DecisionConfig
    long: float
    short: float

    @classmethod
    def from_config(
        cls, config: DecisionConfig, train_predictions: np.ndarray | None = None
    ) -> DecisionPolicy:
        """Resolve the thresholds; ``quantile`` needs the model's training-window predictions.

        Raises
        ------
        ParameterError
            When ``quantile`` gets no (or too few finite) training predictions.
        """
        if config.method != "quantile":
            return cls(config, float(config.long), float(config.short))
        if train_predictions is None:
            raise ParameterError(
                "decision.method 'quantile' needs the model's predictions on its training rows; "
                "got none. Fix: pass train_predictions (the train stage records the resolved "
                "thresholds on the model version), or use method: threshold."
            )
        p = np.asarray(train_predictions, dtype=float)
        p = p[np.isfinite(p)]
        if len(p) < 10:
            raise ParameterError(
                f"decision.method 'quantile' needs at least 10 finite training predictions; got "
                f"{len(p)}. Fix: train on more rows or use method: threshold."
            )
        hi, lo = np.quantile(p, [config.long, config.short])
        return cls(config, float(hi), float(lo))

    def thresholds(self) -> dict[str, float]:
        """Return the resolved thresholds (for logging on a model version or a run)."""
        return {"long": self.long, "short": self.short}

    def decide(
        self,
        predictions: np.ndarray,
        close: np.ndarray | None = None,
        moving_average: np.ndarray | None = None,
        *,
        allow_short: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(side, conviction)`` arrays for predictions (NaN prediction: side 0).

        ``close`` and ``moving_average`` are needed only with a trend filter (the moving average
        of the last ``trend_filter`` closes up to each row, e.g. from
        :func:`workbench.risk._kernel.risk_inputs_nb`).
        """
        p = np.ascontiguousarray(predictions, dtype=float).ravel()
        if self.config.trend_filter is not None and (close is None or moving_average is None):
            raise ParameterError(
                f"decision.trend_filter={self.config.trend_filter} needs close and "
                "moving_average arrays; got none. Fix: pass both, or drop trend_filter."
            )
        c = np.ascontiguousarray(close if close is not None else np.full_like(p, np.nan), float)
        ma = moving_average if moving_average is not None else np.full_like(p, np.nan)
        rp = np.full(K.N_R, np.nan)
        rp[K.R_LONG], rp[K.R_SHORT] = self.long, self.short
        rp[K.R_PROBABILITY] = float(self.config.method == "probability")
        rp[K.R_TREND] = float(self.config.trend_filter is not None)
        rp[K.R_ALLOW_SHORT] = float(allow_short)
        return _decide_nb(p, c.ravel(), np.ascontiguousarray(ma, float).ravel(), rp)


@njit(cache=True)
def _decide_nb(p, c, ma, rp):
    side = np.zeros(len(p), dtype=np.int64)
    conv = np.full(len(p), np.nan)
    for i in range(len(p)):
        if np.isnan(p[i]):
            continue
        side[i] = K.side_nb(p[i], c[i], ma[i], rp)
        conv[i] = K.conviction_nb(p[i], side[i], rp)
    return side, conv
