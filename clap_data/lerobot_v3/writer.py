"""Assemble a LeRobot v3.0 dataset from staged episodes, streaming.

Episodes are appended one at a time: their frames go into rolling ``data/`` parquet files (one
row group per episode, as lerobot writes them), their videos are concatenated by stream copy into
rolling ``videos/<key>/`` files, and only O(1) state per file is kept in memory. Each file is
hashed into the manifest as soon as it is closed, while it is still in the page cache. The output
is a pure function of the staged episodes and their order, which is what makes an interrupted and
resumed ingest byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clap_data import __version__, video
from clap_data.atomic import temp_sibling, write_json_atomic
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.manifest import Manifest
from clap_data.lerobot_v3.stats import StatsAggregator, feature_stats
from clap_data.schemas import (
    CLAP_META_PATH,
    QUARANTINE_SCHEMA,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    camera_feature_key,
    data_arrow_schema,
    frame_features,
    video_feature,
)
from clap_data.staging import source_changed

_META_BATCH = 100  # divides layout.EPISODES_PER_META_FILE; bounds the rows of stats held in memory
_STATS_FEATURES = ("observation.state", "action", "arm_mask", "timestamp", "frame_index", "episode_index", "index", "task_index")


class _RollingVideo:
    """One camera's current v3 video file; starts a new file at the size limit or when an
    episode's codec parameters differ (stream copy cannot mix them in one file)."""

    def __init__(self, root: Path, video_key: str, fps: int, manifest: Manifest):
        self.root, self.video_key, self.fps, self.manifest = root, video_key, fps, manifest
        self.cursor = layout.FileCursor()
        self._current: video.VideoConcatenator | None = None

    def append(self, src: Path, frame_count: int, fingerprint: str, start_pts: int | None) -> tuple[int, int, float, float]:
        if self._current is not None:
            full = self._current.dst.stat().st_size >= layout.VIDEO_FILE_SIZE_MB * 1024 * 1024
            if full or fingerprint != self._current.fingerprint:
                self.close()
                self._current = None
                self.cursor.advance()
        if self._current is None:
            self._current = video.VideoConcatenator(
                self.root / self.cursor.path(layout.VIDEO_PATH, video_key=self.video_key), self.fps
            )
        start, end = self._current.append(src, frame_count, fingerprint, start_pts)
        return self.cursor.chunk_index, self.cursor.file_index, start, end

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self.manifest.record(self.root, str(self._current.dst.relative_to(self.root)))

    def close_file(self) -> None:
        """Finish the current file; the next episode starts the next one (a checkpoint: every file is complete)."""
        if self._current is not None:
            self.close()
            self._current = None
            self.cursor.advance()


class _RollingParquet:
    """A sequence of parquet files under one template, rolled by (uncompressed) size or rows."""

    def __init__(
        self, root: Path, template: str, schema: pa.Schema | None, manifest: Manifest, max_bytes: int, max_rows: int | None = None,
    ):
        self.root, self.template, self.schema, self.manifest = root, template, schema, manifest
        self.max_bytes, self.max_rows = max_bytes, max_rows
        self.cursor = layout.FileCursor()
        self._writer: pq.ParquetWriter | None = None
        self._temp = Path()
        self._bytes = 0
        self._rows = 0

    def write(self, table: pa.Table) -> tuple[int, int]:
        """Write ``table`` as one row group; returns the (chunk, file) it went to."""
        if self._writer is not None and (
            self._bytes >= self.max_bytes or (self.max_rows is not None and self._rows >= self.max_rows)
        ):
            self.close()
            self._writer = None
            self.cursor.advance()
        if self._writer is None:
            self._open(table.schema)
        self._write(table)
        return self.cursor.chunk_index, self.cursor.file_index

    def _path(self) -> Path:
        return self.root / self.cursor.path(self.template)

    def _open(self, schema: pa.Schema) -> None:
        """Start the current file, under a temporary name: it appears under its own only when closed, so a crash
        never leaves a half-written file where a checkpoint's complete one was (:meth:`reopen`)."""
        self._path().parent.mkdir(parents=True, exist_ok=True)
        self.schema = self.schema or schema
        self._temp = temp_sibling(self._path())
        self._writer = pq.ParquetWriter(self._temp, self.schema, compression="snappy")
        self._bytes = self._rows = 0

    def _write(self, table: pa.Table) -> None:
        assert self._writer is not None
        self._writer.write_table(table.cast(self.schema))
        self._bytes += table.nbytes
        self._rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self._temp, self._path())
            self._writer = None
            self.manifest.record(self.root, self.cursor.path(self.template))

    def reopen(self) -> None:
        """Go on writing the current file after :meth:`close`: its rows so far are read back and written again (the
        episodes metadata must keep filling one file, whose number follows from the episode index)."""
        path = self._path()
        if self._writer is None and path.is_file():
            rows = pq.read_table(path)
            self.schema = rows.schema  # as read back, in every run: the footer a resumed run writes is the same
            self._open(rows.schema)
            self._write(rows)

    def close_file(self) -> None:
        """Finish the current file; the next write starts the next one (a checkpoint: every file is complete)."""
        if self._writer is not None:
            self.close()
            self.cursor.advance()


