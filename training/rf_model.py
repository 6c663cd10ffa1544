"""CLAP-RF as one module: the NTP backbone (a ``transformers`` VLM) and the RF head
(:mod:`clap_data.training.rf_head`), with what decides which of the VLM's positions the head reads.

Why one module: DDP must wrap everything that trains in one ``forward`` (it syncs gradients from there), the
training state must hold the backbone and the head together, and training and acting must feed the head the same
context. That context is the chosen layers' hidden states at the **prompt** positions only
(:func:`prompt_mask`): at inference only the prompt is fed (images, embodiment, instruction, and the generation
prompt that opens the assistant's turn), and because the VLM's attention is causal, a prompt position's hidden
state is the same whether or not the answer follows it — so training may run the VLM once on prompt + answer (the
KL of Knowledge Matching needs the answer) and still show the head exactly what it will see when acting. The
positions that come after the answer's first token (the answer, its end-of-turn token and whatever the chat
template writes after it) never reach the head; neither does padding.

Knowledge Insulation (``insulated``): the backbone is frozen, runs without gradients and stays in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clap_data.training.prompts import IGNORE_INDEX
from clap_data.training.rf_head import RFHead, flow_matching_loss, sample_actions, select_context


def prompt_mask(attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` True at each row's prompt positions: real tokens before the row's first labelled one (the
    answer's first token; :func:`clap_data.training.prompts.encode` labels the answer only)."""
    return attention_mask.bool() & ((labels != IGNORE_INDEX).cumsum(dim=1) == 0)


def answer_window(labels: torch.Tensor) -> int:
    """How many trailing positions' logits predict some answer token: from the position before the earliest
    answer token of the batch to the end (``logits_to_keep``: the rest of ``[B, T, V]`` is never made)."""
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    return labels.shape[1] - int(labelled[0]) + 1 if len(labelled) else 1


class RFModel(nn.Module):
    """The backbone ``vlm`` and the ``head``; see the module docstring."""

    def __init__(self, vlm: nn.Module, head: RFHead, insulated: bool = False) -> None:
        super().__init__()
        self.vlm, self.head, self.insulated = vlm, head, insulated
        if insulated:
            vlm.requires_grad_(False)

    def train(self, mode: bool = True) -> RFModel:
        super().train(mode)
        if self.insulated:
            self.vlm.eval()
        return self

    def backbone(self, inputs: dict[str, torch.Tensor], logits_to_keep: int) -> tuple[list[torch.Tensor], Any]:
        """The VLM on ``inputs`` (no labels): the head's context layers and the last ``logits_to_keep`` positions'
        logits; without gradients when insulated."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.insulated):
            out = self.vlm(**inputs, output_hidden_states=True, logits_to_keep=logits_to_keep)
        return select_context(out.hidden_states, self.head.config), out.logits

    def forward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, state: torch.Tensor,
                actions: torch.Tensor, arm_mask: torch.Tensor, generator: torch.Generator,
                logits_to_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow-matching loss of the normalised ``actions [B, 32, 14]`` given the normalised ``state [B, 14]``
        and the prompt's context, and the VLM's logits at the last ``logits_to_keep`` positions (for the KL)."""
        context, logits = self.backbone(inputs, logits_to_keep)
        mask = prompt_mask(inputs["attention_mask"], labels)
        loss, _ = flow_matching_loss(self.head, actions, state, context, mask, arm_mask, generator)
        return loss, logits

    @torch.no_grad()
    def sample(self, inputs: dict[str, torch.Tensor], state: torch.Tensor, steps: int,
               generator: torch.Generator) -> torch.Tensor:
        """A normalised chunk ``[B, 32, 14]`` for prompts alone (``inputs`` of
        :func:`clap_data.training.prompts.encode` without answers): ``steps`` Euler steps from noise of
        ``generator``."""
        context, _ = self.backbone(inputs, logits_to_keep=1)
        return sample_actions(self.head, state, context, inputs["attention_mask"].bool(), steps, generator)
