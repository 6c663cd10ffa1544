"""Robot and human datasets whose pixels show the recorded motion: fixtures for the VD-VAE.

The VD-VAE maps two frames ``(o_t, o_t+32)`` to the Act-VAE's action codes (METHOD.md §4). The
other factories' flat-gray frames carry no motion, so no test could tell a VD-VAE that reads the
motion from one that reads the pixels. Here every frame is drawn from the episode's own
end-effector poses, and the same motions are written under several appearances, so that an eval
can check that codes follow the motion and ignore background and lighting (paper, Table II).

**Motion.** Per arm a smooth trajectory (three random sinusoids per dimension, from the seed and
the motion id) around a plausible workspace in the robot base frame: the canonical 14-D pose of
METHOD.md §1 (x, y, z in metres, roll/pitch/yaw with R = Rz·Ry·Rx, gripper in [-1, 1], +1 closed).
Motion ``m`` of a seed is the same trajectory for the robot and for the human hands, and its
length is drawn from ``lengths`` by the seed and ``m`` too.

**Drawing.** Each arm's tip is projected by a fixed pinhole camera (:data:`CAMERAS`) onto a
procedural background (soft stripes, checker or blobs, plus uneven shading, from a seed). The
robot gripper is a filled rectangle at the tip (left red, right blue) rotated with the jaw axis, two
yellow jaws along the approach axis whose spread is the gripper opening, and a dark wrist bar
behind; a human hand is an elliptic palm at the tip with four fingers (spread and length = the
opening), a thumb and a sleeve. The nearer arm is drawn over the farther one. Lighting
(contrast about mid-gray, brightness gain, hue rotation about the gray axis) then applies to the
whole image. Backgrounds keep every channel in 64..192 and every foreground colour has a channel
outside it, so that with neutral lighting a colour alone says what a pixel shows (:data:`TIP_RGB`).

**Formats.** Robot data is an Astribot S1 source (:func:`write_astribot_dataset`, HEVC, cameras
``head`` and ``left`` — the latter a second fixed viewpoint written as Astribot's left camera,
i.e. ``wrist_left`` once ingested), its state the poses drawn and its command the same trajectory
:data:`COMMAND_LEAD_FRAMES` ahead (its instructions are the Astribot factory's plan, unrelated to the
motion). Human data is an Ego4D download (:func:`write_ego4d_dataset`):
one clip per motion with one narrated action whose critical frames span the clip, so the
ingested episode is the whole clip; its state and action are zero once ingested (METHOD.md §1).

**Layout and join key** (what an eval pairs across appearances)::

    DEST/rendered.json      manifest: seed, size, cameras, each variant's RenderStyle, each motion
    DEST/motions.npz        motion_0003: the [frames, 14] poses drawn in every variant's motion 3
    DEST/variant_00/        a source (Astribot or Ego4D) with neutral appearance
    DEST/variant_01/ ...    the same motions, another background texture and lighting

Motion ``m`` is episode ``m`` of every variant: Astribot episode index ``m`` (ingested
``source/episode_id`` = ``f"{m:06d}"``), Ego4D clip ``m`` (the same ``source/clip_uid`` in every
variant, and the instruction ``moves both hands, motion m``). The variant is the source folder.

Run ``python -m clap_data.factories.rendered DEST --robot-episodes 4 --human-episodes 4
--variants 2`` to write ``DEST/robot`` and ``DEST/human``.
"""

from __future__ import annotations

import argparse
import json
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from clap_data import geometry
from clap_data.factories.astribot import (
    ASTRIBOT_FPS,
    COMMAND_LEAD_FRAMES,
    AstribotEpisodeContent,
    AstribotEpisodeSpec,
    write_astribot_dataset,
)
from clap_data.factories.common import clear_generated
from clap_data.factories.ego4d import Ego4DActionSpec, Ego4DClipSpec, write_ego4d_dataset

