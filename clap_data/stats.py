"""The statistics of a corpus's token columns (:mod:`clap_data.corpus`), computed by DuckDB on its views.

For each token column (``action_tokens``, ``pseudo_tokens``: ``2·Nq`` codes, the left arm's then the right's),
they count only the slots of active arms (``arm_mask``) and are given per slot and pooled over slots, for the
whole corpus and per group (``robot_type``, ``task`` or ``dataset``). Memory follows the number of distinct
codes, never the number of rows. Chunk transitions pair the codes of frame t with those of frame t + chunk
(the next non-overlapping chunk) in the same episode; an episode never spans data files, so they are counted
one file at a time and memory stays bounded by the largest file. Only the small count tables come back to
Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import duckdb

from clap_data.actions import HUMAN
from clap_data.corpus import Corpus, CorpusDataset, sql_identifier, sql_literal
from clap_data.errors import ClapDataError
from clap_data.schemas import ACTION_TOKENS, ARM_MASK_COLUMN, ARM_MASK_NAMES, PADDED_COLUMN_OF, PSEUDO_TOKENS

BY_KEYS = ("robot_type", "task", "dataset")
_COMPACT_ROWS = 4_000_000  # transition counts gathered file by file are re-aggregated past this many rows
_LN2 = math.log(2)


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


def _active_slots(num_queries: int, left: str, right: str, skip: str, *lists: str) -> list[str]:
    """``slots`` and then each of ``lists`` cut to the active arms' part (the arms' flags ``left``, ``right``;
    nothing where ``skip`` holds), ready to unnest. Filtering inside the ``CASE`` costs nothing, where a ``WHERE``
    on the rows costs ~20 % and filtering the unnested slots ~60 % more CPU."""
    nq = num_queries

    def case(whole: str, left_part: str, right_part: str) -> str:
        return (f"CASE WHEN {skip} THEN [] WHEN {left} AND {right} THEN {whole} WHEN {right} THEN {right_part} "
                f"WHEN {left} THEN {left_part} ELSE [] END")

    return [case(f"range({2 * nq})", f"range({nq})", f"range({nq}, {2 * nq})"),
            *(case(x, f"{x}[1:{nq}]", f"{x}[{nq + 1}:{2 * nq}]") for x in lists)]


def _integer_group(ds: CorpusDataset, by: str) -> tuple[str, str, str]:
    """How the scans of ``ds`` group on integers only (string keys in a hash aggregate cost ~60 % more CPU): the
    key selected from its rows ``f``, the group's name computed from the aggregated rows ``c``, and the join that
    name needs. Within one dataset the robot type and the dataset name are constants; tasks are their index."""
    if by == "task":
        return ("f.task_index", "coalesce(t.task, 'task_index ' || c.key)",
                f"LEFT JOIN tasks t ON t.dataset = {sql_literal(ds.name)} AND t.task_index = c.key")
    return "NULL::BIGINT", sql_literal(ds.name if by == "dataset" else ds.meta.robot_type), ""


def _count_usage(
    con: duckdb.DuckDBPyConnection, col: _Column, by: str, valid_only: bool, table: str,
    members: list[CorpusDataset] | None = None,
) -> None:
    """Uses of each code per (robot_type, group, slot), active arms only, into ``table``: one scan per dataset of
    the column (or of ``members``), grouped on integers only — the dataset's robot type, name or task names are
    joined to the counts afterwards (string keys in the hash aggregate cost ~60 % more CPU)."""
    tokens, padded = sql_identifier(col.name), sql_identifier(PADDED_COLUMN_OF[col.name])
    mask = sql_identifier(ARM_MASK_COLUMN)
    skip = "tok IS NULL" + (" OR padded" if valid_only else "")
    slots, codes = _active_slots(col.num_queries, "l", "r", skip, "tok")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} (robot_type VARCHAR, grp VARCHAR, slot BIGINT, code BIGINT, "
                "n BIGINT)")
    for ds in members if members is not None else [ds for ds, _ in col.members]:
        key, grp, join = _integer_group(ds, by)
        con.execute(f"""
            INSERT INTO {table}
            SELECT {sql_literal(ds.meta.robot_type)}, {grp}, c.slot, c.code, c.n FROM (
                SELECT key, slot, code, count(*) AS n FROM (
                    SELECT key, unnest({slots}) AS slot, unnest({codes}) AS code FROM (
                        SELECT {key} AS key, f.{mask}[1] > 0.5 AS l, f.{mask}[2] > 0.5 AS r, f.{tokens} AS tok,
                               f.{padded} AS padded
                        FROM ({ds.frames_select()}) f))
                GROUP BY ALL) c {join}""")


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
    tokens, padded = sql_identifier(col.name), sql_identifier(PADDED_COLUMN_OF[col.name])
    mask = sql_identifier(ARM_MASK_COLUMN)
    keep = f"f.{tokens} IS NOT NULL" + (f" AND NOT f.{padded}" if valid_only else "")
    slots, a, b = _active_slots(col.num_queries, "l", "r", "false", "a_tok", "b_tok")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} (grp VARCHAR, slot BIGINT, a SMALLINT, b SMALLINT, n BIGINT)")
    pending = 0
    for ds, chunk in col.members:
        key, grp, join = _integer_group(ds, by)
        for relative in ds.data_files:
            source = ds.frames_select([relative])
            pending += con.execute(f"""
                INSERT INTO {table}
                WITH src AS (SELECT {key} AS key, f.episode_index, f.frame_index, f.{mask}[1] > 0.5 AS l,
                                    f.{mask}[2] > 0.5 AS r, f.{tokens} AS tok
                             FROM ({source}) f WHERE {keep})
                SELECT {grp}, c.slot, c.a, c.b, c.n FROM (
                    SELECT key, slot, a, b, count(*) AS n FROM (
                        SELECT key, unnest({slots}) AS slot, unnest({a}) AS a, unnest({b}) AS b FROM (
                            SELECT x.key, x.l AND y.l AS l, x.r AND y.r AS r, x.tok AS a_tok, y.tok AS b_tok
                            FROM src x JOIN src y
                            ON y.episode_index = x.episode_index AND y.frame_index = x.frame_index + {chunk}))
                    GROUP BY ALL) c {join}""").fetchone()[0]
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
    datasets = [{"dataset": ds.name, "root": ds.location, "robot_type": ds.meta.robot_type,
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


def slot_usage(
    corpus: Corpus, column: str = ACTION_TOKENS, *, valid_only: bool = False, dataset: str | None = None,
) -> list[list[int]]:
    """``counts[slot][code]`` of ``column``, active arms only, over the whole corpus or over its ``dataset`` (the
    name its rows carry in the views): the scan at the heart of :func:`token_stats` on its own. The benchmark
    times it against ``np.bincount``; the report counts one dataset at a time, so that datasets tokenized with
    different Nq or K can be shown side by side."""
    members = corpus.datasets if dataset is None else [ds for ds in corpus.datasets if ds.name == dataset]
    if not members:
        raise ClapDataError(f"the corpus has no dataset named {dataset!r}")
    col = next((c for c in _columns(members, []) if c.name == column), None)
    if col is None:
        raise ClapDataError(f"no dataset of the corpus has a {column} column" if dataset is None
                            else f"{members[0].meta.root} has no {column} column")
    where = "" if dataset is None else f"{members[0].meta.root}: "
    _count_usage(corpus.connection, col, "dataset", valid_only, "clap_slot_usage",
                 None if dataset is None else members)
    counts = [[0] * col.codebook_size for _ in range(col.slots)]
    rows = corpus.connection.execute("SELECT slot, code, sum(n)::BIGINT FROM clap_slot_usage GROUP BY ALL").fetchall()
    for slot, code, n in rows:
        if not 0 <= code < col.codebook_size:
            raise ClapDataError(f"{where}code {code} of {column} lies outside the codebook [0, {col.codebook_size})")
        counts[slot][code] = n
    return counts


def _note_vocabularies(action: _Column, pseudo: _Column, notices: list[str]) -> None:
    """Pseudo-tokens share the action tokens' vocabulary only when the VD-VAE was built on that Act-VAE."""
    act_vae = {str(i.get("checkpoint_sha256")) for i in action.identities.values()}
    codebooks = {str(i.get("act_vae_sha256")) for i in pseudo.identities.values()}
    if not codebooks <= act_vae:
        notices.append("the pseudo-tokens were made on the codebook of another Act-VAE than the action tokens: "
                       "the divergence compares two vocabularies")
