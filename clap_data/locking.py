"""One writer per output: an advisory ``flock`` held for the whole run, so a second run on the same
output refuses at once instead of interleaving writes with the first."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clap_data.errors import ClapDataError


@contextmanager
def exclusive_lock(lock_file: Path, target: Path) -> Iterator[None]:
    """Hold ``lock_file`` (created if needed) for the block; raise if another process holds it.
    The holder's pid is written into the file so the refusal can name it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_file, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ClapDataError(
            f"another clap-data run ({holder}) is writing {target}; wait for it to finish or choose another output"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()
