"""What the report shows of an Act-VAE checkpoint: its codebook in two dimensions and sampled chunks decoded
from the stored tokens beside the actions they stand for.

Decoding goes through :func:`clap_data.act_vae.decoding.decode_dataset_frame`, the path of ``clap-data
detokenize``, so the page shows what a user of the tokens would get (statistics named by ``stats_id``,
``p = p0 + Δp``, ``R = ΔR·R0``). The ground truth is ``action[t : t + 32]`` of the same frame, the tail
repeating the episode's last frame as the chunks the tokenizer saw (:func:`clap_data.actions.chunk_commands`).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
from numpy.typing import NDArray

from clap_data.act_vae.decoding import decode_dataset_frame
from clap_data.actions import HUMAN, chunk_commands, mask_arms
from clap_data.lerobot_v3.reader import read_episode_arrays
from clap_data.models import ActVAE
from clap_data.report.queries import DatasetFacts, sample_frames
from clap_data.schemas import ACTION_TOKENS, ARM_SLICES, GRIPPER, POSITION, PSEUDO_TOKENS, ROTATION


def codebook_projection(codebook: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The codes ``[K, D]`` projected on their first two principal components (SVD of the centred codebook),
    ``[K, 2]``, and the share of variance each component explains."""
    centred = np.asarray(codebook, dtype=np.float64) - np.mean(codebook, axis=0)
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    points = np.zeros((len(centred), 2))
    kept = min(2, right.shape[0])
    points[:, :kept] = centred @ right[:kept].T
    variance = singular**2
    explained = np.zeros(2)
    if variance.sum() > 0:
        explained[:kept] = variance[:kept] / variance.sum()
    return points, explained


@dataclass(frozen=True)
class DecodedChunk:
    """One sampled frame's chunk: the truth and each token column decoded, ``[32, 14]`` absolute."""

    dataset: str
    episode: int
    frame: int
    arm_mask: NDArray[np.float64]  # [2] at the chunk's first frame
    truth: NDArray[np.float64]
    decoded: dict[str, NDArray[np.float64]]

    def errors(self, column: str) -> tuple[float, float, float]:
        """RMSE of position (m), rotation (rad, angles wrapped) and gripper over the active arms and 32 steps."""
        diff = self.decoded[column] - self.truth
        arms = [ARM_SLICES[arm] for arm in (0, 1) if self.arm_mask[arm] != 0]
        parts = []
        for part in (POSITION, ROTATION, GRIPPER):
            values = np.concatenate([diff[:, arm][:, part] for arm in arms], axis=1)
            if part is ROTATION:
                values = (values + np.pi) % (2 * np.pi) - np.pi
            parts.append(float(np.sqrt(np.mean(values**2))))
        return parts[0], parts[1], parts[2]

    def plotted_dofs(self) -> list[tuple[int, str]]:
        """x, y, z and gripper (indices into the 14-D vector) of the active arm whose position moves most in the
        recorded chunk: a dual-arm robot often holds one arm still, and a flat line shows little of the decoder."""
        active = [arm for arm in (0, 1) if self.arm_mask[arm] != 0] or [0]
        arm = max(active, key=lambda a: float(np.ptp(self.truth[:, ARM_SLICES[a]][:, POSITION], axis=0).max()))
        start = ARM_SLICES[arm].start
        side = ("left", "right")[arm]
        return [(start + i, f"{side} {name}") for i, name in ((0, "x"), (1, "y"), (2, "z"), (6, "gripper"))]


def decodable(facts: DatasetFacts, sha256: str) -> list[str]:
    """The token columns of a robot dataset that index this checkpoint's codebook, action tokens first
    (a human dataset has no ground truth to decode against)."""
    if facts.metadata.robot_type == HUMAN or ACTION_TOKENS not in facts.usage:
        return []
    if facts.usage[ACTION_TOKENS].codebook_sha256 != sha256:
        return []
    return [c for c in (ACTION_TOKENS, PSEUDO_TOKENS) if c in facts.usage and facts.usage[c].codebook_sha256 == sha256]


def decoded_chunks(con: duckdb.DuckDBPyConnection, datasets: list[DatasetFacts], model: ActVAE, sha256: str,
                   n: int) -> list[DecodedChunk]:
    """``n`` unpadded chunks drawn across the robot datasets tokenized with this checkpoint (a fixed
    pseudo-random pick, :func:`clap_data.report.queries.sample_frames`), each decoded from every column
    that uses its codebook."""
    eligible = [facts for facts in datasets if decodable(facts, sha256)]
    picks = sorted(
        (h, position, episode, frame)
        for position, facts in enumerate(eligible)
        for h, episode, frame in sample_frames(con, facts.name, n)
    )[:n]
    chunks = []
    for _, position, episode, frame in sorted(picks, key=lambda p: p[1:]):
        facts = eligible[position]
        root = facts.metadata.root
        arrays = read_episode_arrays(root, episode)
        mask = np.asarray(arrays.arm_mask[frame], dtype=np.float64)
        truth = mask_arms(chunk_commands(arrays.action, frame)[0], mask)
        decoded = {
            column: np.asarray(decode_dataset_frame(root, model, sha256, episode, frame, column=column).action)
            for column in decodable(facts, sha256)
        }
        chunks.append(DecodedChunk(root.name, episode, frame, mask, truth, decoded))
    return chunks
