"""One reader of what a clap-data dataset says about itself.

Every command needs the same few facts — is this a clap-data dataset of a schema we read, its
embodiment and fps, its episodes and their frame ranges, its data files, which tokenizer made its
token columns, its manifest — and every one of them used to open ``meta/info.json`` on its own,
each with its own idea of what a broken file looks like. They all go through :class:`DatasetMetadata`
now, so a dataset that is not ours, of an unknown schema or with unreadable metadata is refused
with the same sentence everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.manifest import MANIFEST_PATH, Manifest
from clap_data.schemas import CLAP_META_PATH, TOKEN_COLUMNS, UnknownSchemaError, frame_features, read_clap_meta

EPISODE_COLUMNS = ["episode_index", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index", "data/file_index"]


def read_info(root: Path) -> dict[str, Any]:
    """A LeRobot dataset's ``meta/info.json``, refused with a sentence when missing, unreadable or not LeRobot's."""
    path = Path(root) / layout.INFO_PATH
    if not path.is_file():
        raise ClapDataError(f"{root} is not a LeRobot dataset: {layout.INFO_PATH} is missing")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"{path} cannot be read: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise ClapDataError(f"{path} is not LeRobot metadata: it has no 'features' mapping")
    return info


def has_unified_features(info: dict[str, Any]) -> bool:
    """Whether a LeRobot dataset's features include schema v1's frame features, as our writers define them."""
    features = info.get("features", {})
    return all(
        name in features and features[name].get("dtype") == ft["dtype"] and list(features[name].get("shape", []))
        == ft["shape"] and features[name].get("names") == ft["names"]
        for name, ft in frame_features().items()
    )


def edited_by_lerobot(root: Path) -> bool:
    """A LeRobot v3.0 dataset with the unified features but no ``meta/clap_data.json``: ours, rewritten by
    LeRobot's tools."""
    try:
        info = read_info(root)
    except ClapDataError:
        return False
    return (str(info.get("codebase_version", "")).startswith("v3") and has_unified_features(info)
            and not (Path(root) / CLAP_META_PATH).is_file())


def adopt_hint(root: Path) -> str:
    """The sentence every command gives for such a dataset."""
    return (f"{root} is a unified dataset rewritten by LeRobot's tools (lerobot-edit-dataset, aggregate_datasets): "
            f"it has clap-data's features but no {CLAP_META_PATH}; run `clap-data adopt {root}` to restore its "
            "clap-data metadata")


@dataclass(frozen=True)
class DatasetMetadata:
    """``meta/info.json`` and ``meta/clap_data.json`` of one dataset, read once and checked."""

    root: Path
    info: dict[str, Any]
    clap: dict[str, Any]

    @classmethod
    def load(cls, root: Path) -> DatasetMetadata:
        """Read a clap-data dataset's metadata; refuses what is not one, or of an unknown schema."""
        root = Path(root).absolute()
        info = read_info(root)
        try:
            clap = read_clap_meta(root)
        except UnknownSchemaError as exc:
            raise ClapDataError(adopt_hint(root) if edited_by_lerobot(root) else str(exc)) from None
        return cls(root, info, clap)

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def robot_type(self) -> str:
        value = self.info.get("robot_type")
        if not isinstance(value, str) or not value:
            raise ClapDataError(f"{self.root / layout.INFO_PATH} names no robot_type")
        return value

    @property
    def fps(self) -> int:
        value = self.info.get("fps")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ClapDataError(f"{self.root / layout.INFO_PATH}: fps {value!r} is not a positive integer")
        return value

    @property
    def total_episodes(self) -> int:
        return int(self.info.get("total_episodes") or 0)

    @property
    def total_frames(self) -> int:
        return int(self.info.get("total_frames") or 0)

    @property
    def cameras(self) -> list[str]:
        return [key.removeprefix("observation.images.") for key, ft in self.features.items() if ft.get("dtype") == "video"]

    @property
    def video_keys(self) -> list[str]:
        return [key for key, ft in self.features.items() if ft.get("dtype") == "video"]

    @property
    def token_columns(self) -> list[str]:
        return [column for column in TOKEN_COLUMNS if column in self.features]

    def token_identity(self, column: str) -> dict[str, Any] | None:
        """The identity of the tokenizer that wrote ``column`` (the feature's ``info``), if present."""
        return self.features.get(column, {}).get("info")

    def data_files(self) -> list[str]:
        """The dataset's data files, relative to its root, in order."""
        return sorted(str(p.relative_to(self.root)) for p in (self.root / "data").glob("chunk-*/file-*.parquet"))

    def episodes(self, columns: list[str] | None = None) -> pa.Table:
        """The episodes metadata (one row per episode; default: lengths, ranges and data file)."""
        try:
            return pq.ParquetDataset(self.root / "meta/episodes").read(columns=columns or EPISODE_COLUMNS)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ClapDataError(f"{self.root}: the episodes metadata (meta/episodes) cannot be read ({exc})") from None

    def episode_columns(self) -> list[str]:
        """The columns of the episodes metadata (provenance columns vary with the source)."""
        try:
            return list(pq.ParquetDataset(self.root / "meta/episodes").schema.names)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ClapDataError(f"{self.root}: the episodes metadata (meta/episodes) cannot be read ({exc})") from None

    def video_episode_columns(self) -> list[str]:
        """The episodes-metadata columns that place each episode in each camera's video files."""
        names = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
        return [f"videos/{key}/{name}" for key in self.video_keys for name in names]

    def episode_lengths(self) -> dict[int, int]:
        """Episode index → frames, from the episodes metadata only."""
        table = self.episodes(["episode_index", "length"])
        return dict(zip(table.column("episode_index").to_pylist(), table.column("length").to_pylist(), strict=True))

    def manifest(self) -> Manifest | None:
        """The manifest of the dataset's files, None for a dataset written before manifests existed."""
        return Manifest.read(self.root) if (self.root / MANIFEST_PATH).is_file() else None

    def snapshot(self) -> tuple[int, int, str]:
        """What identifies this very dataset on disk: a replaced dataset (ingest --overwrite renames a
        new folder into place) has another inode; an updated one (a column commit) another info."""
        status = self.root.stat()
        return status.st_dev, status.st_ino, json.dumps(self.info, sort_keys=True)
