"""One lock per dataset for every command: writers (ingest, --overwrite, tokenize, normstats) exclude
each other and readers (train, eval, verify); the refusal names the holder; --wait waits; a column
update refuses a dataset replaced while it was starting; ingest --overwrite drops the old dataset's
interrupted column update. The race that used to corrupt a dataset (ingest --overwrite while
tokenize runs) is run for real in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lerobot.datasets import LeRobotDataset
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.column_update import ColumnUpdate
from clap_data.lerobot_v3.verify import verify_dataset
from clap_data.pipelines import tokenize
from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset
from clap_data.progress import SilentReporter
from tests.lock_holder import lock_held_elsewhere
from tests.pipelines.test_tokenize import expected_tokens

runner = CliRunner()


@pytest.fixture
def dataset(unified_astribot, tmp_path) -> Path:
    copy = tmp_path / "astribot"
    shutil.copytree(unified_astribot, copy)
    return copy


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_writer_refuses_while_another_writes_naming_it(dataset, astribot_src, tiny_ckpt):
    before = tree_bytes(dataset)
    with lock_held_elsewhere(dataset, exclusive=True, purpose="ingest") as pid:
        result = runner.invoke(app, ["tokenize", "act-vae", str(dataset), "--ckpt", str(tiny_ckpt)])
        assert result.exit_code == 1
        assert f"{dataset} is being written by pid {pid}: ingest:" in result.output and "--wait" in result.output
    with lock_held_elsewhere(dataset, exclusive=True, purpose="tokenize act-vae") as pid:
        result = runner.invoke(app, ["ingest", "astribot", "--src", str(astribot_src), "--out", str(dataset), "--overwrite"])
        assert result.exit_code == 1 and f"is being written by pid {pid}: tokenize act-vae:" in result.output
    assert tree_bytes(dataset) == before
    assert sorted(p.name for p in dataset.parent.iterdir()) == [".astribot.clap-lock", "astribot"]  # nothing else left


def test_readers_and_writers_exclude_each_other(dataset, tiny_ckpt, tmp_path):
    with lock_held_elsewhere(dataset, exclusive=False, purpose="train act-vae") as pid:
        result = runner.invoke(app, ["tokenize", "act-vae", str(dataset), "--ckpt", str(tiny_ckpt)])
        assert result.exit_code == 1
        assert f"is being read by pid {pid}: train act-vae:" in result.output
        assert "tokenize act-vae would change it under them" in result.output
        assert runner.invoke(app, ["verify", str(dataset)]).exit_code == 0  # readers share
    with lock_held_elsewhere(dataset, exclusive=True, purpose="tokenize act-vae") as pid:
        for args in (["verify", str(dataset)],
                     ["train", "act-vae", "--data", str(dataset), "--out", str(tmp_path / "ckpt"), "--steps", "1"],
                     ["eval", "act-vae", str(dataset), "--ckpt", str(tiny_ckpt)]):
            result = runner.invoke(app, args)
            assert result.exit_code == 1 and f"is being written by pid {pid}: tokenize act-vae" in result.output, args


def test_wait_waits_for_the_holder(dataset, tiny_ckpt, ray_local):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom clap_data.locking import dataset_lock\n"
         "with dataset_lock(sys.argv[1], exclusive=True, purpose='ingest'):\n    print('held', flush=True)\n    time.sleep(2)",
         str(dataset)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    messages: list[str] = []

    class Recorder(SilentReporter):
        def phase(self, text: str) -> None:
            messages.append(text)

    report = tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt, wait=True), Recorder())
    holder.wait(timeout=30)
    assert time.monotonic() - started >= 1.0 and report.frames == 137
    assert messages[0].startswith(f"waiting: {dataset} is being written by pid {holder.pid}: ingest")


def test_a_dataset_replaced_while_tokenize_was_starting_is_not_touched(dataset, unified_droid, tiny_ckpt, monkeypatch, ray_local):
    real_load = tokenize.load_norm_stats

    def replace_meanwhile(root, which):  # another command publishes a new dataset under the same name
        stats = real_load(root, which)
        shutil.rmtree(dataset)
        shutil.copytree(unified_droid, dataset)
        return stats

    monkeypatch.setattr(tokenize, "load_norm_stats", replace_meanwhile)
    with pytest.raises(ClapDataError, match="changed while tokenize act-vae was starting .* nothing was written"):
        tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt))
    assert "action_tokens" not in json.loads((dataset / "meta/info.json").read_text())["features"]
    assert verify_dataset(dataset).ok


def test_overwrite_drops_the_interrupted_column_update_of_the_old_dataset(dataset, astribot_src, tiny_ckpt, ray_local):
    update = ColumnUpdate(dataset)
    update.prepare({"identity": "an interrupted tokenize of the old frames"}, [])
    (update.new / "data/chunk-000").mkdir(parents=True)
    (update.new / "data/chunk-000/file-000.parquet").write_bytes(b"tokens of the old frames")
    result = runner.invoke(app, ["ingest", "astribot", "--src", str(astribot_src), "--out", str(dataset), "--overwrite",
                                 "--cameras", "wrist_left"])
    assert result.exit_code == 0, result.output
    assert not update.staging.exists()
    assert verify_dataset(dataset).ok


@pytest.mark.slow
def test_ingest_overwrite_and_tokenize_racing_leave_a_consistent_dataset(dataset, astribot_src, tiny_ckpt):
    """The reported corruption: both exited 0 and left new videos under the old info.json with tokens
    of the old frames. Now one waits for the other, and whichever order they run in, the result is
    a dataset lerobot loads, that verify passes, and whose tokens (if any) are those of its frames."""
    env = {**os.environ, "RAY_DATA_LOG_LEVEL": "ERROR"}
    cli = [sys.executable, "-m", "clap_data.cli"]
    commands = [
        cli + ["tokenize", "act-vae", str(dataset), "--ckpt", str(tiny_ckpt), "--workers", "1", "--wait"],
        cli + ["ingest", "astribot", "--src", str(astribot_src), "--out", str(dataset), "--overwrite",
               "--cameras", "wrist_left", "--workers", "1", "--wait"],
    ]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for c in commands]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert verify_dataset(dataset, full=True).ok
    info = json.loads((dataset / "meta/info.json").read_text())
    cameras = sorted(k for k, f in info["features"].items() if f["dtype"] == "video")
    assert cameras == ["observation.images.wrist_left"] == sorted(p.name for p in (dataset / "videos").iterdir())
    loaded = LeRobotDataset("local/raced", root=dataset, video_backend="pyav")
    assert loaded[len(loaded) - 1]["observation.images.wrist_left"].shape[0] == 3
    if "action_tokens" in info["features"]:  # tokenize ran second, on the new frames
        tokens, _ = expected_tokens(dataset, tiny_ckpt)
        assert [loaded.hf_dataset[i]["action_tokens"].tolist() for i in range(len(loaded))] == tokens.tolist()
