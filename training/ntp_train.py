"""The CLAP-NTP training loop (METHOD.md §5, paper Algorithm 3), one process of a DDP run; Ray-free.

A short loop in nanoGPT's manner: on CUDA the next batch is encoded in a thread while the model steps (the
processor's image work overlaps the GPU's), and the loss and token accuracy stay on the device, summed, until a log
step reads them (one sync per ``log_every`` steps, summed over ranks). On a CPU the batch is encoded in line: there
the thread only competes with the model's own threads for the cores and the GIL (``bench/train_ntp.py`` measured
the tiny model about 30 % slower with it). :mod:`clap_data.training.ray_launcher` runs
it on Ray Train workers; tests and the benchmark call :func:`train_loop` directly.

Optimisation: AdamW (β = 0.9, 0.95), gradient norm clipped at 1, a linear warmup then a constant learning rate
(the paper's NTP adaptation schedule; a finished run asked for more steps continues on the same schedule). On CUDA
the forward runs under bf16 autocast (fp32 master weights and moments) with gradient checkpointing.

Exact resume: the batches are a function of (seed, step, world size) (:func:`~clap_data.training.ntp_data.
iter_training_batches`), the wrist drop of step s on rank r a function of (seed, s, r), and every ``save_every``
steps rank 0 saves the whole loop state with :mod:`clap_data.train_state` — weights, optimizer, scheduler, every
RNG stream — then the ``save_pretrained`` export. A save step is also a log step, so no metric window is ever open
across a save, and a resumed run logs what an uninterrupted one does. Every rank resumes from the state
(:func:`clap_data.act_vae.checkpoint.resume_point`, which refuses a run of other settings). That machinery —
batches, wrist drops, resume, steps, logging, saves — is :mod:`clap_data.training.train_common`'s, shared with
CLAP-RF; this module holds what is CLAP-NTP's: the settings, the model with its action vocabulary, the step's loss
and token accuracy, and the checkpoint's record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clap_data.hashing import file_sha256
from clap_data.schemas.shards_v1 import SHARD_MANIFEST
from clap_data.training.ntp_checkpoint import export_policy
from clap_data.training.ntp_data import ShardSet
from clap_data.training.ntp_model import ActionVocabulary, add_action_tokens, load_vlm
from clap_data.training.train_common import (
    Loop,
    Report,
    adamw_warmup,
    restore_last,
    start_point,
    train_from,
    wrap_ddp,
    writer_lock,
)


@dataclass(frozen=True)
class NTPTrainSettings:
    """One run's settings; all but ``steps``, ``save_every``, ``log_every`` and ``gradient_checkpointing`` are
    its identity (a rerun with others is refused)."""

    shards: str
    model: str  # a local folder (absolute) or a hub id
    out: str
    steps: int = 1000
    batch_size: int = 8  # per worker
    learning_rate: float = 5e-5
    warmup_steps: int = 100
    weight_decay: float = 0.0
    wrist_drop: float = 0.5  # both wrist cameras left out together (METHOD.md §5)
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    gradient_checkpointing: bool = True  # on CUDA only

    def identity(self, shards: ShardSet, world_size: int) -> dict[str, Any]:
        return {
            "shards": str(Path(shards.root).absolute()), "manifest_sha256": file_sha256(shards.root / SHARD_MANIFEST),
            "model": self.model, "act_vae_sha256": shards.act_vae["checkpoint_sha256"],
            "num_queries": shards.num_queries, "codebook_size": shards.codebook_size, "batch_size": self.batch_size,
            "world_size": world_size, "learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay, "wrist_drop": self.wrist_drop, "seed": self.seed,
        }


def train_loop(
    settings: NTPTrainSettings, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
    report: Report | None = None, on_start: Callable[[int], None] | None = None,
    orphaned: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) into ``settings.out``; rank 0 saves, calls ``on_start`` with the step it starts from and
    ``report`` with each log window's metrics. Returns the last window's metrics (None if already complete).
    ``orphaned`` is asked before every step; True (the command that started the run is gone) stops it.

    Rank 0 holds the folder's writer lock for the whole loop, and every rank reads the resume point only once it
    has it: the workers of a killed command outlive it for a moment, and must have stopped writing first."""
    with writer_lock(Path(settings.out), rank, world_size, "train ntp"):
        return _train(settings, rank, world_size, device or torch.device("cpu"), report, on_start, orphaned)


