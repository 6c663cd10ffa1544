"""CLAP-RF + Knowledge Matching end to end on the factory shards, from the tiny NTP checkpoint of ``trained``:
in-process runs of the three arms (KM, KI, plain), robot samples only, the prompt-only context, the checkpoint,
``RFPolicy.predict`` against an independent computation, and ``train rf`` on 2 Ray workers, killed and resumed."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from clap_data.actions import mask_arms
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE, save_model
from clap_data.reference import openclap_stats_table
from clap_data.schemas import shards_v1 as S
from clap_data.training import RFPolicy, rf_train, train_common
from clap_data.training.ntp_data import ShardSet, iter_samples, iter_training_batches
from clap_data.training.ntp_model import load_vlm
from clap_data.training.policies import load_policy, policy_metadata
from clap_data.training.policy_checkpoint import weights_sha256
from clap_data.training.prompts import IGNORE_INDEX, Prompt, encode, encode_training_batch, prompt_images
from clap_data.training.rf_checkpoint import HEAD_CONFIG, HEAD_WEIGHTS, clear_rf_checkpoint, load_head
from clap_data.training.rf_head import RFHeadConfig
from clap_data.training.rf_model import answer_window, prompt_mask
from clap_data.training.rf_train import RFTrainSettings, default_vl_layers, train_loop
from tests.conftest import TINY
from tests.reference import POSE, reference_absolute
from tests.training.ray_runs import RUN_STEPS, kill_mid_run

runner = CliRunner()
CLI = [sys.executable, "-c", "from clap_data.cli import main; main()"]
STEP_LINE = re.compile(r"step (\d+)/\d+  loss (\S+)  flow loss (\S+)  KL (\S+)")
HEAD = {"head_width": 32, "head_depth": 2, "head_heads": 2}
ROBOTS = {"S1-stationary", "droid"}


def _settings(trained, out: Path, **changes) -> RFTrainSettings:
    ntp, _ = trained
    return RFTrainSettings(init=ntp.out, shards=ntp.shards, out=str(out), batch_size=4, learning_rate=3e-3,
                           warmup_steps=2, **HEAD, **changes)


def _spied_run(settings: RFTrainSettings) -> tuple[list[dict], list, set[str]]:
    """``train_loop`` in this process, recording every reference it loads and every embodiment it encodes."""
    references, embodiments, metrics = [], set(), []
    frozen = rf_train.frozen_reference

    def reference(model):
        references.append(frozen(model))
        return references[-1]

    def encode_batch(processor, samples, drops, num_queries):
        embodiments.update(s[S.EMBODIMENT] for s in samples)
        return encode_training_batch(processor, samples, drops, num_queries)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rf_train, "frozen_reference", reference)
        patch.setattr(train_common, "encode_training_batch", encode_batch)
        train_loop(settings, report=metrics.append)
    return metrics, references, embodiments


@pytest.fixture(scope="module")
def km_run(trained, tmp_path_factory):
    """Knowledge Matching (α = 0.005), 20 steps logged one by one. Read only."""
    settings = _settings(trained, tmp_path_factory.mktemp("rf") / "km", steps=20, log_every=1, save_every=20)
    return settings, *_spied_run(settings)


def _tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def test_km_lowers_the_flow_loss_the_kl_starts_at_zero_and_the_reference_never_moves(km_run, trained):
    settings, metrics, references, embodiments = km_run
    assert [m["step"] for m in metrics] == list(range(1, 21))
    flow = [m["flow_loss"] for m in metrics]
    assert np.mean(flow[-5:]) < 0.7 * np.mean(flow[:5])
    assert metrics[0]["kl"] == 0.0  # step 1's forward: the policy is still the reference
    assert max(m["kl"] for m in metrics[1:]) > 1e-6
    assert all(m["loss"] == pytest.approx(m["flow_loss"] + 0.005 * m["kl"], rel=1e-6) for m in metrics)
    assert metrics[-1]["samples_per_second"] > 0
    assert len(references) == 1  # loaded once
    init = load_vlm(trained[0].out, dtype=torch.float32)[0].state_dict()
    ref = references[0].state_dict()
    assert ref.keys() == init.keys() and all(torch.equal(ref[k], init[k]) for k in init)
    assert all(not p.requires_grad for p in references[0].parameters())
    before, after = _tensors(trained[0].out), _tensors(settings.out)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_only_robot_samples_reach_a_batch(km_run, shards):
    _, _, _, embodiments = km_run
    assert embodiments == ROBOTS
    shard_set = ShardSet.open(shards)
    rows = shard_set.read(S.TRAIN_SPLIT, [S.SAMPLE_ID, S.EMBODIMENT]).to_pylist()
    robots = sorted(r[S.SAMPLE_ID] for r in rows if r[S.EMBODIMENT] != "human")
    assert shard_set.robot_count(S.TRAIN_SPLIT) == len(robots) == 48
    epoch = [s for batch, _ in zip(iter_training_batches(shard_set, 4, 0, 1, 3, robot_only=True), range(12),
                                   strict=False) for s in batch]
    assert sorted(s[S.SAMPLE_ID] for s in epoch) == robots  # one epoch: every robot sample once, no human one
    resumed = next(iter_training_batches(shard_set, 4, 0, 1, 3, start_step=7, robot_only=True))
    assert [s[S.SAMPLE_ID] for s in resumed] == [s[S.SAMPLE_ID] for s in epoch[28:32]]
    ranks = [{s[S.SAMPLE_ID] for s in next(iter_training_batches(shard_set, 2, r, 2, 3, robot_only=True))}
             for r in (0, 1)]
    assert not ranks[0] & ranks[1]
    with pytest.raises(ClapDataError, match="48 robot training samples"):
        next(iter_training_batches(shard_set, 30, 0, 2, 3, robot_only=True))


def test_ki_leaves_the_backbone_byte_identical_and_loads_no_reference(trained, tmp_path):
    settings = _settings(trained, tmp_path / "ki", steps=3, log_every=1, ki=True, km_alpha=0.0)
    metrics, references, _ = _spied_run(settings)
    assert references == [] and all(m["kl"] is None for m in metrics)
    before, after = _tensors(trained[0].out), _tensors(settings.out)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert load_file(tmp_path / "ki" / HEAD_WEIGHTS)["action_out.weight"].abs().sum() > 0  # the head trained
    meta = json.loads((tmp_path / "ki" / "training.json").read_text())
    assert meta["mode"] == "ki" and meta["run"]["backbone_learning_rate"] is None
    with pytest.raises(ClapDataError, match="--ki takes no --km-alpha"):
        dataclasses.replace(settings, km_alpha=0.005)
    plain = _settings(trained, tmp_path / "plain", steps=4, log_every=1, km_alpha=0.0)
    metrics, references, _ = _spied_run(plain)  # plain fine-tuning: no reference either, and the backbone moves
    assert references == [] and metrics[-1]["kl"] is None
    moved = _tensors(plain.out)
    assert any(not torch.equal(before[k], moved[k]) for k in before)


def test_the_head_reads_the_prompt_exactly_as_acting_feeds_it(trained, shards):
    """Causal attention: the prompt positions' hidden states of prompt + answer equal a prompt-only forward's."""
    model, processor = load_vlm(trained[0].out, dtype=torch.float32)
    model.eval()
    samples = [s for s in next(iter_samples(ShardSet.open(shards), S.HELDOUT_SPLIT, 64))
               if s[S.EMBODIMENT] in ROBOTS][::4][:4]
    assert {s[S.EMBODIMENT] for s in samples} == ROBOTS  # prompts of different lengths (2 or 3 images)
    batch = encode_training_batch(processor, samples, [False] * len(samples), 4)
    labels = batch.pop("labels")
    mask = prompt_mask(batch["attention_mask"], labels)
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True).hidden_states
    trailing = batch["attention_mask"].bool() & (labels == IGNORE_INDEX) & ~mask
    assert trailing.any()  # the template's tokens after the end-of-turn: not labelled, not prompt, not context
    for i, sample in enumerate(samples):
        alone = encode(processor, [Prompt(prompt_images(sample["images"]), sample[S.EMBODIMENT],
                                          sample[S.INSTRUCTION])])
        n = int(mask[i].sum())
        assert n == alone["input_ids"].shape[1] and torch.equal(batch["input_ids"][i, :n], alone["input_ids"][0])
        assert not mask[i, n:].any() and labels[i, n] != IGNORE_INDEX  # the answer starts right after
        with torch.no_grad():
            hidden = model(**alone, output_hidden_states=True).hidden_states
        for layer in range(len(full)):
            assert torch.allclose(full[layer][i, :n], hidden[layer][0], atol=1e-5)
    window = answer_window(labels)  # the logits kept for the KL: from the one predicting the first answer token
    first = int((labels != IGNORE_INDEX).float().argmax(dim=1).min())
    assert window == labels.shape[1] - first + 1


def test_the_checkpoint_records_what_acting_needs(km_run, trained):
    settings, _, _, _ = km_run
    ckpt, ntp = Path(settings.out), json.loads((Path(trained[0].out) / "training.json").read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json", HEAD_WEIGHTS, HEAD_CONFIG, "training.json",
            "training_state.pt"} <= {p.name for p in ckpt.iterdir()}
    meta = json.loads((ckpt / "training.json").read_text())
    assert meta["kind"] == "clap-rf" and meta["mode"] == "km" and meta["km_alpha"] == 0.005 and meta["step"] == 20
    assert meta["init"] == {"checkpoint": trained[0].out, "weights_sha256": weights_sha256(Path(trained[0].out)),
                            "step": 100}
    assert meta["act_vae"] == ntp["act_vae"] and meta["statistics"] == ntp["statistics"]
    assert meta["stats_ids"] == ntp["stats_ids"] and meta["action_token_first_id"] == ntp["action_token_first_id"]
    assert meta["embodiments"] == {"S1-stationary": {"arm_mask": [True, True]}, "droid": {"arm_mask": [False, True]}}
    assert meta["vl_layers"] == list(default_vl_layers(2)) == [0, 1] and meta["flow_steps"] == 4
    assert default_vl_layers(36) == (9, 18) and default_vl_layers(4) == (1, 2)
    config = RFHeadConfig.from_dict(json.loads((ckpt / HEAD_CONFIG).read_text()))
    assert config == RFHeadConfig(vl_hidden_size=64, vl_layers=(0, 1), width=32, depth=2, heads=2)
    assert meta["run"]["head"] == config.to_dict() and meta["run"]["backbone_learning_rate"] == pytest.approx(3e-4)
    assert load_head(ckpt, torch.device("cpu")).config == config
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert state["extra"]["run"] == meta["run"] and any(k.startswith("head.") for k in state["model"]["state_dict"])
    with pytest.raises(ClapDataError, match="km_alpha differ"):
        train_loop(dataclasses.replace(settings, km_alpha=0.01))
    with pytest.raises(ClapDataError, match="not a CLAP-RF checkpoint"):
        clear_rf_checkpoint(Path(trained[0].out))  # --overwrite never empties the NTP checkpoint
    with pytest.raises(ClapDataError, match="is the NTP checkpoint itself"):
        dataclasses.replace(settings, out=trained[0].out)


def _heldout(shards: Path, embodiment: str) -> list[dict]:
    return [s for s in next(iter_samples(ShardSet.open(shards), S.HELDOUT_SPLIT, 64)) if s[S.EMBODIMENT] == embodiment]


def _normalised_state(state: np.ndarray, q: dict, mask: np.ndarray) -> np.ndarray:
    """METHOD.md §2 by hand: q01/q99 on the pose dims (a span under 1e-8 counts as 1), then the inactive arm
    zeroed."""
    lo, hi, out = np.asarray(q["state"]["q01"]), np.asarray(q["state"]["q99"]), state.copy()
    span = np.where(np.abs(hi - lo) < 1e-8, 1.0, hi - lo)
    out[POSE] = (state[POSE] - lo[POSE]) / span[POSE] * 2 - 1
    return mask_arms(out, mask)


def test_rf_policy_acts_deterministically_and_as_an_independent_computation(km_run, shards, tmp_path):
    settings, _, _, _ = km_run
    policy = load_policy(settings.out, device="cpu")
    assert isinstance(policy, RFPolicy) and policy_metadata(policy)["kind"] == "clap-rf"
    table = openclap_stats_table()
    for embodiment, mask in (("S1-stationary", [1.0, 1.0]), ("droid", [0.0, 1.0])):
        sample = _heldout(shards, embodiment)[0]
        state = np.asarray(sample[S.STATE], dtype=np.float64)
        args = (sample["images"], sample[S.INSTRUCTION], embodiment, state)
        out = policy.predict(*args, seed=5)["actions"]
        assert out.shape == (32, 14) and out.dtype == np.float64 and np.isfinite(out).all()
        assert np.array_equal(out, policy.predict(*args, seed=5)["actions"])
        assert not np.allclose(out, policy.predict(*args, seed=6)["actions"])
        prompt = Prompt(prompt_images(sample["images"]), embodiment, sample[S.INSTRUCTION])
        normalised = policy.normalized_chunk(prompt, _normalised_state(state, table[embodiment], np.array(mask)), 5)
        expected = mask_arms(reference_absolute(state, normalised, table[embodiment]), np.array(mask))
        assert np.allclose(out, expected, atol=1e-6)
        if embodiment == "droid":
            assert not out[:, :7].any()  # the left slot of a right-arm robot stays empty
    with pytest.raises(ClapDataError, match="human is not a robot"):
        policy.predict(sample["images"], "wave", "human", np.zeros(14))
    torch.manual_seed(1)
    other = tmp_path / "other_act_vae"
    save_model(ActVAE(TINY), other)
    with pytest.raises(ClapDataError, match="is not the one"):
        RFPolicy.from_pretrained(settings.out, act_vae=other, device="cpu")


def _train_args(trained, out: Path, steps: int, *extra: str) -> list[str]:
    ntp, _ = trained
    return ["train", "rf", "--init", ntp.out, "--shards", ntp.shards, "--out", str(out), "--steps", str(steps),
            "--batch-size", "2", "--num-workers", "2", "--lr", "3e-3", "--warmup-steps", "2", "--save-every", "2",
            "--log-every", "1", "--device", "cpu", "--head-width", "32", "--head-depth", "2", "--head-heads", "2",
            *extra]


def _losses(output: str) -> dict[int, tuple[str, ...]]:
    return {int(step): rest for step, *rest in STEP_LINE.findall(output)}


@pytest.fixture(scope="module")
def rf_ddp_run(ray_local, trained, tmp_path_factory):
    """``train rf`` (KM) for RUN_STEPS steps on 2 Ray CPU workers (DDP, gloo), in this process. Read only."""
    out = tmp_path_factory.mktemp("rf_ddp") / "ckpt"
    result = runner.invoke(app, _train_args(trained, out, RUN_STEPS))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_rf_runs_ddp_on_two_ray_cpu_workers(rf_ddp_run, trained):
    out, output = rf_ddp_run
    losses = _losses(output)
    assert sorted(losses) == list(range(1, RUN_STEPS + 1)) and losses[1][2] == "0.000e+00"
    assert f"{RUN_STEPS} steps on 2 worker(s) (cpu)" in output and "48 robot training samples" in output
    assert "Knowledge Matching (α = 0.005)" in output
    meta = json.loads((out / "training.json").read_text())
    assert meta["world_size"] == 2 and meta["run"]["world_size"] == 2 and meta["step"] == RUN_STEPS
    again = runner.invoke(app, _train_args(trained, out, RUN_STEPS))
    assert again.exit_code == 0 and f"already trained to {RUN_STEPS} steps; nothing to do" in again.output
    refused = runner.invoke(app, _train_args(trained, out.parent / "ki", 2, "--ki", "--km-alpha", "0.1"))
    assert refused.exit_code == 1 and "--ki takes no --km-alpha" in refused.output


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_losses_of_an_uninterrupted_run(rf_ddp_run, trained, tmp_path):
    straight, straight_output = rf_ddp_run
    out = tmp_path / "killed"
    killed_at = kill_mid_run([*CLI, *_train_args(trained, out, RUN_STEPS)], out)
    assert 2 <= killed_at < RUN_STEPS, f"the run was killed at step {killed_at}, not inside the {RUN_STEPS} steps"
    resumed = runner.invoke(app, _train_args(trained, out, RUN_STEPS))
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from step {killed_at}" in resumed.output
    after = set(range(killed_at + 1, RUN_STEPS + 1))
    assert set(_losses(resumed.output)) == after
    assert _losses(resumed.output) == {s: v for s, v in _losses(straight_output).items() if s in after}
    for name in ("model.safetensors", HEAD_WEIGHTS):
        a, b = load_file(out / name), load_file(straight / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
