"""The ``wb`` command: ingest data, inspect the store and config, run pipelines.

Every command reads config/workbench.yaml (plus the WB_ENV overlay and WB_* variables); options
given on the command line win over config for that run only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from workbench.cli_errors import CleanErrors
from workbench.cli_models import demote_cmd, promote_cmd
from workbench.cli_ops import alert_app
from workbench.cli_review import compare_cmd, shadow_cmd
from workbench.cli_schedule import schedule_app
from workbench.cli_sweep import sweep
from workbench.config import config_hash, load_config
from workbench.errors import WorkbenchError
from workbench.portfolio.universe_cli import universe_app
from workbench.risk.cli import risk_app

app = typer.Typer(
    help="Quant workbench: ingest bars, inspect the store, run research pipelines.",
    cls=CleanErrors,  # expected errors: one message, exit 2; bugs: a summary and a log file
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(
    help="Show the effective configuration (secrets masked).", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(risk_app, name="risk")
app.add_typer(universe_app, name="universe")
app.add_typer(schedule_app, name="schedule")
app.add_typer(alert_app, name="alert")
app.command("promote")(promote_cmd)
app.command("demote")(demote_cmd)
app.command("sweep")(sweep)
app.command("compare")(compare_cmd)
app.command("shadow")(shadow_cmd)
console = Console()


def frame_table(df: pl.DataFrame, title: str | None = None) -> Table:
    """Render a polars frame as a rich table."""
    table = Table(title=title, show_lines=False)
    for c in df.columns:
        table.add_column(c, justify="right" if df.schema[c].is_numeric() else "left")
    for row in df.iter_rows():
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M %Z")
    return str(v)


def _fail(exc: Exception) -> None:
    """Print an error unwrapped (file names and values stay whole) and exit 2."""
    _fail_data(exc)


def _fail_data(exc: Exception) -> None:
    """Print a data error unwrapped (file names stay whole) and exit 2."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code=2)


def _day(option: str, text: str) -> date:
    """Parse a YYYY-MM-DD option, or raise naming the option, the value and the fix."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise WorkbenchError(
            f"{option} {text!r} is not a date ({exc}). Fix: a real date as YYYY-MM-DD, "
            "e.g. 2024-01-02."
        ) from None


@app.command()
def ingest(
    source: Annotated[
        str | None, typer.Option(help="Data source: synthetic (default, offline), files or alpaca.")
    ] = None,
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated symbols (default: data.symbols).")
    ] = None,
    timeframe: Annotated[
        str | None, typer.Option(help="1Min, 5Min, 15Min, 1Hour or 1Day (default: data.timeframe).")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="First session, YYYY-MM-DD (default: data.start).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Last session, inclusive, YYYY-MM-DD (default: data.end).")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Store folder (default: store.root).")] = None,
    path: Annotated[
        list[str] | None,
        typer.Option(help="Files to import when --source files (repeatable, globs ok)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fetch bars into the store. Re-running fetches only what the store lacks.

    Example: wb ingest --symbols SYN000,SYN001 --timeframe 5Min --start 2024-01-02 --end 2024-01-31
    """
    from workbench.data.ingest import ingest as run_ingest
    from workbench.data.sources.factory import make_source
    from workbench.data.store import BarStore

    try:
        cfg = load_config()
        src = make_source(cfg, source or cfg.data.source, paths=path)
        st = BarStore(store, cfg.store.partition) if store else BarStore.from_config(cfg)
        syms = (
            [s.strip() for s in symbols.split(",") if s.strip()]
            if symbols is not None
            else list(cfg.data.symbols)
        )
        if not syms:
            raise WorkbenchError(
                f"--symbols {symbols!r} names no symbol (the default universe is not used in its "
                "place). Fix: pass symbols, e.g. --symbols SYN000,SYN001, or leave --symbols out."
            )
        rep = run_ingest(
            src,
            st,
            syms,
            timeframe or cfg.data.timeframe,
            _day("--start", start) if start else cfg.data.start,
            _day("--end", end) if end else cfg.data.end,
            chunk_days=cfg.ingest.chunk_days,
            chunk_symbols=cfg.ingest.chunk_symbols,
            progress=progress,
        )
    except (WorkbenchError, ValueError) as exc:
        _fail_data(exc)
    repaired = sum(1 for c in rep.chunks if c["status"] == "repaired")
    console.print(
        f"ingested from [bold]{src.name}[/]: {rep.fetched} chunk(s) fetched, {rep.skipped} skipped, "
        + (f"{repaired} bad partition(s) re-fetched, " if repaired else "")
        + f"{rep.total('rows'):,} bars ({rep.total('inserted'):,} new, {rep.total('updated'):,} updated) "
        f"in {rep.seconds:.1f}s into {st.root}"
    )
    from workbench.data.quality import check_store

    try:
        console.print(frame_table(st.coverage(), title="store coverage"))
        report = check_store(
            st,
            syms,
            timeframe or cfg.data.timeframe,
            start or cfg.data.start,
            end or cfg.data.end,
            calendar=cfg.data.calendar,
        )
    except WorkbenchError as exc:
        _fail_data(exc)
    console.print(report.to_text(), markup=False)
    if report.severe:
        console.print(
            "[bold red]severe data-quality findings[/]: fix the source or re-ingest, then run again."
        )
        raise typer.Exit(code=1)


