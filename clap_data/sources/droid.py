"""DROID (single Franka arm, 15 Hz) in either layout a user may have (FORMATS.md):

- a **LeRobot port** (``lerobot/droid_1.0.1``, v3.0; a folder with ``meta/info.json``) is read
  through :class:`~clap_data.sources.lerobot.LeRobotSource` with DROID's built-in mapping;
- a folder of **RLDS TFRecord shards** (``*.tfrecord-*-of-*``) is handed to
  :class:`clap_data.sources.droid_rlds.DroidRldsSource`.

DROID's mapping (also shipped as ``docs/mappings/droid.yaml``; ``docs/lerobot_mapping.md``):
- state: ``observation.state.cartesian_position`` = xyz + Euler roll, pitch, yaw in scipy's
  lowercase ``"xyz"`` (extrinsic) convention — the canonical one, so angles pass through a matrix
  unchanged apart from wrapping; uppercase ``"XYZ"`` readings elsewhere are a known bug.
  ``observation.state.gripper_position`` 0 open … 1 closed → ``2g - 1``, clamped.
- the arm goes in the **right** slot; the left slot is zero and ``arm_mask`` is ``[0, 1]``.
- action: DROID's command stream is not what the robot did, so METHOD.md §2's rule for such
  robots applies: ``action[t] = state[t+1]`` and the last frame repeats its state. The commanded
  pose (``action.cartesian_position``, ``action.original``) and the joint-space ``action`` are
  not used.
- cameras: ``exterior_1_left`` → ``head``, ``wrist_left`` → ``wrist_right`` (the wrist camera rides
  on the one arm, which sits in the right slot). ``exterior_2_left`` is not ingested — the unified
  schema has one head camera — and the summary says so. Older ports name the cameras
  ``exterior_image_1_left`` / ``wrist_image_left``; whichever ``meta/info.json`` declares is used.
- language: the instruction is ``language_instruction``; ``language_instruction_2``,
  ``language_instruction_3`` and ``is_episode_successful`` are kept per episode (``source/<key>``
  columns), and ``empty_instruction`` flags episodes whose instruction is empty (kept, not dropped:
  whether to train on them is the user's call).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clap_data.errors import ClapDataError
from clap_data.sources.base import CanonicalEpisode, EpisodeRef, Source
from clap_data.sources.lerobot import LeRobotSource
from clap_data.sources.lerobot_layout import INFO_PATH, LeRobotLayout
from clap_data.sources.mapping import parse_mapping
from clap_data.urls import is_url

EMBODIMENT = "droid"
RLDS_SHARD_GLOB = "*.tfrecord-*-of-*"

# Unified camera → the video keys DROID ports use for it, newest first.
CAMERA_KEYS: dict[str, tuple[str, ...]] = {
    "head": ("observation.images.exterior_1_left", "observation.images.exterior_image_1_left"),
    "wrist_right": ("observation.images.wrist_left", "observation.images.wrist_image_left"),
}

_STATE = {
    "position": "observation.state.cartesian_position[0:3]",
    "rotation": "observation.state.cartesian_position[3:6]",
    "rotation_convention": "euler_xyz",
    "gripper": "observation.state.gripper_position",
    "gripper_open": 0.0,
    "gripper_closed": 1.0,
}

# The mapping document of the current port; cameras are filled in from meta/info.json.
DROID_MAPPING: dict[str, Any] = {
    "embodiment": EMBODIMENT,
    "arms": {"right": {"state": _STATE, "action": "next_state"}},
    "cameras": {camera: keys[0] for camera, keys in CAMERA_KEYS.items()},
    "instruction": "language_instruction",
    "extra": {
        "language_instruction_2": "language_instruction_2",
        "language_instruction_3": "language_instruction_3",
        "is_episode_successful": "is_episode_successful",
    },
}


def _has_rlds_shards(root: Path) -> bool:
    """Shards directly in ``root`` or below it (``droid/1.0.1/``); stops at the first found."""
    return next(root.rglob(RLDS_SHARD_GLOB), None) is not None


def droid_mapping_document(video_keys: Sequence[str]) -> dict[str, Any]:
    """DROID's mapping with each camera's key as this port names it (absent cameras left out)."""
    document = copy.deepcopy(DROID_MAPPING)
    cameras = {}
    for camera, candidates in CAMERA_KEYS.items():
        declared = [key for key in candidates if key in video_keys]
        if declared:
            cameras[camera] = declared[0]
    document["cameras"] = cameras
    return document


class DroidSource:
    """DROID from a LeRobot port or RLDS shards; ``cameras`` picks among head and wrist_right;
    ``fps`` resamples onto another rate (both layouts: nearest source frame in time).

    ``workers_hint`` is passed to the RLDS reader (it sizes its shard scan); the LeRobot port
    lists episodes from its metadata and does not need it.
    """

    name = "droid"

    def __init__(
        self, root: str | Path, cameras: Sequence[str] | None = None, workers_hint: int | None = None, fps: int | None = None
    ):
        self._impl: Source
        if is_url(root):  # only the LeRobot port can be read by byte range: RLDS shards interleave episodes
            self._use_lerobot_port(LeRobotLayout(str(root)), cameras, fps)
            return
        root = Path(root)
        if not root.is_dir():
            raise ClapDataError(f"source folder {root} does not exist")
        if (root / INFO_PATH).is_file():
            self._use_lerobot_port(LeRobotLayout(root), cameras, fps)
        elif _has_rlds_shards(root):
            from clap_data.sources.droid_rlds import DroidRldsSource

            self.layout = "rlds"
            self._impl = DroidRldsSource(root, cameras=cameras, workers_hint=workers_hint, fps=fps)
        else:
            raise ClapDataError(
                f"{root} is not a DROID dataset: it has neither {INFO_PATH} (a LeRobot port such as "
                f"lerobot/droid_1.0.1) nor RLDS shards ({RLDS_SHARD_GLOB}, e.g. droid/1.0.1)"
            )

    def _use_lerobot_port(self, layout: LeRobotLayout, cameras: Sequence[str] | None, fps: int | None) -> None:
        self.layout = "lerobot"
        mapping = parse_mapping(droid_mapping_document(layout.video_keys), "built-in DROID mapping")
        self._impl = LeRobotSource(layout.files, mapping, cameras, fps=fps)

    @property
    def root(self) -> Path:
        return self._impl.root

    @property
    def embodiment(self) -> str:
        return self._impl.embodiment

    @property
    def fps(self) -> int:
        return self._impl.fps

    @property
    def cameras(self) -> tuple[str, ...]:
        return self._impl.cameras

    @property
    def notices(self) -> list[str]:
        return self._impl.notices

    def list_episodes(self) -> list[EpisodeRef]:
        return self._impl.list_episodes()

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        return self._impl.read_episode(ref)

    def describe(self) -> dict[str, Any]:
        return {**self._impl.describe(), "source": self.name, "layout": self.layout}
