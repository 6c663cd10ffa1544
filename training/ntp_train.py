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
(:func:`clap_data.act_vae.checkpoint.resume_point`, which refuses a run of other settings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from clap_data import train_state
from clap_data.act_vae.checkpoint import TRAINING_STATE_NAME, read_training_meta, resume_point
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.locking import file_lock
from clap_data.schemas.shards_v1 import SHARD_MANIFEST
from clap_data.training.ntp_checkpoint import export_policy
from clap_data.training.ntp_data import ShardSet, iter_training_batches
from clap_data.training.ntp_model import ActionVocabulary, add_action_tokens, load_vlm
from clap_data.training.prompts import encode_training_batch

Report = Callable[[dict[str, Any]], None]
WRITER_LOCK = ".writer.lock"  # held by rank 0 (the driver holds ".lock")


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


def wrist_drops(samples: list[dict[str, Any]], probability: float, seed: int, step: int, rank: int) -> list[bool]:
    """Which samples of rank ``rank``'s batch at ``step`` leave both wrist images out: a function of (seed, step,
    rank) only (exact resume), and only where a head image remains (no sample is ever image-less)."""
    draws = np.random.default_rng([seed, step, rank]).random(len(samples))
    return [bool(d < probability) and "head" in s["images"] for d, s in zip(draws, samples, strict=True)]


def _encoded_batches(settings: NTPTrainSettings, shards: ShardSet, processor: Any, rank: int, world_size: int,
                     start: int, pin: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Step by step from ``start``: this rank's samples, wrists dropped, encoded."""
    samples = iter_training_batches(shards, settings.batch_size, rank, world_size, settings.seed, start)
    step = start
    while True:
        batch = next(samples)
        drops = wrist_drops(batch, settings.wrist_drop, settings.seed, step, rank)
        encoded = encode_training_batch(processor, batch, drops, shards.num_queries)
        yield {k: v.pin_memory() for k, v in encoded.items()} if pin else encoded
        step += 1


def _prefetched(batches: Iterator[Any]) -> Iterator[Any]:
    """``batches`` one ahead, the next one made in a thread while the caller works on the current one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(next, batches)
        while True:
            current = upcoming.result()
            upcoming = pool.submit(next, batches)
            yield current


def _token_hits(logits: torch.Tensor, labels: torch.Tensor, vocab: ActionVocabulary) -> tuple[torch.Tensor, ...]:
    """Correct next-token predictions at the action-token positions, and how many there are."""
    targets = labels[:, 1:]
    slots = vocab.contains(targets)
    return ((logits[:, :-1].argmax(-1) == targets) & slots).sum(), slots.sum()


def _sum_over_ranks(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(values)
    return values


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
    ckpt = Path(settings.out)
    with ExitStack() as stack:
        if rank == 0:
            stack.enter_context(file_lock(ckpt / WRITER_LOCK, ckpt, exclusive=True, purpose="train ntp", wait=True))
        if world_size > 1:
            dist.barrier()
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=settings.weight_decay)
    warmup = max(1, settings.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
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


def _train(settings: NTPTrainSettings, rank: int, world_size: int, device: torch.device, report: Report | None,
           on_start: Callable[[int], None] | None, orphaned: Callable[[], bool] | None) -> dict[str, Any] | None:
    shards = ShardSet.open(Path(settings.shards))
    identity = settings.identity(shards, world_size)
    ckpt = Path(settings.out)
    saved = resume_point(ckpt, identity, overwrite=False, kind="CLAP-NTP")
    step = int(saved["extra"]["step"]) if saved else 0
    if rank == 0 and on_start is not None:
        on_start(step)
    if step >= settings.steps and read_training_meta(ckpt).get("step") == step:
        return None  # complete, and its export is up to date
    model, processor, vocab, optimizer, scheduler = _model_and_optimizer(settings, shards, device)
    last = None
    if saved is not None:
        last = train_state.restore(saved, model, optimizer, scheduler)["last"]
        del saved
    cuda = device.type == "cuda"
    ddp = model
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    model.train()
    meta = _checkpoint_meta(settings, shards, identity, vocab, world_size, device)

    def save() -> None:
        state = train_state.capture(model, optimizer, scheduler, extra={"run": identity, "step": step, "last": last})
        train_state.save(ckpt / TRAINING_STATE_NAME, state)
        export_policy(ckpt, model, processor, {**meta, "step": step, "last": last})

    if step >= settings.steps and rank == 0:  # a crash left the export one save behind the state
        save()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct action tokens, action tokens
    window_start, window_steps = time.perf_counter(), 0
    batches = _encoded_batches(settings, shards, processor, rank, world_size, step, cuda)
    if cuda:
        batches = _prefetched(batches)
    while step < settings.steps:
        if orphaned is not None and orphaned():
            raise ClapDataError(f"the command that started this run is gone; rank {rank} stops at step {step}")
        inputs = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = ddp(**inputs)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        window_steps += 1
        with torch.no_grad():
            sums += torch.stack([out.loss.detach().double(), *(v.double() for v in _token_hits(
                out.logits, inputs["labels"], vocab))])
        saving = step % settings.save_every == 0 or step == settings.steps
        if saving or step % settings.log_every == 0:
            loss, correct, count = _sum_over_ranks(sums, world_size).tolist()
            elapsed = time.perf_counter() - window_start
            last = {"step": step, "steps": settings.steps, "loss": loss / (window_steps * world_size),
                    "token_accuracy": correct / count if count else 0.0,
                    "samples_per_second": window_steps * settings.batch_size * world_size / elapsed,
                    "learning_rate": scheduler.get_last_lr()[0]}
            if not np.isfinite(last["loss"]):
                raise ClapDataError(f"training diverged at step {step} (loss {last['loss']}); lower --lr and rerun "
                                    "with --overwrite")
            if rank == 0 and report is not None:
                report(last)
            if saving and rank == 0:
                save()
            sums.zero_()
            window_start, window_steps = time.perf_counter(), 0
    batches.close()
    return last
