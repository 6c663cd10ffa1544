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

``decode_dataset_frame`` (``clap-data detokenize``) decodes a stored column: ``action_tokens`` or the
VD-VAE's ``pseudo_tokens`` (codes of the Act-VAE's codebook). A human frame has no state and no
statistics of its own: it is decoded relative to zero (p0 = 0, R0 = I) with the statistics of an
embodiment the caller names (``as_embodiment``, from the OpenCLAP table), and the answer says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

from clap_data.actions import HUMAN, NormStats, absolute_chunk, denormalize, mask_arms
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import read_episode_arrays
from clap_data.models import ActVAE, parse_text_tokens, text_tokens
from clap_data.norm_stats import load_norm_stats
from clap_data.reference import openclap_stats_table
from clap_data.schemas import ACTION_TOKENS, ACTION_TOKENS_PADDED, PSEUDO_TOKENS, PSEUDO_TOKENS_PADDED

DECODABLE_COLUMNS = {ACTION_TOKENS: ACTION_TOKENS_PADDED, PSEUDO_TOKENS: PSEUDO_TOKENS_PADDED}


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
    actions = absolute_actions(model.detokenize_dual(tokens.long()).double().cpu().numpy(), state, stats, mask)
    return actions[0] if single else actions


def absolute_actions(normalised: NDArray[np.float64], state_t: NDArray[np.float64], stats: NormStats,
                     arm_mask: NDArray[np.float64]) -> NDArray[np.float64]:
    """Normalised chunk-relative actions ``[B, 32, 14]`` (a decoder's or an action head's) → executable absolute
    ones: denormalised with the embodiment's q01/q99, ``p = p0 + Δp``, ``R = ΔR·R0`` from the states ``[B, 14]``
    at the chunks' first frames, the inactive arm of ``arm_mask [B, 2]`` zero (METHOD.md §2)."""
    relative = denormalize(np.asarray(normalised, dtype=np.float64), stats.action_q01, stats.action_q99)
    return mask_arms(absolute_chunk(state_t, relative), np.asarray(arm_mask)[:, None, :])


@dataclass(frozen=True)
class DecodedFrame:
    """``clap-data detokenize``'s answer for one frame of a tokenized dataset."""

    tokens: list[int]  # storage order
    text: str  # <ACT_i>, right arm first
    padded: bool
    state: list[float]
    action: list[list[float]]  # [32][14] absolute
    column: str = ACTION_TOKENS
    stats_id: str = ""
    note: str | None = None  # e.g. that a human frame was decoded relative to zero


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


def _embodiment_stats(name: str) -> NormStats:
    """``--as-embodiment``: one embodiment's statistics from the OpenCLAP table."""
    return NormStats.from_table(openclap_stats_table(), name, "openclap", "the OpenCLAP statistics table")


def _column_identity(root: Path, metadata: DatasetMetadata, column: str, sha256: str) -> dict[str, Any]:
    """The identity of ``column``, refusing a checkpoint other than the Act-VAE whose codebook it uses."""
    identity = metadata.token_identity(column)
    if column == ACTION_TOKENS:
        if identity is None:
            raise ClapDataError(f"{root} has no action_tokens; add them with: clap-data tokenize act-vae --ckpt CKPT {root}")
        source, what = identity["checkpoint_sha256"], "checkpoint"
    else:
        if identity is None:
            raise ClapDataError(
                f"{root} has no pseudo_tokens; add them with: clap-data pseudolabel vd-vae {root} --ckpt VD_VAE --backbone BACKBONE"
            )
        source, what = identity["act_vae_sha256"], "the codebook of Act-VAE"
    if source != sha256:
        raise ClapDataError(
            f"{root}'s {column} come from {what} {source[:16]}…, not the given one ({sha256[:16]}…): "
            "codes of one codebook mean nothing to another"
        )
    return identity


def _frame_tokens(root: Path, episode: int, frame: int, column: str = ACTION_TOKENS) -> tuple[NDArray[np.int64], bool]:
    table = pq.ParquetDataset(root / "data", filters=[("episode_index", "=", episode), ("frame_index", "=", frame)]).read(
        columns=[column, DECODABLE_COLUMNS[column]]
    )
    if table.num_rows != 1:
        raise ClapDataError(f"{root} has no frame {frame} in episode {episode}")
    return np.asarray(table.column(0)[0].as_py(), dtype=np.int64), bool(table.column(1)[0].as_py())


def decode_dataset_frame(
    root: Path,
    model: ActVAE,
    sha256: str,
    episode: int,
    frame: int,
    tokens: NDArray[np.int64] | None = None,
    column: str = ACTION_TOKENS,
    as_embodiment: str | None = None,
) -> DecodedFrame:
    """Decode the ``column`` tokens stored at (episode, frame) of a dataset (or ``tokens``, storage-order
    codes such as :func:`parse_tokens_option` returns), with the state and statistics of that frame.
    Refuses a checkpoint other than the Act-VAE the tokens' codebook belongs to.

    Statistics: ``as_embodiment``'s (OpenCLAP table) when given; else those the action tokens were made
    with (their ``stats_id``), else the OpenCLAP entry of the dataset's embodiment. A human dataset has
    neither state nor statistics: it needs ``as_embodiment`` and is decoded relative to zero state."""
    root = Path(root)
    if column not in DECODABLE_COLUMNS:
        raise ClapDataError(f"{column!r} is not a token column to decode: {' or '.join(DECODABLE_COLUMNS)}")
    metadata = DatasetMetadata.load(root)
    _column_identity(root, metadata, column, sha256)
    human = metadata.robot_type == HUMAN
    if human and as_embodiment is None:
        raise ClapDataError(
            f"{root} is human video: its frames have no state and no statistics of their own; name an embodiment "
            "whose statistics to decode with, e.g. --as-embodiment S1-stationary (decoded relative to zero state)"
        )
    arrays = read_episode_arrays(root, episode)
    if not 0 <= frame < len(arrays.state):
        raise ClapDataError(f"frame {frame} is outside episode {episode} (0..{len(arrays.state) - 1})")
    stored, padded = _frame_tokens(root, episode, frame, column)
    chosen = stored if tokens is None else tokens
    note = None
    if as_embodiment is not None:
        stats = _embodiment_stats(as_embodiment)
    elif column == ACTION_TOKENS or metadata.token_identity(ACTION_TOKENS) is not None:
        stats = _stats_for(root, metadata.token_identity(ACTION_TOKENS) or {})
    else:
        stats = load_norm_stats(root, "openclap")
    if stats is None:  # only a human dataset has none, and it has as_embodiment
        raise ClapDataError(f"{root} has no statistics to decode with; name an embodiment with --as-embodiment")
    if human:
        state = np.zeros(14)
        note = f"human frame: decoded relative to zero with the {stats.embodiment} statistics"
    else:
        state = arrays.state[frame]
    action = detokenize(model, chosen, state, stats, arrays.arm_mask[frame])
    return DecodedFrame(
        tokens=chosen.tolist(), text=text_tokens(chosen, model.config.num_queries), padded=padded,
        state=np.asarray(state, dtype=np.float64).tolist(), action=action.tolist(), column=column,
        stats_id=stats.stats_id, note=note,
    )
