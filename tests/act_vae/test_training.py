"""`clap-data train act-vae`: the checkpoint it writes, exact resume, refusals, progress."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import TRAINING_META_NAME, load_act_vae
from clap_data.act_vae.training import TrainOptions, TrainReport, train_act_vae
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.models import checkpoint_sha256
from tests.conftest import HOLDOUT, TINY

runner = CliRunner()
TINY_ARGS = ["--preset", "small", "--num-queries", "4", "--codebook-size", "16", "--batch-size", "16", "--holdout", "tail", "--holdout-fraction", "0.25", "--device", "cpu"]


def train(dataset: Path, out: Path, steps: int, save_every: int = 500) -> object:
    return train_act_vae([dataset], out, config=TINY, options=TrainOptions(steps=steps, batch_size=16, holdout=HOLDOUT, device="cpu", save_every=save_every))


def test_cli_writes_a_loadable_checkpoint_with_its_sha256(unified_astribot, tmp_path):
    out = tmp_path / "ckpt"
    result = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(out), "--steps", "30", *TINY_ARGS, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["steps"] == 30 and report["device"] == "cpu" and report["resumed_from"] == 0
    assert report["sha256"] == checkpoint_sha256(out)
    meta = json.loads((out / "training.json").read_text())
    assert meta["sha256"] == report["sha256"] and meta["step"] == 30
    assert meta["run"]["config"]["num_queries"] == 4 and meta["run"]["config"]["codebook_size"] == 16
    assert meta["stats_ids"] == {str(unified_astribot): "openclap:S1-stationary"}
    model, sha = load_act_vae(out)
    assert sha == report["sha256"] and model.config.num_queries == 4 and not model.training
    assert 0 < report["last"]["code_usage"] <= 1 and report["last"]["recon_mse"] > 0
    # the human-readable form shows progress and a summary
    again = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(out), "--steps", "30", *TINY_ARGS])
    assert again.exit_code == 0 and "already trained to 30 steps; nothing to do" in again.output


def test_resume_continues_exactly_where_it_stopped(unified_astribot, tmp_path):
    straight = train(unified_astribot, tmp_path / "straight", steps=8)
    partial = train(unified_astribot, tmp_path / "resumed", steps=4)
    assert partial.steps == 4
    resumed = train(unified_astribot, tmp_path / "resumed", steps=8)
    assert resumed.resumed_from == 4 and resumed.steps == 8
    # optimizer, RNG and weights all came back: the same bytes as an uninterrupted run
    assert resumed.sha256 == straight.sha256
    a, _ = load_act_vae(tmp_path / "straight")
    b, _ = load_act_vae(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


# Checks for dead codes at 25, 50 and 75 fall after every resume point below (20, 60), so the code usage counted
# since the last check must survive a resume; K 64 leaves codes that steps 1-20 hit and 21-25 do not.
RESEED = dataclasses.replace(TINY, codebook_size=64, dead_code_check_every=25)
# The child trains to 80 saving every 20 and stalls at step 30 (after the step-20 save, before the step-40 one)
# until the test kills it with SIGKILL.
KILLED_RUN = """
import json, sys, time
from clap_data.splits import Holdout
from clap_data.act_vae.training import TrainOptions, train_act_vae
from clap_data.models import ActVAEConfig
args = json.loads(sys.argv[1])

def stall(metrics, total):
    if metrics.step == 30:
        print("stalled", flush=True)
        time.sleep(600)

