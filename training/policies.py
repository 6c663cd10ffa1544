"""Every kind of trained policy behind one call: :func:`load_policy` reads a checkpoint's kind and loads it.

Why a table: the policy server (and any tool that acts) takes a checkpoint folder, not a class. Each trainer writes
its kind into the folder's ``training.json``; one line here maps that kind to the class that loads it (CLAP-NTP's
:class:`~clap_data.training.ntp_policy.NTPPolicy`, CLAP-RF's :class:`~clap_data.training.rf_policy.RFPolicy`), imported
only when a policy of that kind is loaded (they import ``transformers``). A policy is any object with ``ckpt`` (its folder), ``meta`` (its
``training.json``) and ``predict(images, instruction, embodiment, state)`` returning at least ``actions``
``[32, 14]`` (see :class:`clap_data.training.ntp_policy.NTPPolicy`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clap_data.act_vae.checkpoint import TRAINING_META_NAME, read_training_meta
from clap_data.actions import HUMAN
from clap_data.errors import ClapDataError
from clap_data.schemas import POSE14_NAMES
from clap_data.schemas.shards_v1 import ACTION_DIM, CAMERAS_IN_PROMPT_ORDER, CHUNK_STEPS
from clap_data.training import ntp_checkpoint, rf_checkpoint
from clap_data.training.policy_client import PROTOCOL_VERSION


class Policy(Protocol):
    """What acting needs of a policy (see the module docstring)."""

    ckpt: Path
    meta: dict[str, Any]

    def predict(self, images: Mapping[str, np.ndarray], instruction: str, embodiment: str,
                state: Any) -> dict[str, Any]: ...


Loader = Callable[[Path, str, Path | None], Policy]


def _loader(module: str, name: str) -> Loader:
    """``module.name.from_pretrained(ckpt, act_vae=…, device=…)``, the module imported at the first load."""

    def load(ckpt: Path, device: str, act_vae: Path | None) -> Policy:
        return getattr(importlib.import_module(module), name).from_pretrained(ckpt, act_vae=act_vae, device=device)

    return load


LOADERS: dict[str, Loader] = {
    ntp_checkpoint.KIND: _loader("clap_data.training.ntp_policy", "NTPPolicy"),
    rf_checkpoint.KIND: _loader("clap_data.training.rf_policy", "RFPolicy"),
}


def load_policy(ckpt: str | Path, device: str = "auto", act_vae: str | Path | None = None) -> Policy:
    """The policy in ``ckpt`` on ``device`` (auto, cpu, cuda); ``act_vae`` overrides the recorded Act-VAE folder."""
    ckpt = Path(ckpt)
    kind = read_training_meta(ckpt).get("kind")
    if kind not in LOADERS:
        found = f"its {TRAINING_META_NAME} names kind {kind!r}" if kind else f"no {TRAINING_META_NAME} names its kind"
        raise ClapDataError(f"{ckpt} is not a policy checkpoint this clap-data can load ({found}; known kinds: "
                            f"{', '.join(sorted(LOADERS))})")
    return LOADERS[kind](ckpt, device, None if act_vae is None else Path(act_vae))


def policy_metadata(policy: Policy) -> dict[str, Any]:
    """What the policy server tells a client on connect: which checkpoint answers, the robot embodiments it acts
    for (human video is trained on but has no robot to act with), the cameras it reads (in prompt order) and the
    chunk it returns (steps × dimensions, the dimensions' names)."""
    meta = policy.meta
    return {
        "protocol": PROTOCOL_VERSION,
        "checkpoint": str(policy.ckpt),
        "kind": meta["kind"],
        "embodiments": {name: {"arm_mask": [bool(active) for active in entry["arm_mask"]]}
                        for name, entry in meta["embodiments"].items() if name != HUMAN},
        "cameras": list(CAMERAS_IN_PROMPT_ORDER),
        "chunk_size": CHUNK_STEPS,
        "action_dim": ACTION_DIM,
        "action_layout": list(POSE14_NAMES),
        "act_vae_sha256": meta.get("act_vae", {}).get("checkpoint_sha256"),  # None for a policy without one
    }
