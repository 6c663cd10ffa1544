"""The on-disk layouts of LeRobot datasets (v2.0/v2.1 and v3.0), read without importing lerobot.

Stock lerobot (0.4 and later) refuses v2.x datasets and, for v3.0, loads every data file of the
dataset into one memory-mapped table before it can return a single row. An ingest worker needs
one episode, so this module reads the layout directly and touches only that episode's bytes:

- **v2.0 / v2.1**: episodes are listed in ``meta/episodes.jsonl``; each episode has its own
  parquet file and one mp4 per camera (``data_path`` / ``video_path`` templates of
  ``meta/info.json``, formatted with ``episode_chunk = episode_index // chunks_size``).
- **v3.0**: episodes are listed in ``meta/episodes/chunk-*/file-*.parquet``; many episodes share a
  data file (the rows whose global ``index`` is in ``[dataset_from_index, dataset_to_index)``,
  read with a row filter so other episodes' row groups are skipped) and a video file per camera
  (the episode's frames start at ``round(from_timestamp * fps)`` and number ``length``; lerobot
  encodes every episode separately before concatenating, so that frame is a keyframe).

The v2 and v3 templates name their fields differently (``episode_chunk`` vs ``chunk_index``), and
both are taken from ``meta/info.json`` rather than assumed, as FORMATS.md asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clap_data.errors import ClapDataError
from clap_data.sources.base import EpisodeRejected, VideoWindow, require_file
from clap_data.sources.metadata_io import read_json, read_jsonl

INFO_PATH = "meta/info.json"
V2_EPISODES_PATH = "meta/episodes.jsonl"
V2_TASKS_PATH = "meta/tasks.jsonl"
V3_EPISODES_GLOB = "meta/episodes/chunk-*/file-*.parquet"
V3_TASKS_PATH = "meta/tasks.parquet"
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
# lerobot's default ``tolerance_s``: a row's timestamp must be frame_index / fps within this.
TIMESTAMP_TOLERANCE_S = 1e-4
# Columns every LeRobot data file has; the reader checks the episode's clock with them.
CLOCK_COLUMNS = ("timestamp", "frame_index", "episode_index", "index")


def _read_parquet_meta(path: Path, columns: list[str], what: str) -> pa.Table:
    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ClapDataError(f"{what} {path} lacks column(s) {', '.join(missing)}")
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise ClapDataError(f"{what} {path} cannot be read: {exc}") from None


@dataclass(frozen=True)
class LayoutEpisode:
    """Where one episode's rows and frames are; JSON-able so it travels in ``EpisodeRef.details``.

    ``rows`` is ``[dataset_from_index, dataset_to_index)`` of the ``index`` column for v3.0 and
    None for v2.x (the whole file). ``videos`` maps a video key to ``(file, start, count)``;
    ``count`` is None where the file holds just this episode (v2.x).
    """

    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: str
    rows: tuple[int, int] | None
    videos: dict[str, tuple[str, int, int | None]]

    def to_details(self) -> dict[str, Any]:
        return {
            "episode_index": self.index,
            "length": self.length,
            "tasks": list(self.tasks),
            "data_file": self.data_file,
            "rows": list(self.rows) if self.rows is not None else None,
            "videos": {key: list(window) for key, window in self.videos.items()},
        }

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> LayoutEpisode:
        rows = details["rows"]
        return cls(
            index=int(details["episode_index"]),
            length=int(details["length"]),
            tasks=tuple(details["tasks"]),
            data_file=str(details["data_file"]),
            rows=(int(rows[0]), int(rows[1])) if rows is not None else None,
            videos={key: (str(p), int(s), None if c is None else int(c)) for key, (p, s, c) in details["videos"].items()},
        )


class LeRobotLayout:
    """A LeRobot dataset folder: its metadata (read once, on the driver) and per-episode reads."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClapDataError(f"source folder {self.root} does not exist")
        info_path = self.root / INFO_PATH
        info = read_json(info_path, "metadata file", "is this a LeRobot dataset?")
        if not isinstance(info, dict):
            raise ClapDataError(f"metadata file {info_path} is not a JSON object")
        self.version = str(info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise ClapDataError(
                f"{info_path} declares codebase_version {info.get('codebase_version')!r}; "
                f"the LeRobot reader supports {', '.join(SUPPORTED_VERSIONS)}"
            )
        try:
            self.fps = int(info["fps"])
            self.data_path = str(info["data_path"])
            self.video_path = str(info.get("video_path") or "")
            self.chunks_size = int(info.get("chunks_size", 1000))
            self.features: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in dict(info["features"]).items()}
        except KeyError as exc:
            raise ClapDataError(f"metadata file {info_path} has no {exc} entry") from None
        except (TypeError, ValueError) as exc:
            raise ClapDataError(f"metadata file {info_path} has an unusable fps, chunks_size or features entry ({exc})") from None
        if self.fps <= 0:
            raise ClapDataError(f"metadata file {info_path} declares fps {self.fps}; it must be positive")
        self.robot_type = info.get("robot_type")
        self.video_keys = tuple(key for key, ft in self.features.items() if ft.get("dtype") == "video")
        if self.video_keys and not self.video_path:
            raise ClapDataError(f"metadata file {info_path} declares video features but no video_path")

    @property
    def is_v3(self) -> bool:
        return self.version == "v3.0"

    def tasks(self) -> dict[int, str]:
        """``task_index`` → task text, from ``meta/tasks.parquet`` (v3) or ``meta/tasks.jsonl`` (v2)."""
        if self.is_v3:
            table = _read_parquet_meta(self.root / V3_TASKS_PATH, ["task_index", "task"], "task list")
            return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(), table.column("task").to_pylist(), strict=True)}
        rows = read_jsonl(self.root / V2_TASKS_PATH, "task list")
        try:
            return {int(row["task_index"]): str(row["task"]) for row in rows}
        except (KeyError, TypeError, ValueError) as exc:
            raise ClapDataError(f"task list {self.root / V2_TASKS_PATH} has an entry without a usable {exc}") from None

    def episodes(self, video_keys: tuple[str, ...]) -> list[LayoutEpisode]:
        """Every listed episode in ``episode_index`` order, with the frames of ``video_keys``."""
        episodes = self._v3_episodes(video_keys) if self.is_v3 else self._v2_episodes(video_keys)
        seen: set[int] = set()
        for episode in episodes:
            if episode.index in seen:
                raise ClapDataError(f"the episode metadata of {self.root} lists episode {episode.index} twice")
            seen.add(episode.index)
        return sorted(episodes, key=lambda e: e.index)

    def _v2_episodes(self, video_keys: tuple[str, ...]) -> list[LayoutEpisode]:
        path = self.root / V2_EPISODES_PATH
        episodes = []
        for number, row in enumerate(read_jsonl(path, "episode list"), start=1):
            try:
                index, length, tasks = int(row["episode_index"]), int(row["length"]), tuple(str(t) for t in row.get("tasks", []))
            except (KeyError, TypeError, ValueError) as exc:
                raise ClapDataError(f"episode list {path} line {number} lacks a usable {exc} entry") from None
            chunk = index // self.chunks_size
            videos = {
                key: (self.video_path.format(episode_chunk=chunk, video_key=key, episode_index=index), 0, None)
                for key in video_keys
            }
            data_file = self.data_path.format(episode_chunk=chunk, episode_index=index)
            episodes.append(LayoutEpisode(index, length, tasks, data_file, None, videos))
        return episodes

    def _v3_episodes(self, video_keys: tuple[str, ...]) -> list[LayoutEpisode]:
        files = sorted(self.root.glob(V3_EPISODES_GLOB))
        if not files:
            raise ClapDataError(f"{self.root} has no episode metadata ({V3_EPISODES_GLOB}); is the dataset complete?")
        video_columns = [f"videos/{key}/{field}" for key in video_keys for field in ("chunk_index", "file_index", "from_timestamp")]
        columns = [
            "episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
            "dataset_from_index", "dataset_to_index", *video_columns,
        ]
        episodes = []
        for path in files:
            for row in _read_parquet_meta(path, columns, "episode metadata file").to_pylist():
                if any(row[c] is None for c in columns if c != "tasks"):
                    raise ClapDataError(f"episode metadata file {path} has an episode with empty fields")
                index = int(row["episode_index"])
                videos = {
                    key: (
                        self.video_path.format(
                            video_key=key,
                            chunk_index=row[f"videos/{key}/chunk_index"],
                            file_index=row[f"videos/{key}/file_index"],
                        ),
                        round(float(row[f"videos/{key}/from_timestamp"]) * self.fps),
                        int(row["length"]),
                    )
                    for key in video_keys
                }
                data_file = self.data_path.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
                rows = (int(row["dataset_from_index"]), int(row["dataset_to_index"]))
                episodes.append(LayoutEpisode(index, int(row["length"]), tuple(row["tasks"] or ()), data_file, rows, videos))
        return episodes

    def video_window(self, episode: LayoutEpisode, key: str) -> VideoWindow:
        """The episode's frames of one camera; rejects the episode if the file is absent."""
        relative, start, count = episode.videos[key]
        path = require_file(self.root / relative, self.root, "video file")
        return VideoWindow(path, start, count)

    def read_rows(self, episode: LayoutEpisode, columns: list[str]) -> pa.Table:
        """The episode's rows (``columns`` plus the clock columns), checked against its metadata."""
        relative = episode.data_file
        path = require_file(self.root / relative, self.root, "data file")
        wanted = list(dict.fromkeys([*columns, *CLOCK_COLUMNS]))
        try:
            names = pq.read_schema(path).names
            missing = [c for c in wanted if c not in names]
            if missing:
                raise EpisodeRejected("missing_column", relative, f"data file {relative} lacks column(s) {', '.join(missing)}")
            table = pq.read_table(path, columns=wanted) if episode.rows is None else _read_index_range(path, wanted, *episode.rows)
        except (pa.ArrowException, OSError) as exc:
            raise EpisodeRejected("unreadable_file", relative, f"data file {relative} cannot be read ({exc})") from None
        where = relative if episode.rows is None else f"{relative} rows index {episode.rows[0]}..{episode.rows[1] - 1}"
        if table.num_rows == 0:
            raise EpisodeRejected("empty", relative, f"data file {where} has no rows for episode {episode.index}")
        if table.num_rows != episode.length:
            raise EpisodeRejected(
                "frame_count", relative,
                f"data file {where} has {table.num_rows} rows but the episode metadata declares length {episode.length}",
            )
        owners = pc.unique(table.column("episode_index")).to_pylist()
        if owners != [episode.index]:
            raise EpisodeRejected(
                "episode_rows", relative,
                f"data file {where} holds rows of episode(s) {owners}, not of episode {episode.index} alone",
            )
        return table

    def check_clock(self, table: pa.Table, relative: str) -> None:
        """Frames must be complete and in order, at ``frame_index / fps``: the unified dataset puts
        frame i at i / fps and takes video frame ``start + i``, which is only the same frame if the
        source's clock says so (lerobot itself refuses timestamps off by more than 1e-4 s)."""
        frame_index = table.column("frame_index").to_numpy()
        expected = np.arange(len(frame_index))
        if not np.array_equal(frame_index, expected):
            row = int(np.argmax(frame_index != expected))
            raise EpisodeRejected(
                "frame_index", relative,
                f"data file {relative} has frame_index {frame_index[row]} at row {row}: frames are missing or out of order",
            )
        timestamps = table.column("timestamp").to_numpy().astype(np.float64)
        if not np.isfinite(timestamps).all():
            raise EpisodeRejected("timestamps", relative, f"data file {relative} has NaN or Inf timestamps")
        drift = np.abs(timestamps - expected / self.fps)
        if (drift > TIMESTAMP_TOLERANCE_S).any():
            row = int(np.argmax(drift > TIMESTAMP_TOLERANCE_S))
            raise EpisodeRejected(
                "timestamps", relative,
                f"data file {relative} has timestamp {timestamps[row]:.6f} at frame {row}, "
                f"not {row / self.fps:.6f} (frame_index / fps at {self.fps} fps)",
            )


