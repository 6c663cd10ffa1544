"""The report's numbers, computed by DuckDB straight from a dataset's parquet files.

Every query streams: DuckDB scans the data files column by column and keeps only aggregates (at most
``2·Nq × K`` groups for code usage, one group per task or episode otherwise), so memory stays bounded
however many frames a dataset holds. Only the episode lengths (one integer per episode) and a capped
number of quarantine rows come back to Python whole. File paths travel as query parameters, never
spliced into SQL text, so any folder name is safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
from numpy.typing import NDArray

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.schemas import ACTION_TOKENS, ARM_MASK_COLUMN, PADDED_COLUMN_OF

QUARANTINE_ROWS_SHOWN = 500  # the page lists this many; quarantine.parquet keeps them all


@dataclass(frozen=True)
class TokenUsage:
    """How often each code fills each slot of one token column, over the frames whose slot's arm is active."""

    column: str
    num_queries: int  # codes per arm: slot s belongs to arm s // Nq (left first)
    codebook_size: int
    codebook_sha256: str  # the Act-VAE whose codebook the codes index
    counts: NDArray[np.int64]  # [2·Nq, K]

    def pooled(self) -> NDArray[np.int64]:
        """Uses of each code over every slot, ``[K]``."""
        return self.counts.sum(axis=0)


@dataclass(frozen=True)
class TaskCount:
    task_index: int
    task: str
    episodes: int
    frames: int


@dataclass(frozen=True)
class QuarantineRows:
    total: int
    by_category: list[tuple[str, int]]  # most frequent first
    rows: list[tuple[str, str, str, str]]  # (source_episode, category, file, reason), at most QUARANTINE_ROWS_SHOWN


@dataclass(frozen=True)
class DatasetFacts:
    """Everything the report shows about one dataset that needs no model."""

    metadata: DatasetMetadata
    frames: int  # rows of the data files (not info.json's claim)
    episode_lengths: NDArray[np.int64]  # in episode order
    tasks: list[TaskCount]  # most frames first
    quarantine: QuarantineRows
    usage: dict[str, TokenUsage]  # token column → usage, for the columns present


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that may reorder rows: aggregates need no order, and streaming scans need less memory."""
    return duckdb.connect(":memory:", config={"preserve_insertion_order": False})


def _data_files(metadata: DatasetMetadata) -> list[str]:
    files = [str(metadata.root / name) for name in metadata.data_files()]
    if not files:
        raise ClapDataError(f"{metadata.root} has no data files (data/chunk-*/file-*.parquet)")
    return files


def _episode_files(metadata: DatasetMetadata) -> str:
    return str(metadata.root / "meta" / "episodes" / "*" / "*.parquet")


def frame_count(con: duckdb.DuckDBPyConnection, metadata: DatasetMetadata) -> int:
    """Rows of the data files (DuckDB answers from the parquet footers)."""
    return int(con.execute("SELECT count(*) FROM read_parquet($files)", {"files": _data_files(metadata)}).fetchone()[0])


def episode_lengths(con: duckdb.DuckDBPyConnection, metadata: DatasetMetadata) -> NDArray[np.int64]:
    """Each episode's ``length`` from the episodes metadata, in episode order."""
    rows = con.execute(
        "SELECT length FROM read_parquet($files) ORDER BY episode_index", {"files": _episode_files(metadata)}
    ).fetchnumpy()
    return np.asarray(rows["length"], dtype=np.int64)


def task_counts(con: duckdb.DuckDBPyConnection, metadata: DatasetMetadata) -> list[TaskCount]:
    """Per task of ``meta/tasks.parquet``: the episodes and frames that carry it, counted on the frames'
    ``task_index`` (exact even when an episode holds several tasks); tasks no frame uses count zero."""
    rows = con.execute(
        """
        SELECT t.task_index, t.task, count(DISTINCT d.episode_index), count(d.task_index)
        FROM read_parquet($tasks) AS t LEFT JOIN read_parquet($files) AS d USING (task_index)
        GROUP BY t.task_index, t.task ORDER BY 4 DESC, 1
        """,
        {"tasks": str(metadata.root / layout.TASKS_PATH), "files": _data_files(metadata)},
    ).fetchall()
    return [TaskCount(int(i), str(task), int(episodes), int(frames)) for i, task, episodes, frames in rows]


