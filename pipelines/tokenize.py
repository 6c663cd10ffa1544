"""Tokenize pipeline: a unified robot dataset + an Act-VAE checkpoint → ``action_tokens`` per frame.

Ray Data batch inference in two stages (DESIGN.md): CPU tasks read one episode's row group at a
time and build its normalised dual-arm chunks (METHOD.md §2, exactly what ``clap-data chunk``
prints) → an actor pool holding the model (one actor per GPU, or CPU actors) encodes batches of
chunks to ``2·Nq`` int16 codes (left arm's, then right arm's). The driver collects the codes of a
data file and stages the file with two new columns:

* ``action_tokens``: int16 ``[2·Nq]`` (16 for the release model), the chunk starting at that frame;
* ``action_tokens_padded``: bool, the chunk ran past the episode's end (tail repeated).

``meta/info.json`` describes both, and the ``action_tokens`` feature's ``info`` holds the
tokenizer's identity (checkpoint sha256, Nq, K, chunk size, statistics id, token and arm order), so
a consumer knows how to decode them. This module holds only the chunk reader and the model actor:
the lock, the atomic and resumable update, "same checkpoint and statistics → nothing changes" and
the replacement of another checkpoint's columns are the shared column job's
(:mod:`clap_data.pipelines.column_job`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clap_data.actions import CHUNK_SIZE, HUMAN, NormStats, episode_chunks, model_chunks
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import column_matrix
from clap_data.norm_stats import load_norm_stats
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
from clap_data.schemas import (
    ACTION_COLUMN,
    ACTION_TOKENS,
    ACTION_TOKENS_PADDED,
    ARM_MASK_COLUMN,
    STATE_COLUMN,
)

_ARRAY_COLUMNS = ["episode_index", "frame_index", STATE_COLUMN, ACTION_COLUMN, ARM_MASK_COLUMN]


@dataclass(frozen=True)
class TokenizeRequest:
    ckpt: Path
    stats: str = "openclap"
    device: str = "auto"
    batch_size: int = 4096  # chunks per model call
    workers: int | None = None
    address: str | None = None
    wait: bool = False  # wait for another command holding the dataset instead of refusing


def tokenizer_identity(model: Any, sha256: str, stats_id: str) -> dict[str, Any]:
    """What a consumer needs to know to trust and decode the tokens (stored in the feature's info)."""
    c = model.config
    return {
        "tokenizer": "act-vae",
        "checkpoint_sha256": sha256,
        "num_queries": c.num_queries,
        "codebook_size": c.codebook_size,
        "code_dim": c.code_dim,
        "chunk_size": c.chunk_size,
        "stats_id": stats_id,
        **token_orders(ACTION_TOKENS),
    }


def _build_chunks(batch: dict[str, np.ndarray], root: str, stats: NormStats) -> dict[str, Any]:
    """Ray task: one row group (episodes are never split across row groups) → its frames' chunks."""
    out: dict[str, list[Any]] = {"file": [], "group": [], "row": [], "chunk": [], ACTION_TOKENS_PADDED: []}
    for relative, group in zip(batch["file"], batch["group"], strict=True):
        table = pq.ParquetFile(Path(root) / str(relative)).read_row_group(int(group), columns=_ARRAY_COLUMNS)
        episodes = table.column("episode_index").to_numpy()
        frames = table.column("frame_index").to_numpy()
        state, action, arm_mask = (column_matrix(table, name) for name in (STATE_COLUMN, ACTION_COLUMN, ARM_MASK_COLUMN))
        for episode in np.unique(episodes):
            rows = np.flatnonzero(episodes == episode)
            if not np.array_equal(frames[rows], np.arange(len(rows))):
                raise ClapDataError(
                    f"{relative}: episode {episode} is not complete within one row group; the dataset was not written by clap-data"
                )
            relative_chunks, padded = episode_chunks(state[rows], action[rows])
            out["file"].extend([str(relative)] * len(rows))
            out["group"].extend([int(group)] * len(rows))
            out["row"].extend(rows.tolist())
            out["chunk"].extend(model_chunks(relative_chunks, arm_mask[rows], stats).astype(np.float32))
            out[ACTION_TOKENS_PADDED].extend(padded.tolist())
    return {key: np.asarray(values) if key != "chunk" else np.stack(values) for key, values in out.items()} if out["row"] else out


class _ActVAETokenizer:
    """Ray actor: loads the checkpoint once, then encodes batch after batch of dual-arm chunks."""

    def __init__(self, ckpt: str, device: str, threads: int) -> None:
        import torch

        from clap_data.act_vae.checkpoint import load_act_vae

        if device == "cpu":
            torch.set_num_threads(threads)  # the actor's share of the cores, no more
        self.torch = torch
        self.device = device
        self.model, _ = load_act_vae(Path(ckpt), device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks = self.torch.from_numpy(np.ascontiguousarray(batch["chunk"], dtype=np.float32))
        if self.device.startswith("cuda"):
            chunks = chunks.pin_memory().to(self.device, non_blocking=True)
        tokens = self.model.tokenize_dual(chunks).cpu().numpy()
        return {
            "file": batch["file"], "group": batch["group"], "row": batch["row"],
            ACTION_TOKENS: tokens, ACTION_TOKENS_PADDED: batch[ACTION_TOKENS_PADDED],
        }


def _encoder(stats: NormStats, request: TokenizeRequest, device: str) -> Encoder:
    def encode(root: Path, files: list[str]) -> Iterator[dict[str, np.ndarray]]:
        return readers_then_model(
            row_groups(root, files), _build_chunks, {"root": str(root), "stats": stats},
            _ActVAETokenizer, {"ckpt": str(request.ckpt)}, batch_size=request.batch_size, device=device,
            workers=request.workers,
        )

    return encode


def tokenize_dataset(root: Path, request: TokenizeRequest, reporter: Reporter | None = None) -> ColumnJobReport:
    """Add or replace ``action_tokens`` in the dataset at ``root``; see the module docstring.
    The report's ``flagged`` counts the padded chunks."""
    from clap_data.act_vae.checkpoint import load_act_vae
    from clap_data.act_vae.training import pick_device

    device = str(pick_device(request.device))

    def prepare(meta: DatasetMetadata) -> tuple[ColumnJob, Encoder]:
        if meta.robot_type == HUMAN:
            raise ClapDataError(
                f"{meta.root} is human video: it has no actions to tokenize (human video gets pseudo_tokens from the VD-VAE)"
            )
        model, sha256 = load_act_vae(request.ckpt, "cpu")
        if model.config.chunk_size != CHUNK_SIZE:
            raise ClapDataError(
                f"{request.ckpt} was trained on {model.config.chunk_size}-step chunks; datasets are chunked in {CHUNK_SIZE}"
            )
        stats = load_norm_stats(meta.root, request.stats)
        identity = tokenizer_identity(model, sha256, stats.stats_id)
        job = token_column_job("tokenize act-vae", ACTION_TOKENS, identity,
                               {**identity, "checkpoint": str(Path(request.ckpt).absolute())})
        return job, _encoder(stats, request, device)

    return run_column_job(Path(root), prepare, reporter=reporter, address=request.address, workers=request.workers,
                          wait=request.wait, device=device)
