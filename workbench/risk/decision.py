"""Decision policy: a model's prediction becomes a side (long, flat, short) and a conviction.

Three methods, all resolved to a pair of thresholds before trading (so the backtest kernel and
the session compare numbers, never re-fit anything):

- ``threshold``: long above ``long``, short below ``short`` (in the prediction's units);
- ``quantile``: the thresholds are the ``long`` and ``short`` quantiles of the model's
  predictions on its *training* rows (never on the rows it trades);
- ``probability``: long when the predicted probability is above ``long``, short below
  ``short``; the conviction (probability of winning) feeds the Kelly sizer.

Cost-aware thresholds (``threshold`` with ``cost_multiples``): trade only where the predicted
return exceeds ``m`` times the expected round-trip cost of the cost model
(:func:`round_trip_cost`, return units), long above ``+m x cost`` and short below ``-m x cost``.
The train step's search chooses ``m`` among ``cost_multiples`` by purged cross-validation on the
training window (each trial's folds are backtested with its ``m``); validation and the session
trade the chosen thresholds (:meth:`DecisionPolicy.at_cost_multiple`).

An optional trend filter keeps longs to closes above their ``trend_filter``-bar moving average
and shorts to closes below it. The side itself is computed by
:func:`workbench.risk._kernel.side_nb`, the one implementation every path calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from workbench.config import CostsConfig, DecisionConfig
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

    @classmethod
    def at_cost_multiple(
        cls, config: DecisionConfig, costs: CostsConfig, multiple: float
    ) -> DecisionPolicy:
        """Thresholds ``+-multiple x round_trip_cost(costs)`` (predictions in return units)."""
        if not (multiple >= 0 and np.isfinite(multiple)):
            raise ParameterError(
                f"The cost multiple of a cost-aware decision must be a finite number >= 0. Got "
                f"{multiple!r}. Fix: pick one of decision.cost_multiples."
            )
        edge = float(multiple) * round_trip_cost(costs)
        return cls(config, edge, -edge)

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


def round_trip_cost(costs: CostsConfig) -> float:
    """Expected cost of entering and leaving a position, as a return (fraction of notional).

    Twice the per-side proportional cost of the cost model: half spread, commission in bps and
    base slippage. Per-share and flat commissions, square-root impact, the open/close U-shape and
    borrow depend on price, size or time and are left out (the backtest still charges them).
    """
    side_bps = costs.half_spread_bps + costs.commission_bps + costs.slippage_bps
    return 2.0 * side_bps / 1e4


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
