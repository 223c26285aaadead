"""``wb shadow`` and ``wb compare``: champion/challenger shadow sessions and their comparison."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from workbench.config import WorkbenchConfig, load_config
from workbench.errors import WorkbenchError

console = Console(soft_wrap=True)


def run_shadow_day(
    cfg: WorkbenchConfig,
    *,
    model_name: str,
    strategy: str,
    timeframe: str,
    symbols: list[str],
    session_date: str = "",
    store_root: str = "",
    state_dir: str = "runs/shadow",
    allow_model: tuple[str, ...] = (),
    broker: str = "sim",
    environ: Mapping[str, str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay one session with the champion (on ``broker``) and, beside it in its own account,
    ledger and kill-switch state, the challenger; record each arm's return and divergence.

    The challenger's account is a simulated one of its own, or with
    ``execution.shadow.challenger_broker: alpaca`` its own paper account (keys from the
    variables ``execution.shadow`` names, read from ``environ``): refused before any order when
    those are missing or point at the champion's account. Each arm and session has its own
    ledger (``state_dir/ledger-<role>-<date>.db``; the simulated venue's ids repeat from session
    to session). Only the champion's fills refit the slippage model (the same bars must not
    count twice). Returns ``{role: {"version", "session_return", "net_pnl", "run_id",
    "pnl_diff", "broker"}}``.
    """
    from workbench.execution.shadow import ROLES, log_shadow_session
    from workbench.stages.session import review_session, run_trade_session
    from workbench.tracking import setup

    if broker not in ("sim", "alpaca"):
        raise WorkbenchError(f"--broker must be 'sim' or 'alpaca'. Got {broker!r} instead.")
    arms = shadow_accounts(cfg, broker, os.environ if environ is None else environ, echo)
    setup(cfg)
    root = cfg.path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for role in ROLES:
        base, arm_broker, env = arms[role]
        risk = cfg.risk.model_copy(update={"state_url": f"sqlite:///{root / f'risk-{role}.db'}"})
        arm_cfg = base.model_copy(update={"risk": risk})
        res = run_trade_session(
            arm_cfg, store_root=store_root or str(cfg.path(cfg.store.root)),
            model_name=model_name, strategy=strategy, timeframe=timeframe, symbols=symbols,
            session_date=session_date, broker=arm_broker, mode="replay",
            ledger_url=f"sqlite:///{root / ledger_name(role, session_date)}",
            model_alias=role, echo=echo, allow_model=allow_model, environ=env,
        )  # fmt: skip
        report, _ = review_session(
            arm_cfg, res, strategy=strategy, log=False, learn_slippage=role == "champion",
            echo=echo,
        )  # fmt: skip
        equity0 = float(res.result.pnl["equity"][0] - res.result.pnl["pnl"][0])
        ret = res.result.net_pnl / equity0 if equity0 else math.nan
        run_id = log_shadow_session(
            model_name=model_name, version=res.model.version, role=role, strategy=strategy,
            session_date=res.session_date.isoformat(), session_return=ret,
            net_pnl=res.result.net_pnl, divergence=report.metrics,
        )  # fmt: skip
        out[role] = {
            "version": res.model.version, "session_return": ret, "net_pnl": res.result.net_pnl,
            "pnl_diff": report.metrics["pnl_diff"], "run_id": run_id, "broker": arm_broker,
        }  # fmt: skip
        echo(f"shadow {role} v{res.model.version}: session return {ret:+.5f}")
    return out


def shadow_accounts(
    cfg: WorkbenchConfig, broker: str, environ: Mapping[str, str], echo: Callable[[str], None]
) -> dict[str, tuple[WorkbenchConfig, str, Mapping[str, str]]]:
    """Each arm's (config, broker, environment). With ``execution.shadow.challenger_broker:
    alpaca`` the challenger's paper account is checked first: its keys present (and not the
    champion's) and, through the account endpoint, not the champion's account."""
    from workbench.execution.alpaca import AlpacaBroker
    from workbench.execution.broker import BrokerError
    from workbench.execution.shadow import challenger_config, challenger_environ, check_own_account

    arms: dict[str, tuple[WorkbenchConfig, str, Mapping[str, str]]] = {
        "champion": (cfg, broker, environ), "challenger": (cfg, "sim", environ),
    }  # fmt: skip
    if cfg.execution.shadow.challenger_broker != "alpaca":
        return arms
    env = challenger_environ(cfg, environ)
    ch_cfg = challenger_config(cfg)
    sh = cfg.execution.shadow
    opened: list[AlpacaBroker] = []
    try:
        challenger = AlpacaBroker.from_config(ch_cfg, environ=env, stream=False)
        opened.append(challenger)
        champion = None
        if broker == "alpaca":
            champion = AlpacaBroker.from_config(cfg, environ=environ, stream=False)
            opened.append(champion)
        echo(check_own_account(cfg, champion, challenger))
    except BrokerError as exc:
        raise WorkbenchError(
            f"shadow accounts: {exc} (the challenger's keys come from {sh.key_id_env} / "
            f"{sh.secret_key_env}, the champion's from APCA_API_KEY_ID / APCA_API_SECRET_KEY)."
        ) from None
    finally:
        for b in opened:
            b.close()
    arms["challenger"] = (ch_cfg, "alpaca", env)
    return arms


