"""Tokens → absolute executable chunks: `detokenize` against a scipy reference, `<ACT_i>` text
both ways, single-arm data, refusals; and the user's whole flow on the real Astribot episode:
train → tokenize → lerobot → detokenize."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets import LeRobotDataset
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.decoding import detokenize
from clap_data.actions import absolute_chunk, denormalize, episode_chunks, model_chunks
from clap_data.cli import app
from clap_data.lerobot_v3.reader import read_episode_arrays
from clap_data.models import text_tokens
from clap_data.norm_stats import load_norm_stats
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset
from clap_data.reference import openclap_stats_table
from clap_data.sources.astribot import AstribotSource
from tests.reference import reference_absolute

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("ray_local")
K16 = ": the checkpoint's codebook has K = 16 codes"  # tiny_ckpt's


def assert_same_pose(actual: np.ndarray, expected: np.ndarray) -> None:
    """Positions and grippers as values, rotations as matrices (Euler angles may wrap at ±π)."""
    for arm in (0, 7):
        np.testing.assert_allclose(actual[:, arm : arm + 3], expected[:, arm : arm + 3], atol=1e-6)
        np.testing.assert_allclose(actual[:, arm + 6], expected[:, arm + 6], atol=1e-6)
        np.testing.assert_allclose(
            Rotation.from_euler("xyz", actual[:, arm + 3 : arm + 6]).as_matrix(),
            Rotation.from_euler("xyz", expected[:, arm + 3 : arm + 6]).as_matrix(), atol=1e-6,
        )


@pytest.fixture(scope="module")
def tokenized(unified_astribot, tiny_ckpt, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("decoding") / "astribot"
    shutil.copytree(unified_astribot, copy)
    tokenize_dataset(copy, TokenizeRequest(ckpt=tiny_ckpt))
    return copy


def test_cli_decodes_stored_tokens_like_the_reference(tokenized, tiny_ckpt):
    result = runner.invoke(app, ["detokenize", str(tokenized), "--ckpt", str(tiny_ckpt), "--episode", "1", "--frame", "10", "--json"])
    assert result.exit_code == 0, result.output
    decoded = json.loads(result.output)
    model, _ = load_act_vae(tiny_ckpt)
    normalised = model.detokenize_dual(torch.tensor([decoded["tokens"]])).double().numpy()[0]
    state = read_episode_arrays(tokenized, 1).state[10]
    expected = reference_absolute(state, normalised, openclap_stats_table()["S1-stationary"])
    assert_same_pose(np.array(decoded["action"]), expected)
    assert decoded["text"] == text_tokens(decoded["tokens"], 4) and decoded["padded"] is False
    right_first = "".join(f"<ACT_{t}>" for t in decoded["tokens"][4:] + decoded["tokens"][:4])
    assert decoded["text"] == right_first
    # the text form goes back in and decodes to the same chunk; so do explicit codes
    for given in (decoded["text"], ",".join(map(str, decoded["tokens"]))):
        again = runner.invoke(app, ["detokenize", str(tokenized), "--ckpt", str(tiny_ckpt), "--episode", "1", "--frame", "10", "--tokens", given, "--json"])
        assert json.loads(again.output)["action"] == decoded["action"]


def test_a_perfect_decoder_gives_back_the_recorded_actions(unified_astribot):
    """The inverse transform alone: normalise → denormalise → absolute recovers the commands."""
    arrays = read_episode_arrays(unified_astribot, 0)
    stats = load_norm_stats(unified_astribot, "openclap")
    relative, padded = episode_chunks(arrays.state, arrays.action)
    seen = model_chunks(relative, arrays.arm_mask, stats)
    recovered = absolute_chunk(arrays.state, denormalize(seen, stats.action_q01, stats.action_q99))
    for t in (0, 8):
        assert not padded[t]
        assert_same_pose(recovered[t], arrays.action[t : t + 32])


def test_single_arm_chunks_leave_the_empty_slot_zero(unified_droid, tiny_ckpt):
    model, _ = load_act_vae(tiny_ckpt)
    arrays = read_episode_arrays(unified_droid, 0)
    tokens = torch.arange(8) % 16
    action = detokenize(model, tokens, arrays.state[3], load_norm_stats(unified_droid, "openclap"), arrays.arm_mask[3])
    assert action.shape == (32, 14)
    assert (action[:, :7] == 0).all() and np.abs(action[:, 7:]).sum() > 0
    batch = detokenize(model, torch.stack([tokens, tokens]), arrays.state[[3, 3]], load_norm_stats(unified_droid, "openclap"), arrays.arm_mask[[3, 3]])
    np.testing.assert_array_equal(batch[0], action)


def test_refusals_are_sentences(tokenized, unified_astribot, tiny_ckpt, tmp_path):
    result = runner.invoke(app, ["detokenize", str(unified_astribot), "--ckpt", str(tiny_ckpt), "--episode", "0", "--frame", "0"])
    assert result.exit_code == 1 and "has no action_tokens; add them with: clap-data tokenize act-vae" in result.output
    other = tmp_path / "other"
    shutil.copytree(tiny_ckpt, other)
    model, _ = load_act_vae(other)
    with torch.no_grad():
        model.to_action.bias.add_(1.0)
    model.save_pretrained(other)
    result = runner.invoke(app, ["detokenize", str(tokenized), "--ckpt", str(other), "--episode", "0", "--frame", "0"])
    assert result.exit_code == 1 and "codes of one codebook mean nothing to another" in result.output
    result = runner.invoke(app, ["detokenize", str(tokenized), "--ckpt", str(tiny_ckpt), "--episode", "0", "--frame", "999"])
    assert result.exit_code == 1 and "frame 999 is outside episode 0" in result.output


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("garbage", "'garbage' is neither <ACT_i> text (right arm first) nor 8 comma-separated codes "
                    "(left arm's, then right's)"),
        ("a,b", "'a,b' is neither <ACT_i> text (right arm first)"),
        ("1,2,3", "needs 8 codes (left arm's, then right's), got 3"),
        ("<ACT_1><ACT_2>", "expected 8 <ACT_i> tokens, got 2 in '<ACT_1><ACT_2>'"),
        ("<ACT_1>garbage", "malformed action text at character 7: 'garbage'"),
        ("<ACT_99>" * 7 + "<ACT_16>", f"action token indices [16, 99] are outside [0, 16){K16}"),
        ("0,1,2,3,4,5,16,-1", f"codes [-1, 16] are outside [0, 16){K16}"),
    ],
)
def test_bad_tokens_are_a_usage_error_saying_what_is_wrong(tokenized, tiny_ckpt, given, message):
    """--tokens is the caller's mistake: exit 2 (README's exit statuses), checked against the checkpoint's Nq and K."""
    args = ["detokenize", str(tokenized), "--ckpt", str(tiny_ckpt), "--episode", "0", "--frame", "0", "--tokens", given]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for --tokens: {message}" in result.output  # conftest's COLUMNS=200: no wrapping
    assert "Traceback" not in result.output


