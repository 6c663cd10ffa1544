"""An Act-VAE checkpoint folder: what ``train`` writes and ``tokenize``/``detokenize``/``eval`` read.

    CKPT/
      model.safetensors    weights (huggingface_hub's PyTorchModelHubMixin layout, loadable from the Hub)
      config.json          ActVAEConfig
      training.json        what produced it: step, datasets, statistics, holdout, last metrics, sha256
      training_state.pt    everything a rerun resumes from (clap_data.train_state): weights, code-usage
                           counts, optimizer, RNG streams, step, log window and the run's settings
      import.json          instead of the two above in imported weights (clap-data import act-vae): their
                           source file, its sha256 and format, what was skipped (clap_data.act_vae.importing)

The first two are any model's checkpoint (:mod:`clap_data.models.checkpoint` writes and reads them); this
module holds what only an Act-VAE training run adds. Every file is replaced atomically,
``training_state.pt`` first, so after a crash the resume point is complete even if the exported weights
are one save behind (a rerun exports them again).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clap_data.atomic import write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE
from clap_data.models.checkpoint import CONFIG_NAME, EXPORT_PREFIX, WEIGHTS_NAME, load_model, save_model

TRAINING_META_NAME = "training.json"
TRAINING_STATE_NAME = "training_state.pt"
IMPORT_META_NAME = "import.json"


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
    hint = "train one with clap-data train act-vae, or import released weights with clap-data import act-vae"
    return load_model(ActVAE, ckpt, device, kind="an Act-VAE", hint=hint)


_CHECKPOINT_FILES = {WEIGHTS_NAME, CONFIG_NAME, TRAINING_META_NAME, TRAINING_STATE_NAME, IMPORT_META_NAME}


def refuse_foreign_files(ckpt: Path) -> None:
    """Refuse a folder holding anything but a checkpoint's files: ``--overwrite`` never deletes other work."""
    foreign = [p.name for p in ckpt.iterdir() if p.name not in _CHECKPOINT_FILES and not p.name.startswith(".")]
    if foreign:
        raise ClapDataError(f"{ckpt} holds files that are not a checkpoint's ({', '.join(sorted(foreign)[:3])}); refusing to overwrite it")


def clear_checkpoint(ckpt: Path) -> None:
    """Remove what a checkpoint folder holds (``--overwrite``), refusing folders that are not one."""
    if not ckpt.exists():
        return
    refuse_foreign_files(ckpt)
    for name in _CHECKPOINT_FILES:
        (ckpt / name).unlink(missing_ok=True)
    for leftover in ckpt.glob(f"{EXPORT_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def export_weights(ckpt: Path, model: Any, meta: dict[str, Any]) -> str:
    """The weights, then ``training.json`` (``meta`` plus their sha256); returns the sha256. Used by every
    trainer whose folder has this layout (the Act-VAE's and the VD-VAE's)."""
    sha = save_model(model, ckpt)
    write_training_meta(ckpt, {**meta, "sha256": sha})
    return sha


def resume_point(
    ckpt: Path, identity: dict[str, Any], overwrite: bool, kind: str,
    normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The saved training state of the run in ``ckpt`` to continue from, None to start afresh (or with
    ``overwrite``); refuses a folder that is not a resumable ``kind`` run, and a run whose saved settings
    (``normalize`` may bring old ones up to date) differ from ``identity``."""
    from clap_data import train_state

    if overwrite:
        clear_checkpoint(ckpt)
        return None
    state_file = ckpt / TRAINING_STATE_NAME
    if not state_file.is_file():
        if ckpt.exists() and any(p for p in ckpt.iterdir() if not p.name.startswith(".")):
            raise ClapDataError(f"{ckpt} exists and is not a resumable {kind} run; choose another --out or pass --overwrite")
        return None
    saved = train_state.load(state_file)
    run = dict(saved["extra"].get("run", {}))
    if normalize is not None:
        run = normalize(run)
    if run != identity:
        changed = sorted(k for k in identity.keys() | run.keys() if run.get(k) != identity.get(k))
        raise ClapDataError(
            f"{ckpt} holds a run with other settings ({', '.join(changed)} differ); "
            "pass --overwrite to start afresh or choose another --out"
        )
    return saved
