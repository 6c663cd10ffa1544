"""Astribot S1: GR00T-flavoured LeRobot v2.0, as the CLAP authors ship it (FORMATS.md).

Quirks treated as normal input: ``task_index`` is a ``[coarse, fine]`` pair (stock lerobot
cannot load it), info.json declares prompt arrays 512 long while they are 128, columns exist
that info.json does not declare, the metadata may declare episodes and cameras whose files are
absent from the user's copy, and gripper readings stray outside their 0..100 range.

Not trusted: the metadata files are validated by :mod:`clap_data.sources.metadata_io` (entries
present and typed, no episode or task index twice, path templates inside the source, a usable
fps), and each episode's timestamps must run at the declared fps. ``fps`` (``--fps``) resamples
every episode onto that rate, keeping the frame nearest in time to each output frame; a declared
rate that is not a whole number must be resampled so, as LeRobot v3 stores an integer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clap_data import geometry
from clap_data.errors import ClapDataError
from clap_data.sources.base import (
    CanonicalEpisode,
    EpisodeRef,
    EpisodeRejected,
    VideoInput,
    VideoWindow,
    nearest_frames,
    require_file,
    require_frame_rate,
    require_increasing,
    select_frames,
)
from clap_data.sources.metadata_io import (
    ListedEpisode,
    layout_info,
    output_fps,
    read_episode_list,
    read_json_object,
    read_task_list,
)

EMBODIMENT = "S1-stationary"
INFO_FILE = "meta/info.json"
EPISODES_FILE = "meta/episodes.jsonl"
TASKS_FILE = "meta/tasks.jsonl"

# Unified camera name -> Astribot video key.
CAMERA_KEYS = {
    "head": "images_dict.head.rgb",
    "wrist_left": "images_dict.left.rgb",
    "wrist_right": "images_dict.right.rgb",
}

STATE_COLUMN = "cartesian_so3_dict.cartesian_pose_state"
COMMAND_COLUMN = "cartesian_so3_dict.cartesian_pose_command"
POSE_WIDTH = 34
# Per arm: xyz, rot6d (two rows of R), gripper 0..100 (0 = open).
ARM_LAYOUT = {"left": (slice(9, 12), slice(12, 18), 18), "right": (slice(19, 22), slice(22, 28), 28)}
_READ_COLUMNS = [STATE_COLUMN, COMMAND_COLUMN, "timestamp", "frame_index", "task_index"]


class AstribotSource:
    """Reads an Astribot S1 folder; ``cameras=None`` takes every declared camera whose videos exist."""

    name = "astribot"
    embodiment = EMBODIMENT

    def __init__(self, root: Path, cameras: Sequence[str] | None = None, fps: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClapDataError(f"source folder {self.root} does not exist")
        info_path = self.root / INFO_FILE
        info = read_json_object(info_path, "metadata file", "is this an Astribot (LeRobot v2.0) dataset?")
        if not str(info.get("codebase_version", "")).startswith("v2"):
            raise ClapDataError(
                f"{self.root} declares codebase_version {info.get('codebase_version')!r}; "
                "the astribot reader expects the GR00T-flavoured LeRobot v2.0 layout"
            )
        self._info = layout_info(info, f"metadata file {info_path}")
        self.fps = output_fps(self._info.fps, fps, self._info.where)
        for column in (STATE_COLUMN, COMMAND_COLUMN):
            if column not in self._info.features:
                raise ClapDataError(f"metadata file {info_path} declares no {column} feature")
        listed = read_episode_list(self.root / EPISODES_FILE, self._info.chunks_size)
        self._episodes = [self._locate(episode) for episode in listed]
        self._tasks = read_task_list(self.root / TASKS_FILE)
        self.notices: list[str] = []
        self.cameras = self._choose_cameras(list(self._info.video_keys), cameras)

    def _locate(self, episode: ListedEpisode) -> dict[str, Any]:
        """An episode's index, declared length and files (data, and video per known camera key),
        the templates checked to stay inside the source folder; JSON-able for ``EpisodeRef.details``."""
        fields = {"episode_chunk": episode.chunk, "episode_index": episode.index}
        return {
            "episode_index": episode.index,
            "length": episode.length,
            "data": self._info.data_file(self.root, **fields),
            "videos": {
                key: self._info.video_file(self.root, video_key=key, **fields)
                for key in CAMERA_KEYS.values() if key in self._info.video_keys
            },
        }

    def _camera_has_files(self, video_key: str) -> bool:
        return any((self.root / episode["videos"][video_key]).is_file() for episode in self._episodes)

    def _choose_cameras(self, declared: list[str], requested: Sequence[str] | None) -> tuple[str, ...]:
        known = {key: cam for cam, key in CAMERA_KEYS.items()}
        for key in declared:
            if key not in known:
                self.notices.append(f"video {key} has no unified camera name and is not ingested")
        if requested is None:
            chosen = []
            for camera, key in CAMERA_KEYS.items():
                if key not in declared:
                    continue
                if self._camera_has_files(key):
                    chosen.append(camera)
                else:
                    self.notices.append(
                        f"camera {camera} ({key}) is declared in meta/info.json but none of its video files "
                        f"exist, so it is left out; choose cameras with --cameras"
                    )
            return tuple(chosen)
        for camera in requested:
            if camera not in CAMERA_KEYS:
                raise ClapDataError(f"unknown camera {camera!r}; Astribot cameras are {', '.join(CAMERA_KEYS)}")
            if CAMERA_KEYS[camera] not in declared:
                raise ClapDataError(f"camera {camera} ({CAMERA_KEYS[camera]}) is not declared in meta/info.json")
            if not self._camera_has_files(CAMERA_KEYS[camera]):
                raise ClapDataError(
                    f"camera {camera} was requested but none of its video files exist under "
                    f"{self.root / 'videos'}; leave it out of --cameras"
                )
        return tuple(dict.fromkeys(requested))

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "root": str(self.root.resolve()), "cameras": list(self.cameras), "fps": self.fps}

    def list_episodes(self) -> list[EpisodeRef]:
        return [
            EpisodeRef(
                source_episode=f"{episode['episode_index']:06d}", order=order, path=episode["data"], details=episode
            )
            for order, episode in enumerate(self._episodes)
        ]

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        episode = ref.details
        data_file = require_file(self.root / ref.path, self.root, "data file")
        videos: dict[str, VideoInput] = {
            camera: VideoWindow(
                require_file(self.root / episode["videos"][CAMERA_KEYS[camera]], self.root, "video file")
            )
            for camera in self.cameras
        }
        table = self._read_table(data_file, ref.path)
        frames = table.num_rows
        if episode["length"] != frames:
            raise EpisodeRejected(
                "frame_count", ref.path,
                f"data file {ref.path} has {frames} rows but meta/episodes.jsonl declares {episode['length']}",
            )
        self._check_clock(table, ref.path)
        state = self._pose_matrix(table, STATE_COLUMN, ref.path)
        command = self._pose_matrix(table, COMMAND_COLUMN, ref.path)
        coarse, fine = self._instructions(table, ref.path)
        state14, mask = geometry.dual_arm14(*(self._arm(state, arm, STATE_COLUMN, ref.path) for arm in ARM_LAYOUT))
        action14, _ = geometry.dual_arm14(*(self._arm(command, arm, COMMAND_COLUMN, ref.path) for arm in ARM_LAYOUT))
        if self.fps == self._info.fps:
            return CanonicalEpisode(
                state=state14, action=action14, arm_mask=mask, tasks=coarse, subtasks=fine, videos=videos
            )
        # Resampled (--fps): the commands are recorded per frame, so every stream keeps the rows of
        # the frames nearest in time; values were checked at the source rows, which reasons name.
        picks = nearest_frames(table.column("timestamp").to_numpy(), self.fps)
        return CanonicalEpisode(
            state=state14[picks], action=action14[picks], arm_mask=mask[picks],
            tasks=[coarse[i] for i in picks], subtasks=[fine[i] for i in picks],
            videos={camera: select_frames(window, picks, frames) for camera, window in videos.items()},
        )

    @staticmethod
    def _read_table(path: Path, relative: str) -> pa.Table:
        try:
            schema = pq.read_schema(path)
            missing = [c for c in _READ_COLUMNS if c not in schema.names]
            if missing:
                raise EpisodeRejected("missing_column", relative, f"data file {relative} lacks column(s) {', '.join(missing)}")
            table = pq.read_table(path, columns=_READ_COLUMNS)
        except (pa.ArrowException, OSError) as exc:
            raise EpisodeRejected("unreadable_file", relative, f"data file {relative} cannot be read ({exc})") from None
        if table.num_rows == 0:
            raise EpisodeRejected("empty", relative, f"data file {relative} has no rows")
        return table

    def _check_clock(self, table: pa.Table, relative: str) -> None:
        frame_index = table.column("frame_index").to_numpy()
        if not np.array_equal(frame_index, np.arange(len(frame_index))):
            first = int(np.argmax(frame_index != np.arange(len(frame_index))))
            raise EpisodeRejected(
                "frame_index", relative,
                f"data file {relative} has frame_index {frame_index[first]} at row {first}: frames are missing or out of order",
            )
        timestamps = table.column("timestamp").to_numpy()
        require_increasing(timestamps.astype(np.float64), relative, f"data file {relative}")
        require_frame_rate(timestamps, self._info.fps, relative, f"data file {relative}", INFO_FILE)

    @staticmethod
    def _pose_matrix(table: pa.Table, column: str, relative: str) -> np.ndarray:
        values = table.column(column).combine_chunks()
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if values.null_count or (lengths != POSE_WIDTH).any():
            row = int(np.argmax(lengths != POSE_WIDTH)) if (lengths != POSE_WIDTH).any() else 0
            raise EpisodeRejected(
                "bad_shape", relative, f"data file {relative} column {column} is not {POSE_WIDTH} values long at row {row}"
            )
        return pc.list_flatten(values).to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, POSE_WIDTH)

    @staticmethod
    def _arm(pose: np.ndarray, arm: str, column: str, relative: str) -> np.ndarray:
        xyz, rot6d, grip = ARM_LAYOUT[arm]
        used = np.concatenate([pose[:, xyz], pose[:, rot6d], pose[:, grip : grip + 1]], axis=1)
        bad = ~np.isfinite(used)
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            raise EpisodeRejected(
                "non_finite", relative, f"data file {relative} column {column} has NaN or Inf in the {arm} arm at row {row}"
            )
        defects = geometry.rot6d_defects(pose[:, rot6d])
        if (defects != "").any():
            row = int(np.argmax(defects != ""))
            raise EpisodeRejected(
                "bad_rotation", relative,
                f"data file {relative} column {column}: the {arm} arm's rotation at row {row} is not a rotation ({defects[row]})",
            )
        rotation = geometry.rot6d_to_matrix(pose[:, rot6d])
        return geometry.arm_pose7(pose[:, xyz], rotation, geometry.gripper_from_percent_open0(pose[:, grip]))

    def _instructions(self, table: pa.Table, relative: str) -> tuple[list[str], list[str]]:
        """Per-frame (coarse, fine) instructions. A scalar task_index (plain LeRobot) is accepted
        as coarse-only: the subtask is then empty."""
        column = table.column("task_index").combine_chunks()
        if column.null_count:
            raise EpisodeRejected("bad_shape", relative, f"data file {relative} has rows without a task_index")
        if pa.types.is_integer(column.type):
            coarse = column.to_numpy(zero_copy_only=False)
            self._check_task_indices(coarse, relative)
            return [self._tasks[int(i)] for i in coarse], [""] * len(coarse)
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if (lengths != 2).any():
            raise EpisodeRejected("bad_shape", relative, f"data file {relative} task_index is not a [coarse, fine] pair")
        indices = pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(-1, 2)
        self._check_task_indices(indices, relative)
        return [self._tasks[int(i)] for i in indices[:, 0]], [self._tasks[int(i)] for i in indices[:, 1]]

    def _check_task_indices(self, indices: np.ndarray, relative: str) -> None:
        unknown = sorted({int(i) for i in np.unique(indices)} - self._tasks.keys())
        if unknown:
            raise EpisodeRejected(
                "unknown_task", relative, f"data file {relative} refers to task_index {unknown[0]}, absent from meta/tasks.jsonl"
            )
