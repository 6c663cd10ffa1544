"""`--address` joins an existing Ray cluster (started here with `ray start`, as a user would)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clap_data.errors import ExitCode

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ingest_joins_a_running_cluster(astribot_src, tmp_path):
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
    # Ray 2.60 enables token auth by default; this throwaway local cluster opts out for client and head.
    env = {**os.environ, "RAY_DATA_LOG_LEVEL": "ERROR", "RAY_AUTH_MODE": "disabled"}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"], check=True, capture_output=True, env=env)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "clap_data.cli", "ingest", "astribot", "--src", str(astribot_src),
             "--out", str(tmp_path / "out"), "--address", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        output = process.communicate(timeout=300)[0]
        assert process.returncode == ExitCode.OK, output
        assert "3 written, 0 quarantined" in output
        # The command ran as a driver of that cluster, not of a Ray of its own.
        assert list(Path(temp_dir).glob(f"session_latest/logs/python-core-driver-*_{process.pid}.log"))
        # The cluster outlives the command: a joined cluster is not shut down by clap-data.
        status = subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], capture_output=True, text=True, env=env)
        assert status.returncode == 0, status.stderr
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)
