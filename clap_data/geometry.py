"""Rotation and gripper conventions of the canonical 14-D action space (METHOD.md §1).

Every source stores orientation differently (rot6d rows, xyzw quaternions, Euler angles); the
unified dataset stores Euler angles with R = Rz(yaw) · Ry(pitch) · Rx(roll), i.e. scipy's
``Rotation.from_euler("xyz")`` (lowercase = extrinsic). All functions are batched over any
leading dimensions and work in float64, because canonical values are compared to an independent
implementation to 1e-5 and float32 round-off in the matrix chain would eat into that margin.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

# Clip applied to R20 before asin so that pitch stays finite at gimbal lock (METHOD.md §1).
_PITCH_CLIP = 1.0 - 1e-7
# Added to the first row's norm in Gram-Schmidt, so a zero row gives zeros instead of NaN.
_GRAM_SCHMIDT_EPS = 1e-8


def _as_float(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def rot6d_to_matrix(rot6d: ArrayLike) -> FloatArray:
    """Rotation matrices from 6-D rotations that hold the first two *rows* of R.

    Gram-Schmidt on the rows makes slightly non-orthonormal input (sensor round-off) a proper
    rotation: b1 = r1/(|r1|+eps), b2 = normalize(r2 - (b1·r2) b1), b3 = b1 × b2.
    """
    r = _as_float(rot6d)
    r1, r2 = r[..., 0:3], r[..., 3:6]
    b1 = r1 / (np.linalg.norm(r1, axis=-1, keepdims=True) + _GRAM_SCHMIDT_EPS)
    r2_orth = r2 - np.sum(b1 * r2, axis=-1, keepdims=True) * b1
    b2 = r2_orth / (np.linalg.norm(r2_orth, axis=-1, keepdims=True) + _GRAM_SCHMIDT_EPS)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-2)


def matrix_to_rot6d(matrix: ArrayLike) -> FloatArray:
    """The first two rows of R, flattened: the inverse of :func:`rot6d_to_matrix`."""
    m = _as_float(matrix)
    return m[..., 0:2, :].reshape(*m.shape[:-2], 6)


def euler_to_matrix(rpy: ArrayLike) -> FloatArray:
    """R = Rz(yaw) · Ry(pitch) · Rx(roll) from ``[roll, pitch, yaw]`` in radians."""
    e = _as_float(rpy)
    cr, sr = np.cos(e[..., 0]), np.sin(e[..., 0])
    cp, sp = np.cos(e[..., 1]), np.sin(e[..., 1])
    cy, sy = np.cos(e[..., 2]), np.sin(e[..., 2])
    rows = [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler(matrix: ArrayLike) -> FloatArray:
    """``[roll, pitch, yaw]`` with the formulas METHOD.md fixes, so results match bit-for-bit
    across implementations: roll = atan2(R21, R22), pitch = asin(-clip(R20)), yaw = atan2(R10, R00).
    """
    m = _as_float(matrix)
    roll = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    pitch = np.arcsin(-np.clip(m[..., 2, 0], -_PITCH_CLIP, _PITCH_CLIP))
    yaw = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return np.stack([roll, pitch, yaw], axis=-1)


def quat_xyzw_to_matrix(quat: ArrayLike) -> FloatArray:
    """Rotation matrices from quaternions in **xyzw** order (AgiBot); input need not be unit."""
    q = _as_float(quat)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quat_xyzw(matrix: ArrayLike) -> FloatArray:
    """Unit quaternions (xyzw, w >= 0) from rotation matrices, numerically stable for all angles.

    Uses the largest-diagonal branch (Shepperd's method) so that 180° rotations keep precision.
    """
    m = _as_float(matrix)
    flat = m.reshape(-1, 3, 3)
    out = np.empty((flat.shape[0], 4))
    trace = np.trace(flat, axis1=1, axis2=2)
    diag = np.stack([flat[:, 0, 0], flat[:, 1, 1], flat[:, 2, 2]], axis=1)
    branch = np.where(trace > diag.max(axis=1), 3, diag.argmax(axis=1))
    for b in range(4):
        sel = branch == b
        if not sel.any():
            continue
        r = flat[sel]
        if b == 3:
            s = 2.0 * np.sqrt(1.0 + trace[sel])
            q = [(r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                 (r[:, 1, 0] - r[:, 0, 1]) / s, 0.25 * s]
        else:
            i, j, k = b, (b + 1) % 3, (b + 2) % 3
            s = 2.0 * np.sqrt(1.0 + r[:, i, i] - r[:, j, j] - r[:, k, k])
            q = [None] * 4
            q[i] = 0.25 * s
            q[j] = (r[:, j, i] + r[:, i, j]) / s
            q[k] = (r[:, k, i] + r[:, i, k]) / s
            q[3] = (r[:, k, j] - r[:, j, k]) / s
        out[sel] = np.stack(q, axis=1)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out *= np.where(out[:, 3:4] < 0, -1.0, 1.0)
    return out.reshape(*m.shape[:-2], 4)


def rot6d_defects(rot6d: ArrayLike, norm_tolerance: float = 0.1) -> NDArray[np.str_]:
    """Per-frame description of 6-D rotations that cannot be a rotation, '' where it is fine.

    Gram-Schmidt would silently turn a zero or degenerate block into garbage, so ingest rejects
    such frames: a zero row, rows far from unit length, or (nearly) parallel rows.
    """
    r = _as_float(rot6d)
    r1, r2 = r[..., 0:3], r[..., 3:6]
    n1, n2 = np.linalg.norm(r1, axis=-1), np.linalg.norm(r2, axis=-1)
    safe = np.maximum(n1 * n2, 1e-300)
    cos = np.abs(np.sum(r1 * r2, axis=-1)) / safe
    out = np.full(n1.shape, "", dtype=object)
    bad_norm = (np.abs(n1 - 1) > norm_tolerance) | (np.abs(n2 - 1) > norm_tolerance)
    out[bad_norm] = "rows are not unit length"
    out[cos > 0.5] = "rows are nearly parallel"
    out[(n1 < 1e-6) | (n2 < 1e-6)] = "a row is zero"
    out[~np.isfinite(r).all(axis=-1)] = "contains NaN or Inf"
    return out.astype(str)


def gripper_from_percent_open0(value: ArrayLike) -> FloatArray:
    """Astribot 0..100 with 0 = open → [-1, 1] with +1 = closed, clamped."""
    return np.clip(_as_float(value) / 100.0 * 2.0 - 1.0, -1.0, 1.0)


def gripper_from_unit_closed1(value: ArrayLike) -> FloatArray:
    """DROID and AgiBot actions: 0..1 with 1 = closed → [-1, 1] with +1 = closed, clamped."""
    return np.clip(_as_float(value) * 2.0 - 1.0, -1.0, 1.0)


def gripper_from_opening_mm(opening_mm: ArrayLike, fully_open_mm: float) -> FloatArray:
    """AgiBot state: opening in mm (larger = more open) → +1 closed, -1 fully open, clamped."""
    if fully_open_mm <= 0:
        raise ValueError(f"the fully-open gripper width must be positive, got {fully_open_mm}")
    return np.clip(1.0 - 2.0 * _as_float(opening_mm) / fully_open_mm, -1.0, 1.0)


def arm_pose7(position: ArrayLike, rotation_matrix: ArrayLike, gripper: ArrayLike) -> FloatArray:
    """One arm's canonical 7 values ``[x, y, z, roll, pitch, yaw, gripper]`` per frame."""
    pos = _as_float(position)
    grip = _as_float(gripper)[..., None]
    return np.concatenate([pos, matrix_to_euler(rotation_matrix), grip], axis=-1)


def dual_arm14(left: FloatArray | None, right: FloatArray | None) -> tuple[FloatArray, FloatArray]:
    """The 14-D vector ``[left 7 | right 7]`` and the arm mask ``[left, right]``.

    A missing arm is zeros in its slot with mask 0: single-arm robots use the right slot.
    """
    present = left if left is not None else right
    if present is None:
        raise ValueError("at least one arm is needed")
    lead = present.shape[:-1]
    zeros = np.zeros((*lead, 7))
    vec = np.concatenate([left if left is not None else zeros, right if right is not None else zeros], -1)
    mask = np.array([left is not None, right is not None], dtype=np.float64)
    return vec, np.broadcast_to(mask, (*lead, 2)).copy()
