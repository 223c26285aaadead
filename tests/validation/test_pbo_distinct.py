"""PBO among distinct candidates: near-duplicates merged, 'not measurable' below the minimum,
the per-path dispersion, and the gate report that says so."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.config import GatesConfig
from workbench.errors import ParameterError
from workbench.validation.cpcv import cpcv_pbo, distinct_candidates
from workbench.validation.cv import CombinatorialPurgedKFold
from workbench.validation.gates import evaluate_gates
from workbench.validation.overfitting import pbo_from_cpcv, probability_of_backtest_overfitting

from ..models.conftest import FEATURES, make_table
from .test_cpcv_pbo import GOOD, USELESS, sign_pnl


def _copies(rng: np.random.Generator, base: np.ndarray, k: int, noise: float) -> np.ndarray:
    return np.column_stack([base + noise * rng.normal(size=base.size) for _ in range(k)])


def test_near_duplicates_merge_and_independent_series_stay_apart() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(size=2000)
    m = np.column_stack([_copies(rng, a, 3, 0.05), _copies(rng, b, 2, 0.05), rng.normal(size=2000)])
    labels = distinct_candidates(m, 0.9)
    assert labels.tolist() == [0, 0, 0, 1, 1, 2]  # numbered in column order
    # 1.0: only exact copies merge
    assert distinct_candidates(np.column_stack([a, a, b]), 1.0).tolist() == [0, 0, 1]
    assert len(set(distinct_candidates(m, 1.0).tolist())) == 6


def test_flat_columns_are_one_candidate_apart_from_the_rest() -> None:
    rng = np.random.default_rng(1)
    m = np.column_stack([np.zeros(500), rng.normal(size=500), np.zeros(500)])
    assert distinct_candidates(m, 0.9).tolist() == [0, 1, 0]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 8),
    thr=st.floats(0.3, 0.99),
    noise=st.floats(0.0, 2.0),
)
def test_every_pair_inside_a_cluster_correlates_above_the_threshold(
    seed: int, n: int, thr: float, noise: float
) -> None:
    """Complete linkage: checked against numpy's corrcoef pair by pair."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=300)
    m = np.column_stack([base + noise * rng.normal(size=300) for _ in range(n)])
    labels = distinct_candidates(m, thr)
    corr = np.corrcoef(m, rowvar=False)
    for i, j in itertools.combinations(range(n), 2):
        if labels[i] == labels[j]:
            assert corr[i, j] >= thr - 1e-9
    # and a cluster is never split when all its pairs are above (every pair above: one cluster)
    if np.all(corr[np.triu_indices(n, 1)] >= thr):
        assert set(labels.tolist()) == {0}


def _paths(rng: np.random.Generator, k_paths: int, t: int, cols: int) -> list[np.ndarray]:
    return [rng.normal(size=(t, cols)) * 0.01 for _ in range(k_paths)]


def test_pbo_std_is_the_spread_of_the_per_path_pbos() -> None:
    rng = np.random.default_rng(2)
    mats = _paths(rng, 5, 160, 4)
    res = pbo_from_cpcv(mats, 8)
    each = [probability_of_backtest_overfitting(m, 8).pbo for m in mats]
    np.testing.assert_allclose(res.path_pbo, each)
    assert res.pbo_std == pytest.approx(np.std(each, ddof=1))
    assert np.isnan(probability_of_backtest_overfitting(mats[0], 8).pbo_std)  # one matrix


@pytest.fixture(scope="module")
def planted() -> pl.DataFrame:
    return make_table(n_ts=300, seed=3).sort("ts", "symbol")


def test_cscv_runs_over_one_representative_per_cluster(planted: pl.DataFrame) -> None:
    """Two bagged fits of one configuration (different seeds: near, not exact, copies) count
    once: the PBO equals CSCV over the representatives' columns, assembled by hand."""
    bagged = {**GOOD, "bagging_fraction": 0.9}
    configs = [
        bagged,
        {**bagged, "seed": 1},
        {**GOOD, "num_leaves": 2, "learning_rate": 0.03},
        USELESS,
    ]
    cv = CombinatorialPurgedKFold(4, 2, embargo=2)
    fn = sign_pnl(planted)
    merged = cpcv_pbo(planted, FEATURES, configs=configs, splitter=cv, returns_fn=fn, n_splits=4,
                      progress=False, duplicate_correlation=0.9)  # fmt: skip
    mats = [np.column_stack(cols) for cols in _path_returns(planted, configs, cv, fn)]
    stacked = np.vstack(mats)
    corr = np.corrcoef(stacked[:, :2], rowvar=False)[0, 1]
    assert 0.9 < corr < 1.0  # near, not exact, duplicates
    assert len(set(distinct_candidates(stacked, 1.0).tolist())) == 4  # all kept at 1.0
    labels = distinct_candidates(stacked, 0.9)
    reps = [int(np.flatnonzero(labels == c)[0]) for c in range(labels.max() + 1)]
    assert merged.representatives == reps and merged.clusters.tolist() == labels.tolist()
    assert merged.clusters[0] == merged.clusters[1] and merged.n_distinct == len(reps) < 4
    want = pbo_from_cpcv([m[:, reps] for m in mats], 4)
    assert merged.pbo.pbo == want.pbo
    np.testing.assert_allclose(merged.pbo.logits, want.logits)
    assert merged.pbo.pbo_std == pytest.approx(want.pbo_std, nan_ok=True)
    assert f"over {len(reps)} distinct candidates among 4" in merged.describe()