__all__ = [
    "CAMERAS",
    "DEFAULT_LENGTHS",
    "DEFAULT_SIZE",
    "MANIFEST",
    "MIN_FRAMES",
    "MOTIONS",
    "PART_RGB",
    "TIP_RGB",
    "PinholeCamera",
    "RenderStyle",
    "appearance_variants",
    "background",
    "human_instruction",
    "motion_lengths",
    "random_motion",
    "render_episode",
    "write_rendered_human",
    "write_rendered_robot",
]

FloatArray = NDArray[np.float64]
Embodiment = Literal["robot", "human"]

DEFAULT_SIZE = (96, 72)  # (width, height) of every camera: small for tests, even for yuv420p
DEFAULT_LENGTHS = (64, 96)  # inclusive range of motion lengths, in frames
MIN_FRAMES = 33  # one (t, t+32) frame pair, the VD-VAE's gap; the Ego4D ingester's minimum too
MANIFEST = "rendered.json"
MOTIONS = "motions.npz"
_MARK = "clap_data.factories.rendered"
_FRAME_BATCH = 64  # frames drawn at once: bounds the [batch, H, W] masks of long episodes
_MOVE_VERB = "move_(transfer,_pass,_exchange)"  # an Ego4D FHO structured verb

# --- Motion ---------------------------------------------------------------------------------

_ARM_NAMES = ("left", "right")  # the order of the 14-D pose: [left 7 | right 7]
_ARM_CENTRE = {"left": np.array([0.47, 0.18, 0.95]), "right": np.array([0.47, -0.18, 0.95])}
_POSITION_AMPLITUDE = np.array([0.08, 0.08, 0.07])  # metres: the tips stay at least 0.2 m apart
# Gripper pointing forward and down; |pitch| < pi/2 and |roll|, |yaw| < pi keep the Euler angles
# inside matrix_to_euler's ranges, so they survive the rot6d round trip of the Astribot format.
_ANGLE_CENTRE = np.array([0.0, 0.35, 0.0])
_ANGLE_AMPLITUDE = np.array([0.6, 0.4, 0.7])


def _sinusoids(rng: np.random.Generator, frames: int, amplitude: FloatArray) -> FloatArray:
    """[frames, dims]: three random sinusoids per dimension (0.15..0.7 Hz), bounded by ``amplitude``.

    The draws do not depend on ``frames``, so a longer trajectory extends a shorter one.
    """
    dims = len(amplitude)
    t = np.arange(frames)[:, None, None] / ASTRIBOT_FPS
    freq = rng.uniform(0.15, 0.7, (1, dims, 3))
    phase = rng.uniform(0.0, 2 * np.pi, (1, dims, 3))
    weight = rng.uniform(0.3, 1.0, (1, dims, 3))
    weight = weight / weight.sum(-1, keepdims=True) * amplitude[None, :, None]
    return (weight * np.sin(2 * np.pi * freq * t + phase)).sum(-1)


def random_motion(seed: int, motion: int, frames: int) -> FloatArray:
    """Canonical dual-arm poses [frames, 14] of motion ``motion``: ``[left 7 | right 7]``."""
    rng = np.random.default_rng([seed, motion])
    arms = []
    for arm in _ARM_NAMES:
        xyz = _ARM_CENTRE[arm] + _sinusoids(rng, frames, _POSITION_AMPLITUDE)
        rpy = _ANGLE_CENTRE + _sinusoids(rng, frames, _ANGLE_AMPLITUDE)
        grip = np.clip(1.5 * _sinusoids(rng, frames, np.ones(1)), -1.0, 1.0)
        arms.append(np.concatenate([xyz, rpy, grip], axis=1))
    return np.concatenate(arms, axis=1)


def motion_lengths(seed: int, count: int, lengths: tuple[int, int] = DEFAULT_LENGTHS) -> list[int]:
    """Frames of motions ``0..count-1``: one draw per motion from the inclusive range ``lengths``."""
    low, high = (int(v) for v in lengths)
    if not MIN_FRAMES <= low <= high:
        raise ValueError(f"lengths must be a range (low, high) with {MIN_FRAMES} <= low <= high, got {lengths}")
    return [int(np.random.default_rng([seed, m, 1]).integers(low, high + 1)) for m in range(count)]


