"""Acting with a trained CLAP-RF checkpoint: images + instruction + state → the next 32 absolute actions, by one
VLM forward and a few Euler steps of the RF head (no token decoding).

    from clap_data.training import RFPolicy

    policy = RFPolicy.from_pretrained("ckpt/")
    out = policy.predict({"head": rgb, "wrist_right": rgb2}, "pick up the cup", "S1-stationary", state14, seed=0)
    out["actions"]                                       # float64 [32, 14], absolute, robot units

The arguments are :class:`~clap_data.training.ntp_policy.NTPPolicy`'s, refused the same way
(:mod:`clap_data.training.policy_base`), plus ``seed``. The prompt is CLAP-NTP's user turn and generation prompt,
exactly the prompt positions the head read in training (:mod:`clap_data.training.rf_model`); the state is
normalised with the embodiment's statistics recorded at training (inactive arm zeroed); the head integrates
``flow_steps`` Euler steps (recorded at training, default 4) from noise drawn from a ``torch.Generator`` seeded
by ``seed`` on the policy's device — the same seed gives the same chunk. The normalised chunk is then made
executable exactly as CLAP-NTP's decoded tokens are (:func:`clap_data.act_vae.decoding.absolute_actions`:
denormalised, ``p = p₀ + Δp``, ``R = ΔR·R₀`` from ``state``), the inactive arm zero.

No Act-VAE is needed to act; ``act_vae=`` is accepted (as ``load_policy`` passes it to every kind) and checked
against the recorded sha256, so a wrong pairing is refused as NTPPolicy refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from clap_data.act_vae.decoding import absolute_actions
from clap_data.act_vae.training import pick_device
from clap_data.actions import normalized_state
from clap_data.training.policy_base import CheckpointPolicy, check_images, checked_act_vae, load_policy_vlm
from clap_data.training.prompts import Prompt, encode, prompt_images
from clap_data.training.rf_checkpoint import load_head, read_rf_meta
from clap_data.training.rf_head import check_against_vlm
from clap_data.training.rf_model import RFModel


class RFPolicy(CheckpointPolicy):
    """A CLAP-RF checkpoint ready to act (see the module docstring)."""

    def __init__(self, model: RFModel, processor: Any, meta: dict[str, Any], device: torch.device,
                 ckpt: Path) -> None:
        super().__init__(meta, device, ckpt)
        self.model, self.processor = model, processor
        self.flow_steps = int(meta["flow_steps"])

    @classmethod
    def from_pretrained(cls, ckpt: str | Path, act_vae: str | Path | None = None, device: str = "auto") -> RFPolicy:
        """Load a checkpoint of ``clap-data train rf``; ``act_vae``, if given, must be the recorded Act-VAE."""
        ckpt = Path(ckpt)
        meta = read_rf_meta(ckpt)
        torch_device = pick_device(device)
        if act_vae is not None:
            checked_act_vae(ckpt, meta, act_vae, torch_device)
        vlm, processor = load_policy_vlm(ckpt, meta, torch_device)
        head = load_head(ckpt, torch_device)
        check_against_vlm(head.config, vlm.config)
        return cls(RFModel(vlm, head).eval(), processor, meta, torch_device, ckpt)

    def normalized_chunk(self, prompt: Prompt, state: NDArray[np.float64], seed: int = 0) -> NDArray[np.float64]:
        """The head's normalised chunk-relative ``[32, 14]`` for ``prompt`` and the *normalised* 14-D ``state``."""
        inputs = {k: v.to(self.device) for k, v in encode(self.processor, [prompt]).items()}
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        state_in = torch.as_tensor(state, dtype=torch.float32, device=self.device).reshape(1, -1)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            chunk = self.model.sample(inputs, state_in, self.flow_steps, generator)
        return chunk[0].double().cpu().numpy()

    def predict(self, images: Mapping[str, np.ndarray], instruction: str, embodiment: str, state: Any,
                arm_mask: Any = None, seed: int = 0) -> dict[str, Any]:
        """One control step (see the module docstring); images: unified camera name → H×W×3 uint8, any size."""
        state, mask, stats = self.robot_context(embodiment, state, arm_mask)
        prompt = Prompt(prompt_images(check_images(images)), embodiment, instruction)
        normalised = self.normalized_chunk(prompt, normalized_state(state, stats, mask), seed)
        return {"actions": absolute_actions(normalised[None], state[None], stats, mask[None])[0]}
