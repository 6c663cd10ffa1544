"""VD-VAE: shapes, the frozen Act-VAE codebook, causal temporal attention, SigLIP, EMA, augmentation, training
and the checkpoint round trip."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from clap_data.models import VDVAE, ActVAE, ActVAEConfig, VDVAEConfig, augment_pairs, load_model, save_model
from clap_data.models.siglip import sigmoid_contrastive_loss

NQ, CODE_DIM, P, D = 8, 8, 6, 16
SHA = "ab" * 32


def tiny_act_vae() -> ActVAE:
    torch.manual_seed(0)
    return ActVAE(ActVAEConfig(num_queries=NQ, codebook_size=16, code_dim=CODE_DIM, width=32, encoder_layers=1,
                               decoder_layers=1, heads=4))


def tiny_config() -> VDVAEConfig:
    return VDVAEConfig(width=32, heads=4, encoder_blocks=1, decoder_blocks=1, feature_dim=D, num_patches=P,
                       env_codebook_size=8)


def tiny_model(seed: int = 0) -> VDVAE:
    act_vae = tiny_act_vae()
    torch.manual_seed(seed)
    return VDVAE.from_act_vae(act_vae, tiny_config(), sha256=SHA)


def batch(b: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "patches": torch.randn(b, 2, P, D, generator=g),
        "arm_mask": torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]])[:b].bool(),
        "is_robot": torch.tensor([True, False, True, False])[:b],
        "robot_targets": torch.randn(b, 2, NQ, CODE_DIM, generator=g),
    }


def test_config_presets_and_validation():
    release, small = VDVAEConfig.release(), VDVAEConfig.small()
    assert (release.width, release.heads, release.encoder_blocks, release.decoder_blocks) == (768, 12, 12, 12)
    assert (release.env_tokens, release.action_tokens, release.code_dim, release.env_codebook_size) == (2, 16, 128, 512)
    assert release.gap == 32 and release.ema_decay == 0.999 and release.beta == 1.0
    assert (release.siglip_weight, release.l1_weight) == (0.1, 0.5)
    assert release.siglip_logit_scale_init == pytest.approx(math.log(10)) and release.siglip_logit_bias_init == -10
    assert (small.width, small.encoder_blocks, small.decoder_blocks, small.heads) == (64, 2, 2, 4)
    with pytest.raises(ValueError):
        VDVAEConfig(width=30, heads=4)


def test_shapes_and_loss_terms():
    m = tiny_model()
    out = m(**batch())
    assert out["pred"].shape == (4, P, D)
    assert out["action_indices"].shape == (4, 2 * NQ) and out["env_indices"].shape == (4, 2)
    assert out["z_action"].shape == (4, 2 * NQ, CODE_DIM)
    c = m.config
    expected = (out["mse"] + out["q"] + c.beta * out["commit"] + c.siglip_weight * out["siglip"]
                + c.l1_weight * out["l1"])
    assert out["loss"].dim() == 0 and torch.allclose(out["loss"], expected)
    tokens = m.pseudo_tokens(batch()["patches"])
    assert tokens.shape == (4, 2 * NQ) and tokens.dtype == torch.int16
    assert torch.equal(tokens.long(), m.eval()(**batch())["action_indices"])  # same slots, same order
    with pytest.raises(ValueError):
        m.pseudo_tokens(torch.randn(4, 2, P + 1, D))
    with pytest.raises(ValueError, match="robot_targets"):
        m(**dict(batch(), robot_targets=None))


def test_from_act_vae_copies_codebook_and_records_sha(tmp_path):
    act_vae = tiny_act_vae()
    m = VDVAE.from_act_vae(act_vae, tiny_config(), sha256=SHA)
    assert torch.equal(m.act_quantizer.codebook, act_vae.quantizer.codebook) and m.config.act_vae_sha256 == SHA
    with pytest.raises(ValueError, match="sha256"):
        VDVAE.from_act_vae(act_vae, tiny_config())
    sha = save_model(act_vae, tmp_path / "act")
    from_folder = VDVAE.from_act_vae(tmp_path / "act", tiny_config())
    assert from_folder.config.act_vae_sha256 == sha
    assert torch.equal(from_folder.act_quantizer.codebook, act_vae.quantizer.codebook)


def test_act_codebook_frozen_while_the_rest_trains():
    m = tiny_model()
    before = {name: p.detach().clone() for name, p in m.named_parameters()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    m(**batch())["loss"].backward()
    assert m.act_quantizer.codebook.grad is None
    opt.step()
    params = dict(m.named_parameters())
    frozen = {"act_quantizer.embedding.weight"} | {n for n in params if n.startswith("teacher.")}
    for name, p in params.items():
        changed = not torch.equal(p, before[name])
        assert changed != (name in frozen), name
    assert "env_quantizer.embedding.weight" not in frozen and "logit_bias" not in frozen


def test_temporal_attention_is_causal():
    m = tiny_model().eval()
    patches = batch()["patches"]
    later_changed = patches.clone()
    later_changed[:, 1] += torch.randn(P, D)
    earlier_changed = patches.clone()
    earlier_changed[:, 0] += torch.randn(P, D)
    with torch.no_grad():
        h, h_later, h_earlier = (m.encoder.hidden(x) for x in (patches, later_changed, earlier_changed))
    assert torch.allclose(h[:, 0], h_later[:, 0], atol=1e-6)  # frame t does not see frame t+32
    assert not torch.allclose(h[:, 1, :18], h_earlier[:, 1, :18], atol=1e-4)  # t+32's slots see frame t


def reference_siglip(x: torch.Tensor, y: torch.Tensor, t: float, b: float) -> torch.Tensor:
    """Paper Eq. 3 per anchor (its positive, then each negative), averaged over anchors, in both directions."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    n = x.shape[0]

    def one_direction(anchors: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                logit = math.exp(t) * float(anchors[i] @ refs[j]) + b
                p = 1.0 / (1.0 + math.exp(-logit))
                total += -math.log(p) if i == j else -math.log(1.0 - p)
        return total / n

    return (one_direction(x, y) + one_direction(y, x)) / 2


def test_siglip_matches_independent_computation_over_active_arms():
    m = tiny_model()
    with torch.no_grad():
        m.logit_scale.fill_(0.7)
        m.logit_bias.fill_(-1.3)
        m.teacher.to_action.bias.add_(0.5)  # teacher ≠ online, so using the wrong branch would show
    data = batch()
    aug = data["patches"] + 0.1 * torch.randn_like(data["patches"])
    out = m(**data, patches_aug=aug)
    with torch.no_grad():
        online = m.encoder(aug)[0].reshape(4, 2, -1)
        teacher = m.teacher(data["patches"])[0].reshape(4, 2, -1)
    anchors, positives = [], []
    for i in range(4):
        for arm in range(2):
            if data["arm_mask"][i, arm]:
                anchors.append(online[i, arm])
                target = data["robot_targets"][i, arm].reshape(-1) if data["is_robot"][i] else teacher[i, arm]
                positives.append(target)
    assert len(anchors) == 6
    expected = reference_siglip(torch.stack(anchors), torch.stack(positives), 0.7, -1.3)
    assert out["siglip"].item() == pytest.approx(expected.item(), rel=1e-4)
    direct = sigmoid_contrastive_loss(torch.stack(anchors), torch.stack(positives), m.logit_scale, m.logit_bias)
    assert direct.item() == pytest.approx(expected.item(), rel=1e-4)
    empty = sigmoid_contrastive_loss(torch.zeros(0, 4), torch.zeros(0, 4), m.logit_scale, m.logit_bias)
    assert empty.item() == 0.0


def test_siglip_gradient_does_not_reach_positives():
    m = tiny_model()
    data = batch()
    data["robot_targets"].requires_grad_(True)
    m(**data)["siglip"].backward()
    assert data["robot_targets"].grad is None
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.logit_scale.grad is not None and m.logit_bias.grad is not None


def test_ema_update_formula():
    m = tiny_model()
    assert all(torch.equal(t, p) for t, p in zip(m.teacher.parameters(), m.encoder.parameters(), strict=True))
    m.config.ema_decay = 0.9
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.fill_(1.0)
        for p in m.encoder.parameters():
            p.fill_(3.0)
    m.update_teacher()
    assert all(torch.allclose(p, torch.full_like(p, 0.9 * 1.0 + 0.1 * 3.0)) for p in m.teacher.parameters())
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in m.encoder.parameters())


