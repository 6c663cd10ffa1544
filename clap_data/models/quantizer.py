"""Vector quantiser with a gradient-trained codebook (VQ-VAE, van den Oord et al. 2017).

Conventions
-----------
* Distances are squared L2, expanded as ``||z||² − 2·z·c + ||c||²`` (one matrix product); the nearest code
  wins (ties go to the lowest index, ``argmin``). The release picks by ``torch.cdist`` + ``argmin``: the
  same code, as the square root is monotonic, except where two codes are equally near to within float
  rounding (the two sums round differently, and cdist clamps negative squares to 0 before its root).
* ``codebook = ||sg(z_e) - z_q||²`` and ``commitment = ||z_e - sg(z_q)||²`` are returned as **means over
  all latent elements** (i.e. MSE); β is applied by the caller.
* The codebook is an ``nn.Embedding`` trained by gradient. ``codebook_lr_scale`` (release: ×50) tells the
  training code to give it its own, larger learning rate (see ``ActVAE.param_groups``).
* Usage tracking: ``usage`` counts code hits made **in training mode** since the last
  ``reseed_dead_codes`` call (evaluation / tokenisation does not count). The buffer is not persistent, so a
  checkpoint holds only weights and its sha256 depends on nothing but the weights; the training state
  (``clap_data.train_state``) saves it, since the next re-seeding reads it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of latents ``[..., code_dim]`` against ``num_codes`` codes."""

    def __init__(self, num_codes: int, code_dim: int, codebook_lr_scale: float = 50.0) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(f"num_codes and code_dim must be positive, got {num_codes}, {code_dim}")
        self.num_codes = int(num_codes)
        self.code_dim = int(code_dim)
        self.codebook_lr_scale = float(codebook_lr_scale)
        self.embedding = nn.Embedding(self.num_codes, self.code_dim)
        nn.init.normal_(self.embedding.weight, std=1.0 / self.code_dim**0.5)
        self.register_buffer("usage", torch.zeros(self.num_codes, dtype=torch.int64), persistent=False)

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors ``[K, code_dim]`` (a view of the trainable weight)."""
        return self.embedding.weight

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index (int64) of the nearest code for each latent ``[..., code_dim]`` -> ``[...]``."""
        if z_e.shape[-1] != self.code_dim:
            raise ValueError(f"latents end in {z_e.shape[-1]} dims, the codebook has {self.code_dim}")
        flat = z_e.detach().reshape(-1, self.code_dim).to(self.codebook.dtype)
        codes = self.codebook.detach()
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True) - 2.0 * flat @ codes.t() + codes.pow(2).sum(dim=1)[None, :]
        )
        return distances.argmin(dim=1).reshape(z_e.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for ``indices [...]`` -> ``[..., code_dim]`` (any integer dtype)."""
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"code indices must lie in [0, {self.num_codes}), got {int(indices.min())}..{int(indices.max())}")
        return self.embedding(indices)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantise ``z_e [..., code_dim]``.

        Returns ``(z_q_st, indices, losses)``: ``z_q_st`` equals the chosen codes in value but passes the
        gradient straight through to ``z_e``; ``indices`` int64 ``[...]``; ``losses`` has ``codebook`` and
        ``commitment`` (scalars, means over elements).
        """
        indices = self.nearest(z_e)
        z_q = self.embedding(indices)
        losses = {
            "codebook": F.mse_loss(z_q, z_e.detach()),
            "commitment": F.mse_loss(z_e, z_q.detach()),
        }
        z_q_st = z_e + (z_q - z_e).detach()
        if self.training:
            with torch.no_grad():
                self.usage += torch.bincount(indices.reshape(-1), minlength=self.num_codes)
        return z_q_st, indices, losses

    @torch.no_grad()
    def reseed_dead_codes(self, latents: torch.Tensor | None = None, generator: torch.Generator | None = None) -> int:
        """Replace every code not hit since the last check, then reset the counter.

        New values are random rows of ``latents`` (encoder outputs ``[..., code_dim]``, e.g. the current
        batch's ``z_e``) when given, else random live codes plus a little noise (an exact copy would always
        lose the ``argmin`` tie to its original). Returns how many codes were reseeded. If nothing is live and
        no latents are given, nothing is changed.
        """
        dead = self.usage == 0
        n_dead = int(dead.sum())
        weight = self.embedding.weight
        if n_dead:
            if latents is not None and latents.numel():
                pool = latents.detach().reshape(-1, self.code_dim).to(weight.dtype)
                noise_scale = 0.0
            else:
                pool = weight[~dead].detach().clone()
                noise_scale = 1e-2
            if pool.shape[0] == 0:
                self.usage.zero_()
                return 0
            pick = torch.randint(pool.shape[0], (n_dead,), generator=generator, device="cpu").to(pool.device)
            new = pool[pick]
            if noise_scale:
                spread = new.std() if new.numel() > 1 else new.new_tensor(1.0)
                noise = torch.randn(new.shape, generator=generator, device="cpu").to(new.device, new.dtype)
                new = new + noise * noise_scale * spread.clamp_min(1e-6)
            weight[dead] = new
        self.usage.zero_()
        return n_dead

    def usage_fraction(self) -> float:
        """Fraction of codes hit (in training mode) since the last check."""
        return float((self.usage > 0).float().mean())


def perplexity_from_counts(counts: torch.Tensor | np.ndarray) -> float:
    """``exp(H)`` of a code histogram ``[K]``; uniform usage of K codes gives K. Counting lets a
    whole corpus be scored without holding its indices."""
    counts = torch.as_tensor(counts).double()
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def perplexity(indices: torch.Tensor, num_codes: int) -> float:
    """``exp(H)`` of the empirical code distribution of ``indices``."""
    return perplexity_from_counts(torch.bincount(indices.reshape(-1).long(), minlength=num_codes))


def code_usage(indices: torch.Tensor, num_codes: int) -> float:
    """Fraction of the ``num_codes`` codes that appear at least once in ``indices``."""
    return float(torch.unique(indices.reshape(-1).long()).numel()) / float(num_codes)
