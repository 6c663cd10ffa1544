"""The one held-out split every stage uses (the Act-VAE, the VD-VAE, export, the policies).

A split must follow the episode, not its position: ``episode_index`` is renumbered by a merge or a
re-ingest with other episodes, and hashing it put episode 3 of every dataset on the same side. So
an episode is keyed on its provenance — the source dataset it came from and its id there, both
recorded per episode at ingest (``source/dataset_id``, ``source/episode_id``) — and the same
episode falls on the same side in every dataset that holds it. Datasets ingested before
``source/dataset_id`` existed are keyed on ``source/dataset`` (the source kind) instead.

* ``episodes``: an episode is held out when a hash of its key falls below ``fraction``.
* ``tail``: the last ``fraction`` of every episode is held out; training chunks must end before
  it (no training chunk sees a held-out frame), held-out chunks start inside it. For datasets with
  very few episodes, such as the two-episode Astribot sample.

Checkpoints record the split as :meth:`Holdout.to_dict` (mode, fraction and the key scheme).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from clap_data.actions import CHUNK_SIZE
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata

HOLDOUT_MODES = ("episodes", "tail")
SPLIT_KEY = "provenance"  # what an episode is hashed on: source dataset id + source episode id
DATASET_ID_COLUMN = "source/dataset_id"
_PROVENANCE_COLUMNS = ("episode_index", "source/dataset", "source/episode_id")


def unit_hash(text: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``text`` (same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def source_dataset_id(source_name: str, source_root: Path) -> str:
    """The id ingest records for a source dataset: its kind and its folder's name
    (``astribot:astribot_s1_dummy``), the same on every machine that holds that folder."""
    return f"{source_name}:{Path(source_root).absolute().name}"


def episode_keys(meta: DatasetMetadata) -> dict[int, str]:
    """Episode index → provenance key (``<dataset id>/<source episode id>``) of a unified dataset."""
    present = set(meta.episode_columns())
    missing = [c for c in _PROVENANCE_COLUMNS if c not in present]
    if missing:
        raise ClapDataError(f"{meta.root}: the episodes metadata has no {', '.join(missing)}: not a clap-data dataset")
    dataset_column = DATASET_ID_COLUMN if DATASET_ID_COLUMN in present else "source/dataset"
    table = meta.episodes(["episode_index", dataset_column, "source/episode_id"])
    return {
        int(index): f"{dataset}/{episode}"
        for index, dataset, episode in zip(*(table.column(i).to_pylist() for i in range(3)), strict=True)
    }


@dataclass(frozen=True)
class Holdout:
    """Which chunks are held out of training (see the module docstring)."""

    mode: str = "episodes"
    fraction: float = 0.1
    key: str = SPLIT_KEY

    def __post_init__(self) -> None:
        if self.mode not in HOLDOUT_MODES:
            raise ClapDataError(f"holdout mode must be one of {', '.join(HOLDOUT_MODES)}, not {self.mode!r}")
        if not 0.0 <= self.fraction < 1.0:
            raise ClapDataError(f"holdout fraction must lie in [0, 1), got {self.fraction}")
        if self.key != SPLIT_KEY:
            raise ClapDataError(f"this clap-data splits episodes by {SPLIT_KEY}, not {self.key!r}")

    def episode_held_out(self, key: str) -> bool:
        return unit_hash(f"clap-holdout:{key}") < self.fraction

    def starts(self, key: str, frames: int, held_out: bool) -> NDArray[np.int64]:
        """Chunk start frames of the episode with provenance ``key`` on the requested side of the split."""
        every = np.arange(frames, dtype=np.int64)
        if self.mode == "episodes":
            return every if self.episode_held_out(key) == held_out else every[:0]
        cut = int(np.floor(frames * (1.0 - self.fraction)))
        if held_out:
            return every[cut:] if self.fraction > 0 else every[:0]
        return every[every + CHUNK_SIZE <= cut] if self.fraction > 0 else every

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
