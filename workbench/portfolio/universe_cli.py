"""``wb universe``: rotate a named universe from the bar store and show its members and history."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from workbench.errors import WorkbenchError
from workbench.portfolio.universe import DEFAULT_URL, UniverseConfig, UniverseStore

universe_app = typer.Typer(
    help="Pick the tradable universe by liquidity and data quality, and track it over time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
_TEXT = ("$ volume/day", "missing", "action", "why")

Name = Annotated[str, typer.Option("--name", help="Universe name, e.g. liquid.")]
Url = Annotated[
    str | None,
    typer.Option(help=f"SQLAlchemy URL of the universe database (default {DEFAULT_URL})."),
]


def _table(df: pl.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for c in df.columns:
        table.add_column(c, justify="right" if df.schema[c].is_numeric() else "left")
    for row in df.iter_rows():
        table.add_row(
            *["" if v is None else f"{v:,.4g}" if isinstance(v, float) else str(v) for v in row]
        )
    return table


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def _open(url: str | None) -> UniverseStore:
    from workbench.config import load_config

    return UniverseStore(url or DEFAULT_URL, load_config().project_root)


@universe_app.command()
def rotate(
    name: Name,
    symbols: Annotated[str, typer.Option(help="Comma-separated candidate symbols.")],
    as_of: Annotated[str, typer.Option(help="Rotation date YYYY-MM-DD (its session included).")],
    timeframe: Annotated[
        str | None, typer.Option(help="Bars ranked: 1Min ... 1Day (default: data.timeframe).")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Store folder (default: store.root).")] = None,
    size: Annotated[int, typer.Option(help="Number of members.")] = 10,
    lookback_days: Annotated[int, typer.Option(help="Sessions ranked, ending at --as-of.")] = 20,
    min_dollar_volume: Annotated[
        float, typer.Option(help="Floor on the average daily dollar volume.")
    ] = 0.0,
    max_missing_share: Annotated[
        float, typer.Option(help="Share of expected bars that may be missing.")
    ] = 0.05,
    buffer: Annotated[int, typer.Option(help="Incumbents stay while ranked <= size+buffer.")] = 0,
    min_retention_days: Annotated[
        int, typer.Option(help="Sessions a member stays unless it fails a floor.")
    ] = 0,
    url: Url = None,
) -> None:
    """Rotate a universe as of a date: rank the candidates, record additions and removals.

    Re-running the same name and date changes nothing; a date before the last rotation is refused.

    Example: wb universe rotate --name liquid --symbols SYN000,SYN001,SYN002 --as-of 2024-03-28 --size 2
    """
    from workbench.config import load_config
    from workbench.data.store import BarStore

    try:
        cfg = load_config()
        bars = BarStore(store, cfg.store.partition) if store else BarStore.from_config(cfg)
        config = UniverseConfig(
            size=size,
            lookback_days=lookback_days,
            min_dollar_volume=min_dollar_volume,
            max_missing_share=max_missing_share,
            buffer=buffer,
            min_retention_days=min_retention_days,
        )
        with UniverseStore(url or DEFAULT_URL, cfg.project_root) as us:
            res = us.rotate(
                name,
                bars,
                [s for s in symbols.split(",") if s.strip()],
                timeframe or cfg.data.timeframe,
                as_of,
                config,
                calendar=cfg.data.calendar,
            )
    except (WorkbenchError, ValueError) as exc:
        _fail(exc)
    view = pl.DataFrame(
        [
            {
                "symbol": r["symbol"],
                "rank": r["rank"],
                "$ volume/day": "" if r["bars"] == 0 else f"${r['avg_dollar_volume']:,.0f}",
                "missing": f"{r['missing_share']:.1%}",
                "action": r["action"] or "",
                "why": r["note"] or r["reason"] or "",
            }
            for r in res.selection.iter_rows(named=True)
        ],
        schema={"symbol": pl.String, "rank": pl.Int64, **dict.fromkeys(_TEXT, pl.String)},
    )
    console.print(_table(view, title=f"universe {name} as of {res.as_of}"))
    console.print(
        f"members ({len(res.members)}): {', '.join(res.members) or '-'}; added {len(res.added)}, "
        f"removed {len(res.removed)}, turnover {res.turnover:.2f}",
        highlight=False,
    )


@universe_app.command()
def show(
    name: Name,
    as_of: Annotated[
        str | None, typer.Option(help="Members as of this date YYYY-MM-DD (default: now).")
    ] = None,
    url: Url = None,
) -> None:
    """Show a universe's members (now or as of a date) with when and why each was added.

    Example: wb universe show --name liquid --as-of 2024-03-01
    """
    try:
        day = date.fromisoformat(as_of) if as_of else None
        with _open(url) as us:
            members = us.members(name, day)
            hist = us.history(name)
            metrics = us.metrics(name)
    except (WorkbenchError, ValueError) as exc:
        _fail(exc)
    if not members:
        when = f" as of {day}" if day else ""
        console.print(f"universe {name!r} has no members{when}.", highlight=False)
        raise typer.Exit(code=1)
    added = hist.filter(pl.col("action") == "added")
    if day is not None:
        added = added.filter(pl.col("as_of") <= day)
    rows = (
        added.filter(pl.col("symbol").is_in(members))
        .group_by("symbol")
        .agg(pl.all().sort_by("as_of").last())
        .select("symbol", added_on="as_of", reason="reason")
        .sort("symbol")
    )
    console.print(_table(rows, title=f"universe {name}" + (f" as of {day}" if day else "")))
    console.print(
        f"{len(members)} member(s); rotations {metrics['rotation_count']:.0f}, average turnover "
        f"{metrics['avg_turnover']:.2f}, average tenure {metrics['avg_tenure_days']:.1f} days",
        highlight=False,
    )


@universe_app.command()
def history(name: Name, url: Url = None) -> None:
    """Show every addition and removal of a universe with its date and reason.

    Example: wb universe history --name liquid
    """
    try:
        with _open(url) as us:
            hist = us.history(name)
            rotations = us.metrics(name)["rotation_count"]
    except (WorkbenchError, ValueError) as exc:
        _fail(exc)
    if not rotations:
        console.print(f"universe {name!r} has no recorded rotation.", highlight=False)
        raise typer.Exit(code=1)
    if hist.is_empty():
        console.print(
            f"universe {name!r}: {rotations:.0f} rotation(s), no symbol ever added.",
            highlight=False,
        )
        return
    console.print(_table(hist, title=f"universe {name}: history"))
