"""Portfolio stage: strategies' walk-forward returns from a temporary MLflow store, allocated."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest

from workbench.config import load_config
from workbench.errors import ParameterError, SourceError
from workbench.portfolio.sources import ARTIFACT
from workbench.risk.metrics import portfolio_var
from workbench.stages.portfolio import (
    WEIGHT_METRIC,
    find_validate_runs,
    portfolio_figures,
    portfolio_tables,
    run_portfolio,
)

REPO = Path(__file__).resolve().parents[2]
# per-bar volatility of each strategy's 5-minute returns (the types come from config/strategies)
VOLS = {
    "intraday_reversal": 0.001,
    "intraday_mean_reversion": 0.002,
    "swing_trend_following": 0.0015,
}
N_SESSIONS = 20


def session_bars(n_sessions: int, start: str = "2024-03-04") -> pd.DatetimeIndex:
    """UTC starts of the 5-minute bars of ``n_sessions`` New York sessions (09:30-16:00)."""
    days = pd.bdate_range(start, periods=n_sessions)
    bars = [
        pd.date_range(f"{d.date()} 09:30", f"{d.date()} 15:55", freq="5min", tz="America/New_York")
        for d in days
    ]
    return bars[0].append(bars[1:]).tz_convert("UTC")


def log_validate_run(exp_id: str, strategy: str, ts: pd.DatetimeIndex, r: np.ndarray) -> str:
    """Log a FINISHED run shaped like 04_validate's: tags and the walk-forward returns table."""
    tags = {"step": "validate", "strategy": strategy}
    with mlflow.start_run(experiment_id=exp_id, tags=tags) as run:
        mlflow.log_table(pd.DataFrame({"ts": ts, "returns": r}), artifact_file=ARTIFACT)
    return run.info.run_id


