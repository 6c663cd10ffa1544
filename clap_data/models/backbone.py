"""The frozen visual backbone of the VD-VAE: a pretrained ViT's final-norm patch tokens (METHOD.md §4).

The paper uses DINOv3 ViT-B/16; DINOv2 (with or without registers) works the same way, so any
``transformers`` vision model loaded through ``AutoModel`` is accepted as long as its sequence is
``[CLS, registers…, patches…]`` and its ``last_hidden_state`` has passed the final layer norm —
true of ``DINOv3ViTModel`` (``self.norm``), ``Dinov2Model`` and ``Dinov2WithRegistersModel``
(``self.layernorm``) in transformers 5.5. That layout is checked on every call, so a model with
another one fails loudly instead of handing out shifted tokens.

The backbone is frozen and stays in eval mode whatever its parent does: DINOv3 randomly shifts and
rescales its RoPE coordinates in train mode, so a ``.train()`` reaching it would make features,
and so pseudo-tokens, non-deterministic. Its weights hash goes into :meth:`FrozenBackbone.identity`
because the pseudo-tokens are only reproducible with the very same weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import is_offline_mode
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from clap_data.errors import ClapDataError

IMAGE_SIZE = (240, 320)  # (height, width): the paper's input, aspect ratio not kept
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(frames: np.ndarray | torch.Tensor, size: tuple[int, int] = IMAGE_SIZE,
               device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 frames ``[B, H, W, 3]`` → float32 ``[B, 3, *size]``: bilinear resize (antialiased, so
    downscaling a 720p frame does not alias), scaled to [0, 1], ImageNet mean/std normalised.

    The uint8 frames move to ``device`` before anything else: a quarter of the bytes of floats."""
    pixels = torch.as_tensor(frames)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [B, H, W, 3], not {pixels.dtype} {list(pixels.shape)}")
    pixels = pixels.to(device).permute(0, 3, 1, 2).float()
    if tuple(pixels.shape[-2:]) != size:
        pixels = nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def weights_sha256(model: nn.Module) -> str:
    """Hex sha256 over the state dict, tensors in sorted key order, each with its name, dtype and
    shape: equal for the same weights however they were loaded, different for any changed value."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{list(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _patch_size(config: PretrainedConfig) -> tuple[int, int]:
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, int):
        return patch, patch
    if isinstance(patch, (list, tuple)) and len(patch) == 2:
        return int(patch[0]), int(patch[1])
    raise ClapDataError(f"{type(config).__name__} has no patch size: the backbone must be a ViT")


class FrozenBackbone(nn.Module):
    """A pretrained ViT, frozen, mapping uint8 frames ``[B, H, W, 3]`` to patch tokens ``[B, P, D]``.

    ``P = (240 // patch) × (320 // patch)``: the patch embedding is a strided convolution, so a size
    that is no multiple of the patch drops the remainder (DINOv2's /14: 17 × 22 = 374; a /16: 300).
    ``autocast_bf16`` runs the model under bf16 autocast on CUDA (ignored elsewhere); the tokens come
    back as float32 either way.
    """

    def __init__(self, model: PreTrainedModel, source: str, autocast_bf16: bool = False):
        super().__init__()
        self.model = model
        self.source = source
        self.autocast_bf16 = autocast_bf16
        config = model.config
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        patch_h, patch_w = _patch_size(config)
        self.grid = (IMAGE_SIZE[0] // patch_h, IMAGE_SIZE[1] // patch_w)
        self.hidden_size = int(config.hidden_size)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self._weights_sha256 = weights_sha256(model)  # now, before anyone casts the weights
        self.train(False)

    @classmethod
    def from_config(cls, config: PretrainedConfig, autocast_bf16: bool = False) -> FrozenBackbone:
        """A randomly initialised backbone of ``config`` (tests, benchmarks): no weights to find."""
        return cls(AutoModel.from_config(config), f"config:{config.model_type}", autocast_bf16)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Whatever ``mode`` a parent passes down, the ViT stays in eval mode (see the module docstring)."""
        super().train(mode)
        self.model.eval()
        return self

    def identity(self) -> dict[str, Any]:
        """What the pseudo-tokens' identity records of the backbone: where it came from, its class,
        the input size it sees and the hash of its weights (computed when it was built)."""
        return {
            "name": self.source,
            "model_class": type(self.model).__name__,
            "image_size": list(IMAGE_SIZE),
            "weights_sha256": self._weights_sha256,
        }

    def forward(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames ``[B, H, W, 3]`` (numpy or torch, any device) → float32 ``[B, P, D]`` on the
        backbone's device: the final-norm tokens of the patches, CLS and registers left out."""
        pixels = preprocess(frames, device=self.device)
        use_bf16 = self.autocast_bf16 and pixels.device.type == "cuda"
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            tokens = self.model(pixel_values=pixels).last_hidden_state
        expected = self.num_prefix_tokens + self.num_patches
        if tokens.shape[1] != expected:
            raise ClapDataError(
                f"backbone {self.source} returned {tokens.shape[1]} tokens where CLS + "
                f"{self.num_prefix_tokens - 1} registers + {self.num_patches} patches = {expected} were expected"
            )
        return tokens[:, self.num_prefix_tokens:].float()


def load_backbone(name_or_path: str | Path, autocast_bf16: bool = False) -> FrozenBackbone:
    """The backbone saved in a local folder (``save_pretrained`` layout) or a Hugging Face hub id.

    A hub id goes through the Hugging Face cache (with ``HF_HUB_OFFLINE=1``, only the cache). A model that
    cannot be had is one sentence that says what to do."""
    path = Path(name_or_path).expanduser()
    is_folder = path.is_dir()
    source = str(path.absolute()) if is_folder else str(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
        model = AutoModel.from_pretrained(source, config=config)
    except (OSError, ValueError) as exc:
        if is_folder:
            raise ClapDataError(f"backbone folder {source} does not hold a transformers model ({exc})") from None
        if is_offline_mode():
            hint = (f"HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache; run `hf download {source}` "
                    "where the network is reachable, or give a local folder")
        else:
            hint = ("it is no local folder and the hub does not serve it "
                    "(check the name, a gated model's access, the network)")
        raise ClapDataError(f"backbone {source} cannot be loaded: {hint}") from None
    return FrozenBackbone(model, source, autocast_bf16)
