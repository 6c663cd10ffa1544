"""Shared-memory slots through which the loader's DataLoader workers hand decoded images to the trainer's process.

Why: a DataLoader worker hands a tensor over by moving it into a *fresh* shared-memory segment, and writing a fresh
segment costs a page fault per 4 KiB (the kernel allocates and zeroes each page on first touch) — measured here,
decoding a batch's JPEGs into fresh shared memory is ~35 % slower than into reused private memory, which made the
hand-over, not the decoding, what bounded the loader. So each worker gets a few slots, made once before the workers
fork (their pages are touched once and then reused), decodes each batch into a free slot and sends only the slot's
number; the trainer's process copies the images out into private tensors (a memcpy, cheaper than the page faults)
and frees the slot at once, so what a trainer keeps never aliases a slot that a worker reuses.

A worker has ``prefetch_factor + 2`` slots: the DataLoader asks a worker for at most ``prefetch_factor`` batches
ahead, and a batch's slot is freed as soon as the trainer's process receives it, so a worker never waits for one;
the semaphore that counts free slots only guards that reasoning (waiting longer than ``_WAIT_S`` is an error, not a
hang).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, replace
from typing import Any

import torch

from clap_data.errors import ClapDataError

_WAIT_S = 300.0


@dataclass(frozen=True)
class InSlot:
    """What a worker sends instead of a batch's images: the batch (its ``images`` left empty) and where they are."""

    batch: Any  # loader.Batch
    worker: int
    slot: int
    rows: int


class ImageRing:
    """``workers × slots`` image buffers per camera (uint8 ``[batch, H, W, 3]`` each) in shared memory, and per
    worker a count of its free slots. Made in the trainer's process before the DataLoader forks its workers."""

    def __init__(self, *, workers: int, prefetch_factor: int, cameras: tuple[str, ...], batch_size: int,
                 image_size: tuple[int, int]) -> None:
        self.slots = prefetch_factor + 2
        shape = (workers, self.slots, batch_size, *image_size, 3)
        self.pixels = {camera: torch.zeros(shape, dtype=torch.uint8).share_memory_() for camera in cameras}
        context = multiprocessing.get_context("fork")
        self.free = [context.Semaphore(self.slots) for _ in range(workers)]
        self._next = [0] * workers  # each worker's own cursor (a forked copy per worker)

    def take(self, worker: int, rows: int) -> tuple[int, dict[str, torch.Tensor]]:
        """In worker ``worker``: its next free slot and, per camera, the slot's first ``rows`` images to decode into."""
        if not self.free[worker].acquire(timeout=_WAIT_S):
            raise ClapDataError(f"loader worker {worker} found no free image slot for {_WAIT_S:.0f} s: the trainer's "
                                "process stopped taking batches")
        slot = self._next[worker]
        self._next[worker] = (slot + 1) % self.slots
        return slot, {camera: pixels[worker, slot, :rows] for camera, pixels in self.pixels.items()}

    def receive(self, sent: InSlot) -> Any:
        """In the trainer's process: the batch with its images copied out of the slot, which is freed."""
        try:
            # numpy's copy runs on this thread; torch's clone would wake its intra-op pool, which spins
            images = {camera: torch.from_numpy(pixels[sent.worker, sent.slot, :sent.rows].numpy().copy())
                      for camera, pixels in self.pixels.items()}
        finally:
            self.free[sent.worker].release()
        return replace(sent.batch, images=images)
