"""The mapping file: how the columns of an arbitrary LeRobot dataset become canonical 14-D frames.

LeRobot datasets agree on the layout but not on what their columns mean: one stores an xyz +
Euler pose, another a quaternion, a third only joints; grippers run 0..1 or 0..100, open or
closed at the top; cameras have any name. A small YAML file (JSON is valid YAML too) says it
once per dataset; the format is documented with examples in ``docs/lerobot_mapping.md``::

    embodiment: franka
    arms:
      right:
        state:
          position: observation.state.cartesian_position[0:3]
          rotation: observation.state.cartesian_position[3:6]
          rotation_convention: euler_xyz
          gripper: observation.state.gripper_position
          gripper_open: 0.0
          gripper_closed: 1.0
        action: next_state
    cameras:
      head: observation.images.exterior_1_left
    instruction: task

Parsing (:func:`parse_mapping`) checks the file on its own; :func:`check_mapping_columns` then
checks it against the dataset's ``meta/info.json``. Both raise :class:`MappingError`, one
sentence naming the offending key, so a user can fix the file without reading code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clap_data.errors import ClapDataError
from clap_data.schemas import CAMERA_NAMES

# Values per frame of each rotation convention (matrix: 9 values, row-major).
ROTATION_WIDTHS = {"euler_xyz": 3, "quat_xyzw": 4, "quat_wxyz": 4, "rot6d_rows": 6, "matrix": 9}
ARM_SLOTS = ("left", "right")
NEXT_STATE = "next_state"  # action[t] = state[t+1] (METHOD.md §2: robots whose commands are not recorded)
TASK = "task"  # instruction taken from the LeRobot task of each frame (task_index → tasks)
EMPTY_INSTRUCTION = "empty_instruction"  # the episode fact every LeRobot-read episode gets
NUMERIC_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
EXTRA_DTYPES = NUMERIC_DTYPES | {"bool", "string"}

_TOP_KEYS = ("embodiment", "arms", "cameras", "instruction", "subtask", "extra")
_STREAM_KEYS = ("position", "rotation", "rotation_convention", "gripper", "gripper_open", "gripper_closed")
_COLUMN_REF = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<start>\d+)(?::(?P<stop>\d+))?\])?$")


class MappingError(ClapDataError):
    """The mapping file is wrong; the message names the key and says what is expected."""


@dataclass(frozen=True)
class ColumnRef:
    """Values ``[start, stop)`` of a column (``name[3:6]``, ``name[6]`` or the whole ``name``).

    ``key`` is where the reference sits in the mapping file, for error messages.
    """

    key: str
    name: str
    start: int | None = None
    stop: int | None = None

    def bounds(self, width: int) -> tuple[int, int]:
        """``(start, stop)`` within a column of ``width`` values per frame."""
        return (self.start or 0, width if self.stop is None else self.stop)


@dataclass(frozen=True)
class StreamMapping:
    """Where one arm's pose stream (its state, or its commanded action) is."""

    position: ColumnRef
    rotation: ColumnRef
    rotation_convention: str
    gripper: ColumnRef
    gripper_open: float  # the raw value that means fully open (-1 canonical)
    gripper_closed: float  # the raw value that means fully closed (+1 canonical)

    def columns(self) -> tuple[ColumnRef, ...]:
        return (self.position, self.rotation, self.gripper)


@dataclass(frozen=True)
class ArmMapping:
    """One arm slot: its measured pose and where its commands come from."""

    state: StreamMapping
    action: StreamMapping | None  # None: action[t] = state[t+1], the last frame repeats its state


@dataclass(frozen=True)
class SourceMapping:
    """A parsed, self-consistent mapping; ``origin`` names the file (or built-in) in messages."""

    origin: str
    embodiment: str
    arms: dict[str, ArmMapping]  # "left" / "right" → arm; single-arm robots normally use "right"
    cameras: dict[str, str]  # unified camera name → video feature key
    instruction: str  # TASK or a string column
    subtask: str | None  # a string column, or None (empty subtasks)
    extra: dict[str, str]  # episode fact name → column (its value at the episode's first frame)

    def column_refs(self) -> list[ColumnRef]:
        refs = []
        for arm in self.arms.values():
            refs.extend(arm.state.columns())
            if arm.action is not None:
                refs.extend(arm.action.columns())
        return refs


