"""``wb promote`` and ``wb demote``: move the ``champion`` alias on evidence, or roll it back."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from workbench.config import load_config
from workbench.errors import WorkbenchError

console = Console(soft_wrap=True)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def promote_cmd(
    strategy: Annotated[
        str, typer.Argument(help="Strategy (= registered model name), e.g. intraday_reversal.")
    ],
    force: Annotated[
        bool, typer.Option(help="Promote without the out-of-sample comparison (recorded).")
    ] = False,
    reason: Annotated[
        str, typer.Option(help="Why; required with --force, recorded with the decision.")
    ] = "",
) -> None:
    """Move the 'champion' alias to the 'challenger' if it beats the champion out of sample.

    Both versions are re-evaluated on the challenger's validation window, rebuilt from the bar
    store (the window and fingerprints come from MLflow): a paired test of their returns and the
    challenger's deflated Sharpe ratio decide. The decision and its reason are recorded on the
    model versions and in the 'promotions' experiment.

    Example: wb promote intraday_reversal
    """
    from workbench.models.promotion import promote

    try:
        res = promote(load_config(), strategy, force=force, reason=reason)
    except WorkbenchError as exc:
        _fail(exc)
        return
    verdict = "[bold green]promoted[/]" if res.promoted else "[bold yellow]not promoted[/]"
    console.print(f"{verdict} {strategy} v{res.challenger}: {res.reason}")


def demote_cmd(
    strategy: Annotated[
        str, typer.Argument(help="Strategy (= registered model name), e.g. intraday_reversal.")
    ],
    reason: Annotated[str, typer.Option(help="Why the champion is rolled back (recorded).")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="Version to roll back to (default: the previous champion)."),
    ] = None,
) -> None:
    """Roll the 'champion' alias back to the previous champion, recording why.

    Example: wb demote intraday_reversal --reason "fills diverge from the backtest"
    """
    from workbench.models.promotion import demote

    try:
        res = demote(load_config(), strategy, reason=reason, to_version=to)
    except WorkbenchError as exc:
        _fail(exc)
        return
    console.print(
        f"[bold yellow]demoted[/] {strategy} v{res.demoted}: champion is now v{res.champion} "
        f"({res.reason})"
    )
