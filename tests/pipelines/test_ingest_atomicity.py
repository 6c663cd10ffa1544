"""Nothing half-written: kill -9 at any moment then rerun gives the same bytes as an uninterrupted
run; one writer per output; a finished dataset is replaced only when the new one is complete."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clap_data.errors import ClapDataError, ExitCode
from clap_data.factories.astribot import write_astribot_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.astribot import AstribotSource
from clap_data.sources.base import EpisodeRejected
from clap_data.staging import StagingArea
from tests.lock_holder import lock_held_elsewhere


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def cli(src: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "clap_data.cli", "ingest", "astribot", "--src", str(src), "--out", str(out), "--workers", "2"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_astribot_dataset(tmp_path_factory.mktemp("resume") / "src", episode_lengths=[36] * 24, video_size=(32, 32), reuse_videos=True)


@pytest.fixture(scope="module")
def uninterrupted(source, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("whole") / "out"
    process = cli(source, out)
    assert process.wait(timeout=300) == ExitCode.OK, process.stdout.read().decode()
    return tree_digest(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_staged", [1, 12])
def test_kill_9_during_conversion_then_rerun_gives_identical_bytes(source, uninterrupted, tmp_path, kill_after_staged):
    out = tmp_path / "out"
    staged = tmp_path / ".out.clap-staging" / "episodes"
    process = cli(source, out)
    reached = wait_for(lambda: staged.is_dir() and len([p for p in staged.iterdir() if not p.name.startswith(".")]) >= kill_after_staged, 240)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reached, "the run never staged enough episodes to be interrupted"
    assert not out.exists(), "an interrupted run must not leave a dataset at --out"
    rerun = cli(source, out)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == ExitCode.OK, output
    assert "resumed from an earlier run" in output
    assert tree_digest(out) == uninterrupted
    assert not (tmp_path / ".out.clap-staging").exists()


def _crash_after_parking_the_old_dataset(monkeypatch, out: Path):
    """Simulate a crash between the two renames that publish over an existing dataset."""
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)
        if Path(src) == out.absolute():
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.usefixtures("ray_local")
def test_crash_while_replacing_a_dataset_then_rerun_completes(source, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = ingest(AstribotSource(source), IngestRequest(out=out))
    assert first.exit_code == ExitCode.OK
    with monkeypatch.context() as patch:
        _crash_after_parking_the_old_dataset(patch, out)
        with pytest.raises(KeyboardInterrupt):
            ingest(AstribotSource(source), IngestRequest(out=out, overwrite=True))
    assert not out.exists()  # the old dataset is parked, the new one not yet moved in
    again = ingest(AstribotSource(source), IngestRequest(out=out, overwrite=True))
    assert again.already_complete and again.exit_code == ExitCode.OK
    assert tree_digest(out) == uninterrupted
    assert not (tmp_path / ".out.clap-staging").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_second_concurrent_run_on_the_same_output_refuses(source, tmp_path):
    out = tmp_path / "out"
    with lock_held_elsewhere(out, exclusive=True, purpose="ingest") as pid:
        with pytest.raises(ClapDataError, match=rf"{out} is being written by pid {pid}: ingest: .*add --wait"):
            ingest(AstribotSource(source), IngestRequest(out=out))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.clap-lock"]  # a refused run leaves only the lock


@pytest.mark.usefixtures("ray_local")
def test_interrupted_run_with_other_options_is_not_silently_discarded(source, tmp_path):
    out = tmp_path / "out"
    staging = StagingArea(out.absolute())
    staging.root.mkdir(parents=True)
    (staging.root / "run.json").write_text('{"clap_data": "0.0.1"}')
    with pytest.raises(ClapDataError, match="interrupted run with other options"):
        ingest(AstribotSource(source), IngestRequest(out=out))
    report = ingest(AstribotSource(source), IngestRequest(out=out, overwrite=True))
    assert report.exit_code == ExitCode.OK and report.resumed == 0


@pytest.mark.usefixtures("ray_local")
def test_overwrite_never_deletes_a_folder_that_is_not_a_dataset(source, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ClapDataError, match="not a clap-data dataset"):
        ingest(AstribotSource(source), IngestRequest(out=out, overwrite=True))
    assert (out / "notes.txt").read_text() == "keep me"


class _EveryEpisodeMissing(AstribotSource):
    """A source whose every episode is rejected (defined at module level: Ray workers import it)."""

    def read_episode(self, ref):  # noqa: ANN001, ANN201
        raise EpisodeRejected("missing_file", ref.path, f"{ref.path} is missing")


@pytest.mark.usefixtures("ray_local")
def test_a_run_that_fails_or_writes_nothing_leaves_only_the_lock(source, tmp_path, monkeypatch):
    """Nothing to resume, nothing left beside --out: a source that lists no episodes, and a run
    whose every episode is quarantined."""
    out = tmp_path / "out"
    monkeypatch.setattr(AstribotSource, "list_episodes", lambda self: [])
    with pytest.raises(ClapDataError, match="lists no episodes"):
        ingest(AstribotSource(source), IngestRequest(out=out))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.clap-lock"]
    monkeypatch.undo()
    report = ingest(_EveryEpisodeMissing(source), IngestRequest(out=out))
    assert report.exit_code == ExitCode.FAILED and len(report.quarantine) == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.clap-lock"]
