"""`clap-data import act-vae`: released weights in, a checkpoint folder out, without running the file's code;
and the imported folder through tokenize, detokenize and eval (which has no training split to hold out)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import hashlib
import json
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.importing import import_act_vae
from clap_data.actions import tokenizer_input
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.models import ActVAE, ActVAEConfig, checkpoint_sha256
from clap_data.norm_stats import load_norm_stats
from tests.conftest import SHARED

runner = CliRunner()
REFERENCE_STATE_DICT = SHARED / "docs" / "reference" / "openclap_act_vae_state_dict.txt"
RELEASE_PARAMETERS = 71_941_767
# A variant release, small enough for a CPU: every size the importer reads off the tensors differs from the release's.
VARIANT = dataclasses.replace(
    ActVAEConfig.release(), num_queries=4, codebook_size=64, code_dim=32, encoder_layers=5, decoder_layers=3
)
Tensors = dict[str, torch.Tensor]


def release_name(ours: str) -> str:
    """The release's Lightning key of one of our tensors (spelt out here, not taken from the importer)."""
    return "clap." + ("vq_t.codebook.weight" if ours == "quantizer.embedding.weight" else ours)


def ours_name(release: str) -> str:
    name = release.removeprefix("clap.")
    return "quantizer.embedding.weight" if name == "vq_t.codebook.weight" else name


def reference_tensors() -> Tensors:
    """Every tensor of the release's reference list, under its Lightning name, with random values."""
    if not REFERENCE_STATE_DICT.is_file():
        pytest.skip(f"{REFERENCE_STATE_DICT} is not in this checkout (../shared is absent)")
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for line in REFERENCE_STATE_DICT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            tensors["clap." + name] = torch.randn(ast.literal_eval(shape), generator=g)
    return tensors


@functools.cache
def _variant_model() -> ActVAE:
    torch.manual_seed(0)
    model = ActVAE(VARIANT)
    with torch.no_grad():
        latents = model.encode_latents(0.5 * torch.randn(VARIANT.codebook_size, 32, 7))[:, 0]
        model.quantizer.embedding.weight.copy_(latents)
    return model


def variant_tensors() -> Tensors:
    """A VARIANT network under the release's names (a fresh dict of the same tensors each call): its own
    initialisation, the codebook drawn from its latents so that the nearest codes vary from chunk to chunk."""
    return {release_name(k): v for k, v in _variant_model().state_dict().items()}


SETSTATE_CALLS: list[object] = []


@dataclasses.dataclass
class ReleaseHyperParameters:
    """What a Lightning checkpoint's hyper_parameters hold: restoring it runs this module's code (recorded)."""

    lr: float = 2e-5
    chunk_size: int = 32

    def __setstate__(self, state: dict) -> None:
        SETSTATE_CALLS.append(state)
        self.__dict__.update(state)


def write_lightning(path: Path, state_dict: Tensors) -> Path:
    """A ``.ckpt`` laid out like Lightning's, with objects that ``weights_only=True`` refuses."""
    torch.save({
        "epoch": 41, "global_step": 120_000, "pytorch-lightning_version": "2.1.0",
        "state_dict": OrderedDict(state_dict),
        "hyper_parameters": {"config": ReleaseHyperParameters(), "args": argparse.Namespace(batch_size=256)},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {"best_model_score": torch.tensor(0.01)}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-5, "params": [0, 1]}]}],
    }, path)
    return path


