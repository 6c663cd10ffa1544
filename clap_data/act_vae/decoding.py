"""Tokens back to executable actions (METHOD.md §2–3): the policy's output path.

``detokenize`` is the documented Python entry point::

    from clap_data.act_vae.checkpoint import load_act_vae
    from clap_data.act_vae.decoding import detokenize
    from clap_data.norm_stats import load_norm_stats

    model, _ = load_act_vae("ckpt/")
    actions = detokenize(model, tokens, state_t, load_norm_stats("dataset/", "openclap"), arm_mask)

tokens ``[B, 2·Nq]`` (storage order: left arm's codes, then right's; ``parse_text_tokens`` turns the
policy's ``<ACT_i>`` text into that) → the decoder's normalised relative chunk → denormalised with
the embodiment's q01/q99 → absolute ``p = p0 + Δp``, ``R = ΔR·R0`` from the state at the chunk's
first frame. The inactive arm's slot is zero, as in the unified datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

from clap_data.actions import NormStats, absolute_chunk, denormalize, mask_arms
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import read_episode_arrays
from clap_data.models import ActVAE, parse_text_tokens, text_tokens
from clap_data.norm_stats import load_norm_stats
from clap_data.schemas import ACTION_TOKENS, ACTION_TOKENS_PADDED


def detokenize(
    model: ActVAE,
    tokens: Any,
    state_t: NDArray[np.float64],
    stats: NormStats,
    arm_mask: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Absolute action chunks ``[B, 32, 14]`` (or ``[32, 14]`` for one chunk); see the module docstring."""
    tokens = torch.as_tensor(np.asarray(tokens))
    single = tokens.dim() == 1
    tokens = tokens.reshape(1, -1) if single else tokens
    state = np.asarray(state_t, dtype=np.float64).reshape(len(tokens), 14)
    mask = np.ones((len(tokens), 2)) if arm_mask is None else np.asarray(arm_mask, dtype=np.float64).reshape(len(tokens), 2)
    limit = model.config.codebook_size
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= limit):
        raise ClapDataError(f"token indices must lie in [0, {limit}) for this checkpoint, got {int(tokens.min())}..{int(tokens.max())}")
    normalised = model.detokenize_dual(tokens.long()).double().cpu().numpy()
    relative = denormalize(normalised, stats.action_q01, stats.action_q99)
    actions = mask_arms(absolute_chunk(state, relative), mask[:, None, :])
    return actions[0] if single else actions


@dataclass(frozen=True)
class DecodedFrame:
    """``clap-data detokenize``'s answer for one frame of a tokenized dataset."""

    tokens: list[int]  # storage order
    text: str  # <ACT_i>, right arm first
    padded: bool
    state: list[float]
    action: list[list[float]]  # [32][14] absolute


def parse_tokens_option(value: str, num_queries: int, codebook_size: int) -> NDArray[np.int64]:
    """``--tokens``: the ``<ACT_i>`` text (right arm first) or comma-separated ints in storage order.

    Raises ``ValueError`` with a sentence saying what is wrong, which the CLI shows as a usage error
    (exit 2): a malformed option is the caller's mistake, not a failure of the dataset or checkpoint."""
    if "<ACT_" in value:
        return parse_text_tokens(value, num_queries, codebook_size).numpy().astype(np.int64)
    try:
        codes = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(
            f"{value[:60]!r} is neither <ACT_i> text (right arm first) nor {2 * num_queries} comma-separated codes "
            "(left arm's, then right's)"
        ) from None
    if len(codes) != 2 * num_queries:
        raise ValueError(f"needs {2 * num_queries} codes (left arm's, then right's), got {len(codes)}")
    bad = sorted({code for code in codes if not 0 <= code < codebook_size})
    if bad:
        raise ValueError(
            f"codes {bad} are outside [0, {codebook_size}): the checkpoint's codebook has K = {codebook_size} codes"
        )
    return np.array(codes, dtype=np.int64)


def _stats_for(root: Path, identity: dict[str, Any]) -> NormStats:
    """The statistics the tokens were made with, named by the feature's ``stats_id``."""
    stats_id = str(identity.get("stats_id", ""))
    kind = "openclap" if stats_id.startswith("openclap:") else "dataset"
    stats = load_norm_stats(root, kind)
    if stats is None or stats.stats_id != stats_id:
        found = stats.stats_id if stats else "none"
        raise ClapDataError(f"{root}: the tokens were made with statistics {stats_id}, but the dataset now has {found}; re-tokenize it")
    return stats


def _frame_tokens(root: Path, episode: int, frame: int) -> tuple[NDArray[np.int64], bool]:
    table = pq.ParquetDataset(root / "data", filters=[("episode_index", "=", episode), ("frame_index", "=", frame)]).read(
        columns=[ACTION_TOKENS, ACTION_TOKENS_PADDED]
    )
    if table.num_rows != 1:
        raise ClapDataError(f"{root} has no frame {frame} in episode {episode}")
    return np.asarray(table.column(0)[0].as_py(), dtype=np.int64), bool(table.column(1)[0].as_py())


def decode_dataset_frame(
    root: Path, model: ActVAE, sha256: str, episode: int, frame: int, tokens: NDArray[np.int64] | None = None
) -> DecodedFrame:
    """Decode the tokens stored at (episode, frame) of a tokenized dataset (or ``tokens``, storage-order
    codes such as :func:`parse_tokens_option` returns), with the state and statistics of that frame.
    Refuses a checkpoint other than the one the dataset's tokens came from."""
    root = Path(root)
    identity = DatasetMetadata.load(root).token_identity(ACTION_TOKENS)
    if identity is None:
        raise ClapDataError(f"{root} has no action_tokens; add them with: clap-data tokenize act-vae --ckpt CKPT {root}")
    if identity["checkpoint_sha256"] != sha256:
        raise ClapDataError(
            f"{root}'s tokens come from checkpoint {identity['checkpoint_sha256'][:16]}…, not the given one ({sha256[:16]}…): "
            "codes of one codebook mean nothing to another"
        )
    arrays = read_episode_arrays(root, episode)
    if not 0 <= frame < len(arrays.state):
        raise ClapDataError(f"frame {frame} is outside episode {episode} (0..{len(arrays.state) - 1})")
    stored, padded = _frame_tokens(root, episode, frame)
    chosen = stored if tokens is None else tokens
    action = detokenize(model, chosen, arrays.state[frame], _stats_for(root, identity), arrays.arm_mask[frame])
    return DecodedFrame(
        tokens=chosen.tolist(), text=text_tokens(chosen, model.config.num_queries), padded=padded,
        state=arrays.state[frame].tolist(), action=action.tolist(),
    )
