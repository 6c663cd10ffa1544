"""Write small LeRobot datasets, v2.1 and v3.0, in the exact layout lerobot writes them.

v3.0 files are written the way lerobot 0.6.1's ``LeRobotDataset.save_episode`` writes them — its
own helpers build the parquet schemas (``get_hf_features_from_features``), the statistics
(``compute_episode_stats``/``aggregate_stats``), ``info.json`` (``DatasetInfo``, with the video
``info`` block from ``get_video_info``) and ``tasks.parquet`` — so that tests of the readers see
what users have. Only the file rolling is ours: lerobot starts a new data/video file at ~100/200 MB,
which tiny fixtures never reach, so here a new data file (and ``meta/episodes`` file) starts every
``episodes_per_data_file`` episodes and a new video file every ``episodes_per_video_file``.
v2.1 (per-episode parquet and mp4, ``episodes.jsonl``/``tasks.jsonl``/``episodes_stats.jsonl``)
is written as lerobot 0.3 wrote it; lerobot 0.6.1's own v2.1→v3.0 converter accepts it.

Every episode's video is encoded on its own with GOP 2 (AV1 by libsvtav1 as lerobot's default, or
H.264) and v3 files concatenate episodes by stream copy, so each episode starts on a keyframe; its
``from_timestamp`` is the running sum of the previous episodes' durations, as lerobot computes it
(so ``from_timestamp * fps`` is only nearly an integer).

Flavours:
- ``droid``: the DROID port (``lerobot/droid_1.0.1``) with ``port_droid.py``'s features and dtypes,
  robot_type ``Franka``, 15 fps. Euler angles are scipy lowercase ``"xyz"``; the roll sits near ±π
  and wraps; grippers 0 open .. 1 closed; the commanded pose (``action.cartesian_position``) runs
  ahead of the state and differs from the next state; some episodes have an empty
  ``language_instruction`` (and task), ``_2``/``_3`` may be empty, ``is_episode_successful`` varies.
- ``droid_legacy``: the same with older ports' camera names (``exterior_image_1_left``,
  ``exterior_image_2_left``, ``wrist_image_left``).
- ``bimanual``: a generic two-arm robot (ALOHA-like camera names ``cam_high``, ``cam_left_wrist``,
  ``cam_right_wrist``) whose ``observation.state`` and ``action`` hold per arm
  ``[x, y, z, rotation..., gripper]``: the rotation in ``rotation`` convention (one of
  ``euler_xyz, quat_xyzw, quat_wxyz, rot6d_rows, matrix``) and the gripper as an opening
  percentage (100 = open), overshooting to 101 at times.

Frames are flat gray images whose level encodes (episode, frame, camera):
:func:`expected_gray_level`. Run ``python -m clap_data.factories.lerobot DEST`` for a DROID v3.0
sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from lerobot.configs.video import RGBEncoderConfig
from lerobot.datasets.compute_stats import aggregate_stats, compute_episode_stats, get_feature_stats
from lerobot.datasets.feature_utils import get_hf_features_from_features
from lerobot.datasets.io_utils import write_info, write_stats, write_tasks
from lerobot.datasets.utils import DatasetInfo, serialize_dict
from lerobot.datasets.video_utils import get_video_info
from lerobot.utils.utils import flatten_dict
from numpy.typing import NDArray

from clap_data.factories.common import clear_generated

__all__ = [
    "DROID_FPS",
    "FLAVOURS",
    "ROTATIONS",
    "LeRobotEpisodeSpec",
    "expected_gray_level",
    "plan_episodes",
    "video_keys",
    "write_lerobot_dataset",
]

FloatArray = NDArray[np.float64]
FLAVOURS = ("droid", "droid_legacy", "bimanual")
ROTATIONS = {"euler_xyz": 3, "quat_xyzw": 4, "quat_wxyz": 4, "rot6d_rows": 6, "matrix": 9}
DROID_FPS = 15
DROID_ROBOT_TYPE = "Franka"  # as port_droid.py writes it
BIMANUAL_FPS = 20
BIMANUAL_ROBOT_TYPE = "bimanual_arms"
CHUNKS_SIZE = 1000
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_ENCODERS = {"av1": "libsvtav1", "h264": "h264"}
_DROID_CAMERAS = {
    "droid": ("wrist_left", "exterior_1_left", "exterior_2_left"),
    "droid_legacy": ("wrist_image_left", "exterior_image_1_left", "exterior_image_2_left"),
}
_BIMANUAL_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
# (language_instruction, _2, _3) by episode_index % 4: empty ones included, as in DROID.
_DROID_LANGUAGE = (
    ("put the marker in the cup", "place the marker into the mug", "move the pen to the cup"),
    ("", "", ""),
    ("close the drawer", "push the drawer shut", ""),
    ("wipe the table with the towel", "", ""),
)
_BIMANUAL_TASKS = ("fold the towel", "hand over the cube", "open the lid")


@dataclass(frozen=True)
class LeRobotEpisodeSpec:
    """What one episode is about; its frames follow from it and the seed."""

    episode_index: int
    length: int
    task: str
    language: tuple[str, str, str]  # DROID's language_instruction, _2, _3 (task = the first)
    successful: bool


def video_keys(flavour: str) -> tuple[str, ...]:
    """The flavour's video feature keys, in ``info.json`` order."""
    cameras = _BIMANUAL_CAMERAS if flavour == "bimanual" else _DROID_CAMERAS[flavour]
    return tuple(f"observation.images.{camera}" for camera in cameras)