class DatasetAssembler:
    """Builds one v3 dataset in ``root`` (a staging directory, renamed into place by the caller)."""

    def __init__(self, root: Path, fps: int, robot_type: str, cameras: tuple[str, ...],
                 extra_features: dict[str, dict[str, Any]] | None = None):
        """``extra_features``: data columns beyond the unified frame features that every added episode's table
        carries (a merge keeps the token columns), written as they come."""
        self.root, self.fps, self.robot_type, self.cameras = root, fps, robot_type, cameras
        self.extra = dict(extra_features or {})
        self.features = {**frame_features(), **self.extra}
        self.manifest = Manifest()
        self._data = _RollingParquet(root, layout.DATA_PATH, data_arrow_schema(self.features), self.manifest, layout.DATA_FILE_SIZE_MB << 20)
        self._meta = _RollingParquet(root, layout.EPISODES_PATH, None, self.manifest, 1 << 62, layout.EPISODES_PER_META_FILE)
        self._videos = {cam: _RollingVideo(root, camera_feature_key(cam), fps, self.manifest) for cam in cameras}
        self._video_features: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, int] = {}
        self._stats = StatsAggregator()
        self._pending_meta: list[dict[str, Any]] = []
        self.episodes = 0
        self.frames = 0

    def _check_video_shape(self, camera: str, info: dict[str, Any]) -> str | None:
        """All episodes of a camera share one feature shape; returns why an episode does not fit."""
        feature = video_feature(info["width"], info["height"], self.fps, info["codec"], info["pix_fmt"])
        key = camera_feature_key(camera)
        known = self._video_features.setdefault(key, feature)
        if known["shape"] != feature["shape"]:
            return (
                f"its {camera} video is {info['width']}x{info['height']} while the dataset's is "
                f"{known['shape'][1]}x{known['shape'][0]}; re-run with --resize HxW to make them equal"
            )
        return None

    def check_episode(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """Which camera keeps a staged episode out of this dataset and why, or None if it can join
        (the camera, so that the quarantine can name its video file)."""
        for camera in self.cameras:
            problem = self._check_video_shape(camera, record["videos"][camera])
            if problem:
                return camera, problem
        for camera in self.cameras:
            if source_changed(record["videos"][camera]):
                return camera, ("it changed after it was validated (its size or modification time differs); "
                                "ingest again (with --overwrite) to convert the episode again")
        return None

    def add_episode(self, table: pa.Table, record: dict[str, Any], provenance: dict[str, str | int | float | bool],
                    staged_dir: Path | None = None) -> None:
        """Append one episode: ``table`` holds its rows (the staged columns, ``task`` as text, and the extra
        features), ``record["videos"]`` each camera's video — copied from ``copy_from`` where given, else from the
        staged copy in ``staged_dir``."""
        frames = table.num_rows
        episode_index = self.episodes
        task_index = np.array([self._tasks.setdefault(t, len(self._tasks)) for t in table.column("task").to_pylist()], dtype=np.int64)
        frame_index = table.column("frame_index").to_numpy()
        columns = {
            "observation.state": table.column("observation.state"),
            "action": table.column("action"),
            "arm_mask": table.column("arm_mask"),
            "subtask": table.column("subtask"),
            "timestamp": pa.array((frame_index / self.fps).astype(np.float32)),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.full(frames, episode_index, dtype=np.int64)),
            "index": pa.array(np.arange(self.frames, self.frames + frames, dtype=np.int64)),
            "task_index": pa.array(task_index),
            **{name: table.column(name) for name in self.extra},
        }
        data_table = pa.table(columns, schema=self._data.schema)
        data_chunk, data_file = self._data.write(data_table)

        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": list(dict.fromkeys(table.column("task").to_pylist())),
            "length": frames,
            "data/chunk_index": data_chunk,
            "data/file_index": data_file,
            "dataset_from_index": self.frames,
            "dataset_to_index": self.frames + frames,
        }
        for camera in self.cameras:
            info = record["videos"][camera]
            copy_from = info.get("copy_from")  # straight from the source file (conversion staged no copy)
            src = Path(copy_from["path"]) if copy_from is not None else staged_dir / "videos" / f"{camera}.mp4"
            chunk, file, start, end = self._videos[camera].append(
                src, info["frame_count"], info["fingerprint"], None if copy_from is None else copy_from["start_pts"]
            )
            key = camera_feature_key(camera)
            self._add_stats(row, key, {name: np.asarray(value) for name, value in info["image_stats"].items()})
            row[f"videos/{key}/chunk_index"] = chunk
            row[f"videos/{key}/file_index"] = file
            row[f"videos/{key}/from_timestamp"] = start
            row[f"videos/{key}/to_timestamp"] = end
        for key in _STATS_FEATURES:
            column = data_table.column(key).combine_chunks()
            values = (
                np.asarray(column.flatten()).reshape(frames, -1)
                if pa.types.is_fixed_size_list(column.type)
                else column.to_numpy()
            )
            self._add_stats(row, key, feature_stats(values))
        row.update({f"source/{k}": v for k, v in provenance.items()})
        self._pending_meta.append(row)
        if len(self._pending_meta) >= _META_BATCH:
            self._flush_meta()
        self.episodes += 1
        self.frames += frames

    def _add_stats(self, row: dict[str, Any], key: str, stats: dict[str, np.ndarray]) -> None:
        """Record one episode's stats of a feature: in its metadata row and in the dataset total."""
        self._stats.add(key, stats)
        for name, value in stats.items():
            row[f"stats/{key}/{name}"] = value.tolist()

    def _flush_meta(self) -> None:
        """Episode metadata goes out in batches of ``_META_BATCH``, which divides the rows per file,
        so a batch never straddles two files and each row's file follows from its index."""
        if not self._pending_meta:
            return
        for row in self._pending_meta:
            file_number = row["episode_index"] // layout.EPISODES_PER_META_FILE
            row["meta/episodes/chunk_index"] = file_number // layout.CHUNKS_SIZE
            row["meta/episodes/file_index"] = file_number % layout.CHUNKS_SIZE
        self._meta.write(pa.Table.from_pylist(self._pending_meta))
        self._pending_meta = []

    def checkpoint(self) -> dict[str, Any]:
        """Make every file written so far complete and return the assembler's state (JSON), from which
        :meth:`resume` goes on after a crash: the next episode starts new data and video files, and the episodes
        metadata file is reopened (its rows must keep filling one file). A merge checkpoints after each input, in
        every run, so a resumed merge writes the same bytes as one that was never interrupted."""
        self._flush_meta()
        self._data.close_file()
        for rolling in self._videos.values():
            rolling.close_file()
        self._meta.close()
        state = {
            "episodes": self.episodes, "frames": self.frames, "tasks": self._tasks,
            "video_features": self._video_features, "manifest": self.manifest.files, "stats": self._stats.state(),
            "cursors": {name: [rolling.cursor.chunk_index, rolling.cursor.file_index]
                        for name, rolling in self._rolling_files().items()},
        }
        self._meta.reopen()
        return json.loads(json.dumps(state))

    def _rolling_files(self) -> dict[str, _RollingParquet | _RollingVideo]:
        return {"data": self._data, "meta": self._meta, **{f"video:{camera}": r for camera, r in self._videos.items()}}

    @classmethod
    def resume(cls, root: Path, fps: int, robot_type: str, cameras: tuple[str, ...], state: dict[str, Any],
               extra_features: dict[str, dict[str, Any]] | None = None) -> DatasetAssembler:
        """The assembler as :meth:`checkpoint` left it, writing on into ``root``; the files a crash left half-written
        after that checkpoint (any file its manifest does not list) are removed first."""
        assembler = cls(root, fps, robot_type, cameras, extra_features)
        assembler.manifest.files = dict(state["manifest"])
        for path in root.rglob("*"):
            if path.is_file() and str(path.relative_to(root)) not in assembler.manifest.files:
                path.unlink()  # written after the checkpoint (temporary names included)
        assembler.episodes, assembler.frames = state["episodes"], state["frames"]
        assembler._tasks = dict(state["tasks"])
        assembler._video_features = dict(state["video_features"])
        assembler._stats = StatsAggregator.from_state(state["stats"])
        for name, rolling in assembler._rolling_files().items():
            rolling.cursor = layout.FileCursor(*state["cursors"][name])
        assembler._meta.reopen()
        return assembler

    def finish(self, clap_meta: dict[str, Any], quarantine: list[dict[str, str]]) -> None:
        """Close every file and write the metadata that describes them."""
        self._flush_meta()
        self._data.close()
        self._meta.close()
        for rolling in self._videos.values():
            rolling.close()
        features = dict(self.features)
        for camera in self.cameras:
            key = camera_feature_key(camera)
            features[key] = self._video_features[key]
        info = {
            "codebase_version": layout.CODEBASE_VERSION,
            "fps": self.fps,
            "features": features,
            "total_episodes": self.episodes,
            "total_frames": self.frames,
            "total_tasks": len(self._tasks),
            "chunks_size": layout.CHUNKS_SIZE,
            "data_files_size_in_mb": layout.DATA_FILE_SIZE_MB,
            "video_files_size_in_mb": layout.VIDEO_FILE_SIZE_MB,
            "data_path": layout.DATA_PATH,
            "video_path": layout.VIDEO_PATH if self.cameras else None,
            "robot_type": self.robot_type,
            "splits": {"train": f"0:{self.episodes}"},
        }
        write_json_atomic(self.root / layout.INFO_PATH, info)
        write_json_atomic(self.root / layout.STATS_PATH, self._stats.result())
        tasks = pd.DataFrame({"task_index": list(self._tasks.values())}, index=pd.Index(list(self._tasks), name="task"))
        tasks.to_parquet(self.root / layout.TASKS_PATH)
        pq.write_table(
            pa.Table.from_pylist([{k: r[k] for k in QUARANTINE_SCHEMA.names} for r in quarantine], schema=QUARANTINE_SCHEMA),
            self.root / layout.QUARANTINE_PATH,
        )
        meta = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "created_by": f"clap-data {__version__}", **clap_meta}
        (self.root / CLAP_META_PATH).write_text(json.dumps(meta, indent=2) + "\n")
        for relative in (layout.INFO_PATH, layout.STATS_PATH, layout.TASKS_PATH, layout.QUARANTINE_PATH, CLAP_META_PATH):
            self.manifest.record(self.root, relative)
        self.manifest.write(self.root)
