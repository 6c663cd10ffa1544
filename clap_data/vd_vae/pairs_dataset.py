"""The VD-VAE's training items: frame pairs ``(o_t, o_{t+gap})`` of training-side episodes, spooled to disk once.

Why a spool: the backbone is frozen, so a frame's clean patch tokens never change; every frame of a used episode
goes through it **once** (a frame is the ``o_t`` of one pair and the ``o_{t+gap}`` of another) and its tokens are
written as float16 to a numpy memmap in the checkpoint's ``.cache`` folder. Pairs are then sampled from the memmap,
so memory holds one batch, not every decoded frame of a big dataset.

Augmentation is applied to **pixels before the backbone** (as the paper does), so the online branch's tokens
cannot come from the clean spool: the spool also keeps each frame's uint8 pixels (``H·W·3`` bytes per frame on
disk, at the camera's own resolution: 9 KB for the tests' 64×48, 2.7 MB for 720p), and every batch runs the
backbone on its augmented pixels — correct but about twice the backbone work of a clean-only step. With
``augment=False`` no pixels are spooled and the online encoder sees the clean tokens (for human items the teacher
and the online branch then see the same input, which weakens that positive); use it for very large datasets.

Items: a pair is kept when its frame ``t`` starts a training-side chunk (:class:`clap_data.splits.Holdout`) and
``t + gap`` is inside the episode and not held out (padded pairs are skipped). A robot item carries the arm mask at
``t`` and the **continuous Act-VAE latents** ``z_e [2, Nq, code_dim]`` of its ground-truth chunk per arm, left then
right: the model's ``robot_targets`` are latents, and its online SigLIP branch is continuous ``z_action`` too, so
latents are the like-for-like positive (METHOD.md says "code vectors"; ``z_e`` is what they quantise to). They
are computed with the statistics the Act-VAE was trained with. A human item (robot_type ``human``) has no target
and both arms active.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from clap_data.actions import NormStats, episode_chunks, model_chunks
from clap_data.atomic import write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.locking import dataset_lock
from clap_data.models import ActVAE, augment_pairs
from clap_data.models.backbone import FrozenBackbone
from clap_data.norm_stats import load_norm_stats
from clap_data.schemas import ARM_SLICES
from clap_data.splits import Holdout, episode_keys
from clap_data.vd_vae.frame_pairs import EpisodeVideo, episode_videos, iter_episode_frames

BACKBONE_BATCH = 32  # frames per backbone call while spooling
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SpoolSource:
    """One dataset to read and the camera to pair; robot or human follows from its ``robot_type``."""

    root: Path
    camera: str


def training_pair_starts(holdout: Holdout, key: str, frames: int, gap: int) -> NDArray[np.int64]:
    """Frames ``t`` whose pair is on the training side: the chunk at ``t`` is (``Holdout.starts``) and the frame
    ``t + gap`` is inside the episode and not held out."""
    starts = holdout.starts(key, frames, held_out=False)
    held = np.zeros(frames, dtype=bool)
    held[holdout.starts(key, frames, held_out=True)] = True
    starts = starts[starts + gap < frames]
    return starts[~held[starts + gap]]


def _targets(act_vae: ActVAE, state: np.ndarray, action: np.ndarray, arm_mask: np.ndarray, starts: np.ndarray,
             stats: NormStats) -> np.ndarray:
    """Act-VAE latents ``[len(starts), 2, Nq, code_dim]`` of the ground-truth chunks at ``starts``."""
    chunks, _ = episode_chunks(state, action)
    dual = model_chunks(chunks[starts], arm_mask[starts], stats)
    arms = np.concatenate([dual[..., ARM_SLICES[0]], dual[..., ARM_SLICES[1]]]).astype(np.float32)
    with torch.no_grad():
        z = act_vae.encode_latents(torch.from_numpy(arms).to(act_vae.quantizer.codebook.device)).cpu().numpy()
    n = len(starts)
    return np.stack([z[:n], z[n:]], axis=1)


class _SpoolWriter:
    """Appends frames' tokens (and pixels) to memmaps sized for the whole dataset, in backbone batches."""

    def __init__(self, folder: Path, frames: int, backbone: FrozenBackbone, pixel_shape: tuple[int, ...] | None):
        from numpy.lib.format import open_memmap

        self.backbone = backbone
        shape = (frames, backbone.num_patches, backbone.hidden_size)
        self.patches = open_memmap(folder / "patches.npy", mode="w+", dtype=np.float16, shape=shape)
        self.pixels = None if pixel_shape is None else open_memmap(
            folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(frames, *pixel_shape))
        self.pending: list[np.ndarray] = []
        self.row = 0

    def add(self, frame: np.ndarray) -> int:
        """Queue one frame; returns its row."""
        self.pending.append(frame)
        if len(self.pending) == BACKBONE_BATCH:
            self.flush()
        return self.row + len(self.pending) - 1

    def flush(self) -> None:
        if not self.pending:
            return
        batch = np.stack(self.pending)
        end = self.row + len(batch)
        self.patches[self.row:end] = self.backbone(batch).cpu().numpy().astype(np.float16)
        if self.pixels is not None:
            self.pixels[self.row:end] = batch
        self.row, self.pending = end, []


