"""`evaluate_act_vae` on a tiny trained checkpoint, against numbers computed here by other routes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.chunk_pool import ChunkPool
from clap_data.act_vae.evaluation import ErrorTotals, evaluate_act_vae, psnr_db
from clap_data.actions import NormStats
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.models import checkpoint_sha256, code_usage, perplexity
from clap_data.reference import openclap_stats_table
from clap_data.schemas import POSE14_NAMES
from clap_data.splits import Holdout
from tests.conftest import HOLDOUT

POSE = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]


@pytest.fixture
def dataset(unified_astribot) -> Path:
    return unified_astribot


@pytest.fixture
def ckpt(tiny_ckpt) -> Path:
    return tiny_ckpt


def held_out_reconstructions(ckpt: Path, dataset: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """Targets, reconstructions (through the model's own forward pass), arms and code indices."""
    model, _ = load_act_vae(ckpt)
    pool = ChunkPool([dataset], "openclap", HOLDOUT, held_out=True)
    targets, recons, arms, indices = [], [], [], []
    with torch.no_grad():
        for _, chunks, batch_arms in pool.batches(1000):
            out = model(chunks)
            targets.append(chunks.double().numpy())
            recons.append(out["recon"].double().numpy())
            arms.append(batch_arms)
            indices.append(out["indices"])
    return np.concatenate(targets), np.concatenate(recons), np.concatenate(arms), torch.cat(indices)


def test_psnr_of_the_papers_chosen_point():
    assert psnr_db(0.0004) == pytest.approx(40.0)
    assert psnr_db(0.0) == math.inf


def test_report_matches_an_independent_computation(ckpt, dataset):
    report = evaluate_act_vae(ckpt, [dataset], holdout=HOLDOUT, batch_size=7, device="cpu")
    episodes = list(iter_episode_arrays(dataset))
    assert [len(e.state) for e in episodes] == [40, 52, 45]
    assert all((e.arm_mask == 1).all() for e in episodes)
    # tail 0.25: chunks start at frames floor(0.75·n)..n-1 of each episode, one per arm
    assert report.chunks == 2 * ((40 - 30) + (52 - 39) + (45 - 33)) == 70

    target, recon, arms, indices = held_out_reconstructions(ckpt, dataset)
    assert len(target) == report.chunks
    squared = np.square(recon - target)
    assert report.normalised_mse == pytest.approx(squared.mean(), rel=1e-5)
    assert report.psnr_db == pytest.approx(20 * math.log10(2 / math.sqrt(squared.mean())), rel=1e-5)

    q = openclap_stats_table()["S1-stationary"]["action"]
    span = np.array(q["q99"]) - np.array(q["q01"])
    for name_index, name in enumerate(POSE14_NAMES):
        arm, dof = divmod(name_index, 7)
        normalised = squared[arms == arm][..., dof].mean()
        scale = (span[name_index] / 2) ** 2 if name_index in POSE else 1.0
        assert report.per_dof_mse[name] == pytest.approx(normalised * scale, rel=1e-4), name

    assert report.code_usage == pytest.approx(code_usage(indices, 16))
    assert report.perplexity == pytest.approx(perplexity(indices, 16), rel=1e-9)
    assert report.dead_codes + len(torch.unique(indices)) == report.codebook_size == 16
    assert report.num_queries == 4

    whole = evaluate_act_vae(ckpt, [dataset], holdout=HOLDOUT, batch_size=512, device="cpu")
    assert whole.normalised_mse == pytest.approx(report.normalised_mse, rel=1e-6)
    assert whole.perplexity == report.perplexity


def test_report_dict_is_json_with_identity(ckpt, dataset):
    report = evaluate_act_vae(ckpt, [dataset], holdout=HOLDOUT, device="cpu").to_dict()
    again = json.loads(json.dumps(report, allow_nan=False))
    assert list(again["per_dof_mse"]) == list(POSE14_NAMES)
    assert again["sha256"] == checkpoint_sha256(ckpt)
    assert again["holdout"] == {"mode": "tail", "fraction": 0.25, "key": "provenance"}
    assert again["stats_ids"] == {str(dataset): "openclap:S1-stationary"}
    assert again["device"] == "cpu"


def test_per_dof_errors_by_hand():
    """Denormalising scales a pose error by span/2 and leaves a gripper's alone; an arm never seen is None."""
    q01, q99 = np.full(14, -1.0), np.full(14, 3.0)  # span 4: a normalised error of 0.5 is 1.0 in units
    stats = NormStats("test", q01, q99, q01, q99, "test")
    target = np.zeros((2, 32, 7))
    recon = np.full((2, 32, 7), 0.5)
    totals = ErrorTotals(codebook_size=4)
    totals.add(target, recon, np.array([0, 0]), stats)
    per_dof = totals.per_dof_mse()
    assert [per_dof[f"left_{d}"] for d in ("x", "y", "z", "roll", "pitch", "yaw")] == [1.0] * 6
    assert per_dof["left_gripper"] == 0.25
    assert all(per_dof[name] is None for name in POSE14_NAMES[7:])
    assert totals.normalised_mse == 0.25


def test_errors_are_sentences(ckpt, dataset, tmp_path):
    with pytest.raises(ClapDataError, match="not an Act-VAE checkpoint"):
        evaluate_act_vae(tmp_path, [dataset], holdout=HOLDOUT, device="cpu")
    with pytest.raises(ClapDataError, match="no held-out chunks"):
        evaluate_act_vae(ckpt, [dataset], holdout=Holdout("tail", 0.0), device="cpu")
    with pytest.raises(ClapDataError, match="no datasets"):
        evaluate_act_vae(ckpt, [], device="cpu")
    with pytest.raises(ClapDataError, match="batch size"):
        evaluate_act_vae(ckpt, [dataset], batch_size=0, device="cpu")
    human = tmp_path / "human"
    shutil.copytree(dataset, human)
    info = json.loads((human / "meta/info.json").read_text())
    (human / "meta/info.json").write_text(json.dumps(dict(info, robot_type="human")))
    with pytest.raises(ClapDataError, match="human video"):
        evaluate_act_vae(ckpt, [human], holdout=HOLDOUT, device="cpu")


def test_a_checkpoint_of_the_old_episode_index_split_names_its_split(unified_astribot, tiny_ckpt, tmp_path):
    """Its held-out episodes were drawn by episode index, which this version no longer draws: scoring
    the new split silently could include its training data, so eval asks for --holdout."""
    from typer.testing import CliRunner

    from clap_data.act_vae.checkpoint import TRAINING_META_NAME
    from clap_data.cli import app

    old = tmp_path / "old"
    shutil.copytree(tiny_ckpt, old)
    meta = json.loads((old / TRAINING_META_NAME).read_text())
    meta["run"]["holdout"] = {"mode": "episodes", "fraction": 0.1}
    (old / TRAINING_META_NAME).write_text(json.dumps(meta))
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "act-vae", str(unified_astribot), "--ckpt", str(old), "--device", "cpu"])
    assert result.exit_code == 1 and "episode-index split of an older clap-data" in result.output
    result = runner.invoke(app, ["eval", "act-vae", str(unified_astribot), "--ckpt", str(old), "--device", "cpu",
                                 "--holdout", "tail", "--json"])
    assert result.exit_code == 0, result.output
