"""``clap-data eval rf`` on two tiny post-trained arms (Knowledge Matching, Knowledge Insulation) against
independent computations: the RF chunks' errors, the starting NTP's on the same frames, and forgetting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clap_data.actions import mask_arms
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.reference import openclap_stats_table
from clap_data.schemas import shards_v1 as S
from clap_data.training import NTPPolicy, RFPolicy
from clap_data.training.forgetting import answer_scores
from clap_data.training.ntp_data import ShardSet, iter_samples
from clap_data.training.ntp_model import ActionVocabulary
from clap_data.training.rf_train import RFTrainSettings, train_loop
from tests.reference import reference_absolute

runner = CliRunner()


@pytest.fixture(scope="module")
def arms(trained, tmp_path_factory) -> dict[str, Path]:
    """KM and KI, 8 steps each from the shared NTP checkpoint. Read only."""
    ntp, _ = trained
    root = tmp_path_factory.mktemp("rf_arms")
    out = {}
    for mode, changes in (("km", {"km_alpha": 0.005}), ("ki", {"ki": True, "km_alpha": 0.0})):
        settings = RFTrainSettings(init=ntp.out, shards=ntp.shards, out=str(root / mode), steps=8, batch_size=4,
                                   learning_rate=3e-3, warmup_steps=2, head_width=32, head_depth=2, head_heads=2,
                                   save_every=8, log_every=4, **changes)
        train_loop(settings)
        out[mode] = root / mode
    return out


@pytest.fixture(scope="module")
def report(arms, shards) -> dict:
    result = runner.invoke(app, ["eval", "rf", "--ckpt", str(arms["km"]), "--ckpt", str(arms["ki"]), "--shards",
                                 str(shards), "--device", "cpu", "--batch-size", "1", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _robot_heldout(shards: Path) -> list[dict]:
    samples = [s for batch in iter_samples(ShardSet.open(shards), S.HELDOUT_SPLIT, 64) for s in batch]
    return [s for s in samples if s[S.EMBODIMENT] != "human"]


def _wrapped(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    error = predicted - truth
    for arm in (0, 7):
        error[:, arm + 3:arm + 6] = np.angle(np.exp(1j * error[:, arm + 3:arm + 6]))
    return (error ** 2).mean(axis=0)


def _truth(sample: dict) -> np.ndarray:
    state, mask = np.asarray(sample[S.STATE], np.float64), np.asarray(sample[S.ARM_MASK], np.float64)
    relative = np.asarray(sample[S.ACTIONS], np.float64).reshape(32, 14)
    return mask_arms(reference_absolute(state, relative, openclap_stats_table()[sample[S.EMBODIMENT]]), mask)


def _per_dof_mean(errors: list[tuple[np.ndarray, np.ndarray]]) -> list[float | None]:
    sums, counts = np.zeros(14), np.zeros(14)
    for error, mask in errors:
        active = np.repeat(mask.astype(bool), 7)
        sums[active] += error[active]
        counts[active] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def _close(got: dict, expected: list[float | None]) -> bool:
    values = list(got.values())
    return [v is None for v in values] == [e is None for e in expected] and np.allclose(
        [v for v in values if v is not None], [e for e in expected if e is not None], rtol=1e-6, atol=1e-12)


def test_rf_actions_are_the_policys_chunks_against_the_truth(report, arms, shards):
    samples = _robot_heldout(shards)
    for c, mode in zip(report["checkpoints"], ("km", "ki"), strict=True):
        assert c["mode"] == mode and c["rf"]["chunks"] == len(samples) == 16
        policy = RFPolicy.from_pretrained(arms[mode], device="cpu")
        errors = []
        for s in samples:
            acted = policy.predict(s["images"], s[S.INSTRUCTION], s[S.EMBODIMENT], s[S.STATE], s[S.ARM_MASK], seed=3)
            errors.append((_wrapped(acted["actions"], _truth(s)), np.asarray(s[S.ARM_MASK], np.float64)))
        assert _close(c["rf"]["mse_per_dof"], _per_dof_mean(errors))


def test_the_ntp_side_is_the_starting_checkpoint_on_the_same_frames(report, trained, shards):
    ntp = NTPPolicy.from_pretrained(trained[0].out, device="cpu")
    errors, malformed = [], 0
    for s in _robot_heldout(shards):
        try:
            acted = ntp.predict(s["images"], s[S.INSTRUCTION], s[S.EMBODIMENT], s[S.STATE], s[S.ARM_MASK])
        except ClapDataError:  # a malformed answer: left out, and counted
            malformed += 1
            continue
        errors.append((_wrapped(acted["actions"], _truth(s)), np.asarray(s[S.ARM_MASK], np.float64)))
    first, second = report["checkpoints"]
    assert first["ntp"] == second["ntp"] and first["ntp"]["malformed"] == malformed
    assert first["ntp"]["chunks"] == len(errors)
    assert _close(first["ntp"]["mse_per_dof"], _per_dof_mean(errors))


def test_forgetting_before_is_the_ntp_backbone_and_ki_forgets_nothing(report, trained, shards):
    ntp = NTPPolicy.from_pretrained(trained[0].out, device="cpu")
    vocab = ActionVocabulary(int(ntp.meta["action_token_first_id"]), ntp.codebook_size)
    before = answer_scores(ntp.model, ntp.processor, vocab, ShardSet.open(shards), S.HELDOUT_SPLIT,
                           ntp.num_queries, batch_size=1).to_dict()
    km, ki = report["checkpoints"]
    assert km["before"] == ki["before"] == before and set(before["groups"]) == {"robot", "human"}
    assert ki["after"] == before  # Knowledge Insulation: the backbone did not move
    assert km["after"]["cross_entropy"] != before["cross_entropy"]


def test_the_tables_name_each_arm(arms, shards):
    result = runner.invoke(app, ["eval", "rf", "--ckpt", str(arms["km"]), "--ckpt", str(arms["ki"]), "--shards",
                                 str(shards), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "km (km)" in result.output and "ki (ki, α 0)" in result.output and "forgetting" in result.output
    assert "human" in result.output and "right_gripper" in result.output
