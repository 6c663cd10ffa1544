"""CLAP-NTP end to end on the factory shards: batches, training, ``train ntp`` with 2 Ray workers, kill -9 and
resume, ``NTPPolicy.predict``, malformed answers, ``eval ntp`` against an independent computation."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import clap_data.cli.ntp_commands  # noqa: F401  (registers train ntp and eval ntp)
from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.decoding import detokenize
from clap_data.actions import NormStats, mask_arms
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE, save_model, text_tokens
from clap_data.reference import openclap_stats_table
from clap_data.schemas import shards_v1 as S
from clap_data.training import NTPPolicy
from clap_data.training.ntp_checkpoint import clear_ntp_checkpoint
from clap_data.training.ntp_data import ShardSet, iter_samples, iter_training_batches
from clap_data.training.ntp_train import train_loop
from tests.conftest import TINY
from tests.reference import reference_absolute
from tests.training.ray_runs import RUN_STEPS, kill_mid_run

runner = CliRunner()
CLI = [sys.executable, "-c", "import clap_data.cli.ntp_commands; from clap_data.cli import main; main()"]
STEP_LINE = re.compile(r"step (\d+)/\d+  loss (\S+)")


def _rows(shards: Path, split: str) -> list[dict]:
    return pa.concat_tables(pq.read_table(f) for f in sorted((shards / split).glob("*.parquet"))).to_pylist()


def _train_args(shards: Path, vlm: Path, out: Path, steps: int) -> list[str]:
    return ["train", "ntp", "--shards", str(shards), "--model", str(vlm), "--out", str(out), "--steps", str(steps),
            "--batch-size", "2", "--num-workers", "2", "--lr", "1e-3", "--warmup-steps", "2", "--save-every", "2",
            "--log-every", "1", "--device", "cpu"]


def _losses(output: str) -> dict[int, str]:
    return {int(step): loss for step, loss in STEP_LINE.findall(output)}


def test_factory_shards_follow_the_schema_and_their_manifest(shards, tiny_ckpt):
    manifest = json.loads((shards / S.SHARD_MANIFEST).read_text())
    act_vae, sha = load_act_vae(tiny_ckpt)
    assert manifest["act_vae"]["checkpoint_sha256"] == sha and manifest["num_tokens"] == 8
    schema = S.shard_arrow_schema(num_tokens=8)
    for split in (S.TRAIN_SPLIT, S.HELDOUT_SPLIT):
        for entry in manifest["splits"][split]["shards"]:
            assert pq.read_schema(shards / entry["file"]) == schema
            assert pq.ParquetFile(shards / entry["file"]).metadata.num_rows == entry["rows"]
        rows = _rows(shards, split)
        assert manifest["splits"][split]["datasets"] == dict(Counter(r[S.DATASET] for r in rows))
        assert manifest["splits"][split]["embodiments"] == dict(Counter(r[S.EMBODIMENT] for r in rows))
    rows = _rows(shards, S.HELDOUT_SPLIT)
    assert {r[S.EPISODE_INDEX] for r in rows} == {3}  # the last episode of each dataset is held out
    for row in rows:
        assert row[S.TOKENS_TEXT] == text_tokens(np.array(row[S.TOKENS]), 4)
        head = Image.open(io.BytesIO(row[S.image_column("head")]))
        assert head.format == "JPEG" and head.size == (56, 56)
        chunk = np.asarray(row[S.ACTIONS]).reshape(32, 14)
        if row[S.EMBODIMENT] == "human":
            assert row[S.TOKEN_SOURCE] == "pseudo_tokens" and not chunk.any()
        else:  # the ground truth is the Act-VAE's decoding of the tokens
            decoded = act_vae.detokenize_dual(torch.tensor([row[S.TOKENS]])).numpy()[0]
            assert np.allclose(chunk, mask_arms(decoded, np.asarray(row[S.ARM_MASK], float)), atol=1e-6)
    droid = [r for r in rows if r[S.EMBODIMENT] == "droid"]
    assert all(r[S.image_column("wrist_left")] is None and r[S.ARM_MASK] == [False, True] for r in droid)


def test_batches_are_a_function_of_seed_step_and_rank(shards):
    shard_set = ShardSet.open(shards)
    ids = [[s[S.SAMPLE_ID] for s in batch] for batch, _ in zip(iter_training_batches(shard_set, 4, 0, 1, 7),
                                                                range(19), strict=False)]
    assert sorted(i for batch in ids[:18] for i in batch) == sorted(r[S.SAMPLE_ID] for r in _rows(shards, "train"))
    assert ids[18] != ids[0]  # epoch 1 has its own order
    resumed = iter_training_batches(shard_set, 4, 0, 1, 7, start_step=5)
    assert [s[S.SAMPLE_ID] for s in next(resumed)] == ids[5]
    for step in (0, 18):  # two ranks of 2: disjoint halves of the step's global batch, the same on a rerun
        ranks = [[s[S.SAMPLE_ID] for s in next(iter_training_batches(shard_set, 2, rank, 2, 7, start_step=step))]
                 for rank in (0, 1)]
        again = [s[S.SAMPLE_ID] for s in next(iter_training_batches(shard_set, 2, 1, 2, 7, start_step=step))]
        assert len(ranks[0]) == len(ranks[1]) == 2 and not set(ranks[0]) & set(ranks[1]) and again == ranks[1]
    with pytest.raises(ClapDataError, match="fewer than one global batch"):
        next(iter_training_batches(shard_set, 40, 0, 2, 7))


def test_a_few_steps_lower_the_loss_and_the_checkpoint_records_what_it_needs(trained, tiny_ckpt, shards):
    settings, metrics = trained
    assert [m["step"] for m in metrics] == list(range(10, 101, 10))
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 3
    assert metrics[-1]["token_accuracy"] > metrics[0]["token_accuracy"] and metrics[-1]["samples_per_second"] > 0
    ckpt = Path(settings.out)
    meta = json.loads((ckpt / "training.json").read_text())
    assert meta["kind"] == "clap-ntp" and meta["step"] == 100 and meta["num_queries"] == 4
    assert meta["act_vae"] == {"checkpoint_sha256": load_act_vae(tiny_ckpt)[1], "checkpoint": str(tiny_ckpt.absolute())}
    assert meta["stats_ids"] == {"S1-stationary": "openclap:S1-stationary", "droid": "openclap:droid"}
    table = openclap_stats_table()
    assert meta["statistics"]["droid"]["action"] == table["droid"]["action"]
    assert meta["embodiments"] == {"S1-stationary": {"arm_mask": [True, True]}, "droid": {"arm_mask": [False, True]},
                                   "human": {"arm_mask": [True, True]}}
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(ckpt)  # stock transformers reads it
    processor = AutoProcessor.from_pretrained(ckpt)
    assert processor.tokenizer.convert_tokens_to_ids("<ACT_15>") == meta["action_token_first_id"] + 15
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)
    # a rerun with other settings is refused before anything is loaded; --overwrite empties only checkpoints
    with pytest.raises(ClapDataError, match="learning_rate differ"):
        train_loop(dataclasses.replace(settings, learning_rate=1e-4))
    foreign = ckpt.parent / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ClapDataError, match="not a CLAP-NTP checkpoint"):
        clear_ntp_checkpoint(foreign)


@pytest.fixture(scope="module")
def ddp_run(ray_local, shards, vlm, tmp_path_factory):
    """``train ntp`` for RUN_STEPS steps on 2 Ray CPU workers (DDP, gloo), in this process. Read only."""
    out = tmp_path_factory.mktemp("ddp") / "ckpt"
    result = runner.invoke(app, _train_args(shards, vlm, out, RUN_STEPS))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_ntp_runs_ddp_on_two_ray_cpu_workers(ddp_run, shards, vlm):
    out, output = ddp_run
    assert sorted(_losses(output)) == list(range(1, RUN_STEPS + 1))
    assert f"{RUN_STEPS} steps on 2 worker(s) (cpu)" in output and "4 per step" in output
    meta = json.loads((out / "training.json").read_text())
    assert meta["world_size"] == 2 and meta["run"]["world_size"] == 2 and meta["step"] == RUN_STEPS
    again = runner.invoke(app, _train_args(shards, vlm, out, RUN_STEPS))
    assert again.exit_code == 0 and f"already trained to {RUN_STEPS} steps; nothing to do" in again.output


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_batches_and_losses_of_an_uninterrupted_run(ddp_run, shards, vlm, tmp_path):
    straight, straight_output = ddp_run
    out = tmp_path / "killed"
    killed_at = kill_mid_run([*CLI, *_train_args(shards, vlm, out, RUN_STEPS)], out)
    assert 2 <= killed_at < RUN_STEPS, f"the run was killed at step {killed_at}, not inside the {RUN_STEPS} steps"
    resumed = runner.invoke(app, _train_args(shards, vlm, out, RUN_STEPS))
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from step {killed_at}" in resumed.output
    after = set(range(killed_at + 1, RUN_STEPS + 1))
    assert set(_losses(resumed.output)) == after
    assert _losses(resumed.output) == {s: loss for s, loss in _losses(straight_output).items() if s in after}
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _heldout(shards: Path, embodiment: str) -> list[dict]:
    batch = next(iter_samples(ShardSet.open(shards), S.HELDOUT_SPLIT, 64))
    return [s for s in batch if s[S.EMBODIMENT] == embodiment]


def _openclap(embodiment: str) -> NormStats:
    return NormStats.from_table(openclap_stats_table(), embodiment, "openclap", "the OpenCLAP table")


def test_predict_gives_the_absolute_act_vae_decoding_of_the_generated_tokens(trained, shards, tiny_ckpt):
    settings, _ = trained
    policy = NTPPolicy.from_pretrained(settings.out, device="cpu")
    act_vae, _ = load_act_vae(tiny_ckpt)
    for embodiment, mask in (("S1-stationary", [1, 1]), ("droid", [0, 1])):
        acted = 0
        for sample in _heldout(shards, embodiment):  # a tiny model trained 100 steps: some answers are malformed
            images = {camera: np.kron(image, np.ones((4, 4, 1), np.uint8))  # 224 × 224: the processor resizes
                      for camera, image in sample["images"].items()}
            state = np.asarray(sample[S.STATE], dtype=np.float64)
            try:
                out = policy.predict(images, sample[S.INSTRUCTION], embodiment, state)
            except ClapDataError as exc:
                assert "the policy's answer" in str(exc)
                continue
            acted += 1
            assert out["tokens"].dtype == np.int16 and out["tokens"].shape == (8,)
            assert out["actions"].shape == (32, 14) and isinstance(out["subtask"], str)
            expected = detokenize(act_vae, out["tokens"], state, _openclap(embodiment), np.array(mask, float))
            assert np.array_equal(out["actions"], expected)
            # and by hand: the decoder's normalised relative chunk, denormalised, made absolute from the state
            relative = act_vae.detokenize_dual(torch.tensor(out["tokens"][None]).long()).double().numpy()[0]
            by_hand = reference_absolute(state, relative, openclap_stats_table()[embodiment])
            assert np.allclose(out["actions"], mask_arms(by_hand, np.array(mask, float)), atol=1e-6)
            if embodiment == "droid":
                assert not out["actions"][:, :7].any()  # the left slot of a right-arm robot stays empty
        assert acted >= 2, f"too few well-formed answers for {embodiment}"


def test_malformed_answers_and_bad_inputs_raise_instead_of_acting(trained, shards, monkeypatch, tmp_path):
    settings, _ = trained
    policy = NTPPolicy.from_pretrained(settings.out, device="cpu")
    sample = _heldout(shards, "S1-stationary")[0]
    args = (sample["images"], sample[S.INSTRUCTION], "S1-stationary", sample[S.STATE])
    for answer, reason in [("Subtask: lift it\nAction: <ACT_1><ACT_2><ACT_3>", "expected 8"),
                           ("Subtask: lift it\nAction: <ACT_1><ACT_2>and<ACT_3><ACT_4><ACT_5><ACT_6><ACT_7><ACT_8>",
                            "malformed action text"),
                           ("<ACT_1><ACT_2><ACT_3><ACT_4><ACT_5><ACT_6><ACT_7><ACT_8>", "not 'Subtask: …'")]:
        monkeypatch.setattr(policy, "generate", lambda prompts, answer=answer: [answer])
        with pytest.raises(ClapDataError, match=reason):
            policy.predict(*args)
    with pytest.raises(ClapDataError, match="human is not a robot"):
        policy.predict(sample["images"], "wave", "human", np.zeros(14))
    with pytest.raises(ClapDataError, match="was not trained on embodiment 'franka'"):
        policy.predict(sample["images"], "wave", "franka", np.zeros(14))
    with pytest.raises(ClapDataError, match="H×W×3 uint8"):
        policy.predict({"head": np.zeros((8, 8), np.uint8)}, "wave", "S1-stationary", np.zeros(14))
    torch.manual_seed(1)
    other = tmp_path / "other_act_vae"
    save_model(ActVAE(TINY), other)
    with pytest.raises(ClapDataError, match="is not the one"):
        NTPPolicy.from_pretrained(settings.out, act_vae=other, device="cpu")


def _wrapped_squared_error(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    error = predicted - truth
    for arm in (0, 7):
        error[:, arm + 3:arm + 6] = np.angle(np.exp(1j * error[:, arm + 3:arm + 6]))
    return (error ** 2).mean(axis=0)


def test_eval_ntp_agrees_with_an_independent_computation(trained, shards, tiny_ckpt):
    settings, _ = trained
    args = ["eval", "ntp", "--ckpt", settings.out, "--shards", str(shards), "--device", "cpu", "--batch-size", "24"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {r[S.SAMPLE_ID]: r for r in _rows(shards, S.HELDOUT_SPLIT)}
    predictions = {p["sample_id"]: p["tokens"] for p in report["predictions"]}
    assert predictions.keys() == rows.keys() and report["samples"] == 24 and report["robot_samples"] == 16
    truth = np.array([rows[i][S.TOKENS] for i in predictions])
    guessed = np.array([p if p is not None else [-1] * 8 for p in predictions.values()])
    assert np.allclose(report["per_slot_accuracy"], (guessed == truth).mean(axis=0))
    train = np.array([r[S.TOKENS] for r in _rows(shards, S.TRAIN_SPLIT)])
    modes = [min(Counter(column).items(), key=lambda kv: (-kv[1], kv[0]))[0] for column in train.T.tolist()]
    assert report["baseline_tokens"] == modes
    assert np.allclose(report["baseline_per_slot_accuracy"], (truth == np.array(modes)).mean(axis=0))
    act_vae, _ = load_act_vae(tiny_ckpt)
    table = openclap_stats_table()
    sums = {"policy": np.zeros(14), "baseline": np.zeros(14)}
    counts = np.zeros(14)
    for sample_id, tokens in predictions.items():
        row = rows[sample_id]
        if row[S.EMBODIMENT] == "human" or tokens is None:
            continue
        state, mask = np.asarray(row[S.STATE], np.float64), np.asarray(row[S.ARM_MASK], np.float64)
        q = table[row[S.EMBODIMENT]]
        gt = mask_arms(reference_absolute(state, np.asarray(row[S.ACTIONS], np.float64).reshape(32, 14), q), mask)
        active = np.repeat(mask.astype(bool), 7)
        counts += active
        for name, guess in (("policy", tokens), ("baseline", modes)):
            relative = act_vae.detokenize_dual(torch.tensor([guess])).double().numpy()[0]
            predicted = mask_arms(reference_absolute(state, relative, q), mask)
            sums[name] += np.where(active, _wrapped_squared_error(predicted, gt), 0.0)
    assert report["scored_chunks"] == sum(1 for i, t in predictions.items()
                                          if t is not None and rows[i][S.EMBODIMENT] != "human")
    for name, key in (("policy", "mse_per_dof"), ("baseline", "baseline_mse_per_dof")):
        expected = [s / c if c else None for s, c in zip(sums[name], counts, strict=True)]
        got = list(report[key].values())
        assert [g is None for g in got] == [e is None for e in expected]
        assert np.allclose([g for g in got if g is not None], [e for e in expected if e is not None], rtol=1e-5,
                           atol=1e-12)
    table_output = runner.invoke(app, args)
    assert table_output.exit_code == 0 and "most-frequent-token baseline" in table_output.output
    assert "right_gripper" in table_output.output


def test_a_shard_folder_of_another_act_vae_is_refused(trained, shards, tmp_path):
    settings, _ = trained
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / S.SHARD_MANIFEST).read_text())
    manifest["act_vae"]["checkpoint_sha256"] = "0" * 64
    (copy / S.SHARD_MANIFEST).write_text(json.dumps(manifest))
    result = runner.invoke(app, ["eval", "ntp", "--ckpt", settings.out, "--shards", str(copy), "--device", "cpu"])
    assert result.exit_code == 1 and "another Act-VAE" in result.output


def test_predict_ntp_acts_on_a_shard_sample_and_shows_its_truth(trained, shards, tiny_ckpt):
    settings, _ = trained
    policy = NTPPolicy.from_pretrained(settings.out, device="cpu")
    rows = {r[S.SAMPLE_ID]: r for r in _rows(shards, S.HELDOUT_SPLIT)}
    for sample in _heldout(shards, "S1-stationary"):  # the first sample the tiny policy answers well
        try:
            expected = policy.predict(sample["images"], sample[S.INSTRUCTION], "S1-stationary", sample[S.STATE],
                                      sample[S.ARM_MASK])
        except ClapDataError:
            continue
        break
    else:
        pytest.fail("no well-formed answer on the held-out S1 samples")
    args = ["predict", "ntp", "--ckpt", settings.out, "--shards", str(shards), "--device", "cpu",
            "--sample-id", sample[S.SAMPLE_ID]]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    row = rows[sample[S.SAMPLE_ID]]
    assert got["tokens"] == expected["tokens"].tolist() and got["subtask"] == expected["subtask"]
    assert np.array_equal(np.array(got["actions"]), expected["actions"])
    assert got["truth_tokens"] == row[S.TOKENS] and got["truth_subtask"] == row[S.SUBTASK]
    state, mask = np.asarray(row[S.STATE], np.float64), np.asarray(row[S.ARM_MASK], np.float64)
    truth = mask_arms(reference_absolute(state, np.asarray(row[S.ACTIONS], np.float64).reshape(32, 14),
                                         openclap_stats_table()["S1-stationary"]), mask)
    assert np.allclose(got["truth_actions"], truth, atol=1e-6)
    assert got["mse"] == pytest.approx(_wrapped_squared_error(expected["actions"], truth).mean(), rel=1e-9)
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0 and f"{sum(np.equal(got['tokens'], row[S.TOKENS]))}/8 equal" in shown.output
    human = next(s for s in _heldout(shards, "human"))
    refused = runner.invoke(app, [*args[:-1], human[S.SAMPLE_ID]])
    assert refused.exit_code != 0 and "human video" in refused.output
    missing = runner.invoke(app, [*args[:-2], "--sample", "9999"])
    assert missing.exit_code != 0 and "there is no sample 9999" in missing.output


def test_a_shard_sample_is_read_from_its_row_group_alone(shards, tmp_path):
    from clap_data.training.ntp_predict import _read_row, read_shard_sample

    rows = _rows(shards, S.HELDOUT_SPLIT)
    grouped = tmp_path / "grouped.parquet"
    pq.write_table(pa.Table.from_pylist(rows), grouped, row_group_size=5)
    file = pq.ParquetFile(grouped)
    assert file.metadata.num_row_groups == 5
    assert [_read_row(file, i)[S.SAMPLE_ID] for i in range(len(rows))] == [r[S.SAMPLE_ID] for r in rows]
    shard_set = ShardSet.open(shards)
    assert read_shard_sample(shard_set, S.HELDOUT_SPLIT, index=7)[S.SAMPLE_ID] == rows[7][S.SAMPLE_ID]
    assert read_shard_sample(shard_set, S.HELDOUT_SPLIT, sample_id=rows[3][S.SAMPLE_ID])[S.TOKENS] == rows[3][S.TOKENS]