class RunsCode:
    """Pickles as a call of ``function(*args)``: what a hostile (or merely odd) file asks the loader to run."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def imported(result) -> dict:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_lightning_checkpoint_of_the_release_imports_tensor_for_tensor(tmp_path):
    source = reference_tensors()
    source["clap.vq_t.usage"] = torch.zeros(512)  # usage counters: buffers of a known module, not weights
    source["clap.vq_t.code_count"] = torch.ones(512, dtype=torch.int64)
    ckpt = write_lightning(tmp_path / "clap-s1-l32.ckpt", source)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)  # so the restricted reader is what reads it
    SETSTATE_CALLS.clear()
    out = tmp_path / "openclap_act_vae"
    report = imported(runner.invoke(app, ["import", "act-vae", "--from", "openclap", str(ckpt), "--out", str(out), "--json"]))
    assert SETSTATE_CALLS == []  # the file's class was never restored
    assert report["source"] == {
        "path": str(ckpt.resolve()), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "format": "lightning-checkpoint", "loader": "restricted-unpickler",
    }
    assert report["parameters"] == RELEASE_PARAMETERS and report["stats"] == "openclap"
    assert report["skipped_buffers"] == ["clap.vq_t.usage", "clap.vq_t.code_count"]
    assert "skipped 2 buffer(s) of known modules, not weights: clap.vq_t.usage, clap.vq_t.code_count" in report["notices"]
    assert any("argparse.Namespace" in n and "ReleaseHyperParameters" in n for n in report["notices"])
    assert report["sha256"] == checkpoint_sha256(out)
    assert json.loads((out / "import.json").read_text()) == {k: v for k, v in report.items() if k not in ("out", "config")}
    written = load_file(out / "model.safetensors")
    weights = {name: t for name, t in source.items() if name not in report["skipped_buffers"]}
    assert written.keys() == {ours_name(name) for name in weights}
    for name, tensor in weights.items():
        assert torch.equal(written[ours_name(name)], tensor), name
    model, sha = load_act_vae(out)
    assert sha == report["sha256"] and model.config == ActVAEConfig.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clap-s1-l32.ckpt", "openclap_act_vae"]  # no temp left


def test_bare_state_dicts_and_safetensors_import_to_the_same_checkpoint(tmp_path):
    source = variant_tensors()
    bare = {ours_name(k): v for k, v in source.items() if k != "clap.vq_t.codebook.weight"}
    bare["vq_t.codebook.weight"] = source["clap.vq_t.codebook.weight"]  # no clap. prefix: release names still
    torch.save(source, tmp_path / "prefixed.pt")
    torch.save(bare, tmp_path / "bare.pt")
    save_file(bare, tmp_path / "bare.safetensors")
    reports = [import_act_vae(tmp_path / name, tmp_path / f"out-{name}") for name in ("prefixed.pt", "bare.pt", "bare.safetensors")]
    assert [(r.source["format"], r.source["loader"]) for r in reports] == [
        ("state-dict", "weights-only"), ("state-dict", "weights-only"), ("safetensors", "safetensors"),
    ]
    assert len({r.sha256 for r in reports}) == 1  # the same weights, the same checkpoint bytes
    assert reports[0].config == VARIANT  # Nq, K, code dimension and both layer counts read off the shapes
    model, _ = load_act_vae(reports[2].out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, source[release_name(name)]), name


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (lambda t: t.update({"clap.action_vae.skel_embedding.weight": torch.zeros(512, 6)}),
         "1 mis-shaped (clap.action_vae.skel_embedding.weight: got (512, 6) vs expected (512, 7))"),
        (lambda t: t.pop("clap.action_vae.final_layer.bias"), "1 missing (clap.action_vae.final_layer.bias)"),
        (lambda t: t.update({"clap.action_vae.extra_head.weight": torch.zeros(3)}),
         "1 unexpected (clap.action_vae.extra_head.weight)"),
        (lambda t: t.update({"clap.step": 3}), "1 unexpected (clap.step)"),
        (lambda t: [t.pop(k) for k in [k for k in t if ".encoder.middle_block." in k]],
         "12 missing (clap.action_vae.encoder.middle_block.self_attn.in_proj_weight, "),
    ],
    ids=["wrong-shape", "missing", "extra", "not-a-tensor", "many-missing"],
)
def test_tensors_that_do_not_fit_are_refused_by_name(tmp_path, change, sentence):
    source = variant_tensors()
    change(source)
    ckpt = write_lightning(tmp_path / "release.ckpt", source)
    result = runner.invoke(app, ["import", "act-vae", "--from", "openclap", str(ckpt), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"{ckpt} does not fit the OpenCLAP Act-VAE: {sentence}" in message
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["release.ckpt"]
    if sentence.startswith("12 missing"):
        assert "and 7 more" in message  # five named, the rest counted


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": variant_tensors(), "hyper_parameters": RunsCode(os.system, f"touch {marker}")}, ckpt)
    result = runner.invoke(app, ["import", "act-vae", "--from", "openclap", str(ckpt), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "asks for posix.system while loading" in message and "--trust-pickle" in message
    assert "executes the file's code" in message
    assert not marker.exists() and not (tmp_path / "out").exists()
    # what --trust-pickle is for: a file the restricted reader refuses, loaded by full pickle (harmless code here)
    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": variant_tensors(), "hyper_parameters": {"cwd": RunsCode(os.getcwd)}}, odd)
    with pytest.raises(ClapDataError, match="asks for posix.getcwd while loading"):
        import_act_vae(odd, tmp_path / "odd")
    trusted = import_act_vae(odd, tmp_path / "odd", trust_pickle=True)
    assert trusted.source["loader"] == "trusted-pickle"
    assert "unpickled in full (--trust-pickle): the file's code ran" in trusted.notices


def test_files_that_hold_no_checkpoint_are_refused(tmp_path):
    junk = tmp_path / "notes.ckpt"
    junk.write_bytes(b"not weights at all")
    with pytest.raises(ClapDataError, match="is neither a PyTorch checkpoint \\(zip archive or pickle\\) nor a safetensors"):
        import_act_vae(junk, tmp_path / "out")
    script = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)  # torch.load(weights_only=False) would run it
    with pytest.raises(ClapDataError, match="is a TorchScript archive \\(a program\\), not a checkpoint of weights"):
        import_act_vae(script, tmp_path / "out")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(script.read_bytes()[:300])
    with pytest.raises(ClapDataError, match="cannot be read as a PyTorch checkpoint: "):
        import_act_vae(truncated, tmp_path / "out")
    scalars = tmp_path / "scalars.pt"
    torch.save({"epoch": 3}, scalars)
    with pytest.raises(ClapDataError, match="holds neither a Lightning checkpoint .* nor a state dict of tensors"):
        import_act_vae(scalars, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_a_checkpoint_and_nothing_else(tmp_path):
    ckpt = write_lightning(tmp_path / "release.ckpt", variant_tensors())
    out = tmp_path / "ckpt"
    first = import_act_vae(ckpt, out)
    (out / "training.json").write_text("{}")  # as if a run had been trained here before
    with pytest.raises(ClapDataError, match="already exists; choose another --out or pass --overwrite"):
        import_act_vae(ckpt, out)
    again = import_act_vae(ckpt, out, overwrite=True)
    assert again.sha256 == first.sha256 == checkpoint_sha256(out)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.json", "import.json", "model.safetensors"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep")
    with pytest.raises(ClapDataError, match="not a checkpoint's \\(mine.txt\\); refusing to overwrite it"):
        import_act_vae(ckpt, notes, overwrite=True)
    assert (notes / "mine.txt").read_text() == "keep"


@pytest.fixture(scope="module")
def variant_import(tmp_path_factory) -> Path:
    """The VARIANT release imported from a Lightning checkpoint. Read only."""
    folder = tmp_path_factory.mktemp("import")
    return import_act_vae(write_lightning(folder / "release.ckpt", variant_tensors()), folder / "ckpt").out


def every_chunk(root: Path) -> torch.Tensor:
    """The dual-arm chunk of every frame, as the tokenizer sees it with the OpenCLAP statistics ``[F, 32, 14]``."""
    stats = load_norm_stats(root, "openclap")
    return torch.tensor(np.stack([
        tokenizer_input(e.state, e.action, e.arm_mask, t, stats).action
        for e in iter_episode_arrays(root) for t in range(len(e.state))
    ]), dtype=torch.float32)


def test_tokenize_and_detokenize_read_an_import(unified_astribot, ray_local, variant_import, tmp_path):
    dataset = tmp_path / "astribot"
    shutil.copytree(unified_astribot, dataset)
    result = runner.invoke(app, ["tokenize", "act-vae", str(dataset), "--ckpt", str(variant_import), "--stats", "openclap", "--json"])
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.output)
    model, sha = load_act_vae(variant_import)
    assert report["frames"] == 137 and report["identity"]["checkpoint_sha256"] == sha
    assert report["identity"]["num_queries"] == 4 and report["identity"]["codebook_size"] == 64
    expected = model.tokenize_dual(every_chunk(dataset)).numpy()
    assert len(np.unique(expected)) > 8  # a meaningful comparison: the codes vary
    files = sorted(dataset.glob("data/**/*.parquet"))
    table = pa.concat_tables(pq.read_table(f, columns=["index", "action_tokens"]) for f in files).sort_by("index")
    assert np.array(table["action_tokens"].to_pylist()).tolist() == expected.tolist()
    decoded = runner.invoke(app, ["detokenize", str(dataset), "--ckpt", str(variant_import), "--episode", "1",
                                  "--frame", "10", "--json"])
    assert decoded.exit_code == 0, decoded.output
    frame = json.loads(decoded.output)
    assert frame["tokens"] == expected[40 + 10].tolist()  # episode 1 starts after episode 0's 40 frames
    normalised = model.detokenize_dual(torch.tensor([frame["tokens"]])).double().numpy()[0]
    assert np.array(frame["action"]).shape == (32, 14) and np.isfinite(normalised).all()


def test_eval_of_an_import_scores_every_chunk(unified_astribot, variant_import):
    result = runner.invoke(app, ["eval", "act-vae", str(unified_astribot), "--ckpt", str(variant_import), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "no training split: scoring every chunk" in result.output
    assert "274 one-arm chunks, statistics openclap" in result.output  # 137 frames × 2 arms
    report = json.loads(runner.invoke(app, ["eval", "act-vae", str(unified_astribot), "--ckpt", str(variant_import),
                                            "--device", "cpu", "--json"]).output)
    assert report["holdout"] is None and report["chunks"] == 274
    model, _ = load_act_vae(variant_import)
    chunks = every_chunk(unified_astribot)
    recon = model.detokenize_dual(model.tokenize_dual(chunks))
    assert report["normalised_mse"] == pytest.approx(float(torch.mean((recon - chunks) ** 2)), rel=1e-5)
    assert report["notice"] == "no training split: scoring every chunk"
    held = runner.invoke(app, ["eval", "act-vae", str(unified_astribot), "--ckpt", str(variant_import), "--device", "cpu",
                               "--holdout", "tail", "--holdout-fraction", "0.25", "--json"])
    assert json.loads(held.output)["chunks"] == 2 * ((40 - 30) + (52 - 39) + (45 - 33))
    alone = runner.invoke(app, ["eval", "act-vae", str(unified_astribot), "--ckpt", str(variant_import),
                                "--holdout-fraction", "0.25"])
    assert alone.exit_code == 2 and "has no training split: name one with --holdout" in " ".join(alone.output.split())
