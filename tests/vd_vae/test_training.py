"""``train vd-vae`` on the tiny setup: the factory Astribot dataset, the tiny Act-VAE and a tiny DINOv2 backbone."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.factories.tiny_backbone import write_tiny_backbone
from clap_data.models import VDVAE, load_model
from clap_data.splits import Holdout
from clap_data.vd_vae.pairs_dataset import training_pair_starts
from clap_data.vd_vae.training import VDTrainOptions, train_vd_vae

HOLDOUT = Holdout("tail", 0.25)  # three episodes: the episode split could hold out a third of the data
runner = CliRunner()


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return write_tiny_backbone(tmp_path_factory.mktemp("backbone") / "dinov2")


def _train(unified_astribot, tiny_ckpt, backbone, out, **options):  # noqa: ANN001, ANN202
    settings = {"steps": 8, "batch_size": 4, "holdout": HOLDOUT, "device": "cpu", "save_every": 4, "log_every": 4,
                **options}
    return train_vd_vae({unified_astribot: "head"}, tiny_ckpt, backbone, out, options=VDTrainOptions(**settings))


def test_pairs_skip_the_tail_past_the_episode_end_and_the_held_out_frames():
    starts = training_pair_starts(Holdout("tail", 0.25), "x", 100, 32)  # cut at 75: t + 32 < 75
    assert starts.min() == 0 and starts.max() == 42
    assert len(training_pair_starts(Holdout("tail", 0.0), "x", 40, 32)) == 8


def test_training_lowers_the_loss_and_the_checkpoint_gives_pseudo_tokens(unified_astribot, tiny_ckpt, backbone,
                                                                         tmp_path):
    seen = []
    report = train_vd_vae({unified_astribot: "head"}, tiny_ckpt, backbone, tmp_path / "vd", options=VDTrainOptions(
        steps=15, batch_size=8, holdout=HOLDOUT, device="cpu", log_every=5), on_progress=lambda m, _: seen.append(m))
    assert report.steps == 15 and sum(report.train_pairs.values()) > 0
    assert all(math.isfinite(getattr(m, k)) for m in seen for k in ("loss", "mse", "q", "commit", "siglip", "l1"))
    assert seen[-1].loss < seen[0].loss and 0 < seen[-1].code_usage <= 1

    model, sha = load_model(VDVAE, tmp_path / "vd", kind="a VD-VAE")
    assert sha == report.sha256 and model.config.num_queries == 4 and model.config.code_dim == 8
    tokens = model.pseudo_tokens(torch.randn(3, 2, model.config.num_patches, model.config.feature_dim))
    assert tokens.dtype == torch.int16 and tokens.shape == (3, 8)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 16
    meta = json.loads((tmp_path / "vd" / "training.json").read_text())
    assert meta["step"] == 15 and meta["run"]["cameras"] == {str(unified_astribot.resolve()): "head"}
    assert meta["run"]["act_vae_sha256"] == model.config.act_vae_sha256 and meta["run"]["holdout"]["mode"] == "tail"
    assert meta["run"]["backbone"]["weights_sha256"] and meta["last"]["step"] == 15


def test_a_resumed_run_gives_the_same_weights_as_an_uninterrupted_one(unified_astribot, tiny_ckpt, backbone, tmp_path):
    straight = _train(unified_astribot, tiny_ckpt, backbone, tmp_path / "straight")
    first = _train(unified_astribot, tiny_ckpt, backbone, tmp_path / "resumed", steps=4)
    assert first.steps == 4
    resumed = _train(unified_astribot, tiny_ckpt, backbone, tmp_path / "resumed")
    assert resumed.resumed_from == 4 and resumed.steps == 8
    assert resumed.sha256 == straight.sha256
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.last.__dict__.keys() == straight.last.__dict__.keys()
    assert np.isclose(resumed.last.loss, straight.last.loss, rtol=0, atol=0)
    again = _train(unified_astribot, tiny_ckpt, backbone, tmp_path / "resumed")
    assert again.already_complete and again.sha256 == straight.sha256


def test_other_settings_are_refused_without_overwrite_and_siglip_zero_trains(unified_astribot, tiny_ckpt, backbone,
                                                                             tmp_path):
    out = tmp_path / "vd"
    _train(unified_astribot, tiny_ckpt, backbone, out, steps=2)
    with pytest.raises(ClapDataError, match=r"other settings \(config differ\).*--overwrite"):
        _train(unified_astribot, tiny_ckpt, backbone, out, steps=2, siglip_weight=0.0)
    ablation = _train(unified_astribot, tiny_ckpt, backbone, out, steps=2, siglip_weight=0.0, overwrite=True)
    assert ablation.resumed_from == 0 and math.isfinite(ablation.last.loss)
    assert json.loads((out / "config.json").read_text())["siglip_weight"] == 0.0


def test_a_dataset_without_the_camera_is_refused(unified_astribot, tiny_ckpt, backbone, tmp_path):
    with pytest.raises(ClapDataError, match=r"has no camera 'ego': its cameras are head"):
        train_vd_vae({unified_astribot: "ego"}, tiny_ckpt, backbone, tmp_path / "vd",
                     options=VDTrainOptions(steps=1, holdout=HOLDOUT, device="cpu"))
    result = runner.invoke(app, ["train", "vd-vae", "--robot", str(unified_astribot), "--camera", "ego", "--act-vae",
                                 str(tiny_ckpt), "--backbone", str(backbone), "--out", str(tmp_path / "cli")])
    assert result.exit_code != 0 and "has no camera 'ego'" in result.output


def test_the_cli_trains_and_prints_a_summary(unified_astribot, tiny_ckpt, backbone, tmp_path):
    result = runner.invoke(app, [
        "train", "vd-vae", "--robot", str(unified_astribot), "--camera", "wrist_left", "--act-vae", str(tiny_ckpt),
        "--backbone", str(backbone), "--out", str(tmp_path / "cli"), "--steps", "2", "--batch-size", "2",
        "--holdout", "tail", "--holdout-fraction", "0.25", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "2 steps on cpu" in result.output and "camera wrist_left" in result.output and "sha256" in result.output


@pytest.fixture(scope="module")
def unified_human(tmp_path_factory) -> Path:
    """Two rendered two-hand clips ingested as Ego4D (robot_type human, a head camera)."""
    from clap_data.factories.rendered import write_rendered_human

    base = tmp_path_factory.mktemp("human")
    (src,) = write_rendered_human(base / "src", episodes=2, lengths=(40, 48), variants=1)
    out = base / "unified"
    result = runner.invoke(app, ["ingest", "ego4d", "--src", str(src), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    return out


def test_robot_and_human_pairs_train_together(unified_astribot, unified_human, tiny_ckpt, backbone, tmp_path):
    report = train_vd_vae({unified_astribot: "head", unified_human: "head"}, tiny_ckpt, backbone, tmp_path / "vd",
                          options=VDTrainOptions(steps=3, batch_size=8, holdout=HOLDOUT, device="cpu"))
    assert report.train_pairs[str(unified_human.resolve())] > 0 and math.isfinite(report.last.siglip)
    result = runner.invoke(app, ["train", "vd-vae", "--robot", str(unified_human), "--act-vae", str(tiny_ckpt),
                                 "--backbone", str(backbone), "--out", str(tmp_path / "cli")])
    assert result.exit_code != 0 and "is human video" in result.output


# The child trains to 8 saving every 4 and stalls at step 6 (after the step-4 save) until the test kills it.
KILLED_RUN = """
import json, sys, time
from pathlib import Path
from clap_data.splits import Holdout
from clap_data.vd_vae.training import VDTrainOptions, train_vd_vae
args = json.loads(sys.argv[1])

def stall(metrics, total):
    if metrics.step == 6:
        print("stalled", flush=True)
        time.sleep(600)

options = VDTrainOptions(steps=8, batch_size=4, holdout=Holdout("tail", 0.25), device="cpu", save_every=4, log_every=2)
train_vd_vae({Path(args["data"]): "head"}, Path(args["act_vae"]), Path(args["backbone"]), Path(args["out"]),
             options=options, on_progress=stall)
"""


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_gives_the_uninterrupted_weights(unified_astribot, tiny_ckpt, backbone, tmp_path):
    straight = _train(unified_astribot, tiny_ckpt, backbone, tmp_path / "straight")
    killed = tmp_path / "killed"
    args = {"data": str(unified_astribot), "act_vae": str(tiny_ckpt), "backbone": str(backbone), "out": str(killed)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "stalled"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert json.loads((killed / "training.json").read_text())["step"] == 4
    rerun = _train(unified_astribot, tiny_ckpt, backbone, killed)
    assert rerun.resumed_from == 4 and rerun.steps == 8 and rerun.sha256 == straight.sha256
    assert (killed / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
