"""``clap-data eval rf``: CLAP-RF checkpoints on held-out shards — how well they act, and what their backbone forgot.

For each checkpoint (KM, KI and plain fine-tuning side by side: the paper's Tables VI–VII at small scale):

* **actions**, robot samples: the RF chunk (``RFPolicy.predict``, ``seed``) against the shard's ground truth, as
  the mean squared error per DOF in robot units (:func:`clap_data.training.ntp_eval.squared_error`: angle
  differences wrapped), beside the NTP checkpoint it started from acting on the same samples (greedy tokens decoded
  by the Act-VAE; a malformed answer is left out of NTP's mean and counted);
* **forgetting**: the NTP answer scores (:mod:`clap_data.training.forgetting`: teacher-forced cross-entropy and
  action-token accuracy, robot and human samples apart) of the NTP checkpoint it started from (*before*) and of its
  own fine-tuned backbone (*after*), on every sample of the split — human pseudo-labelled samples included, which
  RF post-training never sees.

The NTP side is computed once per distinct starting checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clap_data.actions import HUMAN
from clap_data.errors import ClapDataError
from clap_data.schemas.shards_v1 import ARM_MASK, EMBODIMENT, HELDOUT_SPLIT, INSTRUCTION, STATE
from clap_data.training.forgetting import answer_scores
from clap_data.training.ntp_data import ShardSet, iter_samples
from clap_data.training.ntp_eval import DofTotals, answered, ground_truth_chunk, squared_error
from clap_data.training.ntp_model import ActionVocabulary
from clap_data.training.ntp_policy import NTPPolicy
from clap_data.training.rf_policy import RFPolicy


@dataclass
class ActionScores:
    chunks: int
    mse_mean: float | None
    mse_per_dof: dict[str, float | None]
    malformed: int = 0  # NTP answers without a valid chunk (left out of the means)


@dataclass
class RFCheckpointEval:
    ckpt: str
    mode: str  # km, ki or plain
    km_alpha: float
    init: str  # the NTP checkpoint it started from
    rf: ActionScores
    ntp: ActionScores  # the starting NTP checkpoint on the same samples
    before: dict[str, Any]  # answer scores of the starting NTP backbone
    after: dict[str, Any]  # answer scores of this checkpoint's backbone


@dataclass
class RFEvalReport:
    shards: str
    split: str
    seed: int
    checkpoints: list[RFCheckpointEval]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _robot_batches(shards: ShardSet, split: str, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """The split's robot samples, batch by batch, read afresh on every call (memory bounded by one batch, however
    large the split)."""
    for batch in iter_samples(shards, split, batch_size):
        robots = [s for s in batch if s[EMBODIMENT] != HUMAN]
        if robots:
            yield robots


def _rf_actions(policy: RFPolicy, shards: ShardSet, split: str, batch_size: int, seed: int) -> ActionScores:
    totals, chunks = DofTotals(), 0
    for sample in (s for batch in _robot_batches(shards, split, batch_size) for s in batch):
        out = policy.predict(sample["images"], sample[INSTRUCTION], sample[EMBODIMENT], sample[STATE],
                             sample[ARM_MASK], seed=seed)
        totals.add(squared_error(out["actions"], ground_truth_chunk(sample, shards)), sample[ARM_MASK])
        chunks += 1
    return ActionScores(chunks, totals.mean(), totals.per_dof())


def _ntp_actions(policy: NTPPolicy, shards: ShardSet, split: str, batch_size: int) -> ActionScores:
    totals, chunks, malformed = DofTotals(), 0, 0
    for batch in _robot_batches(shards, split, batch_size):
        for sample, (_, tokens) in zip(batch, answered(policy, batch), strict=True):
            if tokens is None:
                malformed += 1
                continue
            chunks += 1
            actions = policy.actions(tokens, sample[EMBODIMENT], sample[STATE], sample[ARM_MASK])
            totals.add(squared_error(actions, ground_truth_chunk(sample, shards)), sample[ARM_MASK])
    return ActionScores(chunks, totals.mean(), totals.per_dof(), malformed)


def _vocabulary(meta: dict[str, Any]) -> ActionVocabulary:
    return ActionVocabulary(int(meta["action_token_first_id"]), int(meta["codebook_size"]))


def evaluate_rf(ckpts: list[Path], shards_dir: Path, split: str = HELDOUT_SPLIT, batch_size: int = 8,
                device: str = "auto", seed: int = 0) -> RFEvalReport:
    """Score every checkpoint of ``ckpts`` on ``split`` of the shards (see the module docstring)."""
    shards = ShardSet.open(Path(shards_dir))
    if not shards.robot_count(split):
        raise ClapDataError(f"{shards_dir}/{split} holds no robot sample to act on")
    starts: dict[str, tuple[ActionScores, dict[str, Any]]] = {}
    results = []
    for ckpt in ckpts:
        policy = RFPolicy.from_pretrained(ckpt, device=device)
        meta = policy.meta
        if shards.act_vae["checkpoint_sha256"] != meta["act_vae"]["checkpoint_sha256"]:
            raise ClapDataError(f"{shards_dir}'s tokens come from another Act-VAE than the one {ckpt} was trained "
                                "with: its NTP scores would compare codes of two codebooks")
        init = str(meta["init"]["checkpoint"])
        if init not in starts:
            ntp = NTPPolicy.from_pretrained(init, device=device)
            before = answer_scores(ntp.model, ntp.processor, _vocabulary(ntp.meta), shards, split,
                                   ntp.num_queries, batch_size).to_dict()
            starts[init] = (_ntp_actions(ntp, shards, split, batch_size), before)
            del ntp
        after = answer_scores(policy.model.vlm, policy.processor, _vocabulary(meta), shards, split,
                              int(meta["num_queries"]), batch_size).to_dict()
        ntp_actions, before = starts[init]
        results.append(RFCheckpointEval(str(ckpt), meta["mode"], float(meta["km_alpha"]), init,
                                        _rf_actions(policy, shards, split, batch_size, seed), ntp_actions, before, after))
        del policy
    return RFEvalReport(str(shards_dir), split, seed, results)