@app.command()
def coverage(
    store: Annotated[str | None, typer.Option(help="Store folder (default: store.root).")] = None,
) -> None:
    """Show, per timeframe and symbol, the first and last bar and the number of bars stored."""
    from workbench.data.store import BarStore

    try:
        cfg = load_config()
        st = BarStore(store, cfg.store.partition) if store else BarStore.from_config(cfg)
        cov = st.coverage()
    except WorkbenchError as exc:
        _fail_data(exc)
    if cov.is_empty():
        console.print(f"the store at {st.root} is empty. Fill it with `wb ingest`.")
        return
    console.print(frame_table(cov, title=f"store coverage ({st.root})"))


@app.command()
def run(
    pipeline: Annotated[
        str,
        typer.Argument(
            help="Pipeline name or spec path, e.g. research or pipelines/research.yaml."
        ),
    ],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--param",
            help="Override a shared pipeline parameter: -p alpha=0.05 (repeatable).",
        ),
    ] = None,
) -> None:
    """Run a pipeline of notebooks with papermill, tracked in MLflow.

    The spec is validated first (unknown or mistyped parameters are refused); each step's executed
    notebook lands in runs/<pipeline>/<timestamp>/ and in MLflow. Stops at the first failing step.

    Example: wb run research -p alpha=0.05 -p seed=3
    """
    from workbench.pipeline import run_pipeline

    try:
        res = run_pipeline(pipeline, list(param or []), echo=console.print)
    except WorkbenchError as exc:
        _fail(exc)
    rows = [
        {
            "step": s.step,
            "status": s.status,
            "seconds": s.seconds,
            "metrics": ", ".join(f"{k}={v:.4g}" for k, v in list(s.metrics.items())[:4]),
            "mlflow_run_id": s.mlflow_run_id,
        }
        for s in res.steps
    ]
    console.print(
        frame_table(pl.DataFrame(rows), title=f"{res.pipeline}: {'ok' if res.ok else 'FAILED'}")
    )
    console.print(
        f"run folder: {res.run_dir}  (summary.json)  MLflow parent run: {res.parent_run_id}"
    )
    failed = [s for s in res.steps if s.status == "failed"]
    if failed:
        console.print(f"[bold red]step {failed[0].step!r} failed[/] at {failed[0].error}")
        console.print(f"failed notebook: {failed[0].notebook}")
        raise typer.Exit(code=1)


