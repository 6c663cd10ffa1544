"""Shared fixtures: the real Astribot sample (or a factory-made stand-in), a local Ray, unified
datasets and a tiny Act-VAE checkpoint (session-wide and read only: tests that change one copy it)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Tests never reach the network; the datasets cache of lerobot's loader goes to a temp dir.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["COLUMNS"] = "200"  # rich reads it when the CLI consoles are created: no wrapping in asserted output
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="clap-hf-cache-"))

from clap_data.act_vae.training import TrainOptions, train_act_vae  # noqa: E402
from clap_data.factories.astribot import write_astribot_dataset  # noqa: E402
from clap_data.factories.droid_rlds import write_droid_rlds_dataset  # noqa: E402
from clap_data.factories.ego4d import write_ego4d_dataset  # noqa: E402
from clap_data.factories.tiny_backbone import write_tiny_backbone  # noqa: E402
from clap_data.models import ActVAEConfig  # noqa: E402
from clap_data.pipelines.ingest import IngestRequest, ingest  # noqa: E402
from clap_data.sources.astribot import AstribotSource  # noqa: E402
from clap_data.sources.droid_rlds import DroidRldsSource  # noqa: E402
from clap_data.sources.ego4d import Ego4DSource  # noqa: E402
from clap_data.splits import Holdout  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_ASTRIBOT = SHARED / "fixtures" / "astribot_s1_dummy"


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the in-process tests; the pipeline reuses an initialised Ray."""
    import ray

    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def real_astribot(tmp_path_factory) -> Path:
    """The real sample from ../shared; in a clone without it, a factory dataset built like it
    (two declared episodes, episode 1's files and every head video absent)."""
    if REAL_ASTRIBOT.is_dir():
        return REAL_ASTRIBOT
    root = write_astribot_dataset(tmp_path_factory.mktemp("astribot_like") / "src", episode_lengths=(60, 50), video_size=(64, 48))
    for path in list(root.rglob("episode_000001.*")) + list(root.rglob("images_dict.head.rgb/*.mp4")):
        path.unlink()
    return root


@pytest.fixture(scope="session")
def astribot_src(tmp_path_factory) -> Path:
    """A clean factory dataset: three episodes of different lengths, all cameras."""
    return write_astribot_dataset(tmp_path_factory.mktemp("astribot") / "src", episode_lengths=(40, 52, 45), video_size=(64, 48))


HOLDOUT = Holdout("tail", 0.25)
TINY = ActVAEConfig(
    num_queries=4, codebook_size=16, code_dim=8, width=32, encoder_layers=1, decoder_layers=1, heads=4,
    dead_code_check_every=10, reseed_from="latents",
)


@pytest.fixture(scope="session")
def unified_astribot(astribot_src, tmp_path_factory, ray_local) -> Path:
    """The factory Astribot source (episodes of 40, 52 and 45 frames, both arms) ingested. Read only."""
    out = tmp_path_factory.mktemp("unified") / "astribot"
    ingest(AstribotSource(astribot_src), IngestRequest(out=out))
    return out


@pytest.fixture(scope="session")
def unified_droid(tmp_path_factory, ray_local) -> Path:
    """A single-arm (right slot) dataset: DROID RLDS episodes of 20, 14, 17 and 12 frames. Read only."""
    src = write_droid_rlds_dataset(tmp_path_factory.mktemp("droid") / "src")
    out = tmp_path_factory.mktemp("unified") / "droid"
    ingest(DroidRldsSource(src), IngestRequest(out=out))
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(unified_astribot, tmp_path_factory) -> Path:
    """A tiny Act-VAE (Nq 4 per arm, K 16) trained just enough to use most of its codes. Read only."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    train_act_vae([unified_astribot], out, config=TINY, options=TrainOptions(steps=40, batch_size=32, holdout=HOLDOUT, device="cpu"))
    return out


@dataclass(frozen=True)
class TokenizedCorpus:
    """A robot dataset with both token columns and a human one with pseudo-tokens, and the models."""

    robot: Path  # the factory Astribot dataset: action_tokens (tiny Act-VAE) + pseudo_tokens (head camera)
    human: Path  # the factory Ego4D dataset ingested: pseudo_tokens
    act_vae: Path
    vd_vae: Path
    backbone: Path


@pytest.fixture(scope="session")
def tokenized_corpus(unified_astribot, tiny_ckpt, tmp_path_factory, ray_local) -> TokenizedCorpus:
    """Built once for the session (stats, report, publish, readers): an untrained, seeded VD-VAE on the
    tiny Act-VAE's codebook with the tiny random backbone — real columns, meaningless codes. Read only."""
    from clap_data.models import VDVAE, VDVAEConfig, save_model
    from clap_data.pipelines.pseudolabel import PseudolabelRequest, pseudolabel_dataset
    from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset

    base = tmp_path_factory.mktemp("corpus")
    backbone = write_tiny_backbone(base / "backbone")
    torch.manual_seed(0)
    config = dataclasses.replace(VDVAEConfig.small(), feature_dim=32, num_patches=48, env_codebook_size=16)
    vd_vae = base / "vd_vae"
    save_model(VDVAE.from_act_vae(tiny_ckpt, config), vd_vae)
    robot = base / "astribot"
    shutil.copytree(unified_astribot, robot)
    tokenize_dataset(robot, TokenizeRequest(ckpt=tiny_ckpt, device="cpu"))
    human = base / "ego4d"
    ingest(Ego4DSource(write_ego4d_dataset(base / "ego4d_src")), IngestRequest(out=human))
    for root in (robot, human):
        pseudolabel_dataset(root, PseudolabelRequest(ckpt=vd_vae, backbone=backbone, camera="head", device="cpu"))
    return TokenizedCorpus(robot, human, tiny_ckpt, vd_vae, backbone)


@pytest.fixture(scope="module")
def robot_copy(tokenized_corpus, tmp_path_factory) -> Path:
    """A module's own copy of the tokenized robot dataset: for commands that take its lock (the lock file lives
    beside it), edit it, or need a second dataset of the same tokenizer."""
    root = tmp_path_factory.mktemp("robot_copy") / "astribot"
    shutil.copytree(tokenized_corpus.robot, root)
    return root


@pytest.fixture(scope="session")
def loopback_hub(tmp_path_factory):
    """A Hugging Face Hub on 127.0.0.1 for the session (tests/loopback_hub.py). huggingface_hub reads HF_ENDPOINT
    when it is imported, and this session is offline, so clients run in subprocesses with ``hub.client_env(home)``;
    tests share the server, so each uses its own repo ids."""
    from tests.loopback_hub import LoopbackHub

    with LoopbackHub(tmp_path_factory.mktemp("loopback_hub")) as hub:
        yield hub
