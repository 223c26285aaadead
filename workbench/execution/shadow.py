"""Shadow sessions (A/B): the challenger trades beside the champion on the same bars.

Each arm has its own account (a simulated venue of its own, or its own paper account), its own
order ledger and its own kill-switch state, so the two never see each other's orders, fills or
trips: the challenger's session is what it would have done alone. :func:`run_shadow` replays
one session for both arms; :func:`log_shadow_session` records each arm's session return (and its
divergence summary) as an MLflow run tagged ``report=shadow``; :func:`shadow_sessions` reads them
back; :func:`paired_comparison` tests the paired difference of the two arms' session returns
(Student's paired t-test and the Wilcoxon signed-rank test, scipy), and :func:`shadow_gate` says
whether a version has the minimum number of shadow sessions promotion may require.

**The challenger's own paper account** (``execution.shadow.challenger_broker: alpaca``): its keys
come only from the environment variables ``execution.shadow`` names (default
``APCA_CHALLENGER_API_KEY_ID`` / ``APCA_CHALLENGER_API_SECRET_KEY``); :func:`challenger_environ`
hands them to the Alpaca broker under the names it reads, refusing when they are absent or are
the champion's keys, and :func:`check_own_account` refuses when the broker's account endpoint
says both arms would trade one account. Keys are never logged, raised or recorded.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.errors import ConfigError, CredentialsError
from workbench.execution.broker import Broker
from workbench.execution.engine import FeatureUpdater, SessionResult
from workbench.execution.ledger import OrderLedger
from workbench.execution.policy import ExecutionPolicy
from workbench.execution.session import run_session
from workbench.risk.policy import RiskPolicy

SHADOW_REPORT = "shadow"
ROLES = ("champion", "challenger")
CHAMPION_KEY_ENVS = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")  # what the Alpaca broker reads


# ---------------------------------------------------------------------- the challenger's account


def challenger_environ(cfg: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the challenger's Alpaca broker reads: ``environ`` with the challenger
    account's keys (from the variables ``execution.shadow`` names) in the broker's key variables.

    Raises :class:`~workbench.errors.CredentialsError` naming the variables when they are not
    set, and :class:`~workbench.errors.ConfigError` when they hold the champion's key id.
    """
    env = dict(os.environ if environ is None else environ)
    sh = cfg.execution.shadow
    kid_env, sec_env = sh.key_id_env, sh.secret_key_env
    if kid_env == sec_env:
        raise ConfigError(
            f"execution.shadow.key_id_env and secret_key_env are both {kid_env!r}. Fix: name two "
            "variables, e.g. APCA_CHALLENGER_API_KEY_ID and APCA_CHALLENGER_API_SECRET_KEY."
        )
    missing = [n for n in (kid_env, sec_env) if not env.get(n)]
    if missing:
        raise CredentialsError(
            "execution.shadow.challenger_broker is 'alpaca' (the challenger trades its own paper "
            f"account), but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"set. Fix: export {kid_env}=<key id> and {sec_env}=<secret key> of a second paper "
            "account (https://app.alpaca.markets, 'API Keys'), or set "
            "execution.shadow.challenger_broker: sim (its own simulated account)."
        )
    if env[kid_env] == env.get(CHAMPION_KEY_ENVS[0]):
        raise ConfigError(
            f"{kid_env} holds the same key id as {CHAMPION_KEY_ENVS[0]}: the challenger would "
            "trade the champion's account, and the two sessions' orders and positions would mix. "
            f"Fix: put the keys of a second paper account in {kid_env} and {sec_env}."
        )
    env[CHAMPION_KEY_ENVS[0]] = env[kid_env]
    env[CHAMPION_KEY_ENVS[1]] = env[sec_env]
    return env


def challenger_config(cfg: Any) -> Any:
    """``cfg`` with the challenger account's endpoints (``execution.shadow.trading_url`` and
    ``trading_stream_url``) in ``alpaca`` when they are set."""
    sh = cfg.execution.shadow
    upd = {k: getattr(sh, k) for k in ("trading_url", "trading_stream_url") if getattr(sh, k)}
    if sh.trading_url and not sh.trading_stream_url:
        upd["trading_stream_url"] = None  # derived from the challenger's own trading_url
    return cfg.model_copy(update={"alpaca": cfg.alpaca.model_copy(update=upd)}) if upd else cfg


