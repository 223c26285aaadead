"""PSI on hand-computed fixtures (to 1e-9, empty bins included) and KS against scipy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from workbench.errors import ParameterError
from workbench.monitoring import drift, ks, psi, psi_table

REF10 = np.arange(1, 11, dtype=float)  # 1..10


def term(cur: float, ref: float) -> float:
    return (cur - ref) * math.log(cur / ref)


def test_two_bins_by_hand() -> None:
    # the median of 1..10 is 5.5: bins (-inf, 5.5) and [5.5, inf), 0.5 each in the reference
    cur = [1, 2, 3, 6, 7, 8, 9, 10, 11, 12]  # 3 below, 7 above (11 and 12 beyond the range)
    assert psi(REF10, cur, bins=2) == pytest.approx(term(0.3, 0.5) + term(0.7, 0.5), abs=1e-9)
    assert psi(REF10, cur, bins=2) == pytest.approx(0.169459572, abs=1e-9)


def test_quintiles_with_empty_live_bins_floored() -> None:
    # quantiles 0.2..0.8 of 1..10 (linear): 2.8, 4.6, 6.4, 8.2 -> two reference values per bin
    cur = [1, 1, 1, 1, 1, 9, 9, 9, 9, 9]  # first and last bin only; three bins empty
    expected = 2 * term(0.5, 0.2) + 3 * term(1e-4, 0.2)
    assert psi(REF10, cur, bins=5) == pytest.approx(expected, abs=1e-9)
    t = psi_table(REF10, cur, bins=5)
    assert t["upper"].to_list()[:-1] == pytest.approx([2.8, 4.6, 6.4, 8.2])
    assert t["n_reference"].to_list() == [2, 2, 2, 2, 2]
    assert t["n_current"].to_list() == [5, 0, 0, 0, 5]
    assert t["current"].to_list() == pytest.approx([0.5, 1e-4, 1e-4, 1e-4, 0.5], abs=1e-15)
    assert t["contribution"].sum() == pytest.approx(expected, abs=1e-12)


def test_tied_reference_merges_edges_and_floors_an_empty_reference_bin() -> None:
    # quantiles 0.25, 0.5, 0.75 (positions 2.25, 4.5, 6.75) of six zeros, 1, 2, 3, 4 are
    # 0, 0, 1.75 -> edges {0, 1.75}: bins (-inf, 0) (empty in the reference), [0, 1.75) with
    # 7 of 10, [1.75, inf) with 3
    ref = [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    cur = [-1, 0, 0, 1]  # 1, 3, 0 per bin: the last bin is empty live
    expected = term(0.25, 1e-4) + term(0.75, 0.7) + term(1e-4, 0.3)
    assert psi(ref, cur, bins=4) == pytest.approx(expected, abs=1e-9)
    t = psi_table(ref, cur, bins=4)
    assert t["upper"].to_list() == [0.0, 1.75, math.inf]
    assert t["n_reference"].to_list() == [0, 7, 3] and t["n_current"].to_list() == [1, 3, 0]


def test_a_value_on_an_edge_falls_in_the_upper_bin() -> None:
    # [e_(i-1), e_i): 5.5 belongs to the upper bin
    assert psi(REF10, [5.5] * 4, bins=2) == pytest.approx(term(1e-4, 0.5) + term(1.0, 0.5))
    assert psi(REF10, [5.4999] * 4, bins=2) == pytest.approx(term(1.0, 0.5) + term(1e-4, 0.5))


def test_nan_dropped_identical_is_zero_empty_is_nan() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    assert psi(x, x) == 0.0
    assert psi(x, np.append(x, [np.nan, np.inf])) == 0.0
    assert math.isnan(psi(x, [np.nan]))
    assert math.isnan(psi([], x))
    with pytest.raises(ParameterError, match="'bins' parameter must be an int >= 2"):
        psi(x, x, bins=1)


@pytest.mark.parametrize("seed", range(5))
def test_ks_equals_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=40 + 30 * seed), rng.normal(0.3, 1.2, size=25 + 50 * seed)
    res = stats.ks_2samp(a, b)
    assert ks(a, b) == (res.statistic, res.pvalue)
    assert ks(np.append(a, np.nan), b) == (res.statistic, res.pvalue)  # NaNs dropped


def test_drift_report_levels_and_bins() -> None:
    rng = np.random.default_rng(1)
    ref = pl.DataFrame({"a": rng.normal(size=5000), "b": rng.normal(size=5000)})
    live = pl.DataFrame({"a": rng.normal(size=1000), "b": rng.normal(1.0, 1.0, size=1000)})
    rep = drift(ref, live, warn=0.1, alert=0.25)
    assert rep.frame["column"].to_list() == ["b", "a"]  # worst first
    assert rep.alerts == ["b"] and rep.warnings == []
    assert rep.psi()["b"] == pytest.approx(psi(ref["b"], live["b"]), abs=1e-12)
    d, p = ks(ref["b"], live["b"])
    row = rep.frame.row(0, named=True)
    assert (row["ks_statistic"], row["ks_pvalue"]) == (d, p)
    per_col = rep.bins.filter(pl.col("column") == "b")["contribution"].sum()
    assert per_col == pytest.approx(rep.psi()["b"], abs=1e-12)
    # long reference (as saved with a model) gives the same numbers
    long = ref.unpivot(variable_name="column", value_name="value")
    assert drift(long, live).psi() == rep.psi()
    # too few live rows: no verdict
    few = drift(ref, live.head(20), min_rows=50)
    assert few.alerts == [] and all(math.isnan(v) for v in few.psi().values())
    with pytest.raises(ParameterError, match="not in both"):
        drift(ref, live, columns=["c"])
