"""The frozen backbone: tiny DINOv2 and DINOv3 models built from configs, saved and loaded by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import Dinov2Config, Dinov2WithRegistersConfig, DINOv3ViTConfig

from clap_data.errors import ClapDataError
from clap_data.models.backbone import IMAGENET_MEAN, IMAGENET_STD, FrozenBackbone, load_backbone, preprocess

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
CONFIGS = {
    "dinov2": lambda: Dinov2Config(patch_size=14, image_size=56, **TINY),
    "dinov3": lambda: DINOv3ViTConfig(patch_size=16, image_size=64, num_register_tokens=4, **TINY),
}
EXPECTED = {"dinov2": ((17, 22), 0), "dinov3": ((15, 20), 4)}  # grid at 240×320, register tokens


def saved(name: str, directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    FrozenBackbone.from_config(CONFIGS[name]()).model.save_pretrained(directory)
    return directory


def frames(count: int = 2, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_patch_tokens_are_the_final_norm_hidden_states_without_cls_and_registers(name, tmp_path):
    backbone = load_backbone(saved(name, tmp_path / name))
    grid, registers = EXPECTED[name]
    assert backbone.grid == grid and backbone.num_patches == grid[0] * grid[1] and backbone.hidden_size == 32
    batch = frames()
    tokens = backbone(batch)
    assert tokens.shape == (2, grid[0] * grid[1], 32) and tokens.dtype == torch.float32

    # Independently: the model called directly, the final norm applied by hand to the last layer's output.
    model = backbone.model
    with torch.no_grad():
        out = model(pixel_values=preprocess(batch), output_hidden_states=True)
        final_norm = model.norm if name == "dinov3" else model.layernorm
        normed = final_norm(out.hidden_states[-1])
    assert normed.shape[1] == 1 + registers + grid[0] * grid[1]
    torch.testing.assert_close(tokens, normed[:, 1 + registers:], rtol=0, atol=1e-6)
    torch.testing.assert_close(backbone(torch.from_numpy(batch)), tokens, rtol=0, atol=0)  # torch input too


def test_dinov2_with_registers_drops_its_registers():
    backbone = FrozenBackbone.from_config(Dinov2WithRegistersConfig(patch_size=14, image_size=56,
                                                                    num_register_tokens=4, **TINY))
    assert backbone.num_prefix_tokens == 5 and backbone(frames(1)).shape == (1, 374, 32)


def test_preprocessing_resizes_to_240x320_and_normalises_with_imagenet_statistics():
    colour = np.array([200, 100, 30], dtype=np.uint8)
    pixels = preprocess(np.broadcast_to(colour, (1, 48, 64, 3)).copy())
    assert pixels.shape == (1, 3, 240, 320) and pixels.dtype == torch.float32
    for channel in range(3):
        expected = (colour[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(pixels[0, channel], torch.full((240, 320), expected), rtol=0, atol=1e-5)

    # Downscaling is antialiased like PIL's bilinear resize (to within PIL's uint8 rounding).
    big = frames(1, 480, 640, seed=3)
    ours = preprocess(big)[0] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    pil = np.asarray(Image.fromarray(big[0]).resize((320, 240), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(ours.permute(1, 2, 0).numpy() * 255 - pil).max() <= 1.0


def test_preprocessing_refuses_frames_that_are_not_uint8_hwc():
    with pytest.raises(ValueError, match=r"uint8 \[B, H, W, 3\]"):
        preprocess(np.zeros((1, 3, 48, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((1, 48, 64, 3), dtype=np.float32))


def test_frozen_and_stays_in_eval_mode_when_its_parent_trains():
    backbone = FrozenBackbone.from_config(CONFIGS["dinov3"]())  # DINOv3 jitters its RoPE in train mode
    parent = nn.Sequential(backbone)
    batch = frames()
    before = backbone(batch)
    parent.train()
    assert backbone.training and not any(module.training for module in backbone.model.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    torch.testing.assert_close(backbone(batch), before, rtol=0, atol=0)
    assert not backbone(batch).requires_grad


def test_identity_is_stable_across_loads_and_changes_with_the_weights(tmp_path):
    folder = saved("dinov3", tmp_path / "a")
    first, second = load_backbone(folder).identity(), load_backbone(folder).identity()
    assert first == second
    assert first["name"] == str(folder.absolute()) and first["model_class"] == "DINOv3ViTModel"
    other = load_backbone(saved("dinov3", tmp_path / "b", seed=1)).identity()
    assert other["weights_sha256"] != first["weights_sha256"]


def test_unavailable_backbones_are_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr("clap_data.models.backbone.is_offline_mode", lambda: True)
    with pytest.raises(ClapDataError, match="HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"):
        load_backbone("no-such-owner/no-such-backbone")
    with pytest.raises(ClapDataError, match="does not hold a transformers model"):
        load_backbone(tmp_path)
