"""`clap-data train act-vae`: the checkpoint it writes, exact resume, refusals, progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.training import TrainOptions, train_act_vae
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
    assert result.exit_code == 1 and "is not a readable LeRobot dataset" in result.output
    result = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(tmp_path / "c"), "--preset", "huge"])
    assert result.exit_code == 1 and "unknown preset 'huge'" in result.output
    result = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(tmp_path / "c"), "--holdout", "middle"])
    assert result.exit_code == 2
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["train", "act-vae", "--data", str(unified_astribot), "--out", str(tmp_path / "c"), "--device", "cuda"])
        assert result.exit_code == 1 and "no usable CUDA GPU" in result.output
