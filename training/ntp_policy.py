"""Acting with a trained CLAP-NTP checkpoint: images + instruction + state → the next 32 absolute actions.

    from clap_data.training import NTPPolicy

    policy = NTPPolicy.from_pretrained("ckpt/")          # the Act-VAE recorded in the checkpoint
    out = policy.predict({"head": rgb, "wrist_right": rgb2}, "pick up the cup", "S1-stationary", state14)
    out["subtask"], out["tokens"], out["actions"]       # str, int16 [2·Nq] storage order, float64 [32, 14]

Greedy decoding of ``Subtask: …\\nAction: <ACT_i>×2·Nq`` (METHOD.md §5) held to that grammar (once ``Action:`` is
written, exactly 2·Nq action tokens: :mod:`clap_data.training.answer_grammar`), the tokens parsed strictly
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
from transformers import LogitsProcessorList

from clap_data.act_vae.decoding import detokenize
from clap_data.act_vae.training import pick_device
from clap_data.models import ActVAE
from clap_data.training.answer_grammar import AnswerGrammar
from clap_data.training.ntp_checkpoint import read_policy_meta
from clap_data.training.policy_base import CheckpointPolicy, check_images, checked_act_vae, load_policy_vlm
from clap_data.training.prompts import Prompt, encode, parse_answer, prompt_images

SUBTASK_TOKEN_BUDGET = 64  # generated tokens allowed beyond the action tokens (the subtask and the framing)


class NTPPolicy(CheckpointPolicy):
    """A CLAP-NTP checkpoint ready to act (see the module docstring)."""

    def __init__(self, model: Any, processor: Any, act_vae: ActVAE, meta: dict[str, Any], device: torch.device,
                 ckpt: Path) -> None:
        super().__init__(meta, device, ckpt)
        self.model, self.processor, self.act_vae = model, processor, act_vae
        self.num_queries = int(meta["num_queries"])
        self.codebook_size = int(meta["codebook_size"])
        self.max_new_tokens = 2 * self.num_queries + SUBTASK_TOKEN_BUDGET

    @classmethod
    def from_pretrained(cls, ckpt: str | Path, act_vae: str | Path | None = None, device: str = "auto") -> NTPPolicy:
        """Load a checkpoint of ``clap-data train ntp``; ``act_vae`` overrides the recorded Act-VAE folder."""
        ckpt = Path(ckpt)
        meta = read_policy_meta(ckpt)
        torch_device = pick_device(device)
        vae, _ = checked_act_vae(ckpt, meta, act_vae, torch_device)
        model, processor = load_policy_vlm(ckpt, meta, torch_device)
        return cls(model, processor, vae, meta, torch_device, ckpt)

    def _end_ids(self) -> list[int]:
        """The tokens that end the answer (the generation config's end-of-sequence ids, else the tokenizer's)."""
        ends = self.model.generation_config.eos_token_id
        ends = self.processor.tokenizer.eos_token_id if ends is None else ends
        return [int(e) for e in (ends if isinstance(ends, list) else [ends])]

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        """Greedy answers (special tokens removed) to a batch of prompts, held to the answer's grammar
        (:mod:`clap_data.training.answer_grammar`)."""
        inputs = encode(self.processor, prompts, padding_side="left")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        grammar = AnswerGrammar(self.processor.tokenizer, int(self.meta["action_token_first_id"]), self.codebook_size,
                                2 * self.num_queries, self._end_ids(), inputs["input_ids"].shape[1])
        cuda = self.device.type == "cuda"
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      logits_processor=LogitsProcessorList([grammar]))
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def actions(self, tokens: Any, embodiment: str, state: Any, arm_mask: Any = None) -> NDArray[np.float64]:
        """Storage-order tokens → the absolute chunk ``[32, 14]`` from ``state`` (the 14-D state at the chunk's
        first frame), with the embodiment's statistics and arm mask (``arm_mask`` overrides the latter)."""
        state, mask, stats = self.robot_context(embodiment, state, arm_mask)
        return detokenize(self.act_vae, np.asarray(tokens), state, stats, mask)

    def predict(self, images: Mapping[str, np.ndarray], instruction: str, embodiment: str, state: Any,
                arm_mask: Any = None) -> dict[str, Any]:
        """One control step (see the module docstring); images: unified camera name → H×W×3 uint8, any size."""
        state, mask, stats = self.robot_context(embodiment, state, arm_mask)
        prompt = Prompt(prompt_images(check_images(images)), embodiment, instruction)
        subtask, tokens = parse_answer(self.generate([prompt])[0], self.num_queries, self.codebook_size)
        return {"subtask": subtask, "tokens": tokens.numpy().astype(np.int16),
                "actions": detokenize(self.act_vae, tokens.numpy(), state, stats, mask)}
