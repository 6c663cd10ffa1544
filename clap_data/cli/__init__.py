"""The ``clap-data`` command line: parses arguments, calls a pipeline, prints a summary.

One module per family of commands; importing them registers their commands on the shared app.
"""

from clap_data.cli import act_vae_commands, dataset_commands  # noqa: F401  (register the commands)
from clap_data.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
