"""Action chunks as the tokenizers see them (METHOD.md §2), and the way back to executable actions.

A chunk starting at frame t holds 32 steps, each relative to the *state at t* (not to the previous
step): ``Δp_k = p_cmd,t+k − p_state,t``, ``ΔR_k = R_cmd,t+k · R_state,tᵀ`` as Euler angles, the
gripper absolute. Steps past the episode end repeat the last frame and flag the chunk as padded.
Normalisation maps the 12 pose dimensions with per-embodiment 1st/99th percentiles to about
[-1, 1] (no clipping, grippers untouched), then zeroes the inactive arm.

The unified dataset's ``action`` column already holds the command stream of every source (for
DROID it is the next state, METHOD.md §2), so chunks read ``action[t + k]`` for every source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from clap_data import geometry
from clap_data.errors import ClapDataError
from clap_data.schemas import ARM_SLICES, GRIPPER, POSITION, ROTATION

CHUNK_SIZE = 32
# Indices of the 12 pose dimensions in the 14-D vector; 6 and 13 are the grippers.
POSE_DIMS = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12])
_DENOMINATOR_FLOOR = 1e-8
HUMAN = "human"

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class NormStats:
    """q01/q99 of chunk-relative actions and of absolute states for one embodiment (14 values each).

    ``stats_id`` names where they come from (e.g. ``openclap:S1-stationary`` or
    ``dataset:<sha256>``): it is part of a tokenizer's identity in token metadata.
    """

    embodiment: str
    action_q01: FloatArray
    action_q99: FloatArray
    state_q01: FloatArray
    state_q99: FloatArray
    stats_id: str

    @classmethod
    def from_table(cls, table: dict, embodiment: str, stats_id_prefix: str, where: str) -> NormStats:
        """Read one embodiment from a ``{embodiment: {action|state: {q01, q99}}}`` table."""
        if embodiment not in table:
            known = ", ".join(sorted(table)) or "none"
            raise ClapDataError(f"{where} has no statistics for embodiment {embodiment!r} (it has: {known})")
        entry = table[embodiment]
        try:
            values = {f"{kind}_{q}": np.asarray(entry[kind][q], dtype=np.float64) for kind in ("action", "state") for q in ("q01", "q99")}
        except (KeyError, TypeError) as exc:
            raise ClapDataError(f"{where}: the entry of {embodiment!r} lacks {exc}") from None
        for name, value in values.items():
            if value.shape != (14,):
                raise ClapDataError(f"{where}: {embodiment} {name} has {value.size} values, 14 are needed")
        return cls(embodiment=embodiment, stats_id=f"{stats_id_prefix}:{embodiment}", **values)


def load_stats_table(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ClapDataError(f"statistics file {path} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"statistics file {path} cannot be read: {exc}") from None


def _arm_relative(state_arm: FloatArray, command_arm: FloatArray) -> FloatArray:
    """One arm's chunk relative to its state: Δp, Euler(R_cmd · R_stateᵀ), gripper.
    Broadcasts: ``state_arm`` [..., 7] and ``command_arm`` [..., 32, 7]."""
    r_state_t = np.swapaxes(geometry.euler_to_matrix(state_arm[..., ROTATION]), -1, -2)[..., None, :, :]
    delta_r = geometry.euler_to_matrix(command_arm[..., ROTATION]) @ r_state_t
    delta_p = command_arm[..., POSITION] - state_arm[..., None, POSITION]
    return np.concatenate([delta_p, geometry.matrix_to_euler(delta_r), command_arm[..., GRIPPER]], axis=-1)


def _arm_absolute(state_arm: FloatArray, relative_arm: FloatArray) -> FloatArray:
    """Inverse of :func:`_arm_relative`: p = p_state + Δp, R = ΔR · R_state."""
    r_state = geometry.euler_to_matrix(state_arm[..., ROTATION])[..., None, :, :]
    rotation = geometry.euler_to_matrix(relative_arm[..., ROTATION]) @ r_state
    position = relative_arm[..., POSITION] + state_arm[..., None, POSITION]
    return np.concatenate([position, geometry.matrix_to_euler(rotation), relative_arm[..., GRIPPER]], axis=-1)


def relative_chunk(state_t: FloatArray, commands: FloatArray) -> FloatArray:
    """Commands ``[..., 32, 14]`` made relative to the 14-D state ``[..., 14]`` at the chunk's first frame."""
    return np.concatenate([_arm_relative(state_t[..., arm], commands[..., arm]) for arm in ARM_SLICES], axis=-1)


def absolute_chunk(state_t: FloatArray, relative: FloatArray) -> FloatArray:
    """Executable absolute ``[..., 32, 14]`` actions from a (denormalised) relative chunk."""
    return np.concatenate([_arm_absolute(state_t[..., arm], relative[..., arm]) for arm in ARM_SLICES], axis=-1)