def human_instruction(motion: int) -> str:
    """The ingested instruction of human motion ``motion`` (the narration without ``#C C``)."""
    return f"moves both hands, motion {motion}"


# --- Camera and appearance ------------------------------------------------------------------


@dataclass(frozen=True)
class PinholeCamera:
    """A fixed pinhole camera looking from ``position`` at ``target`` (metres, base frame, +z up).

    Pixel coordinates: u to the right, v down, pixel (row i, column j) centred at (u, v) = (j, i);
    the focal length follows from the horizontal field of view and the image width.
    """

    name: str
    position: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_x_deg: float = 70.0

    def _axes(self) -> FloatArray:
        forward = np.subtract(self.target, self.position)
        forward = forward / np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right = right / np.linalg.norm(right)
        return np.stack([right, np.cross(forward, right), forward])  # rows: right, down, forward

    def focal_px(self, width: int) -> float:
        return (width / 2) / np.tan(np.radians(self.fov_x_deg) / 2)

    def project(self, xyz: ArrayLike, size: tuple[int, int]) -> tuple[FloatArray, FloatArray]:
        """(uv [..., 2] in pixels, depth [...] in metres along the optical axis) of points [..., 3]."""
        width, height = size
        cam = (np.asarray(xyz, dtype=np.float64) - np.asarray(self.position)) @ self._axes().T
        depth = cam[..., 2]
        focal = self.focal_px(width)
        uv = focal * cam[..., :2] / depth[..., None] + np.array([width / 2 - 0.5, height / 2 - 0.5])
        return uv, depth


# Source camera name (the Astribot short name) -> its viewpoint. The human clip is the head view.
CAMERAS = {
    "head": PinholeCamera("head", (0.16, 0.0, 1.40), (0.50, 0.0, 0.90), 62.0),
    "left": PinholeCamera("left", (0.90, 0.40, 1.15), (0.47, 0.0, 0.93), 60.0),
}


@dataclass(frozen=True)
class RenderStyle:
    """What a frame looks like, apart from the motion: who is drawn, on which background, in what light.

    ``contrast`` scales about mid-gray 128, ``brightness`` is a gain applied after it, and
    ``hue_shift`` (degrees) rotates colours about the gray axis; (1, 1, 0) leaves pixels as drawn.
    """

    embodiment: Embodiment = "robot"
    background_seed: int = 0
    brightness: float = 1.0
    contrast: float = 1.0
    hue_shift: float = 0.0


def appearance_variants(count: int, seed: int, embodiment: Embodiment) -> list[RenderStyle]:
    """``count`` styles for the same motions: variant 0 has neutral lighting, every variant its own
    background texture, variants >= 1 brightness and contrast in 0.8..1.2 and a hue shift within
    ±35°. These ranges keep the muted backgrounds clear of 0 and 255, so lighting never clips a
    background pixel onto a foreground colour: the arms cover the same pixels in every variant."""
    if count < 1:
        raise ValueError(f"need at least one variant, got {count}")
    styles = []
    for k in range(count):
        rng = np.random.default_rng([seed, k, 0 if embodiment == "robot" else 1])
        background_seed = int(rng.integers(2**31))
        if k == 0:
            styles.append(RenderStyle(embodiment, background_seed))
            continue
        brightness, contrast = (float(v) for v in rng.uniform(0.8, 1.2, 2))
        styles.append(RenderStyle(embodiment, background_seed, brightness, contrast, float(rng.uniform(-35, 35))))
    return styles


