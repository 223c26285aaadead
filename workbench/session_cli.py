"""``wb session``: run a trading session, show its state, flatten it.

* ``wb session run --strategy S --broker sim|alpaca --mode replay|live [--date D] [--store P]
  [--ledger URL] [--model NAME@ALIAS] [--live]``: trades one session (see
  :func:`workbench.stages.session.run_trade_session`). SIGTERM/SIGINT stop it gracefully (no
  new entries, working entries cancelled, state persisted, exit 0). Exit 3 when reconcile halts
  it (an unexplained mismatch; the kill switch is tripped).
* ``wb session status [--ledger URL] [--session ID] [--json]``: orders, fills, positions, PnL
  and kill-switch state from the ledger.
* ``wb session flatten --strategy S [...]``: closes the session's positions now (reduce-only
  market orders, written ahead like every order).

Live trading (real money) needs both ``--live`` and ``WB_LIVE_TRADING=yes``; paper is the default.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from workbench.config import load_config
from workbench.errors import WorkbenchError

EXIT_HALTED = 3

session_app = typer.Typer(
    help="Trading sessions: run (replay or live, sim or Alpaca), status, flatten.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

_LEDGER = Annotated[
    str | None, typer.Option("--ledger", help="Order ledger URL (default: execution.ledger_url).")
]


@contextmanager
def _errors() -> Iterator[None]:
    from workbench.execution.engine import SessionHalted

    try:
        yield
    except SessionHalted as exc:
        err_console.print(f"[red]halted:[/red] {exc}")
        raise typer.Exit(EXIT_HALTED) from None
    except WorkbenchError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _model(model: str | None, strategy: str) -> tuple[str, str]:
    if not model:
        return strategy, ""
    name, _, alias = model.partition("@")
    return name or strategy, alias


@session_app.command("run")
def run_cmd(
    strategy: Annotated[str, typer.Option(help="Strategy to trade (config/strategies/).")],
    broker: Annotated[str, typer.Option(help="sim | alpaca")] = "sim",
    mode: Annotated[str, typer.Option(help="replay (a stored day) | live")] = "replay",
    date: Annotated[str | None, typer.Option(help="Session YYYY-MM-DD (default: last stored / today).")] = None,
    store: Annotated[str | None, typer.Option(help="Bar store folder (default: store.root).")] = None,
    ledger: _LEDGER = None,
    model: Annotated[str | None, typer.Option(help="NAME@ALIAS (default: STRATEGY@champion, else challenger).")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols (default: data.symbols).")] = None,
    timeframe: Annotated[str | None, typer.Option(help="Bar length (default: data.timeframe).")] = None,
    live: Annotated[bool, typer.Option("--live", help="Trade the LIVE account (also needs WB_LIVE_TRADING=yes).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:  # fmt: skip
    """Trade one session; a restart with the same arguments reconciles and resumes."""
    from workbench.stages.session import run_trade_session

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with _errors():
        cfg = load_config()
        syms = (
            [s.strip() for s in symbols.split(",") if s.strip()]
            if symbols
            else list(cfg.data.symbols)
        )
        name, alias = _model(model, strategy)
        res = run_trade_session(
            cfg, store_root=store or str(cfg.path(cfg.store.root)), model_name=name,
            strategy=strategy, timeframe=timeframe or cfg.data.timeframe, symbols=syms,
            session_date=date or "", broker=broker, mode=mode, ledger_url=ledger or "",
            model_alias=alias, live=live, install_signals=True,
            echo=(lambda m: err_console.print(m)) if as_json else console.print,
        )  # fmt: skip
        r = res.result
        summary = {
            "session": res.session_date.isoformat(),
            "status": r.status,
            "model": f"{res.model.name} v{res.model.version} ({res.model.alias})",
            "fills": r.fills.height,
            "orders": r.orders.height,
            "denials": r.rejections.height,
            "kill_switch_trips": r.kill_switch.height,
            "net_pnl": round(r.net_pnl, 2),
        }
        if as_json:
            print(json.dumps(summary))
        else:
            console.print(summary)


def _table(df: pl.DataFrame, title: str) -> Table:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c)
    for row in df.iter_rows():
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def session_status(cfg: Any, ledger_url: str | None, session: str | None) -> dict[str, Any]:
    """The status of one session (default: the latest) as plain data."""
    from workbench.execution.ledger import OrderLedger
    from workbench.risk.state import KillSwitchStore
    from workbench.stages.session import _safe, project_url

    ledger = OrderLedger(project_url(cfg, ledger_url or cfg.execution.ledger_url))
    try:
        recs = ledger.sessions()
        if not recs:
            return {"sessions": []}
        rec = next((r for r in recs if r.session_id == session), None) if session else None
        if session and rec is None:
            raise WorkbenchError(
                f"no session {session!r} in the ledger; known: {[r.session_id for r in recs][-10:]}"
            )
        rec = rec or max(recs, key=lambda r: r.updated_at)
        frames = ledger.frames(rec.session_id)
        fills = frames["fills"]
        ks = KillSwitchStore(project_url(cfg, cfg.risk.state_url))
        try:
            state = ks.load(rec.strategy)
        finally:
            ks.close()
        health_file = cfg.path("runs") / "sessions" / f"{_safe(rec.session_id)}.health.json"
        health = json.loads(health_file.read_text()) if health_file.exists() else {}
        return {
            "session": rec.session_id,
            "status": rec.status,
            "reason": rec.reason,
            "last_bar": rec.last_bar_ts.isoformat() if rec.last_bar_ts else None,
            "positions": ledger.positions(rec.session_id),
            "open_orders": len(ledger.orders(rec.session_id, open_only=True)),
            "orders": frames["orders"].to_dicts(),
            "fills": fills.to_dicts(),
            "commission": float(fills["commission"].sum()) if fills.height else 0.0,
            "equity": health.get("equity"),
            "pnl": health.get("pnl"),
            "kill_switch": state.state,
            "kill_switch_reason": state.reason,
            "sessions": [r.session_id for r in recs],
        }
    finally:
        ledger.close()


@session_app.command("status")
def status_cmd(
    ledger: _LEDGER = None,
    session: Annotated[str | None, typer.Option(help="Session id (default: the latest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Orders, fills, positions, PnL and the kill switch of a session. Exit 3 when halted."""
    with _errors():
        st = session_status(load_config(), ledger, session)
        if as_json:
            print(json.dumps(st, default=str))
        elif not st.get("session"):
            console.print("no sessions in the ledger yet (`wb session run --strategy ...`).")
        else:
            console.print(
                f"[bold]{st['session']}[/bold]: {st['status']} {st['reason']}; last bar "
                f"{st['last_bar']}; kill switch {st['kill_switch']}; PnL {st['pnl']}; "
                f"positions {st['positions'] or 'flat'}; open orders {st['open_orders']}"
            )
            for name in ("orders", "fills"):
                if st[name]:
                    console.print(_table(pl.DataFrame(st[name]), name))
        if st.get("status") == "halted" or st.get("kill_switch") == "halted":
            raise typer.Exit(EXIT_HALTED)


@session_app.command("flatten")
def flatten_cmd(
    strategy: Annotated[str, typer.Option(help="Strategy whose session to flatten.")],
    broker: Annotated[str, typer.Option(help="sim | alpaca")] = "sim",
    mode: Annotated[str, typer.Option(help="replay | live")] = "live",
    date: Annotated[str | None, typer.Option(help="Session YYYY-MM-DD (default: today, New York).")] = None,
    ledger: _LEDGER = None,
    live: Annotated[bool, typer.Option("--live", help="The LIVE account (also needs WB_LIVE_TRADING=yes).")] = False,
) -> None:  # fmt: skip
    """Close the session's positions now with reduce-only market orders."""
    from workbench.stages.session import flatten_session

    with _errors():
        sent = flatten_session(
            load_config(), strategy=strategy, broker=broker, mode=mode, session_date=date or "",
            ledger_url=ledger or "", live=live, echo=console.print,
        )  # fmt: skip
        console.print(f"sent {len(sent)} closing order(s): {sent}")
