"""The released OpenCLAP Act-VAE network, op for op (METHOD.md §3, "The release network, op for op").

Why a second network beside clap-data's own: the release's checkpoints must load tensor for tensor and
compute what they computed, so the layout, the names (``docs/reference/openclap_act_vae_state_dict.txt``)
and every op follow the release, not our taste. ``ActVAE`` (``architecture="openclap"``) holds it as
``action_vae`` and quantises between its two halves; all tensors here are batch **second** ``[L, B, width]``
inside the network, as in the release, and batch first at its two ends.

* Encoder: ``skel_embedding`` Linear(7→width) per step; ``Nq`` learned register tokens
  (``global_motion_token``) prepended; ``+ query_pos_encoder.pe[:L]``; a skip-connected stack + norm; the
  first ``Nq`` outputs → ``dist_layer`` → ``to_codebook`` [Linear, GELU, Linear(width→code_dim)] = ``z_e``.
* Decoder: ``from_codebook`` [Linear(code_dim→width), GELU, Linear] on the ``Nq`` code vectors, 32 **zero**
  queries appended, ``+ query_pos_decoder.pe[:L]``; the same kind of stack + norm; the last 32 outputs →
  ``final_layer`` Linear(width→7).
* The stack (:class:`SkipTransformer`): post-norm ``nn.TransformerEncoderLayer``s (``nn.MultiheadAttention``,
  GELU) in a U shape: ``(layers − 1) / 2`` input blocks whose outputs are pushed on a stack, a middle block,
  as many output blocks, each fed ``linear_blocks[i](concat(x, popped skip))``; then a LayerNorm.

Initialisation only matters when training from scratch (an imported checkpoint replaces every tensor). It
follows the motion VAE whose layout the release keeps: PyTorch's defaults, xavier-uniform matrices in the
stacks, position tables U(0, 1), register tokens N(0, 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from clap_data.models.act_vae import ActVAEConfig

POSITION_ROWS = 500  # rows of the release's learned position tables: sequences up to Nq + chunk_size ≤ 500


def skip_blocks(layers: int, which: str) -> int:
    """Input (= output) blocks of a skip stack of ``layers`` layers; only odd counts have a middle block."""
    if layers % 2 == 0:
        raise ValueError(
            f"the openclap architecture needs an odd number of {which} layers ((n − 1)/2 input blocks, a middle "
            f"block and (n − 1)/2 output blocks, e.g. 15), got {layers}"
        )
    return (layers - 1) // 2


class LearnedPositions(nn.Module):
    """A learned table ``pe [500, 1, width]`` whose first ``L`` rows are added to a sequence ``[L, B, width]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pe = nn.Parameter(torch.empty(POSITION_ROWS, 1, width))
        nn.init.uniform_(self.pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[0]]


class SkipTransformer(nn.Module):
    """The release's U-shaped stack of post-norm encoder layers over ``[L, B, width]`` (module docstring)."""

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float, layers: int, which: str) -> None:
        super().__init__()
        blocks = skip_blocks(layers, which)

        def layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=feedforward, dropout=dropout, activation="gelu", norm_first=False
            )

        self.input_blocks = nn.ModuleList(layer() for _ in range(blocks))
        self.middle_block = layer()
        self.output_blocks = nn.ModuleList(layer() for _ in range(blocks))
        self.linear_blocks = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.input_blocks:
            x = block(x)
            skips.append(x)
        x = self.middle_block(x)
        for linear, block in zip(self.linear_blocks, self.output_blocks, strict=True):
            x = block(linear(torch.cat([x, skips.pop()], dim=-1)))
        return self.norm(x)


class OpenCLAPActionVAE(nn.Module):
    """The release's encoder and decoder (no codebook: ``ActVAE`` quantises between them)."""

    def __init__(self, config: ActVAEConfig) -> None:
        super().__init__()
        c = config
        feedforward = int(round(c.width * c.mlp_ratio))
        self.num_queries, self.chunk_size, self.width = c.num_queries, c.chunk_size, c.width
        self.skel_embedding = nn.Linear(c.action_dim, c.width)
        self.global_motion_token = nn.Parameter(torch.randn(c.num_queries, c.width))
        self.query_pos_encoder = LearnedPositions(c.width)
        self.query_pos_decoder = LearnedPositions(c.width)
        self.encoder = SkipTransformer(c.width, c.heads, feedforward, c.dropout, c.encoder_layers, "encoder")
        self.decoder = SkipTransformer(c.width, c.heads, feedforward, c.dropout, c.decoder_layers, "decoder")
        self.dist_layer = nn.Linear(c.width, c.width)
        self.to_codebook = nn.Sequential(nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, c.code_dim))
        self.from_codebook = nn.Sequential(nn.Linear(c.code_dim, c.width), nn.GELU(), nn.Linear(c.width, c.width))
        self.final_layer = nn.Linear(c.width, c.action_dim)

    def encode(self, chunks: torch.Tensor) -> torch.Tensor:
        """One-arm chunks ``[B, 32, 7]`` -> ``z_e [B, Nq, code_dim]``."""
        steps = self.skel_embedding(chunks).transpose(0, 1)  # [32, B, width]
        registers = self.global_motion_token[:, None, :].expand(-1, steps.shape[1], -1)
        h = self.encoder(self.query_pos_encoder(torch.cat([registers, steps], dim=0)))
        return self.to_codebook(self.dist_layer(h[: self.num_queries])).transpose(0, 1)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Code vectors ``[B, Nq, code_dim]`` -> one-arm chunks ``[B, 32, 7]``."""
        codes = self.from_codebook(z_q).transpose(0, 1)  # [Nq, B, width]
        queries = codes.new_zeros(self.chunk_size, codes.shape[1], self.width)
        h = self.decoder(self.query_pos_decoder(torch.cat([codes, queries], dim=0)))
        return self.final_layer(h[-self.chunk_size :]).transpose(0, 1)
