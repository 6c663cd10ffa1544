"""The openclap Act-VAE is the release network: its parameter count and tensor names and shapes are the
reference file's, and on real chunks of the Astribot sample it computes what an independent functional
re-implementation of the release's equations computes (written here with torch.nn.functional, reading the
tensors from the state dict), while mutated equations (concat order, pre-norm, queries, skip order) do not."""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clap_data.actions import NormStats, tokenizer_input
from clap_data.models import ActVAE, ActVAEConfig, load_model, save_model
from clap_data.reference import openclap_stats_table
from clap_data.sources.astribot import AstribotSource
from tests.conftest import SHARED

RELEASE_PARAMETERS = 71_941_767
REFERENCE_STATE_DICT = SHARED / "docs" / "reference" / "openclap_act_vae_state_dict.txt"
NET = "action_vae."
Tensors = dict[str, torch.Tensor]


def small_config(**overrides) -> ActVAEConfig:
    """Fast, and deep enough that the skip stack pops more than one skip (5 layers: 2 in, 1 middle, 2 out)."""
    settings = dict(
        architecture="openclap", num_queries=8, codebook_size=64, code_dim=16, width=64, heads=2, mlp_ratio=2.0,
        encoder_layers=5, decoder_layers=3,
    )
    return ActVAEConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def real_chunks(real_astribot: Path) -> torch.Tensor:
    """One-arm normalised chunks ``[N, 32, 7]`` (left arms, then right arms) of the real sample's first episode,
    as the tokenizer sees them (``tokenizer_input`` with the OpenCLAP statistics; the tail is padded)."""
    source = AstribotSource(real_astribot)
    episode = source.read_episode(source.list_episodes()[0])
    stats = NormStats.from_table(openclap_stats_table(), source.embodiment, "openclap", "the OpenCLAP table")
    frames = range(0, len(episode.state), max(1, len(episode.state) // 12))
    dual = np.stack([tokenizer_input(episode.state, episode.action, episode.arm_mask, t, stats).action for t in frames])
    dual = torch.tensor(dual, dtype=torch.float32)
    assert dual.abs().max() > 0.1  # real motion, not zeros
    return torch.cat([dual[..., :7], dual[..., 7:]])


@torch.no_grad()
def randomize(model: ActVAE, chunks: torch.Tensor, seed: int) -> None:
    """Every tensor random (LayerNorm gains and all biases too, so swapped or skipped ops show), then the
    codebook drawn near the model's own latents, so the nearest codes vary from chunk to chunk."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.3 * noise)
        elif p.dim() == 1 or name.endswith(".pe") or name.endswith("global_motion_token"):
            p.copy_(0.3 * noise)
        else:
            p.copy_(noise / math.sqrt(p.shape[-1]))
    latents = model.encode_latents(chunks).reshape(-1, model.config.code_dim)
    picked = latents[torch.randint(latents.shape[0], (model.config.codebook_size,), generator=g)]
    model.quantizer.embedding.weight.copy_(picked + 0.1 * latents.std() * torch.randn(picked.shape, generator=g))


# ---------------------------------------------------------------------- the release's equations, functionally
@dataclass(frozen=True)
class Equations:
    """The release's equations, and the mistakes an implementation could make (each flag one mutation)."""

    pre_norm: bool = False  # the release is post-norm
    skip_first: bool = False  # the release concatenates (x, skip), in that order
    fifo_skips: bool = False  # the release pops the last pushed skip first
    query_fill: float = 0.0  # the release appends zero queries


def attention(x: torch.Tensor, sd: Tensors, p: str, heads: int) -> torch.Tensor:
    """Multi-head self-attention on ``[B, L, D]``, written out (nn.MultiheadAttention's packed in_proj)."""
    b, length, d = x.shape
    q, k, v = F.linear(x, sd[p + "in_proj_weight"], sd[p + "in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    heads_joined = (weights @ v).transpose(1, 2).reshape(b, length, d)
    return F.linear(heads_joined, sd[p + "out_proj.weight"], sd[p + "out_proj.bias"])


def encoder_layer(x: torch.Tensor, sd: Tensors, p: str, heads: int, eq: Equations) -> torch.Tensor:
    def norm(y: torch.Tensor, which: str) -> torch.Tensor:
        return F.layer_norm(y, y.shape[-1:], sd[f"{p}{which}.weight"], sd[f"{p}{which}.bias"], eps=1e-5)

    def feedforward(y: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(F.linear(y, sd[p + "linear1.weight"], sd[p + "linear1.bias"]))
        return F.linear(hidden, sd[p + "linear2.weight"], sd[p + "linear2.bias"])

    if eq.pre_norm:
        x = x + attention(norm(x, "norm1"), sd, p + "self_attn.", heads)
        return x + feedforward(norm(x, "norm2"))
    x = norm(x + attention(x, sd, p + "self_attn.", heads), "norm1")
    return norm(x + feedforward(x), "norm2")


def skip_stack(x: torch.Tensor, sd: Tensors, p: str, heads: int, eq: Equations) -> torch.Tensor:
    blocks = len({k.split(".")[3] for k in sd if k.startswith(p + "input_blocks.")})
    skips = []
    for i in range(blocks):
        x = encoder_layer(x, sd, f"{p}input_blocks.{i}.", heads, eq)
        skips.append(x)
    x = encoder_layer(x, sd, p + "middle_block.", heads, eq)
    for i in range(blocks):
        skip = skips.pop(0 if eq.fifo_skips else -1)
        joined = torch.cat([skip, x] if eq.skip_first else [x, skip], dim=-1)
        x = F.linear(joined, sd[f"{p}linear_blocks.{i}.weight"], sd[f"{p}linear_blocks.{i}.bias"])
        x = encoder_layer(x, sd, f"{p}output_blocks.{i}.", heads, eq)
    return F.layer_norm(x, x.shape[-1:], sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-5)


def mlp(x: torch.Tensor, sd: Tensors, p: str) -> torch.Tensor:
    hidden = F.gelu(F.linear(x, sd[p + "0.weight"], sd[p + "0.bias"]))
    return F.linear(hidden, sd[p + "2.weight"], sd[p + "2.bias"])


def reference_encode(sd: Tensors, chunks: torch.Tensor, heads: int, eq: Equations = Equations()) -> torch.Tensor:
    """``z_e [B, Nq, code_dim]``: embed, prepend the registers, add positions, stack, first Nq → dist → MLP."""
    registers = sd[NET + "global_motion_token"]
    steps = F.linear(chunks, sd[NET + "skel_embedding.weight"], sd[NET + "skel_embedding.bias"])
    seq = torch.cat([registers.expand(len(chunks), -1, -1), steps], dim=1)
    seq = seq + sd[NET + "query_pos_encoder.pe"][: seq.shape[1], 0]
    h = skip_stack(seq, sd, NET + "encoder.", heads, eq)[:, : len(registers)]
    return mlp(F.linear(h, sd[NET + "dist_layer.weight"], sd[NET + "dist_layer.bias"]), sd, NET + "to_codebook.")


def reference_nearest(sd: Tensors, z_e: torch.Tensor) -> torch.Tensor:
    codebook = sd["quantizer.embedding.weight"]
    return torch.cdist(z_e.reshape(-1, codebook.shape[1]), codebook).argmin(dim=1).reshape(z_e.shape[:-1])


def reference_decode(sd: Tensors, indices: torch.Tensor, heads: int, eq: Equations = Equations()) -> torch.Tensor:
    """``[B, 32, 7]``: codes → MLP, append 32 query rows, add positions, stack, last 32 → final layer."""
    codes = mlp(sd["quantizer.embedding.weight"][indices], sd, NET + "from_codebook.")
    queries = torch.full((len(codes), 32, codes.shape[-1]), eq.query_fill)
    seq = torch.cat([codes, queries], dim=1)
    seq = seq + sd[NET + "query_pos_decoder.pe"][: seq.shape[1], 0]
    h = skip_stack(seq, sd, NET + "decoder.", heads, eq)[:, -32:]
    return F.linear(h, sd[NET + "final_layer.weight"], sd[NET + "final_layer.bias"])


def assert_matches_reference(model: ActVAE, chunks: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
    model.eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    heads = model.config.heads
    with torch.no_grad():
        z_e, want_z = model.encode_latents(chunks), reference_encode(sd, chunks, heads)
        torch.testing.assert_close(z_e, want_z, atol=1e-5, rtol=1e-5)
        indices = reference_nearest(sd, want_z)
        assert len(torch.unique(indices)) > 4  # a meaningful comparison: the codes vary
        assert torch.equal(model.quantizer.nearest(z_e), indices)
        want_recon = reference_decode(sd, indices, heads)
        torch.testing.assert_close(model.decode_indices(indices), want_recon, atol=1e-5, rtol=1e-5)
        out = model(chunks)
        assert torch.equal(out["indices"], indices)
        torch.testing.assert_close(out["recon"], want_recon, atol=1e-5, rtol=1e-5)
    return sd, indices


# ---------------------------------------------------------------------- the release's tensors
def test_release_preset_has_the_release_parameter_count():
    with torch.device("meta"):  # no memory allocated at all
        m = ActVAE(ActVAEConfig.release())
    assert m.config.architecture == "openclap"
    assert sum(p.numel() for p in m.parameters()) == RELEASE_PARAMETERS
    assert set(m.state_dict()) == {name for name, _ in m.named_parameters()}  # no persistent buffers


def test_release_state_dict_is_the_reference_files_names_and_shapes():
    if not REFERENCE_STATE_DICT.is_file():
        pytest.skip(f"{REFERENCE_STATE_DICT} is not in this checkout (../shared is absent)")
    reference = {}
    for line in REFERENCE_STATE_DICT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            reference[name] = tuple(ast.literal_eval(shape))
    mapped = {("quantizer.embedding.weight" if n == "vq_t.codebook.weight" else n): s for n, s in reference.items()}
    with torch.device("meta"):
        m = ActVAE(ActVAEConfig.release())
    assert {name: tuple(t.shape) for name, t in m.state_dict().items()} == mapped
    assert sum(math.prod(s) for s in reference.values()) == RELEASE_PARAMETERS


def test_odd_layer_counts_only():
    with pytest.raises(ValueError, match="odd number of encoder layers"):
        small_config(encoder_layers=4)
    with pytest.raises(ValueError, match="odd number of decoder layers"):
        small_config(decoder_layers=2)
    with pytest.raises(ValueError, match="architecture must be"):
        small_config(architecture="mld")
    assert ActVAEConfig(encoder_layers=2).architecture == "clap-data"  # today's network takes any count


# ---------------------------------------------------------------------- the release's equations
def test_forward_matches_the_release_equations_on_real_chunks(real_chunks):
    torch.manual_seed(0)
    model = ActVAE(small_config())
    randomize(model, real_chunks, seed=1)
    assert_matches_reference(model, real_chunks)


def test_the_comparison_catches_each_wrong_op(real_chunks):
    torch.manual_seed(0)
    model = ActVAE(small_config(encoder_layers=5, decoder_layers=5))
    randomize(model, real_chunks, seed=2)
    sd, indices = assert_matches_reference(model, real_chunks)
    heads = model.config.heads
    z_e, recon = reference_encode(sd, real_chunks, heads), reference_decode(sd, indices, heads)
    for eq in (Equations(pre_norm=True), Equations(skip_first=True), Equations(fifo_skips=True)):
        assert (reference_encode(sd, real_chunks, heads, eq) - z_e).abs().max() > 1e-2, eq
        assert (reference_decode(sd, indices, heads, eq) - recon).abs().max() > 1e-2, eq
    assert (reference_decode(sd, indices, heads, Equations(query_fill=1.0)) - recon).abs().max() > 1e-2


def test_release_size_matches_the_release_equations(real_chunks):
    torch.manual_seed(0)
    model = ActVAE(ActVAEConfig.release())
    few = real_chunks[[0, 5, -1]]
    randomize(model, few, seed=3)
    assert_matches_reference(model, few)


# ---------------------------------------------------------------------- what training and tokenize use
def test_public_methods_work_for_openclap(real_chunks):
    torch.manual_seed(0)
    m = ActVAE(small_config())
    k = m.config.codebook_size
    assert m.quantizer.embedding.weight.abs().max() <= 1.0 / k  # the release's U(−1/K, 1/K)
    out = m(real_chunks[:6])
    assert out["recon"].shape == (6, 32, 7) and out["indices"].shape == (6, 8) and out["loss"].dim() == 0
    out["recon_mse"].backward()  # reconstruction only: the gradient must pass the quantiser
    assert m.action_vae.skel_embedding.weight.grad.abs().sum() > 0
    groups = m.param_groups(2e-5)
    assert groups[1]["params"][0] is m.quantizer.embedding.weight
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    assert m.reseed_dead_codes(out["z_e"]) > 0
    dual = torch.cat([real_chunks[:3], real_chunks[-3:]], dim=-1)
    tokens = m.tokenize_dual(dual, torch.tensor([[1, 1], [1, 0], [0, 1]]))
    assert tokens.shape == (3, 16) and tokens.dtype == torch.int16
    assert m.detokenize_dual(tokens).shape == (3, 32, 14)


def test_checkpoint_round_trip_records_the_architecture(tmp_path, real_chunks):
    torch.manual_seed(0)
    m = ActVAE(small_config()).eval()
    sha = save_model(m, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["architecture"] == "openclap"
    loaded, loaded_sha = load_model(ActVAE, tmp_path / "ckpt", kind="an Act-VAE")
    assert loaded_sha == sha and loaded.config == m.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(real_chunks)["recon"], m(real_chunks)["recon"], atol=0, rtol=0)