def ledger_name(role: str, session_date: str) -> str:
    """The shadow arm's ledger file of one session."""
    return f"ledger-{role}-{session_date or 'last'}.db"


def _version(model_name: str, which: str) -> str:
    """A version number given as such, or the version an alias points at."""
    import mlflow
    from mlflow.exceptions import MlflowException

    w = which.lstrip("v")
    if w.isdigit():
        return w
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(model_name, which).version)
    except MlflowException as exc:
        raise WorkbenchError(
            f"{model_name!r} has no alias {which!r}. Fix: pass a version number or an alias "
            "that exists (champion, challenger)."
        ) from exc


def compare_cmd(
    champion: Annotated[str, typer.Argument(help="Alias or version of the champion.")] = "champion",
    challenger: Annotated[
        str, typer.Argument(help="Alias or version of the challenger.")
    ] = "challenger",
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registered model name.")
    ] = "intraday_reversal",
    strategy: Annotated[str, typer.Option(help="Only this strategy's sessions.")] = "",
    min_sessions: Annotated[
        int, typer.Option(help="Sessions the comparison needs (exit 1 below it).")
    ] = 0,
    alpha: Annotated[float, typer.Option(help="Significance level of the paired test.")] = 0.05,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Compare champion and challenger over their shadow sessions (paired by session date).

    Prints the paired difference of session returns (challenger - champion) with a paired
    t-test and a Wilcoxon signed-rank test, and each version's mean divergence from its
    backtest. Example: wb compare champion challenger --model intraday_reversal
    """
    from workbench.execution.shadow import compare_versions, shadow_sessions
    from workbench.tracking import setup

    try:
        cfg = load_config()
        setup(cfg)
        v_ch, v_cl = _version(model, champion), _version(model, challenger)
        sessions = shadow_sessions(model, strategy or None)
        out = compare_versions(sessions, v_ch, v_cl, alpha=alpha)
    except WorkbenchError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    enough = out["n"] >= min_sessions
    if as_json:
        print(json.dumps(out, default=str))
    else:
        t = Table(title=f"{model}: champion v{v_ch} vs challenger v{v_cl} (shadow sessions)")
        t.add_column("")
        t.add_column("value", justify="right")
        f = "{:+.6f}".format
        for label, val in (
            ("sessions (paired)", str(out["n"])),
            ("mean return, champion", f(out["mean_champion"])),
            ("mean return, challenger", f(out["mean_challenger"])),
            ("mean difference", f(out["mean_diff"])),
            ("sd of the difference", f"{out['sd_diff']:.6f}"),
            ("paired t", f"{out['t_stat']:.3f}"),
            ("p (paired t)", f"{out['p_value']:.3g}"),
            ("p (Wilcoxon)", f"{out['wilcoxon_p']:.3g}"),
            ("mean divergence, champion ($)", f"{out['divergence_champion']:,.2f}"),
            ("mean divergence, challenger ($)", f"{out['divergence_challenger']:,.2f}"),
        ):
            t.add_row(label, val)
        console.print(t)
        console.print(out["verdict"])
        if not enough:
            console.print(f"[yellow]{out['n']} session(s) < --min-sessions {min_sessions}[/]")
    if not enough:
        raise typer.Exit(1)


def shadow_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registered model name.")
    ] = "intraday_reversal",
    strategy: Annotated[str, typer.Option(help="Strategy both arms trade.")] = "intraday_reversal",
    session_date: Annotated[
        str, typer.Option("--date", help="Session to replay (YYYY-MM-DD); empty: the last stored.")
    ] = "",
    timeframe: Annotated[str, typer.Option(help="Bar length.")] = "",
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols (default: config).")] = "",
    store_root: Annotated[str, typer.Option("--store", help="Bar store folder.")] = "",
    state_dir: Annotated[
        str, typer.Option(help="Where the arms' ledgers and kill-switch state live.")
    ] = "runs/shadow",
    allow: Annotated[
        list[str] | None,
        typer.Option(help="Trade a version anyway: ungated | expired | drifted (repeatable)."),
    ] = None,
    broker: Annotated[
        str, typer.Option(help="The champion's broker: sim | alpaca (its paper account).")
    ] = "sim",
) -> None:
    """Replay a session with the champion and, in its own account, the challenger.

    The challenger's account is a simulated one of its own, or its own Alpaca paper account with
    execution.shadow.challenger_broker: alpaca (keys from APCA_CHALLENGER_API_KEY_ID /
    APCA_CHALLENGER_API_SECRET_KEY, or the variables execution.shadow names). Each arm's session
    return and divergence are recorded in MLflow; `wb compare` reads them.
    Example: wb shadow --model intraday_reversal --date 2024-06-28
    """
    try:
        cfg = load_config()
        syms = [s for s in symbols.split(",") if s] or list(cfg.data.symbols)
        out = run_shadow_day(
            cfg, model_name=model, strategy=strategy, timeframe=timeframe or cfg.data.timeframe,
            symbols=syms, session_date=session_date, store_root=store_root,
            state_dir=str(Path(state_dir)), allow_model=tuple(allow or ()), broker=broker,
            echo=console.print,
        )  # fmt: skip
    except WorkbenchError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    print(json.dumps(out, default=str))
