"""What the policy training loops (CLAP-NTP, :mod:`~clap_data.training.ntp_train`; CLAP-RF,
:mod:`~clap_data.training.rf_train`) share, so that their exact resume, logging and saving are one piece of code.

Why these pieces and no more: both loops read the same shards, encode the same prompts with the same wrist drops,
optimise with AdamW on a warmup-then-constant schedule, and must resume exactly after a ``kill -9``. What differs —
the model, what one step computes and which metrics a window reports — each loop passes in as a :class:`Loop`.

* **Batches** (:func:`encoded_batches`): the samples of step s are a function of (seed, s, world size), the wrist
  drops of (seed, s, rank); ``extras`` adds tensors of the samples a loop needs beside the model's inputs.
* **Resume** (:func:`start_point`): every rank reads the saved state (refusing a run of other settings), or learns
  that the run is complete and exported; rank 0 holds the folder's writer lock for the whole loop
  (:func:`writer_lock`), so the workers of a killed command have stopped writing before a rerun reads anything.
* **Steps** (:func:`run_steps`): forward, backward, gradient norm clipped at 1, optimizer and schedule; metrics stay
  on the device, summed, until a log step reads them (one sync per ``log_every`` steps, summed over ranks); every
  ``save_every`` steps rank 0 saves the whole loop state with :mod:`clap_data.train_state` and then the loop's
  export. A save step is also a log step, so no metric window is ever open across a save, and a resumed run logs
  what an uninterrupted one does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from clap_data import train_state
from clap_data.act_vae.checkpoint import TRAINING_STATE_NAME, read_training_meta, resume_point
from clap_data.errors import ClapDataError
from clap_data.locking import file_lock
from clap_data.training.ntp_data import ShardSet, iter_training_batches
from clap_data.training.prompts import encode_training_batch

Report = Callable[[dict[str, Any]], None]
Extras = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
WRITER_LOCK = ".writer.lock"  # held by rank 0 (the driver holds ".lock")


def wrist_drops(samples: list[dict[str, Any]], probability: float, seed: int, step: int, rank: int) -> list[bool]:
    """Which samples of rank ``rank``'s batch at ``step`` leave both wrist images out: a function of (seed, step,
    rank) only (exact resume), and only where a head image remains (no sample is ever image-less)."""
    draws = np.random.default_rng([seed, step, rank]).random(len(samples))
    return [bool(d < probability) and "head" in s["images"] for d, s in zip(draws, samples, strict=True)]


def encoded_batches(shards: ShardSet, processor: Any, *, batch_size: int, wrist_drop: float, seed: int, rank: int,
                    world_size: int, start: int, pin: bool, robot_only: bool = False,
                    extras: Extras | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Step by step from ``start``: this rank's samples (robot samples alone with ``robot_only``), wrists dropped,
    encoded with labels, and ``extras(samples)`` merged in."""
    samples = iter_training_batches(shards, batch_size, rank, world_size, seed, start, robot_only=robot_only)
    step = start
    while True:
        batch = next(samples)
        drops = wrist_drops(batch, wrist_drop, seed, step, rank)
        encoded = encode_training_batch(processor, batch, drops, shards.num_queries)
        if extras is not None:
            encoded.update(extras(batch))
        yield {k: v.pin_memory() for k, v in encoded.items()} if pin else encoded
        step += 1


def prefetched(batches: Iterator[Any]) -> Iterator[Any]:
    """``batches`` one ahead, the next one made in a thread while the caller works on the current one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(next, batches)
        while True:
            current = upcoming.result()
            upcoming = pool.submit(next, batches)
            yield current


def sum_over_ranks(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(values)
    return values


def adamw_warmup(groups: list[dict[str, Any]], warmup_steps: int,
                 weight_decay: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (β = 0.9, 0.95) over parameter ``groups`` (each with its own ``lr``), and a linear warmup over
    ``warmup_steps`` then a constant rate (a finished run asked for more steps continues on the same schedule)."""
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=weight_decay)
    warmup = max(1, warmup_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))


@contextmanager
def writer_lock(ckpt: Path, rank: int, world_size: int, purpose: str) -> Iterator[None]:
    """Rank 0 holds ``ckpt``'s writer lock (waiting for it); every rank goes on only once it does."""
    if rank == 0:
        with file_lock(ckpt / WRITER_LOCK, ckpt, exclusive=True, purpose=purpose, wait=True):
            if world_size > 1:
                dist.barrier()
            yield
        return
    if world_size > 1:
        dist.barrier()
    yield


def start_point(ckpt: Path, identity: dict[str, Any], kind: str, steps: int, rank: int,
                on_start: Callable[[int], None] | None) -> tuple[dict[str, Any] | None, int] | None:
    """The saved state to restore (None: a fresh run) and the step it starts from; None when the run is complete
    and its export up to date. Rank 0 tells ``on_start`` the step."""
    saved = resume_point(ckpt, identity, overwrite=False, kind=kind)
    step = int(saved["extra"]["step"]) if saved else 0
    if rank == 0 and on_start is not None:
        on_start(step)
    if step >= steps and read_training_meta(ckpt).get("step") == step:
        return None
    return saved, step


