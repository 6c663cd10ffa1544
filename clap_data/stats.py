"""SQL views over clap-data datasets and the statistics of their token columns, computed by DuckDB.

Why DuckDB, straight from parquet: a corpus is tens of millions of frames in many datasets; DuckDB scans
the ``data/`` files in parallel, streaming, so memory follows the number of distinct codes, never the
number of rows, and the same views serve ad-hoc questions (``clap-data sql``) and the fixed statistics
(``clap-data stats``). Views, each with a ``dataset`` column (the folder name, made unique):

* ``frames``: every row of ``data/chunk-*/file-*.parquet``, plus ``robot_type``; datasets whose columns
  differ (a human dataset has no ``action_tokens``, cameras differ) are unioned by name, the missing
  columns NULL;
* ``episodes`` (``meta/episodes``), ``tasks`` (``meta/tasks.parquet``), ``quarantine``
  (``quarantine.parquet``, empty with the same columns where a dataset has none) and ``datasets`` (one
  row per dataset: robot_type, root, fps, episodes, frames, token columns).

Token statistics, for each token column (``action_tokens``, ``pseudo_tokens``: ``2·Nq`` codes, the left
arm's then the right's), count only the slots of active arms (``arm_mask``) and are given per slot and
pooled over slots, for the whole corpus and per group (``robot_type``, ``task`` or ``dataset``). Chunk
transitions pair the codes of frame t with those of frame t + chunk (the next non-overlapping chunk) in
the same episode; an episode never spans data files, so they are counted one file at a time and memory
stays bounded by the largest file. Only the small count tables come back to Python.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from clap_data.actions import HUMAN
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.locking import dataset_lock
from clap_data.schemas import ACTION_TOKENS, ARM_MASK_COLUMN, ARM_MASK_NAMES, PADDED_COLUMN_OF, PSEUDO_TOKENS

VIEWS = ("frames", "episodes", "tasks", "quarantine", "datasets")
BY_KEYS = ("robot_type", "task", "dataset")
_COMPACT_ROWS = 4_000_000  # transition counts gathered file by file are re-aggregated past this many rows
_LN2 = math.log(2)


def sql_literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def first_sentence(error: duckdb.Error) -> str:
    """DuckDB's message without the query excerpt and caret it appends ("LINE 1: …")."""
    kept = []
    for line in str(error).splitlines():
        if line.startswith("LINE "):
            break
        kept.append(line.strip())
    return " ".join(filter(None, kept)).rstrip(".") or type(error).__name__


# --- the views ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusDataset:
    """One dataset of a corpus: the name its rows carry in the views, and its metadata."""

    name: str
    meta: DatasetMetadata

    def frames_select(self, files: list[Path] | None = None) -> str:
        """Its data rows (all files, or ``files``) with ``dataset`` and ``robot_type`` in front."""
        paths = files if files is not None else [self.meta.root / "data" / "chunk-*" / "file-*.parquet"]
        sources = "[" + ", ".join(sql_literal(str(p)) for p in paths) + "]"
        return (f"SELECT {sql_literal(self.name)} AS dataset, {sql_literal(self.meta.robot_type)} AS robot_type, * "
                f"FROM read_parquet({sources}, union_by_name = true)")


@dataclass
class Corpus:
    """A DuckDB connection holding the views over ``datasets``."""

    connection: duckdb.DuckDBPyConnection
    datasets: list[CorpusDataset]


def unique_names(roots: list[Path]) -> list[str]:
    """Folder names, with ``_2``, ``_3``… after repeats, so rows of two ``v3`` folders stay apart."""
    names: list[str] = []
    for root in roots:
        base, n = Path(root).name or "dataset", 1
        name = base
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def _union(selects: list[str]) -> str:
    return " UNION ALL BY NAME ".join(f"({select})" for select in selects)