def _path_returns(table, configs, cv, fn):
    from workbench.models.estimator import LGBMForecaster

    x, y = table.select(FEATURES).to_numpy(), table["label"].to_numpy()
    mats: list[list[np.ndarray]] = [[] for _ in range(cv.n_paths)]
    for cfg in configs:
        preds = [
            LGBMForecaster(**cfg).fit(x[tr], y[tr]).predict(x[te]) for tr, te in cv.split(table)
        ]
        for p, row in enumerate(cv.stitch_paths(table, preds)):
            mats[p].append(fn(table.select("symbol", "ts").with_columns(prediction=row)))
    return mats


def test_copies_of_one_configuration_are_not_measurable(planted: pl.DataFrame) -> None:
    configs = [GOOD, {**GOOD, "seed": 1}, {**GOOD, "seed": 2}]
    cv = CombinatorialPurgedKFold(4, 2, embargo=2)
    res = cpcv_pbo(planted, FEATURES, configs=configs, splitter=cv, returns_fn=sign_pnl(planted),
                   n_splits=4, progress=False, duplicate_correlation=0.9, min_distinct=3)  # fmt: skip
    assert res.n_distinct < 3 and not res.measurable
    assert np.isnan(res.value) and "not measurable" in res.describe()


def test_one_returns_fn_per_configuration(planted: pl.DataFrame) -> None:
    """Candidates may trade differently: each configuration's paths go through its own function."""
    cv = CombinatorialPurgedKFold(4, 2, embargo=2)
    fn = sign_pnl(planted)
    calls: list[int] = []

    def tagged(k):
        def inner(preds):
            calls.append(k)
            return fn(preds)

        return inner

    cpcv_pbo(planted, FEATURES, configs=[GOOD, USELESS], splitter=cv, n_splits=4, progress=False,
             returns_fn=[tagged(0), tagged(1)])  # fmt: skip
    assert calls == [0] * cv.n_paths + [1] * cv.n_paths
    with pytest.raises(ParameterError, match="one callable per configuration"):
        cpcv_pbo(planted, FEATURES, configs=[GOOD, USELESS], splitter=cv, returns_fn=[fn])
    with pytest.raises(ParameterError, match="duplicate_correlation"):
        cpcv_pbo(planted, FEATURES, configs=[GOOD, USELESS], splitter=cv, returns_fn=fn,
                 duplicate_correlation=0.0)  # fmt: skip


def test_gate_report_says_not_measurable_and_does_not_gate_on_noise() -> None:
    gates = GatesConfig(min_sharpe=None, max_drawdown=None, min_trades=None, max_pbo=0.3)
    few = evaluate_gates({"pbo": float("nan"), "pbo_distinct": 1.0}, gates)
    row = few.frame.row(0, named=True)
    assert few.passed and row["gate"] == "max_pbo" and "not measurable" in row["note"]
    assert "pbo_min_distinct = 3" in row["note"] and few.tags()["gate.max_pbo"] == "not measurable"
    # enough distinct candidates: the PBO is gated as before, both ways
    assert not evaluate_gates({"pbo": 0.45, "pbo_distinct": 4.0}, gates).passed
    ok = evaluate_gates({"pbo": 0.1, "pbo_distinct": 4.0}, gates)
    assert ok.passed and ok.frame["note"].to_list() == [""]
    # no count (the PBO was not measured at all): NaN still fails
    missing = evaluate_gates({"pbo": float("nan")}, gates)
    assert not missing.passed and "not measured" in missing.failures()[0]
    # the minimum is the config's
    strict = GatesConfig(min_sharpe=None, max_drawdown=None, min_trades=None, max_pbo=0.3,
                         pbo_min_distinct=5)  # fmt: skip
    assert evaluate_gates({"pbo": 0.45, "pbo_distinct": 4.0}, strict).passed


def test_never_trading_configurations_are_not_candidates(planted: pl.DataFrame) -> None:
    """A configuration that never trades (zero returns on every path) is the do-nothing option,
    not a strategy to select: left out before clustering (cluster -1), so one real candidate
    beside two flat ones is not measurable, however its logits fall."""
    cv = CombinatorialPurgedKFold(4, 2, embargo=2)
    fn = sign_pnl(planted)

    def flat(preds: pl.DataFrame) -> np.ndarray:
        return np.zeros_like(fn(preds))

    res = cpcv_pbo(planted, FEATURES, configs=[GOOD, USELESS, {**USELESS, "seed": 1}],
                   splitter=cv, returns_fn=[fn, flat, flat], n_splits=4, progress=False,
                   duplicate_correlation=0.9, min_distinct=2)  # fmt: skip
    assert res.clusters.tolist() == [0, -1, -1] and res.representatives == [0]
    assert res.n_distinct == 1 and not res.measurable and np.isnan(res.value)
    assert "never-trading ones left out" in res.describe()