options = TrainOptions(steps=80, batch_size=16, holdout=Holdout(**args["holdout"]), device="cpu", save_every=20, log_every=10)
train_act_vae([args["data"]], args["out"], config=ActVAEConfig(**args["config"]), options=options, on_progress=stall)
"""


def reseed_run(dataset: Path, out: Path, steps: int, save_every: int = 500) -> TrainReport:
    options = TrainOptions(steps=steps, batch_size=16, holdout=HOLDOUT, device="cpu", save_every=save_every, log_every=50)
    return train_act_vae([dataset], out, config=RESEED, options=options)


def assert_same_weights(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_resume_and_kill_9_cross_a_dead_code_reseeding_bit_identically(unified_astribot, tmp_path):
    straight = reseed_run(unified_astribot, tmp_path / "straight", steps=80)
    assert straight.reseeded_codes > 0
    # (b) 20, then 60, then 80 steps: reseeds at 25, 50 and 75 each come after a resume point
    for steps in (20, 60):
        assert reseed_run(unified_astribot, tmp_path / "resumed", steps=steps).steps == steps
    resumed = reseed_run(unified_astribot, tmp_path / "resumed", steps=80)
    assert resumed.resumed_from == 60 and resumed.reseeded_codes > 0
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    assert resumed.sha256 == straight.sha256
    # the last log window (51-80) spans the resume at 60: its accumulators came back too
    for name in ("loss", "recon_mse", "code_usage"):
        assert getattr(resumed.last, name) == getattr(straight.last, name), name
    # (c) kill -9 after the step-20 save, then rerun the same command
    killed = tmp_path / "killed"
    args = {"data": str(unified_astribot), "out": str(killed), "config": RESEED.to_dict(), "holdout": HOLDOUT.to_dict()}
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "stalled"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert json.loads((killed / TRAINING_META_NAME).read_text())["step"] == 20
    rerun = reseed_run(unified_astribot, killed, steps=80, save_every=20)
    assert rerun.resumed_from == 20 and rerun.steps == 80
    assert_same_weights(tmp_path / "straight", killed)


def test_a_crash_between_the_state_and_the_exported_weights_is_completed_by_the_rerun(unified_astribot, tmp_path):
    out, stale = tmp_path / "ckpt", tmp_path / "step-20"
    train(unified_astribot, out, steps=20, save_every=20)
    shutil.copytree(out, stale, ignore=shutil.ignore_patterns("training_state.pt", ".*"))
    done = train(unified_astribot, out, steps=40, save_every=20)
    # as if killed after training_state.pt of step 40 was replaced, before the weights and training.json were
    for path in stale.iterdir():
        shutil.copy2(path, out / path.name)
    assert checkpoint_sha256(out) != done.sha256
    again = train(unified_astribot, out, steps=40)
    assert again.already_complete and again.steps == 40 and again.sha256 == done.sha256 == checkpoint_sha256(out)
    assert json.loads((out / TRAINING_META_NAME).read_text())["step"] == 40


def test_other_settings_are_refused_not_mixed(unified_astribot, tmp_path):
    out = tmp_path / "ckpt"
    train(unified_astribot, out, steps=2)
    with pytest.raises(ClapDataError, match="holds a run with other settings.*batch_size"):
        train_act_vae([unified_astribot], out, config=TINY, options=TrainOptions(steps=4, batch_size=8, holdout=HOLDOUT, device="cpu"))
    fresh = train_act_vae([unified_astribot], out, config=TINY, options=TrainOptions(steps=3, batch_size=8, holdout=HOLDOUT, device="cpu", overwrite=True))
    assert fresh.resumed_from == 0 and fresh.steps == 3
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    with pytest.raises(ClapDataError, match="not a resumable Act-VAE run"):
        train(unified_astribot, tmp_path / "notes", steps=2)


def test_cli_errors_are_sentences(unified_astribot, tmp_path):
    result = runner.invoke(app, ["train", "act-vae", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "c"), "--steps", "2"])
    assert result.exit_code == 1 and f"{tmp_path / 'nothing'} does not exist" in result.output
    result = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(tmp_path / "c"), "--preset", "huge"])
    assert result.exit_code == 1 and "unknown preset 'huge'" in result.output
    result = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(tmp_path / "c"), "--holdout", "middle"])
    assert result.exit_code == 2
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(tmp_path / "c"), "--device", "cuda"])
        assert result.exit_code == 1 and "no usable CUDA GPU" in result.output


def test_a_run_saved_before_a_config_field_existed_still_resumes(unified_astribot, tmp_path):
    """Runs saved before ``architecture`` joined ActVAEConfig hold configs without it: their
    default (today's network) is what they trained, so they resume instead of being refused."""
    from clap_data import train_state
    from clap_data.act_vae.checkpoint import TRAINING_STATE_NAME

    out = tmp_path / "old"
    train(unified_astribot, out, steps=2)
    state = train_state.load(out / TRAINING_STATE_NAME)
    del state["extra"]["run"]["config"]["architecture"]
    train_state.save(out / TRAINING_STATE_NAME, state)
    report = train(unified_astribot, out, steps=4)
    assert report.resumed_from == 2 and report.steps == 4