def fake_returns(seed: int = 0) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    ts = session_bars(N_SESSIONS)
    rng = np.random.default_rng(seed)
    # 10 decimals: what mlflow.log_table's JSON keeps (pandas to_json's double_precision)
    return ts, {s: np.round(rng.normal(0.0, v, len(ts)), 10) for s, v in VOLS.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A tracking store with one validate run per strategy in the config's experiment."""
    tmp = tmp_path_factory.mktemp("portfolio_stage")
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("WB_MLFLOW__ARTIFACT_ROOT", str(tmp / "mlartifacts"))
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    cfg = load_config(REPO)
    exp_id = mlflow.create_experiment(
        cfg.mlflow.experiment, artifact_location=(tmp / "mlartifacts").as_uri()
    )
    ts, rets = fake_returns()
    run_ids = {s: log_validate_run(exp_id, s, ts, r) for s, r in rets.items()}
    yield {"cfg": cfg, "exp_id": exp_id, "run_ids": run_ids, "ts": ts, "returns": rets}
    mlflow.set_tracking_uri(before)
    mp.undo()


def _daily_oracle(ts: pd.DatetimeIndex, rets: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per-session compounded returns, computed with pandas (independent of the stage)."""
    frame = pd.DataFrame(rets, index=ts)
    day = frame.index.tz_convert("America/New_York").date
    return (1 + frame).groupby(day).prod() - 1


def test_discovery_and_daily_compounding(store: dict) -> None:
    cfg = store["cfg"]
    assert find_validate_runs(cfg) == dict(sorted(store["run_ids"].items()))
    assert find_validate_runs(cfg, strategies=["swing_trend_following"]) == {
        "swing_trend_following": store["run_ids"]["swing_trend_following"]
    }
    res = run_portfolio(cfg, method="equal", type_caps={})
    assert res.run_ids == dict(sorted(store["run_ids"].items()))
    assert res.returns.height == len(store["ts"]) == 78 * N_SESSIONS
    daily = res.allocation_returns
    assert daily.height == N_SESSIONS and daily.schema["ts"] == pl.Date
    oracle = _daily_oracle(store["ts"], store["returns"])
    for s in VOLS:
        np.testing.assert_allclose(daily[s].to_numpy(), oracle[s].to_numpy(), rtol=1e-12)
    assert res.periods_per_year == 252.0 and res.groups["swing_trend_following"] == "swing"
    assert res.metrics["n_strategies"] == 3 and len(res.data_fingerprint) == 64


def test_inverse_vol_weights_follow_the_daily_volatility(store: dict) -> None:
    res = run_portfolio(store["cfg"], method="inverse_vol", type_caps={})
    sigma = _daily_oracle(store["ts"], store["returns"]).std(ddof=1)
    expected = (1 / sigma) / (1 / sigma).sum()
    for s in VOLS:
        assert res.weights[s] == pytest.approx(expected[s], rel=1e-9)
    assert sum(res.weights.values()) == pytest.approx(1.0)
    assert res.metrics["cash_weight"] == pytest.approx(0.0, abs=1e-12)
    assert res.metrics[f"{WEIGHT_METRIC}intraday_reversal"] == res.weights["intraday_reversal"]


def test_risk_parity_equalises_risk_contributions(store: dict) -> None:
    res = run_portfolio(store["cfg"], method="risk_parity", type_caps={})
    rc = res.risk_contributions.filter(pl.col("level") == "asset")
    np.testing.assert_allclose(rc["share"].to_numpy(), 1 / 3, atol=1e-8)
    groups = res.risk_contributions.filter(pl.col("level") == "group")
    assert sorted(groups["asset"].to_list()) == ["intraday", "swing"]
    assert groups["share"].sum() == pytest.approx(1.0)
    corr = res.correlation
    names = list(res.weights)
    assert corr["strategy"].to_list() == names
    oracle = _daily_oracle(store["ts"], store["returns"])[names].corr().to_numpy()
    np.testing.assert_allclose(corr.select(names).to_numpy(), oracle, atol=1e-12)


def test_the_intraday_cap_binds_and_its_excess_goes_to_swing(store: dict) -> None:
    res = run_portfolio(store["cfg"], method="inverse_vol", type_caps={"intraday": 0.5})
    w = res.weights
    assert w["intraday_reversal"] + w["intraday_mean_reversion"] == pytest.approx(0.5)
    assert w["swing_trend_following"] == pytest.approx(0.5)
    free = run_portfolio(store["cfg"], method="inverse_vol", type_caps={})
    ratio = free.weights["intraday_reversal"] / free.weights["intraday_mean_reversion"]
    assert w["intraday_reversal"] / w["intraday_mean_reversion"] == pytest.approx(ratio)
    assert res.caps == {"intraday": 0.5}
    capped = res.weights_table.filter(pl.col("type") == "intraday")["cap"]
    assert capped.to_list() == [0.5, 0.5]
    # a per-strategy cap: what it cuts goes to the others
    one = run_portfolio(store["cfg"], method="equal", type_caps={}, max_weight=0.3)
    assert max(one.weights.values()) <= 0.3 + 1e-12 and one.metrics["cash_weight"] > 0.09


def test_var_and_cvar_of_the_allocated_portfolio(store: dict) -> None:
    res = run_portfolio(store["cfg"], method="risk_parity", type_caps={}, level=0.9)
    t = {r["method"]: r for r in res.var_table.iter_rows(named=True)}
    assert set(t) == {"historical", "gaussian", "cornish_fisher"}
    for m, row in t.items():
        assert row["var"] > 0 and row["cvar"] > 0 and row["level"] == 0.9, m
        assert res.metrics[f"var_{m}"] == row["var"]
    assert t["historical"]["cvar"] >= t["historical"]["var"]
    assert t["gaussian"]["cvar"] >= t["gaussian"]["var"]
    # the Gaussian VaR of the portfolio series equals the one from weights and the covariance
    x = res.allocation_returns.select(list(res.weights)).to_numpy()
    w = np.array(list(res.weights.values()))
    pv = portfolio_var(w, np.cov(x, rowvar=False, ddof=1), 0.9, mean=x.mean(axis=0))
    assert t["gaussian"]["var"] == pytest.approx(pv.var, rel=1e-9)
    assert t["gaussian"]["cvar"] == pytest.approx(pv.cvar, rel=1e-9)
    port = res.portfolio_returns["portfolio"].to_numpy()
    np.testing.assert_allclose(port, x @ w)


def test_rebalance_from_equal_given_and_previous_weights(store: dict) -> None:
    cfg = store["cfg"]
    res = run_portfolio(cfg, method="inverse_vol", type_caps={}, threshold=0.05)
    assert res.current_source == "equal weights"
    drifted = {s for s, w in res.weights.items() if abs(1 / 3 - w) > 0.05}
    assert drifted and set(res.rebalance.drifted) == drifted
    trades = {r["asset"]: r["delta_weight"] for r in res.rebalance.trades.iter_rows(named=True)}
    for s in drifted:
        assert trades[s] == pytest.approx(res.weights[s] - 1 / 3)

    given = {"intraday_reversal": 0.2, "retired_strategy": 0.3}
    res = run_portfolio(cfg, method="inverse_vol", type_caps={}, current_weights=given)
    assert res.current_source == "given"
    assert "retired_strategy" in res.rebalance.drifted  # no longer a target: sold

    # the latest FINISHED portfolio run's weight metrics are the current weights
    prev = {f"{WEIGHT_METRIC}{s}": w for s, w in res.weights.items()}
    with mlflow.start_run(experiment_id=store["exp_id"], tags={"step": "portfolio"}) as run:
        mlflow.log_metrics(prev)
    again = run_portfolio(cfg, method="inverse_vol", type_caps={})
    assert again.current_source == f"previous portfolio run {run.info.run_id}"
    assert again.current_weights == pytest.approx(res.weights)
    assert not again.rebalance.needs_rebalance
    other = run_portfolio(cfg, method="equal", type_caps={}, exclude_run_id=run.info.run_id)
    assert other.current_source == "equal weights"


def test_figures_and_tables_are_built(store: dict) -> None:
    import plotly.graph_objects as go

    res = run_portfolio(store["cfg"], method="risk_parity")
    figs = portfolio_figures(res)
    assert set(figs) == {
        "weights",
        "risk_contributions",
        "correlation",
        "var_cvar",
        "cumulative_returns",
    }
    for name, fig in figs.items():
        assert isinstance(fig, go.Figure) and fig.data, name
    assert len(figs["cumulative_returns"].data) == 4  # three strategies and the portfolio
    tables = portfolio_tables(res)
    assert tables["weights"].height == 3 and tables["allocation_returns"].height == N_SESSIONS
    assert all(isinstance(t, pl.DataFrame) for t in tables.values())


def test_errors_name_the_parameter_and_the_fix(store: dict, tmp_path: Path) -> None:
    cfg = store["cfg"]
    with pytest.raises(ParameterError, match=r"'method'.*risk_parity.*'risk_parit'.*'risk_parity'"):
        run_portfolio(cfg, method="risk_parit")
    with pytest.raises(ParameterError, match=r"'frequency'.*daily, native"):
        run_portfolio(cfg, frequency="hourly")
    with pytest.raises(ParameterError, match=r"'level'.*\(0, 1\).*1.5"):
        run_portfolio(cfg, level=1.5)
    with pytest.raises(ParameterError, match=r"'type_caps'.*'intrady'.*did you mean 'intraday'"):
        run_portfolio(cfg, type_caps={"intrady": 0.5})
    with pytest.raises(ParameterError, match=r"either 'run_ids' or 'experiment'"):
        run_portfolio(cfg, run_ids=store["run_ids"], experiment="workbench")
    with pytest.raises(SourceError, match=r"strategy 'intraday_revrsal'.*did you mean"):
        run_portfolio(cfg, strategies=["intraday_revrsal"])
    mlflow.create_experiment("empty", artifact_location=tmp_path.as_uri())
    with pytest.raises(
        SourceError, match=r"no strategy to allocate to.*'empty'.*research pipeline"
    ):
        run_portfolio(cfg, experiment="empty")
    with pytest.raises(SourceError, match=r"'nowhere' does not exist.*research pipeline"):
        run_portfolio(cfg, experiment="nowhere")


def test_a_single_strategy_by_run_id(store: dict) -> None:
    rid = store["run_ids"]["swing_trend_following"]
    res = run_portfolio(store["cfg"], run_ids={"swing_trend_following": rid}, method="risk_parity")
    assert res.weights == {"swing_trend_following": pytest.approx(1.0)}
    assert res.var_table["var"].min() > 0


def test_vol_target_reads_an_annual_target(store: dict) -> None:
    res = run_portfolio(
        store["cfg"], method="vol_target", options={"target_vol": 0.02}, type_caps={}
    )
    sigma = _daily_oracle(store["ts"], store["returns"]).std(ddof=1) * np.sqrt(252)
    for s in VOLS:
        assert res.weights[s] == pytest.approx(0.02 / sigma[s] / 3, rel=1e-9)
