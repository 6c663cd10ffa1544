"""What every ``clap-data`` command shares: the typer app, the consoles, and the rule that errors
reach the user as one sentence on stderr and an exit status (see :class:`ExitCode`); set
``CLAP_DATA_DEBUG=1`` to see the traceback of an unexpected failure."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from clap_data.errors import ClapDataError, ExitCode

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Turn robot datasets and human video into one tokenized LeRobot v3 corpus (CLAP).",
)

stdout = Console()
stderr = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Turn expected failures into one sentence and exit status 1; never show a traceback
    unless CLAP_DATA_DEBUG is set."""

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
            stderr.print(
                f"[red]error:[/red] unexpected failure ({type(exc).__name__}: {exc}); "
                "set CLAP_DATA_DEBUG=1 to see the traceback",
                highlight=False,
            )
            raise typer.Exit(ExitCode.FAILED) from None

    return wrapper  # type: ignore[return-value]


