"""Write a synthetic dataset in the exact on-disk format of the real Astribot S1 sample.

The real two-episode sample (``shared/fixtures/astribot_s1_dummy``) is incomplete on purpose and
absent from a plain clone, so tests and benchmarks of the Astribot ingester generate data here:
GR00T-flavoured LeRobot v2.0 with every quirk of the real files kept (``prompt`` declared as 512
long but stored 128 long, ``bboxes``/``keypoints`` in the parquet but not in ``info.json``, a
``task_index`` *pair*, grippers slightly outside 0..100, HEVC video with GOP 2). See the Astribot
section of ``docs/FORMATS.md``.

Values are plausible, not physical: poses are smooth seeded trajectories around the real sample's
ranges with real rotation matrices, but joints are not the inverse kinematics of the poses and
the image-space annotations use a made-up linear projection. Video frames are flat gray images
whose level encodes (episode, frame, camera) — see :func:`expected_gray_level` — so a reader can
check frame alignment after lossy decoding.

Run ``python -m clap_data.factories.astribot DEST`` to write the default two-episode dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from clap_data import geometry
from clap_data.factories.common import clear_generated, encode_gray_video, encode_rgb_frames

__all__ = [
    "ASTRIBOT_FPS",
    "KNOWN_CAMERAS",
    "PTS_PER_FRAME",
    "VIDEO_TIME_BASE",
    "AstribotEpisodeContent",
    "AstribotEpisodeSpec",
    "AstribotSubtask",
    "expected_gray_level",
    "plan_astribot_episodes",
    "video_key",
    "write_astribot_dataset",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# --- Format constants, as found in the real sample -------------------------------------------
CODEBASE_VERSION = "v2.0"
ROBOT_TYPE = "S1-stationary"
ASTRIBOT_FPS = 30
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
# Stored prompt arrays are 128 long; the real info.json declares 512 for ``prompt`` (kept).
PROMPT_LEN = 128
PROMPT_DECLARED_LEN = 512
# mp4 time base of the real videos: 30 fps * 512 ticks, so pts = 512 * frame.
VIDEO_TIME_BASE = Fraction(1, 15360)
PTS_PER_FRAME = 512
# Cameras of the real robot, in info.json order; their position is the camera number of
# expected_gray_level.
KNOWN_CAMERAS = ("head", "left", "right")
# x265 settings of the real videos: keyframe every 2 frames, no B-frames (what decides seeking).
_X265_PARAMS = "keyint=2:min-keyint=2:bframes=0:scenecut=0:log-level=error"
_RGB_CRF = 18  # caller-supplied frames only; the gray ones keep x265's default
# The command stream runs this many frames ahead of the measured state (real: ~1-2 frames).
COMMAND_LEAD_FRAMES = 2
# waypoints_command = the next 40 commanded waypoints of both grippers, 4 ints each (160).
WAYPOINT_HORIZON = 40
# bboxes: 10 slots of [object id, x1, y1, x2, y2], -1 padded (50 ints); keypoints: 10 (x, y).
MAX_BOXES = 10
BOX_FIELDS = 5
N_KEYPOINTS = 10
# Gripper quirks of the real data: the idle arm's state sits at -0.206; grippers over/undershoot.
IDLE_GRIPPER_STATE = -0.206
GRIPPER_COMMAND_OVERSHOOT = 100.5
GRIPPER_STATE_UNDERSHOOT = -2.4
GRIPPER_STATE_RELEASED = -0.42

BACK_HOME = "back home"
_OBJECTS = ("sika deer", "ham sausage", "zebra", "toy car", "green apple", "rubber duck")
_CONTAINERS = ("round woven basket", "blue plate", "white bowl")

# Nominal values taken from frame 0 of the real episode (metres, radians, rot6d rows).
_TORSO_XYZ = np.array([0.19, 0.0, 1.2537])
_TORSO_PITCH = 0.165
_HOME_XYZ = {"left": np.array([0.43, 0.24, 0.92]), "right": np.array([0.48, -0.10, 0.95])}
_HOME_ROT6D = {
    "left": np.array([0.1291, -0.9319, 0.3390, 0.9916, 0.1254, -0.0330]),
    "right": np.array([0.0883, -0.9326, 0.3498, 0.9955, 0.0702, -0.0639]),
}
_HEAD_YAW_PITCH = np.array([0.0, 0.908])
_CHASSIS = np.array([-0.0044, -0.0143, -0.0740])
_TORSO_JOINTS = np.array([0.595, -0.795, 0.369, 0.0057])
# Per-arm joint ranges seen in the real episode (min, max), 7 joints each.
_ARM_JOINT_RANGE = {
    "left": (
        np.array([0.186, -0.485, -1.492, 1.582, -0.500, 0.172, -0.639]),
        np.array([0.504, -0.112, -1.109, 1.806, -0.239, 0.345, -0.100]),
    ),
    "right": (
        np.array([-0.625, 0.046, 0.795, 1.408, 0.173, -0.737, -0.895]),
        np.array([0.478, 0.352, 1.665, 2.295, 0.878, 0.274, -0.221]),
    ),
}

# Column layout of cartesian_so3_dict.* (34) and joints_dict.* (25).
CART_DIM = 34
JOINT_DIM = 25
# Per arm (left, right) in cartesian_so3_dict.*: xyz, rot6d rows, gripper 0..100 (0 open).
_ARM_COLUMNS = ((slice(9, 12), slice(12, 18), 18), (slice(19, 22), slice(22, 28), 28))


@dataclass(frozen=True)
class AstribotSubtask:
    """One fine-grained instruction and the frames it covers.

    ``start`` and ``end`` are *inclusive* episode frame indices, because that is how the real
    data counts them (``sub_task_index`` reaches 0 on the last frame; extra_data keys are
    ``"start, end"`` inclusive).
    """

    text: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class AstribotEpisodeSpec:
    """What one synthetic episode is about; the per-frame values are derived from it and the seed.

    Kept separate from the writer so tests can know, without reading files back, which
    instruction every frame should carry.
    """

    episode_index: int
    length: int
    object_name: str
    container: str
    arm: str  # the manipulating arm, "left" or "right"; the other one idles
    subtasks: tuple[AstribotSubtask, ...]

    @property
    def coarse_task(self) -> str:
        return f"put the {self.object_name} in {self.container}"

    @property
    def episode_chunk(self) -> int:
        return self.episode_index // CHUNKS_SIZE


@dataclass(frozen=True)
class AstribotEpisodeContent:
    """Arm poses and frames a caller supplies for one episode instead of the factory's own.

    The rendered-motion factory (:mod:`clap_data.factories.rendered`) draws frames from the
    poses, so both must come from the caller for the pixels to show the recorded motion. Poses are
    canonical (METHOD.md §1: per arm x, y, z, roll, pitch, yaw, gripper in [-1, 1], +1 closed) and
    are written in the format's own terms (rot6d rows, gripper 0..100 with 0 open); torso, head,
    chassis and joints keep the factory's values.
    """

    state: FloatArray  # [length, 14] measured poses
    command: FloatArray  # [length, 14] commanded poses
    frames: Mapping[str, NDArray[np.uint8]]  # camera short name -> [length, height, width, 3] RGB


def video_key(camera: str) -> str:
    """The info.json feature / folder name of a camera: ``head`` -> ``images_dict.head.rgb``."""
    return f"images_dict.{camera}.rgb"


def _camera_number(camera: str) -> int:
    if camera in KNOWN_CAMERAS:
        return KNOWN_CAMERAS.index(camera)
    return len(KNOWN_CAMERAS) + zlib.crc32(camera.encode()) % 7


def expected_gray_level(episode_index: int, frame_index: int, camera: str) -> int:
    """The flat RGB gray level (28..227) of a frame written by :func:`write_astribot_dataset`.

    ``(17 * frame_index + 40 * camera_number + 7 * episode_index) % 200 + 28``, where
    camera_number is the camera's position in :data:`KNOWN_CAMERAS` (head 0, left 1, right 2;
    other names get a stable number >= 3). Large flat areas survive HEVC within about ±2 levels,
    and neighbouring frames differ by 17, so decoding frame i and comparing with this value
    within ±6 proves frame alignment (a shift of 12 frames would alias: 17*12 % 200 = 4).
    The range stays clear of 0 and 255 so studio-range YUV conversion never clips it.
    With ``reuse_videos=True`` every episode's video holds episode 0's levels.
    """
    return (17 * frame_index + 40 * _camera_number(camera) + 7 * episode_index) % 200 + 28


# --- Episode planning ------------------------------------------------------------------------


def _episode_rng(seed: int, episode_index: int, stream: int) -> np.random.Generator:
    # One generator per (episode, purpose): adding episodes never changes the earlier ones.
    return np.random.default_rng([seed, episode_index, stream])


def _split_subtasks(
    rng: np.random.Generator, length: int, obj: str, container: str, arm: str
) -> tuple[AstribotSubtask, ...]:
    """Two or three fine instructions over the episode, proportioned like the real one (112/85/39)."""
    pick = f"the {arm} arm pick up the {obj}"
    put = f"the {arm} arm put down the {obj} in {container}"
    n_seg = min(3 if rng.random() < 0.7 else 2, length)
    if n_seg == 1:
        return (AstribotSubtask(pick, 0, length - 1),)
    if n_seg == 2:
        a = int(np.clip(round(rng.uniform(0.5, 0.6) * length), 1, length - 1))
        return (AstribotSubtask(pick, 0, a - 1), AstribotSubtask(put, a, length - 1))
    f0, f1 = rng.uniform(0.40, 0.52), rng.uniform(0.30, 0.40)
    a = int(np.clip(round(f0 * length), 1, length - 2))
    b = int(np.clip(round((f0 + f1) * length), a + 1, length - 1))
    return (
        AstribotSubtask(pick, 0, a - 1),
        AstribotSubtask(put, a, b - 1),
        AstribotSubtask(BACK_HOME, b, length - 1),
    )


def plan_astribot_episodes(episode_lengths: Sequence[int], seed: int = 0) -> list[AstribotEpisodeSpec]:
    """The episode specs :func:`write_astribot_dataset` writes for these lengths and seed."""
    specs: list[AstribotEpisodeSpec] = []
    for episode_index, length in enumerate(episode_lengths):
        if int(length) != length or length < 1:
            raise ValueError(f"episode {episode_index}: length must be a positive int, got {length!r}")
        rng = _episode_rng(seed, episode_index, 0)
        obj = str(rng.choice(_OBJECTS))
        container = str(rng.choice(_CONTAINERS))
        arm = "right" if rng.random() < 0.75 else "left"
        subtasks = _split_subtasks(rng, int(length), obj, container, arm)
        specs.append(AstribotEpisodeSpec(episode_index, int(length), obj, container, arm, subtasks))
    return specs


# --- Geometry helpers (numpy only: scipy is not guaranteed where the factory runs) ---------


def _axis_angle_to_matrix(w: FloatArray) -> FloatArray:
    """Rodrigues' formula, batched over leading dimensions of ``w`` (..., 3)."""
    theta = np.linalg.norm(w, axis=-1, keepdims=True)
    k = w / np.where(theta > 1e-12, theta, 1.0)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    kmat = np.stack(
        [np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1), np.stack([-ky, kx, zero], -1)], -2
    )
    s = np.sin(theta)[..., None]
    c = np.cos(theta)[..., None]
    return np.eye(3) + s * kmat + (1.0 - c) * (kmat @ kmat)


