"""CLAP-RF's action head (METHOD.md §6, paper §III-E1): a small diffusion transformer that turns the NTP backbone's
hidden states into a continuous action chunk by rectified flow, installed as ``clap_data.training.rf_head``.

Why a head of its own rather than token decoding: one forward of the VLM plus ``steps`` (4) passes of this small
network replace the answer's autoregressive steps (the subtask and 2·Nq action tokens), which is where the
latency goes (paper §III-E1).

The sequence each block sees: ``[state token, learned tokens, action tokens]`` — the state ``[14]`` through a
Linear, ``num_learned_tokens`` free vectors (room for the head to gather context before the actions read it), and
one token per step of the noisy chunk ``x_t`` (a Linear of its 14 values), all plus a learned position embedding.
The state is embedded as given: the caller normalises it.

Each block (DiT, Peebles & Xie 2023, the paper's [45], with PixArt-α's cross-attention): self-attention over the
sequence, cross-attention to the hidden states of one chosen VLM layer, an MLP; each of the three is wrapped in
adaptive LayerNorm driven by the time embedding (sinusoidal of 1000·t → MLP), with the zero-initialised gates of
DiT's adaLN-zero. The time enters only there (not added to the action tokens): every block and the output layer
see it, as in DiT. The head's final layer (adaLN + Linear) is zero-initialised too, so an untrained head predicts
exactly v = 0 and every block starts as the identity: training starts from a stable point, not from noise.

Which VLM layers: ``vl_layers`` index the ``output_hidden_states`` tuple of the VLM's language model (0 is the
embedding output, i the output of decoder layer i, the last one after the final norm as transformers returns it).
The paper found early + middle layers best (Table VI) but gives no indices; the head is shallower than the VLM, so
each block reads one layer: the blocks are split into n = ``len(vl_layers)`` consecutive groups, as equal as
integer division makes them, in the order of ``vl_layers`` — block i reads ``vl_layers[i · n // depth]`` (depth 4,
two layers: blocks 0–1 the first, blocks 2–3 the second). Early blocks read the first-listed layer. Each chosen
layer is projected from the VLM's width to the head's once per observation (LayerNorm + Linear, its own per layer);
positions where ``context_mask`` is False (padding) are masked out of every cross-attention (a sample masked
entirely reads no context at all: torch's attention gives its rows zero weights, not NaN).

Rectified flow (paper eq. 6): ``x_t = (1 − t)·ε + t·a``, the head regresses ``v = a − ε``; t = 0 is noise, t = 1
data. Training draws ``t = 0.999·(1 − u)``, ``u ~ Beta(1.5, 1)`` (π0's schedule, paper IV-C2), which favours the
noisy end; inference integrates ``dx/dt = v`` from noise at t = 0 to t = 1 in a few Euler steps. The head predicts
all 14 DOFs; the loss counts only the active arms' (a single-arm sample's other arm is padding, not a target).

No "release" preset: the paper gives the backbone (Qwen3-VL-4B) and the schedule but not the head's width, depth,
heads or learned tokens, nor which layers; the defaults here are CPU-small, sized for tests and smoke runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clap_data.errors import ClapDataError
from clap_data.schemas import ARM_SLICES

T_MAX = 0.999  # never t = 1: there x_t = a keeps nothing of ε, so a − ε cannot be predicted
BETA_A = 1.5  # u ~ Beta(1.5, 1) (paper IV-C2, after π0)
TIME_SCALE = 1000.0  # sinusoidal frequencies are laid out for DiT's integer timesteps 0…1000
NUM_MODULATIONS = 9  # shift, scale, gate for each of self-attention, cross-attention, MLP


@dataclass(frozen=True)
class RFHeadConfig:
    """The head's shape; ``to_dict``/``from_dict`` round-trip it through a ``config.json``."""

    vl_hidden_size: int = 64  # the VLM's text hidden size (the tiny test VLM's)
    vl_layers: tuple[int, ...] = (1, 2)  # indices into output_hidden_states, 0 = embeddings (module docstring)
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_learned_tokens: int = 4
    chunk_size: int = 32
    action_dim: int = 14
    state_dim: int = 14

    def __post_init__(self) -> None:
        object.__setattr__(self, "vl_layers", tuple(int(i) for i in self.vl_layers))
        for name in ("vl_hidden_size", "width", "depth", "heads", "chunk_size", "action_dim", "state_dim"):
            if getattr(self, name) < 1:
                raise ClapDataError(f"the RF head's {name} must be positive, got {getattr(self, name)}")
        if self.num_learned_tokens < 0 or self.mlp_ratio <= 0:
            raise ClapDataError(f"the RF head needs num_learned_tokens ≥ 0 and mlp_ratio > 0, got "
                                f"{self.num_learned_tokens} and {self.mlp_ratio}")
        if self.width % self.heads or self.width % 2:
            raise ClapDataError(f"the RF head's width {self.width} must be even and divisible by its {self.heads} "
                                "heads")
        if not self.vl_layers or min(self.vl_layers) < 0 or len(set(self.vl_layers)) != len(self.vl_layers):
            raise ClapDataError(f"vl_layers must be distinct non-negative hidden-state indices, got {self.vl_layers}")
        if len(self.vl_layers) > self.depth:
            raise ClapDataError(f"the RF head has {self.depth} blocks, fewer than its {len(self.vl_layers)} vl_layers; "
                                "each chosen layer needs at least one block to read it")

    @property
    def block_layers(self) -> tuple[int, ...]:
        """For each block, the position in ``vl_layers`` (and in ``context``) of the layer it reads."""
        return tuple(i * len(self.vl_layers) // self.depth for i in range(self.depth))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "vl_layers": list(self.vl_layers)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RFHeadConfig:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ClapDataError(f"the RF head config has unknown keys {unknown}; it was written by another version")
        return cls(**values)


def check_against_vlm(config: RFHeadConfig, vlm_config: Any) -> None:
    """Refuse, in one sentence, a head whose ``vl_layers`` or width do not fit the VLM (a ``transformers`` config,
    composite VLM configs included: its text config is what the head reads)."""
    text = vlm_config.get_text_config()
    if max(config.vl_layers) > text.num_hidden_layers:
        raise ClapDataError(f"vl_layers {config.vl_layers} go past the VLM's {text.num_hidden_layers} layers (its "
                            f"hidden states are indexed 0 = embeddings … {text.num_hidden_layers})")
    if text.hidden_size != config.vl_hidden_size:
        raise ClapDataError(f"the RF head expects VLM hidden states of width {config.vl_hidden_size}, the VLM's are "
                            f"{text.hidden_size}")


def select_context(hidden_states: Sequence[torch.Tensor], config: RFHeadConfig) -> list[torch.Tensor]:
    """The head's ``context`` from a VLM output's ``hidden_states`` tuple: its ``vl_layers`` entries, in order."""
    return [hidden_states[i] for i in config.vl_layers]


def _sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DiT's timestep features ``[cos, sin]`` of ``TIME_SCALE · t`` at geometric frequencies 1 … 1/10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = TIME_SCALE * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def _norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)  # adaLN supplies the affine part


class RFBlock(nn.Module):
    """Self-attention, cross-attention to one VLM layer, MLP; each adaLN-zero conditioned on the time."""

    def __init__(self, config: RFHeadConfig) -> None:
        super().__init__()
        width = config.width
        self.norms = nn.ModuleList(_norm(width) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(width, config.heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, config.heads, batch_first=True)
        hidden = int(round(width * config.mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, NUM_MODULATIONS * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, time: torch.Tensor, context: torch.Tensor,
                padding: torch.Tensor) -> torch.Tensor:
        """``padding [B, L]`` is True where the context is to be ignored (``key_padding_mask``'s sense)."""
        shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca, shift_mlp, scale_mlp, gate_mlp = \
            self.modulation(time).chunk(NUM_MODULATIONS, dim=-1)
        h = _modulate(self.norms[0](x), shift_sa, scale_sa)
        x = x + gate_sa[:, None] * self.self_attn(h, h, h, need_weights=False)[0]
        h = _modulate(self.norms[1](x), shift_ca, scale_ca)
        x = x + gate_ca[:, None] * self.cross_attn(h, context, context, key_padding_mask=padding,
                                                   need_weights=False)[0]
        h = _modulate(self.norms[2](x), shift_mlp, scale_mlp)
        return x + gate_mlp[:, None] * self.mlp(h)


class RFHead(nn.Module):
    """The velocity field ``v(x_t, t | state, VLM context)``; see the module docstring."""

    def __init__(self, config: RFHeadConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.state_in = nn.Linear(config.state_dim, width)
        self.action_in = nn.Linear(config.action_dim, width)
        self.learned = nn.Parameter(0.02 * torch.randn(config.num_learned_tokens, width))
        self.position = nn.Parameter(0.02 * torch.randn(1 + config.num_learned_tokens + config.chunk_size, width))
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.context_proj = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(config.vl_hidden_size), nn.Linear(config.vl_hidden_size, width))
            for _ in config.vl_layers)
        self.blocks = nn.ModuleList(RFBlock(config) for _ in range(config.depth))
        self.final_norm = _norm(width)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.action_out = nn.Linear(width, config.action_dim)
        for layer in (self.final_modulation[1], self.action_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def project_context(self, context: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each chosen layer's hidden states ``[B, L, H]`` → ``[B, L, width]``; done once per observation (the
        Euler steps of :func:`sample_actions` share it)."""
        if len(context) != len(self.context_proj):
            raise ClapDataError(f"the RF head reads {len(self.context_proj)} VLM layers {self.config.vl_layers}, "
                                f"got {len(context)} context tensors")
        return [proj(layer) for proj, layer in zip(self.context_proj, context, strict=True)]

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor, projected: Sequence[torch.Tensor],
                 context_mask: torch.Tensor) -> torch.Tensor:
        """``x_t [B, chunk, action_dim]``, ``t [B]``, ``state [B, state_dim]``, projected context (one per
        chosen layer), ``context_mask [B, L]`` True at real positions → velocity ``[B, chunk, action_dim]``."""
        batch = x_t.shape[0]
        tokens = torch.cat([self.state_in(state)[:, None], self.learned.expand(batch, -1, -1), self.action_in(x_t)],
                           dim=1) + self.position
        time = self.time_mlp(_sinusoidal(t, self.config.width).to(tokens.dtype))
        padding = ~context_mask.bool()
        for block, layer in zip(self.blocks, self.config.block_layers, strict=True):
            tokens = block(tokens, time, projected[layer], padding)
        shift, scale = self.final_modulation(time).chunk(2, dim=-1)
        actions = tokens[:, -self.config.chunk_size:]
        return self.action_out(_modulate(self.final_norm(actions), shift, scale))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor, context: Sequence[torch.Tensor],
                context_mask: torch.Tensor) -> torch.Tensor:
        """:meth:`velocity` with the raw hidden states of the chosen layers (``[B, L, vl_hidden_size]`` each)."""
        return self.velocity(x_t, t, state, self.project_context(context), context_mask)


def rf_training_time(batch: int, generator: torch.Generator) -> torch.Tensor:
    """``t = 0.999·(1 − u)``, ``u ~ Beta(1.5, 1)``, shape ``[batch]``, on the generator's device: one uniform
    draw per sample. ``torch.distributions.Beta`` takes no generator, so u is sampled exactly by the inverse CDF:
    Beta(a, 1) has CDF ``x^a``, hence ``u = U^(1/a)`` with U uniform on [0, 1). t lies in (0, 0.999]."""
    uniform = torch.rand(batch, generator=generator, device=generator.device)
    return T_MAX * (1 - uniform ** (1 / BETA_A))


def active_dofs(arm_mask: torch.Tensor) -> torch.Tensor:
    """``arm_mask [B, 2]`` (left, right) → ``[B, 14]`` True on the active arms' DOFs (``ARM_SLICES``)."""
    dofs = torch.zeros(arm_mask.shape[0], ARM_SLICES[-1].stop, dtype=torch.bool, device=arm_mask.device)
    for arm, dof_slice in enumerate(ARM_SLICES):
        dofs[:, dof_slice] = arm_mask[:, arm, None].bool()
    return dofs


def flow_matching_loss(head: RFHead, actions: torch.Tensor, state: torch.Tensor, context: Sequence[torch.Tensor],
                       context_mask: torch.Tensor, arm_mask: torch.Tensor,
                       generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The rectified-flow loss of normalised ``actions [B, chunk, 14]``: the mean squared error of the head's
    velocity against ``a − ε`` over every step of the chunk and the active arms' DOFs only (7 per active arm),
    in float32. Draw order from ``generator``: first t (:func:`rf_training_time`, B uniforms), then ε
    (``torch.randn`` of the actions' shape). A batch without an active arm has loss 0.

    ``details``: ``t [B]`` and ``noise`` as drawn, ``per_sample [B]`` the same MSE per sample (detached, for
    logging the loss against t)."""
    t = rf_training_time(actions.shape[0], generator).to(actions)
    noise = torch.randn(actions.shape, generator=generator, device=generator.device).to(actions)
    x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * actions
    velocity = head(x_t, t, state, context, context_mask)
    keep = active_dofs(arm_mask)[:, None, :].expand_as(actions)
    squared = torch.where(keep, (velocity.float() - (actions - noise).float()) ** 2, 0.0)
    counts = keep.sum(dim=(1, 2))
    loss = squared.sum() / counts.sum().clamp_min(1)
    per_sample = squared.detach().sum(dim=(1, 2)) / counts.clamp_min(1)
    return loss, {"t": t, "noise": noise, "per_sample": per_sample}


@torch.no_grad()
def sample_actions(head: RFHead, state: torch.Tensor, context: Sequence[torch.Tensor], context_mask: torch.Tensor,
                   steps: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """A normalised chunk ``[B, chunk, action_dim]`` by Euler integration of the head's velocity from
    ``x_0 = ε ~ N(0, I)`` (drawn from ``generator``: same generator state, same chunk) at t = 0 to t = 1 in
    ``steps`` equal steps: ``x_{t+Δ} = x_t + Δ·v(x_t, t)``, Δ = 1/steps, evaluated at t = 0, Δ, …, 1 − Δ."""
    if steps < 1:
        raise ClapDataError(f"sampling needs at least one Euler step, got {steps}")
    config = head.config
    shape = (state.shape[0], config.chunk_size, config.action_dim)
    device = generator.device if generator is not None else state.device
    x = torch.randn(shape, generator=generator, device=device).to(state)
    projected = head.project_context(context)
    delta = 1.0 / steps
    for k in range(steps):
        t = torch.full((shape[0],), k * delta, device=state.device, dtype=state.dtype)
        x = x + delta * head.velocity(x, t, state, projected, context_mask)
    return x
