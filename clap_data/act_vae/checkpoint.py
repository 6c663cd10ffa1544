"""An Act-VAE checkpoint folder: what ``train`` writes and ``tokenize``/``detokenize``/``eval`` read.

    CKPT/
      model.safetensors    weights (huggingface_hub's PyTorchModelHubMixin layout, loadable from the Hub)
      config.json          ActVAEConfig
      training.json        what produced it: step, datasets, statistics, holdout, last metrics, sha256
      training_state.pt    everything a rerun resumes from (clap_data.train_state): weights, code-usage
                           counts, optimizer, RNG streams, step, log window and the run's settings

Every file is replaced atomically, ``training_state.pt`` first, so after a crash the resume point is
complete even if the exported weights are one save behind (a rerun exports them again).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clap_data.atomic import write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE, checkpoint_sha256
from clap_data.models.act_vae import WEIGHTS_NAME

CONFIG_NAME = "config.json"
TRAINING_META_NAME = "training.json"
TRAINING_STATE_NAME = "training_state.pt"


def save_weights(model: ActVAE, ckpt: Path) -> str:
    """Write ``model.safetensors`` + ``config.json`` into ``ckpt`` atomically; return the sha256."""
    ckpt.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ckpt, prefix=".export-") as tmp:
        model.save_pretrained(tmp)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(Path(tmp) / name, ckpt / name)
    return checkpoint_sha256(ckpt)


def write_training_meta(ckpt: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(ckpt / TRAINING_META_NAME, meta)


def read_training_meta(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / TRAINING_META_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"{path} cannot be read: {exc}") from None


def load_act_vae(ckpt: Path, device: str = "cpu") -> tuple[ActVAE, str]:
    """The model in eval mode on ``device`` and its sha256 identity, from a local checkpoint folder
    (a Hub repo id works too once downloaded: ``ActVAE.from_pretrained`` takes either)."""
    ckpt = Path(ckpt)
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if not (ckpt / name).is_file()]
    if missing:
        raise ClapDataError(f"{ckpt} is not an Act-VAE checkpoint: {', '.join(missing)} missing (train one with: clap-data train act-vae)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the hub mixin prints "Loading weights from local directory"
            model = ActVAE.from_pretrained(ckpt)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ClapDataError(f"{ckpt} cannot be loaded as an Act-VAE checkpoint: {exc}") from None
    return model.to(device).eval(), checkpoint_sha256(ckpt)


def clear_checkpoint(ckpt: Path) -> None:
    """Remove what a checkpoint folder holds (``--overwrite``), refusing folders that are not one."""
    if not ckpt.exists():
        return
    known = {WEIGHTS_NAME, CONFIG_NAME, TRAINING_META_NAME, TRAINING_STATE_NAME, ".lock"}
    foreign = [p.name for p in ckpt.iterdir() if p.name not in known and not p.name.startswith(".")]
    if foreign:
        raise ClapDataError(f"{ckpt} holds files that are not a checkpoint's ({', '.join(sorted(foreign)[:3])}); refusing to overwrite it")
    for name in known - {".lock"}:
        (ckpt / name).unlink(missing_ok=True)
    for leftover in ckpt.glob(".export-*"):
        shutil.rmtree(leftover, ignore_errors=True)
