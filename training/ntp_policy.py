"""Acting with a trained CLAP-NTP checkpoint: images + instruction + state → the next 32 absolute actions.

    from clap_data.training import NTPPolicy

    policy = NTPPolicy.from_pretrained("ckpt/")          # the Act-VAE recorded in the checkpoint
    out = policy.predict({"head": rgb, "wrist_right": rgb2}, "pick up the cup", "S1-stationary", state14)
    out["subtask"], out["tokens"], out["actions"]       # str, int16 [2·Nq] storage order, float64 [32, 14]

Greedy decoding of ``Subtask: …\\nAction: <ACT_i>×2·Nq`` (METHOD.md §5), the tokens parsed strictly
(:func:`clap_data.training.prompts.parse_answer`: a malformed answer raises :class:`ClapDataError`, never a partial
chunk), decoded by the Act-VAE decoder, denormalised with the embodiment's statistics recorded at training and made
absolute from ``state`` — all 32 steps (METHOD.md §7: the public release decoded one). The arm mask follows from
the embodiment: the arms its training samples moved (``arm_mask=`` for an embodiment the policy never saw). The
Act-VAE must be the one the policy was trained with (same sha256): codes of one codebook mean nothing to another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.decoding import detokenize
from clap_data.act_vae.training import pick_device
from clap_data.actions import HUMAN, NormStats
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE
from clap_data.schemas.shards_v1 import CAMERAS_IN_PROMPT_ORDER
from clap_data.training.ntp_checkpoint import read_policy_meta
from clap_data.training.ntp_data import norm_stats
from clap_data.training.ntp_model import ACTION_TOKEN, load_vlm
from clap_data.training.prompts import Prompt, encode, parse_answer, prompt_images

SUBTASK_TOKEN_BUDGET = 64  # generated tokens allowed beyond the action tokens (the subtask and the framing)


def _check_images(images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
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


class NTPPolicy:
    """A CLAP-NTP checkpoint ready to act (see the module docstring)."""

    def __init__(self, model: Any, processor: Any, act_vae: ActVAE, meta: dict[str, Any], device: torch.device,
                 ckpt: Path) -> None:
        self.model, self.processor, self.act_vae, self.meta, self.device, self.ckpt = (
            model, processor, act_vae, meta, device, ckpt)
        self.num_queries = int(meta["num_queries"])
        self.codebook_size = int(meta["codebook_size"])
        self.max_new_tokens = 2 * self.num_queries + SUBTASK_TOKEN_BUDGET

    @classmethod
    def from_pretrained(cls, ckpt: str | Path, act_vae: str | Path | None = None, device: str = "auto") -> NTPPolicy:
        """Load a checkpoint of ``clap-data train ntp``; ``act_vae`` overrides the recorded Act-VAE folder."""
        ckpt = Path(ckpt)
        meta = read_policy_meta(ckpt)
        where = act_vae if act_vae is not None else meta["act_vae"].get("checkpoint")
        if where is None:
            raise ClapDataError(f"{ckpt} records no Act-VAE folder; pass act_vae= (clap-data: --act-vae)")
        torch_device = pick_device(device)
        vae, sha = load_act_vae(Path(where), str(torch_device))
        if sha != meta["act_vae"]["checkpoint_sha256"]:
            raise ClapDataError(f"the Act-VAE at {where} (sha256 {sha[:16]}…) is not the one {ckpt} was trained with "
                                f"({meta['act_vae']['checkpoint_sha256'][:16]}…)")
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
        model, processor = load_vlm(str(ckpt), dtype=dtype)
        first = processor.tokenizer.convert_tokens_to_ids(ACTION_TOKEN.format(0))
        if first != meta["action_token_first_id"]:
            raise ClapDataError(f"{ckpt}: the tokenizer's <ACT_0> has id {first}, not the "
                                f"{meta['action_token_first_id']} it was trained with")
        return cls(model.to(torch_device).eval(), processor, vae, meta, torch_device, ckpt)

    def stats(self, embodiment: str) -> NormStats:
        return norm_stats(self.meta["statistics"], embodiment, f"the checkpoint {self.ckpt}")

    def arm_mask(self, embodiment: str) -> NDArray[np.float64]:
        known = self.meta["embodiments"]
        if embodiment not in known:
            raise ClapDataError(f"{self.ckpt} was not trained on embodiment {embodiment!r} (it knows "
                                f"{', '.join(sorted(known))}); pass arm_mask=[left, right]")
        return np.asarray(known[embodiment]["arm_mask"], dtype=np.float64)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        """Greedy answers (special tokens removed) to a batch of prompts."""
        inputs = encode(self.processor, prompts, padding_side="left")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        cuda = self.device.type == "cuda"
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _context(self, embodiment: str, state: Any,
                 arm_mask: Any) -> tuple[NDArray[np.float64], NDArray[np.float64], NormStats]:
        """The state, arm mask and statistics a chunk of ``embodiment`` is made absolute with, checked."""
        if embodiment == HUMAN:
            raise ClapDataError("human is not a robot: it has no state and no statistics to act with")
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (14,):
            raise ClapDataError(f"state must be the 14-D canonical state, got shape {list(state.shape)}")
        mask = self.arm_mask(embodiment) if arm_mask is None else np.asarray(arm_mask, dtype=np.float64).reshape(2)
        return state, mask, self.stats(embodiment)

    def actions(self, tokens: Any, embodiment: str, state: Any, arm_mask: Any = None) -> NDArray[np.float64]:
        """Storage-order tokens → the absolute chunk ``[32, 14]`` from ``state`` (the 14-D state at the chunk's
        first frame), with the embodiment's statistics and arm mask (``arm_mask`` overrides the latter)."""
        state, mask, stats = self._context(embodiment, state, arm_mask)
        return detokenize(self.act_vae, np.asarray(tokens), state, stats, mask)

    def predict(self, images: Mapping[str, np.ndarray], instruction: str, embodiment: str, state: Any,
                arm_mask: Any = None) -> dict[str, Any]:
        """One control step (see the module docstring); images: unified camera name → H×W×3 uint8, any size."""
        state, mask, stats = self._context(embodiment, state, arm_mask)
        prompt = Prompt(prompt_images(_check_images(images)), embodiment, instruction)
        subtask, tokens = parse_answer(self.generate([prompt])[0], self.num_queries, self.codebook_size)
        return {"subtask": subtask, "tokens": tokens.numpy().astype(np.int16),
                "actions": detokenize(self.act_vae, tokens.numpy(), state, stats, mask)}
