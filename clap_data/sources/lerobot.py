"""Any LeRobot dataset (v2.0, v2.1 or v3.0) → canonical frames, as a mapping file says.

The layout is read by :mod:`clap_data.sources.lerobot_layout` (no lerobot import, one episode's
bytes per read); what the columns mean comes from a :class:`~clap_data.sources.mapping.SourceMapping`
(``docs/lerobot_mapping.md``). Per arm and frame: position as given (metres), the rotation turned
into a matrix from its convention and then into Euler angles with R = Rz·Ry·Rx, the gripper mapped
linearly so that ``gripper_open`` → -1 and ``gripper_closed`` → +1, clamped (METHOD.md §1).

Decisions:
- ``action: next_state`` gives ``action[t] = state[t+1]`` and repeats the last state on the last
  frame — METHOD.md §2's rule for robots whose command stream is not recorded.
- Per-episode ``extra`` facts are the value of their column at the episode's first frame (LeRobot
  ports repeat episode metadata on every row). ``empty_instruction`` is always added: True when
  no frame of the episode has a non-blank instruction. Such episodes are kept (FORMATS.md).
- Video features the mapping does not name are not ingested, and a notice says so.
- ``fps`` (``--fps``) resamples every episode onto that rate: each output frame keeps the source
  frame nearest in time (by the parquet timestamps), in every stream and camera; a declared rate
  that is not a whole number is refused without it (LeRobot v3 stores an integer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clap_data import geometry
from clap_data.errors import ClapDataError
from clap_data.sources.base import (
    CanonicalEpisode,
    EpisodeRef,
    EpisodeRejected,
    VideoInput,
    discard_fetched,
    nearest_frames,
    select_frames,
)
from clap_data.sources.lerobot_layout import CLOCK_COLUMNS, LayoutEpisode, LayoutFiles, LeRobotLayout, column_matrix
from clap_data.sources.mapping import (
    EMPTY_INSTRUCTION,
    TASK,
    ColumnRef,
    SourceMapping,
    StreamMapping,
    check_mapping_columns,
    load_mapping,
)
from clap_data.sources.metadata_io import output_fps

# A quaternion or matrix this far from unit norm / orthonormal is a mis-mapped column, not noise.
UNIT_TOLERANCE = 0.1


def gripper_to_canonical(raw: np.ndarray, opened: float, closed: float) -> np.ndarray:
    """Linear map with ``opened`` → -1 and ``closed`` → +1, clamped: covers every range and direction
    (DROID 0..1 closed at 1 is ``2g - 1``; an opening width in mm is ``1 - 2g/width``)."""
    return np.clip((raw - opened) / (closed - opened) * 2.0 - 1.0, -1.0, 1.0)


def _rotation_defects(values: np.ndarray, convention: str) -> np.ndarray:
    """Per-frame reason why the values are not a rotation, '' where they are."""
    if convention == "rot6d_rows":
        return geometry.rot6d_defects(values)
    out = np.full(len(values), "", dtype=object)
    if convention in ("quat_xyzw", "quat_wxyz"):
        out[np.abs(np.linalg.norm(values, axis=1) - 1.0) > UNIT_TOLERANCE] = "quaternion is not unit length"
    elif convention == "matrix":
        m = values.reshape(-1, 3, 3)
        error = np.abs(m @ np.swapaxes(m, 1, 2) - np.eye(3)).max(axis=(1, 2))
        out[(error > UNIT_TOLERANCE) | (np.linalg.det(m) <= 0)] = "matrix is not a rotation"
    return out.astype(str)


def rotation_matrices(values: np.ndarray, convention: str) -> np.ndarray:
    """``[N, 3, 3]`` rotation matrices from values in one of the mapping's conventions."""
    if convention == "euler_xyz":
        return geometry.euler_to_matrix(values)
    if convention == "quat_xyzw":
        return geometry.quat_xyzw_to_matrix(values)
    if convention == "quat_wxyz":
        return geometry.quat_xyzw_to_matrix(values[:, [1, 2, 3, 0]])
    if convention == "rot6d_rows":
        return geometry.rot6d_to_matrix(values)
    if convention == "matrix":
        return values.reshape(-1, 3, 3)
    raise ValueError(f"unknown rotation convention {convention!r}")


