"""Everything a training loop's future depends on, saved and restored so that a resumed run is bit-identical.

Resuming from weights and optimizer moments alone is not enough for the same result: the next batches come
from RNG streams (numpy for data order, torch for re-seeding and dropout, CUDA on a GPU, python ``random``),
and some state the loop reads later is not in ``state_dict()`` at all (a non-persistent buffer such as the
quantiser's code-usage counter, kept out of the exported weights so their sha256 depends on nothing else;
window counters behind logged metrics). Missing any of them gives a run that drifts from an uninterrupted
one only once that state is read, e.g. at the first dead-code re-seeding after the resume point.

:func:`capture` gathers all of it into one dict of tensors and plain containers (numpy Generator states are
nested dicts of ints), so :func:`load` can use ``torch.load(weights_only=True)``: no arbitrary unpickling of
a file found in an output folder. :func:`save` writes beside the target and renames, so a ``kill -9`` leaves
the previous state or the new one, never half a file. :func:`restore` puts it back and returns the loop's own
``extra`` state (step, counters, ...). The Act-VAE trainer uses it; the VD-VAE and policy trainers will too.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from clap_data.atomic import temp_sibling
from clap_data.errors import ClapDataError

_PARTS = {"model", "optimizer", "scheduler", "rng", "numpy", "extra"}  # what capture() writes


def _module_state(model: nn.Module) -> dict[str, Any]:
    """``state_dict()`` plus the non-persistent buffers it leaves out."""
    persistent = model.state_dict()
    return {
        "state_dict": persistent,
        "buffers": {name: buf for name, buf in model.named_buffers() if name not in persistent},
    }


def _restore_module(model: nn.Module, state: Mapping[str, Any]) -> None:
    model.load_state_dict(state["state_dict"])
    buffers = dict(model.named_buffers())
    if state["buffers"].keys() != {name for name in buffers if name not in state["state_dict"]}:
        names = ", ".join(sorted(state["buffers"]))
        raise ClapDataError(f"the saved training state's buffers ({names}) do not fit the model")
    with torch.no_grad():
        for name, saved in state["buffers"].items():
            buffers[name].copy_(saved)


def _rng_streams() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_rng_streams(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():  # a run moved between a GPU and a CPU machine keeps what it can
        for device, cuda_state in zip(range(torch.cuda.device_count()), state["cuda"]):
            torch.cuda.set_rng_state(cuda_state, device)


def capture(
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    generators: Mapping[str, np.random.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The state to :func:`save`: model (buffers included), optimizer, scheduler, every RNG stream (the global
    ones and the named numpy ``generators``) and the loop's ``extra`` (tensors and plain containers only).
    Its tensors are the live ones, not copies: save it before the next step changes them."""
    return {
        "model": _module_state(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_streams(),
        "numpy": {name: g.bit_generator.state for name, g in (generators or {}).items()},
        "extra": dict(extra or {}),
    }


def restore(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    generators: Mapping[str, np.random.Generator] | None = None,
) -> dict[str, Any]:
    """Put a :func:`capture` back into the same kinds of objects (built as for a fresh run); returns ``extra``."""
    generators = generators or {}
    if state["numpy"].keys() != generators.keys():
        raise ClapDataError(f"the saved training state has numpy generators {sorted(state['numpy'])}, "
                            f"not {sorted(generators)}")
    for part, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if (state[part] is None) != (target is None):
            raise ClapDataError(f"the saved training state {'lacks' if state[part] is None else 'has'} a {part} state")
    _restore_module(model, state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    for name, generator in generators.items():
        generator.bit_generator.state = state["numpy"][name]
    _restore_rng_streams(state["rng"])
    return dict(state["extra"])


def save(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary sibling, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        torch.save(dict(state), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    """Read a state written by :func:`save` (tensors land on the CPU; ``restore`` moves them)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ClapDataError(f"{path} cannot be read as a training state ({exc}); pass --overwrite to start afresh") \
            from None
    if not isinstance(state, dict) or not _PARTS <= state.keys():
        raise ClapDataError(f"{path} is not a training state (an older version's?); pass --overwrite to start afresh")
    return state
