"""Recognise a unified dataset that LeRobot's own tools edited, and restore its clap-data metadata (``clap-data adopt``).

Why: ``lerobot-edit-dataset`` (merge, split, delete-episodes, remove-feature) and ``aggregate_datasets`` write a new
LeRobot v3.0 dataset that keeps our frame columns, our token columns and the tokenizers' identities in
``meta/info.json``, but not ``meta/clap_data.json``, the manifest, the quarantine or the ``source/*`` provenance
columns of ``meta/episodes`` — so every clap-data command refused the result. Such a dataset is recognised by its
feature set (``edited_by_lerobot`` in ``metadata.py``, the one reader every command opens a dataset through), every
command that refuses it says so and names ``clap-data adopt``, and
:func:`adopt_dataset` writes what is missing:

- ``meta/clap_data.json``: the embodiment (``robot_type``), ``source.adopted`` saying what happened, a notice;
- provenance: ``source/*`` columns kept where lerobot kept them; where it dropped them, reconstructed as what is
  known — ``source/dataset`` ``"unknown"``, ``source/episode_id`` the episode's index in this dataset — and every
  row marked ``source/reconstructed``;
- token columns: their identities stay (they are in ``meta/info.json``); ``pseudo_tokens`` is pixel-derived, and
  lerobot re-encodes a video file when it drops episodes from it: it is listed under ``stale_columns`` (pseudo-label
  again to clear it) unless a previous manifest proves every video file unchanged (``action_tokens`` come from the
  actions, which lerobot copies, and stay valid);
- a dataset that still has a ``meta/clap_data.json`` whose manifest its files no longer match (copied along, or
  edited in place) is adopted the same way, keeping that file's source, tokenizers and video facts; an intact one
  is refused (nothing to adopt).
- an empty quarantine if there is none, and a new manifest of every file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clap_data import __version__
from clap_data.atomic import temp_sibling, write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.manifest import MANIFEST_PATH, Manifest
from clap_data.lerobot_v3.metadata import has_unified_features, read_info
from clap_data.locking import dataset_lock
from clap_data.schemas import (
    CLAP_META_PATH,
    PSEUDO_TOKENS,
    QUARANTINE_SCHEMA,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    TOKEN_COLUMNS,
)

RECONSTRUCTED = "source/reconstructed"


@dataclass
class AdoptReport:
    dataset: str
    episodes: int = 0
    provenance: str = ""  # "kept" | "reconstructed"
    token_columns: list[str] = field(default_factory=list)
    stale_columns: dict[str, str] = field(default_factory=dict)
    quarantine_written: bool = False


def adopt_dataset(root: Path, wait: bool = False) -> AdoptReport:
    """Restore the clap-data metadata of a unified dataset edited by LeRobot's tools (see the module docstring)."""
    root = Path(root).absolute()
    with dataset_lock(root, exclusive=True, purpose="adopt", wait=wait):
        info = read_info(root)
        previous = _stale_clap_meta(root)
        if not str(info.get("codebase_version", "")).startswith("v3"):
            raise ClapDataError(f"{root} is LeRobot {info.get('codebase_version')!r}; adopt reads v3.0 datasets")
        if not has_unified_features(info):
            raise ClapDataError(f"{root} does not have clap-data's unified features (observation.state, action, "
                                "arm_mask, subtask as schema v1 defines them); ingest it with `clap-data ingest lerobot`")
        report = AdoptReport(str(root), episodes=int(info.get("total_episodes") or 0))
        report.provenance = _restore_provenance(root)
        report.token_columns = [column for column in TOKEN_COLUMNS if column in info["features"]]
        videos_changed = _videos_changed(root, previous)
        if PSEUDO_TOKENS in report.token_columns and videos_changed:
            report.stale_columns[PSEUDO_TOKENS] = videos_changed
        quarantine = root / layout.QUARANTINE_PATH
        if not quarantine.is_file():
            pq.write_table(QUARANTINE_SCHEMA.empty_table(), quarantine)
            report.quarantine_written = True
        write_json_atomic(root / CLAP_META_PATH, _clap_meta(info, report, previous))
        manifest = Manifest.of_tree(root)
        manifest.files.pop(MANIFEST_PATH, None)
        manifest.write(root)
    return report