def _episodes(meta: DatasetMetadata, robot: bool) -> list[tuple[int, Any]]:
    """``(episode index, arrays or None)`` in order; robot arrays are read one row group at a time."""
    if robot:
        return [(int(e.episode_index), e) for e in iter_episode_arrays(meta.root)]
    return [(int(e), None) for e in sorted(meta.episode_lengths())]


def _frame_shape(video: EpisodeVideo) -> tuple[int, ...]:
    """The camera's ``(H, W, 3)``, from the first frame (the decoder is closed straight after)."""
    frames = iter_episode_frames(video)
    try:
        return next(frames).shape
    finally:
        frames.close()


def build_spool(source: SpoolSource, folder: Path, identity: dict[str, Any], backbone: FrozenBackbone,
                act_vae: ActVAE | None, stats_kind: str, holdout: Holdout, gap: int, augment: bool) -> None:
    """Write (or keep, when its manifest already says ``identity``) the spool of one dataset in ``folder``."""
    manifest = folder / MANIFEST_NAME
    if manifest.is_file() and json.loads(manifest.read_text()) == identity:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with dataset_lock(source.root, exclusive=False, purpose="spooling VD-VAE frame pairs"):
        meta = DatasetMetadata.load(source.root)
        videos = episode_videos(meta, source.camera)  # refuses a dataset without the camera
        stats = load_norm_stats(source.root, stats_kind)
        keys = episode_keys(meta)
        plan: list[tuple[EpisodeVideo, Any, NDArray[np.int64]]] = []
        for index, arrays in _episodes(meta, robot=stats is not None):
            starts = training_pair_starts(holdout, keys[index], videos[index].length, gap)
            if len(starts):
                plan.append((videos[index], arrays, starts))
        frames = sum(video.length for video, _, _ in plan)
        if frames == 0:
            raise ClapDataError(f"{source.root}: no training-side frame pairs {gap} frames apart under holdout "
                                f"{holdout.mode} {holdout.fraction} (with very few episodes, try --holdout tail)")
        writer = _SpoolWriter(folder, frames, backbone, _frame_shape(plan[0][0]) if augment else None)
        t_rows, gap_rows, masks, targets = [], [], [], []
        for video, arrays, starts in plan:
            base = writer.row + len(writer.pending)
            for frame in iter_episode_frames(video):
                writer.add(frame)
            t_rows.append(base + starts)
            gap_rows.append(base + starts + gap)
            if arrays is None:
                masks.append(np.ones((len(starts), 2), dtype=bool))
                continue
            masks.append(arrays.arm_mask[starts] != 0)
            targets.append(_targets(act_vae, arrays.state, arrays.action, arrays.arm_mask, starts, stats))
        writer.flush()
        writer.patches.flush()
        np.savez(folder / "items.npz", t_rows=np.concatenate(t_rows), gap_rows=np.concatenate(gap_rows),
                 arm_mask=np.concatenate(masks), is_robot=np.array(stats is not None),
                 targets=np.concatenate(targets).astype(np.float16) if targets else np.zeros((0,), np.float16))
    write_json_atomic(manifest, identity)  # last: a spool interrupted before it is rebuilt


