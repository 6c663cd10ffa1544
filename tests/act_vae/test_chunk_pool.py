"""The chunk pool: the split, single-arm data, mixing embodiments, and chunks equal to what
`clap-data chunk` shows (the tokenizer's view)."""

from __future__ import annotations

import numpy as np
import pytest

from clap_data.act_vae.chunk_pool import ChunkPool
from clap_data.actions import tokenizer_input
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.norm_stats import load_norm_stats
from clap_data.splits import Holdout, episode_keys

LENGTHS = (40, 52, 45)  # the factory Astribot source's episodes


def test_tail_split_never_lets_a_training_chunk_see_a_held_out_frame(unified_astribot):
    holdout = Holdout("tail", 0.25)
    train = ChunkPool([unified_astribot], "openclap", holdout, held_out=False)
    test = ChunkPool([unified_astribot], "openclap", holdout, held_out=True)
    cuts = [int(np.floor(n * 0.75)) for n in LENGTHS]
    # both arms active everywhere: 2 samples per start frame
    assert len(test) == 2 * sum(n - c for n, c in zip(LENGTHS, cuts, strict=True))
    assert len(train) == 2 * sum(max(0, c - 32 + 1) for c in cuts)
    data = train.datasets[0]
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    episode = np.searchsorted(offsets, data.sample_frames, side="right") - 1
    last_training_frame = data.sample_frames - offsets[episode] + 31
    assert (last_training_frame < np.asarray(cuts)[episode]).all()


def test_episode_split_is_deterministic_and_complete(unified_astribot):
    holdout = Holdout("episodes", 0.5)
    keys = episode_keys(DatasetMetadata.load(unified_astribot))
    held = [e for e in range(3) if holdout.episode_held_out(keys[e])]
    assert held == [e for e in range(3) if Holdout("episodes", 0.5).episode_held_out(keys[e])]
    train = ChunkPool([unified_astribot], "openclap", holdout, held_out=False)
    test = ChunkPool([unified_astribot], "openclap", holdout, held_out=True)
    assert len(train) + len(test) == 2 * sum(LENGTHS)
    assert len(test) == 2 * sum(LENGTHS[e] for e in held)
    with pytest.raises(ClapDataError, match="no held-out chunks.*--holdout tail"):
        ChunkPool([unified_astribot], "openclap", Holdout("episodes", 0.0), held_out=True).require_samples()


def test_chunks_are_the_tokenizer_view(unified_astribot):
    pool = ChunkPool([unified_astribot], "openclap", Holdout("tail", 0.0), held_out=False)
    data = pool.datasets[0]
    stats = load_norm_stats(unified_astribot, "openclap")
    episodes = list(iter_episode_arrays(unified_astribot))
    offsets = np.concatenate([[0], np.cumsum([len(e.state) for e in episodes])])
    picks = np.array([0, 5, len(pool) - 1, 77])
    chunks, arms = data.chunks(picks)
    for pick, chunk, arm in zip(picks, chunks, arms, strict=True):
        frame = data.sample_frames[pick]
        e = int(np.searchsorted(offsets, frame, side="right") - 1)
        ep = episodes[e]
        seen = tokenizer_input(ep.state, ep.action, ep.arm_mask, int(frame - offsets[e]), stats)
        # stored as float32 frames: agreement to float32 precision
        np.testing.assert_allclose(chunk, seen.action[:, 7 * arm : 7 * arm + 7], atol=1e-4)


def test_single_arm_data_gives_only_its_active_arm_and_embodiments_mix(unified_astribot, unified_droid):
    pool = ChunkPool([unified_astribot, unified_droid], "openclap", Holdout("tail", 0.0), held_out=False)
    astribot, droid = pool.datasets
    assert droid.stats.stats_id == "openclap:droid" and astribot.stats.stats_id == "openclap:S1-stationary"
    assert set(droid.sample_arms.tolist()) == {1}  # DROID's arm sits in the right slot
    assert len(droid.sample_frames) == len(droid.state) == 20 + 14 + 17 + 12
    rng = np.random.default_rng(0)
    batch = pool.sample(4000, rng).numpy()
    assert batch.shape == (4000, 32, 7)
    # a right-arm DROID chunk is never all zero; the left slot (inactive) is never sampled
    chunks, _ = droid.chunks(np.arange(len(droid.sample_frames)))
    assert (np.abs(chunks).sum(axis=(1, 2)) > 0).all()
    share = len(droid.sample_frames) / len(pool)
    droid_chunks = {c.astype(np.float32).tobytes() for c in chunks}
    from_droid = np.mean([c.tobytes() in droid_chunks for c in batch])
    assert abs(from_droid - share) < 0.05


def test_human_datasets_are_refused(unified_astribot, tmp_path):
    import json
    import shutil

    copy = tmp_path / "human"
    shutil.copytree(unified_astribot, copy)
    info = json.loads((copy / "meta/info.json").read_text())
    info["robot_type"] = "human"
    (copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ClapDataError, match="human video"):
        ChunkPool([copy], "openclap", Holdout(), held_out=False)


def test_memory_cap_keeps_a_fixed_subset_of_whole_episodes(unified_astribot, unified_droid):
    holdout = Holdout("tail", 0.0)
    capped = ChunkPool([unified_astribot, unified_droid], "openclap", holdout, held_out=False, max_frames=100)
    again = ChunkPool([unified_astribot, unified_droid], "openclap", holdout, held_out=False, max_frames=100)
    held = sum(len(d.state) for d in capped.datasets)
    assert 0 < held <= 100 and "more than --max-frames 100" in capped.notice and f"({held:,} frames)" in capped.notice
    for a, b in zip(capped.datasets, again.datasets, strict=True):
        np.testing.assert_array_equal(a.state, b.state)
    lengths = {20, 14, 17, 12, 40, 52, 45}  # whole episodes only
    for data in capped.datasets:
        ends = np.unique(data.last_frame)
        sizes = np.diff(np.concatenate([[-1], ends]))
        assert set(sizes.tolist()) <= lengths
    full = ChunkPool([unified_astribot, unified_droid], "openclap", holdout, held_out=False)
    assert full.notice == "" and sum(len(d.state) for d in full.datasets) == 137 + 63
