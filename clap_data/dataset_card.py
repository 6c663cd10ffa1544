"""The dataset card (``README.md``) a published dataset carries on the Hub.

A colleague who finds the repo needs to know, without downloading it: where the episodes come from and
under which licence, how they were ingested, what was rejected, which tokenizer wrote each token column
(its checkpoint sha256 is what makes two datasets' tokens comparable) and whether the codes look used,
and how to load it with lerobot, ``datasets`` and DuckDB. The card is a pure function of the dataset,
so publishing the same dataset again uploads the same card (a rerun changes nothing on the Hub). It is
never written into the dataset folder: the manifest lists the dataset's files, and a file added by hand
is what ``clap-data verify`` reports.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from clap_data import __version__
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.schemas import PADDED_COLUMN_OF, SCHEMA_VERSION

SOURCE_COLUMN = "source/dataset"  # the source each episode was ingested from (pipelines/ingest.py provenance)
_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class TokenStats:
    """How much of a codebook a token column uses, and how many of its frames are padded chunks."""

    column: str
    codebook_size: int
    codes_used: int
    frames: int
    padded: int

    @property
    def padded_share(self) -> float:
        return self.padded / self.frames if self.frames else 0.0


@dataclass(frozen=True)
class CardLicence:
    """The card's ``license`` field (a Hub licence id), a sentence saying where it comes from or what it
    forbids, and for ``other`` the ``license_name`` the Hub asks for."""

    spdx: str
    note: str
    name: str | None = None


def source_counts(meta: DatasetMetadata) -> dict[str, int]:
    """Source name → episodes, from each episode's provenance (a merged dataset has several sources);
    a dataset without the column counts all its episodes under ``meta/clap_data.json``'s source."""
    if SOURCE_COLUMN in meta.episode_columns():
        return dict(sorted(Counter(meta.episodes([SOURCE_COLUMN]).column(0).to_pylist()).items()))
    return {str(meta.clap.get("source", {}).get("source", "unknown")): meta.total_episodes}


def quarantine_counts(meta: DatasetMetadata) -> dict[str, int]:
    """Quarantine category → rejected episodes (``quarantine.parquet`` beside ``meta/``)."""
    path = meta.root / layout.QUARANTINE_PATH
    if not path.is_file():
        return {}
    try:
        categories = pq.read_table(path, columns=["category"]).column(0).to_pylist()
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise ClapDataError(f"{path} cannot be read ({exc})") from None
    return dict(sorted(Counter(categories).items()))


def token_stats(meta: DatasetMetadata, column: str) -> TokenStats:
    """Codes used and padded frames of one token column, streamed a batch of rows at a time."""
    identity = meta.token_identity(column) or {}
    size = int(identity.get("codebook_size") or 0)
    padded_column = PADDED_COLUMN_OF[column]
    counts = np.zeros(max(size, 1), dtype=np.int64)
    frames = padded = 0
    for relative in meta.data_files():
        for batch in pq.ParquetFile(meta.root / relative).iter_batches(_BATCH_ROWS, columns=[column, padded_column]):
            found = np.bincount(np.asarray(batch.column(0).flatten(), dtype=np.int64), minlength=counts.size)
            if found.size > counts.size:  # a code past K: counted, so the card shows more codes than K
                counts = np.pad(counts, (0, found.size - counts.size))
            counts[: found.size] += found
            frames += batch.num_rows
            padded += int(np.count_nonzero(batch.column(1).to_numpy(zero_copy_only=False)))
    return TokenStats(column, size, int(np.count_nonzero(counts)), frames, padded)