@dataclass
class PairBatch:
    """One training batch, as :meth:`clap_data.models.VDVAE.forward` takes it."""

    patches: torch.Tensor  # [B, 2, P, D] clean
    patches_aug: torch.Tensor | None  # [B, 2, P, D] of augmented pixels (None: no augmentation)
    arm_mask: torch.Tensor  # [B, 2] bool
    is_robot: torch.Tensor  # [B] bool
    robot_targets: torch.Tensor  # [B, 2, Nq, code_dim]


class SpooledPairs:
    """The items of one spooled dataset, read through memmaps."""

    def __init__(self, folder: Path, root: Path) -> None:
        self.root = root
        self.patches = np.load(folder / "patches.npy", mmap_mode="r")
        pixels = folder / "pixels.npy"
        self.pixels = np.load(pixels, mmap_mode="r") if pixels.is_file() else None
        with np.load(folder / "items.npz") as items:
            self.t_rows, self.gap_rows = items["t_rows"], items["gap_rows"]
            self.arm_mask, self.is_robot, self.targets = items["arm_mask"], bool(items["is_robot"]), items["targets"]

    def __len__(self) -> int:
        return len(self.t_rows)


class PairPool:
    """Random batches across several spooled datasets, in proportion to how many pairs each holds."""

    def __init__(self, parts: list[SpooledPairs], target_shape: tuple[int, int]) -> None:
        self.parts = parts
        self.sizes = np.array([len(p) for p in parts], dtype=np.int64)
        self.target_shape = target_shape  # (Nq, code_dim): zero targets for human items

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def sample(self, batch_size: int, rng: np.random.Generator, backbone: FrozenBackbone,
               generator: torch.Generator | None) -> PairBatch:
        """A batch of ``batch_size`` pairs; ``generator`` draws the augmentation (None: no augmentation)."""
        owners = rng.choice(len(self.parts), size=batch_size, p=self.sizes / self.sizes.sum())
        clean, aug, masks, robots, targets = [], [], [], [], []
        for i, part in enumerate(self.parts):
            count = int((owners == i).sum())
            if not count:
                continue
            picks = rng.integers(0, self.sizes[i], size=count)
            rows = np.stack([part.t_rows[picks], part.gap_rows[picks]], axis=1)  # [n, 2]
            clean.append(torch.from_numpy(part.patches[rows.reshape(-1)].astype(np.float32)).view(count, 2, *part.patches.shape[1:]))
            if generator is not None:
                pixels = torch.from_numpy(part.pixels[rows.reshape(-1)]).view(count, 2, *part.pixels.shape[1:])
                augmented = augment_pairs(pixels.float() / 255.0, generator)
                uint8 = (augmented * 255.0).round().to(torch.uint8).flatten(0, 1)
                aug.append(backbone(uint8).cpu().view(count, 2, *part.patches.shape[1:]))
            masks.append(torch.from_numpy(part.arm_mask[picks]))
            robots.append(torch.full((count,), part.is_robot))
            targets.append(torch.from_numpy(part.targets[picks].astype(np.float32)) if part.is_robot
                           else torch.zeros(count, 2, *self.target_shape))
        return PairBatch(torch.cat(clean), torch.cat(aug) if aug else None, torch.cat(masks), torch.cat(robots),
                         torch.cat(targets))
