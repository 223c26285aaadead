"""Portfolio stage: allocate capital across the validated strategies and measure the portfolio.

The logic behind ``notebooks/06_portfolio``. Each 04_validate run logs the stitched walk-forward
returns of its strategy (``tables/walk_forward_returns.json``, columns ``ts, returns``) and is
tagged ``step=validate`` and ``strategy=<name>``. :func:`run_portfolio` reads them back (the
given ``run_ids``, else the latest FINISHED validate run of each strategy in the experiment),
allocates with :func:`workbench.portfolio.allocate` and measures the allocated portfolio.

Frequency
    The validate runs log per-bar returns (5-minute bars). With ``frequency="daily"`` (the
    default) they are compounded into one return per New York session date,
    ``prod(1 + r) - 1`` over the bars whose ``ts`` falls on that ``America/New_York`` date: a
    daily covariance is what an allocation held for days is exposed to, it compares intraday
    strategies (flat overnight) with swing ones on the same footing, and it is not dominated by
    the bar-to-bar noise of 5-minute returns. Series that are already daily or coarser are kept
    as they are; ``frequency="native"`` keeps the bars. A strategy without a return at a time
    counts as flat (0.0) there, as :func:`strategy_returns_from_mlflow` fills it.
Groups and caps
    Each strategy's group is its configured ``type`` (``intraday`` or ``swing``;
    ``unconfigured`` for a strategy no longer in ``config/strategies``). ``max_weight`` caps
    every strategy, ``type_caps`` the summed weight of a type; what a cap cuts is redistributed
    to the uncapped strategies, or stays in cash (allocation's module docstring).
Current weights (the rebalance check)
    ``current_weights`` when given; otherwise the target weights of the latest FINISHED
    portfolio run in the config's experiment (its metrics ``weight.<strategy>``, read without
    downloading anything), assuming the book was rebalanced to them; otherwise equal weights.
    ``PortfolioStageResult.current_source`` says which applied.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from workbench.config import WorkbenchConfig
from workbench.data.store import frame_fingerprint
from workbench.errors import ParameterError, SourceError
from workbench.models.registry import quiet_downloads
from workbench.portfolio import (
    METHODS,
    RebalancePlan,
    allocate,
    performance_summary,
    rebalance_check,
    strategy_returns_from_mlflow,
)
from workbench.portfolio.sources import _latest_validate_runs
from workbench.risk.correlation import MIN_PAIRS, rolling_correlation
from workbench.risk.metrics import METHODS as VAR_METHODS
from workbench.risk.metrics import cvar, risk_contributions_frame, var

__all__ = [
    "FREQUENCIES",
    "WEIGHT_METRIC",
    "PortfolioStageResult",
    "correlation_figure",
    "cumulative_figure",
    "find_validate_runs",
    "portfolio_figures",
    "portfolio_tables",
    "previous_weights",
    "risk_figure",
    "run_portfolio",
    "to_daily",
    "var_figure",
    "weights_figure",
]

FREQUENCIES: tuple[str, ...] = ("daily", "native")
WEIGHT_METRIC = "weight."  # prefix of the per-strategy weight metrics a portfolio run logs
SESSION_TZ = "America/New_York"
PORTFOLIO = "portfolio"
_UNCONFIGURED = "unconfigured"
_DAY_US = 86_400_000_000


@dataclass
class PortfolioStageResult:
    """The allocation, the portfolio it makes and the trades that reach it.

    ``returns`` are the strategies' returns as read (per bar); ``allocation_returns`` the ones
    the allocation used (daily unless ``frequency="native"``), ``ts`` plus one column per
    strategy. ``portfolio_returns`` is ``ts, portfolio`` (cash earns 0).
    """

    run_ids: dict[str, str]
    groups: dict[str, str]
    method: str
    frequency: str
    periods_per_year: float
    level: float
    returns: pl.DataFrame
    allocation_returns: pl.DataFrame
    weights: dict[str, float]
    weights_table: pl.DataFrame
    risk_contributions: pl.DataFrame
    correlation: pl.DataFrame
    var_table: pl.DataFrame
    portfolio_returns: pl.DataFrame
    performance: pl.DataFrame
    current_weights: dict[str, float]
    current_source: str
    rebalance: RebalancePlan
    caps: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    data_fingerprint: str = ""


# ---------------------------------------------------------------------------------- finding
def _client(cfg: WorkbenchConfig) -> Any:
    from mlflow import MlflowClient

    from workbench.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(cfg))


def find_validate_runs(
    cfg: WorkbenchConfig, *, experiment: str | None = None, strategies: Sequence[str] = ()
) -> dict[str, str]:
    """Return strategy -> run id of the latest FINISHED validate run of each strategy.

    Parameters
    ----------
    cfg : WorkbenchConfig
        Tracking store and default experiment (``mlflow.experiment``).
    experiment : str, optional
        Experiment to search (default: the config's).
    strategies : sequence of str, optional
        Keep only these strategies (each must have a run); empty keeps every one found.

    Raises
    ------
    SourceError
        No experiment, no validate run with a ``strategy`` tag, or a requested strategy
        without one; the message says how to produce the runs.
    """
    name = experiment or cfg.mlflow.experiment
    how = (
        "Fix: run the research pipeline for each strategy (`wb run research -p "
        "strategy=<name>`; its validate step logs the walk-forward returns), pass "
        "experiment=<the experiment holding them>, or pass run_ids."
    )
    try:
        found = _latest_validate_runs(_client(cfg), name)
    except SourceError as exc:
        found_nothing = str(exc).split(" Fix:")[0]  # one fix: the one below
        raise SourceError(f"no strategy to allocate to: {found_nothing} {how}") from None
    if not strategies:
        return found
    missing = [s for s in strategies if s not in found]
    if missing:
        raise SourceError(
            f"experiment {name!r} has no FINISHED validate run of strategy {missing[0]!r}"
            f"{_did_you_mean(missing[0], found)}; it has runs of {sorted(found)!r}. {how}"
        )
    return {s: found[s] for s in strategies}


def previous_weights(
    cfg: WorkbenchConfig, *, exclude_run_id: str | None = None
) -> tuple[dict[str, float], str] | None:
    """Return the target weights of the latest FINISHED portfolio run and its run id, or None.

    The weights are that run's metrics ``weight.<strategy>`` in the config's experiment.
    """
    client = _client(cfg)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.step = 'portfolio' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    )
    for run in runs:
        if run.info.run_id == exclude_run_id:
            continue
        w = {
            k[len(WEIGHT_METRIC) :]: float(v)
            for k, v in run.data.metrics.items()
            if k.startswith(WEIGHT_METRIC)
        }
        if w:
            return w, run.info.run_id
    return None


# ------------------------------------------------------------------------------------ checks
def _did_you_mean(value: Any, valid: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_args(method: str, frequency: str, level: float, max_weight: float) -> None:
    owner = "run_portfolio"
    if method not in METHODS:
        raise ParameterError(
            f"The 'method' parameter of {owner} must be one of {', '.join(METHODS)}. Got "
            f"{method!r} instead{_did_you_mean(method, METHODS)}."
        )
    if frequency not in FREQUENCIES:
        raise ParameterError(
            f"The 'frequency' parameter of {owner} must be one of {', '.join(FREQUENCIES)} "
            f"(daily compounds the bars of each New York session). Got {frequency!r} instead."
        )
    for name, value, hi_open in (("level", level, True), ("max_weight", max_weight, False)):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        ok = ok and (value < 1 if hi_open else value <= 1)
        if not ok:
            rule = "a confidence level in (0, 1), e.g. 0.95" if hi_open else "a weight in (0, 1]"
            raise ParameterError(
                f"The {name!r} parameter of {owner} must be {rule}. Got {value!r} instead."
            )


def _caps(
    cfg: WorkbenchConfig,
    groups: Mapping[str, str],
    max_weight: float,
    strategy_caps: Mapping[str, float],
    type_caps: Mapping[str, float],
) -> dict[str, float]:
    caps = {s: float(max_weight) for s in groups} if max_weight < 1 else {}
    for s, c in strategy_caps.items():
        if s not in groups:
            raise ParameterError(
                f"The 'strategy_caps' parameter of run_portfolio names {s!r}, which is not "
                f"among the strategies found{_did_you_mean(s, groups)}: {sorted(groups)!r}."
            )
        caps[s] = min(float(c), caps.get(s, math.inf))
    present = set(groups.values())
    known = {st.type for st in cfg.strategies.values()} | present
    for t, c in type_caps.items():
        if t not in known:
            raise ParameterError(
                f"The 'type_caps' parameter of run_portfolio names type {t!r}"
                f"{_did_you_mean(t, known)}; strategy types are {sorted(known)!r} (the "
                "'type' of config/strategies/<name>.yaml)."
            )
        if t in present:  # a cap on a type no strategy has binds nothing
            caps[t] = float(c)
    return caps


# --------------------------------------------------------------------------------- numbers
def _names(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "ts"]


def _is_intraday(ts: pl.Series) -> bool:
    if ts.len() < 2 or not isinstance(ts.dtype, pl.Datetime):
        return False
    step = ts.sort().diff().drop_nulls().dt.total_microseconds().median()
    return step is not None and float(step) < _DAY_US  # type: ignore[arg-type]


def to_daily(returns: pl.DataFrame) -> pl.DataFrame:
    """Compound per-bar returns into one return per New York session date (``ts`` a Date)."""
    if not _is_intraday(returns["ts"]):
        return returns
    day = pl.col("ts").dt.convert_time_zone(SESSION_TZ).dt.date().alias("ts")
    growth = [((1.0 + pl.col(c)).product() - 1.0).alias(c) for c in _names(returns)]
    return returns.group_by(day).agg(growth).sort("ts")


def _periods_per_year(frame: pl.DataFrame, frequency: str) -> float:
    ts = frame["ts"]
    if frequency == "daily" or ts.dtype == pl.Date:
        return 252.0
    if _is_intraday(ts):  # bars per New York session x 252 sessions
        per_day = ts.dt.convert_time_zone(SESSION_TZ).dt.date().value_counts()["count"].median()
        return 252.0 * float(per_day)  # type: ignore[arg-type]
    step = float(ts.diff().drop_nulls().dt.total_microseconds().median())  # type: ignore[arg-type]
    return 365.25 * _DAY_US / step


def _correlation(frame: pl.DataFrame) -> pl.DataFrame:
    # one window over every row: the full-sample Pearson matrix (NaN for a constant series)
    names = _names(frame)
    x = frame.select(names).to_numpy().astype(np.float64)
    c = rolling_correlation(x, max(x.shape[0], MIN_PAIRS))
    c = c[0] if len(c) else np.full((len(names), len(names)), np.nan)
    return pl.DataFrame({"strategy": names, **{n: c[:, j] for j, n in enumerate(names)}})


def _risk_table(
    frame: pl.DataFrame, weights: Mapping[str, float], groups: Mapping[str, str]
) -> pl.DataFrame:
    if any(abs(w) > 0 for w in weights.values()):
        x = frame.select(list(weights)).to_numpy() @ np.array(list(weights.values()))
        if float(np.std(x)) > 0:
            return risk_contributions_frame(frame, weights, groups)
    rows = [("asset", s, w) for s, w in weights.items()]  # a flat portfolio: no risk to share
    by_group: dict[str, float] = {}
    for s, w in weights.items():
        by_group[groups[s]] = by_group.get(groups[s], 0.0) + w
    rows += [("group", g, w) for g, w in by_group.items()]
    return pl.DataFrame(
        {
            "level": [r[0] for r in rows],
            "asset": [r[1] for r in rows],
            "weight": [float(r[2]) for r in rows],
            "contribution": [0.0] * len(rows),
            "share": [math.nan] * len(rows),
        }
    )


def _var_table(r: np.ndarray, level: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "method": list(VAR_METHODS),
            "level": [level] * len(VAR_METHODS),
            "var": [var(r, level, m) for m in VAR_METHODS],
            "cvar": [cvar(r, level, m) for m in VAR_METHODS],
        }
    )


# ------------------------------------------------------------------------------------- stage
def resolve_validate_runs(
    cfg: WorkbenchConfig,
    *,
    run_ids: Mapping[str, str] | None = None,
    experiment: str | None = None,
    strategies: Sequence[str] = (),
) -> dict[str, str]:
    """Return strategy -> validate run id the portfolio allocates across (see
    :func:`run_portfolio`), or raise naming the fix. Records nothing: the notebook calls it
    before its run starts, so a portfolio with nothing to allocate to leaves no run behind."""
    if run_ids and experiment:
        raise ParameterError(
            "run_portfolio takes either 'run_ids' or 'experiment', not both. Got experiment="
            f"{experiment!r} with run_ids {dict(run_ids)!r}. Fix: empty one of them."
        )
    if run_ids:
        chosen = {str(k): str(v) for k, v in run_ids.items()}
        if strategies:
            chosen = {s: chosen[s] for s in strategies if s in chosen}
    else:
        chosen = find_validate_runs(cfg, experiment=experiment, strategies=strategies)
    if not chosen:
        raise ParameterError(
            f"run_portfolio has no strategy left: run_ids {dict(run_ids or {})!r} name none of "
            f"strategies {list(strategies)!r}. Fix: empty 'strategies' or add their run ids."
        )
    if PORTFOLIO in chosen:
        raise ParameterError(f"a strategy cannot be named {PORTFOLIO!r} (the portfolio's column).")
    return chosen


def run_portfolio(
    cfg: WorkbenchConfig,
    *,
    run_ids: Mapping[str, str] | None = None,
    experiment: str | None = None,
    strategies: Sequence[str] = (),
    method: str = "risk_parity",
    options: Mapping[str, Any] | None = None,
    frequency: str = "daily",
    max_weight: float = 1.0,
    strategy_caps: Mapping[str, float] | None = None,
    type_caps: Mapping[str, float] | None = None,
    current_weights: Mapping[str, float] | None = None,
    threshold: float = 0.05,
    level: float = 0.95,
    exclude_run_id: str | None = None,
) -> PortfolioStageResult:
    """Allocate across the strategies' walk-forward returns; measure risk; plan the rebalance.

    Parameters
    ----------
    cfg : WorkbenchConfig
        Tracking store, experiment and the strategies' types.
    run_ids : mapping of str to str, optional
        Strategy -> its 04_validate run id. Empty or None: the latest FINISHED validate run of
        each strategy in ``experiment`` (:func:`find_validate_runs`).
    experiment : str, optional
        Experiment to search when ``run_ids`` is empty (default: the config's); refused
        together with ``run_ids``.
    strategies : sequence of str, optional
        Keep only these strategies of the ones found (empty keeps all).
    method : {"equal", "inverse_vol", "risk_parity", "kelly", "vol_target"}
        Allocation rule (:func:`workbench.portfolio.allocate`); ``options`` are its extra
        options (``fraction``, ``max_gross``, ``target_vol``, ``periods_per_year``,
        ``max_leverage``). For ``vol_target``, ``periods_per_year`` defaults to the returns'
        (252 for daily), so ``target_vol`` is an annual volatility.
    frequency : {"daily", "native"}
        Returns the allocation reads: compounded per New York session, or per bar.
    max_weight : float
        Cap on every strategy's weight, in (0, 1] (1: none).
    strategy_caps, type_caps : mapping of str to float, optional
        Caps per strategy, and on the summed weight of each strategy type (``intraday``,
        ``swing``); a type no strategy found has is ignored, an unknown type is refused.
    current_weights : mapping of str to float, optional
        Weights held now; empty or None: the previous portfolio run's, else equal weights.
    threshold : float
        Drift in weight units beyond which a strategy is traded back (:func:`rebalance_check`).
    level : float
        Confidence level of the VaR and CVaR, in (0, 1).
    exclude_run_id : str, optional
        A portfolio run never to take current weights from (the caller's own run).

    Returns
    -------
    PortfolioStageResult
    """
    _check_args(method, frequency, level, max_weight)
    chosen = resolve_validate_runs(
        cfg, run_ids=run_ids, experiment=experiment, strategies=strategies
    )
    from workbench.tracking import tracking_uri

    with quiet_downloads():
        raw = strategy_returns_from_mlflow(chosen, tracking_uri=tracking_uri(cfg))
    frame = to_daily(raw) if frequency == "daily" else raw
    if frame.height < 2:
        raise ParameterError(
            f"the strategies' returns cover {frame.height} {frequency} period(s) "
            f"({raw.height} bars); allocation needs at least 2. Fix: validate over a longer "
            "out-of-sample period, or frequency='native'."
        )
    ppy = _periods_per_year(frame, frequency)
    names = _names(frame)
    groups = {s: cfg.strategies[s].type if s in cfg.strategies else _UNCONFIGURED for s in names}
    caps = _caps(cfg, groups, max_weight, strategy_caps or {}, type_caps or {})
    kw: dict[str, Any] = dict(options or {})
    if method == "vol_target":  # target_vol is annualised unless told otherwise
        kw.setdefault("periods_per_year", ppy)
    if caps:
        kw.update(caps=caps, groups=groups)
    weights = allocate(frame, method, **kw)

    w = np.array([weights[s] for s in names])
    r_p = frame.select(names).to_numpy().astype(np.float64) @ w
    port = frame.select("ts").with_columns(pl.Series(PORTFOLIO, r_p, dtype=pl.Float64))
    var_table = _var_table(r_p, float(level))
    perf = performance_summary(frame.with_columns(port[PORTFOLIO]), periods_per_year=ppy)

    if current_weights:
        current, source = dict(current_weights), "given"
    elif prev := previous_weights(cfg, exclude_run_id=exclude_run_id):
        current, source = prev[0], f"previous portfolio run {prev[1]}"
    else:
        current, source = {s: 1.0 / len(names) for s in names}, "equal weights"
    plan = rebalance_check(current, weights, threshold=threshold)

    weights_table = pl.DataFrame(
        {
            "strategy": names,
            "type": [groups[s] for s in names],
            "weight": w,
            "cap": [min(caps.get(s, 1.0), caps.get(groups[s], 1.0)) for s in names],
            "run_id": [chosen[s] for s in names],
        }
    )
    prow = perf.filter(pl.col("strategy") == PORTFOLIO).row(0, named=True)
    metrics: dict[str, float] = {
        "n_strategies": float(len(names)),
        "n_periods": float(frame.height),
        "periods_per_year": ppy,
        "cash_weight": 1.0 - float(w.sum()),
        "portfolio_sharpe": prow["sharpe"],
        "portfolio_annual_volatility": prow["annual_volatility"],
        "portfolio_max_drawdown": prow["max_drawdown"],
        "n_rebalance_trades": float(plan.trades.height),
    }
    for row in var_table.iter_rows(named=True):
        metrics[f"var_{row['method']}"] = row["var"]
        metrics[f"cvar_{row['method']}"] = row["cvar"]
    metrics.update({f"{WEIGHT_METRIC}{s}": weights[s] for s in names})
    fp = hashlib.sha256(
        (frame_fingerprint(raw) + repr(sorted(chosen.items()))).encode()
    ).hexdigest()
    return PortfolioStageResult(
        run_ids=chosen,
        groups=groups,
        method=method,
        frequency=frequency,
        periods_per_year=ppy,
        level=float(level),
        returns=raw,
        allocation_returns=frame,
        weights=weights,
        weights_table=weights_table,
        risk_contributions=_risk_table(frame, weights, groups),
        correlation=_correlation(frame),
        var_table=var_table,
        portfolio_returns=port,
        performance=perf,
        current_weights=current,
        current_source=source,
        rebalance=plan,
        caps=caps,
        metrics=metrics,
        data_fingerprint=fp,
    )


def portfolio_tables(res: PortfolioStageResult) -> dict[str, pl.DataFrame]:
    """Return the tables a portfolio run logs, by artifact name."""
    return {
        "weights": res.weights_table,
        "risk_contributions": res.risk_contributions,
        "correlation": res.correlation,
        "var_cvar": res.var_table,
        "performance": res.performance,
        "rebalance_drift": res.rebalance.drift,
        "rebalance_trades": res.rebalance.trades,
        "allocation_returns": res.allocation_returns.with_columns(res.portfolio_returns[PORTFOLIO]),
    }


# ------------------------------------------------------------------------------------ figures
def weights_figure(res: PortfolioStageResult) -> Any:
    """Bar chart of the target weights (and cash) beside the current ones."""
    import plotly.graph_objects as go

    assets = list(dict.fromkeys([*res.weights, *res.current_weights]))
    names = [*assets, "cash"]
    target = [*(res.weights.get(s, 0.0) for s in assets), res.metrics["cash_weight"]]
    held = [*(res.current_weights.get(s, 0.0) for s in assets)]
    held.append(1.0 - sum(res.current_weights.values()))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=held, name=f"current ({res.current_source})"))
    fig.add_trace(go.Bar(x=names, y=target, name=f"target ({res.method})"))
    fig.update_layout(
        title="Weights", barmode="group", yaxis_title="fraction of equity", height=380
    )
    return fig


def risk_figure(res: PortfolioStageResult) -> Any:
    """Bar chart of each strategy's (and type's) share of the portfolio's volatility."""
    import plotly.graph_objects as go

    rc = res.risk_contributions
    fig = go.Figure()
    for lvl in rc["level"].unique(maintain_order=True).to_list():
        part = rc.filter(pl.col("level") == lvl)
        fig.add_trace(go.Bar(x=part["asset"].to_list(), y=part["share"].to_list(), name=lvl))
    fig.add_trace(
        go.Bar(x=list(res.weights), y=list(res.weights.values()), name="weight", opacity=0.4)
    )
    fig.update_layout(
        title="Risk contributions (share of portfolio volatility)",
        barmode="group",
        yaxis_title="share",
        height=380,
    )
    return fig


def correlation_figure(res: PortfolioStageResult) -> Any:
    """Heatmap of the correlation of the strategies' allocation-frequency returns."""
    import plotly.graph_objects as go

    names = res.correlation["strategy"].to_list()
    z = res.correlation.select(names).to_numpy()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            zmin=-1,
            zmax=1,
            colorscale="RdBu_r",
            text=np.round(z, 2),
            texttemplate="%{text}",
        )
    )
    fig.update_layout(title=f"Correlation of {res.frequency} returns", height=420)
    return fig