@app.command()
def reproduce(
    run_id: Annotated[
        str, typer.Argument(help="MLflow run id of a notebook step run by `wb run`.")
    ],
) -> None:
    """Re-execute a run's notebook with the same parameters and data; report whether metrics match.

    Example: wb reproduce 3f2a...  (a child run id from the MLflow UI or summary.json)
    """
    from workbench.pipeline.reproduce import reproduce as run_reproduce

    try:
        rep = run_reproduce(run_id, echo=console.print)
    except WorkbenchError as exc:
        _fail_data(exc)
    console.print(frame_table(rep.comparison, title=f"{run_id} -> {rep.new_run_id}"))
    console.print(
        f"same data: {rep.same_data}   same code: {rep.same_code}   same lock: {rep.same_lock}"
        f"   metrics match: {rep.matches}"
    )
    if rep.excluded:
        console.print(f"not compared (they depend on cache state): {', '.join(rep.excluded)}")
    for line in rep.differences:
        console.print(f"differs: {line}", soft_wrap=True)
    if not rep.matches:
        raise typer.Exit(code=1)


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the effective config (file + overlay + WB_* variables), secrets masked, and its hash."""
    import yaml

    try:
        cfg = load_config()
    except WorkbenchError as exc:
        _fail(exc)
    data = cfg.dump()
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False))
    typer.echo(f"# config_hash: {config_hash(cfg)}")


@config_app.command("hash")
def config_hash_cmd() -> None:
    """Print the config hash that tags every run."""
    try:
        typer.echo(config_hash(load_config()))
    except WorkbenchError as exc:
        _fail(exc)


# --------------------------------------------------------------------------------------------
# wb store: verify every partition's checksum, repair bad ones from their recorded source.

store_app = typer.Typer(
    help="Bar store integrity: verify checksums, repair bad partitions.", no_args_is_help=True
)
app.add_typer(store_app, name="store")


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False)


_STORE = Annotated[str | None, typer.Option("--store", help="Store folder (default: store.root).")]


def _open_store(store: str | None) -> tuple:
    from workbench.data.store import BarStore
    from workbench.errors import StoreError

    cfg = load_config()
    st = BarStore(store, cfg.store.partition) if store else BarStore.from_config(cfg)
    if not st.root.is_dir():
        raise StoreError(f"no bar store at {st.root}. Fix: pass --store with a store folder.")
    return cfg, st


@store_app.command("verify")
def store_verify(
    store: _STORE = None,
    adopt: Annotated[
        bool,
        typer.Option(help="Record checksums of partitions written before checksums existed."),
    ] = False,
) -> None:
    """Check every partition's checksum (and the ingest ledger); exit 1 naming each bad file.

    Example: wb store verify --store data/store
    """
    from rich.markup import escape

    from workbench.data.ledger import check_ledger

    try:
        _, st = _open_store(store)
        rep = st.verify(adopt=adopt)
        ledger = check_ledger(st)
    except WorkbenchError as exc:
        _fail_data(exc)
    for p in rep.problems:
        _say(f"[bold red]BAD[/] {escape(p.message)}")
    if ledger is not None:
        _say(f"[bold red]BAD[/] {escape(str(ledger))}")
    for path in rep.adopted:
        _say(f"adopted {path} (checksum recorded after a structural check)")
    for path in rep.unverified:
        _say(
            f"unverified {path}: written before checksums (checked structurally only). "
            "Fix: `wb store verify --adopt` records its checksum."
        )
    n_bad = len(rep.problems) + (ledger is not None)
    _say(
        f"{rep.checked} partition(s) checked in {st.root}: {n_bad} bad, "
        f"{len(rep.unverified)} without checksum"
    )
    if n_bad:
        _say(f"Fix: `wb store repair --store {st.root}` re-fetches them.")
        raise typer.Exit(code=1)


@store_app.command("repair")
def store_repair(store: _STORE = None) -> None:
    """Re-fetch bad or missing partitions from their recorded source, verify, report; rebuild a
    corrupt ingest ledger from the store. Exit 1 if anything is still bad.

    Example: wb store repair --store data/store
    """
    from rich.markup import escape

    from workbench.data.repair import repair_store

    try:
        cfg, st = _open_store(store)
        rep = repair_store(st, cfg)
        left = st.verify()
    except WorkbenchError as exc:
        _fail_data(exc)
    if rep.ledger != "ok":
        _say(f"ingest ledger: {escape(rep.ledger)}")
    for i in rep.items:
        _say(f"{i.status} {i.path} ({i.check}): {escape(i.detail)}")
    for p in left.problems:
        _say(f"[bold red]still BAD[/] {escape(p.message)}")
    _say(
        f"{sum(i.status != 'failed' for i in rep.items)} of {len(rep.items)} bad partition file(s) fixed; "
        f"store {'verifies' if left.ok else 'still has bad files'}"
    )
    if not rep.ok or not left.ok:
        raise typer.Exit(code=1)


if __name__ == "__main__":  # pragma: no cover
    app()

# --------------------------------------------------------------------------------------------
# wb session: run a trading session (replay or live, sim or Alpaca), show its state, flatten it.
# SIGTERM/SIGINT stop `run` gracefully (exit 0); exit 3 when reconcile halts it. Live trading
# (real money) needs both --live and WB_LIVE_TRADING=yes; paper is the default.

SESSION_HALTED = 3

session_app = typer.Typer(
    help="Trading sessions: run (replay or live, sim or Alpaca), status, flatten.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_err = Console(stderr=True, soft_wrap=True)

_LEDGER = Annotated[
    str | None, typer.Option("--ledger", help="Order ledger URL (default: execution.ledger_url).")
]


@contextmanager
def _session_errors() -> Iterator[None]:
    from workbench.execution.engine import SessionHalted

    try:
        yield
    except SessionHalted as exc:
        _err.print(f"[red]halted:[/red] {exc}")
        raise typer.Exit(SESSION_HALTED) from None
    except WorkbenchError as exc:
        _err.print(f"[red]error:[/red] {exc}")
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
    allow: Annotated[list[str] | None, typer.Option("--allow", help="Trade the model anyway when it is: ungated | expired | drifted (repeatable).")] = None,
    review: Annotated[bool, typer.Option(help="After the session: its divergence report (MLflow) and the slippage model refit.")] = True,
) -> None:  # fmt: skip
    """Trade one session; a restart with the same arguments reconciles and resumes."""
    from workbench.stages.session import review_and_log, run_trade_session

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with _session_errors():
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
            echo=(lambda m: _err.print(m)) if as_json else console.print, allow_model=tuple(allow or ()),
        )  # fmt: skip
        if review:
            review_and_log(cfg, res, strategy=strategy, echo=(lambda m: _err.print(m)) if as_json else console.print)
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


def _session_table(df: pl.DataFrame, title: str) -> Table:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c)
    for row in df.iter_rows():
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


@session_app.command("status")
def status_cmd(
    ledger: _LEDGER = None,
    session: Annotated[str | None, typer.Option(help="Session id (default: the latest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Orders, fills, positions, PnL and the kill switch of a session. Exit 3 when halted."""
    from workbench.stages.session import session_status

    with _session_errors():
        cfg = load_config()
        st = session_status(cfg, ledger, session)
        st.update(_model_age(cfg, ledger, st))
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
            if st.get("model_age_days") is not None:
                console.print(
                    f"model {st['model']}: trained to {st['model_train_end']}, "
                    f"{st['model_age_days']} days old at the session (max {st['model_max_age_days']})"
                    + (" [red]EXPIRED[/red]" if st["model_expired"] else "")
                )
            for name in ("orders", "fills"):
                if st[name]:
                    console.print(_session_table(pl.DataFrame(st[name]), name))
        if st.get("status") == "halted" or st.get("kill_switch") == "halted":
            raise typer.Exit(SESSION_HALTED)


def _model_age(cfg, ledger: str | None, st: dict) -> dict:
    """The traded model's age at the session's last bar (``wb session status``)."""
    from workbench.execution.ledger import OrderLedger
    from workbench.models.lifecycle import model_age_status
    from workbench.stages.session import project_url

    if not st.get("session"):
        return {}
    led = OrderLedger(project_url(cfg, ledger or cfg.execution.ledger_url))
    try:
        rec = led.session(st["session"])
    finally:
        led.close()
    model = str((rec.params if rec else {}).get("model", ""))
    at = datetime.fromisoformat(st["last_bar"]) if st.get("last_bar") else datetime.now(UTC)
    return {"model": model, **model_age_status(cfg, model, at)} if model else {}


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

    with _session_errors():
        sent = flatten_session(
            load_config(), strategy=strategy, broker=broker, mode=mode, session_date=date or "",
            ledger_url=ledger or "", live=live, echo=console.print,
        )  # fmt: skip
        console.print(f"sent {len(sent)} closing order(s): {sent}")


app.add_typer(session_app, name="session")
