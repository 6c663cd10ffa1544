"""``eval vd-vae`` on the tiny setup: its numbers against an independent computation on the same frame pairs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.decoding import detokenize
from clap_data.actions import chunk_commands, tokenizer_input
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.factories.rendered import write_rendered_robot
from clap_data.factories.tiny_backbone import write_tiny_backbone
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.models import VDVAE, load_model, save_model
from clap_data.models.backbone import load_backbone
from clap_data.norm_stats import load_norm_stats
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.astribot import AstribotSource
from clap_data.splits import Holdout, episode_keys
from clap_data.vd_vae.evaluation import evaluate_vd_vae
from clap_data.vd_vae.frame_pairs import episode_videos, iter_frame_pairs
from clap_data.vd_vae.perturbations import PERTURBATIONS
from clap_data.vd_vae.training import VDTrainOptions, _config, train_vd_vae

# episodes of 40, 52 and 45 frames: pairs 32 apart need t + 32 inside the episode, so only a long tail holds any
HOLDOUT = Holdout("tail", 0.9)
runner = CliRunner()


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return write_tiny_backbone(tmp_path_factory.mktemp("backbone") / "dinov2")


@pytest.fixture(scope="module")
def vd_ckpts(unified_astribot, tiny_ckpt, backbone, tmp_path_factory) -> tuple[Path, Path]:
    """A VD-VAE trained two steps (its training.json records tail 0.25) and an untrained one (no split)."""
    base = tmp_path_factory.mktemp("vd")
    train_vd_vae({unified_astribot: "head"}, tiny_ckpt, backbone, base / "trained", options=VDTrainOptions(
        steps=2, batch_size=4, holdout=Holdout("tail", 0.25), device="cpu", augment=False))
    act_vae, sha = load_act_vae(tiny_ckpt)
    frozen = load_backbone(backbone)
    torch.manual_seed(1)
    untrained = VDVAE.from_act_vae(act_vae, _config("small", (frozen.num_patches, frozen.hidden_size), None), sha256=sha)
    save_model(untrained, base / "untrained")
    return base / "trained", base / "untrained"


def _direct(root: Path, act_ckpt: Path, vd_ckpt: Path, backbone: Path, holdout: Holdout | None):  # noqa: ANN202
    """Pseudo tokens, Act-VAE tokens (through tokenizer_input, one chunk at a time), states, masks and the
    ground-truth chunks of the held-out pairs, computed without the evaluation module."""
    act_vae, _ = load_act_vae(act_ckpt)
    model, _ = load_model(VDVAE, vd_ckpt, kind="a VD-VAE")
    frozen = load_backbone(backbone)
    meta = DatasetMetadata.load(root)
    stats = load_norm_stats(root, "openclap")
    videos, keys = episode_videos(meta, "head"), episode_keys(meta)
    pseudo, target, states, masks, truths = [], [], [], [], []
    for arrays in iter_episode_arrays(root):
        frames = len(arrays.state)
        held = set(range(frames)) if holdout is None else set(holdout.starts(keys[arrays.episode_index], frames, True).tolist())
        for pair in iter_frame_pairs(videos[arrays.episode_index], 32):
            if pair.padded or pair.t not in held:
                continue
            patches = frozen(np.stack([pair.frame_t, pair.frame_gap])).unsqueeze(0)
            pseudo.append(model.pseudo_tokens(patches)[0].long().numpy())
            inp = tokenizer_input(arrays.state, arrays.action, arrays.arm_mask, pair.t, stats)
            codes = act_vae.tokenize_dual(torch.from_numpy(inp.action)[None], torch.from_numpy(inp.arm_mask)[None])
            target.append(codes[0].long().numpy())
            states.append(arrays.state[pair.t])
            masks.append(arrays.arm_mask[pair.t])
            truths.append(chunk_commands(arrays.action, pair.t)[0])
    return act_vae, stats, *(np.stack(x) for x in (pseudo, target, states, masks, truths))


def test_the_report_matches_an_independent_computation(unified_astribot, tiny_ckpt, backbone, vd_ckpts):
    trained, _ = vd_ckpts
    report = evaluate_vd_vae([trained], backbone, tiny_ckpt, {unified_astribot: "head"}, HOLDOUT)
    act_vae, stats, pseudo, target, states, masks, truths = _direct(unified_astribot, tiny_ckpt, trained, backbone, HOLDOUT)
    assert report.pairs == len(target) > 20 and report.token_source[str(unified_astribot)] == "computed"
    nq = report.num_queries
    active = np.repeat(masks != 0, nq, axis=1)
    (score,) = report.models
    assert score.exact_match == pytest.approx(((pseudo == target) & active).sum() / active.sum())
    slot = 5
    assert score.per_slot_match[slot] == pytest.approx((pseudo[:, slot] == target[:, slot]).mean())

    mode = [np.bincount(target[:, s], minlength=report.codebook_size).argmax() for s in range(2 * nq)]
    assert report.constant_codes == [int(m) for m in mode]
    assert report.constant_match == pytest.approx((target == np.array(mode)[None]).mean())
    assert report.constant_per_slot[slot] == pytest.approx((target[:, slot] == mode[slot]).mean())
    assert score.beats_constant == (score.exact_match > report.constant_match)

    decoded = detokenize(act_vae, pseudo, states, stats, masks)
    assert score.decoded_mse["left_x"] == pytest.approx(((decoded[..., 0] - truths[..., 0]) ** 2).mean())
    own = detokenize(act_vae, target, states, stats, masks)
    assert report.act_vae_decoded_mse["right_gripper"] == pytest.approx(((own[..., 13] - truths[..., 13]) ** 2).mean())
    json.dumps(report.to_dict())


def test_the_default_split_is_the_checkpoints_own(unified_astribot, tiny_ckpt, backbone, vd_ckpts, tmp_path):
    trained, untrained = vd_ckpts
    base = ["eval", "vd-vae", str(unified_astribot), "--backbone", str(backbone), "--act-vae", str(tiny_ckpt),
            "--device", "cpu", "--json"]
    result = runner.invoke(app, [*base, "--ckpt", str(untrained)])  # no training.json: every unpadded pair
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["holdout"] is None and report["pairs"] == (40 - 32) + (52 - 32) + (45 - 32)
    result = runner.invoke(app, [*base, "--ckpt", str(trained)])  # its tail 0.25 holds no pair 32 frames apart
    assert result.exit_code != 0 and "no held-out frame pairs" in result.output
    other, _ = load_model(VDVAE, untrained, kind="a VD-VAE")
    other.config = dataclasses.replace(other.config, act_vae_sha256="0" * 64)
    other._hub_mixin_config = other.config
    save_model(other, tmp_path / "other")
    with pytest.raises(ClapDataError, match="codebook of Act-VAE 0000"):
        evaluate_vd_vae([tmp_path / "other"], backbone, tiny_ckpt, {unified_astribot: "head"}, None)


def test_compare_scores_two_checkpoints_on_the_same_pairs(unified_astribot, tiny_ckpt, backbone, vd_ckpts):
    trained, untrained = vd_ckpts
    args = ["eval", "vd-vae", str(unified_astribot), "--ckpt", str(trained), "--compare", str(untrained), "--backbone",
            str(backbone), "--act-vae", str(tiny_ckpt), "--holdout", "tail", "--holdout-fraction", "0.9", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [Path(m["ckpt"]).name for m in report["models"]] == ["trained", "untrained"] and report["pairs"] > 20
    _, _, pseudo, target, _, masks, _ = _direct(unified_astribot, tiny_ckpt, untrained, backbone, HOLDOUT)
    active = np.repeat(masks != 0, report["num_queries"], axis=1)
    assert report["models"][1]["exact_match"] == pytest.approx(((pseudo == target) & active).sum() / active.sum())
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained (" in result.output and "untrained (" in result.output and "constant code" in result.output
    assert "the constant-code baseline" in result.output


def _unchanged_share(root: Path, vd_ckpt: Path, backbone: Path, change: str, other: Path | None = None) -> float:
    """Share of active codes unchanged between each unpadded pair and the same pair under ``change`` (or, for the
    background swap, the same episode's pair in ``other``), scored one pair at a time without the evaluation."""
    model, _ = load_model(VDVAE, vd_ckpt, kind="a VD-VAE")
    frozen = load_backbone(backbone)
    meta = DatasetMetadata.load(root)
    videos = episode_videos(meta, "head")
    swapped = episode_videos(DatasetMetadata.load(other), "head") if other else {}
    same = active = 0
    for arrays in iter_episode_arrays(root):
        episode = arrays.episode_index
        twins = iter_frame_pairs(swapped[episode], 32) if other else None
        for pair in iter_frame_pairs(videos[episode], 32):
            twin = next(twins) if twins else None
            if pair.padded:
                continue
            clean = np.stack([pair.frame_t, pair.frame_gap])[None]
            changed = np.stack([twin.frame_t, twin.frame_gap])[None] if twin else PERTURBATIONS[change](clean, np.array([pair.t]))
            codes = [model.pseudo_tokens(frozen(x[0]).unsqueeze(0))[0].numpy() for x in (clean, changed)]
            slots = np.repeat(arrays.arm_mask[pair.t] != 0, len(codes[0]) // 2)
            same += int(((codes[0] == codes[1]) & slots).sum())
            active += int(slots.sum())
    return same / active


def test_robustness_is_the_share_of_codes_unchanged_under_each_change(unified_astribot, tiny_ckpt, backbone, vd_ckpts):
    _, untrained = vd_ckpts
    report = evaluate_vd_vae([untrained], backbone, tiny_ckpt, {unified_astribot: "head"}, None)
    robustness = report.models[0].robustness
    assert list(robustness) == ["brightness_contrast", "grayscale", "noise"]
    for change in ("grayscale", "noise"):
        assert robustness[change] == pytest.approx(_unchanged_share(unified_astribot, untrained, backbone, change))
    assert any(value < 1.0 for value in robustness.values())  # the changes do reach the codes of a random model
    quiet = evaluate_vd_vae([untrained], backbone, tiny_ckpt, {unified_astribot: "head"}, None, robustness=False)
    assert quiet.models[0].robustness == {} and quiet.models[0].exact_match == report.models[0].exact_match


@pytest.fixture(scope="module")
def rendered_variants(tmp_path_factory, ray_local) -> tuple[Path, Path]:
    """Two rendered robot episodes under two appearances, ingested: the same motions on two backgrounds."""
    base = tmp_path_factory.mktemp("rendered")
    roots = write_rendered_robot(base / "robot", episodes=2, lengths=(40, 44), variants=2)
    outs = []
    for root in roots:
        ingest(AstribotSource(root), IngestRequest(out=base / root.name))
        outs.append(base / root.name)
    return outs[0], outs[1]


def test_background_swap_scores_the_same_motion_on_another_background(rendered_variants, tiny_ckpt, backbone,
                                                                      vd_ckpts, tokenized_corpus):
    _, untrained = vd_ckpts
    neutral, other = rendered_variants
    args = ["eval", "vd-vae", str(neutral), "--ckpt", str(untrained), "--backbone", str(backbone), "--act-vae",
            str(tiny_ckpt), "--device", "cpu", "--no-robustness"]
    result = runner.invoke(app, [*args, "--background-swap", f"{neutral.name}={other}", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["background_swaps"] == {str(neutral): str(other)}
    swap = report["models"][0]["robustness"]["background_swap"]
    assert swap == pytest.approx(_unchanged_share(neutral, untrained, backbone, "", other))
    itself = evaluate_vd_vae([untrained], backbone, tiny_ckpt, {neutral: "head"}, None, robustness=False,
                             background_swaps={neutral: neutral})
    assert itself.models[0].robustness == {"background_swap": 1.0}  # the very same frames: nothing changes
    result = runner.invoke(app, [*args, "--background-swap", f"{neutral}={tokenized_corpus.human}"])
    assert result.exit_code != 0 and f"{tokenized_corpus.human} has no episode '000000'" in result.output


def test_stored_action_tokens_are_the_reference_when_they_are_this_act_vaes(tokenized_corpus, unified_astribot,
                                                                            tiny_ckpt, backbone, vd_ckpts):
    _, untrained = vd_ckpts
    stored = evaluate_vd_vae([untrained], backbone, tiny_ckpt, {tokenized_corpus.robot: "head"}, None, robustness=False)
    computed = evaluate_vd_vae([untrained], backbone, tiny_ckpt, {unified_astribot: "head"}, None, robustness=False)
    assert stored.token_source == {str(tokenized_corpus.robot): "stored"}
    assert computed.token_source == {str(unified_astribot): "computed"}
    assert stored.constant_codes == computed.constant_codes and stored.pairs == computed.pairs
    assert stored.models[0].exact_match == computed.models[0].exact_match
    assert stored.act_vae_decoded_mse == computed.act_vae_decoded_mse