def var_figure(res: PortfolioStageResult) -> Any:
    """Grouped bars of the portfolio's VaR and CVaR by method."""
    import plotly.graph_objects as go

    t = res.var_table
    fig = go.Figure()
    for col in ("var", "cvar"):
        fig.add_trace(go.Bar(x=t["method"].to_list(), y=t[col].to_list(), name=col.upper()))
    fig.update_layout(
        title=f"Portfolio VaR and CVaR at {res.level:.0%} ({res.frequency} returns, loss > 0)",
        barmode="group",
        yaxis_title="loss per period",
        height=380,
    )
    return fig


def cumulative_figure(res: PortfolioStageResult) -> Any:
    """Cumulative growth of 1 for each strategy and the portfolio."""
    import plotly.graph_objects as go

    frame = res.allocation_returns.with_columns(res.portfolio_returns[PORTFOLIO])
    ts = frame["ts"].to_list()
    fig = go.Figure()
    for c in _names(frame):
        growth = (1.0 + frame[c]).cum_prod().to_list()
        width = 3 if c == PORTFOLIO else 1.5
        fig.add_trace(go.Scatter(x=ts, y=growth, name=c, mode="lines", line={"width": width}))
    fig.update_layout(
        title="Cumulative returns (walk-forward)", yaxis_title="growth of 1", height=420
    )
    return fig


def portfolio_figures(res: PortfolioStageResult) -> dict[str, Any]:
    """Return every figure of a portfolio run, by artifact name."""
    return {
        "weights": weights_figure(res),
        "risk_contributions": risk_figure(res),
        "correlation": correlation_figure(res),
        "var_cvar": var_figure(res),
        "cumulative_returns": cumulative_figure(res),
    }
