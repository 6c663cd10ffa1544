"""What every policy that acts from a checkpoint folder shares (:class:`~clap_data.training.ntp_policy.NTPPolicy`,
:class:`~clap_data.training.rf_policy.RFPolicy`): the checks of an observation, the embodiment's statistics and arm
mask recorded at training, the VLM loaded for inference, and the recorded Act-VAE checked by sha256.

Why one place: both policies take the same arguments (images, instruction, embodiment, state, arm mask) and must
refuse the same bad ones with the same sentences — a served policy of either kind fails the same way — and they
turn a normalised chunk into robot units with the same statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.actions import HUMAN, NormStats
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE
from clap_data.schemas.shards_v1 import CAMERAS_IN_PROMPT_ORDER
from clap_data.training.ntp_data import norm_stats
from clap_data.training.ntp_model import ACTION_TOKEN, load_vlm


def check_images(images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The observation's images as arrays, refusing an unknown camera or an image that is not H×W×3 uint8."""
    unknown = sorted(set(images) - set(CAMERAS_IN_PROMPT_ORDER))
    if unknown:
        raise ClapDataError(f"unknown camera(s) {', '.join(unknown)}; the policy reads "
                            f"{', '.join(CAMERAS_IN_PROMPT_ORDER)}")
    checked = {}
    for camera, image in images.items():
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ClapDataError(f"the {camera} image must be H×W×3 uint8, got {array.dtype} {list(array.shape)}")
        checked[camera] = array
    return checked


def checked_act_vae(ckpt: Path, meta: dict[str, Any], act_vae: str | Path | None,
                    device: torch.device) -> tuple[ActVAE, Path]:
    """The Act-VAE ``ckpt`` was trained with (``act_vae`` overrides the recorded folder) and its folder; refuses
    any other (codes of one codebook mean nothing to another)."""
    where = act_vae if act_vae is not None else meta["act_vae"].get("checkpoint")
    if where is None:
        raise ClapDataError(f"{ckpt} records no Act-VAE folder; pass act_vae= (clap-data: --act-vae)")
    vae, sha = load_act_vae(Path(where), str(device))
    if sha != meta["act_vae"]["checkpoint_sha256"]:
        raise ClapDataError(f"the Act-VAE at {where} (sha256 {sha[:16]}…) is not the one {ckpt} was trained with "
                            f"({meta['act_vae']['checkpoint_sha256'][:16]}…)")
    return vae, Path(where)


def load_policy_vlm(ckpt: Path, meta: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """The checkpoint's VLM (bf16 on CUDA, fp32 on a CPU) in eval mode on ``device``, and its processor, whose
    ``<ACT_0>`` must have the id it was trained with."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, processor = load_vlm(str(ckpt), dtype=dtype)
    first = processor.tokenizer.convert_tokens_to_ids(ACTION_TOKEN.format(0))
    if first != meta["action_token_first_id"]:
        raise ClapDataError(f"{ckpt}: the tokenizer's <ACT_0> has id {first}, not the "
                            f"{meta['action_token_first_id']} it was trained with")
    return model.to(device).eval(), processor


class CheckpointPolicy:
    """The part of a policy that reads its ``training.json``: statistics and arm masks per embodiment, and the
    checked robot context of an observation."""

    def __init__(self, meta: dict[str, Any], device: torch.device, ckpt: Path) -> None:
        self.meta, self.device, self.ckpt = meta, device, ckpt

    def stats(self, embodiment: str) -> NormStats:
        return norm_stats(self.meta["statistics"], embodiment, f"the checkpoint {self.ckpt}")

    def arm_mask(self, embodiment: str) -> NDArray[np.float64]:
        known = self.meta["embodiments"]
        if embodiment not in known:
            raise ClapDataError(f"{self.ckpt} was not trained on embodiment {embodiment!r} (it knows "
                                f"{', '.join(sorted(known))}); pass arm_mask=[left, right]")
        return np.asarray(known[embodiment]["arm_mask"], dtype=np.float64)

    def robot_context(self, embodiment: str, state: Any,
                      arm_mask: Any) -> tuple[NDArray[np.float64], NDArray[np.float64], NormStats]:
        """The state, arm mask and statistics a chunk of ``embodiment`` is made absolute with, checked
        (``arm_mask`` overrides the embodiment's)."""
        if embodiment == HUMAN:
            raise ClapDataError("human is not a robot: it has no state and no statistics to act with")
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (14,):
            raise ClapDataError(f"state must be the 14-D canonical state, got shape {list(state.shape)}")
        mask = self.arm_mask(embodiment) if arm_mask is None else np.asarray(arm_mask, dtype=np.float64).reshape(2)
        return state, mask, self.stats(embodiment)