def _value_noise(rng: np.random.Generator, size: tuple[int, int], cell: float) -> FloatArray:
    """[height, width] smooth noise in 0..1: a random grid every ``cell`` pixels, bilinear between."""
    width, height = size
    grid = rng.random((int(height / cell) + 2, int(width / cell) + 2))
    y, x = np.arange(height)[:, None] / cell, np.arange(width)[None, :] / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def background(seed: int, camera: str, size: tuple[int, int]) -> NDArray[np.uint8]:
    """[height, width, 3] procedural texture of one camera: soft stripes, checker or blobs between
    two muted colours, with uneven shading; every channel in 64..192. Soft edges keep the texture
    within a few levels through HEVC/H.264, so tests can compare decoded pixels."""
    width, height = size
    rng = np.random.default_rng([seed, zlib.crc32(camera.encode())])
    colours = rng.uniform(88, 168, (2, 1, 1, 1)) + rng.uniform(-20, 20, (2, 1, 1, 3))
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    kind = int(rng.integers(3))
    if kind == 0:
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(8, 18) + rng.uniform(0, 2 * np.pi))
    elif kind == 1:
        cell = rng.uniform(7, 14)
        weight = 0.5 + 0.5 * np.tanh(3 * np.sin(np.pi * along / cell) * np.sin(np.pi * across / cell))
    else:
        weight = _value_noise(rng, size, rng.uniform(6, 12))
    shade = (_value_noise(rng, size, 24.0) - 0.5) * 28
    image = colours[0] * (1 - weight[..., None]) + colours[1] * weight[..., None] + shade[..., None]
    return np.clip(np.rint(image), 64, 192).astype(np.uint8)


def _hue_matrix(degrees: float) -> FloatArray:
    """Rotation of RGB about the gray axis (1, 1, 1): changes hue, keeps grays."""
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    theta = np.radians(degrees)
    return np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(k, k)


def _light(image: NDArray[np.float64], style: RenderStyle) -> NDArray[np.uint8]:
    lit = ((image - 128.0) * style.contrast + 128.0) * style.brightness
    if style.hue_shift:
        lit = lit @ _hue_matrix(style.hue_shift).T
    return np.clip(np.rint(lit), 0, 255).astype(np.uint8)


# --- Drawing --------------------------------------------------------------------------------

RGB = tuple[int, int, int]
# Every colour has a channel outside the background's 64..192, so none can be taken for background.
PART_RGB: dict[str, dict[str, RGB]] = {
    "robot": {
        "left_body": (225, 35, 35), "right_body": (35, 80, 225), "jaws": (245, 215, 30), "wrist_bar": (35, 35, 35),
    },
    "human": {
        "left_palm": (236, 188, 150), "right_palm": (150, 96, 45),
        "left_fingers": (212, 150, 110), "right_fingers": (118, 70, 30), "sleeve": (25, 110, 120),
    },
}
"""The colour of each drawn part, per embodiment, as drawn with neutral lighting."""
TIP_RGB: dict[str, tuple[RGB, RGB]] = {
    "robot": (PART_RGB["robot"]["left_body"], PART_RGB["robot"]["right_body"]),
    "human": (PART_RGB["human"]["left_palm"], PART_RGB["human"]["right_palm"]),
}
"""The colour of the part centred on each arm's tip, (left, right): with neutral lighting the
centroid of its pixels is the projected tip (unless the other arm covers it)."""
# Label images hold palette indices; 0 is "nothing drawn".
_PARTS = [(embodiment, part) for embodiment, parts in PART_RGB.items() for part in parts]
_PALETTE = np.array([(0, 0, 0)] + [PART_RGB[e][p] for e, p in _PARTS], dtype=np.float64)
_PART_INDEX = {key: i + 1 for i, key in enumerate(_PARTS)}


@dataclass(frozen=True)
class _ArmView:
    """One arm over a batch of frames, in image space."""

    tip: FloatArray  # [n, 2] projected tip
    scale: FloatArray  # [n] pixels per metre at the tip's depth
    depth: FloatArray  # [n]
    approach: FloatArray  # [n, 3] gripper x axis (pointing direction), base frame
    jaw: FloatArray  # [n, 3] gripper y axis (across the jaws)
    xyz: FloatArray  # [n, 3]
    opening: FloatArray  # [n] 0 closed .. 1 open


def _arm_view(pose7: FloatArray, camera: PinholeCamera, size: tuple[int, int]) -> _ArmView:
    rotation = geometry.euler_to_matrix(pose7[:, 3:6])
    uv, depth = camera.project(pose7[:, :3], size)
    return _ArmView(
        tip=uv, scale=camera.focal_px(size[0]) / depth, depth=depth, approach=rotation[:, :, 0], jaw=rotation[:, :, 1],
        xyz=pose7[:, :3], opening=(1.0 - np.clip(pose7[:, 6], -1.0, 1.0)) / 2,
    )


