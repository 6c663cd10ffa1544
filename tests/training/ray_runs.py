"""What the kill -9 tests of the Ray trainers share (``train ntp``, ``train rf``): a run killed mid-way, and the
wait until its workers have let go of the checkpoint folder."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from clap_data.training.train_common import WRITER_LOCK

# Steps of the uninterrupted and the killed runs: the kill comes after the first save (step 2), and on a loaded
# 2-core machine the test's own process may wait a while for a core, so the run must be long enough to still be
# going (6 steps were not: a run finished before its kill). Tiny models: a step costs well under a second.
RUN_STEPS = 12


def writer_free(out: Path) -> bool:
    """Nobody holds ``out``'s writer lock (rank 0 of a run holds it while it trains)."""
    with open(out / WRITER_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def kill_mid_run(command: list[str], out: Path) -> int:
    """Start ``command`` (a trainer's command line writing ``out``), SIGKILL it once its first save is exported,
    wait until its Ray workers have seen it gone and let go; the step of the training state it left."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "RAY_DATA_LOG_LEVEL": "ERROR"})
    deadline = time.monotonic() + 240
    while not (out / "training.json").is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 120  # its workers see the command gone before their next step, then let go
    while not writer_free(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    return int(torch.load(out / "training_state.pt", weights_only=True)["extra"]["step"])