class LeRobotSource:
    """A LeRobot dataset read through a mapping; ``cameras=None`` takes every mapped camera."""

    name = "lerobot"

    def __init__(
        self,
        root: str | Path | LayoutFiles,
        mapping: SourceMapping | str | Path,
        cameras: Sequence[str] | None = None,
        fps: int | None = None,
    ):
        self.mapping = mapping if isinstance(mapping, SourceMapping) else load_mapping(Path(mapping))
        self._layout = LeRobotLayout(root)
        self.root = self._layout.root
        check_mapping_columns(self.mapping, self._layout.features)
        self.embodiment = self.mapping.embodiment
        self.fps = output_fps(self._layout.fps, fps, self._layout.info.where)
        self.notices: list[str] = [
            f"video {key} is not mapped to a unified camera and is not ingested"
            for key in self._layout.video_keys
            if key not in self.mapping.cameras.values()
        ]
        self.cameras = self._choose_cameras(cameras)
        self._tasks = self._layout.tasks() if self.mapping.instruction == TASK else {}
        self._columns = self._read_columns()

    def _choose_cameras(self, requested: Sequence[str] | None) -> tuple[str, ...]:
        mapped = tuple(self.mapping.cameras)
        if requested is None:
            return mapped
        for camera in requested:
            if camera not in mapped:
                raise ClapDataError(
                    f"camera {camera!r} is not mapped by {self.mapping.origin}; mapped cameras: {', '.join(mapped) or 'none'}"
                )
        return tuple(camera for camera in mapped if camera in requested)

    def _read_columns(self) -> list[str]:
        names = [ref.name for ref in self.mapping.column_refs()]
        names += [column for column in (self.mapping.subtask,) if column is not None]
        names += ["task_index" if self.mapping.instruction == TASK else self.mapping.instruction]
        names += list(self.mapping.extra.values())
        return list(dict.fromkeys(names))

    @property
    def data_columns(self) -> list[str]:
        """The data-file columns an episode read uses (the mapping's, then the clock's): all a remote read fetches."""
        return list(dict.fromkeys([*self._columns, *CLOCK_COLUMNS]))

    def describe(self) -> dict[str, Any]:
        """Provenance, with the whole parsed mapping: an edited mapping file is then a different run
        (no resuming on episodes converted with the old one) and the output says how it was read."""
        return {
            "source": self.name,
            "root": self._layout.files.location,
            "codebase_version": self._layout.version,
            "embodiment": self.embodiment,
            "cameras": list(self.cameras),
            "fps": self.fps,
            "mapping": dataclasses.asdict(self.mapping),
        }

    def list_episodes(self) -> list[EpisodeRef]:
        keys = tuple(self.mapping.cameras[camera] for camera in self.cameras)
        return [
            EpisodeRef(source_episode=f"{episode.index:06d}", order=order, path=episode.data_file, details=episode.to_details())
            for order, episode in enumerate(self._layout.episodes(tuple(dict.fromkeys(keys))))
        ]

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        episode = LayoutEpisode.from_details(ref.details)
        table = self._layout.read_rows(episode, self.data_columns)
        relative = episode.data_file
        self._layout.check_clock(table, relative)
        # The frames written: all of them, or (--fps) those nearest in time to the output frames.
        # Values are checked at every source row (reasons name those), then these rows are kept.
        picks = np.arange(table.num_rows)
        if self.fps != self._layout.fps:
            picks = nearest_frames(table.column("timestamp").to_numpy(), self.fps)
        canonical = self._canonical(table, relative, picks)
        videos: dict[str, VideoInput] = {}
        try:  # last: a remote source fetches the episode's video bytes now, and only for an episode that reads
            for camera in self.cameras:
                window = self._layout.video_window(episode, self.mapping.cameras[camera])
                videos[camera] = window if self.fps == self._layout.fps else select_frames(window, picks, table.num_rows)
        except BaseException:
            discard_fetched(videos.values())
            raise
        return dataclasses.replace(canonical, videos=videos)

    def _canonical(self, table: pa.Table, relative: str, picks: np.ndarray) -> CanonicalEpisode:
        """The episode's values at the source rows ``picks``, checked; its videos are added by the caller."""
        matrices = {name: column_matrix(table, name, relative) for name in dict.fromkeys(r.name for r in self.mapping.column_refs())}
        left, right = (self._arm(slot, matrices, relative, picks) for slot in ("left", "right"))
        state, mask = geometry.dual_arm14(left[0] if left else None, right[0] if right else None)
        action, _ = geometry.dual_arm14(left[1] if left else None, right[1] if right else None)
        instructions = self._instructions(table, relative)
        tasks = [instructions[i] for i in picks]
        subtasks = [""] * len(tasks)
        if self.mapping.subtask:
            every_subtask = self._strings(table, self.mapping.subtask, relative)
            subtasks = [every_subtask[i] for i in picks]
        extra = {name: self._first_value(table, column, relative) for name, column in self.mapping.extra.items()}
        extra[EMPTY_INSTRUCTION] = not any(task.strip() for task in tasks)
        return CanonicalEpisode(
            state=state, action=action, arm_mask=mask, tasks=tasks, subtasks=subtasks, videos={}, extra=extra
        )

    def _arm(
        self, slot: str, matrices: dict[str, np.ndarray], relative: str, picks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(state, action) ``[frames, 7]`` of one arm slot at the source rows ``picks``, or None if
        the mapping has no such arm. ``next_state`` is taken among the kept frames: the action of
        a frame is the state of the next frame written."""
        arm = self.mapping.arms.get(slot)
        if arm is None:
            return None
        state = self._pose7(arm.state, matrices, relative)[picks]
        if arm.action is None:
            return state, np.concatenate([state[1:], state[-1:]], axis=0)
        return state, self._pose7(arm.action, matrices, relative)[picks]

    def _values(self, ref: ColumnRef, matrices: dict[str, np.ndarray], relative: str) -> np.ndarray:
        matrix = matrices[ref.name]
        start, stop = ref.bounds(matrix.shape[1])
        if stop > matrix.shape[1]:
            raise EpisodeRejected(
                "bad_shape", relative,
                f"data file {relative} column {ref.name} has {matrix.shape[1]} values per row; {ref.key} needs {stop}",
            )
        values = matrix[:, start:stop]
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            raise EpisodeRejected("non_finite", relative, f"data file {relative} column {ref.name} ({ref.key}) has NaN or Inf at row {row}")
        return values

    def _pose7(self, stream: StreamMapping, matrices: dict[str, np.ndarray], relative: str) -> np.ndarray:
        position = self._values(stream.position, matrices, relative)
        rotation = self._values(stream.rotation, matrices, relative)
        gripper = self._values(stream.gripper, matrices, relative)[:, 0]
        defects = _rotation_defects(rotation, stream.rotation_convention)
        if (defects != "").any():
            row = int(np.argmax(defects != ""))
            raise EpisodeRejected(
                "bad_rotation", relative,
                f"data file {relative} column {stream.rotation.name} ({stream.rotation.key}) at row {row}: {defects[row]}",
            )
        matrix = rotation_matrices(rotation, stream.rotation_convention)
        return geometry.arm_pose7(position, matrix, gripper_to_canonical(gripper, stream.gripper_open, stream.gripper_closed))

    def _instructions(self, table: pa.Table, relative: str) -> list[str]:
        if self.mapping.instruction != TASK:
            return self._strings(table, self.mapping.instruction, relative)
        indices = column_matrix(table, "task_index", relative)[:, 0].astype(np.int64)
        unknown = sorted(set(np.unique(indices).tolist()) - self._tasks.keys())
        if unknown:
            raise EpisodeRejected(
                "unknown_task", relative, f"data file {relative} refers to task_index {unknown[0]}, absent from the task list"
            )
        return [self._tasks[int(i)] for i in indices]

    @staticmethod
    def _strings(table: pa.Table, column: str, relative: str) -> list[str]:
        values = table.column(column).to_pylist()
        if any(value is None for value in values):
            raise EpisodeRejected("bad_shape", relative, f"data file {relative} column {column} has empty (null) rows")
        return [str(value) for value in values]

    @staticmethod
    def _first_value(table: pa.Table, column: str, relative: str) -> str | int | float | bool:
        """The column's value at the episode's first frame, as a plain scalar (lists of one unwrapped).
        A missing value rejects the episode: every episode must give its facts the same types."""
        value = table.column(column)[0].as_py()
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None:
            raise EpisodeRejected("bad_shape", relative, f"data file {relative} column {column} has no value at the episode's first frame")
        return value
