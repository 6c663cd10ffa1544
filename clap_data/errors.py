"""User-facing failures and the exit statuses that tell a script what happened."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of every clap-data command (documented in the README)."""

    OK = 0  # everything succeeded
    FAILED = 1  # nothing usable was written (bad metadata, every episode rejected, refused to overwrite…)
    USAGE = 2  # bad command-line arguments
    QUARANTINED = 3  # the dataset was written, but some episodes were quarantined


class ClapDataError(Exception):
    """A problem the user can act on. The CLI prints the message as one sentence, no traceback."""
