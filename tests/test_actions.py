"""Chunks and normalisation (METHOD.md §2) against an independent scipy implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clap_data import actions
from clap_data.errors import ClapDataError

RNG = np.random.default_rng(3)


def random_poses(n: int) -> np.ndarray:
    """[n, 14] dual-arm poses with angles away from gimbal lock and grippers in [-1, 1]."""
    poses = np.zeros((n, 14))
    for arm in (0, 7):
        poses[:, arm : arm + 3] = RNG.uniform(-0.5, 0.8, size=(n, 3))
        poses[:, arm + 3 : arm + 6] = RNG.uniform([-3, -1.2, -3], [3, 1.2, 3], size=(n, 3))
        poses[:, arm + 6] = RNG.uniform(-1, 1, size=n)
    return poses


def reference_relative(state_t: np.ndarray, commands: np.ndarray) -> np.ndarray:
    out = np.zeros_like(commands)
    for arm in (0, 7):
        r_state = Rotation.from_euler("xyz", state_t[arm + 3 : arm + 6])
        for k, command in enumerate(commands):
            delta = Rotation.from_euler("xyz", command[arm + 3 : arm + 6]) * r_state.inv()
            out[k, arm : arm + 3] = command[arm : arm + 3] - state_t[arm : arm + 3]
            out[k, arm + 3 : arm + 6] = delta.as_euler("xyz")
            out[k, arm + 6] = command[arm + 6]
    return out


def test_relative_chunk_matches_reference():
    state, commands = random_poses(1)[0], random_poses(32)
    np.testing.assert_allclose(actions.relative_chunk(state, commands), reference_relative(state, commands), atol=1e-9)


def test_steps_are_relative_to_the_chunk_start_not_the_previous_step():
    state = random_poses(1)[0]
    commands = np.repeat(state[None], 32, axis=0)
    commands[:, 0] += np.arange(32) * 0.01  # left x moves 1 cm per step
    relative = actions.relative_chunk(state, commands)
    np.testing.assert_allclose(relative[:, 0], np.arange(32) * 0.01, atol=1e-12)
    np.testing.assert_allclose(relative[:, 3:6], 0, atol=1e-12)  # no rotation relative to the state at t


def test_absolute_chunk_inverts_relative_chunk():
    state, commands = random_poses(1)[0], random_poses(32)
    back = actions.absolute_chunk(state, actions.relative_chunk(state, commands))
    np.testing.assert_allclose(back[:, [0, 1, 2, 6, 7, 8, 9, 13]], commands[:, [0, 1, 2, 6, 7, 8, 9, 13]], atol=1e-9)
    for arm in (3, 10):
        np.testing.assert_allclose(
            Rotation.from_euler("xyz", back[:, arm : arm + 3]).as_matrix(),
            Rotation.from_euler("xyz", commands[:, arm : arm + 3]).as_matrix(), atol=1e-9,
        )


def test_chunk_past_the_end_repeats_the_last_frame_and_is_flagged():
    action = random_poses(40)
    commands, padded = actions.chunk_commands(action, 20)
    assert padded
    np.testing.assert_array_equal(commands[:20], action[20:40])
    np.testing.assert_array_equal(commands[20:], np.repeat(action[-1:], 12, axis=0))
    commands, padded = actions.chunk_commands(action, 8)
    assert not padded and np.array_equal(commands, action[8:40])
    with pytest.raises(ClapDataError, match="outside the episode"):
        actions.chunk_commands(action, 40)


def test_normalisation_touches_pose_dims_only_without_clipping():
    q01, q99 = np.full(14, -0.5), np.full(14, 0.5)
    q01[2], q99[2] = 0.3, 0.3  # a constant dimension: denominator 1
    values = np.linspace(-2, 2, 14)[None].repeat(3, axis=0)
    normed = actions.normalize(values, q01, q99)
    pose = [i for i in range(14) if i not in (2, 6, 13)]
    np.testing.assert_allclose(normed[:, pose], (values[:, pose] + 0.5) / 1.0 * 2 - 1)
    np.testing.assert_allclose(normed[:, 2], (values[:, 2] - 0.3) * 2 - 1)
    np.testing.assert_array_equal(normed[:, [6, 13]], values[:, [6, 13]])
    assert normed.max() > 1 and normed.min() < -1  # no clipping
    np.testing.assert_allclose(actions.denormalize(normed, q01, q99), values, atol=1e-12)


def test_inactive_arm_is_zero_after_normalisation():
    stats = actions.NormStats("droid", np.full(14, -1.0), np.full(14, 1.0), np.full(14, -1.0), np.full(14, 1.0), "x")
    state = np.zeros((40, 14))
    action = random_poses(40)
    action[:, :7] = 0
    mask = np.tile([0.0, 1.0], (40, 1))
    seen = actions.tokenizer_input(state, action, mask, 3, stats)
    assert (seen.action[:, :7] == 0).all() and (seen.state[:7] == 0).all()
    assert np.abs(seen.action[:, 7:]).sum() > 0


def test_human_chunks_are_all_zero():
    seen = actions.tokenizer_input(np.zeros((50, 14)), np.zeros((50, 14)), np.ones((50, 2)), 30, None)
    assert not seen.action.any() and not seen.state.any() and seen.padded


def test_openclap_table_reads_and_refuses_unknown_embodiments(openclap_table):
    stats = actions.NormStats.from_table(openclap_table, "S1-stationary", "openclap", "the OpenCLAP table")
    assert stats.stats_id == "openclap:S1-stationary"
    assert stats.action_q01.shape == (14,) and stats.action_q01[6] == -1.0
    with pytest.raises(ClapDataError, match="has no statistics for embodiment 'robot-x'"):
        actions.NormStats.from_table(openclap_table, "robot-x", "openclap", "the OpenCLAP table")


@pytest.fixture
def openclap_table():
    from clap_data.reference import openclap_stats_table

    return openclap_stats_table()


def test_shipped_openclap_table_equals_the_release(openclap_table):
    from tests.conftest import SHARED

    released = SHARED / "docs/reference/openclap_dataset_statistics_32.json"
    if not released.is_file():
        pytest.skip("../shared is absent in this clone")
    import json

    assert openclap_table == json.loads(released.read_text())


def test_episode_chunks_equal_chunk_by_chunk():
    state, action = random_poses(45), random_poses(45)
    chunks, padded = actions.episode_chunks(state, action)
    assert chunks.shape == (45, 32, 14) and padded.tolist() == [t + 32 > 45 for t in range(45)]
    for t in (0, 13, 44):
        commands, _ = actions.chunk_commands(action, t)
        np.testing.assert_allclose(chunks[t], actions.relative_chunk(state[t], commands), atol=1e-12)