def check_own_account(cfg: Any, champion: Broker | None, challenger: Broker) -> str:
    """Refuse when the challenger's broker trades the champion's account (same account id from
    the broker's account endpoint). Returns a line naming both endpoints (no ids, no keys)."""
    sh = cfg.execution.shadow
    ch_acct = challenger.account()
    if champion is not None:
        acct = champion.account()
        if acct.id and acct.id == ch_acct.id:
            raise ConfigError(
                f"the challenger's paper account (keys from {sh.key_id_env} / {sh.secret_key_env}"
                f", at {ch_acct.endpoint}) is the champion's account (the account endpoint gives "
                "the same account id): the two sessions' orders and positions would mix. Fix: "
                f"put the keys of a second paper account in {sh.key_id_env} and "
                f"{sh.secret_key_env}."
            )
    return (
        f"challenger: its own {'paper' if ch_acct.paper else 'LIVE'} account at {ch_acct.endpoint}"
    )


@dataclass(frozen=True)
class ShadowArm:
    """One side of a shadow pair: its model, policy and account (factories: nothing is shared)."""

    role: str
    predict: Callable[[pl.DataFrame], np.ndarray]
    features: Callable[[], FeatureUpdater]
    feature_names: tuple[str, ...]
    policy: RiskPolicy
    broker: Callable[[], Broker]
    label: str = ""


@dataclass
class ShadowResult:
    """Both arms' sessions on the same bars and their session returns."""

    champion: SessionResult
    challenger: SessionResult
    equity0: dict[str, float]

    def session_return(self, role: str) -> float:
        """Net PnL of the arm's session over its starting equity."""
        res = self.champion if role == "champion" else self.challenger
        return res.net_pnl / self.equity0[role]