class _Canvas:
    """Pixel-centre coordinates of a batch of frames and the shape tests vectorised over it."""

    def __init__(self, frames: int, size: tuple[int, int]):
        width, height = size
        self.x = np.arange(width, dtype=np.float64)[None, None, :]
        self.y = np.arange(height, dtype=np.float64)[None, :, None]
        self.shape = (frames, height, width)

    def segment(self, p0: FloatArray, p1: FloatArray, radius: FloatArray) -> NDArray[np.bool_]:
        """Pixels within ``radius`` [n] of the segment p0-p1 ([n, 2] each): a bar with round ends."""
        x0, y0 = p0[:, 0, None, None], p0[:, 1, None, None]
        dx, dy = (p1 - p0)[:, 0, None, None], (p1 - p0)[:, 1, None, None]
        t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        ex, ey = self.x - x0 - t * dx, self.y - y0 - t * dy
        return ex * ex + ey * ey <= radius[:, None, None] ** 2

    def oriented(
        self, centre: FloatArray, axis: FloatArray, half_a: FloatArray, half_b: FloatArray, box: bool
    ) -> NDArray[np.bool_]:
        """A box (or an ellipse) centred at ``centre`` [n, 2] with half-sizes along the unit image
        direction ``axis`` [n, 2] and across it."""
        rx, ry = self.x - centre[:, 0, None, None], self.y - centre[:, 1, None, None]
        ux, uy = axis[:, 0, None, None], axis[:, 1, None, None]
        a = (rx * ux + ry * uy) / half_a[:, None, None]
        b = (ry * ux - rx * uy) / half_b[:, None, None]
        return (np.abs(a) <= 1) & (np.abs(b) <= 1) if box else a * a + b * b <= 1


def _image_direction(view: _ArmView, direction: FloatArray, camera: PinholeCamera, size: tuple[int, int]) -> FloatArray:
    """Unit image direction [n, 2] of a base-frame direction [n, 3] at the tip."""
    moved, _ = camera.project(view.xyz + 0.02 * direction, size)
    delta = moved - view.tip
    norm = np.linalg.norm(delta, axis=1, keepdims=True)
    return np.where(norm > 1e-6, delta / np.maximum(norm, 1e-6), np.array([1.0, 0.0]))


def _robot_pieces(
    view: _ArmView, arm: int, canvas: _Canvas, camera: PinholeCamera, size: tuple[int, int]
) -> list[tuple[str, NDArray[np.bool_]]]:
    """(part, mask) back to front: wrist bar, two jaws (spread = opening), body rectangle at the tip."""

    def px(points: FloatArray) -> FloatArray:
        return camera.project(points, size)[0]

    s = view.scale
    wrist = canvas.segment(view.tip, px(view.xyz - 0.09 * view.approach), np.maximum(0.008 * s, 0.8))
    pieces = [("wrist_bar", wrist)]
    spread = (0.012 + 0.024 * view.opening)[:, None]
    for side in (1.0, -1.0):
        base = view.xyz + side * spread * view.jaw
        jaw = canvas.segment(px(base), px(base + 0.045 * view.approach), np.maximum(0.006 * s, 0.7))
        pieces.append(("jaws", jaw))
    jaw_axis = _image_direction(view, view.jaw, camera, size)
    pieces.append((f"{_ARM_NAMES[arm]}_body", canvas.oriented(view.tip, jaw_axis, 0.022 * s, 0.016 * s, box=True)))
    return pieces


