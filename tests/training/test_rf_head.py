"""CLAP-RF's head and Knowledge Matching: shapes, masks, layer assignment, the flow schedule and loss, Euler
sampling, a toy learning run, the answer KL and the frozen reference. Tiny widths on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clap_data.errors import ClapDataError
from clap_data.training.knowledge_matching import DEFAULT_ALPHA, answer_kl, frozen_reference, km_loss
from clap_data.training.prompts import IGNORE_INDEX
from clap_data.training.rf_head import (
    RFHead,
    RFHeadConfig,
    active_dofs,
    check_against_vlm,
    flow_matching_loss,
    rf_training_time,
    sample_actions,
    select_context,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are far too small to gain from intra-op threads, and on shared cores the threads' spinning
    made the learning test about 15 times slower; one thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIG = RFHeadConfig(vl_hidden_size=24, vl_layers=(1, 3), width=32, depth=4, heads=2, num_learned_tokens=3)
B, L = 3, 5


def _head(config: RFHeadConfig = CONFIG, seed: int = 0, randomise: bool = True) -> RFHead:
    """A head; ``randomise`` replaces every parameter (the zero-initialised gates and output included) with noise,
    so that the output depends on every input."""
    torch.manual_seed(seed)
    head = RFHead(config)
    if randomise:
        with torch.no_grad():
            for parameter in head.parameters():
                parameter.normal_(0, 0.3)
    return head


def _inputs(seed: int = 1, batch: int = B, config: RFHeadConfig = CONFIG) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, L, dtype=torch.bool)
    mask[0, 3:] = False  # sample 0 has two padded context positions
    return {"x_t": torch.randn(batch, config.chunk_size, config.action_dim, generator=g),
            "t": torch.rand(batch, generator=g), "state": torch.randn(batch, config.state_dim, generator=g),
            "context": [torch.randn(batch, L, config.vl_hidden_size, generator=g) for _ in config.vl_layers],
            "context_mask": mask}


def _perturbed(inputs: dict, layer: int, sample: int, positions: slice) -> dict:
    context = [c.clone() for c in inputs["context"]]
    context[layer][sample, positions] += torch.randn_like(context[layer][sample, positions])
    return {**inputs, "context": context}


# --- the head ----------------------------------------------------------------------------------------------------

def test_the_head_maps_a_noisy_chunk_to_a_velocity_of_the_same_shape():
    out = _head()(**_inputs())
    assert out.shape == (B, 32, 14) and torch.isfinite(out).all()


def test_adaln_zero_makes_the_untrained_head_predict_exactly_zero():
    out = _head(randomise=False)(**_inputs())
    assert torch.count_nonzero(out) == 0


def test_padded_context_positions_are_invisible_and_real_ones_are_not():
    head, inputs = _head(), _inputs()
    base = head(**inputs)
    for layer in range(2):
        padded = head(**_perturbed(inputs, layer, sample=0, positions=slice(3, None)))
        assert torch.equal(padded, base)
        real = head(**_perturbed(inputs, layer, sample=0, positions=slice(0, 1)))
        assert not torch.allclose(real[0], base[0], atol=1e-4)
        assert torch.equal(real[1:], base[1:])  # samples do not see each other's context
    blind = {**inputs, "context_mask": inputs["context_mask"].clone()}
    blind["context_mask"][2] = False  # a sample with no context at all: finite, and its context unread
    out = head(**blind)
    assert torch.isfinite(out).all() and torch.equal(head(**_perturbed(blind, 0, sample=2, positions=slice(None))), out)


def test_blocks_read_their_layers_in_order_in_equal_groups():
    assert CONFIG.block_layers == (0, 0, 1, 1)
    assert RFHeadConfig(vl_layers=(2, 0, 1), depth=4).block_layers == (0, 0, 1, 2)
    assert RFHeadConfig(vl_layers=(4,), depth=3).block_layers == (0, 0, 0)
    head, inputs = _head(), _inputs()
    projected = head.project_context(inputs["context"])
    seen = []
    for block in head.blocks:
        block.cross_attn.register_forward_pre_hook(lambda _module, args: seen.append(args[1]))
    head(**inputs)
    for key, layer in zip(seen, CONFIG.block_layers, strict=True):
        assert torch.equal(key, projected[layer])


def test_silencing_the_first_blocks_cross_attention_cuts_the_head_off_from_the_first_layer():
    head, inputs = _head(), _inputs()
    width = CONFIG.width
    with torch.no_grad():
        for block in head.blocks[:2]:  # blocks 0–1 read vl_layers[0]: zero their cross-attention gate
            block.modulation[1].weight[5 * width:6 * width] = 0
            block.modulation[1].bias[5 * width:6 * width] = 0
    base = head(**inputs)
    assert torch.equal(head(**_perturbed(inputs, 0, sample=1, positions=slice(None))), base)
    assert not torch.allclose(head(**_perturbed(inputs, 1, sample=1, positions=slice(None))), base, atol=1e-4)


def test_the_config_round_trips_and_bad_configs_are_refused_in_a_sentence():
    assert RFHeadConfig.from_dict(CONFIG.to_dict()) == CONFIG
    assert CONFIG.to_dict()["vl_layers"] == [1, 3]
    for bad, match in (({"vl_layers": (1, 2, 3), "depth": 2}, "fewer than its 3 vl_layers"),
                       ({"vl_layers": (1, 1)}, "distinct non-negative"), ({"vl_layers": ()}, "distinct"),
                       ({"width": 30, "heads": 4}, "divisible"), ({"depth": 0}, "depth must be positive")):
        with pytest.raises(ClapDataError, match=match):
            RFHeadConfig(**bad)
    with pytest.raises(ClapDataError, match="unknown keys"):
        RFHeadConfig.from_dict({**CONFIG.to_dict(), "dropout": 0.1})
    with pytest.raises(ClapDataError, match="reads 2 VLM layers"):
        _head()(**{**_inputs(), "context": _inputs()["context"][:1]})


class _TextConfig:
    num_hidden_layers, hidden_size = 3, 24

    def get_text_config(self) -> _TextConfig:
        return self


def test_vl_layers_are_checked_against_the_vlm_and_picked_from_its_hidden_states():
    check_against_vlm(CONFIG, _TextConfig())  # indices 0 … 3 exist
    with pytest.raises(ClapDataError, match=r"go past the VLM's 3 layers"):
        check_against_vlm(RFHeadConfig(vl_hidden_size=24, vl_layers=(1, 4)), _TextConfig())
    with pytest.raises(ClapDataError, match="width 64, the VLM's are 24"):
        check_against_vlm(RFHeadConfig(vl_layers=(1, 2)), _TextConfig())
    hidden_states = tuple(torch.full((1, 2, 24), float(i)) for i in range(4))
    assert [c[0, 0, 0].item() for c in select_context(hidden_states, CONFIG)] == [1.0, 3.0]


# --- the training time and the loss -----------------------------------------------------------------------------

def test_training_times_follow_the_shifted_beta_and_are_reproducible():
    t = rf_training_time(200_000, torch.Generator().manual_seed(0))
    assert t.shape == (200_000,) and t.min() > 0 and t.max() <= 0.999
    assert abs(t.mean().item() - 0.999 * 0.4) < 3e-3  # E[u] = 1.5 / 2.5 = 0.6
    # P(t ≤ 0.999·(1 − x)) = P(u ≥ x) = 1 − x^1.5
    assert abs((t <= 0.999 * 0.5).float().mean().item() - (1 - 0.5 ** 1.5)) < 5e-3
    again = rf_training_time(200_000, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    assert not torch.equal(t[:10], rf_training_time(10, torch.Generator().manual_seed(1)))


def _loss_inputs(seed: int = 2) -> dict:
    inputs = _inputs(seed)
    g = torch.Generator().manual_seed(seed + 100)
    return {"actions": torch.randn(B, 32, 14, generator=g), "state": inputs["state"], "context": inputs["context"],
            "context_mask": inputs["context_mask"], "arm_mask": torch.tensor([[True, True], [False, True],
                                                                               [True, False]])}


def test_the_flow_loss_is_the_masked_mse_of_the_velocity_against_a_minus_epsilon():
    head, inputs = _head(), _loss_inputs()
    loss, details = flow_matching_loss(head, **inputs, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the documented order: t (B uniforms), then ε
    t = 0.999 * (1 - torch.rand(B, generator=g) ** (1 / 1.5))
    eps = torch.randn(B, 32, 14, generator=g)
    assert torch.equal(details["t"], t) and torch.equal(details["noise"], eps)
    a = inputs["actions"]
    x_t = (1 - t[:, None, None]) * eps + t[:, None, None] * a
    error = (head(x_t, t, inputs["state"], inputs["context"], inputs["context_mask"]) - (a - eps)) ** 2
    per_sample = [error[0].mean(), error[1, :, 7:].mean(), error[2, :, :7].mean()]  # both, right, left arm
    expected = (error[0].sum() + error[1, :, 7:].sum() + error[2, :, :7].sum()) / (32 * 7 * 4)
    assert torch.allclose(loss, expected, rtol=1e-6)
    assert torch.allclose(details["per_sample"], torch.stack(per_sample), rtol=1e-6)


def test_inactive_arms_do_not_contribute_to_the_loss():
    head, inputs = _head(), _loss_inputs()
    # the head's input x_t changes with the chunk, so keep the velocity fixed: only the target differs
    head.forward = lambda x_t, *args: torch.zeros_like(x_t)

    def loss_with(actions: torch.Tensor) -> torch.Tensor:
        return flow_matching_loss(head, **{**inputs, "actions": actions}, generator=torch.Generator().manual_seed(7))[0]

    inactive, active = inputs["actions"].clone(), inputs["actions"].clone()
    inactive[1, :, :7] += 3.0  # sample 1's left arm is inactive
    inactive[2, :, 7:] -= 3.0  # sample 2's right arm is inactive
    active[1, :, 7:] += 3.0
    base = loss_with(inputs["actions"])
    assert torch.equal(loss_with(inactive), base) and loss_with(active) > base
    assert active_dofs(inputs["arm_mask"]).sum(dim=1).tolist() == [14, 7, 7]


def test_a_batch_without_active_arms_has_zero_loss():
    inputs = {**_loss_inputs(), "arm_mask": torch.zeros(B, 2, dtype=torch.bool)}
    loss, details = flow_matching_loss(_head(), **inputs, generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0 and details["per_sample"].tolist() == [0, 0, 0]


# --- sampling -----------------------------------------------------------------------------------------------------

def _known_velocity(head: RFHead, field) -> list[float]:
    """Replace the head's velocity with ``field(x, t)``; returns the list the times it is asked at go to."""
    times: list[float] = []

    def velocity(x, t, state, projected, context_mask):
        times.append(t[0].item())
        return field(x, t[:, None, None])

    head.velocity = velocity
    return times


