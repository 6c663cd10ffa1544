"""`clap-data pseudolabel vd-vae`: the codes equal the backbone + VD-VAE applied to every frame pair,
stock lerobot returns them, the identity is recorded, re-running changes nothing, another checkpoint
replaces them, segments of long episodes join seamlessly, and a missing camera is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets import LeRobotDataset
from transformers import Dinov2Config
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.factories.astribot import write_astribot_dataset
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.verify import verify_dataset
from clap_data.models import VDVAE, ActVAE, VDVAEConfig, load_model, save_model
from clap_data.models.backbone import FrozenBackbone, load_backbone
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.pipelines.pseudolabel import PseudolabelRequest, pseudolabel_dataset
from clap_data.sources.astribot import AstribotSource
from clap_data.vd_vae.frame_pairs import episode_videos, iter_episode_frames

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("ray_local")
GAP = 32
DATA_FILE = "data/chunk-000/file-000.parquet"
BACKBONE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def data_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stored_tokens(root: Path) -> list[list[int]]:
    return pq.read_table(root / DATA_FILE, columns=["pseudo_tokens"]).column(0).to_pylist()


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny DINOv2 (/14: 374 patches of 32 features at 240×320), saved as a transformers folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("backbone") / "dinov2"
    FrozenBackbone.from_config(Dinov2Config(patch_size=14, image_size=56, **BACKBONE)).model.save_pretrained(folder)
    return folder


def vd_checkpoint(folder: Path, act_vae: Path, seed: int) -> Path:
    """An untrained, seeded VD-VAE on the tiny Act-VAE's codebook, sized for the tiny backbone."""
    torch.manual_seed(seed)
    config = dataclasses.replace(VDVAEConfig.small(), feature_dim=32, num_patches=374, env_codebook_size=16)
    save_model(VDVAE.from_act_vae(act_vae, config), folder)
    return folder


@pytest.fixture(scope="module")
def vd_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    return vd_checkpoint(tmp_path_factory.mktemp("vd") / "a", tiny_ckpt, seed=0)


@pytest.fixture(scope="module")
def episode_frames(unified_astribot) -> list[np.ndarray]:
    """Every episode's head frames, decoded once for the module (checked against lerobot's decoder below)."""
    videos = episode_videos(DatasetMetadata.load(unified_astribot), "head")
    return [np.stack(list(iter_episode_frames(videos[e]))) for e in sorted(videos)]


