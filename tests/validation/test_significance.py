"""PSR and deflated Sharpe of a validation backtest's returns."""

from __future__ import annotations

import numpy as np

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
