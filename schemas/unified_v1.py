"""Unified schema v1: what every clap-data dataset holds, whatever its source.

One LeRobot v3.0 dataset per source, all with this feature set, so that stock lerobot, Ray Data,
DuckDB and HF ``datasets`` read any of them and datasets of different embodiments mix at load
time. The clap-data specifics that LeRobot's ``info.json`` has no field for (schema version,
provenance, ingest options) live in ``meta/clap_data.json``: putting unknown top-level keys into
``info.json`` makes lerobot warn on every load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

SCHEMA_NAME = "clap-data/unified"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
CLAP_META_PATH = "meta/clap_data.json"

ARM_DOF_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
POSE14_NAMES = tuple(f"{arm}_{dof}" for arm in ("left", "right") for dof in ARM_DOF_NAMES)
ARM_MASK_NAMES = ("left", "right")

# Where each part of the 14-D vector lives (METHOD.md §1): one arm's 7 values, then within an arm
# the position, the Euler rotation and the gripper.
ARM_SLICES = (slice(0, 7), slice(7, 14))
POSITION = slice(0, 3)
ROTATION = slice(3, 6)
GRIPPER = slice(6, 7)

# Column names of the data files.
STATE_COLUMN = "observation.state"
ACTION_COLUMN = "action"
ARM_MASK_COLUMN = "arm_mask"
ACTION_TOKENS = "action_tokens"
ACTION_TOKENS_PADDED = "action_tokens_padded"
PSEUDO_TOKENS = "pseudo_tokens"
PSEUDO_TOKENS_PADDED = "pseudo_tokens_padded"

# Unified camera names, in feature order. A dataset has the subset its source provides.
CAMERA_NAMES = ("head", "wrist_left", "wrist_right")

# Columns that later stages (tokenize, pseudo-label) add in place, each with its padded flag;
# `clap-data info` lists those present.
TOKEN_COLUMNS = (ACTION_TOKENS, PSEUDO_TOKENS)
PADDED_COLUMN_OF = {ACTION_TOKENS: ACTION_TOKENS_PADDED, PSEUDO_TOKENS: PSEUDO_TOKENS_PADDED}

# quarantine.parquet beside meta/: one row per episode left out of the dataset, every value a string.
QUARANTINE_SCHEMA = pa.schema(
    [("source_episode", pa.string()), ("category", pa.string()), ("file", pa.string()), ("reason", pa.string())]
)


class UnknownSchemaError(Exception):
    """A dataset written by a clap-data schema this version cannot read."""


def camera_feature_key(camera: str) -> str:
    """LeRobot feature key of a unified camera name, e.g. ``observation.images.head``."""
    if camera not in CAMERA_NAMES:
        raise ValueError(f"unknown camera {camera!r}; the unified cameras are {', '.join(CAMERA_NAMES)}")
    return f"observation.images.{camera}"


def _vector(dtype: str, names: tuple[str, ...]) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [len(names)], "names": list(names)}


def _scalar(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def frame_features() -> dict[str, dict[str, Any]]:
    """The non-video LeRobot features of schema v1, in column order."""
    return {
        STATE_COLUMN: _vector("float32", POSE14_NAMES),
        ACTION_COLUMN: _vector("float32", POSE14_NAMES),
        ARM_MASK_COLUMN: _vector("float32", ARM_MASK_NAMES),
        "subtask": _scalar("string"),
        "timestamp": _scalar("float32"),
        "frame_index": _scalar("int64"),
        "episode_index": _scalar("int64"),
        "index": _scalar("int64"),
        "task_index": _scalar("int64"),
    }


def video_feature(width: int, height: int, fps: int, codec: str, pix_fmt: str) -> dict[str, Any]:
    """A LeRobot v3 video feature, with the stream facts lerobot records in ``info``."""
    return {
        "dtype": "video",
        "shape": [height, width, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": height,
            "video.width": width,
            "video.codec": codec,
            "video.pix_fmt": pix_fmt,
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        },
    }


_ARROW_TYPES = {"float32": pa.float32(), "int64": pa.int64(), "int16": pa.int16(), "bool": pa.bool_(), "string": pa.string()}


def data_arrow_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """Arrow schema of the ``data/`` parquet files: vectors as fixed-size lists, as HF datasets
    writes ``List(length=n)``, so lerobot's feature cast on load is a no-op."""
    fields = []
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        base = _ARROW_TYPES[ft["dtype"]]
        shape = ft["shape"]
        fields.append(pa.field(key, base if list(shape) == [1] else pa.list_(base, shape[0])))
    return pa.schema(fields)


def read_clap_meta(root: Path) -> dict[str, Any]:
    """Load ``meta/clap_data.json``, refusing datasets of a schema version this code does not know."""
    path = Path(root) / CLAP_META_PATH
    if not path.is_file():
        raise UnknownSchemaError(f"{root} is not a clap-data dataset: {CLAP_META_PATH} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnknownSchemaError(f"{path} cannot be read: {exc}") from exc
    version = meta.get("schema_version")
    if meta.get("schema") != SCHEMA_NAME or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnknownSchemaError(
            f"{root} uses schema {meta.get('schema')!r} version {version!r}; this clap-data reads "
            f"{SCHEMA_NAME} version(s) {sorted(SUPPORTED_SCHEMA_VERSIONS)}: upgrade clap-data"
        )
    return meta
