"""Sizers and the decision policy on hand-computed cases; quantstats as the Kelly oracle."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import quantstats as qs

from workbench.config import DecisionConfig, RegimeConfig, SizingConfig
from workbench.errors import ParameterError
from workbench.risk import DecisionPolicy, TradeHistory, target_fraction
from workbench.risk import _kernel as K


def test_fixed_fraction_is_signed() -> None:
    cfg = SizingConfig(method="fixed_fraction", fraction=0.15)
    assert target_fraction(cfg, 1, 50.0) == 0.15
    assert target_fraction(cfg, -1, 50.0) == -0.15
    assert target_fraction(cfg, 0, 50.0) == 0.0


def test_atr_risk_hand_case() -> None:
    # risk 1% of $100k with the stop 2 ATR = $2 away: 500 shares at $40 = $20k = 20% of equity
    cfg = SizingConfig(method="atr_risk", risk_pct=0.01, atr_k=2.0, max_leverage=1.0)
    f = target_fraction(cfg, 1, 40.0, atr=1.0, equity=100_000)
    assert f == pytest.approx(0.2)
    shares = f * 100_000 / 40.0
    assert shares == pytest.approx(0.01 * 100_000 / (2.0 * 1.0))
    capped = SizingConfig(method="atr_risk", risk_pct=0.01, atr_k=2.0, max_leverage=0.1)
    assert target_fraction(capped, -1, 40.0, atr=1.0) == pytest.approx(-0.1)
    assert target_fraction(cfg, 1, 40.0) == 0.0  # no ATR yet: no position


def test_vol_target_annualises() -> None:
    ppy = 252 * 78
    cfg = SizingConfig(method="vol_target", vol_target=0.2, max_leverage=5.0)
    sigma_bar = 0.4 / math.sqrt(ppy)  # 40% a year
    f = target_fraction(cfg, 1, 10.0, volatility=sigma_bar, periods_per_year=ppy)
    assert f == pytest.approx(0.5)  # 20% / 40%
    lev = SizingConfig(method="vol_target", vol_target=0.2, max_leverage=0.3)
    assert target_fraction(lev, 1, 10.0, volatility=sigma_bar, periods_per_year=ppy) == 0.3


def test_kelly_payoff_matches_quantstats_and_hand_case() -> None:
    returns = [0.02, -0.01, 0.03, -0.01, 0.02, -0.02, 0.01, -0.01, 0.02, 0.01]
    h = TradeHistory.from_returns(returns)
    wins = [r for r in returns if r > 0]
    losses = [-r for r in returns if r <= 0]
    p = len(wins) / len(returns)
    b = np.mean(wins) / np.mean(losses)
    f_star = p - (1 - p) / b
    oracle = qs.stats.kelly_criterion(pd.Series(returns))
    assert f_star == pytest.approx(oracle, rel=1e-12)
    cfg = SizingConfig(
        method="kelly", kelly_fraction=0.5, kelly_min_trades=5, kelly_max_risk=1.0, max_leverage=10
    )
    assert target_fraction(cfg, 1, 50.0, atr=1.0, history=h) == pytest.approx(0.5 * f_star)
    # the risk cap: at most 1% of equity lost at a stop 2 ATR away -> 0.01 * 50 / 2 = 0.25
    capped = cfg.model_copy(update={"kelly_max_risk": 0.01})
    assert target_fraction(capped, 1, 50.0, atr=1.0, history=h) == pytest.approx(
        min(0.5 * f_star, 0.25)
    )


def test_kelly_mean_variance_and_fallbacks() -> None:
    returns = [0.01, 0.02, -0.005, 0.015, 0.0]
    h = TradeHistory.from_returns(returns)
    mu, var = np.mean(returns), np.var(returns, ddof=1)
    cfg = SizingConfig(
        method="kelly",
        kelly_mode="mean_variance",
        kelly_fraction=0.25,
        kelly_min_trades=5,
        kelly_max_risk=1.0,
        max_leverage=1000,
    )
    assert target_fraction(cfg, -1, 10.0, atr=0.1, history=h) == pytest.approx(-0.25 * mu / var)
    few = cfg.model_copy(update={"kelly_min_trades": 6, "fraction": 0.07})
    assert target_fraction(few, 1, 10.0, history=h) == 0.07  # too little history: fixed fraction
    losers = TradeHistory.from_returns([-0.01] * 10)
    assert target_fraction(cfg, 1, 10.0, history=losers) == 0.0  # no edge, no bet
    prob = SizingConfig(method="kelly", kelly_min_trades=1, kelly_max_risk=1.0, kelly_fraction=1.0)
    # conviction from a probability decision: p = 0.6 with payoff 1 -> f* = 0.2
    even = TradeHistory.from_returns([0.01, -0.01])
    assert target_fraction(prob, 1, 10.0, history=even, conviction=0.6) == pytest.approx(0.2)


def test_regime_multiplier_uses_only_past_sessions() -> None:
    day = np.repeat(np.arange(6), 10).astype(np.int64)
    vol = np.tile(np.linspace(1.0, 2.0, 10), 6)[:, None].copy()
    vol[50:, 0] = 100.0  # a volatility shock in the last session
    out = K.regime_nb(vol, day, 30, 33.0, 67.0, 1.0, 0.8, 0.5, 0)
    assert (out[:15, 0] == 0.8).all()  # fewer than lookback//2 past values: medium
    # high against the past: had the shock's own session set the cut-offs (10 of 30 values at
    # 100), the 67th percentile would be 100 and the shock would read as medium
    assert (out[50:, 0] == 0.5).all()
    ref = np.percentile(vol[10:40, 0], [33.0, 67.0])  # session 4: the 30 values before it
    assert out[40, 0] == (1.0 if vol[40, 0] < ref[0] else 0.5 if vol[40, 0] > ref[1] else 0.8)
    same = K.regime_nb(vol[:50].copy(), day[:50].copy(), 30, 33.0, 67.0, 1.0, 0.8, 0.5, 0)
    np.testing.assert_array_equal(same, out[:50])  # the future changes nothing before it
    cfg = SizingConfig(regime=RegimeConfig(multipliers=(1.0, 1.0, 0.5)))
    assert target_fraction(cfg, 1, 10.0, regime_multiplier=0.5) == pytest.approx(0.05)


def test_decision_methods() -> None:
    p = np.array([0.001, -0.001, 0.0, np.nan])
    side, conv = DecisionPolicy.from_config(DecisionConfig(long=5e-4, short=-5e-4)).decide(p)
    assert side.tolist() == [1, -1, 0, 0] and np.isnan(conv).all()
    prob = DecisionPolicy.from_config(DecisionConfig(method="probability", long=0.55, short=0.45))
    side, conv = prob.decide(np.array([0.7, 0.3, 0.5]))
    assert side.tolist() == [1, -1, 0] and conv[:2].tolist() == pytest.approx([0.7, 0.7])
    train = np.arange(100.0)
    q = DecisionPolicy.from_config(DecisionConfig(method="quantile", long=0.9, short=0.1), train)
    assert (q.long, q.short) == pytest.approx((np.quantile(train, 0.9), np.quantile(train, 0.1)))
    side, _ = q.decide(np.array([95.0, 5.0, 50.0]), allow_short=False)
    assert side.tolist() == [1, 0, 0]  # shorts off: flat
    trend = DecisionPolicy.from_config(DecisionConfig(long=0.0, short=0.0, trend_filter=20))
    side, _ = trend.decide(
        np.array([1.0, 1.0, -1.0, 1.0]),
        close=np.array([10.0, 9.0, 9.0, 10.0]),
        moving_average=np.array([9.5, 9.5, 9.5, np.nan]),
    )
    assert side.tolist() == [1, 0, -1, 0]  # with the trend only; no average yet: no side


def test_decision_bad_inputs() -> None:
    with pytest.raises(ParameterError, match="needs the model's predictions on its training rows"):
        DecisionPolicy.from_config(DecisionConfig(method="quantile", long=0.8, short=0.2))
    with pytest.raises(ParameterError, match="trend_filter=20 needs close and moving_average"):
        DecisionPolicy.from_config(DecisionConfig(trend_filter=20)).decide(np.zeros(3))
    with pytest.raises(ParameterError, match="side must be -1, 0 or 1; got 2"):
        target_fraction(SizingConfig(), 2, 10.0)
    with pytest.raises(ParameterError, match="trade returns must be finite"):
        TradeHistory.from_returns([0.1, float("nan")])