def _human_pieces(
    view: _ArmView, arm: int, canvas: _Canvas, camera: PinholeCamera, size: tuple[int, int]
) -> list[tuple[str, NDArray[np.bool_]]]:
    """(part, mask) back to front: sleeve, four fingers and a thumb (spread and length = opening:
    an open hand is wide, a closed one a fist), elliptic palm at the tip."""

    def px(points: FloatArray) -> FloatArray:
        return camera.project(points, size)[0]

    s, opening = view.scale, view.opening[:, None]
    fingers = f"{_ARM_NAMES[arm]}_fingers"
    sleeve = canvas.segment(px(view.xyz - 0.02 * view.approach), px(view.xyz - 0.10 * view.approach), 0.016 * s)
    pieces = [("sleeve", sleeve)]
    for k in (-1.5, -0.5, 0.5, 1.5):
        base = view.xyz + 0.011 * k * view.jaw + 0.015 * view.approach
        direction = view.approach + 0.35 * k * opening * view.jaw
        direction = direction / np.linalg.norm(direction, axis=1, keepdims=True)
        tip = base + (0.02 + 0.035 * opening) * direction
        pieces.append((fingers, canvas.segment(px(base), px(tip), np.maximum(0.0055 * s, 0.7))))
    thumb_side = -1.0 if arm == 0 else 1.0  # thumbs point inwards, towards the other hand
    thumb_tip = view.xyz + thumb_side * (0.03 + 0.025 * opening) * view.jaw + 0.01 * view.approach
    pieces.append((fingers, canvas.segment(view.tip, px(thumb_tip), np.maximum(0.0065 * s, 0.7))))
    approach_axis = _image_direction(view, view.approach, camera, size)
    palm = canvas.oriented(view.tip, approach_axis, 0.028 * s, 0.024 * s, box=False)
    pieces.append((f"{_ARM_NAMES[arm]}_palm", palm))
    return pieces


def _draw_labels(
    poses: FloatArray, arm_mask: NDArray[np.bool_], embodiment: Embodiment, camera: PinholeCamera, size: tuple[int, int]
) -> NDArray[np.uint8]:
    """[n, H, W] palette indices of a batch of frames: each arm back to front, the nearer arm on top."""
    canvas = _Canvas(len(poses), size)
    draw = _robot_pieces if embodiment == "robot" else _human_pieces
    layers, depths = [], []
    for arm in (0, 1):
        view = _arm_view(poses[:, 7 * arm : 7 * arm + 7], camera, size)
        labels = np.zeros(canvas.shape, dtype=np.uint8)
        shown = (arm_mask[:, arm] & (view.depth > 0))[:, None, None]  # drawn, and in front of the camera
        for part, mask in draw(view, arm, canvas, camera, size):
            labels[mask & shown] = _PART_INDEX[embodiment, part]
        layers.append(labels)
        depths.append(view.depth)
    left_near = (depths[0] < depths[1])[:, None, None]
    near, far = np.where(left_near, layers[0], layers[1]), np.where(left_near, layers[1], layers[0])
    return np.where(near > 0, near, far)


