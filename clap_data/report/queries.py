"""The report's numbers, read through the corpus views (:mod:`clap_data.corpus`) and the token statistics
(:mod:`clap_data.stats`).

Each query filters the views on one ``dataset`` (DuckDB then reads only that dataset's files) and streams:
only aggregates stay in memory (one group per task, the ``2·Nq × K`` code counts of
:func:`clap_data.stats.slot_usage`), so memory stays bounded however many frames a dataset holds. Only the
episode lengths (one integer per episode) and a capped number of quarantine rows come back to Python whole.
Dataset names travel as query parameters, never spliced into SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
from numpy.typing import NDArray

from clap_data.corpus import Corpus, CorpusDataset, first_sentence, sql_identifier
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.schemas import ACTION_TOKENS, PADDED_COLUMN_OF
from clap_data.stats import slot_usage

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

    name: str  # the name its rows carry in the corpus views
    metadata: DatasetMetadata
    frames: int  # rows of the data files (not info.json's claim)
    episode_lengths: NDArray[np.int64]  # in episode order
    tasks: list[TaskCount]  # most frames first
    quarantine: QuarantineRows
    usage: dict[str, TokenUsage]  # token column → usage, for the columns present


def frame_count(con: duckdb.DuckDBPyConnection, dataset: str) -> int:
    """Rows of the dataset's data files."""
    return int(con.execute("SELECT count(*) FROM frames WHERE dataset = $d", {"d": dataset}).fetchone()[0])


def episode_lengths(con: duckdb.DuckDBPyConnection, dataset: str) -> NDArray[np.int64]:
    """Each episode's ``length`` from the episodes metadata, in episode order."""
    rows = con.execute(
        "SELECT length FROM episodes WHERE dataset = $d ORDER BY episode_index", {"d": dataset}
    ).fetchnumpy()
    return np.asarray(rows["length"], dtype=np.int64)


def task_counts(con: duckdb.DuckDBPyConnection, dataset: str) -> list[TaskCount]:
    """Per task of ``meta/tasks.parquet``: the episodes and frames that carry it, counted on the frames'
    ``task_index`` (exact even when an episode holds several tasks); tasks no frame uses count zero."""
    rows = con.execute(
        """
        SELECT t.task_index, t.task, count(DISTINCT f.episode_index), count(f.task_index)
        FROM (SELECT * FROM tasks WHERE dataset = $d) AS t
        LEFT JOIN (SELECT task_index, episode_index FROM frames WHERE dataset = $d) AS f USING (task_index)
        GROUP BY t.task_index, t.task ORDER BY 4 DESC, 1
        """,
        {"d": dataset},
    ).fetchall()
    return [TaskCount(int(i), str(task), int(episodes), int(frames)) for i, task, episodes, frames in rows]


def quarantine_rows(con: duckdb.DuckDBPyConnection, dataset: str) -> QuarantineRows:
    """The quarantined episodes (``quarantine.parquet`` beside ``meta/``); none when the file is absent."""
    source = {"d": dataset}
    categories = con.execute(
        "SELECT category, count(*) FROM quarantine WHERE dataset = $d GROUP BY 1 ORDER BY 2 DESC, 1", source
    ).fetchall()
    rows = con.execute(
        "SELECT source_episode, category, file, reason FROM quarantine WHERE dataset = $d "
        f"LIMIT {QUARANTINE_ROWS_SHOWN}", source
    ).fetchall()
    total = sum(n for _, n in categories)
    return QuarantineRows(total, [(str(c), int(n)) for c, n in categories], [tuple(map(str, row)) for row in rows])


def _codebook_sha256(column: str, identity: dict) -> str:
    """Action tokens index their own checkpoint's codebook; pseudo-tokens the Act-VAE's the VD-VAE was built on."""
    return str(identity.get("checkpoint_sha256" if column == ACTION_TOKENS else "act_vae_sha256", ""))


def token_usage(corpus: Corpus, dataset: CorpusDataset, column: str) -> TokenUsage:
    """Counts ``[2·Nq, K]`` of each code in each slot of ``column`` (:func:`clap_data.stats.slot_usage`, every
    frame, padded chunks too); a slot counts at a frame only if its arm is active there (``arm_mask``), so a
    single-arm robot's empty slot does not swamp the histogram."""
    counts = np.asarray(slot_usage(corpus, column, dataset=dataset.name), dtype=np.int64)
    identity = dataset.meta.token_identity(column) or {}
    return TokenUsage(column, counts.shape[0] // 2, counts.shape[1], _codebook_sha256(column, identity), counts)


def sample_frames(con: duckdb.DuckDBPyConnection, dataset: str, n: int) -> list[tuple[int, int, int]]:
    """Up to ``n`` frames whose action chunk is not padded, as ``(hash, episode, frame)``: the frames with the
    smallest hash of their global index, a fixed pseudo-random pick that a streaming top-n finds, and that
    several datasets' picks merge into one by taking the smallest hashes again."""
    padded = sql_identifier(PADDED_COLUMN_OF[ACTION_TOKENS])
    rows = con.execute(
        f"""
        SELECT hash("index", 'clap-report') AS h, episode_index, frame_index FROM frames
        WHERE dataset = $d AND NOT {padded} ORDER BY h LIMIT {int(n)}
        """,
        {"d": dataset},
    ).fetchall()
    return [(int(h), int(e), int(f)) for h, e, f in rows]


def dataset_facts(corpus: Corpus, dataset: CorpusDataset) -> DatasetFacts:
    """Every number of one dataset's section; a file DuckDB cannot read is refused in one sentence."""
    con, name = corpus.connection, dataset.name
    try:
        return DatasetFacts(
            name=name,
            metadata=dataset.meta,
            frames=frame_count(con, name),
            episode_lengths=episode_lengths(con, name),
            tasks=task_counts(con, name),
            quarantine=quarantine_rows(con, name),
            usage={column: token_usage(corpus, dataset, column) for column in dataset.meta.token_columns},
        )
    except duckdb.Error as exc:
        raise ClapDataError(f"{dataset.meta.root} cannot be read for the report ({first_sentence(exc)})") from None