def run_shadow(
    bars: pl.DataFrame,
    session_start: datetime,
    champion: ShadowArm,
    challenger: ShadowArm,
    *,
    ledger_root: str | Path | None = None,
    execution: Callable[[Broker], ExecutionPolicy] | None = None,
) -> ShadowResult:
    """Replay one session for the champion and, in its own account, the challenger.

    Each arm gets a fresh broker, feature engine and order ledger (``ledger_root/<role>.db``,
    default a temporary folder); the bars are the same.
    """
    out: dict[str, SessionResult] = {}
    eq0: dict[str, float] = {}
    tmp = None
    if ledger_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="wb-shadow-")
        ledger_root = tmp.name
    root = Path(ledger_root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        for arm in (champion, challenger):
            if arm.role not in ROLES:
                raise ConfigError(f"ShadowArm.role must be one of {ROLES}. Got {arm.role!r}.")
            broker = arm.broker()
            ledger = OrderLedger(f"sqlite:///{root / f'{arm.role}.db'}")
            try:
                eq0[arm.role] = float(broker.account().equity)
                out[arm.role] = run_session(
                    bars, session_start, engine=arm.features(), predict=arm.predict,
                    features=list(arm.feature_names), policy=arm.policy, broker=broker,
                    ledger=ledger, execution=execution(broker) if execution else None,
                )  # fmt: skip
            finally:
                ledger.close()
                broker.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return ShadowResult(out["champion"], out["challenger"], eq0)


def paired_comparison(
    champion: Mapping[Any, float], challenger: Mapping[Any, float], *, alpha: float = 0.05
) -> dict[str, Any]:
    """Paired difference ``challenger - champion`` of session returns over their common sessions.

    Returns ``n``, ``mean_diff``, ``sd_diff``, ``t_stat`` and ``p_value`` (two-sided paired
    t-test, :func:`scipy.stats.ttest_rel`), ``wilcoxon_p`` (:func:`scipy.stats.wilcoxon`, at
    least 6 non-zero differences), ``sessions`` and ``verdict``. Identical returns give a
    difference of exactly zero and ``p_value`` 1.
    """
    from scipy import stats

    keys = sorted(set(champion) & set(challenger))
    a = np.array([float(champion[k]) for k in keys])
    b = np.array([float(challenger[k]) for k in keys])
    d = b - a
    n = len(d)
    out: dict[str, Any] = {
        "n": n, "sessions": [str(k) for k in keys],
        "mean_champion": float(a.mean()) if n else math.nan,
        "mean_challenger": float(b.mean()) if n else math.nan,
        "mean_diff": float(d.mean()) if n else math.nan,
        "sd_diff": float(d.std(ddof=1)) if n > 1 else math.nan,
        "t_stat": math.nan, "p_value": math.nan, "wilcoxon_p": math.nan,
    }  # fmt: skip
    if n and not d.any():
        out.update(mean_diff=0.0, sd_diff=0.0 if n > 1 else math.nan, t_stat=0.0, p_value=1.0)
    elif n > 1 and np.ptp(d) > 0:
        t = stats.ttest_rel(b, a)
        out.update(t_stat=float(t.statistic), p_value=float(t.pvalue))
    if np.count_nonzero(d) >= 6:
        out["wilcoxon_p"] = float(stats.wilcoxon(b, a).pvalue)
    p = out["p_value"]
    if n < 2 or not math.isfinite(p):
        out["verdict"] = f"too few sessions to test ({n})"
    elif p < alpha:
        better = "challenger" if out["mean_diff"] > 0 else "champion"
        out["verdict"] = f"{better} better (p = {p:.3g} < {alpha})"
    else:
        out["verdict"] = f"no significant difference (p = {p:.3g} >= {alpha})"
    return out


# ---------------------------------------------------------------------- MLflow records


def log_shadow_session(
    *,
    model_name: str,
    version: str,
    role: str,
    strategy: str,
    session_date: str,
    session_return: float,
    net_pnl: float,
    divergence: Mapping[str, float] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Record one arm's shadow session as an MLflow run (tags ``report=shadow``, model name,
    version, role, strategy, session date; metrics ``session_return``, ``net_pnl`` and the
    divergence summary prefixed ``divergence_``). Returns the run id."""
    import mlflow

    tags = {
        "report": SHADOW_REPORT, "model_name": model_name, "model_version": str(version),
        "shadow_role": role, "strategy": strategy, "session_date": session_date,
    }  # fmt: skip
    kw: dict[str, Any] = {"run_name": f"shadow {role} v{version} {session_date}", "tags": tags}
    if parent_run_id:
        kw["parent_run_id"] = parent_run_id
    if mlflow.active_run() is not None:
        kw["nested"] = True
    metrics = {"session_return": session_return, "net_pnl": net_pnl}
    for k, v in (divergence or {}).items():
        if v is not None and math.isfinite(v):
            metrics[f"divergence_{k}"] = float(v)
    with mlflow.start_run(**kw) as run:
        mlflow.log_metrics(metrics)
        return run.info.run_id


def shadow_sessions(model_name: str, strategy: str | None = None) -> pl.DataFrame:
    """Every recorded shadow session of ``model_name``: ``session_date, role, version,
    session_return, net_pnl, pnl_diff`` (the divergence difference) and the run id; the latest
    run of each (date, version, role) wins."""
    import mlflow

    flt = f"tags.report = '{SHADOW_REPORT}' and tags.model_name = '{model_name}'"
    if strategy:
        flt += f" and tags.strategy = '{strategy}'"
    runs = mlflow.MlflowClient().search_runs(
        [e.experiment_id for e in mlflow.search_experiments()], flt, max_results=50_000,
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    rows = [
        {
            "session_date": r.data.tags.get("session_date", ""),
            "role": r.data.tags.get("shadow_role", ""),
            "version": r.data.tags.get("model_version", ""),
            "session_return": r.data.metrics.get("session_return", math.nan),
            "net_pnl": r.data.metrics.get("net_pnl", math.nan),
            "pnl_diff": r.data.metrics.get("divergence_pnl_diff", math.nan),
            "run_id": r.info.run_id,
        }
        for r in runs
    ]
    schema = {"session_date": pl.String, "role": pl.String, "version": pl.String,
              "session_return": pl.Float64, "net_pnl": pl.Float64, "pnl_diff": pl.Float64,
              "run_id": pl.String}  # fmt: skip
    df = pl.DataFrame(rows, schema=schema)
    return df.unique(["session_date", "version", "role"], keep="last", maintain_order=True)


def compare_versions(
    sessions: pl.DataFrame, champion_version: str, challenger_version: str, *, alpha: float = 0.05
) -> dict[str, Any]:
    """:func:`paired_comparison` of two versions' shadow sessions (paired by date), with each
    version's mean divergence from its backtest (``pnl_diff``)."""

    def side(version: str, role: str) -> pl.DataFrame:
        return sessions.filter((pl.col("version") == version) & (pl.col("role") == role))

    ch, cl = side(champion_version, "champion"), side(challenger_version, "challenger")
    out = paired_comparison(
        dict(zip(ch["session_date"], ch["session_return"], strict=True)),
        dict(zip(cl["session_date"], cl["session_return"], strict=True)),
        alpha=alpha,
    )
    out["champion_version"] = champion_version
    out["challenger_version"] = challenger_version
    out["divergence_champion"] = _mean(ch["pnl_diff"])
    out["divergence_challenger"] = _mean(cl["pnl_diff"])
    return out


def shadow_pairs(
    sessions: pl.DataFrame, champion_version: str, challenger_version: str
) -> list[tuple[float, float]]:
    """``(champion, challenger)`` session returns paired by date, oldest first (the form
    :func:`workbench.models.promotion` takes its shadow evidence in)."""
    ch = sessions.filter((pl.col("version") == champion_version) & (pl.col("role") == "champion"))
    cl = sessions.filter(
        (pl.col("version") == challenger_version) & (pl.col("role") == "challenger")
    )
    both = ch.join(cl, on="session_date", suffix="_cl").sort("session_date")
    return list(zip(both["session_return"].to_list(), both["session_return_cl"].to_list(),
                    strict=True))  # fmt: skip


def shadow_gate(sessions: pl.DataFrame, version: str, min_sessions: int) -> tuple[bool, str]:
    """Whether ``version`` has at least ``min_sessions`` shadow sessions as challenger."""
    n = sessions.filter((pl.col("version") == version) & (pl.col("role") == "challenger")).height
    if n >= min_sessions:
        return True, f"v{version} has {n} shadow sessions (>= {min_sessions})"
    return False, (
        f"v{version} has {n} shadow sessions; promotion needs {min_sessions}. Fix: run "
        "`wb shadow` on more sessions (the challenger trades beside the champion)."
    )


def _mean(s: pl.Series) -> float:
    v = s.drop_nulls().drop_nans()
    return float(v.mean()) if v.len() else math.nan


def shadow_figure(sessions: pl.DataFrame, champion_version: str, challenger_version: str) -> Any:
    """Plotly figure: both arms' session returns by date and their difference."""
    import plotly.graph_objects as go

    ch = sessions.filter((pl.col("version") == champion_version) & (pl.col("role") == "champion"))
    cl = sessions.filter(
        (pl.col("version") == challenger_version) & (pl.col("role") == "challenger")
    )
    both = ch.join(cl, on="session_date", suffix="_cl").sort("session_date")
    fig = go.Figure()
    x = both["session_date"].to_list()
    fig.add_trace(go.Scatter(x=x, y=both["session_return"].to_list(),
                             name=f"champion v{champion_version}", mode="lines+markers"))  # fmt: skip
    fig.add_trace(go.Scatter(x=x, y=both["session_return_cl"].to_list(),
                             name=f"challenger v{challenger_version}", mode="lines+markers"))  # fmt: skip
    fig.add_trace(go.Bar(x=x, y=(both["session_return_cl"] - both["session_return"]).to_list(),
                         name="difference", opacity=0.5))  # fmt: skip
    fig.update_layout(title="shadow sessions: session returns", height=420, yaxis_tickformat=".3%")
    return fig