def _model_and_optimizer(settings: NTPTrainSettings, shards: ShardSet, device: torch.device) -> tuple[Any, ...]:
    """The VLM with the action vocabulary on ``device`` (gradient checkpointing on CUDA), its processor, the
    vocabulary, AdamW and the warmup-then-constant schedule."""
    model, processor = load_vlm(settings.model)
    vocab = add_action_tokens(model, processor, shards.codebook_size, settings.seed)
    model.to(device)
    model.config.use_cache = False
    if device.type == "cuda" and settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer, scheduler = adamw_warmup([{"params": list(model.parameters()), "lr": settings.learning_rate}],
                                        settings.warmup_steps, settings.weight_decay)
    return model, processor, vocab, optimizer, scheduler


def _checkpoint_meta(settings: NTPTrainSettings, shards: ShardSet, identity: dict[str, Any], vocab: ActionVocabulary,
                     world_size: int, device: torch.device) -> dict[str, Any]:
    """What ``training.json`` records besides step and metrics: all a policy needs to act without the shards."""
    return {"run": identity, "base_model": settings.model, "world_size": world_size, "device": str(device),
            "act_vae": {k: shards.act_vae.get(k) for k in ("checkpoint_sha256", "checkpoint")},
            "num_queries": shards.num_queries, "codebook_size": shards.codebook_size,
            "action_token_first_id": vocab.first_id, "stats_ids": shards.stats_ids(),
            "statistics": shards.statistics,
            "embodiments": {name: {"arm_mask": mask} for name, mask in shards.embodiment_arm_masks().items()}}


def _summary(sums: list[float], count: int) -> dict[str, Any]:
    """A window's mean loss and the action-token accuracy of its next-token predictions."""
    loss, correct, tokens = sums
    return {"loss": loss / count, "token_accuracy": correct / tokens if tokens else 0.0}


def _train(settings: NTPTrainSettings, rank: int, world_size: int, device: torch.device, report: Report | None,
           on_start: Callable[[int], None] | None, orphaned: Callable[[], bool] | None) -> dict[str, Any] | None:
    shards = ShardSet.open(Path(settings.shards))
    identity = settings.identity(shards, world_size)
    ckpt = Path(settings.out)
    begun = start_point(ckpt, identity, "CLAP-NTP", settings.steps, rank, on_start)
    if begun is None:
        return None  # complete, and its export is up to date
    saved, step = begun
    model, processor, vocab, optimizer, scheduler = _model_and_optimizer(settings, shards, device)
    last = restore_last(saved, model, optimizer, scheduler)
    del saved
    cuda = device.type == "cuda"
    ddp = wrap_ddp(model, world_size, device)
    model.train()
    meta = _checkpoint_meta(settings, shards, identity, vocab, world_size, device)

    def forward(inputs: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next-token loss; the metrics: loss, correct action tokens, action tokens (the step plays no part)."""
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = ddp(**inputs)
        with torch.no_grad():
            hits = vocab.hits(out.logits, inputs["labels"])
            return out.loss, torch.stack([out.loss.detach().double(), *(v.double() for v in hits)])

    def export(step: int, last: dict[str, Any] | None) -> None:
        export_policy(ckpt, model, processor, {**meta, "step": step, "last": last})

    loop = Loop(model, optimizer, scheduler, forward, _summary, export, ckpt, identity)
    return train_from(loop, settings, shards, processor, step, last, rank, world_size, device, report, orphaned)
