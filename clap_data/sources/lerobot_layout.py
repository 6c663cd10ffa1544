"""The on-disk layouts of LeRobot datasets (v2.0/v2.1 and v3.0), read without importing lerobot.

Stock lerobot (0.4 and later) refuses v2.x datasets and, for v3.0, loads every data file of the
dataset into one memory-mapped table before it can return a single row. An ingest worker needs
one episode, so this module reads the layout directly and touches only that episode's bytes:

- **v2.0 / v2.1**: episodes are listed in ``meta/episodes.jsonl``; each episode has its own
  parquet file and one mp4 per camera (``data_path`` / ``video_path`` templates of
  ``meta/info.json``, formatted with the line's ``episode_chunk``, else ``episode_index // chunks_size``).
- **v3.0**: episodes are listed in ``meta/episodes/chunk-*/file-*.parquet``; many episodes share a
  data file (the rows whose global ``index`` is in ``[dataset_from_index, dataset_to_index)``,
  read with a row filter so other episodes' row groups are skipped) and a video file per camera
  (the episode's frames start at ``round(from_timestamp * fps)`` and number ``length``; lerobot
  encodes every episode separately before concatenating, so that frame is a keyframe).

The dataset may also be remote (``--src hf://…`` or any fsspec URL): :class:`LocalFiles` and
:class:`~clap_data.sources.remote_files.RemoteFiles` give the same access — metadata read from a folder on
this machine, an episode's data file and video windows by their paths relative to the dataset — and the
remote one fetches only the episode's byte ranges.

The v2 and v3 templates name their fields differently (``episode_chunk`` vs ``chunk_index``), and
both are taken from ``meta/info.json`` rather than assumed, as FORMATS.md asks. Nothing there is
trusted (:mod:`clap_data.sources.metadata_io`): entries are checked for presence and type, no
episode or task index may be listed twice, filled-in templates must stay inside the dataset
folder, and ``fps`` must be a positive number, which each episode's timestamps must follow
(``fps_mismatch`` otherwise). The declared rate is kept as given (:attr:`LeRobotLayout.fps`, maybe
29.97); whether it can be written as it is, or must be resampled, is the source's decision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clap_data.errors import ClapDataError
from clap_data.sources.base import EpisodeRejected, VideoWindow, require_file, require_frame_rate
from clap_data.sources.metadata_io import (
    check_unique,
    entry,
    layout_info,
    read_episode_list,
    read_json_object,
    read_task_list,
)
from clap_data.sources.parquet_ranges import overlapping_row_groups

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


class LayoutFiles(Protocol):
    """Where a LeRobot dataset's files are: ``root`` is a local folder holding its ``meta/``, ``location`` how
    provenance names the dataset (its absolute path or URL)."""

    root: Path
    location: str

    def data_file(self, relative: str, columns: list[str], rows: tuple[int, int] | None) -> AbstractContextManager[Path]:
        """A local path to read ``columns`` of the data file's rows ``rows`` from, for the block."""
        ...

    def video_window(self, relative: str, start: int, count: int | None) -> VideoWindow: ...