def expected_gray_level(episode_index: int, frame_index: int, camera_number: int) -> int:
    """The flat RGB level (28..227) of a written frame; ``camera_number`` is the camera's position
    in :func:`video_keys`. Neighbouring frames differ by 17 levels, far more than AV1/H.264 at
    crf 30 moves a flat image (about ±2), so a frame shifted by one is caught."""
    return (17 * frame_index + 60 * camera_number + 7 * episode_index) % 200 + 28


def plan_episodes(flavour: str, episode_lengths: Sequence[int]) -> list[LeRobotEpisodeSpec]:
    """The episodes :func:`write_lerobot_dataset` writes (tasks, language, success flags)."""
    specs = []
    for index, length in enumerate(episode_lengths):
        if int(length) != length or length < 2:
            raise ValueError(f"episode {index}: length must be an int of at least 2, got {length!r}")
        if flavour == "bimanual":
            language = (_BIMANUAL_TASKS[index % len(_BIMANUAL_TASKS)], "", "")
        else:
            language = _DROID_LANGUAGE[index % len(_DROID_LANGUAGE)]
        specs.append(LeRobotEpisodeSpec(index, int(length), language[0], language, index % 3 != 2))
    return specs


# --- Features ----------------------------------------------------------------------------------


def _vector(dtype: str, axes: Sequence[str]) -> dict[str, Any]:
    return {"dtype": dtype, "shape": (len(axes),), "names": {"axes": list(axes)}}