def _rot6d_to_matrix(r6: FloatArray) -> FloatArray:
    r1 = r6[:3] / np.linalg.norm(r6[:3])
    r2 = r6[3:] - (r1 @ r6[3:]) * r1
    r2 = r2 / np.linalg.norm(r2)
    return np.stack([r1, r2, np.cross(r1, r2)])


def _rot6d_rows(rot: FloatArray) -> FloatArray:
    """The real data's 6-D rotation: the first two ROWS of R, flattened."""
    return rot[..., :2, :].reshape(*rot.shape[:-2], 6)


def _smooth_noise(rng: np.random.Generator, n: int, dims: int, amplitude: float) -> FloatArray:
    """A sum of three slow random sinusoids per dimension: smooth, bounded by ``amplitude``."""
    t = np.arange(n)[:, None, None] / ASTRIBOT_FPS
    freq = rng.uniform(0.05, 0.5, size=(1, dims, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(1, dims, 3))
    amp = rng.uniform(0.3, 1.0, size=(1, dims, 3)) * amplitude / 3
    return (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1)


def _keyframe_path(n: int, frames: Sequence[int], values: Sequence[FloatArray]) -> FloatArray:
    """Smoothstep interpolation through (frame, value) keyframes, held constant outside them."""
    kf: dict[int, FloatArray] = {}
    for f, v in zip(frames, values, strict=True):
        kf[int(f)] = np.asarray(v, dtype=np.float64)
    xs = np.array(sorted(kf))
    ys = np.stack([kf[x] for x in xs])
    if len(xs) == 1:
        return np.repeat(ys, n, axis=0)
    f = np.arange(n, dtype=np.float64)
    seg = np.clip(np.searchsorted(xs, f, side="right") - 1, 0, len(xs) - 2)
    u = np.clip((f - xs[seg]) / (xs[seg + 1] - xs[seg]), 0.0, 1.0)
    s = (u * u * (3 - 2 * u))[:, None]
    return ys[seg] + s * (ys[seg + 1] - ys[seg])


# --- Per-frame values --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Motion:
    cart_state: FloatArray  # (n, 34)
    cart_command: FloatArray  # (n, 34)
    joints_state: FloatArray  # (n, 25)
    joints_command: FloatArray  # (n, 25)


def _gripper_profiles(spec: AstribotEpisodeSpec, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """(command, state) of the manipulating arm's gripper, 0 = open, 100 = closed.

    As in the real episode: the command ramps shut over the end of the pick-up, opens near the
    end of the put-down; the state follows it ``COMMAND_LEAD_FRAMES`` late, stops at the object
    (60..80), and the data keeps the real out-of-range values (command overshoot 100.5 when the
    grasp closes, state undershoot -2.4 when the release completes, then -0.42 at rest).
    """
    n = spec.length
    t = np.arange(n, dtype=np.float64)
    pick = spec.subtasks[0]
    close_end = pick.end
    close_start = min(int(round(0.62 * pick.length)), close_end)
    xp, fp = [close_start, close_end], [0.0, 100.0]
    open_end: int | None = None
    if len(spec.subtasks) >= 2:
        put = spec.subtasks[1]
        open_start = put.start + int(round(0.75 * (put.length - 1)))
        open_end = max(open_start, put.start + int(round(0.9 * (put.length - 1))))
        xp += [open_start, open_end]
        fp += [100.0, 0.0]

    def profile(x: FloatArray) -> FloatArray:
        return np.interp(x, xp, fp)

    command = profile(t)
    if close_end > close_start:
        command[close_end] = GRIPPER_COMMAND_OVERSHOOT
    hold = rng.uniform(60.0, 80.0)
    rest = rng.uniform(0.0, 0.1)
    lagged = t - COMMAND_LEAD_FRAMES
    state = rest + (hold - rest) * profile(lagged) / 100.0
    if open_end is not None:
        released = lagged >= open_end
        state[released] = GRIPPER_STATE_RELEASED
        first = np.flatnonzero(released)
        if first.size:
            state[first[0]] = GRIPPER_STATE_UNDERSHOOT
    return command, state


def _motion(spec: AstribotEpisodeSpec, seed: int) -> _Motion:
    """Smooth seeded trajectories; command = the state trajectory ``COMMAND_LEAD_FRAMES`` ahead."""
    rng = _episode_rng(seed, spec.episode_index, 1)
    n = spec.length
    ne = n + COMMAND_LEAD_FRAMES  # extended axis: state = [:n], command = [lead:]
    active = spec.arm
    # Key frames of the active arm: home -> object -> container -> home.
    key_frames = [0] + [st.end for st in spec.subtasks]
    side = 1.0 if active == "left" else -1.0
    # Short episodes move less, so that no episode moves faster than a real arm (~3 cm/frame).
    reach = min(1.0, n / 120)

    cart = np.zeros((ne, CART_DIM))
    torso_w = np.array([0.0, _TORSO_PITCH, 0.003]) + _smooth_noise(rng, ne, 3, 0.004)
    cart[:, 0:3] = _TORSO_XYZ + _smooth_noise(rng, ne, 3, 0.002)
    cart[:, 3:9] = _rot6d_rows(_axis_angle_to_matrix(torso_w))
    joints = np.zeros((ne, JOINT_DIM))
    for arm, xyz_sl, rot_sl, joint_sl in (
        ("left", slice(9, 12), slice(12, 18), slice(7, 14)),
        ("right", slice(19, 22), slice(22, 28), slice(15, 22)),
    ):
        home = _HOME_XYZ[arm] + rng.normal(0.0, 0.01, 3)
        base_rot = _rot6d_to_matrix(_HOME_ROT6D[arm]) @ _axis_angle_to_matrix(rng.normal(0.0, 0.08, 3))
        jlo, jhi = _ARM_JOINT_RANGE[arm]
        jmid, jhalf = (jlo + jhi) / 2, (jhi - jlo) / 2
        if arm == active:
            # The object lies forward and lower, the container further towards the middle.
            to_obj = [rng.uniform(0.05, 0.12), side * rng.uniform(-0.12, -0.02), rng.uniform(-0.12, -0.05)]
            to_cont = [rng.uniform(0.0, 0.08), side * rng.uniform(-0.25, -0.12), rng.uniform(-0.05, 0.0)]
            obj, cont = home + reach * np.array(to_obj), home + reach * np.array(to_cont)
            stops = [home, obj, cont, home][: len(key_frames)]
            xyz = _keyframe_path(ne, key_frames, stops)
            turns = [np.zeros(3)] + [reach * rng.normal(0.0, 0.3, 3) for _ in key_frames[1:]]
            w = _keyframe_path(ne, key_frames, turns)
            jkeys = [jmid] + [jmid + reach * jhalf * rng.uniform(-0.9, 0.9, 7) for _ in key_frames[1:]]
            arm_joints = _keyframe_path(ne, key_frames, jkeys)
        else:
            xyz = np.repeat(home[None], ne, axis=0)
            w = np.zeros((ne, 3))
            arm_joints = np.repeat((jmid + jhalf * rng.uniform(-0.3, 0.3, 7))[None], ne, axis=0)
        cart[:, xyz_sl] = xyz + _smooth_noise(rng, ne, 3, 0.004)
        cart[:, rot_sl] = _rot6d_rows(base_rot @ _axis_angle_to_matrix(w + _smooth_noise(rng, ne, 3, 0.02)))
        joints[:, joint_sl] = arm_joints + _smooth_noise(rng, ne, 7, 0.01)
    cart[:, 29:31] = _HEAD_YAW_PITCH + _smooth_noise(rng, ne, 2, 0.001)
    cart[:, 31:34] = _CHASSIS + rng.normal(0.0, 0.0005, 3)
    joints[:, 0:3] = cart[:, 31:34]
    joints[:, 3:7] = _TORSO_JOINTS + _smooth_noise(rng, ne, 4, 0.004)
    joints[:, 23:25] = cart[:, 29:31]

    cart_state, cart_command = cart[:n].copy(), cart[COMMAND_LEAD_FRAMES:].copy()
    joints_state, joints_command = joints[:n].copy(), joints[COMMAND_LEAD_FRAMES:].copy()
    g_cmd, g_state = _gripper_profiles(spec, rng)
    active_col, idle_col = (18, 28) if active == "left" else (28, 18)
    cart_command[:, active_col], cart_state[:, active_col] = g_cmd, g_state
    cart_command[:, idle_col], cart_state[:, idle_col] = 0.0, IDLE_GRIPPER_STATE
    # The joints' gripper entries are the same numbers as the cartesian ones in the real data.
    for cart_arr, joint_arr in ((cart_state, joints_state), (cart_command, joints_command)):
        joint_arr[:, 14] = cart_arr[:, 18]
        joint_arr[:, 22] = cart_arr[:, 28]
    return _Motion(cart_state, cart_command, joints_state, joints_command)


def _cart_arms(cart: FloatArray, poses14: FloatArray) -> FloatArray:
    """``cart`` (n, 34) with both arms' columns replaced by canonical 14-D poses."""
    poses14 = np.asarray(poses14, dtype=np.float64)
    if poses14.shape != (len(cart), 14):
        raise ValueError(f"supplied poses must be ({len(cart)}, 14), got {poses14.shape}")
    out = cart.copy()
    for base, (xyz_sl, rot_sl, grip_col) in zip((0, 7), _ARM_COLUMNS, strict=True):
        out[:, xyz_sl] = poses14[:, base : base + 3]
        out[:, rot_sl] = geometry.matrix_to_rot6d(geometry.euler_to_matrix(poses14[:, base + 3 : base + 6]))
        out[:, grip_col] = (poses14[:, base + 6] + 1.0) * 50.0
    return out


def _with_arm_poses(motion: _Motion, content: AstribotEpisodeContent) -> _Motion:
    """The factory's motion with the caller's arm poses; the joints' gripper entries follow, as
    they repeat the cartesian ones in the real data."""
    cart_state = _cart_arms(motion.cart_state, content.state)
    cart_command = _cart_arms(motion.cart_command, content.command)
    joints_state, joints_command = motion.joints_state.copy(), motion.joints_command.copy()
    for cart_arr, joint_arr in ((cart_state, joints_state), (cart_command, joints_command)):
        joint_arr[:, 14] = cart_arr[:, 18]
        joint_arr[:, 22] = cart_arr[:, 28]
    return _Motion(cart_state, cart_command, joints_state, joints_command)


def _project(xyz: FloatArray, size: tuple[int, int]) -> IntArray:
    """A made-up linear 'head camera' projection to pixel (u, v), clipped into the image."""
    w, h = size
    u = w * (0.5 - 1.4 * xyz[..., 1])
    v = h * (0.5 + 2.0 * (0.95 - xyz[..., 2]) + 0.5 * (xyz[..., 0] - 0.45))
    return np.stack([np.clip(np.rint(u), 0, w - 1), np.clip(np.rint(v), 0, h - 1)], -1).astype(np.int64)


def _annotations(
    spec: AstribotEpisodeSpec, motion: _Motion, seed: int, size: tuple[int, int]
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """(waypoints_state (n,4), waypoints_command (n,160), bboxes (n,50), keypoints (n,20))."""
    rng = _episode_rng(seed, spec.episode_index, 2)
    n = spec.length
    w, h = size

    def grippers_px(cart: FloatArray) -> IntArray:
        return np.concatenate([_project(cart[:, 9:12], size), _project(cart[:, 19:22], size)], -1)

    wp_state = grippers_px(motion.cart_state)
    wp_cmd_now = grippers_px(motion.cart_command)
    ahead = np.minimum(np.arange(n)[:, None] + np.arange(WAYPOINT_HORIZON)[None, :], n - 1)
    wp_command = wp_cmd_now[ahead].reshape(n, WAYPOINT_HORIZON * 4)

    active_px = wp_state[:, 0:2] if spec.arm == "left" else wp_state[:, 2:4]
    n_obj = int(rng.integers(3, 9))
    ids = rng.choice(100, size=n_obj, replace=False)
    centres = np.stack([rng.uniform(0.1, 0.9, n_obj) * w, rng.uniform(0.2, 0.8, n_obj) * h], -1)
    halves = np.stack([rng.uniform(0.03, 0.12, n_obj) * w, rng.uniform(0.03, 0.12, n_obj) * h], -1)
    c = np.repeat(centres[None], n, axis=0)
    grasped = np.arange(n) > spec.subtasks[0].end  # the manipulated object (slot 0) rides along
    c[grasped, 0] = active_px[grasped]
    c = c + rng.integers(-1, 2, size=c.shape)
    boxes = np.concatenate([c - halves, c + halves], -1)
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, w - 1)
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, h - 1)
    bboxes = np.full((n, MAX_BOXES, BOX_FIELDS), -1, dtype=np.int64)
    bboxes[:, :n_obj, 0] = ids
    bboxes[:, :n_obj, 1:] = np.rint(boxes)
    offsets = rng.uniform(-0.05, 0.05, size=(N_KEYPOINTS, 2)) * np.array([w, h])
    kp = active_px[:, None, :] + offsets[None] + rng.integers(-1, 2, size=(n, N_KEYPOINTS, 2))
    kp = np.clip(np.rint(kp), 0, np.array([w - 1, h - 1])).astype(np.int64)
    return wp_state, wp_command, bboxes.reshape(n, MAX_BOXES * BOX_FIELDS), kp.reshape(n, N_KEYPOINTS * 2)


# --- Parquet ----------------------------------------------------------------------------------

_LIST_INT = pa.list_(pa.int64())
_LIST_DOUBLE = pa.list_(pa.float64())

# Column names, order and Arrow types of the real episode parquet.
PARQUET_SCHEMA = pa.schema(
    [
        ("prompt", _LIST_INT),
        ("finegrained_prompt", _LIST_INT),
        ("cartesian_so3_dict.cartesian_pose_command", _LIST_DOUBLE),
        ("joints_dict.joints_position_command", _LIST_DOUBLE),
        ("joints_dict.joints_position_state", _LIST_DOUBLE),
        ("cartesian_so3_dict.cartesian_pose_state", _LIST_DOUBLE),
        ("timestamp", pa.float32()),
        ("frame_index", pa.int64()),
        ("episode_index", pa.int64()),
        ("index", pa.int64()),
        ("task_index", _LIST_INT),
        ("sub_task_index", _LIST_INT),
        ("waypoints_state", _LIST_INT),
        ("waypoints_command", _LIST_INT),
        ("bboxes", _LIST_INT),
        ("keypoints", _LIST_INT),
    ]
)


def _encode_prompt(text: str) -> IntArray:
    """ASCII codes, zero padded to 128, as the real ``prompt``/``finegrained_prompt`` columns."""
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
    if codes.size > PROMPT_LEN:
        raise ValueError(f"prompt longer than {PROMPT_LEN} characters: {text!r}")
    out = np.zeros(PROMPT_LEN, dtype=np.int64)
    out[: codes.size] = codes
    return out


def _list_column(values: NDArray[Any], type_: pa.DataType) -> pa.Array:
    """A variable-length Arrow list column from a 2-D array (the real files use list<>, not fixed)."""
    rows, width = values.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=type_.value_type), type=type_)


