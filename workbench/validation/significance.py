"""Paired tests of one return stream against another: the one implementation every comparison
calls (model vs its rule baseline, challenger vs champion on the same window, their shadow
sessions).

* :func:`paired_test`: one-sided test that ``mean(a - b) > 0`` on paired per-period returns, with
  Newey-West (HAC) standard errors (statsmodels; ``lags`` default
  ``floor(4 (n / 100) ** (2 / 9))``), so that autocorrelated returns do not overstate the
  evidence; the p-value from the normal distribution;
* :func:`session_test`: one-sided paired t-test (scipy) over a few paired session returns, where
  a HAC estimate has too few observations to be trusted.

Identical streams give a difference of exactly zero and a p-value of 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairedTest", "paired_test", "session_test"]


@dataclass(frozen=True)
class PairedTest:
    """A one-sided test that ``a`` beats ``b`` on paired observations."""

    n: int
    mean_diff: float
    t: float
    p_value: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean_diff": self.mean_diff, "t": self.t, "p_value": self.p_value,
                "method": self.method}  # fmt: skip


def paired_test(a: np.ndarray, b: np.ndarray, *, lags: int | None = None) -> PairedTest:
    """One-sided test of ``mean(a - b) > 0`` for paired per-period returns, HAC standard errors
    (see the module doc). Pairs with a non-finite side are dropped; fewer than 3 pairs give
    p-value 1 (no evidence)."""
    import statsmodels.api as sm
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 3:
        return PairedTest(n, float(d.mean()) if n else math.nan, math.nan, 1.0, "hac")
    lags = int(4 * (n / 100) ** (2 / 9)) if lags is None else lags
    mean = float(d.mean())
    if np.all(d == d[0]):  # no variation: the difference is exact
        if mean == 0.0:  # a tie: a difference of at least zero is certain under the null
            return PairedTest(n, 0.0, 0.0, 1.0, f"hac(lags={lags})")
        t = math.copysign(math.inf, mean)
    else:
        fit = sm.OLS(d, np.ones(n)).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
        t = float(fit.tvalues[0])
    return PairedTest(n, mean, t, float(stats.norm.sf(t)), f"hac(lags={lags})")


def session_test(pairs: Sequence[tuple[float, float]]) -> PairedTest:
    """One-sided paired t-test (scipy) that the second of each pair beats the first: ``pairs``
    are ``(champion, challenger)`` returns of the same sessions."""
    from scipy import stats

    arr = np.asarray(pairs, dtype=float).reshape(-1, 2)
    d = arr[:, 1] - arr[:, 0]
    n = len(d)
    if n < 2 or np.all(d == d[0]):
        mean = float(d.mean()) if n else math.nan
        return PairedTest(n, mean, math.nan, 0.0 if n and mean > 0 else 1.0, "paired t")
    res = stats.ttest_rel(arr[:, 1], arr[:, 0], alternative="greater")
    return PairedTest(n, float(d.mean()), float(res.statistic), float(res.pvalue), "paired t")
