"""Read what a clap-data dataset says about itself, for ``clap-data info`` and scripts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.schemas import ACTION_COLUMN, ARM_MASK_COLUMN, STATE_COLUMN


def dataset_summary(root: Path) -> dict[str, Any]:
    """The facts ``clap-data info --json`` prints. Refuses unknown schema versions. ``warnings``
    lists files that disagree with the manifest in size (a stat each; ``verify`` hashes them)."""
    meta = DatasetMetadata.load(root)
    quarantine_file = meta.root / layout.QUARANTINE_PATH
    try:
        rows = pq.read_table(quarantine_file).to_pylist() if quarantine_file.is_file() else []
    except (pa.ArrowException, OSError) as exc:
        raise ClapDataError(f"{quarantine_file} cannot be read: {exc}") from None
    try:
        manifest = meta.manifest()
    except ClapDataError as exc:
        manifest, warnings = None, [str(exc)]
    else:
        warnings = [] if manifest else [
            "no manifest (meta/clap_manifest.json): written by an older clap-data; `clap-data verify` checks less"
        ]
    if manifest is not None:
        warnings = [f"{problem}: the dataset was changed after clap-data wrote it; run clap-data verify "
                    "(clap-data adopt, if LeRobot's tools rewrote it)" for problem in manifest.size_problems(meta.root)]
    info = meta.info
    return {
        "path": str(root),
        "episodes": info.get("total_episodes"),
        "frames": info.get("total_frames"),
        "fps": info.get("fps"),
        "robot_type": info.get("robot_type"),
        "cameras": meta.cameras,
        "tasks": info.get("total_tasks"),
        "schema_version": meta.clap["schema_version"],
        "codebase_version": info.get("codebase_version"),
        "token_columns": meta.token_columns,
        "source": meta.clap.get("source", {}),
        "notices": meta.clap.get("notices", [])
        + [f"{column} is stale: {why}" for column, why in meta.clap.get("stale_columns", {}).items()],
        "warnings": warnings,
        "quarantine": [
            {"episode": row["source_episode"], "reason": row["reason"], "category": row["category"], "file": row["file"]}
            for row in rows
        ],
    }


@dataclass(frozen=True)
class EpisodeArrays:
    """The canonical arrays of one episode of a unified dataset."""

    episode_index: int
    state: np.ndarray  # [N, 14] float64
    action: np.ndarray  # [N, 14]
    arm_mask: np.ndarray  # [N, 2]


_ARRAY_COLUMNS = ["episode_index", STATE_COLUMN, ACTION_COLUMN, ARM_MASK_COLUMN]


def column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size-list column as a float64 ``[rows, width]`` matrix."""
    return np.asarray(table.column(name).combine_chunks().flatten(), dtype=np.float64).reshape(table.num_rows, -1)


def _arrays(table: pa.Table, episode_index: int) -> EpisodeArrays:
    return EpisodeArrays(
        episode_index, column_matrix(table, STATE_COLUMN), column_matrix(table, ACTION_COLUMN), column_matrix(table, ARM_MASK_COLUMN)
    )


def read_episode_arrays(root: Path, episode_index: int) -> EpisodeArrays:
    """One episode, read from its data file only (the episodes metadata says which)."""
    root = Path(root)
    episodes = pq.ParquetDataset(root / "meta/episodes", filters=[("episode_index", "=", episode_index)]).read(
        columns=["episode_index", "data/chunk_index", "data/file_index"]
    )
    if episodes.num_rows == 0:
        total = DatasetMetadata.load(root).total_episodes
        raise ClapDataError(f"{root} has no episode {episode_index} (it has {total}: 0..{int(total) - 1})")
    chunk, file = episodes.column("data/chunk_index")[0].as_py(), episodes.column("data/file_index")[0].as_py()
    data_file = root / layout.DATA_PATH.format(chunk_index=chunk, file_index=file)
    table = pq.read_table(data_file, columns=_ARRAY_COLUMNS, filters=[("episode_index", "=", episode_index)])
    return _arrays(table, episode_index)


def iter_episode_arrays(root: Path) -> Iterator[EpisodeArrays]:
    """Every episode in order, one parquet row group (= one episode) in memory at a time."""
    for data_file in sorted((Path(root) / "data").glob("chunk-*/file-*.parquet")):
        parquet = pq.ParquetFile(data_file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=_ARRAY_COLUMNS)
            indices = np.unique(table.column("episode_index").to_numpy())
            for episode_index in indices:
                rows = table.filter(pa.compute.equal(table.column("episode_index"), episode_index))
                yield _arrays(rows, int(episode_index))
