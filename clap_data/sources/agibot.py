"""AgiBot World (Beta): the unpacked release tree of the AgiBot G1 (dual 7-DoF arms, 30 fps).

Layout (FORMATS.md)::

    task_info/task_<task>.json                                  one entry per episode
    proprio_stats/<task>/<episode>/proprio_stats.h5             state and commands, N rows at 30 Hz
    observations/<task>/<episode>/videos/<camera>.mp4           one frame per h5 row
    parameters/<task>/<episode>/camera/*.json                   calibration (not needed here)

An episode is a ``task_info`` entry together with its h5 file and the videos of the chosen
cameras; an entry whose files are missing is quarantined (``missing_file``), an h5 file without
an entry is reported in :attr:`AgibotSource.notices` and not ingested.

Canonical values (METHOD.md §1), arm index 0 = left, 1 = right, ``arm_mask`` [1, 1]:

* state: ``state/end/position`` [N,2,3] and ``state/end/orientation`` [N,2,4] (quaternion **xyzw**,
  normalised here) give xyz + Euler; the gripper is ``state/effector/position`` [N,2], the
  opening in mm (larger = more open), mapped as ``1 - 2·mm/gripper_open_mm`` clamped to [-1, 1],
  so fully open (``GRIPPER_OPEN_MM`` = 120 mm, the nominal stroke of the G1 parallel gripper;
  unverified against a real file, hence the ``gripper_open_mm`` option) is -1 and closed is +1.
* action: ``action/end/{position, orientation}`` and ``action/effector/position`` (0 = open,
  1 = closed → ``2g - 1``, clamped). Each of the two command groups (``end``, ``effector``) is read
  separately, as the robot sends them separately.

**Which action rows are commands.** ``action/<group>/index`` [M] lists the frames at which that
group's command was really sent; action arrays have L rows, L ≤ N:

* no index (absent or empty ``(0,)``): row f is the command of frame f, for every f < L;
* L = M ≠ N: the rows are the sent commands themselves, row k sent at frame ``index[k]``;
* otherwise row f belongs to frame f and only the frames listed in the index (and < L) hold a command.

**Filling the frames without a command** (the arrays shorter than N, the frames missing from the
index): a frame holds the last command sent at or before it (the controller keeps its target until
a new one arrives); frames before the group's first command take the state of that frame (nothing
was commanded yet, so the arm is asked to stay where it is). Filling is done on the canonical
values, per group, so a gripper command never leaks into the pose or vice versa. The numbers of
really commanded frames are kept per episode (``source/end_command_frames``,
``source/effector_command_frames``).

Language: the instruction of every frame is ``task_name``; ``label_info.action_config`` segments are
half-open ``[start_frame, end_frame)``, clipped to the episode, and give the per-frame subtask
(``action_text``; unlabelled gaps are ""). The segments themselves, with their ``skill``, are kept
as the JSON string ``source/action_config``, and ``init_scene_text`` as ``source/init_scene_text``.

Quirks treated as normal input: commands at only some frames, action arrays shorter than the state,
empty ``(0,)`` datasets (ignored), quaternions that are not unit length or flip sign, gripper
openings beyond the nominal stroke. Rejected episodes: action arrays or indices reaching past the
state (``action_longer_than_state``, a known defect of the release), dexterous-hand episodes
(``dexterous_hand``: effector arrays [N,12] of finger joints, which the parallel-gripper canonical
space cannot hold), NaN/Inf in the used values (``non_finite``), zero quaternions
(``bad_rotation``), non-increasing ``timestamp`` (``timestamps``), shapes that do not match
(``bad_shape``), unusable indices (``bad_index``), unusable labels (``bad_label``), and the tasks the
release lists as broken (``known_bad_task``, unless ``force_known_bad``).

Cameras: ``head_color`` → ``head``, ``hand_left_color`` → ``wrist_left``, ``hand_right_color`` →
``wrist_right``. The five fisheye cameras and the head depth images have no place in unified
schema v1, so they are never ingested.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clap_data import geometry
from clap_data.errors import ClapDataError
from clap_data.sources.base import (
    CanonicalEpisode,
    EpisodeRef,
    EpisodeRejected,
    VideoWindow,
    require_file,
    require_increasing,
)
from clap_data.sources.metadata_io import check_unique, read_json

EMBODIMENT = "agibot-go1"
FPS = 30
# Unified camera name -> AgiBot video file stem under observations/<task>/<episode>/videos/.
CAMERA_FILES = {"head": "head_color", "wrist_left": "hand_left_color", "wrist_right": "hand_right_color"}
# Nominal full opening of the G1 parallel gripper in mm: an opening this wide maps to -1 (open).
GRIPPER_OPEN_MM = 120.0
# Tasks the release ships broken (public converters skip them), by defect.
ACTION_TOO_LONG_TASKS = frozenset({352, 354, 359, 361, 368, 376, 377, 410, 414, 421})
CORRUPT_MP4_TASKS = frozenset({380, 384, 428, 460, 505, 510, 711})
KNOWN_BAD_TASKS = {
    **{task: "its action arrays are longer than its state" for task in ACTION_TOO_LONG_TASKS},
    **{task: "it has corrupt mp4 files" for task in CORRUPT_MP4_TASKS},
}
ARMS = ("left", "right")  # index 0 and 1 of the [N, 2, ...] arrays
_POSE_COLUMNS = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12])
_GRIPPER_COLUMNS = np.array([6, 13])
_TASK_FILE = re.compile(r"task_(\d+)\.json")
_NOT_INGESTED_NOTICE = (
    "the fisheye cameras and head depth images of AgiBot World are not ingested: "
    "unified schema v1 has only the head, wrist_left and wrist_right cameras"
)


def h5_path(task_id: int, episode_id: str) -> str:
    """An episode's proprio_stats file, relative to the source root."""
    return f"proprio_stats/{task_id}/{episode_id}/proprio_stats.h5"


