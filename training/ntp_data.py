"""What CLAP-NTP reads from a shard folder (``schemas/shards_v1.py``): the manifest's identities and the samples.

Why a module of its own: the trainer, the evaluation and the policy all need the same few facts of an export —
which Act-VAE made the tokens (its sha256, ``Nq``, ``K``), the normalisation statistics of every embodiment
(values and id, to turn tokens back into robot units) and which arms each embodiment moves — and the trainer
needs its batches in an order that is a function of (seed, step) only, so that a resumed run sees the same ones.

The manifest keys read here (``manifest.json``; the exporter writes them)::

    schema, schema_version                    clap-data/shards, 1
    splits: {split: {shards: [{file, rows}],   the shard files of train/ and heldout/, and how many samples of
             embodiments}}                  each embodiment they hold
    act_vae: {checkpoint_sha256, checkpoint,  the tokenizer of every token column (pseudo-tokens use its codebook);
              num_queries, codebook_size}     checkpoint = its folder, as far as the exporter knew it
    statistics: {embodiment: {id, action: {q01, q99}, state: {q01, q99}}}
    mix: {weights: {dataset id: weight}}      the loader's mixing weights
    datasets: [{dataset_ids, embodiment}]     which embodiment each dataset is (robot-only streams need it)

:func:`iter_training_batches` streams the training batches through the shard loader
(``clap_data.training.loader``): memory stays bounded however large the export.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clap_data.actions import HUMAN, NormStats
from clap_data.errors import ClapDataError
from clap_data.schemas.shards_v1 import (
    ARM_MASK,
    CAMERAS_IN_PROMPT_ORDER,
    EMBODIMENT,
    SHARD_MANIFEST,
    TRAIN_SPLIT,
    image_column,
)
from clap_data.training.loader import iter_steps, read_manifest

Sample = dict[str, Any]  # one shard row; images decoded to H×W×3 uint8 arrays under "images" (camera → array)


@dataclass(frozen=True)
class ShardSet:
    """An export's manifest, read once and checked; the shard files of each split."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: Path) -> ShardSet:
        root = Path(root)
        manifest = read_manifest(root)  # its schema checked
        for key in ("act_vae", "statistics"):
            if not isinstance(manifest.get(key), dict):
                raise ClapDataError(f"{root / SHARD_MANIFEST} has no {key!r} entry: it was not written by "
                                    "clap-data export")
        return cls(root, manifest)

    @property
    def act_vae(self) -> dict[str, Any]:
        return self.manifest["act_vae"]

    @property
    def num_queries(self) -> int:
        return int(self.act_vae["num_queries"])

    @property
    def codebook_size(self) -> int:
        return int(self.act_vae["codebook_size"])

    @property
    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per embodiment: ``{id, action: {q01, q99}, state: {q01, q99}}`` (what the checkpoint records)."""
        return self.manifest["statistics"]

    def stats_ids(self) -> dict[str, str]:
        return {embodiment: entry["id"] for embodiment, entry in sorted(self.statistics.items())}

    def count(self, split: str) -> int:
        """Samples in ``split``, from the manifest's per-shard row counts."""
        return sum(int(shard["rows"]) for shard in self.manifest.get("splits", {}).get(split, {}).get("shards", []))

    def robot_count(self, split: str) -> int:
        """Robot samples in ``split`` (every embodiment but human), from the manifest's per-embodiment counts."""
        per = self.manifest.get("splits", {}).get(split, {}).get("embodiments", {})
        return sum(int(n) for embodiment, n in per.items() if embodiment != HUMAN)

    def robot_mix(self) -> dict[str, float]:
        """The manifest's mixing weights with every human dataset's set to 0: the loader's weights then leave
        human samples out of every epoch (CLAP-RF trains on robot chunks only: human video has no actions,
        METHOD.md §6), and the robot datasets keep their recorded shares."""
        weights = dict(self.manifest.get("mix", {}).get("weights", {}))
        entries = self.manifest.get("datasets")
        if not isinstance(entries, list):
            raise ClapDataError(f"{self.root / SHARD_MANIFEST} does not say which embodiment each dataset is; "
                                "export the shards again")
        for entry in entries:
            if entry.get("embodiment") == HUMAN:
                weights.update(dict.fromkeys(entry.get("dataset_ids", []), 0.0))
        return weights

    def files(self, split: str) -> list[Path]:
        entry = self.manifest.get("splits", {}).get(split)
        if not entry or not entry.get("shards"):
            raise ClapDataError(f"{self.root} has no {split} shards")
        return [self.root / shard["file"] for shard in entry["shards"]]

    def read(self, split: str, columns: list[str]) -> pa.Table:
        """Some columns of every shard of ``split`` (cheap: parquet reads only those columns)."""
        return pa.concat_tables(pq.read_table(f, columns=columns) for f in self.files(split))

    def embodiment_arm_masks(self, split: str = TRAIN_SPLIT) -> dict[str, list[bool]]:
        """Which arms each embodiment of ``split`` moves: an arm counts if any of its samples moves it."""
        table = self.read(split, [EMBODIMENT, ARM_MASK])
        masks: dict[str, np.ndarray] = {}
        for embodiment, mask in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
            masks[embodiment] = masks.get(embodiment, np.zeros(2, dtype=bool)) | np.asarray(mask, dtype=bool)
        return {name: [bool(v) for v in mask] for name, mask in sorted(masks.items())}