def render_episode(
    poses: ArrayLike,
    arm_mask: ArrayLike,
    *,
    style: RenderStyle,
    size: tuple[int, int] = DEFAULT_SIZE,
    camera: PinholeCamera = CAMERAS["head"],
) -> NDArray[np.uint8]:
    """RGB frames [N, height, width, 3] showing canonical poses [N, 14] as seen by ``camera``.

    ``arm_mask`` ([2] or [N, 2], ``[left, right]``, METHOD.md §1) says which arms are drawn; all
    zero draws the background alone. ``size`` is (width, height). The background depends on the
    style's seed and the camera's name, the lighting on the style only.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != 14:
        raise ValueError(f"poses must be [N, 14], got {poses.shape}")
    mask = np.broadcast_to(np.asarray(arm_mask) > 0, (len(poses), 2))
    width, height = (int(v) for v in size)
    back = background(style.background_seed, camera.name, (width, height)).astype(np.float64)
    out = np.empty((len(poses), height, width, 3), dtype=np.uint8)
    for start in range(0, len(poses), _FRAME_BATCH):
        batch = slice(start, start + _FRAME_BATCH)
        labels = _draw_labels(poses[batch], mask[batch], style.embodiment, camera, (width, height))
        image = np.where(labels[..., None] > 0, _PALETTE[labels], back[None])
        out[batch] = _light(image, style)
    return out


# --- Writing --------------------------------------------------------------------------------

_BOTH_ARMS = np.ones(2)


def _variant_dir(variant: int) -> str:
    return f"variant_{variant:02d}"


def _is_rendered(dest: Path) -> bool:
    try:
        return json.loads((dest / MANIFEST).read_text()).get("description", "").startswith(_MARK)
    except (OSError, ValueError, AttributeError):
        return False


def _write_manifest(
    dest: Path, embodiment: Embodiment, source_format: str, seed: int, size: tuple[int, int],
    styles: Sequence[RenderStyle], cameras: Sequence[str], motions: list[dict[str, object]], join: str,
) -> None:
    """rendered.json (what an eval joins on, see the module docstring) and motions.npz (the poses,
    which the ingested human data does not keep)."""
    poses = {f"motion_{m['motion']:04d}": random_motion(seed, int(m["motion"]), int(m["frames"])) for m in motions}
    np.savez_compressed(dest / MOTIONS, **poses)
    manifest = {
        "description": f"{_MARK}: the same motions under {len(styles)} appearance variant(s)",
        "embodiment": embodiment,
        "format": source_format,
        "seed": seed,
        "fps": ASTRIBOT_FPS,
        "size": list(size),
        "join": f"{join}; the variant is the source folder (variants[].root)",
        "cameras": {name: asdict(CAMERAS[name]) for name in cameras},
        "variants": [{"variant": k, "root": _variant_dir(k), "style": asdict(s)} for k, s in enumerate(styles)],
        "motions": motions,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _prepare(dest: Path, overwrite: bool) -> None:
    clear_generated(dest, overwrite, _is_rendered, "rendered dataset")
    dest.mkdir(parents=True, exist_ok=True)


def _robot_content(
    style: RenderStyle, seed: int, size: tuple[int, int], cameras: Sequence[str]
) -> Callable[[AstribotEpisodeSpec], AstribotEpisodeContent]:
    def content(spec: AstribotEpisodeSpec) -> AstribotEpisodeContent:
        poses = random_motion(seed, spec.episode_index, spec.length + COMMAND_LEAD_FRAMES)
        state = poses[: spec.length]
        frames = {
            cam: render_episode(state, _BOTH_ARMS, style=style, size=size, camera=CAMERAS[cam]) for cam in cameras
        }
        return AstribotEpisodeContent(state=state, command=poses[COMMAND_LEAD_FRAMES:], frames=frames)

    return content


def write_rendered_robot(
    dest: Path,
    episodes: int = 4,
    lengths: tuple[int, int] = DEFAULT_LENGTHS,
    seed: int = 0,
    variants: int = 2,
    size: tuple[int, int] = DEFAULT_SIZE,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``variants`` Astribot S1 sources of the same ``episodes`` dual-arm motions under
    ``dest`` (layout in the module docstring) and return their roots, variant 0 first.

    Episode ``m`` holds motion ``m``: state = :func:`random_motion` poses, command = the same
    trajectory ``COMMAND_LEAD_FRAMES`` ahead, cameras ``head`` and ``left`` rendered from them.
    ``overwrite`` replaces ``dest`` only if it holds a rendered dataset.
    """
    dest = Path(dest)
    frames = motion_lengths(seed, episodes, lengths)
    if not frames:
        raise ValueError("need at least one episode")
    styles = appearance_variants(variants, seed, "robot")
    cameras = tuple(CAMERAS)
    _prepare(dest, overwrite)
    roots = [
        write_astribot_dataset(
            dest / _variant_dir(k), episode_lengths=frames, cameras=cameras, video_size=size, seed=seed,
            content=_robot_content(style, seed, size, cameras),
        )
        for k, style in enumerate(styles)
    ]
    motions: list[dict[str, object]] = [
        {"motion": m, "frames": n, "episode_id": f"{m:06d}"} for m, n in enumerate(frames)
    ]
    join = "motion m is Astribot episode m of every variant: ingested source/episode_id == motions[m].episode_id"
    _write_manifest(dest, "robot", "astribot", seed, size, styles, cameras, motions, join)
    return roots