def _episode_table(
    spec: AstribotEpisodeSpec, first_index: int, task_ids: dict[str, int], seed: int, size: tuple[int, int],
    content: AstribotEpisodeContent | None = None,
) -> pa.Table:
    n = spec.length
    frames = np.arange(n, dtype=np.int64)
    motion = _motion(spec, seed) if content is None else _with_arm_poses(_motion(spec, seed), content)
    wp_state, wp_command, bboxes, keypoints = _annotations(spec, motion, seed, size)
    fine_prompt = np.zeros((n, PROMPT_LEN), dtype=np.int64)
    task_index = np.zeros((n, 2), dtype=np.int64)
    sub_task = np.zeros((n, 2), dtype=np.int64)
    task_index[:, 0] = task_ids[spec.coarse_task]
    for st in spec.subtasks:
        sl = slice(st.start, st.end + 1)
        fine_prompt[sl] = _encode_prompt(st.text)
        task_index[sl, 1] = task_ids[st.text]
        sub_task[sl, 0] = frames[sl] - st.start
        sub_task[sl, 1] = st.end - frames[sl]
    columns = [
        _list_column(np.repeat(_encode_prompt(spec.coarse_task)[None], n, axis=0), _LIST_INT),
        _list_column(fine_prompt, _LIST_INT),
        _list_column(motion.cart_command, _LIST_DOUBLE),
        _list_column(motion.joints_command, _LIST_DOUBLE),
        _list_column(motion.joints_state, _LIST_DOUBLE),
        _list_column(motion.cart_state, _LIST_DOUBLE),
        pa.array(frames.astype(np.float32) / np.float32(ASTRIBOT_FPS), type=pa.float32()),
        pa.array(frames),
        pa.array(np.full(n, spec.episode_index, dtype=np.int64)),
        pa.array(first_index + frames),
        _list_column(task_index, _LIST_INT),
        _list_column(sub_task, _LIST_INT),
        _list_column(wp_state, _LIST_INT),
        _list_column(wp_command, _LIST_INT),
        _list_column(bboxes, _LIST_INT),
        _list_column(keypoints, _LIST_INT),
    ]
    return pa.Table.from_arrays(columns, schema=PARQUET_SCHEMA)