def norm_stats(table: dict[str, dict[str, Any]], embodiment: str, where: str) -> NormStats:
    """One embodiment's statistics from a recorded table, with the id it was recorded under."""
    if embodiment not in table:
        known = ", ".join(sorted(table)) or "none"
        raise ClapDataError(f"{where} has no statistics for embodiment {embodiment!r} (it has: {known})")
    stats = NormStats.from_table(table, embodiment, "recorded", where)
    return dataclasses.replace(stats, stats_id=str(table[embodiment]["id"]))


def _decode_images(row: dict[str, Any]) -> dict[str, np.ndarray]:
    images = {}
    for camera in CAMERAS_IN_PROMPT_ORDER:
        data = row.pop(image_column(camera), None)
        if data is not None:
            images[camera] = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    return images


def rows_to_samples(table: pa.Table) -> list[Sample]:
    samples = table.to_pylist()
    for sample in samples:
        sample["images"] = _decode_images(sample)
    return samples


def iter_samples(shards: ShardSet, split: str, batch_size: int) -> Iterator[list[Sample]]:
    """Every sample of ``split`` once, in file order, ``batch_size`` at a time (evaluation)."""
    for path in shards.files(split):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield rows_to_samples(pa.Table.from_batches([batch]))


def check_batch_fits(shards: ShardSet, samples: int, batch_size: int, world_size: int,
                     what: str = "training samples") -> None:
    """Refuse a global batch larger than the training split (an epoch would have no step)."""
    if samples < batch_size * world_size:
        raise ClapDataError(f"{shards.root} holds {samples} {what}, fewer than one global batch of "
                            f"{batch_size * world_size} ({batch_size} per worker × {world_size}); lower --batch-size")


def iter_training_batches(
    shards: ShardSet, batch_size: int, rank: int, world_size: int, seed: int, start_step: int = 0,
    robot_only: bool = False,
) -> Iterator[list[Sample]]:
    """This rank's part of every global batch from ``start_step`` on, endlessly (epoch after epoch), streamed by
    :func:`clap_data.training.loader.iter_steps`: the batches are a function of (seed, step, world size) only, so a
    resumed run sees the ones an uninterrupted run would, and memory stays bounded however large the shards.
    ``robot_only`` leaves the human samples out (:meth:`ShardSet.robot_mix`), deterministically as well."""
    if robot_only:
        check_batch_fits(shards, shards.robot_count(TRAIN_SPLIT), batch_size, world_size, "robot training samples")
    else:
        check_batch_fits(shards, shards.count(TRAIN_SPLIT), batch_size, world_size)
    for batch in iter_steps(shards.root, start_step=start_step, batch_size=batch_size, rank=rank,
                            world_size=world_size, seed=seed, drop_last=True,
                            mix=shards.robot_mix() if robot_only else True):
        yield batch.samples()
