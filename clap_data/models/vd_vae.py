"""VD-VAE: the stage-2 inverse-dynamics tokenizer of CLAP (paper §III-C2, Algorithm 2; docs/METHOD.md §4).

From the frozen backbone's patch tokens of two frames ``(o_t, o_{t+gap})`` (``[B, 2, P, D]``; the backbone runs
outside this module, once per frame) it infers the ``2·Nq`` action codes of the chunk between them, quantised
with the **frozen Act-VAE codebook**, so human video gets the same tokens as robot actions.

* Inverse encoder (:class:`InverseEncoder`): patches → Linear(D→width) + learned patch positions; per frame,
  ``env_tokens`` environment slots then ``2·Nq`` action slots (left arm's ``Nq``, then the right's) are
  prepended, plus a learned frame embedding; pre-norm **factorised blocks**: spatial self-attention within a
  frame, causal temporal attention across the two frames per token slot (frame t+gap sees t and itself, frame
  t only itself), FFN. The slot outputs at frame t+gap → Linear(width→code_dim): ``z_action``, ``z_env``.
* Quantisation: ``z_action`` against the Act-VAE's codebook, held by a ``VectorQuantizer`` whose weight is
  frozen (``requires_grad`` off: no optimizer moves it); ``z_env`` against its own trainable codebook.
  Straight-through; codebook + commitment terms of both (each a mean over elements).
* Forward decoder (:class:`ForwardDecoder`, spatial attention only): the quantised codes (Linear(code_dim→
  width) + learned slot embeddings) followed by frame t's patches → predicted frame-(t+gap) patches; MSE in
  the backbone's feature space.
* SigLIP over active arms (:mod:`clap_data.models.siglip`): an item is one arm's ``Nq`` continuous latents
  concatenated (``Nq·code_dim``); its positive is the ground-truth chunk's Act-VAE latents for a robot item,
  the EMA teacher's latents of the same slots on the un-augmented frames for a human item.
* L1 on the quantised env codes (straight-through, so its gradient reaches ``z_env`` as the paper's
  ``‖z_v,i‖₁`` does). ``loss = mse + q + β·commit + siglip_weight·siglip + l1_weight·l1``.

The EMA teacher is a frozen copy of the inverse encoder, a submodule, so a checkpoint holds it and training
can resume from one; pseudo-tokens use the online encoder only.

NB: this module deliberately does not use ``from __future__ import annotations``: huggingface_hub's mixin
reads the ``__init__`` annotation to rebuild the ``VDVAEConfig`` dataclass from ``config.json``.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from clap_data.models.act_vae import ActVAE
from clap_data.models.checkpoint import load_model
from clap_data.models.quantizer import VectorQuantizer
from clap_data.models.siglip import sigmoid_contrastive_loss

FRAMES = 2  # (o_t, o_{t+gap})


@dataclass
class VDVAEConfig:
    """Hyper-parameters of the VD-VAE (METHOD.md §4); ``release()`` and ``small()`` are the presets.

    ``feature_dim`` and ``num_patches`` are the backbone's ``D`` and ``P`` (DINOv3 ViT-B/16 at 240×320: 768,
    300). ``num_queries``, ``code_dim``, ``act_codebook_size`` and ``act_vae_sha256`` describe the Act-VAE whose
    codebook is copied; :meth:`VDVAE.from_act_vae` fills them in. ``gap`` (frames between the two inputs) is
    not used by the network, only recorded for whoever pairs the frames.
    """

    width: int = 768
    heads: int = 12
    encoder_blocks: int = 12
    decoder_blocks: int = 12
    mlp_ratio: float = 4.0
    feature_dim: int = 768  # backbone D
    num_patches: int = 300  # backbone P
    env_tokens: int = 2
    num_queries: int = 8  # Nq action codes per arm
    code_dim: int = 128
    act_codebook_size: int = 512
    env_codebook_size: int = 512
    gap: int = 32
    siglip_weight: float = 0.1
    l1_weight: float = 0.5
    beta: float = 1.0  # commitment weight
    ema_decay: float = 0.999
    siglip_logit_scale_init: float = math.log(10.0)  # t
    siglip_logit_bias_init: float = -10.0  # b
    act_vae_sha256: str = ""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        for name in ("width", "heads", "encoder_blocks", "decoder_blocks", "feature_dim", "num_patches", "env_tokens",
                     "num_queries", "code_dim", "act_codebook_size", "env_codebook_size", "gap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.act_codebook_size > torch.iinfo(torch.int16).max + 1:
            raise ValueError(f"act_codebook_size {self.act_codebook_size} does not fit int16 tokens")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {self.ema_decay}")

    @property
    def action_tokens(self) -> int:
        """``2·Nq``: both arms' action slots."""
        return 2 * self.num_queries

    @classmethod
    def release(cls) -> "VDVAEConfig":
        """The paper's network: width 768, 12 heads, 12 + 12 blocks, on DINOv3 ViT-B/16 patches."""
        return cls()

    @classmethod
    def small(cls) -> "VDVAEConfig":
        """A network that trains on a CPU in minutes, paired with ``ActVAEConfig.small()`` (code dim 64, K 256)."""
        return cls(width=64, heads=4, encoder_blocks=2, decoder_blocks=2, code_dim=64, act_codebook_size=256,
                   env_codebook_size=64)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- blocks