def _human_plan(seed: int, frames: Sequence[int]) -> list[Ego4DClipSpec]:
    """One clip (of its own video) per motion; its one action's critical frames span the clip."""
    plan = []
    for m, n in enumerate(frames):
        rng = np.random.default_rng([seed, m, 2])
        clip_uid, video_uid = (str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(2))
        action = Ego4DActionSpec(f"#C C {human_instruction(m)}", (0, n - 1), verb=_MOVE_VERB)
        plan.append(Ego4DClipSpec(clip_uid, video_uid, n, (action,)))
    return plan


def _human_frames(
    style: RenderStyle, seed: int, size: tuple[int, int]
) -> Callable[[int, Ego4DClipSpec], NDArray[np.uint8]]:
    def frames(motion: int, clip: Ego4DClipSpec) -> NDArray[np.uint8]:
        return render_episode(random_motion(seed, motion, clip.frames), _BOTH_ARMS, style=style, size=size)

    return frames


def write_rendered_human(
    dest: Path,
    episodes: int = 4,
    lengths: tuple[int, int] = DEFAULT_LENGTHS,
    seed: int = 0,
    variants: int = 2,
    size: tuple[int, int] = DEFAULT_SIZE,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``variants`` Ego4D downloads of the same ``episodes`` two-hand motions under ``dest``
    (layout in the module docstring) and return their roots, variant 0 first.

    Clip ``m`` shows motion ``m`` (the robot's motion ``m`` of the same seed and lengths) from the
    head viewpoint, narrated ``#C C moves both hands, motion m`` with critical frames 0..last.
    ``overwrite`` replaces ``dest`` only if it holds a rendered dataset.
    """
    dest = Path(dest)
    frames = motion_lengths(seed, episodes, lengths)
    if not frames:
        raise ValueError("need at least one episode")
    styles = appearance_variants(variants, seed, "human")
    plan = _human_plan(seed, frames)
    _prepare(dest, overwrite)
    roots = [
        write_ego4d_dataset(
            dest / _variant_dir(k), plan, video_size=size, seed=seed, frames=_human_frames(style, seed, size)
        )
        for k, style in enumerate(styles)
    ]
    motions: list[dict[str, object]] = [
        {"motion": m, "frames": n, "clip_uid": clip.clip_uid, "instruction": human_instruction(m)}
        for m, (n, clip) in enumerate(zip(frames, plan, strict=True))
    ]
    join = (
        "motion m is clip m of every variant: ingested source/clip_uid == motions[m].clip_uid "
        "and task == motions[m].instruction"
    )
    _write_manifest(dest, "human", "ego4d", seed, size, styles, ("head",), motions, join)
    return roots


def _pair(text: str, what: str) -> tuple[int, int]:
    try:
        first, second = (int(x) for x in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise SystemExit(f"{what} must look like 96x72 (or 64,96 for lengths), got {text!r}") from None
    return first, second


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clap_data.factories.rendered DEST``: DEST/robot (Astribot) and DEST/human (Ego4D)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--robot-episodes", type=int, default=4, help="robot motions (0: no robot data)")
    parser.add_argument("--human-episodes", type=int, default=4, help="human motions (0: no human data)")
    parser.add_argument("--variants", type=int, default=2, help="appearance variants of every motion")
    parser.add_argument("--lengths", default="64,96", help="LOW,HIGH: inclusive range of episode lengths (frames)")
    parser.add_argument("--size", default="96x72", help="WIDTHxHEIGHT of every camera")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size, lengths = _pair(args.size, "--size"), _pair(args.lengths, "--lengths")
    roots: list[Path] = []
    for count, writer, name in ((args.robot_episodes, write_rendered_robot, "robot"),
                                (args.human_episodes, write_rendered_human, "human")):
        if count > 0:
            # `make demo` regenerates the same folder on every run.
            roots += writer(args.dest / name, count, lengths, args.seed, args.variants, size, overwrite=True)
    for root in roots:
        print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
