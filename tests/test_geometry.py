"""clap_data.geometry against scipy.spatial.transform.Rotation (the reference), batched."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clap_data import geometry

RNG = np.random.default_rng(7)
ROTATIONS = Rotation.random(500, random_state=11)


def test_euler_to_matrix_is_rz_ry_rx_like_scipy_extrinsic_xyz():
    rpy = RNG.uniform(-np.pi, np.pi, size=(4, 25, 3))
    expected = Rotation.from_euler("xyz", rpy.reshape(-1, 3)).as_matrix().reshape(4, 25, 3, 3)
    np.testing.assert_allclose(geometry.euler_to_matrix(rpy), expected, atol=1e-12)


def test_matrix_to_euler_matches_scipy_away_from_gimbal_lock():
    matrices = ROTATIONS.as_matrix()
    ours = geometry.matrix_to_euler(matrices)
    theirs = ROTATIONS.as_euler("xyz")
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


@pytest.mark.parametrize("pitch", [np.pi / 2, -np.pi / 2])
def test_exact_gimbal_lock_gives_finite_angles_with_clipped_pitch(pitch):
    # At the singularity METHOD.md's formulas take roll and yaw from round-off: only finiteness
    # and the clipped pitch asin(1 - 1e-7) are promised.
    matrix = Rotation.from_euler("xyz", [[0.3, pitch, -1.1], [-2.0, pitch, 0.4]]).as_matrix()
    euler = geometry.matrix_to_euler(matrix)
    assert np.isfinite(euler).all()
    np.testing.assert_allclose(np.abs(euler[:, 1]), np.arcsin(1 - 1e-7), atol=1e-12)


@pytest.mark.parametrize(
    ("pitch", "tolerance"),
    # Inside the clip band (|pitch| > asin(1 - 1e-7), 4.5e-4 rad from the pole) the pitch is
    # capped by design, so the rebuilt rotation is off by at most that much; outside, exact.
    [(np.pi / 2 - 1e-6, 5e-4), (-np.pi / 2 + 1e-5, 5e-4), (np.pi / 2 - 1e-3, 1e-9), (-np.pi / 2 + 1e-3, 1e-9)],
)
def test_near_gimbal_lock_rebuilds_the_rotation_within_the_clip(pitch, tolerance):
    rpy = np.array([[0.3, pitch, -1.1], [-2.0, pitch, 0.4]])
    matrix = Rotation.from_euler("xyz", rpy).as_matrix()
    euler = geometry.matrix_to_euler(matrix)
    np.testing.assert_allclose(geometry.euler_to_matrix(euler), matrix, atol=tolerance)


def test_rot6d_round_trip_uses_rows():
    matrices = ROTATIONS.as_matrix()
    rot6d = geometry.matrix_to_rot6d(matrices)
    np.testing.assert_array_equal(rot6d[:, :3], matrices[:, 0, :])
    np.testing.assert_array_equal(rot6d[:, 3:], matrices[:, 1, :])
    np.testing.assert_allclose(geometry.rot6d_to_matrix(rot6d), matrices, atol=1e-12)


def test_rot6d_gram_schmidt_repairs_non_orthonormal_input():
    matrices = ROTATIONS.as_matrix()[:50]
    noisy = geometry.matrix_to_rot6d(matrices) * 1.03 + RNG.normal(0, 1e-3, size=(50, 6))
    repaired = geometry.rot6d_to_matrix(noisy)
    np.testing.assert_allclose(repaired @ np.swapaxes(repaired, -1, -2), np.broadcast_to(np.eye(3), (50, 3, 3)), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(repaired), 1.0, atol=1e-9)
    # The first row keeps its direction: Gram-Schmidt only rescales it.
    first = noisy[:, :3] / np.linalg.norm(noisy[:, :3], axis=1, keepdims=True)
    np.testing.assert_allclose(repaired[:, 0], first, atol=1e-7)
    np.testing.assert_allclose(repaired, matrices, atol=5e-3)


def test_rot6d_zero_rows_do_not_produce_nan():
    assert np.isfinite(geometry.rot6d_to_matrix(np.zeros((3, 6)))).all()


def test_rot6d_defects_flags_zero_parallel_scaled_and_nan_rows():
    good = geometry.matrix_to_rot6d(ROTATIONS.as_matrix()[:2])
    bad = np.array([
        [0, 0, 0, 0, 1, 0],
        [1, 0, 0, 1, 1e-4, 0],
        [0.5, 0, 0, 0, 0.5, 0],
        [np.nan, 0, 0, 0, 1, 0],
    ], dtype=float)
    defects = geometry.rot6d_defects(np.vstack([good, bad]))
    assert list(defects[:2]) == ["", ""]
    assert list(defects[2:]) == ["a row is zero", "rows are nearly parallel", "rows are not unit length", "contains NaN or Inf"]


def test_quaternion_xyzw_both_ways_matches_scipy():
    quats = ROTATIONS.as_quat()  # scipy is scalar-last: xyzw
    np.testing.assert_allclose(geometry.quat_xyzw_to_matrix(quats), ROTATIONS.as_matrix(), atol=1e-12)
    ours = geometry.matrix_to_quat_xyzw(ROTATIONS.as_matrix())
    canonical = quats * np.where(quats[:, 3:4] < 0, -1, 1)
    np.testing.assert_allclose(ours, canonical, atol=1e-9)


def test_quaternion_handles_half_turns_and_unnormalised_input():
    half_turns = Rotation.from_rotvec(np.pi * np.eye(3))
    np.testing.assert_allclose(
        geometry.quat_xyzw_to_matrix(geometry.matrix_to_quat_xyzw(half_turns.as_matrix())), half_turns.as_matrix(), atol=1e-12
    )
    np.testing.assert_allclose(geometry.quat_xyzw_to_matrix([[0, 0, 0, 2.0]]), [np.eye(3)], atol=1e-12)


def test_gripper_mappings_put_closed_at_plus_one_and_clamp():
    np.testing.assert_allclose(geometry.gripper_from_percent_open0([0, 50, 100, -2.4, 100.5]), [-1, 0, 1, -1, 1])
    np.testing.assert_allclose(geometry.gripper_from_unit_closed1([0, 0.25, 1, 1.2]), [-1, -0.5, 1, 1])
    np.testing.assert_allclose(geometry.gripper_from_opening_mm([0, 60, 120, 130], fully_open_mm=120), [1, 0, -1, -1])
    with pytest.raises(ValueError):
        geometry.gripper_from_opening_mm([1.0], fully_open_mm=0)


def test_dual_arm_slots_and_mask():
    left = np.ones((5, 7))
    right = np.full((5, 7), 2.0)
    both, mask = geometry.dual_arm14(left, right)
    assert both.shape == (5, 14) and (both[:, :7] == 1).all() and (both[:, 7:] == 2).all()
    assert (mask == [1, 1]).all()
    single, mask = geometry.dual_arm14(None, right)
    assert (single[:, :7] == 0).all() and (single[:, 7:] == 2).all()
    assert (mask == [0, 1]).all()
    with pytest.raises(ValueError):
        geometry.dual_arm14(None, None)


def test_arm_pose7_orders_position_euler_gripper():
    rotation = ROTATIONS[:3]
    pose = geometry.arm_pose7(np.arange(9.0).reshape(3, 3), rotation.as_matrix(), np.array([0.5, -1, 1]))
    np.testing.assert_allclose(pose[:, :3], np.arange(9.0).reshape(3, 3))
    np.testing.assert_allclose(pose[:, 3:6], rotation.as_euler("xyz"), atol=1e-9)
    np.testing.assert_allclose(pose[:, 6], [0.5, -1, 1])
