"""The tiny CLAP-NTP run the policy tests share (session-wide, read only): a tiny VLM, the factory shards of the
tiny Act-VAE, and 100 training steps on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from clap_data.factories.shards import write_ntp_shards
from clap_data.factories.tiny_vlm import write_tiny_vlm
from clap_data.training.ntp_train import NTPTrainSettings, train_loop


@pytest.fixture(scope="session")
def vlm(tmp_path_factory) -> Path:
    return write_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")


@pytest.fixture(scope="session")
def shards(tiny_ckpt, tmp_path_factory) -> Path:
    return write_ntp_shards(tmp_path_factory.mktemp("shards") / "factory", tiny_ckpt)


@pytest.fixture(scope="session")
def trained(shards, vlm, tmp_path_factory) -> tuple[NTPTrainSettings, list[dict]]:
    """100 steps in this process (about 20 s): enough for well-formed answers. Read only."""
    out = tmp_path_factory.mktemp("ntp") / "ckpt"
    settings = NTPTrainSettings(shards=str(shards), model=str(vlm), out=str(out), steps=100, batch_size=8,
                                learning_rate=5e-3, warmup_steps=5, save_every=50, log_every=10)
    metrics: list[dict] = []
    train_loop(settings, report=metrics.append)
    return settings, metrics
