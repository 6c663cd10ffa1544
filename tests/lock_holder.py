"""Hold a dataset's lock from another process, as a concurrent clap-data command would (flock
conflicts are between processes; within one process a nested lock is a no-op by design)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLDER = """
import sys
from pathlib import Path
from clap_data.locking import dataset_lock
with dataset_lock(Path(sys.argv[1]), exclusive=sys.argv[2] == "exclusive", purpose=sys.argv[3]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def lock_held_elsewhere(dataset: Path, exclusive: bool, purpose: str = "tokenize act-vae") -> Iterator[int]:
    """Yield the pid of a process holding ``dataset``'s lock until the block ends."""
    mode = "exclusive" if exclusive else "shared"
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(dataset), mode, purpose],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process.pid
    finally:
        process.stdin.close()
        process.wait(timeout=30)
