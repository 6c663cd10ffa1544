"""The demo's stand-in backbone: a DINOv2 folder that load_backbone reads, the same weights every time."""

from __future__ import annotations

import numpy as np

from clap_data.factories.tiny_backbone import write_tiny_backbone
from clap_data.models.backbone import load_backbone


def test_the_tiny_backbone_loads_and_is_the_same_every_time(tmp_path):
    first = load_backbone(write_tiny_backbone(tmp_path / "a"))
    second = load_backbone(write_tiny_backbone(tmp_path / "b"))
    assert first.num_patches == 48 and first.identity()["weights_sha256"] == second.identity()["weights_sha256"]
    tokens = first(np.zeros((2, 36, 64, 3), dtype=np.uint8))
    assert tuple(tokens.shape) == (2, 48, 32)