def _fail(origin: str, message: str) -> MappingError:
    return MappingError(f"mapping {origin}: {message}")


def _check_keys(origin: str, where: str, value: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    label = where or "the top level"
    if not isinstance(value, dict):
        raise _fail(origin, f"{label} must be a mapping of keys to values, not {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise _fail(origin, f"unknown key {_join(where, str(key))!r}; {label} takes {', '.join(allowed)}")
    for key in required:
        if key not in value or value[key] is None:
            raise _fail(origin, f"{_join(where, key)} is missing")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _string(origin: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(origin, f"{key} must be a non-empty string, not {value!r}")
    return value.strip()


def _number(origin: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(origin, f"{key} must be a number, not {value!r}")
    return float(value)


def _column_ref(origin: str, key: str, value: Any) -> ColumnRef:
    text = _string(origin, key, value)
    match = _COLUMN_REF.match(text)
    if match is None:
        raise _fail(origin, f"{key} {text!r} is not a column reference like 'name', 'name[3]' or 'name[0:3]'")
    start = match.group("start")
    stop = match.group("stop")
    if start is None:
        return ColumnRef(key, match.group("name").strip())
    first = int(start)
    last = first + 1 if stop is None else int(stop)
    if last <= first:
        raise _fail(origin, f"{key} {text!r} selects no values")
    return ColumnRef(key, match.group("name").strip(), first, last)


def _convention(origin: str, key: str, value: Any) -> str:
    text = _string(origin, key, value)
    if text in ROTATION_WIDTHS:
        return text
    hint = ""
    if text.lower() == "euler_xyz":
        hint = " (uppercase XYZ would be intrinsic rotations; the canonical form and DROID use lowercase, extrinsic)"
    raise _fail(origin, f"{key} {text!r} is not one of {', '.join(ROTATION_WIDTHS)}{hint}")


def _stream(origin: str, where: str, value: Any) -> StreamMapping:
    block = _check_keys(origin, where, value, _STREAM_KEYS, _STREAM_KEYS)
    opened = _number(origin, f"{where}.gripper_open", block["gripper_open"])
    closed = _number(origin, f"{where}.gripper_closed", block["gripper_closed"])
    if opened == closed:
        raise _fail(origin, f"{where}.gripper_open and gripper_closed are both {opened}; they must differ")
    return StreamMapping(
        position=_column_ref(origin, f"{where}.position", block["position"]),
        rotation=_column_ref(origin, f"{where}.rotation", block["rotation"]),
        rotation_convention=_convention(origin, f"{where}.rotation_convention", block["rotation_convention"]),
        gripper=_column_ref(origin, f"{where}.gripper", block["gripper"]),
        gripper_open=opened,
        gripper_closed=closed,
    )


def _arm(origin: str, where: str, value: Any) -> ArmMapping:
    block = _check_keys(origin, where, value, ("state", "action"), ("state", "action"))
    action = block["action"]
    if isinstance(action, str):
        if action.strip() != NEXT_STATE:
            raise _fail(origin, f"{where}.action {action!r} must be {NEXT_STATE!r} or a block like {where}.state")
        return ArmMapping(_stream(origin, f"{where}.state", block["state"]), None)
    return ArmMapping(_stream(origin, f"{where}.state", block["state"]), _stream(origin, f"{where}.action", action))


def _names(origin: str, key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(origin, f"{key} must map names to columns, not {type(value).__name__}")
    return {str(name): _string(origin, f"{key}.{name}", column) for name, column in value.items()}


def parse_mapping(document: Any, origin: str) -> SourceMapping:
    """Check a mapping document (the YAML file's content) on its own and return it parsed."""
    top = _check_keys(origin, "", document, _TOP_KEYS, ("embodiment", "arms"))
    arms_block = top["arms"]
    if not isinstance(arms_block, dict) or not arms_block:
        raise _fail(origin, "arms must map an arm slot (left, right, or both) to its columns")
    for slot in arms_block:
        if slot not in ARM_SLOTS:
            raise _fail(origin, f"arms.{slot} is not an arm slot; use left, right or both")
    arms = {slot: _arm(origin, f"arms.{slot}", arms_block[slot]) for slot in ARM_SLOTS if slot in arms_block}
    cameras = _names(origin, "cameras", top.get("cameras"))
    for camera in cameras:
        if camera not in CAMERA_NAMES:
            raise _fail(origin, f"cameras.{camera} is not a unified camera; use {', '.join(CAMERA_NAMES)}")
    extra = _names(origin, "extra", top.get("extra"))
    for name in extra:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name == EMPTY_INSTRUCTION:
            raise _fail(origin, f"extra.{name} must be a plain identifier other than {EMPTY_INSTRUCTION} (which is always written)")
    subtask = top.get("subtask")
    return SourceMapping(
        origin=origin,
        embodiment=_string(origin, "embodiment", top["embodiment"]),
        arms=arms,
        cameras={camera: cameras[camera] for camera in CAMERA_NAMES if camera in cameras},
        instruction=_string(origin, "instruction", top.get("instruction", TASK)),
        subtask=None if subtask is None else _string(origin, "subtask", subtask),
        extra=extra,
    )


def load_mapping(path: Path) -> SourceMapping:
    """Read and check a mapping file (YAML or JSON)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MappingError(f"mapping file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"mapping file {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise MappingError(f"mapping file {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return parse_mapping(document, f"file {path}")


def _feature(
    mapping: SourceMapping, key: str, column: str, features: dict[str, dict[str, Any]], kinds: frozenset[str], expected: str
) -> dict[str, Any]:
    feature = features.get(column)
    if feature is None:
        raise _fail(mapping.origin, f"{key} refers to column {column!r}, which meta/info.json does not declare")
    if str(feature.get("dtype")) not in kinds:
        raise _fail(mapping.origin, f"{key} refers to column {column!r} of dtype {feature.get('dtype')}, expected {expected}")
    return feature


def _width(feature: dict[str, Any]) -> int:
    shape = list(feature.get("shape") or [1])
    return int(shape[0]) if len(shape) == 1 else -1


def _check_ref(mapping: SourceMapping, ref: ColumnRef, needed: int, features: dict[str, dict[str, Any]]) -> None:
    feature = _feature(mapping, ref.key, ref.name, features, NUMERIC_DTYPES, "a numeric dtype")
    width = _width(feature)
    if width < 0:
        shape = feature.get("shape")
        raise _fail(mapping.origin, f"{ref.key} refers to column {ref.name!r} of shape {shape}; only 1-D columns can be mapped")
    start, stop = ref.bounds(width)
    if stop > width:
        raise _fail(mapping.origin, f"{ref.key} selects values {start}..{stop - 1} of {ref.name!r}, which has {width}")
    if stop - start != needed:
        raise _fail(mapping.origin, f"{ref.key} selects {stop - start} value(s) of {ref.name!r}; it needs {needed}")


def check_mapping_columns(mapping: SourceMapping, features: dict[str, dict[str, Any]]) -> None:
    """Check every column the mapping names against the dataset's features (``meta/info.json``)."""
    for arm in mapping.arms.values():
        for stream in (arm.state, arm.action):
            if stream is None:
                continue
            _check_ref(mapping, stream.position, 3, features)
            _check_ref(mapping, stream.rotation, ROTATION_WIDTHS[stream.rotation_convention], features)
            _check_ref(mapping, stream.gripper, 1, features)
    for camera, key in mapping.cameras.items():
        _feature(mapping, f"cameras.{camera}", key, features, frozenset({"video"}), "video")
    if mapping.instruction != TASK:
        _feature(mapping, "instruction", mapping.instruction, features, frozenset({"string"}), "string")
    if mapping.subtask is not None:
        _feature(mapping, "subtask", mapping.subtask, features, frozenset({"string"}), "string")
    for name, column in mapping.extra.items():
        feature = _feature(mapping, f"extra.{name}", column, features, EXTRA_DTYPES, "a number, bool or string")
        if _width(feature) != 1:
            shape = feature.get("shape")
            raise _fail(mapping.origin, f"extra.{name} refers to column {column!r} of shape {shape}; extras must be single values")
