"""The readers users run on our output, as they come: stock lerobot's ``LeRobotDataset`` with its default video
backend (torchcodec, which decodes through the system's FFmpeg shared libraries) and Ray Data's
``read_lerobot``. Both return every frame, video frames equal to PyAV's decoding of the same files, and the
token columns equal to the parquet values.

torchcodec needs FFmpeg's shared libraries (4 to 8) on the machine; without them lerobot silently falls back
to PyAV. Then these tests fail under CI (CI=true: .ci/run installs ffmpeg) and are skipped elsewhere, saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from clap_data.schemas import ACTION_TOKENS, ACTION_TOKENS_PADDED, PSEUDO_TOKENS, PSEUDO_TOKENS_PADDED

TOKENS = (ACTION_TOKENS, ACTION_TOKENS_PADDED, PSEUDO_TOKENS, PSEUDO_TOKENS_PADDED)
CAMERAS = ("observation.images.head", "observation.images.wrist_left", "observation.images.wrist_right")


def _require_torchcodec() -> None:
    try:
        from torchcodec import _core

        _core.get_ffmpeg_library_versions()
    except (ImportError, OSError, RuntimeError) as exc:
        message = (f"torchcodec cannot load FFmpeg's shared libraries ({str(exc).splitlines()[0]}): install FFmpeg "
                   "4 to 8 (Debian: apt-get install ffmpeg), which lerobot's and Ray's default video decoder needs")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def robot(tokenized_corpus) -> Path:
    _require_torchcodec()
    return tokenized_corpus.robot


@pytest.fixture(scope="module")
def parquet(robot) -> dict[int, dict]:
    """Every frame's row of the data files, by global index."""
    table = pq.ParquetDataset(robot / "data").read(columns=["index", "episode_index", "frame_index", *TOKENS])
    return {row["index"]: row for row in table.to_pylist()}


@pytest.fixture(scope="module")
def pyav_frames(robot) -> dict[str, dict[tuple[int, int], np.ndarray]]:
    """Per camera, (episode, frame) → the RGB frame PyAV decodes, placed by the episodes metadata (video file,
    first timestamp) exactly as a LeRobot v3 reader must place it."""
    episodes = pq.ParquetDataset(robot / "meta/episodes").read().to_pylist()
    fps = json.loads((robot / "meta/info.json").read_text())["fps"]
    frames: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    for camera in CAMERAS:
        decoded: dict[tuple[int, int], list[np.ndarray]] = {}
        frames[camera] = {}
        for episode in episodes:
            key = (episode[f"videos/{camera}/chunk_index"], episode[f"videos/{camera}/file_index"])
            if key not in decoded:
                path = robot / f"videos/{camera}/chunk-{key[0]:03d}/file-{key[1]:03d}.mp4"
                with av.open(str(path)) as container:
                    decoded[key] = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            first = round(episode[f"videos/{camera}/from_timestamp"] * fps)
            for k in range(episode["length"]):
                frames[camera][(episode["episode_index"], k)] = decoded[key][first + k]
    return frames


def test_lerobot_default_backend_reads_frames_and_tokens(robot, parquet, pyav_frames):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.import_utils import get_safe_default_video_backend

    assert get_safe_default_video_backend() == "torchcodec"
    dataset = LeRobotDataset("local/stock", root=robot)  # no video_backend: what a user gets
    assert dataset._video_backend == "torchcodec"  # lerobot keeps the choice in a private field only
    assert len(dataset) == len(parquet)
    for index in range(len(dataset)):
        item = dataset[index]
        row = parquet[index]
        assert (int(item["episode_index"]), int(item["frame_index"])) == (row["episode_index"], row["frame_index"])
        for column in TOKENS:
            assert item[column].tolist() == row[column], (index, column)
        for camera in CAMERAS:
            pixels = (item[camera].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            expected = pyav_frames[camera][(row["episode_index"], row["frame_index"])]
            np.testing.assert_array_equal(pixels, expected, err_msg=f"{camera} at index {index}")


def test_ray_read_lerobot_reads_frames_and_tokens(robot, parquet, pyav_frames, ray_local):
    import ray

    rows = ray.data.read_lerobot(str(robot)).take_all()
    assert sorted(r["index"] for r in rows) == sorted(parquet)
    for row in rows:
        expected = parquet[row["index"]]
        assert (row["episode_index"], row["frame_index"]) == (expected["episode_index"], expected["frame_index"])
        for column in TOKENS:
            assert np.asarray(row[column]).tolist() == expected[column], (row["index"], column)
        for camera in CAMERAS:
            frame = pyav_frames[camera][(row["episode_index"], row["frame_index"])]
            np.testing.assert_array_equal(row[camera], frame, err_msg=f"{camera} at index {row['index']}")
