"""Start or join Ray for one command: embedded local Ray by default, ``--address`` for a cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from clap_data.errors import ClapDataError

# The embedded object store only carries episode references and small results; a small store
# keeps the footprint of a laptop run low.
_EMBEDDED_OBJECT_STORE_BYTES = 512 * 1024 * 1024


@contextmanager
def ray_session(address: str | None, workers: int | None) -> Iterator[None]:
    """Make Ray available; shut it down afterwards only if this call started it."""
    # Our progress bar and summary replace Ray Data's own console lines; its log file stays.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    import ray

    started = False
    if not ray.is_initialized():
        options = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(
                    num_cpus=workers or os.cpu_count() or 1,
                    object_store_memory=_EMBEDDED_OBJECT_STORE_BYTES,
                    **options,
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise ClapDataError(f"could not start or join {where}: {exc}") from None
        started = True
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        if started:
            ray.shutdown()
