"""The sigmoid contrastive loss of SigLIP (Zhai et al. 2023), as the VD-VAE uses it (METHOD.md §4, paper Eq. 3).

Why a module of its own: it is a pure function of two batches of vectors and two scalars, so it can be checked
against an independent computation without building a model.

Convention: ``N`` items with anchors ``x_i`` and positives ``y_i``; ``logits_ij = exp(t)·cos(x_i, y_j) + b``;
label +1 on the diagonal, −1 elsewhere; the loss is ``−Σ_ij log σ(label_ij · logits_ij) / N`` — SigLIP's
normalisation (per anchor: its positive term plus the sum over its ``N − 1`` negatives, averaged over anchors).
Over the full ``N × N`` matrix that is also the mean of the two directions (anchor ``x`` against every ``y``,
and anchor ``y`` against every ``x``), i.e. the symmetric loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_contrastive_loss(
    anchors: torch.Tensor, positives: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP loss of ``anchors [N, E]`` against ``positives [N, E]`` (both L2-normalised here).

    ``logit_scale`` is ``t`` (the temperature is ``exp(t)``), ``logit_bias`` is ``b``. No items gives a zero that
    still depends on ``t`` and ``b``, so a batch without active arms backpropagates without special cases.
    """
    if anchors.shape != positives.shape or anchors.dim() != 2:
        shapes = f"{list(anchors.shape)}, {list(positives.shape)}"
        raise ValueError(f"expected anchors and positives [N, E] alike, got {shapes}")
    n = anchors.shape[0]
    if n == 0:
        return (logit_scale + logit_bias) * 0.0
    x = F.normalize(anchors, dim=-1)
    y = F.normalize(positives.to(x.dtype), dim=-1)
    logits = logit_scale.exp() * (x @ y.t()) + logit_bias
    labels = 2.0 * torch.eye(n, device=x.device, dtype=x.dtype) - 1.0
    return -F.logsigmoid(labels * logits).sum() / n