def _sample_inputs() -> dict:
    inputs = _inputs()
    return {"state": inputs["state"], "context": inputs["context"], "context_mask": inputs["context_mask"]}


@pytest.mark.parametrize("steps", [1, 4, 7])
def test_euler_sampling_integrates_a_known_field_exactly(steps):
    head, target = _head(), torch.linspace(-1, 1, 32 * 14).reshape(1, 32, 14).expand(B, -1, -1)
    eps = torch.randn(B, 32, 14, generator=torch.Generator().manual_seed(3))
    times = _known_velocity(head, lambda x, t: target - x)
    x = sample_actions(head, **_sample_inputs(), steps=steps, generator=torch.Generator().manual_seed(3))
    assert times == pytest.approx([k / steps for k in range(steps)])
    assert torch.allclose(x, target - (1 - 1 / steps) ** steps * (target - eps), atol=1e-6)
    _known_velocity(head, lambda x, t: (target - x) / (1 - t))  # the straight path's own field: lands on target
    x = sample_actions(head, **_sample_inputs(), steps=steps, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(x, target, atol=1e-5)
    _known_velocity(head, lambda x, t: torch.full_like(x, 0.5))
    x = sample_actions(head, **_sample_inputs(), steps=steps, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(x, eps + 0.5, atol=1e-6)


def test_sampling_is_deterministic_given_the_generator_and_refuses_zero_steps():
    head = _head()
    first = sample_actions(head, **_sample_inputs(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, sample_actions(head, **_sample_inputs(), generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(first, sample_actions(head, **_sample_inputs(), generator=torch.Generator().manual_seed(6)))
    assert first.shape == (B, 32, 14) and not first.requires_grad
    with pytest.raises(ClapDataError, match="at least one Euler step"):
        sample_actions(head, **_sample_inputs(), steps=0)


def test_a_tiny_head_learns_a_state_to_chunk_map():
    """Actions a deterministic function of the state, context random: 200 Adam steps bring the flow loss well
    down and 4-step samples closer to the targets than the zero chunk."""
    config = RFHeadConfig(vl_hidden_size=8, vl_layers=(0, 1), width=32, depth=2, heads=2, num_learned_tokens=2)
    g = torch.Generator().manual_seed(0)
    n = 32
    state = torch.randn(n, 14, generator=g)
    phase = torch.linspace(0, math.pi, 32)[None, :, None]
    actions = 0.8 * torch.tanh(state)[:, None, :] * torch.cos(phase)  # [n, 32, 14]
    context = [torch.randn(n, 4, 8, generator=g) for _ in range(2)]
    mask, arms = torch.ones(n, 4, dtype=torch.bool), torch.ones(n, 2, dtype=torch.bool)
    head = _head(config, randomise=False)
    optimizer = torch.optim.Adam(head.parameters(), lr=5e-3)
    losses = []
    for _ in range(200):
        loss, _ = flow_matching_loss(head, actions, state, context, mask, arms, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.2 * first
    samples = sample_actions(head, state, context, mask, steps=4, generator=torch.Generator().manual_seed(1))
    sample_error = ((samples - actions) ** 2).mean().item()
    assert sample_error < 0.25 * (actions ** 2).mean().item()


# --- Knowledge Matching -------------------------------------------------------------------------------------------

def _kl_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    policy, reference = torch.randn(2, 6, 9, generator=g), torch.randn(2, 6, 9, generator=g)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 3:] = torch.tensor([4, 1, 7])  # answer at positions 3–5: predicted by the logits at 2–4
    labels[1, 0] = 5  # a label at position 0 is never predicted
    labels[1, 4] = 2  # predicted by the logits at 3
    return policy, reference, labels


def test_the_answer_kl_is_zero_for_equal_logits():
    policy, _, labels = _kl_example()
    assert answer_kl(policy, policy.clone(), labels).item() == 0


def test_the_answer_kl_is_the_mean_kl_ref_to_policy_at_the_shifted_answer_positions():
    policy, reference, labels = _kl_example()
    positions = [(0, 2), (0, 3), (0, 4), (1, 3)]
    total = 0.0
    for b, i in positions:
        p_ref, p_pol = reference[b, i].softmax(-1), policy[b, i].softmax(-1)
        total += (p_ref * (p_ref.log() - p_pol.log())).sum()
    expected = total / len(positions)
    rows = torch.stack([policy[b, i] for b, i in positions]), torch.stack([reference[b, i] for b, i in positions])
    by_kl_div = F.kl_div(rows[0].log_softmax(-1), rows[1].softmax(-1), reduction="batchmean")
    kl = answer_kl(policy, reference, labels)
    assert kl.dtype == torch.float32 and kl.item() > 0
    assert torch.allclose(kl, expected, rtol=1e-5) and torch.allclose(kl, by_kl_div, rtol=1e-5)
    unseen = policy.clone()
    unseen[:, 5] += torch.randn(2, 9)  # the last logits predict nothing
    unseen[1, :3] += 1.0  # sample 1's only counted logits are at position 3
    assert torch.equal(answer_kl(unseen, reference, labels), kl)
    assert answer_kl(policy.bfloat16(), reference.bfloat16(), labels).dtype == torch.float32
    assert answer_kl(policy, reference, torch.full_like(labels, IGNORE_INDEX)).item() == 0


def test_the_answer_kl_sends_gradients_to_the_policy_logits_only():
    policy, reference, labels = (x.clone() for x in _kl_example())
    policy.requires_grad_(True)
    reference.requires_grad_(True)
    answer_kl(policy, reference, labels).backward()
    assert reference.grad is None
    counted = torch.zeros(2, 6, dtype=torch.bool)
    counted[0, 2:5] = counted[1, 3] = True
    norms = policy.grad.norm(dim=-1)
    assert (norms[counted] > 0).all() and (norms[~counted] == 0).all()


def test_the_frozen_reference_is_a_detached_eval_copy_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    model(torch.randn(3, 4)).sum().backward()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    reference = frozen_reference(model)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert all(p.grad is None for p in reference.parameters())
    assert model.training and all(p.requires_grad and p.grad is not None for p in model.parameters())
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(1.0)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    x = torch.randn(5, 4)
    assert torch.equal(reference(x), reference(x))  # eval: no dropout


def test_the_post_training_loss_adds_alpha_times_the_kl():
    assert DEFAULT_ALPHA == 0.005
    rf, kl = torch.tensor(0.7), torch.tensor(2.0)
    assert km_loss(rf, kl).item() == pytest.approx(0.7 + 0.005 * 2.0)
    assert km_loss(rf, kl, alpha=0.0).item() == pytest.approx(0.7)
    with pytest.raises(ClapDataError, match="must be ≥ 0"):
        km_loss(rf, kl, alpha=-0.1)


# --- with a real (tiny) VLM ---------------------------------------------------------------------------------------

def test_the_pieces_fit_a_transformers_vlm_end_to_end(tmp_path):
    """The tiny Qwen2.5-VL: its config passes the layer check, its hidden states feed the head (the prompt part as
    context), its frozen copy gives KL 0 until the policy moves, and the post-training loss reaches the head and
    the backbone but not the reference."""
    import numpy as np

    from clap_data.factories.tiny_vlm import write_tiny_vlm
    from clap_data.training.ntp_model import load_vlm
    from clap_data.training.prompts import Prompt, encode

    model, processor = load_vlm(str(write_tiny_vlm(tmp_path / "vlm")))
    config = RFHeadConfig(vl_layers=(1, 2), width=32, depth=2, heads=2)
    check_against_vlm(config, model.config)  # 2 text layers: hidden states 0 … 2, width 64
    with pytest.raises(ClapDataError, match="go past"):
        check_against_vlm(RFHeadConfig(vl_layers=(1, 3)), model.config)
    image = np.full((56, 56, 3), 90, dtype=np.uint8)
    prompts = [Prompt([image], "droid", "pick up the red cup"), Prompt([], "droid", "open the drawer")]
    batch = encode(processor, prompts, ["Subtask: reach the cup\nAction: 1 2", "Subtask: lift it\nAction: 3"])
    labels = batch.pop("labels")
    reference = frozen_reference(model)
    model.train()
    out = model(**batch, output_hidden_states=True)
    with torch.no_grad():
        reference_logits = reference(**batch).logits
    kl = answer_kl(out.logits, reference_logits, labels)
    assert kl.abs().item() < 1e-6
    context_mask = batch["attention_mask"].bool() & (labels == IGNORE_INDEX)  # the prompt: what inference sees
    head = _head(config)  # randomised: an adaLN-zero head would pass no gradient to the context yet
    actions, state = torch.randn(2, 32, 14), torch.randn(2, 14)
    arms = torch.tensor([[False, True], [True, True]])
    rf, _ = flow_matching_loss(head, actions, state, select_context(out.hidden_states, config), context_mask, arms,
                               torch.Generator().manual_seed(0))
    km_loss(rf, kl).backward()
    assert head.action_out.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in reference.parameters())
    with torch.no_grad():
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
        moved = answer_kl(model(**batch).logits, reference_logits, labels)
    assert moved.item() > 1e-3
    sample = sample_actions(head, state, select_context(out.hidden_states, config), context_mask,
                            generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 32, 14)
