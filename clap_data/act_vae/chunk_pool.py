"""One-arm training and evaluation chunks drawn from unified robot datasets (METHOD.md §2–3).

The Act-VAE sees one arm's normalised chunk ``[32, 7]`` at a time. A pool keeps the frame arrays of
the given datasets in memory as float32 (state, action, arm mask: 120 bytes per frame, so about
1.2 GB per 10 M frames) and builds chunks on demand, batch by batch: the 32× larger chunk tensor is
never materialised. Memory is capped by ``max_frames``: when the datasets hold more, a
deterministic random subset of whole episodes (by a hash of dataset and episode) is kept, and the
pool says so in ``notice``. Datasets of different embodiments mix, each normalised with its own
statistics; single-arm data contributes only its active arm (a sample is a ``(frame, arm)`` pair
whose arm is active at that frame).

The held-out split is the one every stage shares (:mod:`clap_data.splits`, keyed on each episode's
provenance), so ``train`` and ``eval`` agree without sharing state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from clap_data.actions import NormStats, chunks_at, model_chunks
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.locking import dataset_lock
from clap_data.norm_stats import load_norm_stats
from clap_data.schemas import ARM_SLICES
from clap_data.splits import Holdout, episode_keys, unit_hash

DEFAULT_MAX_FRAMES = 20_000_000  # ~2.4 GB of frame arrays


def select_episodes(roots: list[Path], max_frames: int) -> tuple[list[set[int] | None], str]:
    """Per dataset, the episodes to load (None = all) so that at most ``max_frames`` frames are held,
    and a notice when some were left out. Episodes are taken in the order of a hash of (dataset,
    episode), so the subset is random but the same on every run."""
    lengths = [DatasetMetadata.load(root).episode_lengths() for root in roots]
    total = sum(sum(ep.values()) for ep in lengths)
    if total <= max_frames:
        return [None] * len(roots), ""
    order = sorted(
        ((unit_hash(f"clap-subset:{Path(root).name}:{e}"), i, e, n) for i, (root, ep) in enumerate(zip(roots, lengths, strict=True)) for e, n in ep.items())
    )
    chosen: list[set[int]] = [set() for _ in roots]
    held = 0
    for _, i, episode, frames in order:
        if held + frames <= max_frames:
            chosen[i].add(episode)
            held += frames
    episodes = sum(len(c) for c in chosen)
    notice = (
        f"the datasets hold {total:,} frames, more than --max-frames {max_frames:,}: using a fixed random subset of "
        f"{episodes:,} of {sum(len(ep) for ep in lengths):,} episodes ({held:,} frames)"
    )
    return list(chosen), notice


@dataclass
class DatasetChunks:
    """Frame arrays of one dataset and the ``(frame, arm)`` samples drawn from it."""

    root: Path
    stats: NormStats
    state: NDArray[np.float32]  # [F, 14], episodes concatenated
    action: NDArray[np.float32]
    arm_mask: NDArray[np.float32]  # [F, 2]
    last_frame: NDArray[np.int64]  # [F] global index of each frame's episode end
    sample_frames: NDArray[np.int64]  # [S] global chunk start frames
    sample_arms: NDArray[np.int64]  # [S] 0 = left, 1 = right

    def chunks(self, picks: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Normalised one-arm chunks ``[len(picks), 32, 7]`` of samples ``picks``, and their arms."""
        frames, arms = self.sample_frames[picks], self.sample_arms[picks]
        relative, _ = chunks_at(self.state, self.action, frames, self.last_frame[frames])
        dual = model_chunks(relative, self.arm_mask[frames], self.stats)
        one_arm = np.where((arms == 0)[:, None, None], dual[..., ARM_SLICES[0]], dual[..., ARM_SLICES[1]])
        return one_arm, arms


def _robot_stats(root: Path, stats_kind: str) -> NormStats:
    """The dataset's statistics; refuses what is not a unified robot dataset, before anything is read."""
    stats = load_norm_stats(root, stats_kind)
    if stats is None:
        raise ClapDataError(f"{root} is human video: it has no action labels to train or evaluate the Act-VAE on")
    return stats