def quarantine_rows(con: duckdb.DuckDBPyConnection, metadata: DatasetMetadata) -> QuarantineRows:
    """The quarantined episodes (``quarantine.parquet`` beside ``meta/``); none when the file is absent."""
    path = metadata.root / layout.QUARANTINE_PATH
    if not path.is_file():
        return QuarantineRows(0, [], [])
    source = {"file": str(path)}
    categories = con.execute(
        "SELECT category, count(*) FROM read_parquet($file) GROUP BY 1 ORDER BY 2 DESC, 1", source
    ).fetchall()
    rows = con.execute(
        f"SELECT source_episode, category, file, reason FROM read_parquet($file) LIMIT {QUARANTINE_ROWS_SHOWN}", source
    ).fetchall()
    total = sum(n for _, n in categories)
    return QuarantineRows(total, [(str(c), int(n)) for c, n in categories], [tuple(map(str, row)) for row in rows])


def _codebook_sha256(column: str, identity: dict) -> str:
    """Action tokens index their own checkpoint's codebook; pseudo-tokens the Act-VAE's the VD-VAE was built on."""
    return str(identity.get("checkpoint_sha256" if column == ACTION_TOKENS else "act_vae_sha256", ""))


def token_usage(con: duckdb.DuckDBPyConnection, metadata: DatasetMetadata, column: str) -> TokenUsage:
    """Counts ``[2·Nq, K]`` of each code in each slot of ``column``; a slot counts at a frame only if its
    arm is active there (``arm_mask``), so a single-arm robot's empty slot does not swamp the histogram."""
    identity = metadata.token_identity(column)
    if identity is None:
        raise ClapDataError(f"{metadata.root} has no {column} column")
    nq, k = int(identity["num_queries"]), int(identity["codebook_size"])
    rows = con.execute(
        f"""
        SELECT slot, code, count(*) FROM (
            SELECT unnest(range({2 * nq})) AS slot, unnest("{column}"::SMALLINT[]) AS code,
                   "{ARM_MASK_COLUMN}"::FLOAT[] AS mask
            FROM read_parquet($files)
        ) WHERE mask[slot // {nq} + 1] != 0 GROUP BY 1, 2
        """,
        {"files": _data_files(metadata)},
    ).fetchall()
    counts = np.zeros((2 * nq, k), dtype=np.int64)
    for slot, code, n in rows:
        if not 0 <= code < k:
            raise ClapDataError(f"{metadata.root}: {column} holds code {code}, outside its codebook of K = {k}")
        counts[slot, code] = n
    return TokenUsage(column, nq, k, _codebook_sha256(column, identity), counts)


def sample_frames(con: duckdb.DuckDBPyConnection, metadata: DatasetMetadata, n: int) -> list[tuple[int, int, int]]:
    """Up to ``n`` frames whose action chunk is not padded, as ``(hash, episode, frame)``: the frames with the
    smallest hash of their global index, a fixed pseudo-random pick that a streaming top-n finds, and that
    several datasets' picks merge into one by taking the smallest hashes again."""
    padded = PADDED_COLUMN_OF[ACTION_TOKENS]
    rows = con.execute(
        f"""
        SELECT hash("index", 'clap-report') AS h, episode_index, frame_index FROM read_parquet($files)
        WHERE NOT "{padded}" ORDER BY h LIMIT {int(n)}
        """,
        {"files": _data_files(metadata)},
    ).fetchall()
    return [(int(h), int(e), int(f)) for h, e, f in rows]


def dataset_facts(con: duckdb.DuckDBPyConnection, metadata: DatasetMetadata) -> DatasetFacts:
    """Every number of one dataset's section; a file DuckDB cannot read is refused in one sentence."""
    try:
        return DatasetFacts(
            metadata=metadata,
            frames=frame_count(con, metadata),
            episode_lengths=episode_lengths(con, metadata),
            tasks=task_counts(con, metadata),
            quarantine=quarantine_rows(con, metadata),
            usage={column: token_usage(con, metadata, column) for column in metadata.token_columns},
        )
    except duckdb.Error as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClapDataError(f"{metadata.root} cannot be read for the report ({first_line})") from None