class SelfAttention(nn.Module):
    """Multi-head self-attention over ``[N, L, width]`` (``scaled_dot_product_attention``; optionally causal)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(n, length, width))


def _mlp(width: int, ratio: float) -> nn.Sequential:
    hidden = int(round(width * ratio))
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class SpatialBlock(nn.Module):
    """Pre-norm transformer block over one frame's tokens ``[N, S, width]`` (the decoder's)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = _mlp(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x))
        return x + self.mlp(self.norm_mlp(x))


class FactorisedBlock(nn.Module):
    """Pre-norm block over ``[B, T, S, width]``: spatial attention within each frame, then causal temporal
    attention across the ``T`` frames for each token slot, then FFN (the encoder's; paper §IV: cheaper than
    full space-time attention)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_spatial = nn.LayerNorm(width)
        self.spatial = SelfAttention(width, heads)
        self.norm_temporal = nn.LayerNorm(width)
        self.temporal = SelfAttention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = _mlp(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, s, w = x.shape
        frames = x.reshape(b * t, s, w)
        x = (frames + self.spatial(self.norm_spatial(frames))).view(b, t, s, w)
        slots = x.transpose(1, 2).reshape(b * s, t, w)
        x = (slots + self.temporal(self.norm_temporal(slots), causal=True)).view(b, s, t, w).transpose(1, 2)
        return x + self.mlp(self.norm_mlp(x))


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear weights and learned embeddings, zero biases (as ``ActVAE``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    for p in module.parameters(recurse=False):
        nn.init.trunc_normal_(p, std=0.02)


# ---------------------------------------------------------------------------------------------- encoder / decoder
class InverseEncoder(nn.Module):
    """Two frames' patches ``[B, 2, P, D]`` → continuous latents at frame t+gap: ``z_action [B, 2·Nq, code_dim]``
    (left arm's ``Nq``, then the right's) and ``z_env [B, env_tokens, code_dim]``."""

    def __init__(self, c: VDVAEConfig) -> None:
        super().__init__()
        self.config = c
        self.patch_in = nn.Linear(c.feature_dim, c.width)
        self.patch_pos = nn.Parameter(torch.empty(c.num_patches, c.width))
        self.slots = nn.Parameter(torch.empty(c.env_tokens + c.action_tokens, c.width))  # env, then action
        self.frame_pos = nn.Parameter(torch.empty(FRAMES, c.width))
        self.blocks = nn.ModuleList(FactorisedBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.encoder_blocks))
        self.norm = nn.LayerNorm(c.width)
        self.to_action = nn.Linear(c.width, c.code_dim)
        self.to_env = nn.Linear(c.width, c.code_dim)
        _init_weights(self)

    def hidden(self, patches: torch.Tensor) -> torch.Tensor:
        """Normed outputs of every frame and slot ``[B, 2, env + 2·Nq + P, width]`` (frame t's are exposed so
        causality can be checked)."""
        b = patches.shape[0]
        x = self.patch_in(patches) + self.patch_pos
        slots = self.slots.expand(b, FRAMES, -1, -1)
        x = torch.cat([slots, x], dim=2) + self.frame_pos[None, :, None, :]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        last = self.hidden(patches)[:, -1]
        z_env = self.to_env(last[:, : c.env_tokens])
        z_action = self.to_action(last[:, c.env_tokens : c.env_tokens + c.action_tokens])
        return z_action, z_env


class ForwardDecoder(nn.Module):
    """Quantised codes ``[B, env + 2·Nq, code_dim]`` (env, then action) and frame t's patches ``[B, P, D]`` →
    predicted frame-(t+gap) patches ``[B, P, D]``, with spatial attention only."""

    def __init__(self, c: VDVAEConfig) -> None:
        super().__init__()
        self.code_in = nn.Linear(c.code_dim, c.width)
        self.slot_pos = nn.Parameter(torch.empty(c.env_tokens + c.action_tokens, c.width))
        self.patch_in = nn.Linear(c.feature_dim, c.width)
        self.patch_pos = nn.Parameter(torch.empty(c.num_patches, c.width))
        self.blocks = nn.ModuleList(SpatialBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.decoder_blocks))
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.feature_dim)
        _init_weights(self)

    def forward(self, codes: torch.Tensor, patches_t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.code_in(codes) + self.slot_pos, self.patch_in(patches_t) + self.patch_pos], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x[:, codes.shape[1] :]))


# ---------------------------------------------------------------------------------------------- augmentation
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def augment_pairs(
    frames: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    grayscale_p: float = 0.1,
    noise_std: float = 0.02,
) -> torch.Tensor:
    """Photometric augmentation of float frame pairs ``[B, 2, H, W, 3]`` in [0, 1], applied before the backbone.

    Per sample, one brightness factor and one contrast factor from U(1 ± ·) and one grayscale draw (p) are
    applied to **both** frames, so the change between them (the motion) is untouched; the contrast pivot is the
    pair's mean luma, so the two frames get the very same pixel map. Then Gaussian noise (σ, independent per
    pixel and frame); the result is clamped to [0, 1]. Deterministic given ``generator`` (a CPU generator;
    random numbers are drawn on the CPU and moved to the frames' device).
    """
    if frames.dim() != 5 or frames.shape[1] != FRAMES or frames.shape[-1] != 3 or not frames.is_floating_point():
        raise ValueError(f"expected float frames [B, 2, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    b = frames.shape[0]

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(frames.device, frames.dtype)

    per_sample = (b, 1, 1, 1, 1)
    gray_weights = torch.tensor(GRAY_WEIGHTS, device=frames.device, dtype=frames.dtype)
    bright = 1.0 + brightness * (2.0 * draw(b) - 1.0)
    contr = 1.0 + contrast * (2.0 * draw(b) - 1.0)
    to_gray = draw(b) < grayscale_p
    noise = torch.randn(frames.shape, generator=generator).to(frames.device, frames.dtype)

    x = (frames * bright.view(per_sample)).clamp(0.0, 1.0)
    pivot = (x @ gray_weights).mean(dim=(1, 2, 3)).view(per_sample)
    x = (pivot + contr.view(per_sample) * (x - pivot)).clamp(0.0, 1.0)
    x = torch.where(to_gray.view(per_sample), (x @ gray_weights).unsqueeze(-1).expand_as(x), x)
    return (x + noise_std * noise).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- the model
class VDVAE(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="clap-data",
    tags=["clap", "inverse-dynamics", "latent-action", "vq-vae"],
):
    """Inverse-dynamics VQ-VAE over two frames' patch tokens; see the module docstring.

    ``VDVAE(config)`` takes a ``VDVAEConfig`` (or the equivalent dict); it starts with a random Act-VAE
    codebook, so build a model to train with :meth:`from_act_vae`. ``save_pretrained`` / ``from_pretrained``
    (or :func:`clap_data.models.checkpoint.save_model` / ``load_model``) round-trip it.
    """

    def __init__(self, config: VDVAEConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = VDVAEConfig()
        elif isinstance(config, dict):
            config = VDVAEConfig(**{k: v for k, v in config.items() if k in VDVAEConfig.__dataclass_fields__})
        elif not isinstance(config, VDVAEConfig):
            raise TypeError(f"config must be a VDVAEConfig or a dict, got {type(config).__name__}")
        self.config = config
        self._hub_mixin_config = config  # what save_pretrained writes to config.json
        c = config
        self.encoder = InverseEncoder(c)
        self.teacher = copy.deepcopy(self.encoder).requires_grad_(False)
        self.act_quantizer = VectorQuantizer(c.act_codebook_size, c.code_dim)
        self.act_quantizer.embedding.weight.requires_grad_(False)
        self.env_quantizer = VectorQuantizer(c.env_codebook_size, c.code_dim, codebook_lr_scale=1.0)
        self.decoder = ForwardDecoder(c)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.siglip_logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(c.siglip_logit_bias_init)))

    @classmethod
    def from_act_vae(
        cls, act_vae: ActVAE | str | Path, config: VDVAEConfig | None = None, sha256: str | None = None
    ) -> "VDVAE":
        """A fresh VD-VAE on the frozen codebook of ``act_vae`` (a model, or its checkpoint folder).

        ``num_queries``, ``code_dim`` and ``act_codebook_size`` are taken from the Act-VAE, and its weights'
        sha256 is recorded as ``act_vae_sha256``: read from the folder, or ``sha256`` when a model is given
        (required then: a model in memory does not know its file's hash).
        """
        if isinstance(act_vae, (str, Path)):
            act_vae, sha256 = load_model(ActVAE, act_vae, kind="an Act-VAE")
        elif not sha256:
            raise ValueError("from_act_vae needs the Act-VAE checkpoint's sha256 when given a model")
        a = act_vae.config
        config = dataclasses.replace(
            config or VDVAEConfig(), num_queries=a.num_queries, code_dim=a.code_dim,
            act_codebook_size=a.codebook_size, act_vae_sha256=sha256,
        )
        model = cls(config)
        with torch.no_grad():
            model.act_quantizer.embedding.weight.copy_(act_vae.quantizer.embedding.weight)
        return model

    # ------------------------------------------------------------------ helpers
    def _check_patches(self, patches: torch.Tensor, name: str = "patches") -> None:
        c = self.config
        if patches.dim() != 4 or tuple(patches.shape[1:]) != (FRAMES, c.num_patches, c.feature_dim):
            raise ValueError(f"expected {name} [B, 2, {c.num_patches}, {c.feature_dim}], got {list(patches.shape)}")

    def _per_arm(self, z_action: torch.Tensor) -> torch.Tensor:
        """``[B, 2·Nq, code_dim]`` → one vector per arm ``[B, 2, Nq·code_dim]`` (left, right)."""
        return z_action.reshape(z_action.shape[0], 2, -1)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA step ``teacher ← μ·teacher + (1 − μ)·online`` with ``μ = config.ema_decay`` (call after each
        optimizer step)."""
        mu = self.config.ema_decay
        for t, p in zip(self.teacher.parameters(), self.encoder.parameters(), strict=True):
            t.mul_(mu).add_(p.detach(), alpha=1.0 - mu)

    # ------------------------------------------------------------------ training
    def forward(
        self,
        patches: torch.Tensor,
        arm_mask: torch.Tensor,
        is_robot: torch.Tensor,
        robot_targets: torch.Tensor | None = None,
        patches_aug: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch.

        ``patches [B, 2, P, D]``: backbone tokens of the clean frames (decoder input at frame t, target at
        frame t+gap, teacher input); ``patches_aug``: tokens of the augmented frames, the online encoder's
        input (default: the clean ones); ``arm_mask [B, 2]`` (left, right; truthy = active); ``is_robot [B]``;
        ``robot_targets [B, 2, Nq, code_dim]``: the Act-VAE latents of each arm's ground-truth chunk (rows of
        human items are ignored; needed when a robot item has an active arm).

        Returns ``loss, mse, q, commit, siglip, l1`` (scalars; ``q``/``commit`` sum the Act and env
        codebooks' terms, each a mean over elements) and ``pred [B, P, D]``, ``action_indices [B, 2·Nq]``,
        ``env_indices [B, env_tokens]`` (int64), ``z_action [B, 2·Nq, code_dim]``.
        """
        c = self.config
        self._check_patches(patches)
        b = patches.shape[0]
        if patches_aug is None:
            patches_aug = patches
        self._check_patches(patches_aug, "patches_aug")
        arm_mask = arm_mask.to(patches.device).bool()
        is_robot = is_robot.to(patches.device).bool()
        if tuple(arm_mask.shape) != (b, 2) or tuple(is_robot.shape) != (b,):
            raise ValueError(f"expected arm_mask [{b}, 2] and is_robot [{b}], got {list(arm_mask.shape)}, "
                             f"{list(is_robot.shape)}")

        z_action, z_env = self.encoder(patches_aug)
        q_action, action_indices, act_losses = self.act_quantizer(z_action)
        q_env, env_indices, env_losses = self.env_quantizer(z_env)
        pred = self.decoder(torch.cat([q_env, q_action], dim=1), patches[:, 0])
        mse = F.mse_loss(pred, patches[:, 1])
        q = act_losses["codebook"] + env_losses["codebook"]
        commit = act_losses["commitment"] + env_losses["commitment"]
        l1 = q_env.abs().mean()

        positives = self._positives(patches, is_robot, arm_mask, robot_targets)
        siglip = sigmoid_contrastive_loss(self._per_arm(z_action)[arm_mask], positives[arm_mask],
                                          self.logit_scale, self.logit_bias)
        loss = mse + q + c.beta * commit + c.siglip_weight * siglip + c.l1_weight * l1
        return {
            "loss": loss, "mse": mse, "q": q, "commit": commit, "siglip": siglip, "l1": l1,
            "pred": pred, "action_indices": action_indices, "env_indices": env_indices, "z_action": z_action,
        }

    @torch.no_grad()
    def _positives(self, patches: torch.Tensor, is_robot: torch.Tensor, arm_mask: torch.Tensor,
                   robot_targets: torch.Tensor | None) -> torch.Tensor:
        """Stop-gradient SigLIP positives ``[B, 2, Nq·code_dim]``: the Act-VAE latents for robot items, the
        teacher's action latents on the clean frames for human items (the teacher runs on those rows only)."""
        c = self.config
        b = patches.shape[0]
        positives = patches.new_zeros(b, 2, c.num_queries * c.code_dim)
        if bool((arm_mask & is_robot[:, None]).any()):
            shape = (b, 2, c.num_queries, c.code_dim)
            if robot_targets is None or tuple(robot_targets.shape) != shape:
                got = None if robot_targets is None else list(robot_targets.shape)
                raise ValueError(f"robot items need robot_targets {list(shape)}, got {got}")
            positives[is_robot] = robot_targets[is_robot].to(positives).reshape(-1, 2, c.num_queries * c.code_dim)
        human = ~is_robot
        if bool(human.any()):
            positives[human] = self._per_arm(self.teacher(patches[human])[0])
        return positives

    # ------------------------------------------------------------------ pseudo-labels
    @torch.no_grad()
    def pseudo_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """Two frames' patch tokens ``[B, 2, P, D]`` → int16 Act-VAE codes ``[B, 2·Nq]``, left arm's ``Nq`` then
        the right's (``TOKEN_ORDER_STORAGE``). Eval mode (usage counters untouched), online encoder, no
        augmentation."""
        self._check_patches(patches)
        was_training = self.training
        self.eval()
        try:
            z_action, _ = self.encoder(patches.to(self.act_quantizer.codebook))
            return self.act_quantizer.nearest(z_action).to(torch.int16)
        finally:
            self.train(was_training)