def chunks_at(state: FloatArray, action: FloatArray, starts: NDArray[np.int64], last: NDArray[np.int64], size: int = CHUNK_SIZE) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Relative chunks ``[len(starts), size, 14]`` starting at frames ``starts`` of the frame arrays
    ``state``/``action`` (one episode, or many concatenated), each padded by repeating frame ``last``
    (its episode's final frame); and which chunks were padded."""
    starts = np.asarray(starts, dtype=np.int64)
    last = np.asarray(last, dtype=np.int64)
    index = np.minimum(starts[:, None] + np.arange(size)[None, :], last[:, None])
    commands = np.asarray(action[index], dtype=np.float64)
    return relative_chunk(np.asarray(state[starts], dtype=np.float64), commands), starts + size > last + 1


def episode_chunks(state: FloatArray, action: FloatArray, size: int = CHUNK_SIZE) -> tuple[FloatArray, NDArray[np.bool_]]:
    """The relative chunk at every frame of an episode, ``[N, size, 14]``, and which are padded."""
    frames = len(action)
    return chunks_at(state, action, np.arange(frames), np.full(frames, frames - 1), size)


def chunk_commands(action: FloatArray, t: int, size: int = CHUNK_SIZE) -> tuple[FloatArray, bool]:
    """``action[t : t + size]``, the tail repeating the last frame; and whether it was padded."""
    frames = len(action)
    if not 0 <= t < frames:
        raise ClapDataError(f"frame {t} is outside the episode (0..{frames - 1})")
    index = np.minimum(np.arange(t, t + size), frames - 1)
    return np.asarray(action, dtype=np.float64)[index], t + size > frames


def normalize(values: FloatArray, q01: FloatArray, q99: FloatArray) -> FloatArray:
    """``(x − q01)/(q99 − q01)·2 − 1`` on the 12 pose dims (never grippers), no clipping."""
    out = np.array(values, dtype=np.float64, copy=True)
    span = q99[POSE_DIMS] - q01[POSE_DIMS]
    span = np.where(np.abs(span) < _DENOMINATOR_FLOOR, 1.0, span)
    out[..., POSE_DIMS] = (out[..., POSE_DIMS] - q01[POSE_DIMS]) / span * 2.0 - 1.0
    return out


def denormalize(values: FloatArray, q01: FloatArray, q99: FloatArray) -> FloatArray:
    out = np.array(values, dtype=np.float64, copy=True)
    span = q99[POSE_DIMS] - q01[POSE_DIMS]
    span = np.where(np.abs(span) < _DENOMINATOR_FLOOR, 1.0, span)
    out[..., POSE_DIMS] = (out[..., POSE_DIMS] + 1.0) / 2.0 * span + q01[POSE_DIMS]
    return out


def mask_arms(values: FloatArray, arm_mask: FloatArray) -> FloatArray:
    """Zero the inactive arm's 7 values (after normalisation, so an empty slot is exactly 0).
    ``arm_mask [..., 2]`` broadcasts against ``values [..., 14]`` minus its last axis."""
    keep = np.repeat(np.asarray(arm_mask) != 0, 7, axis=-1)
    return np.where(keep, np.asarray(values, dtype=np.float64), 0.0)


def normalized_state(state_t: FloatArray, stats: NormStats, arm_mask: FloatArray) -> FloatArray:
    """The absolute state ``[..., 14]`` as a model sees it: normalised with the embodiment's state q01/q99 (pose
    dims only), the inactive arm of ``arm_mask [..., 2]`` zeroed after (METHOD.md §2)."""
    return mask_arms(normalize(state_t, stats.state_q01, stats.state_q99), arm_mask)


def model_chunks(chunks: FloatArray, arm_mask: FloatArray, stats: NormStats) -> FloatArray:
    """Relative chunks ``[B, 32, 14]`` as the Act-VAE sees them: normalised, inactive arm (``arm_mask
    [B, 2]`` at each chunk's first frame) zeroed. The vectorised form of :func:`tokenizer_input`."""
    return mask_arms(normalize(chunks, stats.action_q01, stats.action_q99), np.asarray(arm_mask)[:, None, :])


@dataclass(frozen=True)
class TokenizerInput:
    """Exactly what the Act-VAE sees for one chunk (``clap-data chunk`` prints it)."""

    action: FloatArray  # [32, 14] normalised, chunk-relative
    state: FloatArray  # [14] normalised absolute state at t
    arm_mask: FloatArray  # [2]
    padded: bool


def tokenizer_input(state: FloatArray, action: FloatArray, arm_mask: FloatArray, t: int, stats: NormStats | None) -> TokenizerInput:
    """The normalised chunk at frame ``t`` of one episode. ``stats`` None means a human episode:
    no action labels, everything zero (METHOD.md §2)."""
    commands, padded = chunk_commands(action, t)
    mask = np.asarray(arm_mask[t], dtype=np.float64)
    if stats is None:
        return TokenizerInput(np.zeros((CHUNK_SIZE, 14)), np.zeros(14), mask, padded)
    state_t = np.asarray(state[t], dtype=np.float64)
    chunk = normalize(relative_chunk(state_t, commands), stats.action_q01, stats.action_q99)
    return TokenizerInput(
        action=mask_arms(chunk, mask),
        state=normalized_state(state_t, stats, mask),
        arm_mask=mask,
        padded=padded,
    )