def expected(frames: list[np.ndarray], ckpt: Path, backbone: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model applied directly: every frame through the backbone, each t paired with min(t + 32, last)."""
    model, _ = load_model(VDVAE, ckpt, kind="a VD-VAE")
    encoder = load_backbone(backbone)
    tokens, padded = [], []
    for episode in frames:
        patches = encoder(episode)
        t = np.arange(len(episode))
        later = np.minimum(t + GAP, len(episode) - 1)
        tokens.append(model.pseudo_tokens(torch.stack([patches[t], patches[later]], dim=1)).numpy())
        padded.append(t + GAP > len(episode) - 1)
    return np.concatenate(tokens), np.concatenate(padded)


@pytest.fixture
def dataset(unified_astribot, tmp_path) -> Path:
    copy = tmp_path / "astribot"
    shutil.copytree(unified_astribot, copy)
    return copy


def test_tokens_match_the_model_and_lerobot_returns_them(dataset, vd_ckpt, backbone_dir, episode_frames, tiny_ckpt):
    result = runner.invoke(app, ["pseudolabel", "vd-vae", str(dataset), "--ckpt", str(vd_ckpt), "--backbone",
                                 str(backbone_dir), "--camera", "head", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert "added pseudo_tokens: 137 frames (96 padded pairs)" in result.output
    tokens, padded = expected(episode_frames, vd_ckpt, backbone_dir)
    assert tokens.shape == (137, 8) and padded.sum() == 3 * GAP
    assert len(np.unique(tokens)) > 3  # a meaningful comparison: the codes vary
    loaded = LeRobotDataset("local/pseudo", root=dataset, video_backend="pyav")
    stored = np.array([loaded.hf_dataset[i]["pseudo_tokens"].tolist() for i in range(137)])
    assert stored.tolist() == tokens.tolist()
    assert [bool(loaded.hf_dataset[i]["pseudo_tokens_padded"]) for i in range(137)] == padded.tolist()
    starts = [0, 40, 92]
    for index in (0, 39, 40, 136):  # lerobot's own decoder sees the very pixels the pipeline paired
        item = loaded[index]
        episode = int(item["episode_index"])
        pixels = (item["observation.images.head"].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(pixels, episode_frames[episode][index - starts[episode]])
        assert item["pseudo_tokens"].tolist() == tokens[index].tolist()
    info = json.loads((dataset / "meta/info.json").read_text())
    feature = info["features"]["pseudo_tokens"]
    assert feature["dtype"] == "int16" and feature["shape"] == [8] and feature["names"][4] == "right_0"
    identity = feature["info"]
    _, vd_sha = load_model(VDVAE, vd_ckpt, kind="a VD-VAE")
    _, act_sha = load_model(ActVAE, tiny_ckpt, kind="an Act-VAE")
    assert identity["checkpoint_sha256"] == vd_sha and identity["act_vae_sha256"] == act_sha
    assert identity["backbone"] == load_backbone(backbone_dir).identity()
    assert identity["backbone"]["model_class"] == "Dinov2Model" and identity["backbone"]["image_size"] == [240, 320]
    assert identity["camera"] == "head" and identity["gap"] == GAP
    assert identity["decoder"] == {"name": "pyav", "version": av.__version__,
                                   "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))}
    assert identity["token_order"] == "left_then_right" and identity["text_order"] == "right_then_left"
    assert identity["arm_order"] == ["left", "right"] and identity["padded_column"] == "pseudo_tokens_padded"
    assert info["features"]["pseudo_tokens_padded"]["dtype"] == "bool"
    meta = json.loads((dataset / "meta/clap_data.json").read_text())
    assert meta["tokenizers"]["pseudo_tokens"]["checkpoint"] == str(vd_ckpt.absolute())
    assert verify_dataset(dataset).ok


def test_segments_rerun_and_another_checkpoint(dataset, vd_ckpt, backbone_dir, episode_frames, tiny_ckpt, tmp_path):
    request = PseudolabelRequest(ckpt=vd_ckpt, backbone=backbone_dir, device="cpu", batch_size=7, segment_frames=20)
    first = pseudolabel_dataset(dataset, request)  # episodes of 40, 52, 45 frames in segments of 20
    assert not first.unchanged and first.replaced is None and first.flagged == 3 * GAP
    tokens, _ = expected(episode_frames, vd_ckpt, backbone_dir)
    assert stored_tokens(dataset) == tokens.tolist()
    before = data_bytes(dataset)
    mtimes = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    assert pseudolabel_dataset(dataset, request).unchanged
    assert data_bytes(dataset) == before and {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == mtimes
    other = vd_checkpoint(tmp_path / "other", tiny_ckpt, seed=1)
    replaced = pseudolabel_dataset(dataset, dataclasses.replace(request, ckpt=other))
    assert replaced.replaced["checkpoint_sha256"] == first.identity["checkpoint_sha256"]
    tokens, _ = expected(episode_frames, other, backbone_dir)
    assert stored_tokens(dataset) == tokens.tolist()
    assert pq.read_schema(dataset / DATA_FILE).names.count("pseudo_tokens") == 1
    meta = json.loads((dataset / "meta/clap_data.json").read_text())
    assert meta["tokenizers"]["pseudo_tokens"]["checkpoint_sha256"] == replaced.identity["checkpoint_sha256"]
    assert verify_dataset(dataset).ok


def test_a_missing_camera_and_a_mismatched_backbone_are_refused(unified_astribot, vd_ckpt, backbone_dir, tmp_path):
    result = runner.invoke(app, ["pseudolabel", "vd-vae", str(unified_astribot), "--ckpt", str(vd_ckpt),
                                 "--backbone", str(backbone_dir), "--camera", "ego"])
    assert result.exit_code == 1
    assert "has no camera 'ego': its cameras are head, wrist_left, wrist_right" in " ".join(result.output.split())
    other = tmp_path / "dinov2_16"
    FrozenBackbone.from_config(Dinov2Config(patch_size=16, image_size=64, **BACKBONE)).model.save_pretrained(other)
    with pytest.raises(ClapDataError, match="was trained on 374 patches of 32 features"):
        pseudolabel_dataset(unified_astribot, PseudolabelRequest(ckpt=vd_ckpt, backbone=other, device="cpu"))


def test_segments_shrink_with_the_frame_size():
    """A reader object stays around SEGMENT_BYTES of decoded frames whatever the resolution."""
    from clap_data.pipelines.pseudolabel import SEGMENT_BYTES, segment_length

    assert segment_length(64 * 48 * 3, 32) == 256
    hd = segment_length(1280 * 720 * 3, 32)
    assert hd == SEGMENT_BYTES // (1280 * 720 * 3) - 32 and (hd + 32) * 1280 * 720 * 3 <= SEGMENT_BYTES
    assert segment_length(4096 * 2160 * 3, 32) == 1  # one output per object, never zero


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory) -> Path:
    """Three 240-frame episodes: pseudo-labelling takes long enough to be killed in the middle."""
    src = write_astribot_dataset(tmp_path_factory.mktemp("long") / "src", episode_lengths=(240, 240, 240),
                                 video_size=(64, 48), reuse_videos=True)
    out = tmp_path_factory.mktemp("long") / "astribot"
    ingest(AstribotSource(src), IngestRequest(out=out))
    return out


def _pseudolabel_cli(root: Path, ckpt: Path, backbone: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "clap_data.cli", "pseudolabel", "vd-vae", str(root), "--ckpt", str(ckpt),
               "--backbone", str(backbone), "--camera", "head", "--device", "cpu", "--batch-size", "8"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_kill_9_during_inference_then_rerun_gives_the_uninterrupted_bytes(long_dataset, vd_ckpt, backbone_dir, tmp_path):
    whole, killed = tmp_path / "whole" / "astribot", tmp_path / "killed" / "astribot"
    for copy in (whole, killed):
        shutil.copytree(long_dataset, copy)
    reference = _pseudolabel_cli(whole, vd_ckpt, backbone_dir)
    assert reference.wait(timeout=300) == 0, reference.stdout.read().decode()
    process = _pseudolabel_cli(killed, vd_ckpt, backbone_dir)
    staging = killed.parent / ".astribot.clap-columns"
    deadline = time.monotonic() + 240
    while not (staging / "run.json").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (staging / "run.json").is_file(), "the run was not caught between staging and commit"
    assert data_bytes(killed) == data_bytes(long_dataset), "a killed run must leave the dataset as it was"
    rerun = _pseudolabel_cli(killed, vd_ckpt, backbone_dir)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    assert data_bytes(killed) == data_bytes(whole)
    assert not staging.exists() and verify_dataset(killed).ok
