"""Knowledge Matching (METHOD.md §6, paper §III-E2): keep the token policy that conditions CLAP-RF close to a
frozen NTP reference while the RF head and the backbone train on robot chunks, installed as
``clap_data.training.knowledge_matching``.

Why: fine-tuning the backbone for continuous control alone forgets what NTP pretraining (human videos included)
put into it; a KL term on the ground-truth answer anchors the backbone's token distribution to the reference at
little cost (one more forward, no backward, of the frozen copy). The post-training loss is
``L_RF + α · mean KL(p_ref ‖ p_policy)`` over the answer positions (:func:`answer_kl`, :func:`km_loss`; release
α = :data:`DEFAULT_ALPHA`). Knowledge Insulation (the paper's ablation) is the other end: the backbone frozen, run
without gradients, α = 0 — no reference is needed then.

Direction and reduction: METHOD.md §6 (the release's convention, with which α = 0.005 was tuned) is the mean of
``KL(p_ref ‖ p_policy)`` over the answer positions; the paper's eq. 7 writes the reverse KL
``KL(p_policy ‖ p_ref)`` summed over positions. We follow METHOD.md; both are zero at the reference and anchor the
policy to it, but α means something different under each.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from clap_data.errors import ClapDataError
from clap_data.training.prompts import IGNORE_INDEX

DEFAULT_ALPHA = 0.005  # METHOD.md §6, the release's KM weight


def answer_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``mean KL(p_ref ‖ p_policy)`` over the labelled (answer) positions of a batch, in float32.

    Convention (transformers' causal-LM loss, and :func:`clap_data.training.prompts.encode`'s labels): ``labels
    [B, T]`` are aligned with the input ids — the answer's own ids at its positions, ``ignore_index`` elsewhere —
    and the logits ``[B, T, V]`` at position i predict token i + 1. So the logits at i are compared where
    ``labels[:, i + 1]`` is not ignored; the last position's logits and the first label never count. Only those
    rows are gathered before the float32 log-softmax (the full ``[B, T, V]`` in float32 would be the largest tensor
    of the step). The reference is detached: gradients reach the policy logits only. No labelled position: 0.
    """
    keep = labels[:, 1:] != ignore_index
    policy = F.log_softmax(policy_logits[:, :-1][keep].float(), dim=-1)
    reference = F.log_softmax(reference_logits.detach()[:, :-1][keep].float(), dim=-1)
    kl = F.kl_div(policy, reference, log_target=True, reduction="sum")  # Σ p_ref · (log p_ref − log p_policy)
    return kl / keep.sum().clamp_min(1)


def frozen_reference(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with no trainable parameter: the KM reference.

    Memory: one more copy of the weights (and buffers) on the model's device — no gradients (any ``.grad`` the
    original holds is not carried over), no optimizer state, and, run under ``torch.no_grad``, no activations kept
    for a backward. Take it before the original is wrapped (DDP) or given to an optimizer."""
    reference = copy.deepcopy(model)
    for parameter in reference.parameters():
        parameter.grad = None
    return reference.eval().requires_grad_(False)


def km_loss(rf_loss: torch.Tensor, kl: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """The post-training loss ``L_RF + α · KL`` (paper eq. 7 and below)."""
    if alpha < 0:
        raise ClapDataError(f"the Knowledge Matching weight α must be ≥ 0, got {alpha}")
    return rf_loss + alpha * kl
