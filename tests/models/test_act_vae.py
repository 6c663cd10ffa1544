"""Act-VAE (today's clap-data network) and vector quantiser: shapes, gradients, losses, reseeding."""

import pytest
import torch

from clap_data.models import ActVAE, ActVAEConfig, VectorQuantizer, code_usage, perplexity


def tiny_config() -> ActVAEConfig:
    return ActVAEConfig(num_queries=8, codebook_size=16, code_dim=8, width=32, encoder_layers=1, decoder_layers=1, heads=4)


def test_shapes_and_dtypes():
    torch.manual_seed(0)
    m = ActVAE(tiny_config())
    x = torch.randn(3, 32, 7)
    z_q, idx, losses = m.encode(x)
    assert z_q.shape == (3, 8, 8) and z_q.dtype == torch.float32
    assert idx.shape == (3, 8) and idx.dtype == torch.int64
    assert m.decode_indices(idx).shape == (3, 32, 7)
    out = m(x)
    assert set(out) >= {"recon", "indices", "loss", "recon_mse", "codebook_loss", "commit_loss"}
    assert out["recon"].shape == (3, 32, 7) and out["loss"].dim() == 0
    expected = out["recon_mse"] + out["codebook_loss"] + m.config.beta * out["commit_loss"]
    assert torch.allclose(out["loss"], expected)
    tok = m.tokenize_dual(torch.randn(3, 32, 14), torch.tensor([[1, 1], [1, 0], [0, 1]]))
    assert tok.shape == (3, 16) and tok.dtype == torch.int16
    assert m.detokenize_dual(tok).shape == (3, 32, 14)
    with pytest.raises(ValueError):
        m.encode(torch.randn(3, 31, 7))


def test_inactive_arm_is_encoded_from_zero_chunk():
    torch.manual_seed(0)
    m = ActVAE(tiny_config())
    x = torch.randn(2, 32, 14)
    tok = m.tokenize_dual(x, torch.tensor([[1, 0], [0, 1]]))
    zero_codes = m.tokenize_dual(torch.zeros(1, 32, 14))[0, :8]
    assert torch.equal(tok[0, 8:], zero_codes) and torch.equal(tok[1, :8], zero_codes)
    left_only = m.tokenize_dual(x[:, :, :7].repeat(1, 1, 2))
    assert torch.equal(tok[0, :8], left_only[0, :8])


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    m = ActVAE(tiny_config())
    out = m(torch.randn(4, 32, 7))
    out["recon_mse"].backward()  # reconstruction only: gradient must pass the quantiser
    assert m.step_embed.weight.grad is not None and m.step_embed.weight.grad.abs().sum() > 0
    assert m.to_latent.weight.grad.abs().sum() > 0


def test_quantizer_nearest_code_and_losses():
    vq = VectorQuantizer(3, 2)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    z = torch.tensor([[0.9, 0.2], [0.1, 1.5], [-0.2, 0.1]], requires_grad=True)
    z_q, idx, losses = vq(z)
    assert idx.tolist() == [1, 2, 0] and idx.dtype == torch.int64
    assert torch.equal(z_q, torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    # squared errors: 0.01+0.04, 0.01+0.25, 0.04+0.01 -> 0.36 over 6 elements
    assert losses["codebook"].item() == pytest.approx(0.36 / 6)
    assert losses["commitment"].item() == pytest.approx(0.36 / 6)
    losses["commitment"].backward()
    assert vq.embedding.weight.grad is None  # commitment does not move the codebook
    z_q.sum().backward()
    assert torch.allclose(z.grad, 2 * (z - z_q).detach() / 6 + 1)  # straight-through: d(sum z_q)/dz = 1


def test_reseed_replaces_exactly_unused_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 2)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(6, 2) * 10)
    vq.train()
    vq(torch.tensor([[0.0, 10.0], [40.0, 50.0], [41.0, 50.0]]))  # hits codes 0 and 2
    assert vq.usage.tolist() == [1, 0, 2, 0, 0, 0]
    before = vq.embedding.weight.detach().clone()
    latents = torch.full((5, 2), 7.0)
    assert vq.reseed_dead_codes(latents) == 4
    after = vq.embedding.weight.detach()
    assert torch.equal(after[[0, 2]], before[[0, 2]])
    assert torch.equal(after[[1, 3, 4, 5]], torch.full((4, 2), 7.0))
    assert vq.usage.sum() == 0
    vq.eval()
    vq(torch.zeros(2, 2))
    assert vq.usage.sum() == 0  # eval mode does not count
    # without latents: reseeded from live codes (plus noise), live ones untouched
    vq.train()
    vq(torch.tensor([[0.0, 10.0]]))
    assert vq.reseed_dead_codes() == 5 and torch.equal(vq.embedding.weight[0], before[0])


def test_perplexity_and_usage():
    assert perplexity(torch.arange(64).repeat(3), 64) == pytest.approx(64.0)
    assert perplexity(torch.zeros(10, dtype=torch.long), 64) == pytest.approx(1.0)
    assert code_usage(torch.tensor([0, 0, 3]), 8) == pytest.approx(0.25)


def test_param_groups_scale_codebook_lr():
    m = ActVAE(tiny_config())
    groups = m.param_groups(2e-5)
    assert groups[1]["params"][0] is m.quantizer.embedding.weight
    assert groups[1]["lr"] == pytest.approx(1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_clap_data_parameter_count():
    c = ActVAEConfig()  # today's network with the defaults: width 512, 15 + 15 layers, feed-forward ×4
    assert c.architecture == "clap-data"
    with torch.device("meta"):  # no memory allocated at all
        m = ActVAE(c)
    n = sum(p.numel() for p in m.parameters())
    d, h = c.width, int(c.width * c.mlp_ratio)
    per_layer = 4 * d * d + 4 * d + 2 * d * h + h + d + 4 * d
    assert n > 60e6
    assert n == 30 * per_layer + 2 * 2 * d + m.quantizer.embedding.weight.numel() + (
        (7 * d + d) + (d * 128 + 128) + (128 * d + d) + (d * 7 + 7) + 2 * 8 * d + 2 * 32 * d
    )


def ramp_chunks(n: int, seed: int = 0) -> torch.Tensor:
    """Chunks shaped like real relative actions: start at zero, drift smoothly (linear + quadratic)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.linspace(0, 1, 32)[None, :, None]
    return (torch.rand(n, 1, 7, generator=g) * 2 - 1) * k + (torch.rand(n, 1, 7, generator=g) - 0.5) * k**2


@pytest.mark.timeout(300)
def test_a_small_model_learns_through_the_quantiser():
    torch.manual_seed(0)
    x = ramp_chunks(64)
    config = ActVAEConfig(num_queries=8, codebook_size=64, code_dim=32, width=64, encoder_layers=2, decoder_layers=2, heads=4)
    m = ActVAE(config)
    opt = torch.optim.Adam(m.param_groups(1e-3))
    for step in range(1, 301):
        out = m(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if step % 25 == 0:
            m.reseed_dead_codes(out["z_e"])
    m.eval()
    with torch.no_grad():
        mse = m(x)["recon_mse"].item()
    print(f"recon MSE {mse:.5f} vs data variance {x.var().item():.5f}")
    assert mse < x.var().item() / 5  # from predicting the mean to a fraction of it, through the codes
