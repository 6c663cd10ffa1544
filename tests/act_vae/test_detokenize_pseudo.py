"""`clap-data detokenize --column pseudo_tokens`: the VD-VAE's codes decode through the Act-VAE whose
codebook they use — on a robot dataset relative to the frame's state with its embodiment's statistics,
on a human dataset relative to zero with the statistics named by --as-embodiment (and it says so);
another Act-VAE is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import Dinov2Config
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.decoding import detokenize
from clap_data.actions import NormStats
from clap_data.cli import app
from clap_data.factories.rendered import write_rendered_human
from clap_data.lerobot_v3.reader import read_episode_arrays
from clap_data.models import ActVAE, save_model
from clap_data.models.backbone import FrozenBackbone
from clap_data.norm_stats import load_norm_stats
from clap_data.pipelines.pseudolabel import PseudolabelRequest, pseudolabel_dataset
from clap_data.reference import openclap_stats_table
from clap_data.schemas import PSEUDO_TOKENS, PSEUDO_TOKENS_PADDED
from tests.conftest import TINY
from tests.pipelines.test_pseudolabel import BACKBONE, vd_checkpoint

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """The tiny DINOv2 of the pseudolabel tests (374 patches of 32 features at 240×320)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("backbone") / "dinov2"
    FrozenBackbone.from_config(Dinov2Config(patch_size=14, image_size=56, **BACKBONE)).model.save_pretrained(folder)
    return folder


def _label(root: Path, vd: Path, backbone: Path) -> Path:
    pseudolabel_dataset(root, PseudolabelRequest(ckpt=vd, backbone=backbone, device="cpu", batch_size=16))
    return root


@pytest.fixture(scope="module")
def vd(tiny_ckpt, tmp_path_factory) -> Path:
    return vd_checkpoint(tmp_path_factory.mktemp("vd") / "a", tiny_ckpt, seed=0)


@pytest.fixture(scope="module")
def robot(unified_astribot, vd, backbone, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("pseudo") / "astribot"
    shutil.copytree(unified_astribot, copy)
    return _label(copy, vd, backbone)


@pytest.fixture(scope="module")
def human(vd, backbone, tmp_path_factory) -> Path:
    """The rendered human source (one 40-frame clip) through `clap-data ingest ego4d`, pseudo-labelled."""
    base = tmp_path_factory.mktemp("human")
    (src,) = write_rendered_human(base / "rendered", episodes=1, lengths=(40, 40), variants=1)
    out = base / "ego4d"
    result = runner.invoke(app, ["ingest", "ego4d", "--src", str(src), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    return _label(out, vd, backbone)


def _stored(root: Path, episode: int, frame: int) -> tuple[list[int], bool]:
    table = pq.read_table(root / "data", columns=["episode_index", "frame_index", PSEUDO_TOKENS, PSEUDO_TOKENS_PADDED],
                          filters=[("episode_index", "=", episode), ("frame_index", "=", frame)])
    return table.column(PSEUDO_TOKENS)[0].as_py(), bool(table.column(PSEUDO_TOKENS_PADDED)[0].as_py())


def _decode(root: Path, ckpt: Path, episode: int, frame: int, *extra: str):  # noqa: ANN202
    return runner.invoke(app, ["detokenize", str(root), "--ckpt", str(ckpt), "--episode", str(episode), "--frame", str(frame),
                               "--column", "pseudo_tokens", *extra])


def test_robot_pseudo_tokens_decode_like_the_library(robot, tiny_ckpt):
    model, _ = load_act_vae(tiny_ckpt)
    for episode, frame in ((1, 10), (2, 40)):  # the second is a padded pair
        result = _decode(robot, tiny_ckpt, episode, frame, "--json")
        assert result.exit_code == 0, result.output
        decoded = json.loads(result.output)
        tokens, padded = _stored(robot, episode, frame)
        arrays = read_episode_arrays(robot, episode)
        stats = load_norm_stats(robot, "openclap")
        want = detokenize(model, np.array(tokens), arrays.state[frame], stats, arrays.arm_mask[frame])
        assert decoded["tokens"] == tokens and decoded["padded"] == padded and decoded["column"] == "pseudo_tokens"
        assert decoded["stats_id"] == stats.stats_id and decoded["note"] is None
        np.testing.assert_allclose(decoded["action"], want)
    text = _decode(robot, tiny_ckpt, 1, 10)
    assert text.exit_code == 0 and "pseudo_tokens" in text.output and "human frame" not in text.output


def test_human_needs_an_embodiment_and_decodes_relative_to_zero(human, tiny_ckpt):
    refused = _decode(human, tiny_ckpt, 0, 5)
    said = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "--as-embodiment S1-stationary" in said and "is human video" in said
    result = _decode(human, tiny_ckpt, 0, 5, "--as-embodiment", "S1-stationary")
    assert result.exit_code == 0, result.output
    assert "human frame: decoded relative to zero with the S1-stationary statistics" in result.output
    as_json = json.loads(_decode(human, tiny_ckpt, 0, 5, "--as-embodiment", "S1-stationary", "--json").output)
    model, _ = load_act_vae(tiny_ckpt)
    tokens, _ = _stored(human, 0, 5)
    stats = NormStats.from_table(openclap_stats_table(), "S1-stationary", "openclap", "table")
    want = detokenize(model, np.array(tokens), np.zeros(14), stats, np.ones(2))
    np.testing.assert_allclose(as_json["action"], want)
    assert as_json["state"] == [0.0] * 14 and as_json["note"].startswith("human frame")
    unknown = _decode(human, tiny_ckpt, 0, 5, "--as-embodiment", "no-such-robot")
    assert unknown.exit_code == 1 and "no-such-robot" in unknown.output


def test_another_act_vae_is_refused(robot, tmp_path):
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_model(ActVAE(TINY).eval(), other)
    result = _decode(robot, other, 0, 0)
    assert result.exit_code == 1 and "codes of one codebook mean nothing to another" in " ".join(result.output.split())
    missing = runner.invoke(app, ["detokenize", str(robot), "--ckpt", str(other), "--episode", "0", "--frame", "0",
                                  "--column", "nonsense"])
    assert missing.exit_code == 2
