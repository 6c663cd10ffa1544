"""The LeRobot factory writes what lerobot writes, with the quirks it promises.

The readers' tests trust these datasets, so the layout is checked against lerobot itself: stock
lerobot 0.6.1 loads the v3.0 output and re-writes it with its own writer into the same schemas,
and lerobot's v2.1→v3.0 converter accepts the v2.1 output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets import LeRobotDataset

from clap_data.factories.lerobot import (
    DROID_FPS,
    bimanual_pose_names,
    expected_gray_level,
    plan_episodes,
    video_keys,
    write_lerobot_dataset,
)

LENGTHS = (12, 9, 14, 11)


@pytest.fixture(scope="module")
def droid_v3(tmp_path_factory) -> Path:
    return write_lerobot_dataset(tmp_path_factory.mktemp("droid") / "v3", episode_lengths=LENGTHS, video_size=(32, 32))


@pytest.fixture(scope="module")
def droid_v21(tmp_path_factory) -> Path:
    return write_lerobot_dataset(tmp_path_factory.mktemp("droid") / "v21", version="v2.1", episode_lengths=LENGTHS[:2], video_size=(32, 32))


def _info(root: Path) -> dict:
    return json.loads((root / "meta/info.json").read_text())


def _frame_for_lerobot(item: dict, features: dict) -> dict:
    """One item read by lerobot, as ``add_frame`` takes it back."""
    frame = {"task": item["task"]}
    for key, ft in features.items():
        if key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            continue
        value = item[key]
        if ft["dtype"] == "video":
            frame[key] = (value * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        elif ft["dtype"] == "string":
            frame[key] = value
        else:
            frame[key] = np.asarray(value.numpy(), dtype=ft["dtype"]).reshape(ft["shape"])
    return frame


def test_v3_layout_equals_what_lerobot_writes(tmp_path):
    ours = write_lerobot_dataset(tmp_path / "ours", episode_lengths=(6,), video_size=(32, 32))
    loaded = LeRobotDataset("local/ours", root=ours, video_backend="pyav")
    features = {k: {kk: vv for kk, vv in ft.items() if kk != "info"} for k, ft in _info(ours)["features"].items()}
    user_features = {k: {**ft, "shape": tuple(ft["shape"])} for k, ft in features.items()
                     if k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")}
    theirs_root = tmp_path / "theirs"
    theirs = LeRobotDataset.create(
        "local/theirs", fps=DROID_FPS, root=theirs_root, features=user_features, robot_type="Franka", video_backend="pyav"
    )
    for i in range(len(loaded)):
        theirs.add_frame(_frame_for_lerobot(loaded[i], features))
    theirs.save_episode()
    theirs.finalize()

    a, b = _info(ours), _info(theirs_root)
    assert list(a) == list(b)
    assert list(a["features"]) == list(b["features"])
    for key, ft in b["features"].items():
        if ft["dtype"] == "video":
            assert a["features"][key]["info"] == ft["info"], key
        else:
            assert a["features"][key] == ft, key
    assert {k: v for k, v in a.items() if k != "features"} == {k: v for k, v in b.items() if k != "features"}
    data_a, data_b = (pq.read_schema(r / "data/chunk-000/file-000.parquet") for r in (ours, theirs_root))
    assert data_a.equals(data_b)
    hf_a, hf_b = (json.loads(s.metadata[b"huggingface"]) for s in (data_a, data_b))
    assert hf_a["info"] == hf_b["info"]  # lerobot's also carries a random datasets fingerprint
    assert pq.read_schema(ours / "meta/tasks.parquet").equals(pq.read_schema(theirs_root / "meta/tasks.parquet"), check_metadata=True)
    ours_meta, theirs_meta = (pq.read_schema(r / "meta/episodes/chunk-000/file-000.parquet") for r in (ours, theirs_root))
    assert ours_meta.names == theirs_meta.names
    assert ours_meta.equals(theirs_meta)
    stats_a, stats_b = (json.loads((r / "meta/stats.json").read_text()) for r in (ours, theirs_root))
    assert {k: sorted(v) for k, v in stats_a.items()} == {k: sorted(v) for k, v in stats_b.items()}
    for key in ("observation.state.cartesian_position", "action.original", "is_episode_successful"):
        np.testing.assert_allclose(stats_a[key]["mean"], stats_b[key]["mean"], rtol=1e-6)


def test_v3_rolls_files_and_locates_episodes_like_lerobot(droid_v3):
    assert sorted(p.name for p in (droid_v3 / "data/chunk-000").iterdir()) == ["file-000.parquet", "file-001.parquet"]
    assert len(list((droid_v3 / "meta/episodes/chunk-000").iterdir())) == 2
    wrist = droid_v3 / "videos/observation.images.wrist_left/chunk-000"
    assert sorted(p.name for p in wrist.iterdir()) == ["file-000.mp4", "file-001.mp4"]  # 3 episodes per video file
    episodes = pq.read_table(droid_v3 / "meta/episodes/chunk-000/file-001.parquet").to_pylist()
    episodes = pq.read_table(droid_v3 / "meta/episodes/chunk-000/file-000.parquet").to_pylist() + episodes
    key = "videos/observation.images.wrist_left"
    assert [e["data/file_index"] for e in episodes] == [0, 0, 1, 1]
    assert [e[f"{key}/file_index"] for e in episodes] == [0, 0, 0, 1]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 12), (12, 21), (21, 35), (35, 46)]
    # from_timestamp is lerobot's running sum of float durations: near, not always exactly, a frame.
    starts = [e[f"{key}/from_timestamp"] * DROID_FPS for e in episodes]
    assert [round(s) for s in starts] == [0, 12, 21, 0]
    assert max(abs(s - round(s)) for s in starts) < 1e-9
    assert episodes[2][f"{key}/from_timestamp"] == pytest.approx(21 / DROID_FPS, abs=1e-12)
    data = pq.read_table(droid_v3 / "data/chunk-000/file-001.parquet")
    assert data.column("index").to_pylist() == list(range(21, 46))
    assert pq.ParquetFile(droid_v3 / "data/chunk-000/file-001.parquet").metadata.num_row_groups == 2  # one per episode


@pytest.mark.parametrize("codec, name", [("av1", "av1"), ("h264", "h264")])
def test_videos_have_gop_2_and_episodes_start_on_keyframes(tmp_path, codec, name):
    root = write_lerobot_dataset(tmp_path / "ds", episode_lengths=(7, 6), video_size=(32, 32), codec=codec)
    path = root / "videos/observation.images.exterior_1_left/chunk-000/file-000.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in (name, "libdav1d")
        packets = sorted((p for p in container.demux(stream) if p.size), key=lambda p: p.pts)
    keyframes = [p.is_keyframe for p in packets]
    assert len(keyframes) == 13
    assert keyframes[0] and keyframes[7]  # each episode starts on a keyframe
    assert not any(a == b is False for a, b in zip(keyframes, keyframes[1:], strict=False))  # GOP <= 2
    if codec == "av1":
        assert keyframes == [i % 2 == 0 for i in range(7)] + [i % 2 == 0 for i in range(6)]
    with av.open(str(path)) as container:
        levels = [f.to_ndarray(format="rgb24").mean() for f in container.decode(video=0)]
    expected = [expected_gray_level(0, i, 1) for i in range(7)] + [expected_gray_level(1, i, 1) for i in range(6)]
    np.testing.assert_allclose(levels, expected, atol=4)
    assert _info(root)["features"]["observation.images.exterior_1_left"]["info"]["video.codec"] == name


def test_droid_quirks_are_present(droid_v3):
    info = _info(droid_v3)
    assert info["robot_type"] == "Franka" and info["fps"] == 15
    assert [k for k, ft in info["features"].items() if ft["dtype"] == "video"] == list(video_keys("droid"))
    assert info["features"]["observation.state.cartesian_position"]["names"] == {"axes": ["x", "y", "z", "roll", "pitch", "yaw"]}
    table = pq.read_table(droid_v3 / "data/chunk-000/file-000.parquet")
    assert str(table.schema.field("observation.state.gripper_position").type) == "float"  # shape (1,) as a scalar
    assert str(table.schema.field("observation.state.cartesian_position").type) == "fixed_size_list<element: float>[6]"
    rows = pq.read_table(droid_v3 / "data/chunk-000/file-000.parquet").to_pandas()
    roll = np.stack(rows["observation.state.cartesian_position"])[:, 3]
    assert (np.abs(roll) > 2.5).all() and (roll > 0).any() and (roll < 0).any()  # near ±π, wrapping
    grip = rows["observation.state.gripper_position"].to_numpy()
    assert grip.min() >= 0.0 and grip.max() <= 1.0 and grip.max() > 0.5
    state = np.stack(rows["observation.state.cartesian_position"])
    command = np.stack(rows["action.cartesian_position"])
    assert not np.allclose(command[:-1], state[1:], atol=1e-3)  # the commanded pose is not the next state
    tasks = pq.read_table(droid_v3 / "meta/tasks.parquet").column("task").to_pylist()
    assert "" in tasks  # an empty instruction is an empty task, as the port stores it
    specs = plan_episodes("droid", LENGTHS)
    assert [s.language[0] == "" for s in specs] == [False, True, False, False]
    assert "" in specs[2].language and [s.successful for s in specs] == [True, True, False, True]
    last = pq.read_table(droid_v3 / "data/chunk-000/file-001.parquet").to_pandas()
    for spec in specs[2:]:
        episode = last[last["episode_index"] == spec.episode_index]
        assert set(episode["language_instruction_2"]) == {spec.language[1]}
        assert set(episode["is_episode_successful"]) == {spec.successful}


def test_legacy_droid_port_names_its_cameras_the_old_way(tmp_path):
    root = write_lerobot_dataset(tmp_path / "legacy", flavour="droid_legacy", episode_lengths=(4,), video_size=(32, 32))
    keys = [k for k, ft in _info(root)["features"].items() if ft["dtype"] == "video"]
    assert keys == [
        "observation.images.wrist_image_left", "observation.images.exterior_image_1_left", "observation.images.exterior_image_2_left",
    ]
    assert (root / "videos/observation.images.wrist_image_left/chunk-000/file-000.mp4").is_file()


def test_bimanual_poses_are_rotations_in_the_requested_convention(tmp_path):
    for rotation, width in (("quat_wxyz", 4), ("rot6d_rows", 6), ("matrix", 9)):
        root = write_lerobot_dataset(tmp_path / rotation, flavour="bimanual", rotation=rotation, episode_lengths=(8,), video_size=(32, 32))
        names = _info(root)["features"]["observation.state"]["names"]
        assert names == bimanual_pose_names(rotation) and len(names) == 2 * (3 + width + 1)
        state = np.stack(pq.read_table(root / "data/chunk-000/file-000.parquet").column("observation.state").to_pylist())
        right = state[:, width + 7 : 2 * width + 7]  # left arm: 3 + width + 1 values, then the right xyz
        if rotation == "quat_wxyz":
            np.testing.assert_allclose(np.linalg.norm(right, axis=1), 1.0, atol=1e-6)
        elif rotation == "matrix":
            m = right.reshape(-1, 3, 3)
            np.testing.assert_allclose(m @ m.transpose(0, 2, 1), np.broadcast_to(np.eye(3), m.shape), atol=1e-6)
        else:
            np.testing.assert_allclose(np.einsum("ij,ij->i", right[:, :3], right[:, 3:]), 0.0, atol=1e-6)
        grippers = state[:, [3 + width, 7 + 2 * width]]
        assert grippers.max() > 100.0 and grippers.min() < 50.0  # opening %, past fully open at times


def test_v21_layout_is_accepted_by_lerobots_converter(droid_v21, tmp_path):
    from lerobot.scripts.convert_dataset_v21_to_v30 import convert_dataset

    info = _info(droid_v21)
    assert info["codebase_version"] == "v2.1" and info["total_videos"] == 6
    assert (droid_v21 / "videos/chunk-000/observation.images.wrist_left/episode_000001.mp4").is_file()
    stats = [json.loads(line) for line in (droid_v21 / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert sorted(stats[0]["stats"]["observation.state.cartesian_position"]) == ["count", "max", "mean", "min", "std"]
    copy = tmp_path / "converted"
    shutil.copytree(droid_v21, copy)
    convert_dataset(repo_id="local/converted", root=copy, push_to_hub=False)
    dataset = LeRobotDataset("local/converted", root=copy, video_backend="pyav")
    assert dataset.meta.total_episodes == 2 and len(dataset) == sum(LENGTHS[:2])
    source = pq.read_table(droid_v21 / "data/chunk-000/episode_000001.parquet").to_pylist()
    item = dataset[LENGTHS[0] + 5]
    assert item["episode_index"].item() == 1 and item["frame_index"].item() == 5
    np.testing.assert_allclose(item["observation.state.cartesian_position"].numpy(), source[5]["observation.state.cartesian_position"])
    level = item["observation.images.exterior_1_left"].mean().item() * 255
    assert abs(level - expected_gray_level(1, 5, 1)) < 4


def test_same_seed_same_rows(tmp_path, droid_v21):
    again = write_lerobot_dataset(tmp_path / "again", version="v2.1", episode_lengths=LENGTHS[:2], video_size=(32, 32))
    for name in ("episode_000000.parquet", "episode_000001.parquet"):
        assert pq.read_table(again / "data/chunk-000" / name).equals(pq.read_table(droid_v21 / "data/chunk-000" / name))


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="version"):
        write_lerobot_dataset(tmp_path / "a", version="v2.0")
    with pytest.raises(ValueError, match="rotation"):
        write_lerobot_dataset(tmp_path / "b", rotation="euler_XYZ")
    with pytest.raises(ValueError, match="length"):
        write_lerobot_dataset(tmp_path / "c", episode_lengths=(5, 1))
    with pytest.raises(ValueError, match="video_size"):
        write_lerobot_dataset(tmp_path / "d", video_size=(31, 32))
    (tmp_path / "e").mkdir()
    (tmp_path / "e/precious.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError):
        write_lerobot_dataset(tmp_path / "e", overwrite=True)
    assert (tmp_path / "e/precious.txt").exists()