def test_the_users_flow_on_the_real_episode(real_astribot, tmp_path):
    dataset, ckpt = tmp_path / "astribot", tmp_path / "ckpt"
    ingest(AstribotSource(real_astribot), IngestRequest(out=dataset))
    tiny = ["--num-queries", "4", "--codebook-size", "32", "--batch-size", "32", "--holdout", "tail", "--holdout-fraction", "0.2"]
    assert runner.invoke(app, ["train", "act-vae", "--data", str(dataset), "--out", str(ckpt), "--steps", "20", *tiny]).exit_code == 0
    result = runner.invoke(app, ["tokenize", "act-vae", str(dataset), "--ckpt", str(ckpt)])
    assert result.exit_code == 0, result.output
    loaded = LeRobotDataset("local/real", root=dataset, video_backend="pyav")
    frame = loaded[100]
    tokens = frame["action_tokens"].tolist()
    assert len(tokens) == 8 and not bool(frame["action_tokens_padded"]) and bool(loaded[230]["action_tokens_padded"])
    result = runner.invoke(app, ["detokenize", str(dataset), "--ckpt", str(ckpt), "--episode", "0", "--frame", "100", "--json"])
    decoded = json.loads(result.output)
    assert decoded["tokens"] == tokens
    model, _ = load_act_vae(ckpt)
    arrays = read_episode_arrays(dataset, 0)
    expected = detokenize(model, tokens, arrays.state[100], load_norm_stats(dataset, "openclap"), arrays.arm_mask[100])
    np.testing.assert_allclose(np.array(decoded["action"]), expected, atol=1e-12)
    # the chunk starts near the state it is anchored to (positions within the normalised range)
    assert np.abs(np.array(decoded["action"])[0, :3] - arrays.state[100, :3]).max() < 0.5
    evaluation = runner.invoke(app, ["eval", "act-vae", str(dataset), "--ckpt", str(ckpt), "--json"])
    report = json.loads(evaluation.output)
    assert report["holdout"] == {"mode": "tail", "fraction": 0.2, "key": "provenance"}  # the checkpoint's own split by default
    assert report["chunks"] == 2 * (236 - int(236 * 0.8))
