"""Write a synthetic AgiBot World (Beta) tree in the release's on-disk format (FORMATS.md).

No public sample exists, so this factory is the stand-in for the real release: ``task_info``
JSON lists, ``proprio_stats.h5`` files with every dataset the release documents (the unused
ones included, many of them empty ``(0,)`` placeholders), one mp4 per camera (three pinhole and
five fisheye views), head depth PNGs (uint16 mm) and camera parameter JSONs.

Quirks of the release written on purpose:

* ``action/<group>/index`` lists fewer frames than the state has (M < N), with gaps; the action
  rows of frames that are not in the index hold zeros, so a reader that ignores the index reads
  zero quaternions. Episodes cycle through :data:`ACTION_LAYOUTS`: ``by_frame`` (N rows, sparse
  index), ``short`` (N - 5 rows, the index still reaching past them), ``paired`` (one row per
  index entry) and ``unindexed`` (N - 3 rows, empty ``(0,)`` index datasets);
* quaternions (xyzw) that flip sign and are not exactly unit length; gripper openings (mm) a
  little wider than :data:`NOMINAL_OPEN_MM`; timestamps (int64 ns) with jitter;
* ``label_info.action_config`` segments with unlabelled gaps at the start, middle and end;
* tasks on the release's known-bad list carry their defect: action arrays 3 rows longer than the
  state (:data:`~clap_data.sources.agibot.ACTION_TOO_LONG_TASKS`) or a truncated head video
  (:data:`~clap_data.sources.agibot.CORRUPT_MP4_TASKS`);
* optional: dexterous-hand tasks (effector arrays [N, 12]) and episodes with an h5 file but no
  task_info entry (``orphan_episodes``).

Values are plausible, not physical: smooth seeded end-effector paths; commands lead the state by
:data:`COMMAND_LEAD_FRAMES`. Video frames are flat gray images whose level encodes (episode,
frame, camera), see :func:`expected_gray_level`, so frame alignment survives lossy coding.
The codec of the real files is unverified (converters declare AV1): AV1 (libsvtav1) by default,
H.264 on request, 30 fps, one frame per h5 row.

Run ``python -m clap_data.factories.agibot DEST`` to write the default tree.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from clap_data.factories.common import clear_generated, encode_gray_video
from clap_data.sources.agibot import ACTION_TOO_LONG_TASKS, CORRUPT_MP4_TASKS

__all__ = [
    "ACTION_LAYOUTS",
    "AGIBOT_FPS",
    "ALL_CAMERAS",
    "COMMAND_LEAD_FRAMES",
    "DEFAULT_TASKS",
    "NOMINAL_OPEN_MM",
    "AgibotEpisodeSpec",
    "AgibotSegment",
    "expected_gray_level",
    "plan_agibot_episodes",
    "write_agibot_dataset",
]

FloatArray = NDArray[np.float64]

AGIBOT_FPS = 30
PINHOLE_CAMERAS = ("head_color", "hand_left_color", "hand_right_color")
FISHEYE_CAMERAS = (
    "head_center_fisheye_color", "head_left_fisheye_color", "head_right_fisheye_color",
    "back_left_fisheye_color", "back_right_fisheye_color",
)
ALL_CAMERAS = PINHOLE_CAMERAS + FISHEYE_CAMERAS
ACTION_LAYOUTS = ("by_frame", "short", "paired", "unindexed")
DEFAULT_TASKS: Mapping[int, tuple[int, ...]] = {327: (40, 44, 36, 38), 352: (30,)}
MIN_LENGTH = 16  # room for the index gaps and label gaps below
COMMAND_LEAD_FRAMES = 2
NOMINAL_OPEN_MM = 120.0  # the gripper opens a little wider than this (the state map clamps it)
_OPENING_MM = (NOMINAL_OPEN_MM + 3.0, 35.0)  # (released, holding an object)
_SHORT_BY, _UNINDEXED_SHORT_BY, _TOO_LONG_BY = 5, 3, 3
_FRAME_NS = 1_000_000_000 // AGIBOT_FPS
_T0_NS = 1_726_000_000_000_000_000
_HOME = {0: np.array([0.55, 0.28, 1.05]), 1: np.array([0.55, -0.28, 1.05])}
_OBJECTS = ("bottle of water", "bag of chips", "yogurt cup", "box of tissues", "apple")
_PLACES = ("shopping cart", "shelf", "tray", "basket")


@dataclass(frozen=True)
class AgibotSegment:
    """One ``action_config`` entry: frames ``[start, end)`` (half-open, as the release counts)."""

    start: int
    end: int
    action_text: str
    skill: str


@dataclass(frozen=True)
class AgibotEpisodeSpec:
    """What one synthetic episode is; the written values follow from it and the seed."""

    task_id: int
    episode_id: int
    length: int
    task_name: str
    init_scene_text: str
    segments: tuple[AgibotSegment, ...]
    action_layout: str  # one of ACTION_LAYOUTS
    end_index: tuple[int, ...]  # action/end/index as written (empty: a (0,) dataset)
    effector_index: tuple[int, ...]
    end_rows: int  # rows of action/end/{position,orientation}
    effector_rows: int  # rows of action/effector/position
    dexterous: bool = False
    corrupt_head_video: bool = False
    listed: bool = True  # False: an h5 file without task_info entry

    @property
    def relative_dir(self) -> str:
        return f"{self.task_id}/{self.episode_id}"


def expected_gray_level(episode_id: int, frame: int, camera: str) -> int:
    """The flat gray level (28..227) of ``frame`` in ``camera``'s video of an episode.

    ``(17 * frame + 40 * c + 7 * (episode_id % 29)) % 200 + 28`` with c the camera's position
    in :data:`ALL_CAMERAS`. Neighbouring frames differ by 17 levels, far more than AV1/H.264 move
    a flat image (±2), so decoding a frame and comparing within ±6 proves alignment.
    """
    return (17 * frame + 40 * ALL_CAMERAS.index(camera) + 7 * (episode_id % 29)) % 200 + 28


# --- planning ---------------------------------------------------------------------------------


def _segments(n: int, obj: str, place: str) -> tuple[AgibotSegment, ...]:
    """Pick, place, retract with unlabelled frames before, between and after them."""
    a, b = n // 3, (2 * n) // 3
    return (
        AgibotSegment(1, a, f"Grasp the {obj}", "Pick"),
        AgibotSegment(a + 2, b, f"Place the {obj} on the {place}", "Place"),
        AgibotSegment(b, n - 2, "Retract the arm", "Retract"),
    )


def _indices(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(end, effector) command frames: M < N, with a gap in the middle and none at the ends."""
    middle = set(range(n // 2, n // 2 + 3))
    end = tuple(f for f in range(2, n - 2) if f not in middle)
    effector = tuple(f for f in range(4, n - 1) if f % 5 != 0)
    return end, effector


def _layout(spec_args: dict, layout: str, n: int, too_long: bool) -> dict:
    end, effector = _indices(n)
    if too_long:  # the release's defect: commands recorded past the end of the state
        rows = n + _TOO_LONG_BY
        return {**spec_args, "action_layout": "by_frame", "end_index": tuple(range(2, rows)),
                "effector_index": tuple(range(4, rows)), "end_rows": rows, "effector_rows": rows}
    rows = {
        "by_frame": (n, n),
        "short": (n - _SHORT_BY, n - _SHORT_BY),
        "paired": (len(end), len(effector)),
        "unindexed": (n - _UNINDEXED_SHORT_BY, n - _UNINDEXED_SHORT_BY),
    }[layout]
    if layout == "unindexed":
        end, effector = (), ()
    return {**spec_args, "action_layout": layout, "end_index": end, "effector_index": effector,
            "end_rows": rows[0], "effector_rows": rows[1]}


def plan_agibot_episodes(
    tasks: Mapping[int, Sequence[int]] = DEFAULT_TASKS,
    seed: int = 0,
    dexterous_tasks: Sequence[int] = (),
    orphan_episodes: int = 0,
) -> list[AgibotEpisodeSpec]:
    """The episodes :func:`write_agibot_dataset` writes, listed ones by (task, episode id), then
    the orphans (appended to the first task). Layouts cycle over the listed episodes in order."""
    specs: list[AgibotEpisodeSpec] = []
    task_ids = sorted(tasks)
    if not task_ids:
        raise ValueError("need at least one task")
    for task_id in task_ids:
        rng = np.random.default_rng([seed, task_id])
        obj, place = str(rng.choice(_OBJECTS)), str(rng.choice(_PLACES))
        lengths = list(tasks[task_id]) + ([MIN_LENGTH + 8] * orphan_episodes if task_id == task_ids[0] else [])
        for k, n in enumerate(lengths):
            if int(n) != n or n < MIN_LENGTH:
                raise ValueError(f"task {task_id}: episode lengths must be ints >= {MIN_LENGTH}, got {n!r}")
            listed = k < len(tasks[task_id])
            base = {
                "task_id": task_id,
                "episode_id": 600000 + 100 * (task_id % 1000) + k,
                "length": int(n),
                "task_name": f"Pick up the {obj} and put it on the {place}",
                "init_scene_text": f"The {obj} stands on the table, the {place} is to the robot's right.",
                "segments": _segments(int(n), obj, place),
                "dexterous": task_id in dexterous_tasks,
                "corrupt_head_video": task_id in CORRUPT_MP4_TASKS,
                "listed": listed,
            }
            layout = ACTION_LAYOUTS[len(specs) % len(ACTION_LAYOUTS)] if listed else "by_frame"
            specs.append(AgibotEpisodeSpec(**_layout(base, layout, int(n), task_id in ACTION_TOO_LONG_TASKS)))
    return specs


# --- values -------------------------------------------------------------------------------------


def _smooth(rng: np.random.Generator, n: int, dims: int, scale: float) -> FloatArray:
    """Smooth noise: a random walk through a few knots, linearly interpolated."""
    knots = max(2, n // 10)
    values = np.cumsum(rng.normal(0.0, scale, (knots, dims)), axis=0)
    x = np.linspace(0, n - 1, knots)
    return np.stack([np.interp(np.arange(n), x, values[:, d]) for d in range(dims)], axis=1)


def _axis_angle_quat_xyzw(w: FloatArray) -> FloatArray:
    angle = np.linalg.norm(w, axis=-1, keepdims=True)
    axis = np.divide(w, angle, out=np.zeros_like(w), where=angle > 1e-12)
    return np.concatenate([axis * np.sin(angle / 2), np.cos(angle / 2)], axis=-1)


def _quat_multiply_xyzw(a: FloatArray, b: FloatArray) -> FloatArray:
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ], axis=-1)


@dataclass(frozen=True)
class _Trajectory:
    """Per extended frame (length + lead + spare rows), both arms: the state is rows [0, n)."""

    position: FloatArray  # [T, 2, 3] m
    orientation: FloatArray  # [T, 2, 4] xyzw, sign flips and non-unit norms included
    opening_mm: FloatArray  # [T, 2]
    closed: FloatArray  # [T, 2] gripper command 0 (open) .. 1 (closed)


def _trajectory(spec: AgibotEpisodeSpec, seed: int, rows: int) -> _Trajectory:
    rng = np.random.default_rng([seed, spec.task_id, spec.episode_id])
    t = np.arange(rows)
    position = np.zeros((rows, 2, 3))
    orientation = np.zeros((rows, 2, 4))
    grasp, release = spec.length // 3, (2 * spec.length) // 3
    closed = np.zeros((rows, 2))
    for arm in range(2):
        reach = np.array([0.12, -0.08 if arm else 0.08, -0.10]) * (1.0 if arm == 1 else 0.3)
        bump = np.clip(np.minimum(t / max(grasp, 1), (spec.length - t) / max(spec.length - release, 1)), 0, 1)
        position[:, arm] = _HOME[arm] + bump[:, None] * reach + _smooth(rng, rows, 3, 0.003)
        base = _axis_angle_quat_xyzw(rng.normal(0.0, 0.4, 3) + np.array([np.pi / 2, 0.0, 0.0]))
        turn = _axis_angle_quat_xyzw(_smooth(rng, rows, 3, 0.05))
        orientation[:, arm] = _quat_multiply_xyzw(np.broadcast_to(base, (rows, 4)), turn)
        closed[:, arm] = np.interp(t, [grasp - 2, grasp + 1, release, release + 2], [0.0, 1.0, 1.0, 0.0])
    flips = (t % 7 == 3)[:, None, None]  # q and -q are the same rotation
    orientation = np.where(flips, -orientation, orientation) * (1.0 + rng.uniform(-2e-4, 2e-4, (rows, 2, 1)))
    released, holding = _OPENING_MM
    lagged = np.stack([np.interp(t - COMMAND_LEAD_FRAMES, t, closed[:, arm]) for arm in range(2)], axis=1)
    opening = released - (released - holding) * lagged + rng.uniform(-0.3, 0.3, (rows, 2))
    return _Trajectory(position, orientation, opening, closed)


def _command_rows(frames: Sequence[int], rows: int, layout: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(row, frame) pairs that hold a command in an action array of ``rows`` rows."""
    if layout == "paired":
        return np.arange(rows), np.asarray(frames, dtype=np.int64)
    if not frames:  # unindexed: every row is a command
        return np.arange(rows), np.arange(rows)
    kept = np.asarray([f for f in frames if f < rows], dtype=np.int64)
    return kept, kept


def _proprio(spec: AgibotEpisodeSpec, seed: int) -> dict[str, np.ndarray]:
    """Every dataset of proprio_stats.h5, by path."""
    n = spec.length
    rows = max(n, spec.end_rows, spec.effector_rows) + COMMAND_LEAD_FRAMES
    traj = _trajectory(spec, seed, rows)
    rng = np.random.default_rng([seed, spec.task_id, spec.episode_id, 1])
    jitter = rng.integers(-2_000_000, 2_000_000, n)
    data: dict[str, np.ndarray] = {
        "timestamp": (_T0_NS + spec.episode_id * 10**12 + np.arange(n) * _FRAME_NS + jitter).astype(np.int64),
        "state/end/position": traj.position[:n],
        "state/end/orientation": traj.orientation[:n],
        "state/joint/position": _smooth(rng, n, 14, 0.02),
        "state/joint/current_value": _smooth(rng, n, 14, 0.1),
        "state/head/position": np.tile([0.0, 0.43], (n, 1)) + _smooth(rng, n, 2, 0.001),
        "state/waist/position": np.tile([0.52, 0.28], (n, 1)),
    }
    end_rows, end_frames = _command_rows(spec.end_index, spec.end_rows, spec.action_layout)
    grip_rows, grip_frames = _command_rows(spec.effector_index, spec.effector_rows, spec.action_layout)
    lead = COMMAND_LEAD_FRAMES
    position = np.zeros((spec.end_rows, 2, 3))
    orientation = np.zeros((spec.end_rows, 2, 4))  # rows without a command stay zero, as a trap
    position[end_rows] = traj.position[end_frames + lead]
    orientation[end_rows] = traj.orientation[end_frames + lead]
    closed = np.zeros((spec.effector_rows, 2))
    closed[grip_rows] = traj.closed[grip_frames + lead]
    if spec.dexterous:
        data["state/effector/position"] = _smooth(rng, n, 12, 0.05)
        data["action/effector/position"] = _smooth(rng, spec.effector_rows, 12, 0.05)
    else:
        data["state/effector/position"] = traj.opening_mm[:n]
        data["action/effector/position"] = closed
    data.update({
        "action/end/position": position,
        "action/end/orientation": orientation,
        "action/end/index": np.asarray(spec.end_index, dtype=np.int64),
        "action/effector/index": np.asarray(spec.effector_index, dtype=np.int64),
        "action/joint/position": _smooth(rng, spec.end_rows, 14, 0.02),
        "action/joint/index": np.asarray(spec.end_index, dtype=np.int64),
        "action/head/position": np.tile([0.0, 0.43], (n, 1)),
        "action/waist/position": np.tile([0.52, 0.28], (n, 1)),
    })
    for name in (  # the release's empty placeholders
        "state/joint/effort", "state/joint/velocity", "state/end/velocity", "state/end/angular", "state/end/wrench",
        "state/effector/force", "state/head/effort", "state/head/velocity", "state/waist/effort", "state/waist/velocity",
        "state/robot/position", "state/robot/orientation", "state/robot/position_drift", "state/robot/orientation_drift",
        "action/joint/effort", "action/joint/velocity", "action/effector/force", "action/end/wrench",
        "action/head/index", "action/waist/index", "action/robot/velocity", "action/robot/index",
    ):
        data[name] = np.zeros(0)
    return data


# --- files --------------------------------------------------------------------------------------

_ENCODERS = {"av1": "libsvtav1", "h264": "libx264"}


def _encode_gray_video(path: Path, levels: Sequence[int], size: tuple[int, int], codec: str) -> None:
    """30 fps yuv420p, one keyframe per second, no frame reordering, pts = frame."""
    options = (
        {"preset": "10", "crf": "30", "svtav1-params": f"keyint={AGIBOT_FPS}:scd=0"} if codec == "av1" else {"bf": "0", "crf": "23"}
    )
    encode_gray_video(path, levels, size, AGIBOT_FPS, _ENCODERS[codec], options, gop=AGIBOT_FPS)


def _write_h5(path: Path, data: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for name, values in data.items():
            h5.create_dataset(name, data=values)


def _task_entry(spec: AgibotEpisodeSpec) -> dict:
    return {
        "episode_id": spec.episode_id,
        "task_name": spec.task_name,
        "init_scene_text": spec.init_scene_text,
        "label_info": {
            "action_config": [
                {"start_frame": s.start, "end_frame": s.end, "action_text": s.action_text, "skill": s.skill}
                for s in spec.segments
            ]
        },
    }


def _camera_parameters(folder: Path, size: tuple[int, int]) -> None:
    """Pinhole intrinsics and extrinsics of the three colour cameras (not read by the ingester)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for camera in ("head", "hand_left", "hand_right"):
        intrinsic = {"fx": 0.95 * width, "fy": 0.95 * width, "ppx": width / 2, "ppy": height / 2, "width": width, "height": height}
        extrinsic = {"extrinsic": {"rotation_matrix": np.eye(3).tolist(), "translation_vector": [0.0, 0.0, 0.1]}}
        (folder / f"{camera}_intrinsic_params.json").write_text(json.dumps({"intrinsic": intrinsic}, indent=2))
        (folder / f"{camera}_extrinsic_params.json").write_text(json.dumps(extrinsic, indent=2))


def _write_episode(root: Path, spec: AgibotEpisodeSpec, seed: int, size: tuple[int, int], codec: str,
                   fisheye: bool, depth: bool) -> None:
    _write_h5(root / "proprio_stats" / spec.relative_dir / "proprio_stats.h5", _proprio(spec, seed))
    observations = root / "observations" / spec.relative_dir
    for camera in PINHOLE_CAMERAS + (FISHEYE_CAMERAS if fisheye else ()):
        path = observations / "videos" / f"{camera}.mp4"
        _encode_gray_video(path, [expected_gray_level(spec.episode_id, i, camera) for i in range(spec.length)], size, codec)
        if camera == "head_color" and spec.corrupt_head_video:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if depth:
        (observations / "depth").mkdir(parents=True, exist_ok=True)
        for i in range(spec.length):
            mm = np.full((size[1], size[0]), 800 + 5 * i, dtype=np.uint16)
            Image.fromarray(mm).save(observations / "depth" / f"head_depth_{i:06d}.png")
    _camera_parameters(root / "parameters" / spec.relative_dir / "camera", size)


def _prepare_root(root: Path, overwrite: bool) -> None:
    clear_generated(
        root, overwrite, lambda r: (r / "task_info").is_dir() and (r / "proprio_stats").is_dir(), "AgiBot tree"
    )
    (root / "task_info").mkdir(parents=True)


def write_agibot_dataset(
    root: Path,
    tasks: Mapping[int, Sequence[int]] = DEFAULT_TASKS,
    video_size: tuple[int, int] = (32, 32),
    seed: int = 0,
    codec: str = "av1",
    fisheye: bool = True,
    depth: bool = True,
    dexterous_tasks: Sequence[int] = (),
    orphan_episodes: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the tree for ``tasks`` (task id -> episode lengths in frames) and return ``root``.

    Every camera gets ``video_size`` (width, height; the real pinhole views are 640x480, the
    fisheye ones 960x768). ``fisheye`` and ``depth`` can be turned off to save time in tests;
    ``codec`` is ``"av1"`` or ``"h264"``. See :func:`plan_agibot_episodes` for what is written.
    """
    root = Path(root)
    width, height = int(video_size[0]), int(video_size[1])
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"video_size must be even and at least 16x16, got {video_size}")
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {', '.join(_ENCODERS)}, got {codec!r}")
    specs = plan_agibot_episodes(tasks, seed, dexterous_tasks, orphan_episodes)
    _prepare_root(root, overwrite)
    for spec in specs:
        _write_episode(root, spec, seed, (width, height), codec, fisheye, depth)
    for task_id in sorted(tasks):
        entries = [_task_entry(s) for s in specs if s.task_id == task_id and s.listed]
        (root / "task_info" / f"task_{task_id}.json").write_text(json.dumps(entries, indent=4, ensure_ascii=False))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clap_data.factories.agibot DEST``: a small AgiBot World tree for demos."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--tasks", default="327:40,44,36,38;352:30", help="TASK:LEN,LEN;TASK:LEN,...")
    parser.add_argument("--size", default="32x32", help="WIDTHxHEIGHT of every camera")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", default="av1", choices=sorted(_ENCODERS))
    parser.add_argument("--no-fisheye", action="store_true")
    parser.add_argument("--no-depth", action="store_true")
    parser.add_argument("--orphans", type=int, default=0, help="episodes with an h5 file but no task_info entry")
    args = parser.parse_args(argv)
    tasks = {}
    for part in filter(None, args.tasks.split(";")):
        task, lengths = part.split(":")
        tasks[int(task)] = tuple(int(x) for x in lengths.split(",") if x)
    width, height = (int(x) for x in args.size.lower().split("x"))
    path = write_agibot_dataset(
        args.dest, tasks=tasks, video_size=(width, height), seed=args.seed, codec=args.codec,
        fisheye=not args.no_fisheye, depth=not args.no_depth, orphan_episodes=args.orphans, overwrite=True,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
