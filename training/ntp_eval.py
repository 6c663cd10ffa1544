"""``clap-data eval ntp``: how well a CLAP-NTP checkpoint acts on held-out shards, against a baseline that knows
only the token statistics.

Every sample of the split is answered as :class:`~clap_data.training.NTPPolicy` acts (greedy, the prompt without
wrist dropping), and scored twice:

* tokens: per slot (storage order: the left arm's ``Nq``, then the right's), the share of samples whose generated
  token equals the shard's; a malformed answer counts as wrong in every slot (and is counted);
* actions, robot samples only: the generated tokens decoded to the absolute chunk ``[32, 14]`` with the policy's
  statistics, against the shard's ground truth — its normalised relative chunk denormalised with the shards'
  statistics and made absolute from the sample's state — as the mean squared error per DOF in robot units
  (metres, radians with the angle difference wrapped into [−π, π), gripper in [−1, 1]), over the samples whose arm
  is active and whose answer was well formed.

The baseline answers every sample with the most frequent token of each slot in the *training* shards, decoded the
same way on the same samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from clap_data.actions import HUMAN, absolute_chunk, denormalize, mask_arms
from clap_data.errors import ClapDataError
from clap_data.schemas import ARM_SLICES, POSE14_NAMES, ROTATION
from clap_data.schemas.shards_v1 import (
    ACTIONS,
    ARM_MASK,
    CHUNK_STEPS,
    EMBODIMENT,
    HELDOUT_SPLIT,
    INSTRUCTION,
    SAMPLE_ID,
    STATE,
    TOKENS,
    TRAIN_SPLIT,
)
from clap_data.training.ntp_data import ShardSet, iter_samples, norm_stats
from clap_data.training.ntp_policy import NTPPolicy
from clap_data.training.prompts import Prompt, parse_answer, prompt_images

ROTATION_DIMS = np.array([arm.start + i for arm in ARM_SLICES for i in range(ROTATION.start, ROTATION.stop)])


@dataclass
class NTPEvalReport:
    """What ``clap-data eval ntp`` prints; ``to_dict`` is its JSON form (``predictions`` included)."""

    ckpt: str
    shards: str
    split: str
    samples: int
    robot_samples: int
    malformed: int
    slots: list[str]
    token_accuracy: float
    per_slot_accuracy: list[float]
    baseline_tokens: list[int]
    baseline_token_accuracy: float
    baseline_per_slot_accuracy: list[float]
    scored_chunks: int  # robot samples with a well-formed answer: the action MSE's samples
    mse_per_dof: dict[str, float | None]
    mse_mean: float | None
    baseline_mse_per_dof: dict[str, float | None]
    baseline_mse_mean: float | None
    predictions: list[dict[str, Any]]  # per sample: sample_id, the answer, tokens (None: malformed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def most_frequent_tokens(shards: ShardSet) -> NDArray[np.int64]:
    """Per slot, the token the training shards hold most often (the lowest index on a tie)."""
    tokens = np.asarray(shards.read(TRAIN_SPLIT, [TOKENS]).column(0).to_pylist(), dtype=np.int64)
    return np.array([np.bincount(column, minlength=shards.codebook_size).argmax() for column in tokens.T])


def ground_truth_chunk(sample: dict[str, Any], shards: ShardSet) -> NDArray[np.float64]:
    """The sample's absolute chunk ``[32, 14]`` in robot units, from its normalised relative one."""
    stats = norm_stats(shards.statistics, sample[EMBODIMENT], f"{shards.root} (manifest)")
    relative = denormalize(np.asarray(sample[ACTIONS], dtype=np.float64).reshape(CHUNK_STEPS, 14),
                           stats.action_q01, stats.action_q99)
    state = np.asarray(sample[STATE], dtype=np.float64)
    return mask_arms(absolute_chunk(state[None], relative[None])[0], np.asarray(sample[ARM_MASK], dtype=np.float64))


