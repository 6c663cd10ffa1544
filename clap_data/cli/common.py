"""What every ``clap-data`` command shares: the typer app, the consoles, and the rule that errors
reach the user as one sentence on stderr and an exit status (see :class:`ExitCode`); the traceback
of an unexpected failure goes to a log file the sentence names (``CLAP_DATA_DEBUG=1`` prints it)."""

from __future__ import annotations

import functools
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clap_data import __version__
from clap_data.errors import ClapDataError, ExitCode
from clap_data.urls import is_url

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Turn robot datasets and human video into one tokenized LeRobot v3 corpus (CLAP).",
)

stdout = Console()
stderr = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def summary_grid() -> Table:
    """The two-column grid of a command's closing summary: a bold label, then what it says."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    return table


def split_list(value: str | None) -> list[str] | None:
    """A comma-separated option (``--cameras head,wrist_left``) as its names; None when the option is absent."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise typer.BadParameter("give at least one name, comma-separated")
    return items


def traceback_log_dir() -> Path:
    """Per-user, as the XDG base directory spec places state: ``$XDG_STATE_HOME/clap-data/logs``
    (``~/.local/state/clap-data/logs`` when unset). No output folder is known to every command."""
    state = Path(os.environ.get("XDG_STATE_HOME", ""))
    return (state if state.is_absolute() else Path.home() / ".local" / "state") / "clap-data" / "logs"


def _log_traceback() -> Path | None:
    """Write the traceback of the exception being handled to a new log file, so that a bug report
    needs no rerun with CLAP_DATA_DEBUG=1; None if it cannot be written (the error is shown all the same)."""
    log = traceback_log_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"clap-data {__version__}: {shlex.join(sys.argv)}\n{traceback.format_exc()}")
    except OSError:
        return None
    return log


def user_errors(command: F) -> F:
    """Turn expected failures into one sentence and exit status 1; never show a traceback
    unless CLAP_DATA_DEBUG is set (an unexpected failure's goes to a log file the sentence names)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # usage errors (BadParameter) exit 2
            raise
        except ClapDataError as exc:
            stderr.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(ExitCode.FAILED) from None
        except KeyboardInterrupt:
            stderr.print("interrupted; rerun the same command to resume")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("CLAP_DATA_DEBUG"):
                raise
            log = _log_traceback()
            failure = f"unexpected failure ({type(exc).__name__}: {exc})"
            hint = "set CLAP_DATA_DEBUG=1 to see the traceback"
            if log is not None:
                hint = f"the traceback is in {log} (CLAP_DATA_DEBUG=1 prints it)"
            # escaped: the exception's text is not markup; soft_wrap: the path stays one piece to copy
            stderr.print(f"[red]error:[/red] {escape(f'{failure}; {hint}')}", highlight=False, soft_wrap=True)
            raise typer.Exit(ExitCode.FAILED) from None

    return wrapper  # type: ignore[return-value]


def training_run_line(report: Any, on: str) -> str:
    """The summary's ``train`` line every trainer's command prints (``report``: a train report with ``ckpt``,
    ``steps``, ``seconds``, ``already_complete`` and ``resumed_from``; ``on``: where it ran)."""
    if report.already_complete:
        return (f"{report.ckpt} is already trained to {report.steps} steps; nothing to do "
                "(ask for more --steps to continue)")
    resumed = f", resumed from step {report.resumed_from}" if report.resumed_from else ""
    return f"{report.steps} steps on {on} in {report.seconds:.1f} s{resumed}"



def dataset_arguments(items: list[str]) -> list[str | Path]:
    """Dataset arguments as given: a folder, or a URL (``hf://datasets/…``) kept as text — a ``Path`` would fold
    its ``//``."""
    return [item if is_url(item) else Path(item) for item in items]
