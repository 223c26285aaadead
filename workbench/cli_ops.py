"""``wb alert`` commands: test the configured alert channels, show recent alerts."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from workbench.config import load_config
from workbench.errors import WorkbenchError

alert_app = typer.Typer(
    help="Alerts: send a test alert to every configured channel, show recent alerts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)


@alert_app.command("test")
def alert_test() -> None:
    """Send a test alert to every configured channel (log; webhook and email when configured).

    Exits 1 when a channel failed. Example: WB_ALERTS__WEBHOOK_URL=https://hooks.slack.com/... wb alert test
    """
    from workbench.monitoring.alerts import test_alert

    try:
        cfg = load_config()
        d = test_alert(cfg)
    except WorkbenchError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    for name, outcome in d.channels.items():
        mark = "[green]ok[/]" if outcome == "ok" else f"[red]{outcome}[/]"
        console.print(f"{name}: {mark}")
    if len(d.channels) == 1:
        console.print(
            "only the log is configured: set alerts.webhook_url (WB_ALERTS__WEBHOOK_URL) or "
            "alerts.smtp_host and alerts.email_to for more channels"
        )
    if not d.ok:
        raise typer.Exit(1)


@alert_app.command("recent")
def alert_recent(
    limit: Annotated[int, typer.Option(help="How many of the latest alerts.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show the latest alerts from alerts.history_path. Example: wb alert recent --limit 5"""
    from workbench.monitoring.alerts import recent_alerts

    cfg = load_config()
    rows = recent_alerts(cfg.path(cfg.alerts.history_path), limit=limit)
    if as_json:
        for r in rows:
            console.print_json(json.dumps(r, default=str))
        return
    table = Table(title=f"last {len(rows)} alerts ({cfg.alerts.history_path})")
    for c in ("ts", "severity", "kind", "message", "outcome"):
        table.add_column(c)
    for r in rows:
        table.add_row(
            *(str(r.get(c, "")) for c in ("ts", "severity", "kind", "message", "outcome"))
        )
    console.print(table)
