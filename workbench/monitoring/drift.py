"""Distribution drift: the population stability index (PSI) and the two-sample KS test.

PSI (our convention, ``shared/reference/trading_ops.md`` §4.1):

* bins are fixed on the **reference** sample: ``bins - 1`` interior edges at its quantiles
  ``1/bins, ..., (bins-1)/bins`` (numpy's default linear interpolation); repeated edges (a
  discrete or heavily tied feature) are dropped, so such a feature has fewer bins;
* the outer bins are open: a value ``v`` falls in bin ``i = #{edges <= v}`` (bins are
  ``[e_(i-1), e_i)``, the first from -inf, the last to +inf), so live values beyond the
  reference's range still count;
* shares are floored at ``1e-4`` (an empty bin has share 1e-4, not 0);
* ``PSI = sum_i (cur_i - ref_i) * ln(cur_i / ref_i)``.

Below 0.1 is no meaningful shift, 0.1 to 0.25 moderate, above 0.25 significant (the credit-scoring
convention; ``monitoring.psi_warn`` / ``psi_alert``). Non-finite values are dropped first.

KS is :func:`scipy.stats.ks_2samp` (two-sided, ``method='auto'``): statistic and p-value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats

from workbench.errors import ParameterError

EPS = 1e-4
LEVELS = ("ok", "warn", "alert")

DRIFT_SCHEMA = {
    "column": pl.String,
    "n_reference": pl.Int64,
    "n_live": pl.Int64,
    "psi": pl.Float64,
    "ks_statistic": pl.Float64,
    "ks_pvalue": pl.Float64,
    "level": pl.String,
}


def _finite(values: object, name: str) -> np.ndarray:
    a = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values, dtype=float)
    if a.ndim != 1:
        raise ParameterError(
            f"The {name!r} parameter must be one-dimensional. Got shape {a.shape} instead."
        )
    return a[np.isfinite(a)]


def bin_edges(reference: object, bins: int = 10) -> np.ndarray:
    """Return the interior PSI edges: the reference's quantiles, repeated edges dropped."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ParameterError(f"The 'bins' parameter must be an int >= 2. Got {bins!r} instead.")
    ref = _finite(reference, "reference")
    if ref.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(ref, np.arange(1, bins) / bins))


def psi_table(reference: object, current: object, bins: int = 10) -> pl.DataFrame:
    """Return the PSI bins: ``bin, lower, upper, n_reference, n_current, reference, current,
    contribution`` (shares floored at 1e-4; ``contribution`` sums to the PSI).

    Parameters
    ----------
    reference, current : array-like
        One-dimensional samples (non-finite values are dropped).
    bins : int
        Number of reference-quantile bins before ties are merged.
    """
    ref, cur = _finite(reference, "reference"), _finite(current, "current")
    edges = bin_edges(ref, bins)
    k = edges.size + 1
    n_ref = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k)
    n_cur = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=k)
    p = np.maximum(n_ref / ref.size, EPS) if ref.size else np.full(k, np.nan)
    q = np.maximum(n_cur / cur.size, EPS) if cur.size else np.full(k, np.nan)
    return pl.DataFrame(
        {
            "bin": np.arange(k),
            "lower": np.concatenate([[-np.inf], edges]),
            "upper": np.concatenate([edges, [np.inf]]),
            "n_reference": n_ref.astype(np.int64),
            "n_current": n_cur.astype(np.int64),
            "reference": p,
            "current": q,
            "contribution": (q - p) * np.log(q / p),
        }
    )


def psi(reference: object, current: object, bins: int = 10) -> float:
    """Return the population stability index of ``current`` against ``reference``.

    Bins at the reference's quantiles with open outer edges, shares floored at 1e-4,
    ``PSI = sum (cur - ref) * ln(cur / ref)`` (see the module doc). NaN when either sample has no
    finite value.

    Examples
    --------
    >>> round(psi([1, 2, 3, 4], [1, 2, 3, 4], bins=2), 12)
    0.0
    """
    ref, cur = _finite(reference, "reference"), _finite(current, "current")
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    return float(psi_table(ref, cur, bins)["contribution"].sum())


