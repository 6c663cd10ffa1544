"""A CLAP-NTP checkpoint folder: what ``train ntp`` writes and ``NTPPolicy``/``eval ntp`` read.

    CKPT/
      config.json, model*.safetensors, generation_config.json   the VLM, ``save_pretrained`` form (any size)
      tokenizer*, chat_template*, processor/preprocessor configs  its processor, the action tokens included
      training.json       kind "clap-ntp", the run's settings, step, last metrics, the Act-VAE (sha256 + folder),
                          the statistics of every embodiment (values and ids, from the shards' manifest), which arms
                          each embodiment moves, Nq, K and the id of <ACT_0>
      training_state.pt   everything a rerun resumes from (clap_data.train_state): weights, optimizer, scheduler,
                          RNG streams, step and the run's settings
      .lock, .writer.lock the launching command's lock, and rank 0's while it trains

The folder loads with stock ``AutoModelForImageTextToText``/``AutoProcessor.from_pretrained(CKPT)``. The files of
an export are written into a scratch folder inside CKPT and renamed into place one by one, ``training_state.pt``
first (as the Act-VAE's, :mod:`clap_data.act_vae.checkpoint`): after a crash the resume point is complete even
if the exported model is one save behind. ``--overwrite`` empties only a folder that holds a CLAP-NTP run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clap_data.act_vae.checkpoint import (
    TRAINING_META_NAME,
    TRAINING_STATE_NAME,
    read_training_meta,
    write_training_meta,
)
from clap_data.errors import ClapDataError
from clap_data.models.checkpoint import EXPORT_PREFIX

KIND = "clap-ntp"


def is_ntp_run(ckpt: Path) -> bool:
    return read_training_meta(ckpt).get("kind") == KIND or (Path(ckpt) / TRAINING_STATE_NAME).is_file()


def clear_ntp_checkpoint(ckpt: Path) -> None:
    """Empty ``ckpt`` for ``--overwrite`` (its dot files, e.g. the lock, stay); refuses any other folder."""
    ckpt = Path(ckpt)
    entries = [p for p in ckpt.iterdir() if not p.name.startswith(".")] if ckpt.is_dir() else []
    if not entries:
        return
    if not is_ntp_run(ckpt):
        raise ClapDataError(f"{ckpt} holds files that are not a CLAP-NTP checkpoint's; refusing to overwrite it")
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def export_policy(ckpt: Path, model: Any, processor: Any, meta: dict[str, Any]) -> None:
    """The model and processor in ``save_pretrained`` form, then ``training.json`` (``meta`` + the kind)."""
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ckpt, prefix=EXPORT_PREFIX) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for path in Path(tmp).iterdir():
            os.replace(path, ckpt / path.name)
    write_training_meta(ckpt, {"kind": KIND, **meta})


def read_policy_meta(ckpt: Path) -> dict[str, Any]:
    """``training.json`` of a CLAP-NTP checkpoint, refusing other folders with a sentence."""
    meta = read_training_meta(ckpt)
    if meta.get("kind") != KIND:
        raise ClapDataError(f"{ckpt} is not a CLAP-NTP checkpoint ({TRAINING_META_NAME} of kind {KIND} is missing); "
                            "train one with clap-data train ntp")
    return meta
