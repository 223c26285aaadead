"""Overfitting statistics: the papers' examples, an R oracle, Monte Carlo, properties, PBO."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from workbench.errors import ParameterError
from workbench.validation.overfitting import (
    PBOResult,
    deflated_sharpe_ratio,
    dsr_from_returns,
    effective_trials,
    expected_max_sharpe,
    min_track_record_length,
    pbo_from_cpcv,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    psr_from_returns,
    sharpe_per_period,
)


# ------------------------------------------------------------------------------ worked examples
def test_deflated_sharpe_ratio_paper_example() -> None:
    # Bailey & López de Prado (2014), numerical example: SR 2.5 annualised, 5 years of daily
    # returns (T = 1250), skew -3, kurtosis 10, N = 100 trials with annualised V[SR] = 0.5.
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)  # the paper's daily SR0 (~1.79 annualised)
    dsr = deflated_sharpe_ratio(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, 0.5 / 250)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_psr_and_min_trl_match_performance_analytics() -> None:
    # R PerformanceAnalytics' documented example (SR 2 vs 1 annualised, 59 monthly returns, skew
    # -0.72, kurtosis 5.78). Its defaults ignore kurtosis (raw 3), giving
    #   ProbSharpeRatio(...) = 0.9597434 and MinTrackRecord(...) = 52.37369.
    sr, bench = 2 / math.sqrt(12), 1 / math.sqrt(12)
    assert probabilistic_sharpe_ratio(sr, bench, 59, -0.72, 3.0) == pytest.approx(
        0.9597434, abs=1e-7
    )
    assert min_track_record_length(sr, bench, -0.72, 3.0) == pytest.approx(52.37369, abs=1e-5)
    # with the kurtosis taken into account the evidence is weaker and the record must be longer
    assert probabilistic_sharpe_ratio(sr, bench, 59, -0.72, 5.78) == pytest.approx(
        0.94869, abs=1e-5
    )
    assert min_track_record_length(sr, bench, -0.72, 5.78) == pytest.approx(59.8951, abs=1e-4)


def test_normal_returns_reduce_to_the_textbook_test() -> None:
    # skew 0, kurtosis 3: z = (SR - SR*) sqrt(n - 1) / sqrt(1 + SR²/2) (Lo 2002)
    sr, n = 0.1, 500
    z = sr * math.sqrt(n - 1) / math.sqrt(1 + sr**2 / 2)
    assert probabilistic_sharpe_ratio(sr, 0.0, n) == pytest.approx(stats.norm.cdf(z), rel=1e-12)
    assert expected_max_sharpe(1, 0.3) == 0.0


def test_psr_is_calibrated_under_skew_and_fat_tails() -> None:
    # Monte Carlo: returns with skew -1.41 and kurtosis 6 at their true SR; PSR > 0.95 should
    # happen 5% of the time. Ignoring the higher moments doubles the false positives.
    rng = np.random.default_rng(7)
    shape, n = 2.0, 250
    r = 0.4 - (rng.gamma(shape, 1.0, size=(6000, n)) - shape)
    true_sr, skew, kurt = 0.4 / math.sqrt(shape), -2 / math.sqrt(shape), 3 + 6 / shape
    sr = r.mean(axis=1) / r.std(axis=1, ddof=1)
    assert sr.var() * (n - 1) == pytest.approx(
        1 - skew * true_sr + (kurt - 1) / 4 * true_sr**2, rel=0.06
    )
    psr = probabilistic_sharpe_ratio(sr, true_sr, n, skew, kurt)
    assert 0.035 < np.mean(psr > 0.95) < 0.065
    assert np.mean(probabilistic_sharpe_ratio(sr, true_sr, n) > 0.95) > 0.08


def test_expected_max_sharpe_matches_simulation() -> None:
    rng = np.random.default_rng(11)
    for n_trials in (10, 100, 1000):
        simulated = (0.2 * rng.normal(size=(3000, n_trials))).max(axis=1).mean()
        assert expected_max_sharpe(n_trials, 0.04) == pytest.approx(simulated, rel=0.04)


def test_from_returns() -> None:
    rng = np.random.default_rng(5)
    r = rng.standard_t(5, size=1000) * 0.01 + 0.001
    sr = r.mean() / r.std(ddof=1)
    expected = probabilistic_sharpe_ratio(
        sr, 0.02, len(r), stats.skew(r), stats.kurtosis(r, fisher=False)
    )
    assert psr_from_returns(r, 0.02) == pytest.approx(expected, rel=1e-12)
    assert psr_from_returns(pl.Series(r), 0.02) == pytest.approx(expected, rel=1e-12)
    trials = rng.normal(0, 0.03, size=50)
    dsr = dsr_from_returns(r, trials)
    assert dsr == pytest.approx(
        deflated_sharpe_ratio(
            sr, len(r), stats.skew(r), stats.kurtosis(r, fisher=False), 50, trials.var(ddof=1)
        ),
        rel=1e-12,
    )
    assert dsr < psr_from_returns(r)


def test_vectorised_inputs() -> None:
    srs = np.array([0.0, 0.05, 0.1])
    out = probabilistic_sharpe_ratio(srs, 0.0, 252)
    assert isinstance(out, np.ndarray) and out.shape == (3,) and out[0] == 0.5
    assert isinstance(probabilistic_sharpe_ratio(0.1, 0.0, 252), float)
    assert np.all(np.diff(expected_max_sharpe(np.array([1, 2, 10, 100]), 0.01)) > 0)
    assert min_track_record_length(0.05, 0.1) == math.inf


# ----------------------------------------------------------------------------------- properties
per_period_sr = st.floats(-0.3, 0.3)  # beyond that a per-period SR is an annualised one


@st.composite
def moments(draw: st.DrawFn) -> tuple[float, float]:
    skew = draw(st.floats(-3.0, 3.0))
    return skew, 1.0 + skew**2 + draw(st.floats(0.0, 10.0))


@settings(max_examples=200, deadline=None)
@given(
    per_period_sr,
    per_period_sr,
    st.floats(0.001, 0.1),
    per_period_sr,
    st.integers(2, 5000),
    moments(),
)
def test_psr_monotone_in_sr_and_n(sr, other, step, bench, n, mom) -> None:
    skew, kurt = mom
    lo, hi = min(sr, other), max(sr, other)
    assert (
        probabilistic_sharpe_ratio(lo, bench, n, skew, kurt)
        <= probabilistic_sharpe_ratio(hi, bench, n, skew, kurt) + 1e-12
    )
    p_short = probabilistic_sharpe_ratio(sr, bench, n, skew, kurt)
    p_long = probabilistic_sharpe_ratio(sr, bench, n + 100, skew, kurt)
    if sr > bench:
        assert p_long >= p_short - 1e-12
    elif sr < bench:
        assert p_long <= p_short + 1e-12
    # a higher benchmark is harder to beat
    assert probabilistic_sharpe_ratio(sr, bench + step, n, skew, kurt) <= p_short + 1e-12


@settings(max_examples=200, deadline=None)
@given(
    per_period_sr, st.integers(2, 5000), moments(), st.integers(2, 10_000), st.floats(1e-6, 0.05)
)
def test_dsr_below_psr_and_falls_with_trials(sr, n, mom, n_trials, var) -> None:
    skew, kurt = mom
    dsr = deflated_sharpe_ratio(sr, n, skew, kurt, n_trials, var)
    assert dsr <= probabilistic_sharpe_ratio(sr, 0.0, n, skew, kurt) + 1e-12
    assert deflated_sharpe_ratio(sr, n, skew, kurt, n_trials + 10, var) <= dsr + 1e-12
    assert deflated_sharpe_ratio(sr, n, skew, kurt, 1, var) == pytest.approx(
        probabilistic_sharpe_ratio(sr, 0.0, n, skew, kurt)
    )


@settings(max_examples=200, deadline=None)
@given(per_period_sr, per_period_sr, moments(), st.floats(0.5, 0.999))
def test_min_trl_inverts_psr(sr, bench, mom, prob) -> None:
    assume(sr - bench > 0.005)
    skew, kurt = mom
    n = min_track_record_length(sr, bench, skew, kurt, prob)
    assume(n >= 2)
    assert probabilistic_sharpe_ratio(sr, bench, n, skew, kurt) == pytest.approx(prob, abs=1e-9)


# ------------------------------------------------------------------------------------------ PBO
def naive_pbo(m: np.ndarray, s: int) -> np.ndarray:
    """Reference CSCV: loops, per-combination Sharpe ratios, ranks by counting."""
    blocks = np.array_split(np.arange(len(m)), s)
    logits = []
    for combo in itertools.combinations(range(s), s // 2):
        ins = np.concatenate([blocks[b] for b in combo])
        oos = np.concatenate([blocks[b] for b in range(s) if b not in combo])
        sr_is = m[ins].mean(0) / m[ins].std(0, ddof=1)
        sr_oos = m[oos].mean(0) / m[oos].std(0, ddof=1)
        best = int(np.argmax(sr_is))
        v = sr_oos[best]
        rank = (sr_oos < v).sum() + ((sr_oos == v).sum() + 1) / 2
        w = rank / (m.shape[1] + 1)
        logits.append(math.log(w / (1 - w)))
    return np.array(logits)


def test_pbo_matches_reference_and_metric_path() -> None:
    rng = np.random.default_rng(2)
    m = rng.normal(0.0002, 0.01, size=(203, 9))  # T not a multiple of S: uneven blocks
    res = probability_of_backtest_overfitting(m, 8)
    ref = naive_pbo(m, 8)
    assert isinstance(res, PBOResult) and len(res.logits) == math.comb(8, 4) == 70
    np.testing.assert_allclose(res.logits, ref, rtol=1e-10)
    assert res.pbo == pytest.approx(np.mean(ref <= 0))

    def sharpe(x: np.ndarray) -> np.ndarray:
        return x.mean(0) / x.std(0, ddof=1)

    slow = probability_of_backtest_overfitting(m, 8, metric=sharpe)
    np.testing.assert_allclose(slow.logits, res.logits, rtol=1e-10)
    np.testing.assert_allclose(slow.is_performance, res.is_performance, rtol=1e-8)
    np.testing.assert_allclose(slow.oos_performance, res.oos_performance, rtol=1e-8)


def test_pbo_of_noise_is_near_one_half() -> None:
    pbos = [
        probability_of_backtest_overfitting(
            np.random.default_rng(seed).normal(0, 0.01, size=(320, 20)), 8
        ).pbo
        for seed in range(30)
    ]
    assert 0.4 < np.mean(pbos) < 0.6


def test_pbo_of_a_real_edge_is_near_zero() -> None:
    rng = np.random.default_rng(4)
    m = rng.normal(0, 0.01, size=(1600, 30))
    m[:, 13] += 0.004  # a daily SR of 0.4 in every block, against 29 noise configurations
    res = probability_of_backtest_overfitting(m, 16)
    assert len(res.logits) == 12_870
    assert res.pbo < 0.01 and res.prob_oos_loss < 0.01
    slope, _ = res.degradation()
    assert np.isfinite(slope)


def test_pbo_invariances_and_inputs() -> None:
    rng = np.random.default_rng(8)
    m = rng.normal(0.0, 0.01, size=(240, 6))
    base = probability_of_backtest_overfitting(m, 6)
    perm = probability_of_backtest_overfitting(m[:, ::-1] * np.arange(1, 7), 6)  # order, scale
    np.testing.assert_allclose(perm.logits, base.logits)
    frame = pl.DataFrame(m, schema=[f"c{i}" for i in range(6)])
    for x in (frame, frame.to_pandas(), pd.DataFrame(m)):
        np.testing.assert_allclose(probability_of_backtest_overfitting(x, 6).logits, base.logits)
    m[:, 2] = 0.0  # a configuration that never trades: Sharpe 0, still ranked
    assert np.isfinite(probability_of_backtest_overfitting(m, 6).logits).all()


def test_pbo_from_cpcv_pools_paths() -> None:
    rng = np.random.default_rng(9)
    paths = [rng.normal(0, 0.01, size=(200, 5)) for _ in range(3)]
    pooled = pbo_from_cpcv(paths, n_splits=4)
    each = [probability_of_backtest_overfitting(p, 4) for p in paths]
    np.testing.assert_allclose(pooled.logits, np.concatenate([e.logits for e in each]))
    assert pooled.pbo == pytest.approx(np.mean([e.pbo for e in each]))
    assert pbo_from_cpcv(np.stack(paths), 4).pbo == pooled.pbo


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: probabilistic_sharpe_ratio(0.1, 0.0, 1),
            "The 'n' parameter of probabilistic_sharpe_ratio must be a number of observations >= 2. Got 1 instead.",
        ),
        (
            lambda: probabilistic_sharpe_ratio(0.1, 0.0, 100, -1.0, 0.5),
            "raw kurtosis .* if it is excess kurtosis, add 3",
        ),
        (lambda: probabilistic_sharpe_ratio(float("nan"), 0.0, 100), "'sr' parameter"),
        (
            lambda: expected_max_sharpe(0, 0.1),
            "The 'n_trials' parameter of expected_max_sharpe must be an int >= 1. Got 0 instead.",
        ),
        (lambda: expected_max_sharpe(10, -0.1), "'var_sharpe' parameter"),
        (
            lambda: min_track_record_length(0.2, 0.1, prob=1.0),
            "'prob' parameter of min_track_record_length must be a float in \\(0, 1\\)",
        ),
        (lambda: psr_from_returns([0.01, np.nan, 0.02, 0.0]), "drop nulls first"),
        (lambda: psr_from_returns([0.01] * 10), "constant"),
        (lambda: dsr_from_returns([0.01, 0.02, -0.01], [0.1]), "at least 2 finite Sharpe"),
        (
            lambda: probability_of_backtest_overfitting(np.zeros((100, 4)), 5),
            "The 'n_splits' parameter of probability_of_backtest_overfitting must be an even int >= 2. Got 5 instead.",
        ),
        (
            lambda: probability_of_backtest_overfitting(np.zeros((10, 4)), 16),
            "T >= 2 \\* n_splits = 32 rows. Got shape \\(10, 4\\)",
        ),
        (
            lambda: probability_of_backtest_overfitting(np.zeros((100, 1)), 4),
            "N >= 2 configurations",
        ),
        (
            lambda: probability_of_backtest_overfitting(np.full((100, 3), np.nan), 4),
            "300 non-finite",
        ),
        (lambda: pbo_from_cpcv([], 4), "at least one path"),
    ],
)
def test_bad_parameters(call, message) -> None:
    with pytest.raises(ParameterError, match=message):
        call()


@pytest.mark.parametrize(
    ("m", "rho", "want"),
    [(10, 0.0, 10), (10, 1.0, 1), (10, 0.5, 6), (16, 0.8686, 3), (10, -0.3, 10), (1, 0.2, 1)],
)
def test_effective_trials(m: int, rho: float, want: int) -> None:
    # ceil(rho + (1 - rho) * M), hand-computed: 0.5 + 5 = 5.5 -> 6; 0.8686 + 0.1314 * 16 = 2.97 -> 3
    assert effective_trials(m, rho) == want


@given(st.integers(1, 500), st.floats(-1, 1))
def test_effective_trials_bounds_and_monotone(m: int, rho: float) -> None:
    n = effective_trials(m, rho)
    assert 1 <= n <= m
    assert effective_trials(m, min(1.0, rho + 0.1)) <= n


def test_effective_trials_errors() -> None:
    with pytest.raises(ParameterError, match="'n_trials'.*int >= 1. Got 0"):
        effective_trials(0, 0.5)
    with pytest.raises(ParameterError, match=r"'mean_correlation'.*\[-1, 1\]. Got 1.5"):
        effective_trials(5, 1.5)


def test_dsr_from_returns_with_an_explicit_trial_count() -> None:
    r = np.random.default_rng(5).normal(0.0003, 0.001, 1000)
    srs = [0.01, 0.03, -0.02, 0.0]
    sr, n = r.mean() / r.std(ddof=1), len(r)
    skew, kurt = stats.skew(r), stats.kurtosis(r, fisher=False)
    for count in (1, 4, 40):
        want = deflated_sharpe_ratio(sr, n, skew, kurt, count, np.var(srs, ddof=1))
        assert dsr_from_returns(r, srs, n_trials=count) == pytest.approx(want, rel=1e-9)
    assert dsr_from_returns(r, srs) == dsr_from_returns(r, srs, n_trials=4)
    with pytest.raises(ParameterError, match="'n_trials'.*int >= 1. Got 0"):
        dsr_from_returns(r, srs, n_trials=0)


def test_sharpe_per_period_hand_case() -> None:
    r = np.array([0.01, -0.01, 0.02, 0.0])  # mean 0.005; deviations 0.005, -0.015, 0.015, -0.005
    sd = math.sqrt((0.005**2 + 0.015**2 + 0.015**2 + 0.005**2) / 3)
    assert sharpe_per_period(r) == pytest.approx(0.005 / sd)
    assert sharpe_per_period([0.01, np.nan, -0.01, 0.02, 0.0]) == pytest.approx(0.005 / sd)
    assert sharpe_per_period(np.zeros(10)) == 0.0  # never traded: no edge, still ranks
    assert sharpe_per_period([np.nan, 1.0]) == 0.0