def _load_dataset(root: Path, stats: NormStats, holdout: Holdout, held_out: bool, keep: set[int] | None) -> DatasetChunks:
    keys = episode_keys(DatasetMetadata.load(root))
    states, actions, masks, lasts, frames_out, arms_out = [], [], [], [], [], []
    offset = 0
    for episode in iter_episode_arrays(root):
        if keep is not None and episode.episode_index not in keep:
            continue
        n = len(episode.state)
        states.append(episode.state.astype(np.float32))
        actions.append(episode.action.astype(np.float32))
        masks.append(episode.arm_mask.astype(np.float32))
        lasts.append(np.full(n, offset + n - 1, dtype=np.int64))
        starts = holdout.starts(keys[episode.episode_index], n, held_out)
        for arm in (0, 1):
            active = starts[episode.arm_mask[starts, arm] != 0]
            frames_out.append(active + offset)
            arms_out.append(np.full(len(active), arm, dtype=np.int64))
        offset += n
    if offset == 0:
        raise ClapDataError(f"{root} holds no frames")

    def joined(parts: list[np.ndarray], dtype: type, width: int | None = None) -> np.ndarray:
        if parts:
            return np.concatenate(parts).astype(dtype, copy=False)
        return np.zeros((0,) if width is None else (0, width), dtype=dtype)

    return DatasetChunks(
        root=Path(root), stats=stats,
        state=joined(states, np.float32, 14), action=joined(actions, np.float32, 14), arm_mask=joined(masks, np.float32, 2),
        last_frame=joined(lasts, np.int64), sample_frames=joined(frames_out, np.int64), sample_arms=joined(arms_out, np.int64),
    )


class ChunkPool:
    """Samples across several datasets, in proportion to how many each holds."""

    def __init__(self, roots: list[Path], stats_kind: str, holdout: Holdout, held_out: bool, max_frames: int = DEFAULT_MAX_FRAMES) -> None:
        with ExitStack() as locks:  # the datasets must not change while they are read (then they may)
            for root in roots:
                locks.enter_context(dataset_lock(Path(root), exclusive=False, purpose="reading Act-VAE chunks"))
            stats = [_robot_stats(Path(root), stats_kind) for root in roots]
            keep, self.notice = select_episodes([Path(r) for r in roots], max_frames)
            self.datasets = [
                _load_dataset(Path(root), s, holdout, held_out, subset) for root, s, subset in zip(roots, stats, keep, strict=True)
            ]
        self.sizes = np.array([len(d.sample_frames) for d in self.datasets], dtype=np.int64)
        self.side = "held-out" if held_out else "training"
        self.holdout = holdout

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def require_samples(self) -> None:
        if len(self) == 0:
            names = ", ".join(str(d.root) for d in self.datasets)
            hint = " (with very few episodes, try --holdout tail)" if self.holdout.mode == "episodes" else ""
            raise ClapDataError(f"{names}: no {self.side} chunks under holdout {self.holdout.mode} {self.holdout.fraction}{hint}")

    def sample(self, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        """A random batch of one-arm chunks ``[batch_size, 32, 7]`` (float32)."""
        self.require_samples()
        owners = rng.choice(len(self.datasets), size=batch_size, p=self.sizes / self.sizes.sum())
        parts = []
        for i, dataset in enumerate(self.datasets):
            count = int((owners == i).sum())
            if count:
                parts.append(dataset.chunks(rng.integers(0, self.sizes[i], size=count))[0])
        return torch.from_numpy(np.concatenate(parts).astype(np.float32))

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor, NDArray[np.int64]]]:
        """Every sample once, in order: ``(dataset position, chunks [B, 32, 7], arms [B])``."""
        self.require_samples()
        for i, dataset in enumerate(self.datasets):
            for begin in range(0, self.sizes[i], batch_size):
                picks = np.arange(begin, min(begin + batch_size, self.sizes[i]))
                chunks, arms = dataset.chunks(picks)
                yield i, torch.from_numpy(chunks.astype(np.float32)), arms