# --- Video ------------------------------------------------------------------------------------


def _encode_gray_video(path: Path, levels: Sequence[int], size: tuple[int, int]) -> None:
    """HEVC (libx265), yuv420p, 30 fps, keyframe every 2 frames, no B-frames, pts = 512 * frame.

    The settings are those of the real files because GOP size and B-frames decide how a reader
    must seek; an ingester tested on anything else would be tested on the wrong problem.
    """
    encode_gray_video(
        path, levels, size, ASTRIBOT_FPS, "libx265", {"x265-params": _X265_PARAMS},
        gop=2, stream_time_base=VIDEO_TIME_BASE,
    )


def _encode_rgb_video(path: Path, frames: NDArray[np.uint8], size: tuple[int, int], length: int) -> None:
    """Caller-supplied RGB frames, with the stream settings of :func:`_encode_gray_video` (and a
    lower CRF, so that textured frames survive within a few levels and tests can compare pixels)."""
    width, height = size
    if frames.dtype != np.uint8 or frames.shape != (length, height, width, 3):
        raise ValueError(
            f"supplied frames must be uint8 [{length}, {height}, {width}, 3], got {frames.dtype} {frames.shape}"
        )
    encode_rgb_frames(
        path, frames, size, ASTRIBOT_FPS, "libx265", {"x265-params": f"{_X265_PARAMS}:crf={_RGB_CRF}"},
        gop=2, stream_time_base=VIDEO_TIME_BASE,
    )


