"""Per-strategy performance table and rolling Sharpe: hand cases and bad input."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from workbench.errors import ParameterError
from workbench.portfolio import performance_summary, rolling_sharpe


def _frame(cols: dict[str, list[float]]) -> pl.DataFrame:
    n = len(next(iter(cols.values())))
    ts = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(n)]
    return pl.DataFrame({"ts": ts, **cols})


def test_summary_hand_case() -> None:
    r = [0.1, -0.05, 0.0, 0.02]
    frame = _frame({"alpha": r, "flat": [0.0, 0.0, 0.0, 0.0]})
    before = frame.clone()
    out = performance_summary(frame, periods_per_year=252)
    assert_frame_equal(frame, before)
    assert out.columns == [
        "strategy", "n_periods", "total_return", "annual_return", "annual_volatility",
        "sharpe", "max_drawdown", "hit_rate",
    ]  # fmt: skip
    a = out.row(0, named=True)
    total = 1.1 * 0.95 * 1.0 * 1.02 - 1.0  # 0.0659
    std = float(np.std(r, ddof=1))
    assert a["strategy"] == "alpha" and a["n_periods"] == 4
    assert a["total_return"] == pytest.approx(total, rel=1e-12)
    assert a["annual_return"] == pytest.approx((1 + total) ** (252 / 4) - 1, rel=1e-12)
    assert a["annual_volatility"] == pytest.approx(std * math.sqrt(252), rel=1e-12)
    assert a["sharpe"] == pytest.approx(0.0175 / std * math.sqrt(252), rel=1e-12)
    assert a["max_drawdown"] == pytest.approx(-0.05, rel=1e-12)  # 1.1 -> 1.045
    assert a["hit_rate"] == pytest.approx(2 / 3)  # the flat period is not counted
    f = out.row(1, named=True)
    assert f["total_return"] == 0.0 and math.isnan(f["sharpe"]) and math.isnan(f["hit_rate"])


def test_rolling_sharpe_hand_case() -> None:
    frame = _frame({"a": [0.01, -0.01, 0.03, 0.02, 0.02, 0.02]})
    out = rolling_sharpe(frame, window=3, periods_per_year=4)
    assert out.columns == ["ts", "a"]
    assert out["ts"].to_list() == frame["ts"].to_list()
    got = out["a"].to_list()
    assert got[:2] == [None, None]
    for i in range(2, 5):
        w = np.array(frame["a"][i - 2 : i + 1].to_list())
        assert got[i] == pytest.approx(w.mean() / w.std(ddof=1) * 2.0, rel=1e-9)
    assert math.isnan(got[5])  # three equal returns: no volatility


def test_periods_per_year_is_required() -> None:
    frame = _frame({"a": [0.01, -0.01, 0.02]})
    with pytest.raises(TypeError, match="periods_per_year"):
        performance_summary(frame)  # type: ignore[call-arg]
    with pytest.raises(ParameterError, match=r"'periods_per_year' parameter.*Got 0"):
        performance_summary(frame, periods_per_year=0)
    with pytest.raises(ParameterError, match=r"'periods_per_year' parameter.*Got -252"):
        rolling_sharpe(frame, window=2, periods_per_year=-252)


def test_bad_window_and_frames_are_refused() -> None:
    frame = _frame({"a": [0.01, -0.01, 0.02]})
    with pytest.raises(ParameterError, match=r"'window' parameter.*>= 2.*Got 1"):
        rolling_sharpe(frame, window=1, periods_per_year=252)
    with pytest.raises(ParameterError, match=r"at most the number of rows \(3\)\. Got 5"):
        rolling_sharpe(frame, window=5, periods_per_year=252)
    with pytest.raises(ParameterError, match=r"Column 'a'.*1 NaN/null"):
        performance_summary(_frame({"a": [0.01, None, 0.02]}), periods_per_year=252)
    with pytest.raises(ParameterError, match=r"Column 'n'.*Got dtype Int64"):
        performance_summary(_frame({"n": [1, 2, 3]}), periods_per_year=252)
