"""Pseudo-label pipeline: a unified dataset (human or robot) + a VD-VAE checkpoint → ``pseudo_tokens`` per frame.

Every frame ``t`` gets the VD-VAE's codes of the pair ``(o_t, o_{t+gap})`` of one camera (METHOD.md §4), so
human video carries tokens in the very vocabulary of the robots' ``action_tokens``:

* ``pseudo_tokens``: int16 ``[2·Nq]``, left arm's codes then right's (``TOKEN_ORDER_STORAGE``, as ``action_tokens``);
* ``pseudo_tokens_padded``: bool, ``t + gap`` ran past the episode's end, so its last frame stood in.

Ray Data batch inference through the shared column job (:mod:`clap_data.pipelines.column_job`, which owns the
lock, the atomic and resumable update and "same identity → nothing changes"). The work is split where the
cost is: CPU reader tasks only decode — one *segment* of an episode each, sequentially after one seek — and
the model actors (one per GPU, or CPU actors) run the frozen backbone, the expensive part, once per decoded
frame and then pair the patch tokens: a frame is the ``o_t`` of one pair and the ``o_{t+gap}`` of another, and
pairing after the backbone avoids running it twice. A segment is ``segment_frames`` consecutive outputs plus
the ``gap`` frames after them, which bounds a Ray object (and an actor's patch tokens) however long the
episode; an episode no longer than a segment is decoded and embedded exactly once, a longer one recomputes
``gap`` frames per segment. Frames travel at their stored resolution: resizing in the reader would round the
backbone's float resize to uint8 and change the tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.pipelines.column_job import (
    ColumnJob,
    ColumnJobReport,
    Encoder,
    readers_then_model,
    row_groups,
    run_column_job,
    token_column_job,
    token_orders,
)
from clap_data.progress import Reporter
from clap_data.schemas import PSEUDO_TOKENS, PSEUDO_TOKENS_PADDED, camera_feature_key
from clap_data.vd_vae.frame_pairs import EpisodeVideo, decoder_identity, episode_videos, iter_episode_frames

SEGMENT_FRAMES = 256  # outputs per reader object at most (it carries up to SEGMENT_FRAMES + gap decoded frames)
SEGMENT_BYTES = 96 << 20  # and at most about this much decoded RGB per object, so large frames make short segments


def segment_length(frame_bytes: int, gap: int, most: int = SEGMENT_FRAMES) -> int:
    """Outputs per segment: ``most``, fewer when ``most + gap`` frames of ``frame_bytes`` would pass
    :data:`SEGMENT_BYTES` (a 720p segment of 256 + 32 frames is ~800 MB, more than the object store)."""
    return max(1, min(most, SEGMENT_BYTES // max(1, frame_bytes) - gap))


@dataclass(frozen=True)
class PseudolabelRequest:
    ckpt: Path
    backbone: Path
    camera: str = "head"
    device: str = "auto"
    batch_size: int = 64  # frames per backbone call, and pairs per VD-VAE call
    workers: int | None = None
    address: str | None = None
    wait: bool = False  # wait for another command holding the dataset instead of refusing
    segment_frames: int = SEGMENT_FRAMES


def pseudo_identity(config: Any, sha256: str, backbone: dict[str, Any], camera: str) -> dict[str, Any]:
    """What a consumer needs to trust the pseudo-tokens and to know they share the Act-VAE's vocabulary
    (stored in the feature's info): both checkpoints, the backbone's weights, the camera, the gap and the decoder
    (:func:`clap_data.vd_vae.frame_pairs.decoder_identity`)."""
    return {
        "tokenizer": "vd-vae",
        "checkpoint_sha256": sha256,
        "act_vae_sha256": config.act_vae_sha256,
        "num_queries": config.num_queries,
        "codebook_size": config.act_codebook_size,
        "code_dim": config.code_dim,
        "backbone": backbone,
        "camera": camera,
        "gap": config.gap,
        "decoder": decoder_identity(),
        **token_orders(PSEUDO_TOKENS),
    }


def _segments(root: Path, files: list[str], videos: dict[int, EpisodeVideo], size: int) -> list[dict[str, Any]]:
    """Reader work items: ``size`` consecutive frames of one episode each, placed by file, row group and row.
    Reads only the row groups' ``episode_index`` and ``frame_index``."""
    items = []
    for item in row_groups(root, files):
        table = pq.ParquetFile(root / item["file"]).read_row_group(item["group"], columns=["episode_index", "frame_index"])
        episodes, frames = table.column("episode_index").to_numpy(), table.column("frame_index").to_numpy()
        for episode in np.unique(episodes):
            rows = np.flatnonzero(episodes == episode)
            video = videos.get(int(episode))
            if video is None or video.length != len(rows) or not np.array_equal(frames[rows], np.arange(len(rows))):
                raise ClapDataError(f"{item['file']}: episode {episode} is not complete within one row group, or its "
                                    "video disagrees with its rows; the dataset was not written by clap-data")
            for start in range(0, len(rows), size):
                items.append({**item, "episode": int(episode), "first_row": int(rows[start]), "start": start,
                              "stop": min(start + size, len(rows))})
    return items


def _decode_segment(batch: dict[str, np.ndarray], videos: dict[int, EpisodeVideo], gap: int) -> dict[str, Any]:
    """Ray task: one segment → its frames ``start … min(stop + gap, length) - 1``, decoded after one seek."""
    (episode,), (start,), (stop,) = batch["episode"], batch["start"], batch["stop"]
    video = videos[int(episode)]
    end = min(int(stop) + gap, video.length)
    window = replace(video, first_frame=video.first_frame + int(start), length=end - int(start))
    frames = np.stack(list(iter_episode_frames(window)))
    return {key: batch[key] for key in ("file", "group", "first_row", "start", "stop")} | {
        "length": np.array([video.length]), "frames": frames[None],
    }


class _VDVAELabeller:
    """Ray actor: loads the backbone and the VD-VAE once, then labels segment after segment."""

    def __init__(self, ckpt: str, backbone: str, device: str, threads: int, batch_size: int) -> None:
        import torch

        from clap_data.models import VDVAE, load_model
        from clap_data.models.backbone import load_backbone

        if device == "cpu":
            torch.set_num_threads(threads)  # the actor's share of the cores, no more
        self.torch = torch
        self.batch_size = batch_size
        self.backbone = load_backbone(backbone).to(device)
        self.model, _ = load_model(VDVAE, ckpt, device, kind="a VD-VAE")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = batch["frames"][0]
        start, stop, length = int(batch["start"][0]), int(batch["stop"][0]), int(batch["length"][0])
        n = self.batch_size
        patches = self.torch.cat([self.backbone(frames[i:i + n]) for i in range(0, len(frames), n)])
        t = np.arange(start, stop)
        later = np.minimum(t + self.model.config.gap, length - 1)
        index_t, index_gap = self.torch.from_numpy(t - start), self.torch.from_numpy(later - start)
        tokens = [
            self.model.pseudo_tokens(self.torch.stack([patches[index_t[i:i + n]], patches[index_gap[i:i + n]]], dim=1))
            for i in range(0, len(t), n)
        ]
        rows = len(t)
        return {
            "file": np.repeat(batch["file"], rows), "group": np.repeat(batch["group"], rows),
            "row": int(batch["first_row"][0]) + np.arange(rows),
            PSEUDO_TOKENS: self.torch.cat(tokens).cpu().numpy(), PSEUDO_TOKENS_PADDED: later != t + self.model.config.gap,
        }


def _encoder(videos: dict[int, EpisodeVideo], gap: int, request: PseudolabelRequest, device: str) -> Encoder:
    def encode(root: Path, files: list[str]) -> Iterator[dict[str, np.ndarray]]:
        return readers_then_model(
            _segments(root, files, videos, request.segment_frames), _decode_segment, {"videos": videos, "gap": gap},
            _VDVAELabeller, {"ckpt": str(request.ckpt), "backbone": str(request.backbone), "batch_size": request.batch_size},
            batch_size=1, device=device, workers=request.workers,
        )

    return encode


def pseudolabel_dataset(root: Path, request: PseudolabelRequest, reporter: Reporter | None = None) -> ColumnJobReport:
    """Add or replace ``pseudo_tokens`` in the dataset at ``root``; see the module docstring.
    The report's ``flagged`` counts the padded pairs."""
    from clap_data.act_vae.training import pick_device
    from clap_data.models import VDVAE, load_model
    from clap_data.models.backbone import load_backbone

    device = str(pick_device(request.device))

    def prepare(meta: DatasetMetadata) -> tuple[ColumnJob, Encoder]:
        videos = episode_videos(meta, request.camera)  # refuses a camera the dataset lacks, naming its cameras
        model, sha256 = load_model(VDVAE, request.ckpt, kind="a VD-VAE", hint="clap-data train vd-vae makes one")
        backbone = load_backbone(request.backbone)
        c = model.config
        if (backbone.num_patches, backbone.hidden_size) != (c.num_patches, c.feature_dim):
            raise ClapDataError(
                f"{request.ckpt} was trained on {c.num_patches} patches of {c.feature_dim} features, but backbone "
                f"{request.backbone} gives {backbone.num_patches} of {backbone.hidden_size}: give the backbone it was trained on"
            )
        identity = pseudo_identity(c, sha256, backbone.identity(), request.camera)
        provenance = {**identity, "checkpoint": str(Path(request.ckpt).absolute()), "backbone_path": str(request.backbone)}
        job = token_column_job("pseudolabel vd-vae", PSEUDO_TOKENS, identity, provenance)
        height, width, channels = meta.features[camera_feature_key(request.camera)]["shape"]
        size = segment_length(height * width * channels, c.gap, request.segment_frames)
        return job, _encoder(videos, c.gap, dataclasses.replace(request, segment_frames=size), device)

    return run_column_job(Path(root), prepare, reporter=reporter, address=request.address, workers=request.workers,
                          wait=request.wait, device=device)
