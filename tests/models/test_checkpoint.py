"""A model checkpoint folder: save/load round trip, the sha256 identity, strict loading, one-sentence errors,
and config.json files written before ``architecture`` existed loading as today's network."""

import json

import pytest
import torch

from clap_data.errors import ClapDataError
from clap_data.models import ActVAE, ActVAEConfig, checkpoint_sha256, load_model, save_model
from clap_data.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME


def tiny(**overrides) -> ActVAEConfig:
    return ActVAEConfig(**(dict(num_queries=4, codebook_size=16, code_dim=8, width=32, encoder_layers=1,
                                decoder_layers=1, heads=4) | overrides))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = ActVAE(ActVAEConfig.small()).eval()
    sha = save_model(m, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no scratch left
    loaded, loaded_sha = load_model(ActVAE, tmp_path / "a", kind="an Act-VAE")
    assert loaded_sha == sha == checkpoint_sha256(tmp_path / "a") and len(sha) == 64
    assert loaded.config == m.config and not loaded.training
    x = torch.randn(4, 32, 14)
    with torch.no_grad():
        assert torch.equal(m.tokenize_dual(x), loaded.tokenize_dual(x))
        assert torch.equal(m(x[..., :7])["recon"], loaded(x[..., :7])["recon"])
    assert save_model(loaded, tmp_path / "b") == sha  # the identity depends on the weights only


def test_config_without_architecture_loads_as_the_clap_data_network(tmp_path):
    torch.manual_seed(0)
    m = ActVAE(tiny()).eval()
    sha = save_model(m, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    del config["architecture"]  # what a checkpoint written before the field existed holds
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    loaded, loaded_sha = load_model(ActVAE, tmp_path, kind="an Act-VAE")
    assert loaded.config.architecture == "clap-data" and loaded_sha == sha
    x = torch.randn(3, 32, 14)
    assert torch.equal(loaded.tokenize_dual(x), m.tokenize_dual(x))


def test_load_errors_are_one_sentence(tmp_path):
    missing = r"is not an Act-VAE checkpoint: model.safetensors, config.json missing \(hint\)$"
    with pytest.raises(ClapDataError, match=missing):
        load_model(ActVAE, tmp_path, kind="an Act-VAE", hint="hint")
    save_model(ActVAE(tiny()), tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config | {"architecture": "openclap"}))
    with pytest.raises(ClapDataError, match="cannot be loaded as an Act-VAE checkpoint") as caught:
        load_model(ActVAE, tmp_path, kind="an Act-VAE")  # other tensors: refused, not left at random values
    assert "\n" not in str(caught.value)