def video_path(task_id: int, episode_id: str, camera: str) -> str:
    """An episode's video of a unified camera, relative to the source root."""
    return f"observations/{task_id}/{episode_id}/videos/{CAMERA_FILES[camera]}.mp4"


def _episode_sort_key(episode_id: str) -> tuple[int, int | str]:
    """Numeric ids (all of the real ones) sort as numbers, anything else after them by text."""
    return (0, int(episode_id)) if episode_id.isdigit() else (1, episode_id)


def _load_task_info(path: Path) -> list[dict[str, Any]]:
    """A task's entries, each with its ``episode_id`` as text; the file must be a list of
    objects with unique episode ids (``685`` and ``"685"`` are one id), or the whole source is
    unusable: an id listed twice would be ingested twice."""
    entries = read_json(path, "task file")
    if not isinstance(entries, list):
        raise ClapDataError(f"task file {path} is not a JSON list of episodes")
    ids = []
    for number, entry in enumerate(entries):
        episode_id = entry.get("episode_id") if isinstance(entry, dict) else None
        if not isinstance(episode_id, (int, str)) or isinstance(episode_id, bool):
            raise ClapDataError(f"task file {path} entry {number} has no episode_id")
        ids.append((str(episode_id), f"entry {number}"))
    check_unique(ids, f"task file {path}", "episode_id")
    return entries


def _positive_mm(value: Any) -> float:
    try:
        width = float(value)
    except (TypeError, ValueError):
        width = math.nan
    if not (math.isfinite(width) and width > 0):
        raise ClapDataError(f"the fully-open gripper width must be a positive number of mm, got {value!r}")
    return width


def _subdirectories(path: Path) -> list[str]:
    """Names of the folders in ``path`` (none if it does not exist), by one directory scan."""
    try:
        with os.scandir(path) as entries:
            return sorted(entry.name for entry in entries if entry.is_dir())
    except FileNotFoundError:
        return []