def squared_error(predicted: NDArray[np.float64], truth: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per DOF, the squared error averaged over the chunk's steps; Euler angle differences wrapped."""
    error = predicted - truth
    error[:, ROTATION_DIMS] = (error[:, ROTATION_DIMS] + np.pi) % (2 * np.pi) - np.pi
    return np.square(error).mean(axis=0)


class DofTotals:
    """Per DOF, squared errors summed over the chunks whose arm is active, and their mean."""

    def __init__(self) -> None:
        self.sums, self.counts = np.zeros(14), np.zeros(14)

    def add(self, errors: NDArray[np.float64], arm_mask: Any) -> None:
        active = np.repeat(np.asarray(arm_mask, dtype=bool), 7)
        self.sums[active] += errors[active]
        self.counts[active] += 1

    def per_dof(self) -> dict[str, float | None]:
        return {name: float(s / c) if c else None for name, s, c in zip(POSE14_NAMES, self.sums, self.counts,
                                                                       strict=True)}

    def mean(self) -> float | None:
        return float(self.sums.sum() / self.counts.sum()) if self.counts.sum() else None


def answered(policy: NTPPolicy, batch: list[dict[str, Any]]) -> list[tuple[str, NDArray[np.int64] | None]]:
    """The policy's greedy answer to each sample (its prompt as when acting: no wrist dropping) and its parsed
    storage-order tokens, None where the answer is malformed."""
    prompts = [Prompt(prompt_images(s["images"]), s[EMBODIMENT], s[INSTRUCTION]) for s in batch]
    out = []
    for answer in policy.generate(prompts):
        try:
            tokens = parse_answer(answer, policy.num_queries, policy.codebook_size)[1].numpy().astype(np.int64)
        except ClapDataError:
            tokens = None
        out.append((answer, tokens))
    return out


def evaluate_ntp(ckpt: Path, shards_dir: Path, split: str = HELDOUT_SPLIT, batch_size: int = 8,
                 device: str = "auto", act_vae: Path | None = None) -> NTPEvalReport:
    """Score the checkpoint on ``split`` of the shards (see the module docstring)."""
    policy = NTPPolicy.from_pretrained(ckpt, act_vae=act_vae, device=device)
    shards = ShardSet.open(Path(shards_dir))
    if shards.act_vae["checkpoint_sha256"] != policy.meta["act_vae"]["checkpoint_sha256"]:
        raise ClapDataError(f"{shards_dir}'s tokens come from another Act-VAE than the one {ckpt} was trained with: "
                            "codes of one codebook mean nothing to another")
    baseline = most_frequent_tokens(shards)
    nq = policy.num_queries
    hits, baseline_hits = np.zeros(2 * nq), np.zeros(2 * nq)
    policy_dofs, baseline_dofs = DofTotals(), DofTotals()
    predictions, robot, scored = [], 0, 0
    for batch in iter_samples(shards, split, batch_size):
        for sample, (answer, tokens) in zip(batch, answered(policy, batch), strict=True):
            truth_tokens = np.asarray(sample[TOKENS], dtype=np.int64)
            predictions.append({"sample_id": sample[SAMPLE_ID], "answer": answer,
                                "tokens": None if tokens is None else tokens.tolist()})
            baseline_hits += baseline == truth_tokens
            if tokens is not None:
                hits += tokens == truth_tokens
            if sample[EMBODIMENT] == HUMAN:
                continue
            robot += 1
            if tokens is None:
                continue
            scored += 1
            truth = ground_truth_chunk(sample, shards)
            mask, state = sample[ARM_MASK], sample[STATE]
            policy_dofs.add(squared_error(policy.actions(tokens, sample[EMBODIMENT], state, mask), truth), mask)
            baseline_dofs.add(squared_error(policy.actions(baseline, sample[EMBODIMENT], state, mask), truth), mask)
    if not predictions:
        raise ClapDataError(f"{shards_dir}/{split} holds no samples")
    n = len(predictions)
    return NTPEvalReport(
        ckpt=str(ckpt), shards=str(shards_dir), split=split, samples=n, robot_samples=robot,
        malformed=sum(p["tokens"] is None for p in predictions),
        slots=[f"{arm} {i}" for arm in ("left", "right") for i in range(nq)],
        token_accuracy=float(hits.sum() / (n * 2 * nq)), per_slot_accuracy=(hits / n).tolist(),
        baseline_tokens=baseline.tolist(), baseline_token_accuracy=float(baseline_hits.sum() / (n * 2 * nq)),
        baseline_per_slot_accuracy=(baseline_hits / n).tolist(), scored_chunks=scored,
        mse_per_dof=policy_dofs.per_dof(), mse_mean=policy_dofs.mean(),
        baseline_mse_per_dof=baseline_dofs.per_dof(), baseline_mse_mean=baseline_dofs.mean(), predictions=predictions,
    )
