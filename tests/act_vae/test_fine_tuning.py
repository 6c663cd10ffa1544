"""`clap-data train act-vae --init CKPT`: the model and weights come from CKPT, the init is part of the run's
identity, a resumed fine-tune restores its own state, and options describing another model are refused."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.fine_tuning import init_config
from clap_data.act_vae.importing import import_act_vae
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE, ActVAEConfig, checkpoint_sha256, save_model
from tests.act_vae.test_import import VARIANT, variant_tensors, write_lightning
from tests.conftest import TINY

runner = CliRunner()
SPLIT = ["--batch-size", "16", "--holdout", "tail", "--holdout-fraction", "0.25", "--device", "cpu"]


def fine_tune(dataset: Path, out: Path, init: Path, *options: str) -> dict:
    result = runner.invoke(app, ["train", "act-vae", "--data", str(dataset), "--out", str(out), "--init", str(init),
                                 *SPLIT, *options, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def refusal(dataset: Path, out: Path, init: Path, *options: str) -> str:
    result = runner.invoke(app, ["train", "act-vae", "--data", str(dataset), "--out", str(out), "--init", str(init),
                                 *SPLIT, *options])
    assert result.exit_code == 1, result.output
    return " ".join(result.output.split())


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_a_fine_tune_starts_from_the_init_weights(unified_astribot, tiny_ckpt, tmp_path):
    out = tmp_path / "tuned"
    report = fine_tune(unified_astribot, out, tiny_ckpt, "--steps", "5", "--lr", "1e-12")  # 5 < the reseed interval
    assert report["steps"] == 5 and report["resumed_from"] == 0
    start = load_file(tiny_ckpt / "model.safetensors")
    tuned = load_file(out / "model.safetensors")
    torch.manual_seed(0)
    fresh = ActVAE(TINY).state_dict()
    assert max_difference(tuned, start) < 1e-8 < 1e-2 < max_difference(tuned, fresh)
    meta = json.loads((out / "training.json").read_text())
    assert meta["run"]["init_sha256"] == checkpoint_sha256(tiny_ckpt) and meta["init_ckpt"] == str(tiny_ckpt.resolve())
    assert meta["run"]["config"] == TINY.to_dict() and meta["run"]["preset"] is None  # TINY is no preset's
    assert "the model is no preset's, so it has no default learning rate; pass --lr" in refusal(
        unified_astribot, tmp_path / "no-lr", tiny_ckpt, "--steps", "2"
    )


def test_a_resumed_fine_tune_restores_its_own_state(unified_astribot, tiny_ckpt, tmp_path):
    straight = fine_tune(unified_astribot, tmp_path / "straight", tiny_ckpt, "--steps", "8", "--lr", "1e-3")
    fine_tune(unified_astribot, tmp_path / "resumed", tiny_ckpt, "--steps", "4", "--lr", "1e-3")
    resumed = fine_tune(unified_astribot, tmp_path / "resumed", tiny_ckpt, "--steps", "8", "--lr", "1e-3")
    assert resumed["resumed_from"] == 4 and resumed["sha256"] == straight["sha256"]
    assert resumed["sha256"] != checkpoint_sha256(tiny_ckpt)  # it did train


def test_another_init_or_another_model_is_refused(unified_astribot, tiny_ckpt, tmp_path):
    out = tmp_path / "tuned"
    fine_tune(unified_astribot, out, tiny_ckpt, "--steps", "2", "--lr", "1e-3")
    other = tmp_path / "other"
    model, _ = load_act_vae(tiny_ckpt)
    with torch.no_grad():
        model.quantizer.embedding.weight.mul_(2)
    save_model(model, other)
    assert "holds a run with other settings (init_sha256 differ)" in refusal(
        unified_astribot, out, other, "--steps", "4", "--lr", "1e-3"
    )
    assert fine_tune(unified_astribot, out, other, "--steps", "2", "--lr", "1e-3", "--overwrite")["resumed_from"] == 0
    assert f"--init {out} is the --out folder" in refusal(unified_astribot, out, out, "--steps", "2", "--lr", "1e-3")
    message = refusal(unified_astribot, tmp_path / "x", tiny_ckpt, "--num-queries", "8", "--lr", "1e-3")
    assert f"--init {tiny_ckpt} holds another model than --num-queries/--codebook-size describes (num_queries 4 there, " \
           "8 asked); leave --num-queries/--codebook-size out" in message
    message = refusal(unified_astribot, tmp_path / "x", tiny_ckpt, "--preset", "release")
    assert "holds another model than --preset release describes (num_queries 4 there, 8 asked, codebook_size 16 " \
           "there, 512 asked, " in message and " more); leave --preset release out" in message
    assert "is not an Act-VAE checkpoint: config.json missing" in refusal(unified_astribot, tmp_path / "x", tmp_path / "none")


def test_the_learning_rate_follows_the_preset_the_init_is(tmp_path):
    def folder(config: ActVAEConfig) -> Path:
        path = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config.to_dict()))
        return path

    release = ActVAEConfig.release()
    assert init_config(folder(release)) == (release, "release")
    bigger = dataclasses.replace(release, num_queries=16, codebook_size=256)  # a preset up to Nq and K
    assert init_config(folder(bigger)) == (bigger, "release")
    assert init_config(folder(bigger), "release", num_queries=16, codebook_size=256) == (bigger, "release")
    assert init_config(folder(VARIANT)) == (VARIANT, None)
    with pytest.raises(ClapDataError, match="holds another model than --preset small describes"):
        init_config(folder(release), "small")


def test_an_import_fine_tunes(unified_astribot, tmp_path):
    imported = import_act_vae(write_lightning(tmp_path / "release.ckpt", variant_tensors()), tmp_path / "import")
    out = tmp_path / "tuned"
    fine_tune(unified_astribot, out, imported.out, "--steps", "2", "--lr", "1e-4", "--batch-size", "4")
    model, _ = load_act_vae(out)
    assert model.config == VARIANT
    assert 0 < max_difference(load_file(out / "model.safetensors"), load_file(imported.out / "model.safetensors")) < 0.1
    shutil.rmtree(imported.out)  # the init is part of the run's identity: without it a rerun is refused by name
    assert f"--init {imported.out} is not an Act-VAE checkpoint" in refusal(unified_astribot, out, imported.out, "--steps", "2")