def _view_statements(datasets: list[CorpusDataset]) -> dict[str, str]:
    def with_name(ds: CorpusDataset, path: Path) -> str:
        files = sql_literal(str(path))
        return f"SELECT {sql_literal(ds.name)} AS dataset, * FROM read_parquet({files}, union_by_name = true)"

    quarantined = [with_name(ds, ds.meta.root / layout.QUARANTINE_PATH) for ds in datasets
                   if (ds.meta.root / layout.QUARANTINE_PATH).is_file()]
    rows = ", ".join(
        f"({sql_literal(ds.name)}, {sql_literal(ds.meta.robot_type)}, {sql_literal(str(ds.meta.root))}, "
        f"{ds.meta.fps}, {ds.meta.total_episodes}, {ds.meta.total_frames}, "
        f"CAST([{', '.join(sql_literal(c) for c in ds.meta.token_columns)}] AS VARCHAR[]))"
        for ds in datasets
    )
    columns = "dataset, robot_type, root, fps, episodes, frames, token_columns"
    return {
        "frames": _union([ds.frames_select() for ds in datasets]),
        "episodes": _union([with_name(ds, ds.meta.root / "meta" / "episodes" / "chunk-*" / "file-*.parquet")
                            for ds in datasets]),
        "tasks": _union([with_name(ds, ds.meta.root / layout.TASKS_PATH) for ds in datasets]),
        "quarantine": _union(quarantined) if quarantined else _empty_quarantine(),
        "datasets": f"SELECT * FROM (VALUES {rows}) AS t({columns})",
    }


def _empty_quarantine() -> str:
    """The quarantine's columns (all strings) and no row, for a corpus where no dataset has one."""
    from clap_data.lerobot_v3.writer import QUARANTINE_SCHEMA  # imported here: the writer pulls in pandas and av

    names = ["dataset", *QUARANTINE_SCHEMA.names]
    return "SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {sql_identifier(n)}" for n in names) + " WHERE false"


def _load(roots: list[Path]) -> list[CorpusDataset]:
    if not roots:
        raise ClapDataError("give at least one dataset")
    for root in roots:
        if not Path(root).is_dir():
            raise ClapDataError(f"{root} does not exist" if not Path(root).exists() else f"{root} is not a folder")
    metas = [DatasetMetadata.load(Path(root)) for root in roots]
    seen: dict[Path, Path] = {}
    for root, meta in zip(roots, metas, strict=True):
        resolved = meta.root.resolve()
        if resolved in seen:
            raise ClapDataError(f"{root} is given twice (also as {seen[resolved]}): its rows would count twice")
        seen[resolved] = Path(root)
        if not meta.data_files():
            raise ClapDataError(f"{root} has no data files (data/chunk-*/file-*.parquet)")
    return [CorpusDataset(name, meta) for name, meta in zip(unique_names([m.root for m in metas]), metas, strict=True)]


@contextmanager
def open_corpus(
    roots: list[Path], *, purpose: str, database: str = ":memory:", threads: int | None = None,
    memory_limit: str | None = None,
) -> Iterator[Corpus]:
    """The views over ``roots`` in a DuckDB ``database`` (in memory, or a file that keeps them), each
    dataset's lock held shared for the block so that no writer changes a dataset while it is read."""
    _load(roots)  # what is not a dataset is refused before a lock file is made beside it
    with ExitStack() as stack:
        for root in roots:
            stack.enter_context(dataset_lock(Path(root), exclusive=False, purpose=purpose))
        datasets = _load(roots)  # again, now that no writer can change them
        spill = tempfile.mkdtemp(prefix="clap-duckdb-")  # DuckDB would spill into ./.tmp otherwise
        stack.callback(shutil.rmtree, spill, True)
        try:
            connection = duckdb.connect(database)
        except duckdb.Error as exc:
            raise ClapDataError(f"{database} cannot be opened as a DuckDB database ({first_sentence(exc)})") from None
        stack.callback(connection.close)
        connection.execute(f"SET temp_directory = {sql_literal(spill)}")
        connection.execute("SET preserve_insertion_order = false")  # lets scans stream into aggregates
        connection.execute("SET enable_progress_bar = false")  # it would print into the results on stdout
        if threads:
            connection.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            connection.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
        for view, select in _view_statements(datasets).items():
            try:
                connection.execute(f"CREATE OR REPLACE VIEW {view} AS {select}")
            except duckdb.Error as exc:
                raise ClapDataError(f"the {view} view cannot be made: {first_sentence(exc)}") from None
        yield Corpus(connection, datasets)


# --- what the statistics are ----------------------------------------------------------------------


