"""`clap_data.train_state`: a captured state, restored into fresh objects, continues bit-identically."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clap_data import train_state
from clap_data.errors import ClapDataError


class Counting(nn.Module):
    """A layer with dropout and a non-persistent counter, like the quantiser's usage buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.dropout = nn.Dropout(0.5)
        self.register_buffer("seen", torch.zeros(4, dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.linear(x))
        self.seen += (y > 0).sum(dim=0)
        return y


Run = tuple[Counting, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, np.random.Generator]


def make() -> Run:
    torch.manual_seed(0)
    model = Counting()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5), np.random.default_rng(0)


def steps(model: Counting, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
          rng: np.random.Generator, n: int) -> list[float]:
    """Train ``n`` steps on data from every RNG stream; returns what each step drew besides its batch."""
    drawn = []
    for _ in range(n):
        x = torch.from_numpy(rng.normal(size=(8, 4)).astype(np.float32)) * random.random()
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        drawn.append(float(torch.rand(())))
    return drawn


def test_a_restored_run_continues_bit_identically(tmp_path):
    model, optimizer, scheduler, rng = make()
    random.seed(7)
    steps(model, optimizer, scheduler, rng, 3)
    extra = {"step": 3, "window": [0.5, 0.25], "hits": torch.arange(4)}
    path = tmp_path / "state.pt"
    train_state.save(path, train_state.capture(model, optimizer, scheduler, {"batches": rng}, extra))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # the temporary sibling was renamed
    straight = steps(model, optimizer, scheduler, rng, 4)

    random.seed(99)  # every stream elsewhere: restore must bring them all back
    torch.manual_seed(99)
    fresh, fresh_optimizer, fresh_scheduler, fresh_rng = make()
    back = train_state.restore(train_state.load(path), fresh, fresh_optimizer, fresh_scheduler, {"batches": fresh_rng})
    assert back.keys() == extra.keys() and back["window"] == [0.5, 0.25] and torch.equal(back["hits"], torch.arange(4))
    assert fresh_scheduler.get_last_lr() == [1e-2 * 0.5]
    assert steps(fresh, fresh_optimizer, fresh_scheduler, fresh_rng, 4) == straight
    for (name, x), (_, y) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert int(fresh.seen.sum()) > 0 and torch.equal(fresh.seen, model.seen)  # the non-persistent buffer too


def test_the_file_is_plain_tensors_and_containers(tmp_path):
    model, optimizer, scheduler, rng = make()
    path = tmp_path / "state.pt"
    train_state.save(path, train_state.capture(model, optimizer, scheduler, {"batches": rng}))
    state = torch.load(path, weights_only=True)  # no arbitrary unpickling needed
    assert state["numpy"]["batches"] == np.random.default_rng(0).bit_generator.state
    assert torch.equal(state["model"]["buffers"]["seen"], torch.zeros(4, dtype=torch.int64))
    assert state["extra"] == {} and state["scheduler"]["last_epoch"] == 0
    assert len(state["rng"]["cuda"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_a_failed_save_keeps_the_previous_state(tmp_path, monkeypatch):
    model, optimizer, scheduler, rng = make()
    path = tmp_path / "state.pt"
    train_state.save(path, train_state.capture(model, optimizer, extra={"step": 1}))
    before = path.read_bytes()

    def half_written(obj: object, f: Path) -> None:
        f.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        train_state.save(path, train_state.capture(model, optimizer, extra={"step": 2}))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_unreadable_or_mismatched_states_are_refused(tmp_path):
    model, optimizer, scheduler, rng = make()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ClapDataError, match="cannot be read as a training state"):
        train_state.load(garbage)
    old = tmp_path / "old.pt"
    torch.save({"step": 4, "numpy_rng": rng.bit_generator.state}, old)  # an older, flat layout
    with pytest.raises(ClapDataError, match="is not a training state"):
        train_state.load(old)
    path = tmp_path / "state.pt"
    train_state.save(path, train_state.capture(model, optimizer, generators={"batches": rng}))
    with pytest.raises(ClapDataError, match="numpy generators"):
        train_state.restore(train_state.load(path), model, optimizer, generators={})
    with pytest.raises(ClapDataError, match="lacks a scheduler state"):
        train_state.restore(train_state.load(path), model, optimizer, scheduler, generators={"batches": rng})