# --- Metadata ---------------------------------------------------------------------------------


def _cart_names(kind: str) -> list[str]:
    names = [f"torso_{kind}_{i}" for i in range(9)]
    names += [f"left_arm_{kind}_{i}" for i in range(9)] + [f"left_gripper_{kind}_0"]
    names += [f"right_arm_{kind}_{i}" for i in range(9)] + [f"right_gripper_{kind}_0"]
    names += [f"head_{kind}_yaw", f"head_{kind}_pitch"] + [f"chassis_{kind}_{i}" for i in range(3)]
    return names


def _joint_names(kind: str) -> list[str]:
    names = [f"chassis_{kind}_{i}" for i in range(3)] + [f"torso_{kind}_{i}" for i in range(4)]
    names += [f"left_arm_{kind}_{i}" for i in range(7)] + [f"left_gripper_{kind}_0"]
    names += [f"right_arm_{kind}_{i}" for i in range(7)] + [f"right_gripper_{kind}_0"]
    names += [f"head_{kind}_yaw", f"head_{kind}_pitch"]
    return names


def _features(cameras: Sequence[str], size: tuple[int, int]) -> dict[str, Any]:
    """info.json features in the real file's order, quirks included (see module docstring)."""
    width, height = size

    def scalar(dtype: str) -> dict[str, Any]:
        return {"dtype": dtype, "shape": [1], "names": None}

    features: dict[str, Any] = {
        "prompt": {"dtype": "int64", "shape": [PROMPT_DECLARED_LEN], "names": "prompt"},
        "finegrained_prompt": {"dtype": "int64", "shape": [PROMPT_LEN], "names": "finegrained_prompt"},
        "cartesian_so3_dict.cartesian_pose_command": {
            "dtype": "float64", "shape": [CART_DIM], "names": _cart_names("action")
        },
    }
    for cam in cameras:
        features[video_key(cam)] = {
            "dtype": "video",
            "shape": [3, height, width],
            "names": ["channel", "height", "width"],
            "info": {
                "video.fps": float(ASTRIBOT_FPS),
                "video.height": height,
                "video.width": width,
                "video.channels": 3,
                "video.codec": "hevc",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "has_audio": False,
            },
        }
    features.update(
        {
            "joints_dict.joints_position_command": {
                "dtype": "float64", "shape": [JOINT_DIM], "names": _joint_names("action")
            },
            "joints_dict.joints_position_state": {
                "dtype": "float64", "shape": [JOINT_DIM], "names": _joint_names("state")
            },
            "cartesian_so3_dict.cartesian_pose_state": {
                "dtype": "float64", "shape": [CART_DIM], "names": _cart_names("state")
            },
            "timestamp": scalar("float32"),
            "frame_index": scalar("int64"),
            "episode_index": scalar("int64"),
            "index": scalar("int64"),
            "task_index": {
                "dtype": "int64", "shape": [2], "names": ["coarse_instruction", "fine_instruction"]
            },
            "sub_task_index": {"dtype": "int64", "shape": [2], "names": ["sub_task_start", "sub_task_end"]},
            "waypoints_state": {"dtype": "int64", "shape": [4], "names": None},
            "waypoints_command": {"dtype": "int64", "shape": [WAYPOINT_HORIZON * 4], "names": None},
        }
    )
    return features