def _cell(value: Any) -> str:
    """A value as a markdown table cell: scalars as they are, the rest as JSON; pipes escaped."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ", ".join(value)
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text.replace("|", "\\|")


def _table(header: tuple[str, str], rows: list[tuple[Any, Any]]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "| --- | --- |", *(f"| {_cell(a)} | {_cell(b)} |" for a, b in rows)]


def _front_matter(licence: CardLicence, sources: dict[str, int]) -> str:
    front: dict[str, Any] = {"license": licence.spdx}
    if licence.name:
        front["license_name"] = licence.name
    front.update({
        "task_categories": ["robotics"],
        "tags": ["LeRobot", "clap-data", *sources],
        "configs": [{"config_name": "default", "data_files": "data/*/*.parquet"}],  # what `datasets` loads
    })
    return "---\n" + yaml.safe_dump(front, sort_keys=False, default_flow_style=False) + "---\n"


def _summary(meta: DatasetMetadata) -> list[str]:
    tokens = ", ".join(f"`{c}`" for c in meta.token_columns) or "none yet"
    version = meta.clap.get("schema_version", SCHEMA_VERSION)
    return [
        f"A LeRobot v3.0 dataset written by clap-data {__version__} (unified schema v{version}): canonical 14-D"
        " dual-arm `observation.state` and `action`, `arm_mask`, the episode task and a per-frame `subtask`, camera"
        " videos, provenance and token columns, for CLAP-style vision-language-action pre-training.",
        "",
        *_table(("", ""), [
            ("episodes", f"{meta.total_episodes:,} ({meta.total_frames:,} frames at {meta.fps} fps)"),
            ("embodiment (`robot_type`)", meta.robot_type),
            ("cameras", ", ".join(f"`{key}`" for key in meta.video_keys) or "none"),
            ("tasks", meta.info.get("total_tasks")),
            ("token columns", tokens),
        ]),
    ]


def _sources(meta: DatasetMetadata, licence: CardLicence, sources: dict[str, int]) -> list[str]:
    source = {k: v for k, v in meta.clap.get("source", {}).items() if k != "root"}  # a local path says nothing here
    video = meta.clap.get("video", {})
    lines = ["## Sources and licence", "", *_table(("source", "episodes"), list(sources.items())), "",
             f"Licence: {licence.note}", "", "Ingest options (as `meta/clap_data.json` records them):", ""]
    lines += [f"- `{key}`: {_cell(value)}" for key, value in source.items()]
    lines += [f"- video `{key}`: {_cell(value)}" for key, value in video.items()]
    lines += [f"- note: {notice}" for notice in meta.clap.get("notices", [])]
    return lines


def _quarantine(meta: DatasetMetadata) -> list[str]:
    counts = quarantine_counts(meta)
    if not counts:
        return ["## Quarantine", "", "No episode was rejected at ingest."]
    return ["## Quarantine", "",
            f"{sum(counts.values())} source episode(s) were rejected at ingest; `{layout.QUARANTINE_PATH}` lists"
            " each one (source episode, category, file, reason).", "",
            *_table(("category", "episodes"), list(counts.items()))]


def _tokenizers(meta: DatasetMetadata) -> list[str]:
    lines = ["## Tokenizers", ""]
    if not meta.token_columns:
        return [*lines, "No token column yet."]
    for column in meta.token_columns:
        stats = token_stats(meta, column)
        used = f"{stats.codes_used} of {stats.codebook_size}" if stats.codebook_size else str(stats.codes_used)
        lines += [
            f"### `{column}`", "",
            f"Codes used: {used}. Padded: {stats.padded:,} of {stats.frames:,} frames ({stats.padded_share:.1%};"
            f" `{PADDED_COLUMN_OF[column]}` is true where the frames the tokens describe ran past the episode end).",
            "", *_table(("identity", "value"), sorted((meta.token_identity(column) or {}).items())), "",
        ]
    return lines[:-1]


def _loading(repo_id: str, private: bool) -> list[str]:
    login = ["", "The repo is private: log in first (`hf auth login`, or set `HF_TOKEN`); for DuckDB, "
             "`CREATE SECRET hf (TYPE huggingface, PROVIDER credential_chain);`."] if private else []
    return [
        "## Loading", "",
        "With lerobot (frames with decoded video, at the `v3.0` tag):", "",
        "```python", "from lerobot.datasets import LeRobotDataset", "",
        f'dataset = LeRobotDataset("{repo_id}")',
        'frame = dataset[0]  # frame["action"], frame["observation.images.head"], …',
        "```", "",
        "With `datasets` (the frames' columns, no video):", "",
        "```python", "from datasets import load_dataset", "",
        f'frames = load_dataset("{repo_id}", split="train")', "```", "",
        "With DuckDB:", "",
        "```sql",
        f"SELECT episode_index, count(*) AS frames FROM 'hf://datasets/{repo_id}/data/*/*.parquet' GROUP BY ALL;",
        "```", *login,
    ]


def render_card(
    meta: DatasetMetadata, repo_id: str, licence: CardLicence, sources: dict[str, int], private: bool
) -> str:
    """The whole ``README.md``: YAML front matter, then the sections (see the module docstring)."""
    sections = [[f"# {repo_id}", "", *_summary(meta)], _sources(meta, licence, sources), _quarantine(meta),
                _tokenizers(meta), _loading(repo_id, private)]
    return _front_matter(licence, sources) + "\n" + "\n\n".join("\n".join(section) for section in sections) + "\n"
