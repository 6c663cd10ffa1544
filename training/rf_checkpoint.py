"""A CLAP-RF checkpoint folder: what ``train rf`` writes and ``RFPolicy`` reads.

    CKPT/
      config.json, model*.safetensors, generation_config.json   the backbone, ``save_pretrained`` form
      tokenizer*, chat_template*, processor/preprocessor configs  its processor (the NTP checkpoint's: action tokens)
      rf_head.safetensors  the RF head's weights
      rf_head.json         its shape (RFHeadConfig.to_dict: the VLM width, vl_layers, width, depth, heads, …)
      training.json        kind "clap-rf", the run's settings, step, last metrics, the init NTP checkpoint (folder,
                           weights sha256, step), the mode (km, ki, plain) and α, the Act-VAE (sha256 + folder) and
                           the statistics carried over from the NTP checkpoint, the embodiments the head was
                           trained on with their arm masks, vl_layers and flow_steps (Euler steps when acting)
      training_state.pt    everything a rerun resumes from (clap_data.train_state): backbone and head weights,
                           optimizer, scheduler, RNG streams, step and the run's settings
      .lock, .writer.lock  the launching command's lock, and rank 0's while it trains

The backbone is saved even under Knowledge Insulation, where it is the NTP checkpoint's unchanged: the folder is
then self-contained (it acts, serves and is evaluated without the NTP folder) at the price of one more copy of
the weights on disk. Exporting, ``--overwrite`` (only a CLAP-RF run's folder is emptied) and reading
``training.json`` are :mod:`clap_data.training.policy_checkpoint`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from clap_data.errors import ClapDataError
from clap_data.training import policy_checkpoint
from clap_data.training.rf_head import RFHead, RFHeadConfig

KIND = "clap-rf"
LABEL = "CLAP-RF"
HEAD_WEIGHTS = "rf_head.safetensors"
HEAD_CONFIG = "rf_head.json"


def clear_rf_checkpoint(ckpt: Path) -> None:
    """Empty ``ckpt`` for ``--overwrite`` (its dot files, e.g. the lock, stay); refuses any other folder."""
    policy_checkpoint.clear_run(ckpt, KIND, LABEL)


def export_rf(ckpt: Path, vlm: Any, processor: Any, head: RFHead, meta: dict[str, Any]) -> None:
    """The backbone and processor in ``save_pretrained`` form, the head's two files, then ``training.json``."""

    def write_head(folder: Path) -> None:
        save_file({name: tensor.detach().contiguous() for name, tensor in head.state_dict().items()},
                  str(folder / HEAD_WEIGHTS))
        (folder / HEAD_CONFIG).write_text(json.dumps(head.config.to_dict(), indent=2) + "\n")

    policy_checkpoint.export(ckpt, vlm, processor, meta, KIND, write_head)


def read_rf_meta(ckpt: Path) -> dict[str, Any]:
    """``training.json`` of a CLAP-RF checkpoint, refusing other folders with a sentence."""
    return policy_checkpoint.read_meta(ckpt, KIND, LABEL, "clap-data train rf")


def load_head(ckpt: Path, device: torch.device) -> RFHead:
    """The RF head of ``ckpt`` in eval mode on ``device`` (every weight present and used)."""
    ckpt = Path(ckpt)
    try:
        config = RFHeadConfig.from_dict(json.loads((ckpt / HEAD_CONFIG).read_text()))
        weights = load_file(str(ckpt / HEAD_WEIGHTS))
    except (OSError, ValueError) as exc:
        raise ClapDataError(f"{ckpt} has no readable RF head ({HEAD_CONFIG} + {HEAD_WEIGHTS}): {exc}") from None
    head = RFHead(config)
    try:
        head.load_state_dict(weights)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        raise ClapDataError(f"{ckpt}/{HEAD_WEIGHTS} does not fit its {HEAD_CONFIG}: {reason[:300]}") from None
    return head.to(device).eval()