def _modality(cameras: Sequence[str]) -> dict[str, Any]:
    """GR00T modality.json with the real file's structure."""
    return {
        "state": {
            "cartesian": {
                "start": 0,
                "end": CART_DIM,
                "original_key": "cartesian_so3_dict.cartesian_pose_state",
                "absolute": True,
                "dtype": "float64",
            }
        },
        "action": {
            "cartesian": {
                "start": 0,
                "end": CART_DIM,
                "original_key": "cartesian_so3_dict.cartesian_pose_command",
                "absolute": True,
                "dtype": "float64",
            }
        },
        "video": {cam: {"original_key": video_key(cam)} for cam in cameras},
        "annotation": {"human.action.task_description": {"original_key": "task_index"}},
    }


def _alternatives(what: str, obj: str, container: str) -> list[dict[str, str]]:
    phrasings = ("Place", "Move", "Transfer", "Set", "Put")
    return [
        {
            "prompt": f"{verb} the {what}.",
            "extra_reasoning": f"The {obj} and the {container} are the items this instruction refers to.",
        }
        for verb in phrasings
    ]


_REASONING_STAGES = ("Move the gripper closer.", "Align the gripper with the target.", "Act on the target now.")


def _extra_data(specs: Sequence[AstribotEpisodeSpec], first_indexes: Sequence[int]) -> dict[str, Any]:
    """The four sections of the real extra_data.json, keyed by inclusive global-index ranges.

    As in the real file, "back home" segments get no reasoning, the fine reasoning splits each
    manipulation subtask into up to three chunks, and subtask_reasoning marks each episode's first
    frame and the last ten frames of each manipulation subtask.
    """
    fine: dict[str, str] = {}
    sub: dict[str, str] = {}
    alt: dict[str, list[dict[str, str]]] = {}
    alt_fine: dict[str, list[dict[str, str]]] = {}
    for spec, g0 in zip(specs, first_indexes, strict=True):
        alt[f"{g0}, {g0 + spec.length - 1}"] = _alternatives(
            f"{spec.object_name} into the {spec.container}", spec.object_name, spec.container
        )
        sub[f"{g0}, {g0}"] = (
            f"The task is to {spec.coarse_task}; first the {spec.arm} arm must reach the {spec.object_name}."
        )
        for st in spec.subtasks:
            if st.text == BACK_HOME:
                continue
            s, e = g0 + st.start, g0 + st.end
            what = st.text.removeprefix(f"the {spec.arm} arm ")
            alt_fine[f"{s}, {e}"] = _alternatives(what, spec.object_name, spec.container)
            sub[f"{max(s, e - 9)}, {e}"] = f"The subtask '{st.text}' is nearly done; prepare the next one."
            cuts = sorted({s, *(s + int(round(f * st.length)) for f in (0.33, 0.82)), e + 1})
            cuts = [c for c in cuts if s <= c <= e + 1]
            for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
                fine[f"{lo}, {hi - 1}"] = (
                    f"The {spec.object_name} and the {spec.container} are on the table; "
                    f"the {spec.arm} gripper is working on '{st.text}'. {_REASONING_STAGES[min(k, 2)]}"
                )
    return {
        "finegrained_prompt_reasoning": fine,
        "subtask_reasoning": sub,
        "alternative_prompt": alt,
        "alternative_finegrained_prompt": alt_fine,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2))


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _check_args(cameras: Sequence[str], video_size: tuple[int, int]) -> None:
    if not cameras:
        raise ValueError("need at least one camera")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"duplicate camera names: {list(cameras)}")
    for cam in cameras:
        if not cam or not cam.replace("_", "").isalnum():
            raise ValueError(f"camera names must be short identifiers like 'head', got {cam!r}")
    width, height = video_size
    # libx265 refuses frames under 16 px; yuv420p halves chroma, so both sides must be even.
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"video_size must be even and at least 16x16, got {video_size}")