class LocalFiles:
    """A dataset folder on this machine."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClapDataError(f"source folder {self.root} does not exist")
        self.location = str(self.root.resolve())

    @contextmanager
    def data_file(self, relative: str, columns: list[str], rows: tuple[int, int] | None) -> Iterator[Path]:
        yield require_file(self.root / relative, self.root, "data file")

    def video_window(self, relative: str, start: int, count: int | None) -> VideoWindow:
        return VideoWindow(require_file(self.root / relative, self.root, "video file"), start, count)


def layout_files(src: str | Path | LayoutFiles) -> LayoutFiles:
    """The files of ``--src``: a local folder, or a URL (``hf://…``, any fsspec URL) read by byte range."""
    if not isinstance(src, str | Path):
        return src
    from clap_data.sources.remote_files import RemoteFiles
    from clap_data.urls import is_url

    return RemoteFiles(str(src)) if is_url(src) else LocalFiles(Path(src))


class LeRobotLayout:
    """A LeRobot dataset: its metadata (read once, on the driver) and per-episode reads."""

    def __init__(self, src: str | Path | LayoutFiles):
        self.files = layout_files(src)
        self.root = self.files.root
        info_path = self.root / INFO_PATH
        info = read_json_object(info_path, "metadata file", "is this a LeRobot dataset?")
        self.version = str(info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise ClapDataError(
                f"{info_path} declares codebase_version {info.get('codebase_version')!r}; "
                f"the LeRobot reader supports {', '.join(SUPPORTED_VERSIONS)}"
            )
        self.info = layout_info(info, f"metadata file {info_path}")
        self.fps = self.info.fps  # as declared, maybe not whole: the clock the episodes' timestamps follow
        self.features = self.info.features
        self.robot_type = info.get("robot_type")
        self.video_keys = self.info.video_keys

    @property
    def is_v3(self) -> bool:
        return self.version == "v3.0"

    def tasks(self) -> dict[int, str]:
        """``task_index`` → task text, from ``meta/tasks.parquet`` (v3) or ``meta/tasks.jsonl`` (v2)."""
        if self.is_v3:
            path = self.root / V3_TASKS_PATH
            table = _read_parquet_meta(path, ["task_index", "task"], "task list")
            indices, tasks = table.column("task_index").to_pylist(), table.column("task").to_pylist()
            if None in indices or None in tasks or not all(isinstance(i, int) for i in indices):
                raise ClapDataError(f"task list {path} has a row without an integer task_index or a task")
            rows = ((index, f"row {row}") for row, index in enumerate(indices))
            check_unique(rows, f"task list {path}", "task_index")
            return {index: str(task) for index, task in zip(indices, tasks, strict=True)}
        return read_task_list(self.root / V2_TASKS_PATH)

    def episodes(self, video_keys: tuple[str, ...]) -> list[LayoutEpisode]:
        """Every listed episode in ``episode_index`` order, with the frames of ``video_keys``."""
        episodes = self._v3_episodes(video_keys) if self.is_v3 else self._v2_episodes(video_keys)
        return sorted(episodes, key=lambda e: e.index)

    def _v2_episodes(self, video_keys: tuple[str, ...]) -> list[LayoutEpisode]:
        episodes = []
        for listed in read_episode_list(self.root / V2_EPISODES_PATH, self.info.chunks_size):
            fields = {"episode_chunk": listed.chunk, "episode_index": listed.index}
            videos = {key: (self.info.video_file(self.root, video_key=key, **fields), 0, None) for key in video_keys}
            data_file = self.info.data_file(self.root, **fields)
            episodes.append(LayoutEpisode(listed.index, listed.length, listed.tasks, data_file, None, videos))
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
        episodes, places = [], []
        for path in files:
            for number, row in enumerate(_read_parquet_meta(path, columns, "episode metadata file").to_pylist()):
                where = f"episode metadata file {path} row {number}"
                if any(row[c] is None for c in columns if c != "tasks"):
                    raise ClapDataError(f"{where} has empty fields")
                numbers = {
                    c: entry(row, c, "integer", where, minimum=0)
                    for c in columns if not c.endswith(("tasks", "from_timestamp"))
                }
                index, length = numbers["episode_index"], numbers["length"]
                videos = {
                    key: (
                        self.info.video_file(
                            self.root, video_key=key,
                            chunk_index=numbers[f"videos/{key}/chunk_index"],
                            file_index=numbers[f"videos/{key}/file_index"],
                        ),
                        round(entry(row, f"videos/{key}/from_timestamp", "number", where) * self.fps),
                        length,
                    )
                    for key in video_keys
                }
                data_file = self.info.data_file(
                    self.root, chunk_index=numbers["data/chunk_index"], file_index=numbers["data/file_index"]
                )
                rows = (numbers["dataset_from_index"], numbers["dataset_to_index"])
                episodes.append(LayoutEpisode(index, length, tuple(row["tasks"] or ()), data_file, rows, videos))
                places.append((index, f"{path.relative_to(self.root)} row {number}"))
        check_unique(places, f"the episode metadata of {self.root}", "episode_index")
        return episodes

    def video_window(self, episode: LayoutEpisode, key: str) -> VideoWindow:
        """The episode's frames of one camera; rejects the episode if the file is absent."""
        relative, start, count = episode.videos[key]
        return self.files.video_window(relative, start, count)

    def read_rows(self, episode: LayoutEpisode, columns: list[str]) -> pa.Table:
        """The episode's rows (``columns`` plus the clock columns), checked against its metadata."""
        relative = episode.data_file
        wanted = list(dict.fromkeys([*columns, *CLOCK_COLUMNS]))
        with self.files.data_file(relative, wanted, episode.rows) as path:
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
        stored = table.column("timestamp").to_numpy()
        timestamps = stored.astype(np.float64)
        if not np.isfinite(timestamps).all():
            raise EpisodeRejected("timestamps", relative, f"data file {relative} has NaN or Inf timestamps")
        require_frame_rate(stored, self.fps, relative, f"data file {relative}", INFO_PATH)
        drift = np.abs(timestamps - expected / self.fps)
        if (drift > TIMESTAMP_TOLERANCE_S).any():
            row = int(np.argmax(drift > TIMESTAMP_TOLERANCE_S))
            raise EpisodeRejected(
                "timestamps", relative,
                f"data file {relative} has timestamp {timestamps[row]:.6f} at frame {row}, "
                f"not {row / self.fps:.6f} (frame_index / fps at {self.fps:g} fps)",
            )


def _read_index_range(path: Path, columns: list[str], first: int, stop: int) -> pa.Table:
    """Rows with ``first <= index < stop``, reading only the row groups whose ``index`` statistics
    overlap that range: a v3 data file holds up to ~100 MB of other episodes (lerobot writes one
    row group per episode)."""
    parquet = pq.ParquetFile(path)
    table = parquet.read_row_groups(overlapping_row_groups(parquet, first, stop), columns=columns)
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
