"""What every policy checkpoint folder shares (CLAP-NTP's, :mod:`~clap_data.training.ntp_checkpoint`; CLAP-RF's,
:mod:`~clap_data.training.rf_checkpoint`): the VLM and its processor in ``save_pretrained`` form, a kind's own
extra files, ``training.json`` naming the kind, ``training_state.pt``.

Why one module: the two trainers export, clear (``--overwrite``) and read their folders the same way; only the
kind and the extra files differ. The files of an export are written into a scratch folder inside CKPT and renamed
into place one by one after ``training_state.pt`` was written (as the Act-VAE's, :mod:`clap_data.act_vae.
checkpoint`): after a crash the resume point is complete even if the exported model is one save behind.
``--overwrite`` empties only a folder that holds a run of its own kind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clap_data.act_vae.checkpoint import (
    TRAINING_META_NAME,
    TRAINING_STATE_NAME,
    read_training_meta,
    write_training_meta,
)
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.models.checkpoint import EXPORT_PREFIX


def is_run(ckpt: Path, kind: str) -> bool:
    """A run of ``kind``: its ``training.json`` says so, or it has a training state and no exported kind yet
    (a run killed before its first export)."""
    meta = read_training_meta(ckpt)
    return meta.get("kind") == kind or ("kind" not in meta and (Path(ckpt) / TRAINING_STATE_NAME).is_file())


def clear_run(ckpt: Path, kind: str, label: str) -> None:
    """Empty ``ckpt`` for ``--overwrite`` (its dot files, e.g. the lock, stay); refuses any folder that is not a
    run of ``kind`` (``label``: its name in the sentence, e.g. CLAP-NTP)."""
    ckpt = Path(ckpt)
    entries = [p for p in ckpt.iterdir() if not p.name.startswith(".")] if ckpt.is_dir() else []
    if not entries:
        return
    if not is_run(ckpt, kind):
        raise ClapDataError(f"{ckpt} holds files that are not a {label} checkpoint's; refusing to overwrite it")
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def export(ckpt: Path, model: Any, processor: Any, meta: dict[str, Any], kind: str,
           write_extra: Callable[[Path], None] | None = None) -> None:
    """The model and processor in ``save_pretrained`` form and whatever ``write_extra(folder)`` writes, each file
    renamed into ``ckpt``; then ``training.json`` (``meta`` + the kind)."""
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ckpt, prefix=EXPORT_PREFIX) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if write_extra is not None:
            write_extra(Path(tmp))
        for path in Path(tmp).iterdir():
            os.replace(path, ckpt / path.name)
    write_training_meta(ckpt, {"kind": kind, **meta})


def read_meta(ckpt: Path, kind: str, label: str, command: str) -> dict[str, Any]:
    """``training.json`` of a ``kind`` checkpoint, refusing other folders with a sentence naming the ``command``
    that makes one."""
    meta = read_training_meta(ckpt)
    if meta.get("kind") != kind:
        raise ClapDataError(f"{ckpt} is not a {label} checkpoint ({TRAINING_META_NAME} of kind {kind} is missing); "
                            f"train one with {command}")
    return meta


def weights_sha256(ckpt: Path) -> str:
    """The identity of a ``save_pretrained`` folder's weights: the sha256 of its ``*.safetensors`` files' names
    and sha256s, in name order (one file or a sharded set alike)."""
    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise ClapDataError(f"{ckpt} holds no *.safetensors weights")
    return hashlib.sha256("".join(f"{f.name}:{file_sha256(f)}\n" for f in files).encode()).hexdigest()
