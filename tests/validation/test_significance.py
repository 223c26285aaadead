"""PSR and deflated Sharpe of a validation backtest's returns."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.stages.validate import sharpe_significance


def test_more_trials_deflate_a_lucky_sharpe() -> None:
    r = np.random.default_rng(0).normal(0.0001, 0.001, 1500)
    one = sharpe_significance(r)
    assert one["n_trials"] == 1 and one["deflated_sharpe"] == one["psr"]
    sr = r.mean() / r.std(ddof=1)
    many = sharpe_significance(r, [*list(np.random.default_rng(1).normal(0, 0.05, 50)), sr])
    assert many["n_trials"] == 51
    assert many["deflated_sharpe"] < one["psr"]


def test_no_trades_is_no_evidence() -> None:
    out = sharpe_significance(np.zeros(500))
    assert np.isnan(out["psr"]) and np.isnan(out["deflated_sharpe"])


def test_correlated_and_pruned_trials_set_the_count() -> None:
    from workbench.validation.overfitting import deflated_sharpe_ratio

    r = np.random.default_rng(2).normal(0.0002, 0.001, 2000)
    trials = list(np.random.default_rng(3).normal(0.0, 0.03, 6))
    independent = sharpe_significance(r, trials, n_trials=20)
    correlated = sharpe_significance(r, trials, n_trials=20, trial_correlation=0.9)
    # 20 trials tried (14 pruned without a Sharpe), then 0.9 + 0.1 * 20 = 2.9 -> 3 independent
    assert independent["n_trials"] == 20 and correlated["n_trials"] == 3
    sr = r.mean() / r.std(ddof=1)
    skew = float(((r - r.mean()) ** 3).mean() / r.std() ** 3)
    kurt = float(((r - r.mean()) ** 4).mean() / r.std() ** 4)
    want = deflated_sharpe_ratio(sr, len(r), skew, kurt, 3, np.var(trials, ddof=1))
    assert correlated["deflated_sharpe"] == pytest.approx(want, rel=1e-9)
    assert independent["deflated_sharpe"] < correlated["deflated_sharpe"] <= correlated["psr"]
