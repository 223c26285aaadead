"""Rolling correlation matrices: np.corrcoef and pandas oracles, kernel parity, no look-ahead."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from workbench.errors import ParameterError
from workbench.risk import correlation as C
from workbench.risk.correlation import correlation_frame, rolling_correlation

FAST = settings(max_examples=25, deadline=None)


def _data(seed: int, t: int, n: int, nan_share: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1e-3, (t, n)) + rng.normal(0, 5e-4, (t, 1))  # a common factor
    x[rng.random(x.shape) < nan_share] = np.nan
    return x


def _ends(m: np.ndarray, window: int, every: int) -> np.ndarray:
    return window - 1 + np.arange(m.shape[0]) * every


def _pairwise(w: np.ndarray) -> np.ndarray:
    """Brute-force reference: each pair over its joint finite rows (np.corrcoef on the pair)."""
    n = w.shape[1]
    out = np.full((n, n), np.nan)
    for a in range(n):
        for b in range(n):
            ok = np.isfinite(w[:, a]) & np.isfinite(w[:, b])
            xa, xb = w[ok, a], w[ok, b]
            if ok.sum() >= 3 and xa.std() > 0 and xb.std() > 0:
                out[a, b] = 1.0 if a == b else np.corrcoef(xa, xb)[0, 1]
    return out


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    t=st.integers(3, 80),
    n=st.integers(1, 5),
    window=st.integers(3, 40),
    every=st.integers(1, 6),
)
def test_matches_corrcoef_on_each_window(seed, t, n, window, every) -> None:
    x = _data(seed, t, n)
    m = rolling_correlation(x, window, every=every)
    assert m.shape == (max((t - window) // every + 1, 0), n, n)
    for k, end in enumerate(_ends(m, window, every)):
        ref = np.atleast_2d(np.corrcoef(x[end - window + 1 : end + 1].T))
        np.testing.assert_allclose(m[k], ref, rtol=0, atol=1e-10)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    window=st.integers(3, 30),
    nan_share=st.sampled_from([0.05, 0.3, 0.7]),
)
def test_nan_pairs_match_pairwise_reference(seed, n, window, nan_share) -> None:
    x = _data(seed, 70, n, nan_share)
    for every in (1, window):  # the sliding and the spaced kernel
        m = rolling_correlation(x, window, every=every)
        for k, end in enumerate(_ends(m, window, every)):
            ref = _pairwise(x[end - window + 1 : end + 1])
            np.testing.assert_allclose(m[k], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("every", [1, 7, 60])
def test_matches_pandas_rolling_corr_with_missing_bars(every: int) -> None:
    x = _data(1, 400, 6, nan_share=0.08)
    x[100:190, 2] = np.nan  # a long gap: pairs with it fall under 3 joint rows
    window = 60
    m = rolling_correlation(x, window, every=every)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = pd.DataFrame(x).rolling(window, min_periods=3).corr()
    for k, end in enumerate(_ends(m, window, every)):
        np.testing.assert_allclose(m[k], ref.loc[end].to_numpy(), rtol=0, atol=1e-9)
    assert np.isnan(m[:, 2, 0]).any() and np.isfinite(m[:, 0, 1]).all()


def test_sliding_and_spaced_kernels_agree() -> None:
    x = _data(2, 500, 7, nan_share=0.1)
    x[:120, 3] = np.nan  # listed late
    x[200:260, 4] = 0.0123  # constant stretch
    n_out = 500 - 50 + 1
    a = C._sliding_nb(x, 50, 1, n_out)
    b = C._spaced_nb(x, 50, 1, n_out)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)
    assert np.isnan(b[:, 4, 4]).any()  # constant over whole windows: no variance


@pytest.mark.parametrize("every", [1, 13, 40])
def test_no_look_ahead_appending_rows_changes_no_earlier_matrix(every: int) -> None:
    x = _data(3, 600, 5, nan_share=0.05)
    short = rolling_correlation(x[:350], 40, every=every)
    long = rolling_correlation(x, 40, every=every)
    assert long.shape[0] > short.shape[0] > 0
    np.testing.assert_array_equal(long[: short.shape[0]], short)  # bit for bit, NaNs included
    future = x.copy()
    future[350:] = 10 * _data(4, 250, 5)  # a different future: the past matrices stay
    np.testing.assert_array_equal(rolling_correlation(future, 40, every=every)[: len(short)], short)


def test_degenerate_columns_are_nan_and_diagonal_is_one() -> None:
    x = _data(5, 120, 4)
    x[:, 1] = np.nan  # never traded
    x[:, 2] = 0.01  # constant
    x[:118, 3] = np.nan  # two rows only
    for every in (1, 100):
        m = rolling_correlation(x, 100, every=every)
        assert np.allclose(m[:, 0, 0], 1.0)
        assert np.isnan(m[:, 1:, :]).all() and np.isnan(m[:, :, 1:]).all()
        assert np.array_equal(m, m.transpose(0, 2, 1), equal_nan=True)


def test_short_input_gives_no_matrix() -> None:
    assert rolling_correlation(_data(6, 10, 3), 11).shape == (0, 3, 3)
    assert rolling_correlation(_data(6, 11, 3), 11, every=5).shape == (1, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 2}, "'window' parameter of rolling_correlation must be an int >= 3. Got 2"),
        ({"window": 30.0}, "'window' .* Got 30.0"),
        ({"window": True}, "'window' .* Got True"),
        ({"window": 30, "every": 0}, "'every' .* >= 1. Got 0 instead. Fix"),
    ],
)
def test_bad_parameters_name_the_parameter_value_and_fix(kwargs, match) -> None:
    with pytest.raises(ParameterError, match=match):
        rolling_correlation(_data(7, 50, 2), **kwargs)


@pytest.mark.parametrize(
    ("returns", "match"),
    [
        (np.zeros(50), r"two-dimensional .* Got shape \(50,\)"),
        (np.zeros((5, 5, 5)), r"Got shape \(5, 5, 5\)"),
        (np.zeros((50, 0)), r"Got shape \(50, 0\)"),
        (np.array([["a", "b"]] * 5), "array of numbers .* Got ndarray"),
        (np.array([[0.0, np.inf]] * 5), "holds 5 infinite values .* Fix: mark missing bars"),
    ],
)
def test_bad_returns_are_refused(returns, match) -> None:
    with pytest.raises(ParameterError, match=match):
        rolling_correlation(returns, 3)


def _frame(x: np.ndarray, names: list[str]) -> pl.DataFrame:
    t0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    ts = [t0 + timedelta(minutes=5 * i) for i in range(x.shape[0])]
    return pl.DataFrame({"ts": ts, **{s: x[:, j] for j, s in enumerate(names)}})


def test_correlation_frame_is_the_long_form_of_the_matrices() -> None:
    names = ["MSFT", "AAPL", "SPY"]
    x = _data(8, 200, 3, nan_share=0.05)
    frame = _frame(x, names).with_columns(pl.col("SPY").fill_nan(None))  # nulls are missing too
    before = frame.clone()
    rho = correlation_frame(frame, 50, every=25)
    m = rolling_correlation(x, 50, every=25)
    assert rho.columns == ["ts", "a", "b", "rho"]
    assert rho.schema["ts"] == frame.schema["ts"] and rho.height == m.size
    assert (
        rho["ts"].unique(maintain_order=True).to_list()
        == frame["ts"].gather(_ends(m, 50, 25)).to_list()
    )
    np.testing.assert_allclose(rho["rho"].to_numpy(), m.ravel(), atol=0)
    last = rho.filter(pl.col("ts") == pl.col("ts").max()).pivot(on="b", index="a", values="rho")
    assert last["a"].to_list() == names and last.columns[1:] == names
    np.testing.assert_array_equal(last.select(names).to_numpy(), m[-1])
    assert_frame_equal(frame, before)  # the input is not mutated


def test_correlation_frame_nulls_where_undefined() -> None:
    x = _data(9, 60, 2)
    x[:, 1] = np.nan
    rho = correlation_frame(_frame(x, ["A", "B"]), 30, every=30)
    assert rho.filter(pl.col("b") == "B")["rho"].null_count() == 2 * 2
    assert rho.filter((pl.col("a") == "A") & (pl.col("b") == "A"))["rho"].to_list() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros((5, 2)), "must be a polars DataFrame .* Got ndarray"),
        (pl.DataFrame({"A": [0.1, 0.2]}), "must hold 'ts' plus at least one symbol column"),
        (pl.DataFrame({"ts": [1, 2]}), "must hold 'ts' plus at least one symbol column"),
        (pl.DataFrame({"ts": [2, 1, 3], "A": [0.1, 0.2, 0.3]}), "strictly increasing"),
        (pl.DataFrame({"ts": [1, 1, 3], "A": [0.1, 0.2, 0.3]}), "strictly increasing"),
        (pl.DataFrame({"ts": [1, 2, 3], "A": ["x", "y", "z"]}), "Column 'A' .* must be numeric"),
    ],
)
def test_correlation_frame_refuses_bad_frames(frame, match) -> None:
    with pytest.raises(ParameterError, match=match):
        correlation_frame(frame, 3)
