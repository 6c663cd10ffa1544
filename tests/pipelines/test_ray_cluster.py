"""`--address` joins an existing Ray cluster (started here with `ray start`, as a user would)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clap_data.errors import ExitCode

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A throwaway head node in its own process group, so stopping it touches no other Ray
    (``ray stop`` would also kill the test session's embedded Ray)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
    # Ray 2.60 enables token auth by default; this local cluster opts out for head and client.
    env = {**os.environ, "RAY_DATA_LOG_LEVEL": "ERROR", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, env=env).returncode != 0:
        assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not come up"
        time.sleep(1)
    yield address, Path(temp_dir), env
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)


@pytest.mark.slow
def test_ingest_joins_a_running_cluster(astribot_src, tmp_path, ray_head):
    address, temp_dir, env = ray_head
    process = subprocess.Popen(
        [sys.executable, "-m", "clap_data.cli", "ingest", "astribot", "--src", str(astribot_src),
         "--out", str(tmp_path / "out"), "--address", address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    output = process.communicate(timeout=300)[0]
    assert process.returncode == ExitCode.OK, output
    assert "3 written, 0 quarantined" in output
    # The command ran as a driver of that cluster, not of a Ray of its own.
    assert list(temp_dir.glob(f"session_latest/logs/python-core-driver-*_{process.pid}.log"))
    # A joined cluster outlives the command: clap-data shuts down only a Ray it started.
    assert subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, env=env).returncode == 0
