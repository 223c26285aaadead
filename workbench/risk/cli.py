"""``wb risk``: show kill-switch state and history, trip by hand, re-arm with a recorded reason.

The database is ``--url``, else :func:`workbench.risk.state.default_state_url`; a relative SQLite
path is relative to the project root.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from workbench.config import find_project_root
from workbench.errors import WorkbenchError
from workbench.risk.state import KillSwitchStore, default_state_url

EXIT_HALTED = 3
"""Exit code of ``status`` when any strategy shown is halted."""

risk_app = typer.Typer(
    help="Kill switch: status, trip history, re-arm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

_STATE_COLUMNS = ["strategy", "state", "tripped_at", "rule", "reason", "values"]
_EVENT_COLUMNS = ["ts", "strategy", "event", "rule", "reason", "actor"]
_URL = Annotated[
    str | None,
    typer.Option(
        help="Kill-switch database (default: WB_RISK__STATE_URL or sqlite:///runs/risk.db)."
    ),
]


@risk_app.command()
def status(
    strategy: Annotated[
        str | None, typer.Option(help="Only this strategy (default: every strategy).")
    ] = None,
    url: _URL = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show each strategy's kill switch and the last 5 events.

    Exit code 0 when every strategy shown is active, 3 when any is halted, 2 on an error.
    """
    with _errors(), _store(url) as store:
        states = store.all_states()
        if strategy is not None:
            states = states.filter(pl.col("strategy") == strategy)
            if states.is_empty():
                s = store.load(strategy)
                states = pl.DataFrame(
                    [{"strategy": s.strategy, "state": s.state, "values": "{}"}],
                    schema=states.schema,
                )
        events = store.history(strategy, limit=5)
        where = store.url
    halted = states.filter(pl.col("state") == "halted")["strategy"].to_list()
    if as_json:
        doc = {
            "url": where,
            "halted": halted,
            "strategies": _records(states),
            "events": _records(events),
        }
        typer.echo(json.dumps(doc, indent=2))
    else:
        if states.is_empty():
            console.print(f"no kill switch recorded in {where}: every strategy is active")
        else:
            console.print(_table(states, f"kill switches ({where})", _STATE_COLUMNS))
        if not events.is_empty():
            console.print(_table(events, "last events", _EVENT_COLUMNS))
    raise typer.Exit(EXIT_HALTED if halted else 0)


@risk_app.command()
def rearm(
    strategy: Annotated[str, typer.Option(help="Strategy to re-arm.")],
    reason: Annotated[
        str, typer.Option(help="Why it is safe to resume (at least 5 characters; recorded).")
    ] = "",
    url: _URL = None,
) -> None:
    """Re-arm a halted strategy so it may enter positions again; the reason is recorded."""
    with _errors(), _store(url) as store:
        before = store.load(strategy)
        store.rearm(strategy, reason=reason)
        last = store.history(strategy, limit=1).row(0, named=True)
    console.print(
        f"re-armed {strategy!r}: was halted by rule {before.rule!r} at {_iso(before.tripped_at)} "
        f"({before.reason}). Recorded reason: {last['reason']!r} by {last['actor']} at "
        f"{_iso(last['ts'])}."
    )


@risk_app.command()
def trip(
    strategy: Annotated[str, typer.Option(help="Strategy to halt.")],
    reason: Annotated[str, typer.Option(help="Why trading must stop (recorded).")] = "",
    url: _URL = None,
) -> None:
    """Halt a strategy by hand (rule 'manual'): new entries are refused until it is re-armed."""
    with _errors(), _store(url) as store:
        before = store.load(strategy)
        state = store.trip(strategy, rule="manual", reason=reason, values={})
    if before.halted:
        console.print(
            f"{strategy!r} was already halted by rule {state.rule!r} at {_iso(state.tripped_at)} "
            f"({state.reason}); the manual trip is recorded in the history."
        )
    else:
        console.print(
            f"tripped {strategy!r} (rule 'manual'): {state.reason}. Re-arm with "
            f"`wb risk rearm --strategy {strategy} --reason '...'`."
        )


def _store(url: str | None) -> KillSwitchStore:
    return KillSwitchStore(url or default_state_url(), root=find_project_root())


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except WorkbenchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(code=2) from None


def _records(df: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in df.iter_rows(named=True):
        rec = {k: _iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
        rec["values"] = json.loads(rec["values"]) if rec.get("values") else {}
        out.append(rec)
    return out


def _table(df: pl.DataFrame, title: str, columns: list[str]) -> Table:
    table = Table(title=f"{title}, times in UTC")
    for c in columns:
        wrap = c in ("reason", "values")
        table.add_column(c, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis")
    for row in df.select(columns).iter_rows():
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()