def test_augmentation_same_map_for_both_frames_and_deterministic():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(8, 1, 10, 12, 3, generator=g) * 0.6 + 0.2
    pairs = image.repeat(1, 2, 1, 1, 1)
    aug = augment_pairs(pairs, torch.Generator().manual_seed(1), noise_std=0.0, grayscale_p=0.5)
    assert torch.equal(aug[:, 0], aug[:, 1])  # no noise: an identical pair stays identical
    assert not torch.allclose(aug, pairs)
    # different frames: the pixel map is the same (frame 1 = frame 0 permuted → output permuted the same way)
    perm = torch.randperm(10 * 12, generator=g)
    moved = torch.cat([image, image.flatten(2, 3)[:, :, perm].view_as(image)], dim=1)
    aug_moved = augment_pairs(moved, torch.Generator().manual_seed(1), noise_std=0.0, grayscale_p=0.5)
    assert torch.allclose(aug_moved[:, 0].flatten(1, 2)[:, perm], aug_moved[:, 1].flatten(1, 2), atol=1e-6)
    # with noise the frame difference is noise alone: mean ≈ 0, std ≈ σ·√2
    noisy = augment_pairs(pairs, torch.Generator().manual_seed(2))
    diff = noisy[:, 1] - noisy[:, 0]
    assert abs(diff.mean().item()) < 3e-3 and diff.std().item() == pytest.approx(0.02 * math.sqrt(2), rel=0.1)
    assert torch.equal(noisy, augment_pairs(pairs, torch.Generator().manual_seed(2)))
    assert not torch.equal(noisy, augment_pairs(pairs, torch.Generator().manual_seed(3)))
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    with pytest.raises(ValueError):
        augment_pairs(pairs[:, :1], g)


def test_a_few_steps_reduce_the_total_loss():
    m = tiny_model()
    data = batch()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        out = m(**data)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.update_teacher()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.8 * losses[0]


def test_checkpoint_round_trip_keeps_sha_and_pseudo_tokens(tmp_path):
    m = tiny_model()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m(**batch())["loss"].backward()
    opt.step()
    m.update_teacher()
    patches = batch(seed=5)["patches"]
    sha = save_model(m, tmp_path / "vd")
    loaded, loaded_sha = load_model(VDVAE, tmp_path / "vd", kind="a VD-VAE")
    assert loaded_sha == sha and loaded.config == m.config and loaded.config.act_vae_sha256 == SHA
    assert torch.equal(loaded.pseudo_tokens(patches), m.pseudo_tokens(patches))
    assert torch.equal(loaded.act_quantizer.codebook, m.act_quantizer.codebook)
    assert not loaded.act_quantizer.codebook.requires_grad
    assert all(not p.requires_grad for p in loaded.teacher.parameters())
    state = dataclasses.asdict(loaded.config)
    assert state["num_queries"] == NQ and state["code_dim"] == CODE_DIM
