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

The folder loads with stock ``AutoModelForImageTextToText``/``AutoProcessor.from_pretrained(CKPT)``. Exporting,
clearing (``--overwrite`` empties only a folder that holds a CLAP-NTP run) and reading are
:mod:`clap_data.training.policy_checkpoint`'s, shared with CLAP-RF; this module names the kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clap_data.training import policy_checkpoint

KIND = "clap-ntp"
LABEL = "CLAP-NTP"


def clear_ntp_checkpoint(ckpt: Path) -> None:
    """Empty ``ckpt`` for ``--overwrite`` (its dot files, e.g. the lock, stay); refuses any other folder."""
    policy_checkpoint.clear_run(ckpt, KIND, LABEL)


def export_policy(ckpt: Path, model: Any, processor: Any, meta: dict[str, Any]) -> None:
    """The model and processor in ``save_pretrained`` form, then ``training.json`` (``meta`` + the kind)."""
    policy_checkpoint.export(ckpt, model, processor, meta, KIND)


def read_policy_meta(ckpt: Path) -> dict[str, Any]:
    """``training.json`` of a CLAP-NTP checkpoint, refusing other folders with a sentence."""
    return policy_checkpoint.read_meta(ckpt, KIND, LABEL, "clap-data train ntp")
