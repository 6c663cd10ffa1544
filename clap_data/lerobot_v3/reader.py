"""Read what a clap-data dataset says about itself, for ``clap-data info`` and scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.schemas import TOKEN_COLUMNS, UnknownSchemaError, read_clap_meta


def dataset_summary(root: Path) -> dict[str, Any]:
    """The facts ``clap-data info --json`` prints. Refuses unknown schema versions."""
    root = Path(root)
    if not (root / layout.INFO_PATH).is_file():
        raise ClapDataError(f"{root} is not a LeRobot dataset: {layout.INFO_PATH} is missing")
    try:
        clap_meta = read_clap_meta(root)
        info = json.loads((root / layout.INFO_PATH).read_text())
    except UnknownSchemaError as exc:
        raise ClapDataError(str(exc)) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"{root / layout.INFO_PATH} cannot be read: {exc}") from None
    quarantine_file = root / layout.QUARANTINE_PATH
    try:
        rows = pq.read_table(quarantine_file).to_pylist() if quarantine_file.is_file() else []
    except (pa.ArrowException, OSError) as exc:
        raise ClapDataError(f"{quarantine_file} cannot be read: {exc}") from None
    features = info.get("features", {})
    return {
        "path": str(root),
        "episodes": info.get("total_episodes"),
        "frames": info.get("total_frames"),
        "fps": info.get("fps"),
        "robot_type": info.get("robot_type"),
        "cameras": [key.removeprefix("observation.images.") for key, ft in features.items() if ft.get("dtype") == "video"],
        "tasks": info.get("total_tasks"),
        "schema_version": clap_meta["schema_version"],
        "codebase_version": info.get("codebase_version"),
        "token_columns": [column for column in TOKEN_COLUMNS if column in features],
        "source": clap_meta.get("source", {}),
        "notices": clap_meta.get("notices", []),
        "quarantine": [
            {"episode": row["source_episode"], "reason": row["reason"], "category": row["category"], "file": row["file"]}
            for row in rows
        ],
    }