class AgibotSource:
    """Reads an unpacked AgiBot World Beta tree; see the module docstring for every rule."""

    name = "agibot"
    embodiment = EMBODIMENT
    fps = FPS

    def __init__(
        self,
        root: Path,
        cameras: Sequence[str] | None = None,
        tasks: Sequence[int] | None = None,
        force_known_bad: bool = False,
        gripper_open_mm: float = GRIPPER_OPEN_MM,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClapDataError(f"source folder {self.root} does not exist")
        self.gripper_open_mm = _positive_mm(gripper_open_mm)
        self.force_known_bad = bool(force_known_bad)
        self.cameras = self._choose_cameras(cameras)
        self._task_files = self._find_task_files()
        self.task_ids = self._choose_tasks(tasks)
        self._requested_tasks = None if tasks is None else list(self.task_ids)
        if not (self.root / "proprio_stats").is_dir():
            raise ClapDataError(f"{self.root} has no proprio_stats folder; unpack the proprio_stats archives there")
        if self.cameras and not (self.root / "observations").is_dir():
            raise ClapDataError(
                f"{self.root} has no observations folder; unpack the observation archives or choose no cameras"
            )
        self.notices: list[str] = [_NOT_INGESTED_NOTICE]
        self.notices += self._orphan_notices()
        self.notices += self._known_bad_notices()

    # --- options and whole-source checks (driver) ----------------------------------------------

    @staticmethod
    def _choose_cameras(requested: Sequence[str] | None) -> tuple[str, ...]:
        if requested is None:
            return tuple(CAMERA_FILES)
        for camera in requested:
            if camera not in CAMERA_FILES:
                raise ClapDataError(
                    f"unknown camera {camera!r}; AgiBot cameras are {', '.join(CAMERA_FILES)} "
                    "(fisheye and depth views need an extension of the unified schema)"
                )
        return tuple(dict.fromkeys(requested))

    def _find_task_files(self) -> dict[int, Path]:
        folder = self.root / "task_info"
        files = {}
        if folder.is_dir():
            for path in folder.iterdir():
                match = _TASK_FILE.fullmatch(path.name)
                if match and path.is_file():
                    files[int(match.group(1))] = path
        if not files:
            raise ClapDataError(f"{folder} holds no task_<id>.json files; is {self.root} an unpacked AgiBot World tree?")
        return dict(sorted(files.items()))

    def _choose_tasks(self, requested: Sequence[int] | None) -> list[int]:
        if requested is None:
            return list(self._task_files)
        chosen = []
        for task in requested:
            try:
                task_id = int(task)
            except (TypeError, ValueError):
                raise ClapDataError(f"task ids are numbers, got {task!r}") from None
            if task_id not in self._task_files:
                raise ClapDataError(f"task {task_id} was requested but {self.root / 'task_info'} has no task_{task_id}.json")
            chosen.append(task_id)
        return sorted(set(chosen))

    def _orphan_notices(self) -> list[str]:
        """Episodes with an h5 file but no task_info entry: reported, never guessed at. Reading
        every chosen task file here also stops a garbled one before any work starts."""
        listed = {task: {str(e["episode_id"]) for e in _load_task_info(self._task_files[task])} for task in self.task_ids}
        notices = []
        proprio = self.root / "proprio_stats"
        for name in _subdirectories(proprio):
            if not name.isdigit() or (self._requested_tasks is not None and int(name) not in listed):
                continue
            task_id = int(name)
            orphans = [
                episode for episode in _subdirectories(proprio / name)
                if episode not in listed.get(task_id, ()) and (proprio / name / episode / "proprio_stats.h5").is_file()
            ]
            if orphans:
                shown = ", ".join(orphans[:5]) + (", …" if len(orphans) > 5 else "")
                where = f"task_info/task_{task_id}.json" + ("" if task_id in listed else ", which does not exist")
                notices.append(
                    f"proprio_stats/{task_id} has {len(orphans)} episode(s) with a proprio_stats.h5 but no entry in "
                    f"{where} ({shown}); they are not ingested"
                )
        return notices

    def _known_bad_notices(self) -> list[str]:
        bad = [task for task in self.task_ids if task in KNOWN_BAD_TASKS]
        if not bad or self.force_known_bad:
            return []
        return [
            f"known-bad task(s) {', '.join(map(str, bad))} of the release are quarantined as known_bad_task; "
            "force_known_bad (--force-known-bad) reads them anyway"
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "root": str(self.root.resolve()),
            "cameras": list(self.cameras),
            "tasks": self._requested_tasks,
            "force_known_bad": self.force_known_bad,
            "gripper_open_mm": self.gripper_open_mm,
        }

    def list_episodes(self) -> list[EpisodeRef]:
        """Every task_info entry of the chosen tasks, by task id then episode id."""
        refs = []
        for task_id in self.task_ids:
            entries = _load_task_info(self._task_files[task_id])
            for entry in sorted(entries, key=lambda e: _episode_sort_key(str(e["episode_id"]))):
                episode_id = str(entry["episode_id"])
                refs.append(
                    EpisodeRef(
                        source_episode=f"{task_id}/{episode_id}",
                        order=len(refs),
                        path=h5_path(task_id, episode_id),
                        details={"task_id": task_id, "episode_id": episode_id, "entry": entry},
                    )
                )
        return refs

    # --- one episode (worker) -----------------------------------------------------------------

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        task_id, episode_id, entry = ref.details["task_id"], ref.details["episode_id"], ref.details["entry"]
        if task_id in KNOWN_BAD_TASKS and not self.force_known_bad:
            raise EpisodeRejected(
                "known_bad_task", ref.path,
                f"task {task_id} is on the release's list of broken tasks ({KNOWN_BAD_TASKS[task_id]}), so "
                f"{ref.path} is skipped; force_known_bad (--force-known-bad) reads it anyway",
            )
        h5_file = require_file(self.root / ref.path, self.root, "proprio file")
        videos = {
            camera: VideoWindow(require_file(self.root / video_path(task_id, episode_id, camera), self.root, "video file"))
            for camera in self.cameras
        }
        task_file = f"task_info/task_{task_id}.json"
        instruction = _instruction(entry, task_file, episode_id)
        arrays = _read_proprio(h5_file, ref.path)
        frames = len(arrays["state/end/position"])
        state, mask = self._state(arrays, ref.path)
        action, commanded = _action(arrays, state, ref.path)
        segments = _segments(entry, task_file, episode_id)
        return CanonicalEpisode(
            state=state,
            action=action,
            arm_mask=mask,
            tasks=[instruction] * frames,
            subtasks=_subtasks(segments, frames),
            videos=videos,
            extra={
                "task_id": task_id,
                "init_scene_text": str(entry.get("init_scene_text") or ""),
                "action_config": json.dumps(segments, ensure_ascii=False),
                "end_command_frames": commanded["end"],
                "effector_command_frames": commanded["effector"],
            },
        )

    def _state(self, arrays: dict[str, np.ndarray], relative: str) -> tuple[np.ndarray, np.ndarray]:
        position, orientation = arrays["state/end/position"], arrays["state/end/orientation"]
        opening = arrays["state/effector/position"]
        every_frame = np.arange(len(position))
        for name in _STATE_DATASETS:
            _check_finite(arrays[name], name, every_frame, relative)
        _check_quaternions(orientation, "state/end/orientation", every_frame, relative)
        arms = [
            geometry.arm_pose7(
                position[:, arm], geometry.quat_xyzw_to_matrix(orientation[:, arm]),
                geometry.gripper_from_opening_mm(opening[:, arm], self.gripper_open_mm),
            )
            for arm in range(2)
        ]
        return geometry.dual_arm14(*arms)


# --- h5 reading and checks ------------------------------------------------------------------------

# Dataset -> shape after the row axis; "state" datasets define N, "action" ones may be shorter or empty.
_STATE_DATASETS = {"state/end/position": (2, 3), "state/end/orientation": (2, 4), "state/effector/position": (2,)}
_ACTION_DATASETS = {"action/end/position": (2, 3), "action/end/orientation": (2, 4), "action/effector/position": (2,)}
_INDEX_DATASETS = ("action/end/index", "action/effector/index")
_DEXTEROUS_WIDTH = 12  # effector arrays of the dexterous-hand variant: 12 finger joints


def _read_proprio(path: Path, relative: str) -> dict[str, np.ndarray]:
    """The datasets this adapter uses, shape-checked, poses as float64; an index absent from the
    file comes back empty, which is read like the release's empty ``(0,)`` placeholders."""
    try:
        with h5py.File(path, "r") as h5:
            required = ("timestamp", *_STATE_DATASETS, *_ACTION_DATASETS)
            missing = [name for name in required if not isinstance(h5.get(name), h5py.Dataset)]
            if missing:
                raise EpisodeRejected(
                    "missing_dataset", relative, f"proprio file {relative} lacks dataset(s) {', '.join(missing)}"
                )
            arrays = {name: np.asarray(h5[name][()], dtype=np.float64) for name in (*_STATE_DATASETS, *_ACTION_DATASETS)}
            arrays["timestamp"] = np.asarray(h5["timestamp"][()])
            for name in _INDEX_DATASETS:
                arrays[name] = np.asarray(h5[name][()]) if isinstance(h5.get(name), h5py.Dataset) else np.zeros(0, np.int64)
    except EpisodeRejected:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise EpisodeRejected("unreadable_file", relative, f"proprio file {relative} cannot be read ({exc})") from None
    frames = _check_state_shapes(arrays, relative)
    _check_timestamps(arrays["timestamp"], frames, relative)
    for name, tail in _ACTION_DATASETS.items():
        arrays[name] = _action_array(arrays[name], name, tail, relative)
    return arrays


def _reject_dexterous(values: np.ndarray, name: str, relative: str) -> None:
    if values.ndim == 2 and values.shape[1] == _DEXTEROUS_WIDTH:
        raise EpisodeRejected(
            "dexterous_hand", relative,
            f"proprio file {relative}: {name} has shape {values.shape}, the finger joints of a dexterous hand; "
            "the canonical action space holds one parallel-gripper value per arm",
        )


def _check_state_shapes(arrays: dict[str, np.ndarray], relative: str) -> int:
    """N, the number of frames, after checking that every state dataset has N rows of its shape."""
    position = arrays["state/end/position"]
    if position.size == 0:
        raise EpisodeRejected("empty", relative, f"proprio file {relative} has no frames (state/end/position is empty)")
    frames = len(position)
    _reject_dexterous(arrays["state/effector/position"], "state/effector/position", relative)
    for name, tail in _STATE_DATASETS.items():
        shape = arrays[name].shape
        if shape != (frames, *tail):
            raise EpisodeRejected(
                "bad_shape", relative,
                f"proprio file {relative}: {name} has shape {shape}, expected {(frames, *tail)} for its {frames} frames",
            )
    return frames


def _check_timestamps(timestamps: np.ndarray, frames: int, relative: str) -> None:
    if timestamps.shape != (frames,):
        raise EpisodeRejected(
            "bad_shape", relative,
            f"proprio file {relative}: timestamp has shape {timestamps.shape} but the state has {frames} frames",
        )
    if not np.issubdtype(timestamps.dtype, np.number):
        raise EpisodeRejected(
            "timestamps", relative, f"proprio file {relative}: timestamp is not numeric ({timestamps.dtype})"
        )
    require_increasing(timestamps, relative, f"proprio file {relative}", unit="frame")


def _action_array(values: np.ndarray, name: str, tail: tuple[int, ...], relative: str) -> np.ndarray:
    """An action dataset as [L, *tail]; an empty one (the release's ``(0,)`` placeholders) has L = 0."""
    if values.size == 0:
        return np.zeros((0, *tail))
    _reject_dexterous(values, name, relative)
    if values.shape[1:] != tail:
        raise EpisodeRejected(
            "bad_shape", relative,
            f"proprio file {relative}: {name} has shape {values.shape}, expected (rows, {', '.join(map(str, tail))})",
        )
    return values


def _check_finite(values: np.ndarray, name: str, frames: np.ndarray, relative: str) -> None:
    """``values`` [rows, ...] at the episode frames ``frames`` hold no NaN or Inf."""
    bad = ~np.isfinite(values.reshape(len(values), int(np.prod(values.shape[1:])))).all(axis=1)
    if bad.any():
        frame = int(frames[np.argmax(bad)])
        raise EpisodeRejected("non_finite", relative, f"proprio file {relative}: {name} has NaN or Inf at frame {frame}")


def _check_quaternions(quaternions: np.ndarray, name: str, frames: np.ndarray, relative: str) -> None:
    """A zero quaternion is no rotation; normalising it would give NaN."""
    zero = np.linalg.norm(quaternions, axis=-1) < 1e-6
    if zero.any():
        row, arm = np.argwhere(zero)[0]
        raise EpisodeRejected(
            "bad_rotation", relative,
            f"proprio file {relative}: {name} of the {ARMS[arm]} arm is a zero quaternion at frame {int(frames[row])}",
        )


# --- actions ----------------------------------------------------------------------------------------


def _command_rows(rows: int, index: np.ndarray, frames: int, group: str, relative: str) -> tuple[np.ndarray, np.ndarray]:
    """(frame, row) of every command of one group, frames increasing (rules in the module docstring)."""
    if rows > frames:
        raise EpisodeRejected(
            "action_longer_than_state", relative,
            f"proprio file {relative}: action/{group}/position has {rows} rows but the state has {frames} frames",
        )
    if index.size == 0:
        every = np.arange(rows)
        return every, every
    where = f"proprio file {relative}: action/{group}/index"
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise EpisodeRejected(
            "bad_index", relative, f"{where} is not a list of frame numbers ({index.dtype}, shape {index.shape})"
        )
    if index[0] < 0 or (np.diff(index) <= 0).any():
        raise EpisodeRejected("bad_index", relative, f"{where} is not strictly increasing from 0 or more")
    if index[-1] >= frames:
        raise EpisodeRejected(
            "action_longer_than_state", relative,
            f"{where} refers to frame {int(index[-1])} but the state has {frames} frames",
        )
    index = index.astype(np.int64)
    if rows == len(index) and rows != frames:
        return index, np.arange(rows)
    kept = index[index < rows]
    return kept, kept


def _hold_last(command_frames: np.ndarray, commands: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per frame: the last command sent at or before it; ``fallback`` (the state) before the first."""
    last = np.searchsorted(command_frames, np.arange(len(fallback)), side="right") - 1
    filled = fallback.copy()
    sent = last >= 0
    filled[sent] = commands[last[sent]]
    return filled


def _action(arrays: dict[str, np.ndarray], state: np.ndarray, relative: str) -> tuple[np.ndarray, dict[str, int]]:
    """Canonical [N, 14] actions and the number of really commanded frames of each group."""
    frames = len(state)
    position, orientation = arrays["action/end/position"], arrays["action/end/orientation"]
    if len(position) != len(orientation):
        raise EpisodeRejected(
            "bad_shape", relative,
            f"proprio file {relative}: action/end/position has {len(position)} rows "
            f"but action/end/orientation has {len(orientation)}",
        )
    end_frames, end_rows = _command_rows(len(position), arrays["action/end/index"], frames, "end", relative)
    grip = arrays["action/effector/position"]
    grip_frames, grip_rows = _command_rows(len(grip), arrays["action/effector/index"], frames, "effector", relative)
    position, orientation, grip = position[end_rows], orientation[end_rows], grip[grip_rows]
    _check_finite(position, "action/end/position", end_frames, relative)
    _check_finite(orientation, "action/end/orientation", end_frames, relative)
    _check_finite(grip, "action/effector/position", grip_frames, relative)
    _check_quaternions(orientation, "action/end/orientation", end_frames, relative)

    pose_commands, _ = geometry.dual_arm14(*(
        geometry.arm_pose7(position[:, arm], geometry.quat_xyzw_to_matrix(orientation[:, arm]), np.zeros(len(position)))
        for arm in range(2)
    ))
    action = state.copy()
    action[:, _POSE_COLUMNS] = _hold_last(end_frames, pose_commands[:, _POSE_COLUMNS], state[:, _POSE_COLUMNS])
    grip_commands = geometry.gripper_from_unit_closed1(grip)
    action[:, _GRIPPER_COLUMNS] = _hold_last(grip_frames, grip_commands, state[:, _GRIPPER_COLUMNS])
    return action, {"end": len(end_frames), "effector": len(grip_frames)}


# --- language -------------------------------------------------------------------------------------


def _instruction(entry: dict[str, Any], task_file: str, episode_id: str) -> str:
    name = entry.get("task_name")
    if not isinstance(name, str) or not name.strip():
        raise EpisodeRejected("bad_label", task_file, f"task file {task_file}: episode {episode_id} has no task_name")
    return name


def _segments(entry: dict[str, Any], task_file: str, episode_id: str) -> list[dict[str, Any]]:
    """The episode's labelled segments as given, checked: integer half-open ranges, not overlapping."""
    label_info = entry.get("label_info") or {}
    segments = label_info.get("action_config") if isinstance(label_info, dict) else None
    if segments is None:
        return []
    where = f"task file {task_file}: episode {episode_id}"
    if not isinstance(segments, list):
        raise EpisodeRejected("bad_label", task_file, f"{where} has an action_config that is not a list")
    for number, segment in enumerate(segments):
        segment = segment if isinstance(segment, dict) else {}
        start, end = segment.get("start_frame"), segment.get("end_frame")
        frames_are_ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
        if not frames_are_ints or not isinstance(segment.get("action_text"), str):
            raise EpisodeRejected(
                "bad_label", task_file, f"{where} action_config segment {number} lacks integer frames or an action_text"
            )
        if start < 0:
            raise EpisodeRejected(
                "bad_label", task_file,
                f"{where} action_config segment {number} [{start}, {end}) starts at frame {start}, "
                "before the episode's first frame 0",
            )
        if end <= start:
            raise EpisodeRejected(
                "bad_label", task_file, f"{where} action_config segment {number} [{start}, {end}) is empty or reversed"
            )
    ordered = sorted(segments, key=lambda s: s["start_frame"])
    for before, after in zip(ordered, ordered[1:]):
        if after["start_frame"] < before["end_frame"]:
            raise EpisodeRejected(
                "bad_label", task_file,
                f"{where} action_config segments [{before['start_frame']}, {before['end_frame']}) and "
                f"[{after['start_frame']}, {after['end_frame']}) overlap",
            )
    return segments


def _subtasks(segments: list[dict[str, Any]], frames: int) -> list[str]:
    """Per-frame action_text; segments are clipped to the episode, frames outside every segment get ""."""
    subtasks = [""] * frames
    for segment in segments:
        for frame in range(segment["start_frame"], min(segment["end_frame"], frames)):
            subtasks[frame] = segment["action_text"]
    return subtasks