@dataclass
class CodeUsage:
    """One code distribution: a slot's, or every active slot's pooled. ``counts[c]`` = uses of code c."""

    occurrences: int
    used_codes: int
    dead_codes: list[int]
    entropy_nats: float
    entropy_bits: float
    perplexity: float  # exp(entropy): K for uniform use of K codes, 0 when nothing was counted
    top_codes: list[dict[str, float]]  # {"code", "count", "share"}, most used first
    counts: list[int]


@dataclass
class Transitions:
    """Codes of frame t against those of frame t + chunk in the same episode, in one slot; for all slots
    together, pairs and distinct summed over slots and the shares and entropies weighted by pairs."""

    pairs: int
    stay_share: float  # the code did not change
    distinct: int  # distinct (code at t, code at t + chunk) pairs
    entropy_bits: float  # H(code at t + chunk | code at t)


@dataclass
class SlotStats:
    slot: int  # position in the column: 0..Nq-1 left arm, Nq..2Nq-1 right arm
    arm: str
    index: int  # position within the arm
    usage: CodeUsage
    transitions: Transitions | None


@dataclass
class GroupStats:
    group: str | None  # None: the whole corpus
    frames: int  # rows carrying the column
    padded_frames: int
    padded_share: float
    valid_share: float
    usage: CodeUsage  # every active slot pooled
    transitions: Transitions | None
    slots: list[SlotStats]


@dataclass
class ColumnStats:
    column: str
    num_queries: int
    codebook_size: int
    datasets: list[str]
    checkpoints: list[str]
    overall: GroupStats
    groups: list[GroupStats]


@dataclass
class DivergenceRow:
    slot: int | None  # None: every slot pooled
    arm: str | None
    js_bits: float | None  # Jensen–Shannon divergence, base 2, in [0, 1]; None when a side has no codes there
    human_only_occurrence_share: float | None  # of human code uses, those of codes no robot uses
    human_only_distinct_share: float | None  # of distinct human codes, those no robot uses


@dataclass
class Divergence:
    """Human pseudo-tokens (robot_type "human") against robot action tokens, per slot."""

    human_column: str
    robot_column: str
    overall: DivergenceRow
    slots: list[DivergenceRow]


@dataclass
class TokenStats:
    by: str
    valid_only: bool
    datasets: list[dict[str, Any]]
    columns: list[ColumnStats]
    divergence: Divergence | None
    notices: list[str] = field(default_factory=list)


# --- computing them -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    """A token column across the datasets that have it; they must agree on Nq and K."""

    name: str
    num_queries: int
    codebook_size: int
    members: list[tuple[CorpusDataset, int]]  # dataset, chunk (frames between successive chunks)
    identities: dict[str, dict[str, Any]]  # dataset name → the tokenizer's identity

    @property
    def slots(self) -> int:
        return 2 * self.num_queries


def _columns(datasets: list[CorpusDataset], notices: list[str]) -> list[_Column]:
    found = []
    for column in (ACTION_TOKENS, PSEUDO_TOKENS):
        members, identities, shapes = [], {}, {}
        for ds in datasets:
            identity = ds.meta.token_identity(column) if column in ds.meta.token_columns else None
            if identity is None:
                continue
            try:
                shape = (int(identity["num_queries"]), int(identity["codebook_size"]))
                chunk = int(identity.get("chunk_size", identity.get("gap")))
            except (KeyError, TypeError, ValueError):
                raise ClapDataError(f"{ds.meta.root}: the info of {column} in meta/info.json lacks num_queries, "
                                    "codebook_size or its chunk size") from None
            shapes[ds.name] = shape
            members.append((ds, chunk))
            identities[ds.name] = identity
        if not members:
            continue
        if len(set(shapes.values())) > 1:
            described = ", ".join(f"{name} (Nq {nq}, K {k})" for name, (nq, k) in shapes.items())
            raise ClapDataError(f"{column} comes from tokenizers of different shapes: {described}; "
                                "give those datasets to separate runs")
        checkpoints = {str(i.get("checkpoint_sha256")) for i in identities.values()}
        if len(checkpoints) > 1:
            notices.append(f"{column} comes from {len(checkpoints)} different checkpoints: "
                           "the codes of different checkpoints are pooled as if they were one vocabulary")
        nq, k = next(iter(shapes.values()))
        found.append(_Column(column, nq, k, members, identities))
    return found