def _read_index_range(path: Path, columns: list[str], first: int, stop: int) -> pa.Table:
    """Rows with ``first <= index < stop``, reading only the row groups whose ``index`` statistics
    overlap that range: a v3 data file holds up to ~100 MB of other episodes (lerobot writes one
    row group per episode)."""
    parquet = pq.ParquetFile(path)
    leaf = next(i for i in range(len(parquet.schema)) if parquet.schema.column(i).path == "index")
    groups = []
    for group in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(group).column(leaf).statistics
        if stats is None or not stats.has_min_max or (stats.min < stop and stats.max >= first):
            groups.append(group)
    table = parquet.read_row_groups(groups, columns=columns)
    index = table.column("index")
    return table.filter(pc.and_(pc.greater_equal(index, first), pc.less(index, stop)))


def column_matrix(table: pa.Table, name: str, relative: str) -> np.ndarray:
    """A numeric column as float64 ``[rows, width]``: lerobot stores shape-(1,) features as plain
    scalars and longer ones as (fixed-size) lists, so both are accepted."""
    column = table.column(name).combine_chunks()
    if column.null_count:
        row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise EpisodeRejected("bad_shape", relative, f"data file {relative} column {name} is empty at row {row}")
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        return column.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 1)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.argmax(lengths != lengths[0]))
        raise EpisodeRejected(
            "bad_shape", relative, f"data file {relative} column {name} has {lengths[row]} values at row {row} but {lengths[0]} at row 0"
        )
    values = pc.list_flatten(column)
    if values.null_count:
        raise EpisodeRejected("bad_shape", relative, f"data file {relative} column {name} has empty values")
    return values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(column), -1)
