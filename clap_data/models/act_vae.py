"""Act-VAE: the stage-1 action tokenizer of CLAP (paper §III-C1, Table V, Table IX; docs/METHOD.md §3).

A VQ-VAE over **one arm's** normalised chunk ``[32, 7]`` (Δp, ΔEuler, gripper; about [-1, 1]). Both arms
of a dual-arm chunk ``[32, 14]`` (left = dims 0:7, right = dims 7:14) are encoded separately with the same
weights, giving ``Nq`` codes per arm. ``ActVAEConfig.architecture`` chooses the network between the
quantiser's two sides:

* ``"openclap"``: the released network, op for op (:mod:`clap_data.models.openclap_act_vae`), held as
  ``action_vae`` so the release's checkpoints load tensor for tensor. The ``release`` preset.
* ``"clap-data"``: this project's first network, which checkpoints written before the field existed hold
  (their ``config.json`` has no ``architecture``, so it is the default). The ``small`` preset.

  - Encoder: Linear(7→width) per step + learned step positions; ``Nq`` learned register tokens are
    prepended; a pre-norm transformer encoder runs over the joint sequence; the ``Nq`` register outputs →
    Linear(width→code_dim) = ``z_e``.
  - Decoder: the ``Nq`` code vectors → Linear(code_dim→width) + learned code positions, followed by 32
    learned queries (learned query vectors, which double as positions); the same kind of transformer; the
    last 32 outputs → Linear(width→7).

Both: ``z_e`` → nearest code (``VectorQuantizer``); straight-through estimator; loss
``||a − â||² + ||sg(z_e) − z_q||² + β·||z_e − sg(z_q)||²`` (each term a mean over elements). All positional
encodings are learned parameters, so they live on the module's device (nothing here names a device).

Token order: **storage** is per arm, left arm's ``Nq`` codes then the right arm's (``tokenize_dual``); the
**text** form fed to the policy puts the right arm's first (:mod:`clap_data.models.tokens`).

NB: this module deliberately does not use ``from __future__ import annotations``: huggingface_hub's mixin
reads the ``__init__`` annotation to rebuild the ``ActVAEConfig`` dataclass from ``config.json``.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from clap_data.models.openclap_act_vae import POSITION_ROWS, OpenCLAPActionVAE, skip_blocks
from clap_data.models.quantizer import VectorQuantizer

CLAP_DATA = "clap-data"
OPENCLAP = "openclap"
ARCHITECTURES = (CLAP_DATA, OPENCLAP)


@dataclass
class ActVAEConfig:
    """Hyper-parameters of the Act-VAE (METHOD.md §3); ``release()`` and ``small()`` are the presets.

    ``architecture`` defaults to ``"clap-data"`` because a ``config.json`` written before the field existed
    leaves it out and must rebuild the network it was trained with; the other defaults are the release's
    sizes except ``heads`` and ``mlp_ratio`` (the release: 4 and 2.0).
    """

    chunk_size: int = 32
    action_dim: int = 7
    num_queries: int = 8  # Nq codes per arm
    codebook_size: int = 512  # K
    code_dim: int = 128
    width: int = 512
    encoder_layers: int = 15
    decoder_layers: int = 15
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    beta: float = 1.0  # commitment weight
    codebook_lr_scale: float = 50.0  # Table IX: codebook lr 1e-3 vs VAE lr 2e-5
    dead_code_check_every: int = 2000  # steps between dead-code re-seeding
    # Where re-seeded codes come from: "live_codes" (METHOD.md §3: random live codes plus a little
    # noise) or "latents" (random encoder outputs of the current batch, which revives codes faster
    # on small data; the small preset uses it).
    reseed_from: str = "live_codes"
    architecture: str = CLAP_DATA  # "clap-data" or "openclap" (module docstring)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be {' or '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.reseed_from not in ("live_codes", "latents"):
            raise ValueError(f"reseed_from must be live_codes or latents, got {self.reseed_from!r}")
        if not 1 <= self.codebook_size <= torch.iinfo(torch.int16).max + 1:
            raise ValueError(f"codebook_size {self.codebook_size} does not fit int16 tokens")
        for name in ("chunk_size", "action_dim", "num_queries", "code_dim", "width", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.architecture == OPENCLAP:
            skip_blocks(self.encoder_layers, "encoder")
            skip_blocks(self.decoder_layers, "decoder")
            if self.num_queries + self.chunk_size > POSITION_ROWS:
                raise ValueError(
                    f"the openclap architecture's position tables have {POSITION_ROWS} rows, fewer than "
                    f"num_queries + chunk_size = {self.num_queries + self.chunk_size}"
                )

    @classmethod
    def release(cls) -> "ActVAEConfig":
        """The released network and settings: openclap, Nq 8 per arm, K 512, code dim 128, width 512, 4 heads,
        feed-forward 1024, 15 + 15 layers (71,941,767 parameters)."""
        return cls(architecture=OPENCLAP, heads=4, mlp_ratio=2.0)

    @classmethod
    def small(cls) -> "ActVAEConfig":
        """A clap-data network that trains on a CPU in minutes (tests, smoke runs)."""
        return cls(
            architecture=CLAP_DATA, num_queries=8, codebook_size=256, code_dim=64, width=128, encoder_layers=2,
            decoder_layers=2, heads=4, dead_code_check_every=50, reseed_from="latents",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _transformer(config: ActVAEConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=config.width,
        nhead=config.heads,
        dim_feedforward=int(round(config.width * config.mlp_ratio)),
        dropout=config.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,  # pre-norm
    )
    return nn.TransformerEncoder(
        layer, num_layers=layers, norm=nn.LayerNorm(config.width), enable_nested_tensor=False
    )


class ActVAE(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="clap-data",
    tags=["clap", "action-tokenizer", "vq-vae"],
):
    """VQ-VAE over one arm's action chunk; see the module docstring.

    ``ActVAE(config)`` takes an ``ActVAEConfig`` (or the equivalent dict, e.g. a parsed ``config.json``);
    ``save_pretrained(dir)`` writes ``model.safetensors`` + ``config.json`` and ``ActVAE.from_pretrained(dir)``
    rebuilds it.
    """

    def __init__(self, config: ActVAEConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = ActVAEConfig()
        elif isinstance(config, dict):
            config = ActVAEConfig(**{k: v for k, v in config.items() if k in ActVAEConfig.__dataclass_fields__})
        elif not isinstance(config, ActVAEConfig):
            raise TypeError(f"config must be an ActVAEConfig or a dict, got {type(config).__name__}")
        self.config = config
        self._hub_mixin_config = config  # what save_pretrained writes to config.json
        c = config
        if c.architecture == OPENCLAP:
            self.action_vae = OpenCLAPActionVAE(c)
            self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, c.codebook_lr_scale)
            nn.init.uniform_(self.quantizer.embedding.weight, -1.0 / c.codebook_size, 1.0 / c.codebook_size)
        else:
            self._build_clap_data_network()

    def _build_clap_data_network(self) -> None:
        """Today's network, its modules made in their original order (a seed gives the same initial weights)."""
        c = self.config
        # encoder
        self.step_embed = nn.Linear(c.action_dim, c.width)
        self.step_pos = nn.Parameter(torch.zeros(c.chunk_size, c.width))
        self.registers = nn.Parameter(torch.zeros(c.num_queries, c.width))
        self.encoder = _transformer(c, c.encoder_layers)
        self.to_latent = nn.Linear(c.width, c.code_dim)
        self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, c.codebook_lr_scale)
        # decoder
        self.from_code = nn.Linear(c.code_dim, c.width)
        self.code_pos = nn.Parameter(torch.zeros(c.num_queries, c.width))
        self.queries = nn.Parameter(torch.zeros(c.chunk_size, c.width))
        self.decoder = _transformer(c, c.decoder_layers)
        self.to_action = nn.Linear(c.width, c.action_dim)
        for p in (self.step_pos, self.registers, self.code_pos, self.queries):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ training helpers
    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: everything at ``base_lr``, the codebook at ``base_lr × codebook_lr_scale``."""
        codebook = self.quantizer.embedding.weight
        rest = [p for p in self.parameters() if p is not codebook]
        return [
            {"name": "model", "params": rest, "lr": base_lr},
            {"name": "codebook", "params": [codebook], "lr": base_lr * self.quantizer.codebook_lr_scale},
        ]

    def reseed_dead_codes(self, latents: torch.Tensor | None = None, generator: torch.Generator | None = None) -> int:
        """See ``VectorQuantizer.reseed_dead_codes`` (call every ``config.dead_code_check_every`` steps)."""
        return self.quantizer.reseed_dead_codes(latents, generator=generator)

    # ------------------------------------------------------------------ model
    def _check_chunks(self, chunks: torch.Tensor) -> None:
        c = self.config
        if chunks.dim() != 3 or tuple(chunks.shape[1:]) != (c.chunk_size, c.action_dim):
            raise ValueError(f"expected chunks [B, {c.chunk_size}, {c.action_dim}], got {list(chunks.shape)}")

    def encode_latents(self, chunks: torch.Tensor) -> torch.Tensor:
        """Continuous encoder outputs ``z_e [B, Nq, code_dim]`` for one-arm chunks ``[B, 32, 7]``."""
        self._check_chunks(chunks)
        chunks = chunks.to(self.quantizer.codebook.dtype)
        if self.config.architecture == OPENCLAP:
            return self.action_vae.encode(chunks)
        x = self.step_embed(chunks) + self.step_pos
        regs = self.registers.unsqueeze(0).expand(x.shape[0], -1, -1)
        h = self.encoder(torch.cat([regs, x], dim=1))
        return self.to_latent(h[:, : self.config.num_queries])

    def encode(self, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``chunks [B, 32, 7]`` -> ``(z_q [B, Nq, code_dim], indices int64 [B, Nq], losses)``.

        ``z_q`` carries the straight-through gradient; ``losses`` holds ``codebook``, ``commitment`` and
        ``z_e`` (the pre-quantisation latents, handy for reseeding dead codes).
        """
        z_e = self.encode_latents(chunks)
        z_q, indices, losses = self.quantizer(z_e)
        losses = dict(losses, z_e=z_e)
        return z_q, indices, losses

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Code vectors ``[B, Nq, code_dim]`` -> one-arm chunks ``[B, 32, 7]``."""
        c = self.config
        if z_q.dim() != 3 or tuple(z_q.shape[1:]) != (c.num_queries, c.code_dim):
            raise ValueError(f"expected code vectors [B, {c.num_queries}, {c.code_dim}], got {list(z_q.shape)}")
        if c.architecture == OPENCLAP:
            return self.action_vae.decode(z_q)
        codes = self.from_code(z_q) + self.code_pos
        queries = self.queries.unsqueeze(0).expand(z_q.shape[0], -1, -1)
        h = self.decoder(torch.cat([codes, queries], dim=1))
        return self.to_action(h[:, -c.chunk_size :])

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``[B, Nq]`` (any integer dtype) -> one-arm chunks ``[B, 32, 7]``."""
        if indices.dim() != 2 or indices.shape[1] != self.config.num_queries:
            raise ValueError(f"expected indices [B, {self.config.num_queries}], got {list(indices.shape)}")
        return self.decode(self.quantizer.lookup(indices.to(self.quantizer.codebook.device)))

    def forward(self, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruct ``chunks [B, 32, 7]``; returns ``recon, indices, loss, recon_mse, codebook_loss,
        commit_loss`` (and ``z_e``); ``loss = recon_mse + codebook_loss + β·commit_loss``."""
        z_q, indices, losses = self.encode(chunks)
        recon = self.decode(z_q)
        recon_mse = F.mse_loss(recon, chunks.to(recon.dtype))
        loss = recon_mse + losses["codebook"] + self.config.beta * losses["commitment"]
        return {
            "recon": recon,
            "indices": indices,
            "loss": loss,
            "recon_mse": recon_mse,
            "codebook_loss": losses["codebook"],
            "commit_loss": losses["commitment"],
            "z_e": losses["z_e"],
        }

    # ------------------------------------------------------------------ dual-arm tokens
    @torch.no_grad()
    def tokenize_dual(self, chunks14: torch.Tensor, arm_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised dual-arm chunks ``[B, 32, 14]`` -> int16 tokens ``[B, 2·Nq]`` (left's Nq, right's Nq).

        Runs in eval mode (usage counters untouched) without gradients. ``arm_mask [B, 2]`` (left, right;
        truthy = active) zeroes the inactive arm's input first. Choice: an inactive arm is **still encoded**
        (from its all-zero chunk), so every chunk has exactly ``2·Nq`` tokens and the "no motion" codes are
        the same everywhere; consumers use the arm mask, not the tokens, to know which arm is active.
        """
        c = self.config
        if chunks14.dim() != 3 or tuple(chunks14.shape[1:]) != (c.chunk_size, 2 * c.action_dim):
            raise ValueError(f"expected chunks [B, {c.chunk_size}, {2 * c.action_dim}], got {list(chunks14.shape)}")
        chunks14 = chunks14.to(self.quantizer.codebook.device, self.quantizer.codebook.dtype)
        if arm_mask is not None:
            if tuple(arm_mask.shape) != (chunks14.shape[0], 2):
                raise ValueError(f"expected arm_mask [{chunks14.shape[0]}, 2], got {list(arm_mask.shape)}")
            keep = arm_mask.to(chunks14.device).bool().to(chunks14.dtype)
            keep = keep.repeat_interleave(c.action_dim, dim=1)[:, None, :]
            chunks14 = chunks14 * keep
        b = chunks14.shape[0]
        arms = torch.cat([chunks14[..., : c.action_dim], chunks14[..., c.action_dim :]], dim=0)  # [2B, 32, 7]
        was_training = self.training
        self.eval()
        try:
            indices = self.quantizer.nearest(self.encode_latents(arms))  # [2B, Nq]
        finally:
            self.train(was_training)
        return torch.cat([indices[:b], indices[b:]], dim=1).to(torch.int16)

    @torch.no_grad()
    def detokenize_dual(self, tokens: torch.Tensor) -> torch.Tensor:
        """int tokens ``[B, 2·Nq]`` (left's Nq, right's Nq) -> normalised chunks ``[B, 32, 14]``."""
        nq = self.config.num_queries
        if tokens.dim() != 2 or tokens.shape[1] != 2 * nq:
            raise ValueError(f"expected tokens [B, {2 * nq}], got {list(tokens.shape)}")
        was_training = self.training
        self.eval()
        try:
            b = tokens.shape[0]
            arms = self.decode_indices(torch.cat([tokens[:, :nq], tokens[:, nq:]], dim=0))
        finally:
            self.train(was_training)
        return torch.cat([arms[:b], arms[b:]], dim=-1)