def _grouping(by: str) -> tuple[str, str]:
    """The SQL expression of a row's group and the join it needs (rows are ``f``)."""
    if by == "task":
        return ("coalesce(t.task, 'task_index ' || f.task_index)",
                "LEFT JOIN tasks t ON t.dataset = f.dataset AND t.task_index = f.task_index")
    return f"f.{by}", ""  # robot_type or dataset


def _active_slots(num_queries: int, left: str, right: str, *lists: str) -> list[str]:
    """``slots`` and then each of ``lists`` cut to the active arms' part (the arms' flags ``left``, ``right``),
    ready to unnest (filtering the unnested slots instead costs about 1.6× the CPU)."""
    nq = num_queries

    def case(whole: str, left_part: str, right_part: str) -> str:
        return (f"CASE WHEN {left} AND {right} THEN {whole} WHEN {right} THEN {right_part} "
                f"WHEN {left} THEN {left_part} ELSE [] END")

    return [case(f"range({2 * nq})", f"range({nq})", f"range({nq}, {2 * nq})"),
            *(case(x, f"{x}[1:{nq}]", f"{x}[{nq + 1}:{2 * nq}]") for x in lists)]


def _count_usage(con: duckdb.DuckDBPyConnection, col: _Column, by: str, valid_only: bool, table: str) -> None:
    """One scan: uses of each code per (robot_type, group, slot), active arms only."""
    group, join = _grouping(by)
    tokens, padded = sql_identifier(col.name), sql_identifier(PADDED_COLUMN_OF[col.name])
    mask = sql_identifier(ARM_MASK_COLUMN)
    keep = f"f.{tokens} IS NOT NULL" + (f" AND NOT f.{padded}" if valid_only else "")
    slots, codes = _active_slots(col.num_queries, "l", "r", "tok")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT robot_type, grp, slot, code, count(*) AS n FROM (
            SELECT robot_type, grp, unnest({slots}) AS slot, unnest({codes}) AS code FROM (
                SELECT f.robot_type, {group} AS grp, f.{mask}[1] > 0.5 AS l, f.{mask}[2] > 0.5 AS r,
                       f.{tokens} AS tok
                FROM frames f {join} WHERE {keep}))
        GROUP BY ALL""")


def _frame_counts(con: duckdb.DuckDBPyConnection, col: _Column, by: str) -> dict[str | None, tuple[int, int]]:
    group, join = _grouping(by)
    tokens, padded = sql_identifier(col.name), sql_identifier(PADDED_COLUMN_OF[col.name])
    rows = con.execute(f"""
        SELECT grp, count(*), count(*) FILTER (WHERE padded) FROM (
            SELECT {group} AS grp, f.{padded} AS padded FROM frames f {join} WHERE f.{tokens} IS NOT NULL)
        GROUP BY GROUPING SETS ((grp), ())""").fetchall()
    return {grp: (int(frames), int(padded)) for grp, frames, padded in rows}


def _usage_stats(con: duckdb.DuckDBPyConnection, table: str, k: int, top: int) -> dict[tuple, CodeUsage]:
    """(group or None, slot or None) → its distribution: None is the whole corpus, or every slot pooled."""
    rows = con.execute(f"""
        WITH d AS (SELECT grp, slot, code, sum(n) AS n FROM {table}
                   GROUP BY GROUPING SETS ((grp, slot, code), (grp, code), (slot, code), (code))),
        dense AS (SELECT grp, slot, code, sum(n)::DOUBLE AS n FROM (
                      SELECT grp, slot, code, n FROM d
                      UNION ALL
                      SELECT grp, slot, range AS code, 0 AS n FROM (SELECT DISTINCT grp, slot FROM d), range({k}))
                  GROUP BY ALL)
        SELECT grp, slot, sum(n)::BIGINT, count(*) FILTER (WHERE n > 0),
               ln(sum(n)) - sum(n * ln(n)) FILTER (WHERE n > 0) / sum(n),
               list(n::BIGINT ORDER BY code) FILTER (WHERE code >= 0 AND code < {k}),
               coalesce(list(code ORDER BY code) FILTER (WHERE n = 0), []),
               (list({{'code': code, 'count': n::BIGINT}} ORDER BY n DESC, code) FILTER (WHERE n > 0))[1:{top}],
               coalesce(sum(n) FILTER (WHERE code < 0 OR code >= {k}), 0)::BIGINT
        FROM dense GROUP BY grp, slot""").fetchall()
    usage = {}
    for grp, slot, total, used, nats, counts, dead, top_codes, outside in rows:
        if outside:
            raise ClapDataError(f"{outside:,} codes lie outside the codebook [0, {k}): the column is not what its "
                                "metadata says; re-tokenize the dataset")
        usage[grp, slot] = CodeUsage(
            occurrences=total, used_codes=used, dead_codes=dead, entropy_nats=max(nats, 0.0),
            entropy_bits=max(nats, 0.0) / _LN2, perplexity=math.exp(max(nats, 0.0)), counts=counts,
            top_codes=[{"code": t["code"], "count": t["count"], "share": t["count"] / total} for t in top_codes or []],
        )
    return usage


def _empty_usage(k: int) -> CodeUsage:
    return CodeUsage(0, 0, list(range(k)), 0.0, 0.0, 0.0, [], [0] * k)


def _count_transitions(con: duckdb.DuckDBPyConnection, col: _Column, by: str, valid_only: bool, table: str) -> None:
    """(group, slot, code at t, code at t + chunk) → pairs, one data file at a time (episodes never span files,
    so the self-join holds one file), gathered in ``table`` and re-aggregated whenever it grows large."""
    group, join = _grouping(by)
    tokens, padded = sql_identifier(col.name), sql_identifier(PADDED_COLUMN_OF[col.name])
    mask = sql_identifier(ARM_MASK_COLUMN)
    keep = f"f.{tokens} IS NOT NULL" + (f" AND NOT f.{padded}" if valid_only else "")
    slots, a, b = _active_slots(col.num_queries, "l", "r", "a_tok", "b_tok")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} (grp VARCHAR, slot BIGINT, a SMALLINT, b SMALLINT, n BIGINT)")
    pending = 0
    for ds, chunk in col.members:
        for relative in ds.meta.data_files():
            source = ds.frames_select([ds.meta.root / relative])
            pending += con.execute(f"""
                INSERT INTO {table}
                WITH src AS (SELECT {group} AS grp, f.episode_index, f.frame_index, f.{mask}[1] > 0.5 AS l,
                                    f.{mask}[2] > 0.5 AS r, f.{tokens} AS tok
                             FROM ({source}) f {join} WHERE {keep})
                SELECT grp, slot, a, b, count(*) FROM (
                    SELECT grp, unnest({slots}) AS slot, unnest({a}) AS a, unnest({b}) AS b FROM (
                        SELECT x.grp, x.l AND y.l AS l, x.r AND y.r AS r, x.tok AS a_tok, y.tok AS b_tok
                        FROM src x JOIN src y
                        ON y.episode_index = x.episode_index AND y.frame_index = x.frame_index + {chunk}))
                GROUP BY ALL""").fetchone()[0]
            if pending > _COMPACT_ROWS:
                con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS "
                            f"SELECT grp, slot, a, b, sum(n)::BIGINT AS n FROM {table} GROUP BY ALL")
                pending = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _transition_stats(con: duckdb.DuckDBPyConnection, table: str) -> dict[tuple, Transitions]:
    """Per (group or None, slot): H(b | a) = (Σ_a n_a ln n_a − Σ_ab n_ab ln n_ab) / N, in bits. Per group, slot
    None: the slots together (pairs and distinct pairs summed, stay share and entropy weighted by pairs)."""
    rows = con.execute(f"""
        WITH lv AS (SELECT grp, slot, a, b, sum(n)::DOUBLE AS n FROM {table}
                    GROUP BY GROUPING SETS ((grp, slot, a, b), (slot, a, b))),
        starts AS (SELECT grp, slot, sum(na * ln(na)) AS s FROM (SELECT grp, slot, a, sum(n) AS na FROM lv GROUP BY ALL)
                   GROUP BY ALL),
        pairs AS (SELECT grp, slot, sum(n) AS pairs, coalesce(sum(n) FILTER (WHERE a = b), 0) AS stay,
                         count(*) AS n_distinct, sum(n * ln(n)) AS s FROM lv GROUP BY ALL),
        slots AS (SELECT p.grp, p.slot, p.pairs, p.stay, p.n_distinct, (st.s - p.s) / p.pairs / ln(2) AS bits
                  FROM pairs p JOIN starts st ON p.grp IS NOT DISTINCT FROM st.grp AND p.slot = st.slot)
        SELECT grp, slot, pairs::BIGINT, stay / pairs, n_distinct, bits FROM slots
        UNION ALL
        SELECT grp, NULL, sum(pairs)::BIGINT, sum(stay) / sum(pairs), sum(n_distinct), sum(bits * pairs) / sum(pairs)
        FROM slots GROUP BY grp""").fetchall()
    return {(grp, slot): Transitions(pairs, stay, distinct, max(bits, 0.0))
            for grp, slot, pairs, stay, distinct, bits in rows}


def _divergence(con: duckdb.DuckDBPyConnection, human_table: str, robot_table: str, num_queries: int) -> Divergence:
    rows = con.execute(f"""
        WITH h AS (SELECT slot, code, sum(n)::DOUBLE AS n FROM {human_table} WHERE robot_type = {sql_literal(HUMAN)}
                   GROUP BY GROUPING SETS ((slot, code), (code))),
        r AS (SELECT slot, code, sum(n)::DOUBLE AS n FROM {robot_table} WHERE robot_type <> {sql_literal(HUMAN)}
              GROUP BY GROUPING SETS ((slot, code), (code))),
        p AS (SELECT slot, code, n / sum(n) OVER (PARTITION BY slot) AS p FROM h),
        q AS (SELECT slot, code, n / sum(n) OVER (PARTITION BY slot) AS q FROM r),
        j AS (SELECT coalesce(p.slot, q.slot) AS slot, coalesce(p.p, 0) AS p, coalesce(q.q, 0) AS q
              FROM p FULL JOIN q ON p.slot IS NOT DISTINCT FROM q.slot AND p.code = q.code)
        SELECT slot,
               (coalesce(sum(p * ln(2 * p / (p + q))) FILTER (WHERE p > 0), 0)
                + coalesce(sum(q * ln(2 * q / (p + q))) FILTER (WHERE q > 0), 0)) / 2 / ln(2),
               coalesce(sum(p) FILTER (WHERE q = 0), 0),
               count(*) FILTER (WHERE p > 0 AND q = 0) / count(*) FILTER (WHERE p > 0)
        FROM j GROUP BY slot
        HAVING count(*) FILTER (WHERE p > 0) > 0 AND count(*) FILTER (WHERE q > 0) > 0""").fetchall()
    found = {slot: (max(js, 0.0), occurrence, distinct) for slot, js, occurrence, distinct in rows}

    def row(slot: int | None) -> DivergenceRow:
        arm = None if slot is None else ARM_MASK_NAMES[slot // num_queries]
        return DivergenceRow(slot, arm, *found.get(slot, (None, None, None)))

    return Divergence(PSEUDO_TOKENS, ACTION_TOKENS, row(None), [row(s) for s in range(2 * num_queries)])


def _group(grp: str | None, col: _Column, frames: tuple[int, int], usage: dict, transitions: dict) -> GroupStats:
    total, padded = frames
    k, nq = col.codebook_size, col.num_queries
    slots = [SlotStats(s, ARM_MASK_NAMES[s // nq], s % nq, usage.get((grp, s)) or _empty_usage(k),
                       transitions.get((grp, s))) for s in range(col.slots)]
    return GroupStats(grp, total, padded, padded / total if total else 0.0, 1 - padded / total if total else 0.0,
                      usage.get((grp, None)) or _empty_usage(k), transitions.get((grp, None)), slots)


def token_stats(corpus: Corpus, *, by: str = "robot_type", top: int = 5, valid_only: bool = False) -> TokenStats:
    """Usage, entropy, dead codes and chunk transitions of every token column, for the corpus and per
    ``by`` group; the human/robot divergence when both human pseudo-tokens and robot action tokens exist.
    ``valid_only`` leaves out frames whose chunk (or frame pair) ran past the episode end."""
    if by not in BY_KEYS:
        raise ClapDataError(f"cannot group by {by!r}: choose one of {', '.join(BY_KEYS)}")
    if top < 1:
        raise ClapDataError(f"--top must be at least 1, not {top}")
    con, notices = corpus.connection, []
    columns, found = [], {}
    for i, col in enumerate(_columns(corpus.datasets, notices)):
        found[col.name] = (col, f"clap_usage_{i}")
        _count_usage(con, col, by, valid_only, f"clap_usage_{i}")
        _count_transitions(con, col, by, valid_only, f"clap_transitions_{i}")
        usage = _usage_stats(con, f"clap_usage_{i}", col.codebook_size, top)
        transitions = _transition_stats(con, f"clap_transitions_{i}")
        frames = _frame_counts(con, col, by)
        groups = [_group(g, col, frames[g], usage, transitions) for g in sorted(g for g in frames if g is not None)]
        overall = _group(None, col, frames.get(None, (0, 0)), usage, transitions)
        checkpoints = sorted({str(identity.get("checkpoint_sha256")) for identity in col.identities.values()})
        columns.append(ColumnStats(col.name, col.num_queries, col.codebook_size, [ds.name for ds, _ in col.members],
                                   checkpoints, overall, groups))
    datasets = [{"dataset": ds.name, "root": str(ds.meta.root), "robot_type": ds.meta.robot_type,
                 "frames": ds.meta.total_frames, "token_columns": ds.meta.token_columns} for ds in corpus.datasets]
    return TokenStats(by, valid_only, datasets, columns, _human_robot(con, found, notices), notices)


def _human_robot(
    con: duckdb.DuckDBPyConnection, found: dict[str, tuple[_Column, str]], notices: list[str],
) -> Divergence | None:
    """The divergence, when there are human pseudo-tokens and robot action tokens in one vocabulary."""
    pseudo, action = found.get(PSEUDO_TOKENS), found.get(ACTION_TOKENS)
    human = pseudo is not None and any(ds.meta.robot_type == HUMAN for ds, _ in pseudo[0].members)
    robot = action is not None and any(ds.meta.robot_type != HUMAN for ds, _ in action[0].members)
    if not (human and robot):
        return None
    (pseudo_col, pseudo_table), (action_col, action_table) = pseudo, action
    if (action_col.num_queries, action_col.codebook_size) != (pseudo_col.num_queries, pseudo_col.codebook_size):
        notices.append("no human/robot divergence: pseudo_tokens and action_tokens differ in Nq or K")
        return None
    _note_vocabularies(action_col, pseudo_col, notices)
    return _divergence(con, pseudo_table, action_table, action_col.num_queries)


def slot_usage(corpus: Corpus, column: str = ACTION_TOKENS, *, valid_only: bool = False) -> list[list[int]]:
    """``counts[slot][code]`` of ``column`` over the whole corpus, active arms only: the scan at the heart of
    :func:`token_stats` on its own (the benchmark times it against ``np.bincount``)."""
    col = next((c for c in _columns(corpus.datasets, []) if c.name == column), None)
    if col is None:
        raise ClapDataError(f"no dataset of the corpus has a {column} column")
    _count_usage(corpus.connection, col, "dataset", valid_only, "clap_slot_usage")
    counts = [[0] * col.codebook_size for _ in range(col.slots)]
    rows = corpus.connection.execute("SELECT slot, code, sum(n)::BIGINT FROM clap_slot_usage GROUP BY ALL").fetchall()
    for slot, code, n in rows:
        if not 0 <= code < col.codebook_size:
            raise ClapDataError(f"code {code} of {column} lies outside the codebook [0, {col.codebook_size})")
        counts[slot][code] = n
    return counts


def _note_vocabularies(action: _Column, pseudo: _Column, notices: list[str]) -> None:
    """Pseudo-tokens share the action tokens' vocabulary only when the VD-VAE was built on that Act-VAE."""
    act_vae = {str(i.get("checkpoint_sha256")) for i in action.identities.values()}
    codebooks = {str(i.get("act_vae_sha256")) for i in pseudo.identities.values()}
    if not codebooks <= act_vae:
        notices.append("the pseudo-tokens were made on the codebook of another Act-VAE than the action tokens: "
                       "the divergence compares two vocabularies")
