"""The DuckDB views of clap_data.corpus and the token statistics of clap_data.stats, against figures computed
independently from the parquet files with pyarrow, numpy and scipy, and on hand-made tokens whose statistics are
known."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import jensenshannon

from clap_data.corpus import open_corpus, unique_names
from clap_data.errors import ClapDataError
from clap_data.locking import dataset_lock
from clap_data.stats import slot_usage, token_stats

K, NQ, CHUNK = 16, 4, 32  # the tiny Act-VAE of the corpus fixture: 4 codes per arm, codebook of 16, chunks of 32


@dataclass
class Rows:
    """One token column of a set of datasets, as plain arrays."""

    tokens: np.ndarray  # [N, 2·Nq]
    active: np.ndarray  # [N, 2] arm mask
    padded: np.ndarray  # [N]
    key: list[tuple[str, int, int]]  # (dataset, episode, frame)
    robot_type: np.ndarray  # [N]
    task: np.ndarray  # [N]


def read_rows(roots: list[Path], column: str) -> Rows:
    parts = []
    for root in roots:
        table = pq.ParquetDataset(root / "data").read()
        if column not in table.column_names:
            continue
        info = json.loads((root / "meta/info.json").read_text())
        tasks = dict(zip(*pq.read_table(root / "meta/tasks.parquet").to_pydict().values(), strict=True))
        n = table.num_rows
        parts.append(Rows(
            np.array(table.column(column).to_pylist()), np.array(table.column("arm_mask").to_pylist()) > 0.5,
            np.array(table.column(f"{column}_padded").to_pylist()),
            list(zip([root.name] * n, table.column("episode_index").to_pylist(),
                     table.column("frame_index").to_pylist(), strict=True)),
            np.array([info["robot_type"]] * n), np.array([tasks[i] for i in table.column("task_index").to_pylist()]),
        ))
    return Rows(*(np.concatenate([getattr(p, f) for p in parts]) if f != "key" else sum((p.key for p in parts), [])
                  for f in Rows.__dataclass_fields__))


def counts_of(rows: Rows, keep: np.ndarray | None = None) -> np.ndarray:
    """[slot, code] uses over the active arms' slots."""
    keep = np.ones(len(rows.tokens), bool) if keep is None else keep
    return np.stack([np.bincount(rows.tokens[keep & rows.active[:, s // NQ], s], minlength=K) for s in range(2 * NQ)])


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def transitions_of(rows: Rows) -> list[tuple[int, float, int, float]]:
    """Per slot: pairs, same-code share, distinct pairs, H(next | code) in bits, from a dict of frames."""
    at = {key: i for i, key in enumerate(rows.key)}
    starts = [(i, at[(d, e, f + CHUNK)]) for i, (d, e, f) in enumerate(rows.key) if (d, e, f + CHUNK) in at]
    result = []
    for s in range(2 * NQ):
        pairs = [(rows.tokens[i, s], rows.tokens[j, s]) for i, j in starts
                 if rows.active[i, s // NQ] and rows.active[j, s // NQ]]
        joint = np.array(list(_count(pairs).values()))
        first = np.array(list(_count([a for a, _ in pairs]).values()))
        stay = sum(a == b for a, b in pairs) / len(pairs)
        result.append((len(pairs), stay, len(joint), (entropy(joint) - entropy(first)) / math.log(2)))
    return result


def _count(items: list) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


@pytest.fixture(scope="module")
def roots(tokenized_corpus) -> list[Path]:
    return [tokenized_corpus.robot, tokenized_corpus.human]


@pytest.fixture(scope="module")
def stats(roots):
    with open_corpus(roots, purpose="test") as corpus:
        return token_stats(corpus, top=3)


def test_views_hold_every_row_with_its_dataset(roots):
    with open_corpus(roots, purpose="test") as corpus:
        sql = corpus.connection.execute
        frames = dict(sql("SELECT dataset, count(*) FROM frames GROUP BY dataset").fetchall())
        assert frames == {root.name: pq.ParquetDataset(root / "data").read().num_rows for root in roots}
        assert sql("SELECT DISTINCT dataset, robot_type FROM frames ORDER BY 1").fetchall() == [
            ("astribot", "S1-stationary"), ("ego4d", "human")]
        # the human dataset has no action_tokens: unioned by name, its rows hold NULL
        assert sql("SELECT count(action_tokens) FROM frames WHERE dataset = 'ego4d'").fetchone() == (0,)
        for view, path in (("episodes", "meta/episodes"), ("tasks", "meta/tasks.parquet"),
                           ("quarantine", "quarantine.parquet")):
            counts = dict(sql(f"SELECT dataset, count(*) FROM {view} GROUP BY dataset").fetchall())
            assert {r.name: counts.get(r.name, 0) for r in roots} == {
                r.name: pq.ParquetDataset(r / path).read().num_rows for r in roots}, view
        assert sql("SELECT dataset, token_columns FROM datasets ORDER BY 1").fetchall() == [
            ("astribot", ["action_tokens", "pseudo_tokens"]), ("ego4d", ["pseudo_tokens"])]


@pytest.mark.parametrize("column", ["action_tokens", "pseudo_tokens"])
def test_usage_entropy_and_dead_codes_match_numpy(stats, roots, column):
    rows = read_rows(roots, column)
    got = next(c for c in stats.columns if c.column == column)
    assert (got.num_queries, got.codebook_size) == (NQ, K)
    groups = {None: np.ones(len(rows.tokens), bool), **{r: rows.robot_type == r for r in set(rows.robot_type)}}
    assert [g.group for g in got.groups] == sorted(r for r in groups if r)
    for group in [got.overall, *got.groups]:
        counts = counts_of(rows, groups[group.group])
        assert group.frames == groups[group.group].sum()
        for slot, expected in zip(group.slots, counts, strict=True):
            assert slot.usage.counts == expected.tolist()
            assert slot.usage.dead_codes == np.flatnonzero(expected == 0).tolist()
            assert slot.usage.entropy_nats == pytest.approx(entropy(expected))
            assert slot.usage.perplexity == pytest.approx(math.exp(entropy(expected)))
        pooled = counts.sum(axis=0)
        assert group.usage.counts == pooled.tolist() and group.usage.occurrences == pooled.sum()
        assert group.usage.used_codes == (pooled > 0).sum()
        assert group.usage.entropy_bits == pytest.approx(entropy(pooled) / math.log(2))
        top = sorted(range(K), key=lambda c: (-pooled[c], c))[:3]
        assert [t["code"] for t in group.usage.top_codes] == top
        assert group.usage.top_codes[0]["share"] == pytest.approx(pooled[top[0]] / pooled.sum())


def test_padded_share_and_valid_only(roots):
    rows = read_rows(roots, "pseudo_tokens")
    with open_corpus(roots, purpose="test") as corpus:
        valid = token_stats(corpus, valid_only=True)
        assert slot_usage(corpus, "pseudo_tokens", valid_only=True) == counts_of(rows, ~rows.padded).tolist()
    column = next(c for c in valid.columns if c.column == "pseudo_tokens")
    assert 0 < column.overall.padded_share < 1
    assert column.overall.padded_share == pytest.approx(rows.padded.mean())
    assert column.overall.valid_share == pytest.approx(1 - rows.padded.mean())
    assert column.overall.usage.counts == counts_of(rows, ~rows.padded).sum(axis=0).tolist()


@pytest.mark.parametrize("column", ["action_tokens", "pseudo_tokens"])
def test_chunk_transitions_match_numpy(stats, roots, column):
    expected = transitions_of(read_rows(roots, column))
    got = next(c for c in stats.columns if c.column == column).overall
    for slot, (pairs, stay, distinct, bits) in zip(got.slots, expected, strict=True):
        t = slot.transitions
        assert (t.pairs, t.distinct) == (pairs, distinct)
        assert t.stay_share == pytest.approx(stay) and t.entropy_bits == pytest.approx(bits, abs=1e-9)
    pairs = np.array([e[0] for e in expected])
    assert got.transitions.pairs == pairs.sum()
    assert got.transitions.stay_share == pytest.approx((pairs * [e[1] for e in expected]).sum() / pairs.sum())


def test_human_robot_divergence_matches_scipy(stats, roots):
    human = counts_of(read_rows(roots[1:], "pseudo_tokens"))
    robot = counts_of(read_rows(roots[:1], "action_tokens"))
    got = stats.divergence
    assert (got.human_column, got.robot_column) == ("pseudo_tokens", "action_tokens")
    for row, h, r in [(got.overall, human.sum(axis=0), robot.sum(axis=0)),
                      *zip(got.slots, human, robot, strict=True)]:
        assert row.js_bits == pytest.approx(jensenshannon(h / h.sum(), r / r.sum(), base=2) ** 2, abs=1e-9)
        assert row.human_only_occurrence_share == pytest.approx(h[r == 0].sum() / h.sum())
        assert row.human_only_distinct_share == pytest.approx(((h > 0) & (r == 0)).sum() / (h > 0).sum())
    assert 0 < got.overall.js_bits < 1


@pytest.mark.parametrize("by", ["task", "dataset"])
def test_groups_by_task_and_dataset(roots, by):
    rows = read_rows(roots, "pseudo_tokens")
    labels = rows.task if by == "task" else np.array([d for d, _, _ in rows.key])
    with open_corpus(roots, purpose="test") as corpus:
        column = next(c for c in token_stats(corpus, by=by).columns if c.column == "pseudo_tokens")
    assert {g.group: g.frames for g in column.groups} == {g: (labels == g).sum() for g in set(labels)}
    for group in column.groups:
        assert group.usage.counts == counts_of(rows, labels == group.group).sum(axis=0).tolist()
    json.dumps(asdict(column))  # plain data


def copy_dataset(root: Path, dest: Path) -> Path:
    return Path(shutil.copytree(root, dest / root.name, ignore=shutil.ignore_patterns("videos")))


def test_handmade_tokens_give_known_statistics(tokenized_corpus, tmp_path):
    """Two 64-frame episodes; the second has only its right arm active (its left codes, 15, must not count).
    Left slots always use code 0; right slots cycle through codes 0..3, so each is uniform over 4 codes; in
    slot 7 the code 32 frames later is the same or the next one, each half the time (1 bit)."""
    root = copy_dataset(tokenized_corpus.robot, tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    for name in ("pseudo_tokens", "pseudo_tokens_padded"):
        del info["features"][name]
    (root / "meta/info.json").write_text(json.dumps(info))
    frame = np.tile(np.arange(64), 2)
    episode = np.repeat([0, 1], 64)
    tokens = np.zeros((128, 8), np.int16)
    tokens[episode == 1, :4] = 15
    tokens[:, 4:] = (frame % 4)[:, None]
    late = frame >= 32
    tokens[late, 7] = (frame[late] % 4 + (frame[late] // 4) % 2) % 4
    mask = np.where(episode[:, None] == 0, [1.0, 1.0], [0.0, 1.0]).astype(np.float32)
    table = pa.table({
        "episode_index": episode, "frame_index": frame, "task_index": np.zeros(128, np.int64),
        "arm_mask": pa.FixedSizeListArray.from_arrays(mask.reshape(-1), 2),
        "action_tokens": pa.FixedSizeListArray.from_arrays(tokens.reshape(-1), 8),
        "action_tokens_padded": frame + CHUNK > 64,
    })
    for old in (root / "data").rglob("*.parquet"):
        old.unlink()
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    with open_corpus([root], purpose="test") as corpus:
        [column] = token_stats(corpus).columns
    left, right = column.overall.slots[:4], column.overall.slots[4:]
    for slot in left:
        assert slot.usage.occurrences == 64 and slot.usage.perplexity == pytest.approx(1.0)
        assert slot.usage.dead_codes == list(range(1, 16))  # 15 only in the inactive arm
        assert (slot.transitions.pairs, slot.transitions.stay_share, slot.transitions.distinct) == (32, 1.0, 1)
    for slot in right:
        assert slot.usage.occurrences == 128 and slot.usage.counts[:4] == [32] * 4
        assert slot.usage.perplexity == pytest.approx(4.0) and slot.usage.entropy_bits == pytest.approx(2.0)
        assert slot.usage.dead_codes == list(range(4, 16))
    assert [(s.transitions.stay_share, s.transitions.distinct) for s in right] == [(1.0, 4)] * 3 + [(0.5, 8)]
    assert [s.transitions.entropy_bits for s in right] == pytest.approx([0, 0, 0, 1])
    # pooled: code 0 half the uses (left 4×64 + right 4×32), codes 1..3 a sixth each: perplexity √12
    assert column.overall.usage.counts[:4] == [384, 128, 128, 128]
    assert column.overall.usage.perplexity == pytest.approx(math.sqrt(12))
    assert column.overall.usage.dead_codes == list(range(4, 16))
    assert column.overall.padded_share == pytest.approx(62 / 128)
    assert column.overall.transitions.pairs == 4 * 32 + 4 * 64
    assert column.overall.transitions.entropy_bits == pytest.approx(64 / 384)


def test_quarantine_view_without_files_is_empty_with_its_columns(tokenized_corpus, tmp_path):
    root = copy_dataset(tokenized_corpus.robot, tmp_path)
    (root / "quarantine.parquet").unlink()
    with open_corpus([root], purpose="test") as corpus:
        result = corpus.connection.execute("SELECT * FROM quarantine")
        assert [d[0] for d in result.description] == ["dataset", "source_episode", "category", "file", "reason"]
        assert result.fetchall() == []


def test_datasets_are_locked_shared_while_open(tokenized_corpus):
    with open_corpus([tokenized_corpus.human], purpose="test"):
        with pytest.raises(ClapDataError, match="only reading it"):
            with dataset_lock(tokenized_corpus.human, exclusive=True, purpose="a writer"):
                pass


def test_tokenizers_of_different_shapes_are_refused(tokenized_corpus, tmp_path):
    root = copy_dataset(tokenized_corpus.human, tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["pseudo_tokens"]["info"]["codebook_size"] = 512
    (root / "meta/info.json").write_text(json.dumps(info))
    with open_corpus([tokenized_corpus.robot, root], purpose="test") as corpus:
        with pytest.raises(ClapDataError, match=r"different shapes: astribot \(Nq 4, K 16\), ego4d \(Nq 4, K 512\)"):
            token_stats(corpus)


def test_a_dataset_given_twice_is_refused(tokenized_corpus):
    with pytest.raises(ClapDataError, match="given twice"):
        with open_corpus([tokenized_corpus.human, tokenized_corpus.human / ".." / "ego4d"], purpose="test"):
            pass


def test_names_are_made_unique():
    assert unique_names([Path("a/v3"), Path("b/v3"), Path("c/x"), Path("d/v3")]) == ["v3", "v3_2", "x", "v3_3"]
