"""Test helpers: an independent reference implementation of the canonical conversion
(METHOD.md §1) to compare clap-data against, and writable copies of sources for fault injection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.spatial.transform import Rotation


def copy_source(src: Path, dst: Path) -> Path:
    """A writable copy to inject faults into (the shared fixture is read-only)."""
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def reference_arm(pose: np.ndarray, offset: int) -> np.ndarray:
    """METHOD.md §1, written independently of clap_data.geometry: scipy for the Euler angles."""
    out = []
    for row in pose:
        r1, r2 = row[offset + 3 : offset + 6], row[offset + 6 : offset + 9]
        b1 = r1 / (np.linalg.norm(r1) + 1e-8)
        b2 = r2 - b1.dot(r2) * b1
        b2 = b2 / (np.linalg.norm(b2) + 1e-8)
        matrix = np.vstack([b1, b2, np.cross(b1, b2)])
        euler = Rotation.from_matrix(matrix).as_euler("xyz")
        grip = min(max(row[offset + 9] / 100.0 * 2.0 - 1.0, -1.0), 1.0)
        out.append(np.concatenate([row[offset : offset + 3], euler, [grip]]))
    return np.array(out)


def reference_canonical(parquet: Path) -> tuple[np.ndarray, np.ndarray]:
    """(state, action) [N, 14] of one Astribot episode file, by the reference implementation."""
    table = pq.read_table(parquet)
    result = []
    for column in ("cartesian_so3_dict.cartesian_pose_state", "cartesian_so3_dict.cartesian_pose_command"):
        pose = np.array(table.column(column).to_pylist(), dtype=np.float64)
        result.append(np.hstack([reference_arm(pose, 9), reference_arm(pose, 19)]))
    return result[0], result[1]


POSE = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]


def reference_chunk(state: np.ndarray, action: np.ndarray, t: int, q: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    """METHOD.md §2 by hand: relative to the state at t, tail repeated, q01/q99 on pose dims."""
    rows = []
    for k in range(32):
        command = action[min(t + k, len(action) - 1)]
        row = command.copy()
        for arm in (0, 7):
            row[arm : arm + 3] = command[arm : arm + 3] - state[t, arm : arm + 3]
            delta = Rotation.from_euler("xyz", command[arm + 3 : arm + 6]) * Rotation.from_euler("xyz", state[t, arm + 3 : arm + 6]).inv()
            row[arm + 3 : arm + 6] = delta.as_euler("xyz")
        rows.append(row)
    chunk = np.array(rows)

    def scale(x, lo, hi):
        x = x.copy()
        lo, hi = np.asarray(lo), np.asarray(hi)
        x[..., POSE] = (x[..., POSE] - lo[POSE]) / (hi[POSE] - lo[POSE]) * 2 - 1
        return x

    return scale(chunk, q["action"]["q01"], q["action"]["q99"]), scale(state[t], q["state"]["q01"], q["state"]["q99"]), t + 32 > len(action)


def reference_absolute(state_t: np.ndarray, relative: np.ndarray, q: dict) -> np.ndarray:
    """The inverse by hand: denormalise the pose dims, then p = p0 + Δp and R = ΔR·R0 (scipy)."""
    lo, hi = np.asarray(q["action"]["q01"]), np.asarray(q["action"]["q99"])
    chunk = relative.copy()
    chunk[..., POSE] = (chunk[..., POSE] + 1) / 2 * (hi[POSE] - lo[POSE]) + lo[POSE]
    out = chunk.copy()
    for arm in (0, 7):
        out[:, arm : arm + 3] = chunk[:, arm : arm + 3] + state_t[arm : arm + 3]
        rotation = Rotation.from_euler("xyz", chunk[:, arm + 3 : arm + 6]) * Rotation.from_euler("xyz", state_t[arm + 3 : arm + 6])
        out[:, arm + 3 : arm + 6] = rotation.as_euler("xyz")
    return out