def ks(reference: object, current: object) -> tuple[float, float]:
    """Return ``(statistic, p-value)`` of scipy's two-sample Kolmogorov-Smirnov test
    (two-sided, ``method='auto'``); NaNs when either sample has no finite value."""
    ref, cur = _finite(reference, "reference"), _finite(current, "current")
    if ref.size == 0 or cur.size == 0:
        return float("nan"), float("nan")
    res = stats.ks_2samp(ref, cur)
    return float(res.statistic), float(res.pvalue)


def level(value: float, warn: float, alert: float) -> str:
    """``ok``, ``warn`` (>= warn) or ``alert`` (>= alert); NaN is ``ok`` (no verdict)."""
    if not np.isfinite(value):
        return "ok"
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


@dataclass(frozen=True)
class DriftReport:
    """PSI and KS per column of a live window against a reference.

    ``frame`` has :data:`DRIFT_SCHEMA` (one row per column, worst first); ``bins`` the PSI bins
    of every column (``column`` plus :func:`psi_table`'s columns), so results are reproducible.
    """

    frame: pl.DataFrame
    bins: pl.DataFrame
    warn: float
    alert: float

    @property
    def alerts(self) -> list[str]:
        """Columns at the alert level."""
        return self.frame.filter(pl.col("level") == "alert")["column"].to_list()

    @property
    def warnings(self) -> list[str]:
        """Columns at the warning level."""
        return self.frame.filter(pl.col("level") == "warn")["column"].to_list()

    @property
    def max_psi(self) -> float:
        v = self.frame["psi"].drop_nans().max() if self.frame.height else None
        return float(v) if v is not None else float("nan")  # type: ignore[arg-type]

    def psi(self) -> dict[str, float]:
        """PSI per column."""
        return dict(zip(self.frame["column"], self.frame["psi"], strict=True))


def drift(
    reference: pl.DataFrame,
    live: pl.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    bins: int = 10,
    warn: float = 0.1,
    alert: float = 0.25,
    min_rows: int = 1,
) -> DriftReport:
    """Compare every column of a live window with the reference.

    Parameters
    ----------
    reference : pl.DataFrame
        Long (``column, value``: a model's saved reference, see
        :mod:`workbench.monitoring.reference`) or wide (one column per feature).
    live : pl.DataFrame
        Wide: one column per feature (and ``prediction``); other columns are ignored.
    columns : sequence of str, optional
        Columns to compare (default: those of the reference also in ``live``).
    bins, warn, alert : PSI bins and thresholds (``monitoring.psi_*``).
    min_rows : int
        Fewer finite live values: PSI and KS are NaN and the level ``ok`` (no verdict).
    """
    ref = _long(reference)
    have = ref["column"].unique(maintain_order=True).to_list()
    cols = list(columns) if columns is not None else [c for c in have if c in live.columns]
    missing = [c for c in cols if c not in have or c not in live.columns]
    if missing:
        raise ParameterError(
            f"drift: column(s) {missing} are not in both the reference ({have}) and the live "
            f"window ({live.columns}). Fix: compare the columns the model was trained on."
        )
    rows, tables = [], []
    for c in cols:
        r = ref.filter(pl.col("column") == c)["value"].to_numpy()
        x = _finite(live[c], c)
        if x.size < min_rows:
            p, (d, pv) = float("nan"), (float("nan"), float("nan"))
        else:
            tables.append(psi_table(r, x, bins).with_columns(column=pl.lit(c)))
            p = float(tables[-1]["contribution"].sum())
            d, pv = ks(r, x)
        rows.append(
            {
                "column": c,
                "n_reference": int(np.isfinite(r).sum()),
                "n_live": int(x.size),
                "psi": p,
                "ks_statistic": d,
                "ks_pvalue": pv,
                "level": level(p, warn, alert),
            }
        )
    frame = pl.DataFrame(rows, schema=DRIFT_SCHEMA).sort(
        pl.col("psi").fill_nan(None), descending=True, nulls_last=True, maintain_order=True
    )
    bins_frame = (
        pl.concat(tables).select("column", *tables[0].columns[:-1])
        if tables
        else pl.DataFrame(schema={"column": pl.String})
    )
    return DriftReport(frame, bins_frame, warn, alert)


def _long(reference: pl.DataFrame) -> pl.DataFrame:
    if {"column", "value"} <= set(reference.columns):
        return reference.select("column", pl.col("value").cast(pl.Float64))
    import polars.selectors as cs

    wide = reference.select(cs.numeric().cast(pl.Float64))
    return wide.unpivot(variable_name="column", value_name="value")