def restore_last(saved: dict[str, Any] | None, module: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any] | None:
    """Put a saved state (None: a fresh run) back into the freshly built objects; the last window's metrics."""
    if saved is None:
        return None
    return train_state.restore(saved, module, optimizer, scheduler)["last"]


def wrap_ddp(module: nn.Module, world_size: int, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when there is more than one rank (itself otherwise)."""
    if world_size == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=find_unused)


Forward = Callable[[dict[str, torch.Tensor], int], tuple[torch.Tensor, torch.Tensor]]
Summary = Callable[[list[float], int], dict[str, Any]]


@dataclass(frozen=True)
class Cadence:
    """How long a run goes and how often it logs and saves; ``samples_per_step`` is the global batch."""

    steps: int
    save_every: int
    log_every: int
    samples_per_step: int


@dataclass(frozen=True)
class Loop:
    """What one training loop brings to :func:`run_steps`.

    ``forward(inputs, step)``: the step's inputs (on the device) and index → the loss to minimise and the step's
    metric values (a 1-D tensor; summed over the window). ``summarise(sums, n)``: the window's sums over every rank
    and ``n`` = steps × ranks → named metrics, ``loss`` among them. ``module`` is what the training state holds;
    ``export(step, last)`` writes the checkpoint's other files after the state."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    forward: Forward
    summarise: Summary
    export: Callable[[int, dict[str, Any] | None], None]
    ckpt: Path
    identity: dict[str, Any]


def run_steps(loop: Loop, cadence: Cadence, step: int, last: dict[str, Any] | None,
              batches: Iterator[dict[str, torch.Tensor]], rank: int, world_size: int, device: torch.device,
              report: Report | None, orphaned: Callable[[], bool] | None) -> dict[str, Any] | None:
    """Steps from ``step`` to ``cadence.steps`` (see the module docstring); returns the last window's metrics.
    ``orphaned`` is asked before every step; True (the command that started the run is gone) stops it."""

    def save() -> None:
        state = train_state.capture(loop.module, loop.optimizer, loop.scheduler,
                                    extra={"run": loop.identity, "step": step, "last": last})
        train_state.save(loop.ckpt / TRAINING_STATE_NAME, state)
        loop.export(step, last)

    if step >= cadence.steps and rank == 0:  # a crash left the export one save behind the state
        save()
    sums: torch.Tensor | None = None
    window_start, window_steps = time.perf_counter(), 0
    while step < cadence.steps:
        if orphaned is not None and orphaned():
            raise ClapDataError(f"the command that started this run is gone; rank {rank} stops at step {step}")
        inputs = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        loss, values = loop.forward(inputs, step)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(loop.module.parameters(), 1.0)
        loop.optimizer.step()
        loop.scheduler.step()
        step += 1
        window_steps += 1
        values = values.detach().double()
        sums = values if sums is None else sums + values
        saving = step % cadence.save_every == 0 or step == cadence.steps
        if saving or step % cadence.log_every == 0:
            totals = sum_over_ranks(sums, world_size).tolist()
            elapsed = time.perf_counter() - window_start
            last = {"step": step, "steps": cadence.steps, **loop.summarise(totals, window_steps * world_size),
                    "samples_per_second": window_steps * cadence.samples_per_step / elapsed,
                    "learning_rate": loop.scheduler.get_last_lr()[0]}
            if not np.isfinite(last["loss"]):
                raise ClapDataError(f"training diverged at step {step} (loss {last['loss']}); lower --lr and rerun "
                                    "with --overwrite")
            if rank == 0 and report is not None:
                report(last)
            if saving and rank == 0:
                save()
            sums = None
            window_start, window_steps = time.perf_counter(), 0
    batches.close()
    return last


def train_from(loop: Loop, settings: Any, shards: ShardSet, processor: Any, step: int, last: dict[str, Any] | None,
               rank: int, world_size: int, device: torch.device, report: Report | None,
               orphaned: Callable[[], bool] | None, robot_only: bool = False,
               extras: Extras | None = None) -> dict[str, Any] | None:
    """:func:`run_steps` on the encoded batches of ``settings`` (a loop's settings: ``steps``, ``batch_size``,
    ``save_every``, ``log_every``, ``wrist_drop``, ``seed``) from ``step``; on CUDA pinned and made one ahead in a
    thread (the processor's image work overlaps the GPU's; on a CPU the thread would only compete for the cores)."""
    cuda = device.type == "cuda"
    batches = encoded_batches(shards, processor, batch_size=settings.batch_size, wrist_drop=settings.wrist_drop,
                              seed=settings.seed, rank=rank, world_size=world_size, start=step, pin=cuda,
                              robot_only=robot_only, extras=extras)
    if cuda:
        batches = prefetched(batches)
    cadence = Cadence(settings.steps, settings.save_every, settings.log_every, settings.batch_size * world_size)
    return run_steps(loop, cadence, step, last, batches, rank, world_size, device, report, orphaned)