def _stale_clap_meta(root: Path) -> dict[str, Any] | None:
    """The ``meta/clap_data.json`` a dataset still has when its files no longer match its manifest (LeRobot's tools
    copied it along, or edited the dataset in place) — None when there is none; refuses an intact dataset."""
    path = root / CLAP_META_PATH
    if not path.is_file():
        return None
    manifest = Manifest.read(root) if (root / MANIFEST_PATH).is_file() else None
    if manifest is not None and not manifest.size_problems(root):
        raise ClapDataError(f"{root} is an intact clap-data dataset (its files match its manifest): nothing to adopt")
    try:
        previous = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return {**previous, "manifest_files": manifest.files if manifest else {}}


def _videos_changed(root: Path, previous: dict[str, Any] | None) -> str:
    """Why the videos may not be the ones the pixel-derived columns were computed on ("" when they provably are:
    every video file still has the sha256 the previous manifest recorded)."""
    recorded = (previous or {}).get("manifest_files", {})
    if not recorded:
        return ("pixel-derived, and LeRobot's tools may have re-encoded the videos (which cannot be checked without "
                "the manifest they dropped): pseudo-label the dataset again")
    for path in sorted((root / "videos").rglob("*.mp4")):
        relative = str(path.relative_to(root))
        if recorded.get(relative, {}).get("sha256") != file_sha256(path):
            return f"pixel-derived, and {relative} is not the video it was computed on: pseudo-label the dataset again"
    return ""


def _restore_provenance(root: Path) -> str:
    """Give every episodes-metadata row ``source/*`` columns (kept, or reconstructed) and the reconstructed flag;
    each file rewritten atomically. Returns ``"kept"`` or ``"reconstructed"``."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ClapDataError(f"{root} has no episodes metadata (meta/episodes/)")
    kept = "source/episode_id" in pq.read_schema(files[0]).names
    for path in files:
        table = pq.read_table(path)
        rows = table.num_rows
        if not kept:
            index = table.column("episode_index").to_pylist()
            for name, values in (("source/dataset", ["unknown"] * rows), ("source/dataset_id", ["unknown"] * rows),
                                 ("source/episode_id", [str(i) for i in index]), ("source/path", [""] * rows)):
                table = table.append_column(name, pa.array(values, pa.string()))
        if RECONSTRUCTED in table.column_names:
            table = table.drop_columns([RECONSTRUCTED])
        table = table.append_column(RECONSTRUCTED, pa.array([not kept] * rows, pa.bool_()))
        temporary = temp_sibling(path)
        pq.write_table(table, temporary)
        temporary.replace(path)
    return "kept" if kept else "reconstructed"


def _clap_meta(info: dict[str, Any], report: AdoptReport, previous: dict[str, Any] | None) -> dict[str, Any]:
    notice = (f"adopted by clap-data {__version__}: rewritten by LeRobot's tools, which dropped {CLAP_META_PATH}; "
              + ("per-episode provenance kept" if report.provenance == "kept" else
                 "per-episode provenance was dropped and is reconstructed (source/dataset 'unknown', source/episode_id "
                 "= the episode's index here; source/reconstructed marks it)"))
    kept = {k: v for k, v in (previous or {}).items() if k in ("source", "tokenizers", "video")}
    return {
        **kept,
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "created_by": f"clap-data {__version__} (adopt)",
        "embodiment": info.get("robot_type"),
        "source": {"adopted": True, "edited_by": "lerobot", "provenance": report.provenance,
                   **({"before": kept["source"]} if "source" in kept else {})},
        "video": kept.get("video", {"mode": "unknown (written by LeRobot's tools)"}),
        "notices": [notice],
        "stale_columns": report.stale_columns,
    }