def _is_generated_astribot(root: Path) -> bool:
    try:
        return json.loads((root / "meta/info.json").read_text()).get("robot_type") == ROBOT_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_root(root: Path, overwrite: bool) -> None:
    clear_generated(root, overwrite, _is_generated_astribot, "Astribot dataset")
    (root / "meta").mkdir(parents=True, exist_ok=True)


def write_astribot_dataset(
    root: Path,
    episode_lengths: Sequence[int] = (40, 48),
    cameras: Sequence[str] = KNOWN_CAMERAS,
    video_size: tuple[int, int] = (64, 48),
    seed: int = 0,
    with_extra_data: bool = True,
    reuse_videos: bool = False,
    overwrite: bool = False,
    content: Callable[[AstribotEpisodeSpec], AstribotEpisodeContent] | None = None,
) -> Path:
    """Write an Astribot S1 LeRobot v2.0 dataset to ``root`` and return ``root``.

    ``cameras`` are short names (``head`` -> ``images_dict.head.rgb``); every camera gets
    ``video_size`` (width, height) — the real ones are 1280x720 (head) and 640x360 (wrists), but
    small frames keep the tests fast. Episodes are deterministic per (seed, episode_index), so a
    longer ``episode_lengths`` list only appends episodes.

    ``reuse_videos`` encodes one mp4 per (camera, length) and copies it to the other episodes
    (copies, not hard links, so a test that corrupts one episode's file in place cannot corrupt
    the others); every video then holds episode 0's gray levels. This makes 1,000-episode
    datasets cheap. ``overwrite`` replaces ``root`` only if it already holds an Astribot dataset.

    ``content``, when given, supplies each episode's arm poses and every camera's frames
    (:class:`AstribotEpisodeContent`) in place of the factory's motion and gray levels; the
    episode plan (lengths, instructions) and everything else stay the factory's.
    """
    root = Path(root)
    cameras = tuple(cameras)
    video_size = (int(video_size[0]), int(video_size[1]))
    _check_args(cameras, video_size)
    if content is not None and reuse_videos:
        raise ValueError("reuse_videos copies gray videos between episodes; it cannot be combined with content")
    specs = plan_astribot_episodes(episode_lengths, seed)
    if not specs:
        raise ValueError("need at least one episode")
    _prepare_root(root, overwrite)

    task_texts = sorted({s.coarse_task for s in specs} | {st.text for s in specs for st in s.subtasks})
    task_ids = {text: i for i, text in enumerate(task_texts)}
    first_indexes = np.concatenate([[0], np.cumsum([s.length for s in specs])[:-1]]).astype(int).tolist()
    total_frames = sum(s.length for s in specs)

    templates: dict[tuple[str, int], Path] = {}
    for spec, g0 in zip(specs, first_indexes, strict=True):
        data_path = root / DATA_PATH.format(episode_chunk=spec.episode_chunk, episode_index=spec.episode_index)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        supplied = None if content is None else content(spec)
        pq.write_table(_episode_table(spec, g0, task_ids, seed, video_size, supplied), data_path, compression="snappy")
        for cam in cameras:
            video_path = root / VIDEO_PATH.format(
                episode_chunk=spec.episode_chunk, video_key=video_key(cam), episode_index=spec.episode_index
            )
            if supplied is not None:
                if cam not in supplied.frames:
                    raise ValueError(f"episode {spec.episode_index}: the supplied content lacks camera {cam!r}")
                _encode_rgb_video(video_path, supplied.frames[cam], video_size, spec.length)
                continue
            template = templates.get((cam, spec.length)) if reuse_videos else None
            if template is not None:
                video_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template, video_path)
                continue
            levels_episode = 0 if reuse_videos else spec.episode_index
            levels = [expected_gray_level(levels_episode, i, cam) for i in range(spec.length)]
            _encode_gray_video(video_path, levels, video_size)
            templates[(cam, spec.length)] = video_path

    meta = root / "meta"
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": ROBOT_TYPE,
        "total_episodes": len(specs),
        "total_frames": total_frames,
        "total_tasks": len(task_texts),
        "total_videos": len(specs) * len(cameras),
        "total_chunks": math.ceil(len(specs) / CHUNKS_SIZE),
        "chunks_size": CHUNKS_SIZE,
        "fps": ASTRIBOT_FPS,
        "splits": {"train": f"0:{len(specs)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": _features(cameras, video_size),
    }
    _write_json(meta / "info.json", info)
    _write_jsonl(
        meta / "episodes.jsonl",
        [
            {
                "episode_index": s.episode_index,
                "tasks": [s.coarse_task],
                "objects": None,
                "length": s.length,
                "episode_chunk": s.episode_chunk,
            }
            for s in specs
        ],
    )
    _write_jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(task_texts)])
    _write_json(meta / "modality.json", _modality(cameras))
    if with_extra_data:
        _write_json(meta / "extra_data.json", _extra_data(specs, first_indexes))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clap_data.factories.astribot DEST``: the demo's stand-in for the real sample."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--lengths", default="40,48", help="comma-separated episode lengths (frames)")
    parser.add_argument("--cameras", default=",".join(KNOWN_CAMERAS))
    parser.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of every camera")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-extra-data", action="store_true")
    parser.add_argument("--reuse-videos", action="store_true")
    args = parser.parse_args(argv)
    width, height = (int(x) for x in args.size.lower().split("x"))
    path = write_astribot_dataset(
        args.dest,
        episode_lengths=[int(x) for x in args.lengths.split(",") if x],
        cameras=[c for c in args.cameras.split(",") if c],
        video_size=(width, height),
        seed=args.seed,
        with_extra_data=not args.no_extra_data,
        reuse_videos=args.reuse_videos,
        overwrite=True,  # `make demo` regenerates the same folder on every run
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
