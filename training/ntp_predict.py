"""``clap-data predict ntp``: one control step of a CLAP-NTP checkpoint on one exported sample, beside the truth.

Why from the shards: a held-out sample carries everything ``NTPPolicy.predict`` needs (the images as the policy
sees them, instruction, embodiment, state, arm mask) and the answers it should give (subtask, tokens, the
ground-truth chunk), so one command shows a user what the policy does on frames it never trained on — the same
call a robot client makes, not a re-implementation of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clap_data.actions import HUMAN
from clap_data.errors import ClapDataError
from clap_data.schemas.shards_v1 import (
    ARM_MASK,
    EMBODIMENT,
    HELDOUT_SPLIT,
    INSTRUCTION,
    SAMPLE_ID,
    STATE,
    SUBTASK,
    TOKENS,
)
from clap_data.training.ntp_data import ShardSet, rows_to_samples
from clap_data.training.ntp_eval import ground_truth_chunk, squared_error
from clap_data.training.ntp_policy import NTPPolicy


@dataclass
class ShardPrediction:
    """The policy's answer to one robot sample of the shards, and the sample's own."""

    sample_id: str
    embodiment: str
    instruction: str
    cameras: list[str]
    subtask: str
    truth_subtask: str
    tokens: list[int]
    truth_tokens: list[int]
    actions: list[list[float]]  # [32][14], absolute, robot units
    truth_actions: list[list[float]]
    mse: float | None  # over the active arms' DOFs, Euler angle differences wrapped


def _read_row(file: pq.ParquetFile, row: int) -> dict[str, Any]:
    """Row ``row`` of ``file``, reading only the row group that holds it (a shard is hundreds of MB of images)."""
    ends = np.cumsum([file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)])
    group = int(np.searchsorted(ends, row, side="right"))
    first = int(ends[group - 1]) if group else 0
    return rows_to_samples(file.read_row_group(group).slice(row - first, 1))[0]


def read_shard_sample(shards: ShardSet, split: str, index: int | None = None,
                      sample_id: str | None = None) -> dict[str, Any]:
    """One sample of ``split``: the ``index``-th in file order, or the one whose ``sample_id`` is given (found
    from the id column alone)."""
    seen = 0
    for path in shards.files(split):
        file = pq.ParquetFile(path)
        if sample_id is not None:
            ids = file.read(columns=[SAMPLE_ID]).column(0).to_pylist()
            if sample_id in ids:
                return _read_row(file, ids.index(sample_id))
            continue
        rows = file.metadata.num_rows
        if index is not None and index < seen + rows:
            return _read_row(file, index - seen)
        seen += rows
    if sample_id is not None:
        raise ClapDataError(f"{shards.root}/{split} has no sample {sample_id!r}")
    raise ClapDataError(f"{shards.root}/{split} holds {seen} samples; there is no sample {index}")


def predict_shard_sample(policy: NTPPolicy, shards: ShardSet, split: str = HELDOUT_SPLIT, index: int = 0,
                         sample_id: str | None = None) -> ShardPrediction:
    """``policy.predict`` on one sample, scored against the sample's chunk (robots) and tokens."""
    if shards.act_vae["checkpoint_sha256"] != policy.meta["act_vae"]["checkpoint_sha256"]:
        raise ClapDataError(f"{shards.root}'s tokens come from another Act-VAE than the one {policy.ckpt} was trained "
                            "with: codes of one codebook mean nothing to another")
    sample = read_shard_sample(shards, split, None if sample_id else index, sample_id)
    embodiment = sample[EMBODIMENT]
    if embodiment == HUMAN:
        raise ClapDataError(f"sample {sample[SAMPLE_ID]} is human video: it has no state to act from; "
                            "pick a robot sample")
    out = policy.predict(sample["images"], sample[INSTRUCTION], embodiment, sample[STATE], sample[ARM_MASK])
    truth = ground_truth_chunk(sample, shards)
    active = np.repeat(np.asarray(sample[ARM_MASK], dtype=bool), 7)
    errors = squared_error(np.asarray(out["actions"], dtype=np.float64), truth)
    return ShardPrediction(
        sample_id=sample[SAMPLE_ID], embodiment=embodiment, instruction=sample[INSTRUCTION],
        cameras=sorted(sample["images"]), subtask=out["subtask"], truth_subtask=sample[SUBTASK],
        tokens=[int(t) for t in out["tokens"]], truth_tokens=[int(t) for t in sample[TOKENS]],
        actions=np.asarray(out["actions"]).tolist(), truth_actions=truth.tolist(),
        mse=float(errors[active].mean()) if active.any() else None,
    )

