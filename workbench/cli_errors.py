"""The ``wb`` command's last line of defence: no Python traceback reaches the user.

An expected error (a :class:`~workbench.errors.WorkbenchError`, a missing or unreadable file, an
MLflow lookup that found nothing) prints one ``error:`` line block with its message (which names
the field or file, the bad value and the fix) and exits 2. Anything else is a bug: it prints a
one-line summary and the path of a log file holding the traceback, and exits 1. Ctrl-C exits 130.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from workbench.errors import WorkbenchError

EXPECTED_EXIT = 2
UNEXPECTED_EXIT = 1
INTERRUPTED_EXIT = 130
_EXPECTED_BY_NAME = ("MlflowException",)  # mlflow is imported lazily; matched by class name


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def log_dir() -> Path:
    """Where tracebacks of unexpected errors go: ``<project>/runs/logs``, else the temp folder."""
    from workbench.config import find_project_root

    for d in (
        find_project_root() / "runs" / "logs",
        Path(tempfile.gettempdir()) / "workbench-logs",
    ):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if d.is_dir():
            return d
    return Path(tempfile.gettempdir())


def write_log(exc: BaseException, argv: list[str]) -> Path:
    """Write the command line and the traceback of ``exc`` to a new log file; return its path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = log_dir() / f"wb-{stamp}.log"
    text = "".join(traceback.format_exception(exc))
    path.write_text(f"wb {' '.join(argv)}\n{stamp}\n\n{text}")
    return path


def is_expected(exc: BaseException) -> bool:
    """An error whose message is the whole story: ours, a file problem, an MLflow lookup."""
    if isinstance(exc, WorkbenchError | OSError):
        return True
    return any(c.__name__ in _EXPECTED_BY_NAME for c in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def report(exc: BaseException, argv: list[str]) -> int:
    """Print the error the way the CLI shows it; return the exit code."""
    err = _stderr()
    if isinstance(exc, KeyboardInterrupt):
        err.print("[red]interrupted[/red]")
        return INTERRUPTED_EXIT
    if is_expected(exc):
        msg = str(exc).strip() or type(exc).__name__
        if isinstance(exc, OSError) and not isinstance(exc, WorkbenchError):
            msg += ". Fix: check the path and its permissions."
        elif "API request to" in msg:  # MLflow could not reach its tracking server
            msg += (
                "\nFix: check that the tracking server (MLFLOW_TRACKING_URI) is up and reachable; "
                "waiting longer will not help."
            )
        err.print(f"[bold red]error:[/] {escape(msg)}")
        return EXPECTED_EXIT
    try:
        where = f"the traceback is in {write_log(exc, argv)}"
    except OSError as log_exc:  # no writable folder anywhere: show the traceback after all
        where = f"could not write a log ({log_exc}); traceback:\n" + "".join(
            traceback.format_exception(exc)
        )
    err.print(
        f"[bold red]unexpected error[/] {type(exc).__name__}: {escape(_first_line(exc))} "
        f"(a bug in the workbench, not in your input); {escape(where)}"
    )
    return UNEXPECTED_EXIT


class CleanErrors(TyperGroup):
    """A Typer group whose invocation turns every uncaught exception into :func:`report`."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(report(exc, sys.argv[1:])) from None
