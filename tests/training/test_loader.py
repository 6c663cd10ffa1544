"""The streaming loader over exported shards: every sample once per epoch across 2 ranks × 2 DataLoader workers,
another order per seed and epoch, equal batch counts on every rank, a resumed epoch that yields exactly the
remaining batches, mixing weights, bounded row-group residency, and batches that hold the shards' values."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.pipelines.export import ExportRequest, export
from clap_data.schemas import shards_v1 as S
from clap_data.splits import Holdout, episode_keys
from clap_data.training.loader import ShardStream, decode_jpeg, iter_batches, iter_steps, plan_epoch

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def shards(tokenized_corpus, tmp_path_factory) -> Path:
    """The corpus exported in several shards of several small row groups (every frame, 24×32 images)."""
    out = tmp_path_factory.mktemp("loader") / "shards"
    export([tokenized_corpus.robot, tokenized_corpus.human],
           ExportRequest(out=out, image_size=(24, 32), shard_mb=0.05, holdout=Holdout("episodes", 0.3),
                         row_group_bytes=16 << 10))
    return out


def train_rows(root: Path) -> list[dict]:
    return [r for path in sorted((root / S.TRAIN_SPLIT).glob("*.parquet")) for r in pq.read_table(path).to_pylist()]


def train_ids(root: Path) -> list[str]:
    return [r[S.SAMPLE_ID] for r in train_rows(root)]


def epoch_ids(root: Path, epoch: int, **options) -> list[list[str]]:
    return [b.sample_id for b in iter_batches(root, epoch=epoch, batch_size=8, **options)]


def test_every_sample_once_per_epoch_across_ranks_and_workers(shards):
    expected = train_ids(shards)
    assert len(expected) > 150
    stream = ShardStream(shards, batch_size=8)
    assert len(stream.units) > 4  # several shards and row groups to assign
    seen = []
    for rank in range(2):
        batches = list(iter_batches(shards, epoch=0, batch_size=8, rank=rank, world_size=2, num_workers=2, even=False))
        assert [b.step for b in batches] == list(range(len(batches)))
        seen += [i for b in batches for i in b.sample_id]
    assert sorted(seen) == sorted(expected)
    even = [epoch_ids(shards, 0, rank=rank, world_size=2) for rank in range(2)]
    flat = [i for ranks in even for batch in ranks for i in batch]
    assert len(even[0]) == len(even[1]) and len(flat) == len(set(flat)) and len(expected) - len(flat) < 2


def test_the_order_is_a_function_of_seed_and_epoch(shards):
    first = epoch_ids(shards, 0)
    assert epoch_ids(shards, 0) == first  # reproducible
    assert epoch_ids(shards, 0, num_workers=2) == first  # whatever the number of workers
    others = [epoch_ids(shards, 1), epoch_ids(shards, 0, seed=1)]
    for other in others:
        assert other != first and sorted(sum(other, [])) == sorted(sum(first, []))
    assert epoch_ids(shards, 0, shuffle=False, even=False) == [train_ids(shards)[i:i + 8]
                                                               for i in range(0, len(train_ids(shards)), 8)]


def test_a_resumed_epoch_yields_exactly_the_remaining_batches(shards):
    for rank in range(2):
        whole = epoch_ids(shards, 3, rank=rank, world_size=2)
        resumed = epoch_ids(shards, 3, start_step=5, rank=rank, world_size=2, num_workers=2)
        assert resumed == whole[5:] and len(whole) > 6
    stream = ShardStream(shards, batch_size=8)
    steps = stream.steps_per_epoch()
    assert stream.start_of(steps + 3) == (1, 3)
    endless = iter_steps(shards, start_step=steps - 2, batch_size=8, num_workers=2)  # epochs run on in the workers
    got = [next(endless) for _ in range(5)]
    assert [(b.epoch, b.step) for b in got] == [(0, steps - 2), (0, steps - 1), (1, 0), (1, 1), (1, 2)]
    assert [b.sample_id for b in got] == epoch_ids(shards, 0)[-2:] + epoch_ids(shards, 1)[:3]


def test_mixing_weights_repeat_or_thin_a_dataset_per_epoch(shards, tokenized_corpus):
    human = next(iter(episode_keys(DatasetMetadata.load(tokenized_corpus.human)).values())).partition("/")[0]
    once = Counter(i for batch in epoch_ids(shards, 0, even=False) for i in batch)
    twice = Counter(i for batch in epoch_ids(shards, 0, even=False, mix={human: 2}) for i in batch)
    assert {i: n for i, n in twice.items()} == {i: 2 if i.startswith(human) else 1 for i in once}
    halves = [{i for batch in epoch_ids(shards, e, mix={human: 0.5}) for i in batch if i.startswith(human)}
              for e in (0, 1)]
    people = sum(1 for i in once if i.startswith(human))
    assert all(0.25 * people < len(h) < 0.75 * people for h in halves) and halves[0] != halves[1]
    ranks = [epoch_ids(shards, 0, rank=r, world_size=2, mix={human: 0.5}) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    with pytest.raises(ClapDataError, match="mix names nope"):
        ShardStream(shards, batch_size=4, mix={"nope": 2})


def test_rows_move_less_than_the_shuffle_buffer():
    """What bounds the resident row groups: a row is read at most ``shuffle_buffer`` places from where the
    permuted row-group stream brings it."""
    unit_rows = np.array([50] * 40)
    plain = plan_epoch(unit_rows, seed=3, epoch=0, rank=0, world_size=1, batch_size=4, shuffle_buffer=0).refs
    mixed = plan_epoch(unit_rows, seed=3, epoch=0, rank=0, world_size=1, batch_size=4, shuffle_buffer=64).refs
    position = {int(r): i for i, r in enumerate(plain)}
    moved = np.array([abs(position[int(r)] - i) for i, r in enumerate(mixed)])
    assert moved.max() < 64 and moved.mean() > 5 and sorted(mixed) == list(range(2000))


def test_batches_hold_the_shard_values(shards):
    rows = {r[S.SAMPLE_ID]: r for r in train_rows(shards)}
    batch = next(iter(iter_batches(shards, epoch=0, batch_size=16)))
    assert batch.tokens.shape == (16, 8) and batch.tokens.dtype == torch.int64 and batch.arm_mask.dtype == torch.bool
    assert batch.actions.shape == (16, 32, 14) and batch.state.shape == (16, 14)
    assert batch.images["head"].shape == (16, 24, 32, 3) and batch.images["head"].dtype == torch.uint8
    humans = 0
    for i, sample in enumerate(batch.samples()):
        row = rows[sample[S.SAMPLE_ID]]
        assert sample[S.TOKENS] == row[S.TOKENS] and sample[S.TOKENS_TEXT] == row[S.TOKENS_TEXT]
        assert np.allclose(batch.actions[i].numpy().reshape(-1), row[S.ACTIONS])
        assert sample[S.STATE] == pytest.approx(row[S.STATE]) and sample[S.ACTIONS] == pytest.approx(row[S.ACTIONS])
        assert sample[S.SUBTASK] == row[S.SUBTASK] and sample[S.ARM_MASK] == row[S.ARM_MASK]
        for camera in S.CAMERAS_IN_PROMPT_ORDER:
            data = row[S.image_column(camera)]
            assert bool(batch.has_image[camera][i]) == (data is not None) == (camera in sample["images"])
            if data is None:
                assert not batch.images[camera][i].any()
            else:
                assert np.array_equal(sample["images"][camera], decode_jpeg(data))
        humans += row[S.EMBODIMENT] == "human"
    assert 0 < humans < 16  # both kinds of sample, with and without wrist cameras
    by_workers = next(iter(iter_batches(shards, epoch=0, batch_size=16, num_workers=1)))  # through the image ring
    assert not by_workers.images["wrist_left"].is_shared() and by_workers.sample_id == batch.sample_id
    assert all(torch.equal(by_workers.images[c], batch.images[c]) for c in S.CAMERAS_IN_PROMPT_ORDER)
    raw = next(iter(iter_batches(shards, epoch=0, batch_size=4, cameras=("head",), decode_images=False)))
    assert list(raw.images) == ["head"] and isinstance(raw.images["head"][0], bytes)


def test_held_out_split_and_refusals(shards, tmp_path):
    held = [i for b in iter_batches(shards, epoch=0, batch_size=5, split=S.HELDOUT_SPLIT, shuffle=False, even=False)
            for i in b.sample_id]
    assert len(held) == len(set(held)) > 0 and not set(held) & set(train_ids(shards))
    with pytest.raises(ClapDataError, match="is not a shard folder"):
        ShardStream(tmp_path, batch_size=4)
    with pytest.raises(ClapDataError, match="no camera wrist_middle"):
        ShardStream(shards, batch_size=4, cameras=("wrist_middle",))
    with pytest.raises(ClapDataError, match="rank 2 is not in 0..1"):
        ShardStream(shards, batch_size=4, rank=2, world_size=2)


def test_batches_kept_by_the_trainer_survive_the_workers_reusing_their_image_slots(shards):
    """A worker has prefetch_factor + 2 image slots and reuses them round after round: batches the trainer keeps
    must be copies, never views of a slot that is written again."""
    steps = 14  # several rounds of a worker's 4 slots
    alone = list(itertools.islice(iter_steps(shards, batch_size=5), steps))
    kept = list(itertools.islice(iter_steps(shards, batch_size=5, num_workers=2, prefetch_factor=2), steps))
    assert [b.sample_id for b in kept] == [b.sample_id for b in alone]
    for ours, theirs in zip(kept, alone, strict=True):
        assert all(torch.equal(ours.images[c], theirs.images[c]) for c in S.CAMERAS_IN_PROMPT_ORDER)
    assert len({tuple(b.sample_id) for b in kept}) > 4 and any(b.images["head"].any() for b in kept)