def _scalar(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": (1,), "names": None}


def _video(width: int, height: int) -> dict[str, Any]:
    return {"dtype": "video", "shape": (height, width, 3), "names": ["height", "width", "channels"]}


_POSE = ("x", "y", "z", "roll", "pitch", "yaw")
_JOINTS = tuple(f"joint_{i}" for i in range(7))


def _droid_features(flavour: str, size: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """port_droid.py's DROID_FEATURES (order, dtypes and names), cameras named per flavour."""
    wrist, exterior_1, exterior_2 = video_keys(flavour)
    return {
        "is_first": _scalar("bool"),
        "is_last": _scalar("bool"),
        "is_terminal": _scalar("bool"),
        "language_instruction": _scalar("string"),
        "language_instruction_2": _scalar("string"),
        "language_instruction_3": _scalar("string"),
        "observation.state.gripper_position": _vector("float32", ["gripper"]),
        "observation.state.cartesian_position": _vector("float32", _POSE),
        "observation.state.joint_position": _vector("float32", _JOINTS),
        "observation.state": _vector("float32", [*_JOINTS, "gripper"]),
        wrist: _video(*size),
        exterior_1: _video(*size),
        exterior_2: _video(*size),
        "action.gripper_position": _vector("float32", ["gripper"]),
        "action.gripper_velocity": _vector("float32", ["gripper"]),
        "action.cartesian_position": _vector("float32", _POSE),
        "action.cartesian_velocity": _vector("float32", _POSE),
        "action.joint_position": _vector("float32", _JOINTS),
        "action.joint_velocity": _vector("float32", _JOINTS),
        "action.original": _vector("float32", [*_POSE, "gripper"]),
        "action": _vector("float32", [*_JOINTS, "gripper"]),
        "discount": _scalar("float32"),
        "reward": _scalar("float32"),
        "task_category": _scalar("string"),
        "building": _scalar("string"),
        "collector_id": _scalar("string"),
        "date": _scalar("string"),
        "camera_extrinsics.wrist_left": _vector("float32", _POSE),
        "camera_extrinsics.exterior_1_left": _vector("float32", _POSE),
        "camera_extrinsics.exterior_2_left": _vector("float32", _POSE),
        "is_episode_successful": _scalar("bool"),
    }


def bimanual_pose_names(rotation: str) -> list[str]:
    """Names of the 2 × (3 + rotation width + 1) values of the bimanual state and action."""
    parts = ("x", "y", "z", *(f"rot_{i}" for i in range(ROTATIONS[rotation])), "gripper")
    return [f"{arm}_{part}" for arm in ("left", "right") for part in parts]


def _bimanual_features(rotation: str, size: tuple[int, int]) -> dict[str, dict[str, Any]]:
    names = bimanual_pose_names(rotation)
    return {
        "observation.state": {"dtype": "float32", "shape": (len(names),), "names": names},
        "action": {"dtype": "float32", "shape": (len(names),), "names": names},
        **{key: _video(*size) for key in video_keys("bimanual")},
    }


def _default_features() -> dict[str, dict[str, Any]]:
    return {
        "timestamp": _scalar("float32"),
        "frame_index": _scalar("int64"),
        "episode_index": _scalar("int64"),
        "index": _scalar("int64"),
        "task_index": _scalar("int64"),
    }


# --- Values ----------------------------------------------------------------------------------


def _rng(seed: int, episode: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, episode, stream])


def _waves(rng: np.random.Generator, n: int, dims: int, amplitude: float, fps: int) -> FloatArray:
    """Smooth bounded motion: two slow random sinusoids per dimension."""
    t = np.arange(n)[:, None, None] / fps
    freq = rng.uniform(0.1, 0.6, size=(1, dims, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(1, dims, 2))
    return (amplitude / 2 * np.sin(2 * np.pi * freq * t + phase)).sum(-1)


def _grip_profile(n: int, low: float, high: float) -> FloatArray:
    """Open, close over a few frames around a third of the episode, hold, reopen near the end."""
    t = np.arange(n, dtype=np.float64)
    close, reopen = n / 3, 0.8 * n
    return low + (high - low) * np.interp(t, [close - 2, close + 2, reopen - 2, reopen + 2], [0, 1, 1, 0])


def _wrap(angle: FloatArray) -> FloatArray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _droid_columns(spec: LeRobotEpisodeSpec, seed: int) -> dict[str, Any]:
    """One DROID episode's non-video columns (float32 as the port stores them)."""
    n = spec.length
    rng = _rng(seed, spec.episode_index, 1)
    lead = 3  # the commanded pose runs this many frames ahead, plus an offset
    ext = n + lead
    xyz = np.array([0.5, 0.0, 0.3]) + _waves(rng, ext, 3, 0.12, DROID_FPS)
    rpy = np.stack(
        [_wrap(np.pi + _waves(rng, ext, 1, 0.5, DROID_FPS)[:, 0]), _waves(rng, ext, 1, 0.4, DROID_FPS)[:, 0],
         _waves(rng, ext, 1, 1.2, DROID_FPS)[:, 0]], axis=1,
    )
    pose = np.concatenate([xyz, rpy], axis=1)
    grip = _grip_profile(ext, 0.0, rng.uniform(0.75, 1.0))
    joints = rng.uniform(-1.5, 1.5, 7) + _waves(rng, ext, 7, 0.4, DROID_FPS)
    command = pose[lead:] + np.array([0.01, -0.01, 0.005, 0.02, -0.02, 0.03])
    command[:, 3:] = _wrap(command[:, 3:])
    grip_cmd = np.clip(grip[lead:] + 0.05, 0.0, 1.0)
    state_pose, state_grip, state_joints = pose[:n], grip[:n, None], joints[:n]
    f32 = np.float32
    strings = {
        "task_category": "kitchen", "building": f"building_{spec.episode_index % 3}",
        "collector_id": f"collector_{spec.episode_index % 5:02d}", "date": f"2023-0{1 + spec.episode_index % 9}-15",
    }
    extrinsics = {key: np.tile(rng.normal(0, 0.5, 6), (n, 1)).astype(f32) for key in ("wrist_left", "exterior_1_left", "exterior_2_left")}
    first = np.zeros((n, 1), bool)
    first[0] = True
    last = np.zeros((n, 1), bool)
    last[-1] = True
    return {
        "is_first": first,
        "is_last": last,
        "is_terminal": last.copy(),
        "language_instruction": [spec.language[0]] * n,
        "language_instruction_2": [spec.language[1]] * n,
        "language_instruction_3": [spec.language[2]] * n,
        "observation.state.gripper_position": state_grip.astype(f32),
        "observation.state.cartesian_position": state_pose.astype(f32),
        "observation.state.joint_position": state_joints.astype(f32),
        "observation.state": np.concatenate([state_joints, state_grip], axis=1).astype(f32),
        "action.gripper_position": grip_cmd[:, None].astype(f32),
        "action.gripper_velocity": (np.gradient(grip_cmd) * DROID_FPS)[:, None].astype(f32),
        "action.cartesian_position": command.astype(f32),
        "action.cartesian_velocity": (np.gradient(command, axis=0) * DROID_FPS).astype(f32),
        "action.joint_position": joints[lead:].astype(f32),
        "action.joint_velocity": (np.gradient(joints[lead:], axis=0) * DROID_FPS).astype(f32),
        "action.original": np.concatenate([command, grip_cmd[:, None]], axis=1).astype(f32),
        "action": np.concatenate([joints[lead:], grip_cmd[:, None]], axis=1).astype(f32),
        "discount": np.ones((n, 1), f32),
        "reward": last.astype(f32),
        **{key: [value] * n for key, value in strings.items()},
        **{f"camera_extrinsics.{key}": value for key, value in extrinsics.items()},
        "is_episode_successful": np.full((n, 1), spec.successful),
    }


def _quat_xyzw_to_matrix(q: FloatArray) -> FloatArray:
    x, y, z, w = (q[:, i] for i in range(4))
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def _encode_rotation(quat_xyzw: FloatArray, rotation: str) -> FloatArray:
    """One unit-quaternion trajectory written in the requested convention."""
    if rotation == "quat_xyzw":
        return quat_xyzw
    if rotation == "quat_wxyz":
        return quat_xyzw[:, [3, 0, 1, 2]]
    m = _quat_xyzw_to_matrix(quat_xyzw)
    if rotation == "matrix":
        return m.reshape(-1, 9)
    if rotation == "rot6d_rows":
        return m[:, :2, :].reshape(-1, 6)
    roll = np.arctan2(m[:, 2, 1], m[:, 2, 2])
    pitch = np.arcsin(-np.clip(m[:, 2, 0], -1.0, 1.0))
    yaw = np.arctan2(m[:, 1, 0], m[:, 0, 0])
    return np.stack([roll, pitch, yaw], axis=1)


def _bimanual_columns(spec: LeRobotEpisodeSpec, seed: int, rotation: str) -> dict[str, Any]:
    """State and commanded action of both arms; the command leads the state by two frames."""
    n, lead = spec.length, 2
    ext = n + lead
    rng = _rng(seed, spec.episode_index, 2)
    arms = []
    for side in (1.0, -1.0):
        xyz = np.array([0.3, 0.25 * side, 0.2]) + _waves(rng, ext, 3, 0.08, BIMANUAL_FPS)
        quat = rng.normal(size=4) + _waves(rng, ext, 4, 0.6, BIMANUAL_FPS)
        quat /= np.linalg.norm(quat, axis=1, keepdims=True)
        quat *= rng.choice([-1.0, 1.0])  # q and -q are the same rotation; both occur in real data
        opening = 100.0 - _grip_profile(ext, 0.0, rng.uniform(60, 90))
        opening[opening > 99.5] += 1.0  # grippers report slightly past fully open
        arms.append(np.concatenate([xyz, _encode_rotation(quat, rotation), opening[:, None]], axis=1))
    both = np.concatenate(arms, axis=1)
    return {"observation.state": both[:n].astype(np.float32), "action": both[lead:].astype(np.float32)}


def _frames(spec: LeRobotEpisodeSpec, camera_number: int, size: tuple[int, int]) -> NDArray[np.uint8]:
    width, height = size
    levels = np.array([expected_gray_level(spec.episode_index, i, camera_number) for i in range(spec.length)], np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (spec.length, height, width, 3)).copy()


# --- Files -----------------------------------------------------------------------------------


def _encoder_config(codec: str) -> RGBEncoderConfig:
    return RGBEncoderConfig(vcodec=_ENCODERS[codec])


def _encode(frames: NDArray[np.uint8], path: Path, fps: int, codec: str) -> float:
    """Encode one episode as lerobot's ``encode_video_frames`` does; returns its duration (s)."""
    config = _encoder_config(codec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as output:
        stream = output.add_stream(config.vcodec, fps, options=config.get_codec_options(as_strings=True))
        stream.pix_fmt, stream.width, stream.height = config.pix_fmt, frames.shape[2], frames.shape[1]
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    with av.open(str(path)) as written:
        video = written.streams.video[0]
        return float(video.duration * video.time_base)


def _concatenate(parts: Sequence[Path], dst: Path) -> None:
    """Stream-copy episode videos one after the other (lerobot's ``concatenate_video_files``)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w", options={"movflags": "faststart"}) as output:
        out_stream = None
        offset = 0
        for part in parts:
            with av.open(str(part)) as source:
                stream = source.streams.video[0]
                if out_stream is None:
                    out_stream = output.add_stream_from_template(template=stream, opaque=True)
                    out_stream.time_base = stream.time_base
                for packet in source.demux(stream):
                    if packet.dts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = out_stream
                    output.mux(packet)
                offset += stream.duration


def _hf_table(features: dict[str, dict[str, Any]], columns: dict[str, Any]) -> pa.Table:
    """The episode's rows as lerobot builds them: a ``datasets`` table with HF feature metadata."""
    hf_features = get_hf_features_from_features(features)
    dataset = datasets.Dataset.from_dict({key: columns[key] for key in hf_features}, features=hf_features, split="train")
    return dataset.with_format("arrow")[:]


def _episode_stats(
    features: dict[str, dict[str, Any]], columns: dict[str, Any], frames: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """Per-episode statistics in lerobot's form; images from every frame (lerobot samples some)."""
    numeric = {key: value for key, value in columns.items() if features[key]["dtype"] not in ("string", "video")}
    stats = compute_episode_stats(numeric, features)
    for key, rgb in frames.items():
        image = get_feature_stats(np.moveaxis(rgb, -1, 1), axis=(0, 2, 3), keepdims=True)
        stats[key] = {k: v if k == "count" else np.squeeze(v / 255.0, axis=0) for k, v in image.items()}
    ordered = [key for key in features if key in stats]
    return {key: stats[key] for key in ordered}


@dataclass
class _Episode:
    """One episode's content, computed once and written in either layout."""

    spec: LeRobotEpisodeSpec
    columns: dict[str, Any]
    frames: dict[str, np.ndarray]
    stats: dict[str, dict[str, np.ndarray]]


def _build_episodes(
    flavour: str, specs: Sequence[LeRobotEpisodeSpec], features: dict[str, dict[str, Any]], tasks: dict[str, int],
    fps: int, size: tuple[int, int], rotation: str, seed: int,
) -> list[_Episode]:
    """Every episode's rows (with lerobot's bookkeeping columns), frames and statistics; tasks get
    indices in order of first appearance, as lerobot numbers them."""
    episodes = []
    first_index = 0
    for spec in specs:
        n = spec.length
        columns = _bimanual_columns(spec, seed, rotation) if flavour == "bimanual" else _droid_columns(spec, seed)
        columns.update(
            timestamp=np.arange(n) / fps,
            frame_index=np.arange(n),
            episode_index=np.full(n, spec.episode_index),
            index=np.arange(first_index, first_index + n),
            task_index=np.full(n, tasks.setdefault(spec.task, len(tasks))),
        )
        frames = {key: _frames(spec, number, size) for number, key in enumerate(video_keys(flavour))}
        episodes.append(_Episode(spec, columns, frames, _episode_stats(features, columns, frames)))
        first_index += n
    return episodes


def _file_position(number: int) -> dict[str, int]:
    """Chunk and file index of the ``number``-th file (lerobot's ``update_chunk_file_indices``)."""
    return {"chunk_index": number // CHUNKS_SIZE, "file_index": number % CHUNKS_SIZE}


def _write_v3(
    root: Path, episodes: list[_Episode], features: dict[str, dict[str, Any]], tasks: dict[str, int], fps: int,
    robot_type: str, codec: str, per_data_file: int, per_video_file: int, scratch: Path,
) -> None:
    keys = [key for key, ft in features.items() if ft["dtype"] == "video"]
    video_meta: dict[tuple[int, str], dict[str, Any]] = {}
    for key in keys:
        for group_start in range(0, len(episodes), per_video_file):
            group = episodes[group_start : group_start + per_video_file]
            position = _file_position(group_start // per_video_file)
            parts, elapsed = [], 0.0
            for episode in group:
                part = scratch / key / f"{episode.spec.episode_index:06d}.mp4"
                duration = _encode(episode.frames[key], part, fps, codec)
                video_meta[(episode.spec.episode_index, key)] = {
                    f"videos/{key}/chunk_index": position["chunk_index"],
                    f"videos/{key}/file_index": position["file_index"],
                    f"videos/{key}/from_timestamp": elapsed,
                    f"videos/{key}/to_timestamp": elapsed + duration,
                }
                elapsed += duration
                parts.append(part)
            _concatenate(parts, root / V3_VIDEO_PATH.format(video_key=key, **position))
    for group_start in range(0, len(episodes), per_data_file):
        group = episodes[group_start : group_start + per_data_file]
        position = _file_position(group_start // per_data_file)
        data_path = root / V3_DATA_PATH.format(**position)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        writer = None
        for episode in group:
            table = _hf_table(features, episode.columns)
            writer = writer or pq.ParquetWriter(data_path, schema=table.schema, compression="snappy", use_dictionary=True)
            writer.write_table(table)
            index = episode.columns["index"]
            row = {
                "episode_index": episode.spec.episode_index,
                "tasks": [episode.spec.task],
                "length": episode.spec.length,
                "data/chunk_index": position["chunk_index"],
                "data/file_index": position["file_index"],
                "dataset_from_index": int(index[0]),
                "dataset_to_index": int(index[-1]) + 1,
            }
            for key in keys:
                row.update(video_meta[(episode.spec.episode_index, key)])
            row.update({k: v.tolist() for k, v in flatten_dict({"stats": episode.stats}).items()})
            row.update({"meta/episodes/chunk_index": position["chunk_index"], "meta/episodes/file_index": position["file_index"]})
            rows.append(row)
        writer.close()
        meta_path = root / V3_EPISODES_PATH.format(**position)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pydict({column: [row[column] for row in rows] for column in rows[0]})
        with pq.ParquetWriter(meta_path, schema=table.schema, compression="snappy", use_dictionary=True) as meta_writer:
            meta_writer.write_table(table)
    for key in keys:
        first_file = root / V3_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
        features[key]["info"] = get_video_info(first_file, _encoder_config(codec))
    info = DatasetInfo(
        codebase_version="v3.0", fps=fps, features=features, total_episodes=len(episodes),
        total_frames=sum(e.spec.length for e in episodes), total_tasks=len(tasks), robot_type=robot_type,
        splits={"train": f"0:{len(episodes)}"},
    )
    write_info(info, root)
    write_stats(aggregate_stats([e.stats for e in episodes]), root)
    write_tasks(pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")), root)


def _v21_video_info(path: Path) -> dict[str, Any]:
    """The ``info`` block lerobot 0.3 recorded for a v2.1 video feature."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.fps": float(stream.base_rate),
            "video.height": stream.height,
            "video.width": stream.width,
            "video.channels": 3,
            "video.codec": stream.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False,
            "has_audio": False,
        }


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _write_v21(
    root: Path, episodes: list[_Episode], features: dict[str, dict[str, Any]], tasks: dict[str, int], fps: int,
    robot_type: str, codec: str,
) -> None:
    keys = [key for key, ft in features.items() if ft["dtype"] == "video"]
    for episode in episodes:
        index = episode.spec.episode_index
        chunk = index // CHUNKS_SIZE
        data_path = root / V2_DATA_PATH.format(episode_chunk=chunk, episode_index=index)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_hf_table(features, episode.columns), data_path)
        for key in keys:
            _encode(episode.frames[key], root / V2_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=index), fps, codec)
    for key in keys:
        features[key]["info"] = _v21_video_info(root / V2_VIDEO_PATH.format(episode_chunk=0, video_key=key, episode_index=0))
    info = {
        "codebase_version": "v2.1",
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": sum(e.spec.length for e in episodes),
        "total_tasks": len(tasks),
        "total_videos": len(episodes) * len(keys),
        "total_chunks": math.ceil(len(episodes) / CHUNKS_SIZE),
        "chunks_size": CHUNKS_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": V2_DATA_PATH,
        "video_path": V2_VIDEO_PATH,
        "features": {key: {**ft, "shape": list(ft["shape"])} for key, ft in features.items()},
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
    _write_jsonl(root / "meta/episodes.jsonl", [
        {"episode_index": e.spec.episode_index, "tasks": [e.spec.task], "length": e.spec.length} for e in episodes
    ])
    _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": i, "task": task} for task, i in tasks.items()])
    _write_jsonl(root / "meta/episodes_stats.jsonl", [
        {
            "episode_index": e.spec.episode_index,
            "stats": serialize_dict({key: {k: v for k, v in s.items() if not k.startswith("q")} for key, s in e.stats.items()}),
        }
        for e in episodes
    ])


def _prepare_root(root: Path, overwrite: bool) -> None:
    clear_generated(root, overwrite, lambda r: (r / "meta/info.json").is_file(), "LeRobot dataset")
    (root / "meta").mkdir(parents=True, exist_ok=True)


def write_lerobot_dataset(
    root: Path,
    version: str = "v3.0",
    flavour: str = "droid",
    episode_lengths: Sequence[int] = (20, 17, 24),
    video_size: tuple[int, int] = (64, 48),
    codec: str = "av1",
    rotation: str = "quat_xyzw",
    episodes_per_data_file: int = 2,
    episodes_per_video_file: int = 3,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a LeRobot dataset of ``flavour`` to ``root`` and return ``root``.

    ``video_size`` is (width, height) of every camera (DROID's real cameras are 320×180).
    ``rotation`` applies to the bimanual flavour only. ``episodes_per_*_file`` apply to v3.0 only.
    """
    if version not in ("v2.1", "v3.0"):
        raise ValueError(f"version must be v2.1 or v3.0, got {version!r}")
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {', '.join(_ENCODERS)}, got {codec!r}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {', '.join(ROTATIONS)}, got {rotation!r}")
    width, height = (int(v) for v in video_size)
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"video_size must be even and at least 16x16, got {video_size}")
    if episodes_per_data_file < 1 or episodes_per_video_file < 1:
        raise ValueError("episodes per file must be at least 1")
    specs = plan_episodes(flavour, episode_lengths)
    if not specs:
        raise ValueError("need at least one episode")
    root = Path(root)
    _prepare_root(root, overwrite)
    if flavour == "bimanual":
        fps, robot_type, features = BIMANUAL_FPS, BIMANUAL_ROBOT_TYPE, _bimanual_features(rotation, (width, height))
    else:
        fps, robot_type, features = DROID_FPS, DROID_ROBOT_TYPE, _droid_features(flavour, (width, height))
    features.update(_default_features())
    tasks: dict[str, int] = {}
    episodes = _build_episodes(flavour, specs, features, tasks, fps, (width, height), rotation, seed)
    if version == "v2.1":
        _write_v21(root, episodes, features, tasks, fps, robot_type, codec)
    else:
        with tempfile.TemporaryDirectory(prefix="lerobot-factory-") as scratch:
            _write_v3(
                root, episodes, features, tasks, fps, robot_type, codec, episodes_per_data_file, episodes_per_video_file, Path(scratch)
            )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clap_data.factories.lerobot DEST``: a small DROID-port (v3.0) sample by default."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--version", default="v3.0", choices=("v2.1", "v3.0"))
    parser.add_argument("--flavour", default="droid", choices=FLAVOURS)
    parser.add_argument("--lengths", default="20,17,24", help="comma-separated episode lengths (frames)")
    parser.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of every camera")
    parser.add_argument("--codec", default="av1", choices=tuple(_ENCODERS))
    parser.add_argument("--rotation", default="quat_xyzw", choices=tuple(ROTATIONS), help="bimanual flavour only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")  # libsvtav1 prints its whole configuration per episode otherwise
    width, height = (int(x) for x in args.size.lower().split("x"))
    path = write_lerobot_dataset(
        args.dest, version=args.version, flavour=args.flavour,
        episode_lengths=[int(x) for x in args.lengths.split(",") if x], video_size=(width, height),
        codec=args.codec, rotation=args.rotation, seed=args.seed, overwrite=True,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
