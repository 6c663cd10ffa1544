"""The Astribot factory writes the real sample's format, and its values are what it promises.

Ingester tests trust this factory when the real sample is absent, so every claim is checked
against the real files where they exist and against the factory's own contract otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_data.factories.astribot import (
    ASTRIBOT_FPS,
    PTS_PER_FRAME,
    VIDEO_TIME_BASE,
    expected_gray_level,
    plan_astribot_episodes,
    video_key,
    write_astribot_dataset,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REAL = SHARED / "fixtures" / "astribot_s1_dummy"
REAL_PARQUET = REAL / "data" / "chunk-000" / "episode_000000.parquet"
LENGTHS = (40, 48)
CAMERAS = ("head", "left", "right")


def _real_or_skip() -> Path:
    if not REAL_PARQUET.is_file():
        pytest.skip(f"real Astribot sample not found at {REAL}")
    return REAL


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_astribot_dataset(tmp_path_factory.mktemp("astribot") / "ds", episode_lengths=LENGTHS, seed=3)


def _episode(root: Path, episode_index: int) -> dict[str, np.ndarray]:
    """Columns as numpy: list columns as 2-D arrays, scalars keep their Arrow dtype (float32 stays)."""
    table = pq.read_table(root / f"data/chunk-000/episode_{episode_index:06d}.parquet")
    return {
        name: np.array(col.to_pylist()) if pa.types.is_list(col.type) else col.to_numpy()
        for name, col in zip(table.column_names, table.columns, strict=True)
    }


def _video(root: Path, episode_index: int, camera: str) -> Path:
    return root / f"videos/chunk-000/{video_key(camera)}/episode_{episode_index:06d}.mp4"


def _decode(codes: np.ndarray) -> str:
    """Text of a zero-padded ASCII code array (``prompt`` / ``finegrained_prompt``)."""
    return bytes(int(c) for c in codes if c).decode("ascii")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- Same format as the real sample ----------------------------------------------------------


def test_parquet_schema_equals_real(dataset: Path) -> None:
    real = pq.read_schema(_real_or_skip() / "data/chunk-000/episode_000000.parquet")
    ours = pq.read_schema(dataset / "data/chunk-000/episode_000000.parquet")
    assert ours.names == real.names
    assert [f.type for f in ours] == [f.type for f in real]
    assert ours.equals(real, check_metadata=False)


def test_info_json_matches_real(dataset: Path) -> None:
    real = _read_json(_real_or_skip() / "meta/info.json")
    ours = _read_json(dataset / "meta/info.json")
    assert list(ours) == list(real)
    assert list(ours["features"]) == list(real["features"])
    for name, feat in real["features"].items():
        if feat["dtype"] == "video":
            assert ours["features"][name]["names"] == feat["names"]
            assert list(ours["features"][name]["info"]) == list(feat["info"])
            continue
        assert ours["features"][name] == feat, name  # dtype, shape and names, quirks included
    for key in ("codebase_version", "robot_type", "fps", "chunks_size", "data_path", "video_path"):
        assert ours[key] == real[key]
    assert _read_json(dataset / "meta/modality.json") == _read_json(REAL / "meta/modality.json")
    real_extra_sections = list(_read_json(REAL / "meta/extra_data.json"))
    assert list(_read_json(dataset / "meta/extra_data.json")) == real_extra_sections


def test_quirks_of_the_real_format_are_kept(dataset: Path) -> None:
    info = _read_json(dataset / "meta/info.json")
    assert info["features"]["prompt"]["shape"] == [512]
    assert info["features"]["task_index"]["shape"] == [2]
    assert "bboxes" not in info["features"] and "keypoints" not in info["features"]
    ep = _episode(dataset, 0)
    assert ep["prompt"].shape == (LENGTHS[0], 128)
    assert ep["bboxes"].shape == (LENGTHS[0], 50) and ep["keypoints"].shape == (LENGTHS[0], 20)
    assert ep["waypoints_state"].shape == (LENGTHS[0], 4)
    assert ep["waypoints_command"].shape == (LENGTHS[0], 160)
    grippers = np.concatenate(
        [_episode(dataset, e)[f"cartesian_so3_dict.cartesian_pose_{k}"][:, [18, 28]].ravel()
         for e in range(len(LENGTHS)) for k in ("state", "command")]
    )
    assert grippers.min() < 0.0 and grippers.max() > 100.0  # slightly out of 0..100, as in the real data
    assert grippers.min() >= -3.0 and grippers.max() <= 101.0


# --- Metadata consistent with the rows -------------------------------------------------------


def test_meta_counts_and_global_index(dataset: Path) -> None:
    info = _read_json(dataset / "meta/info.json")
    assert info["total_episodes"] == len(LENGTHS)
    assert info["total_frames"] == sum(LENGTHS)
    assert info["total_videos"] == len(LENGTHS) * len(CAMERAS)
    assert info["splits"] == {"train": f"0:{len(LENGTHS)}"}
    episodes = _read_jsonl(dataset / "meta/episodes.jsonl")
    assert [e["length"] for e in episodes] == list(LENGTHS)
    assert all(set(e) == {"episode_index", "tasks", "objects", "length", "episode_chunk"} for e in episodes)
    indexes = []
    for e, length in enumerate(LENGTHS):
        ep = _episode(dataset, e)
        assert len(ep["index"]) == length
        assert (ep["episode_index"] == e).all()
        assert (ep["frame_index"] == np.arange(length)).all()
        expected_ts = np.arange(length, dtype=np.float32) / np.float32(ASTRIBOT_FPS)
        assert ep["timestamp"].dtype == np.float32 and np.array_equal(ep["timestamp"], expected_ts)
        indexes.append(ep["index"])
    assert np.array_equal(np.concatenate(indexes), np.arange(sum(LENGTHS)))


def test_tasks_prompts_and_subtasks_agree(dataset: Path) -> None:
    tasks = {t["task_index"]: t["task"] for t in _read_jsonl(dataset / "meta/tasks.jsonl")}
    assert list(tasks) == list(range(len(tasks)))
    assert list(tasks.values()) == sorted(tasks.values())  # the real file lists them alphabetically
    episodes = _read_jsonl(dataset / "meta/episodes.jsonl")
    specs = plan_astribot_episodes(LENGTHS, seed=3)
    for spec, meta in zip(specs, episodes, strict=True):
        ep = _episode(dataset, spec.episode_index)
        assert meta["tasks"] == [spec.coarse_task]
        assert {tasks[i] for i in ep["task_index"][:, 0]} == {spec.coarse_task}
        assert {_decode(p) for p in ep["prompt"]} == {spec.coarse_task}
        assert 2 <= len(spec.subtasks) <= 3
        fine = ep["task_index"][:, 1]
        assert len(np.unique(fine)) == len(spec.subtasks)
        for st in spec.subtasks:
            rows = slice(st.start, st.end + 1)
            assert {tasks[i] for i in fine[rows]} == {st.text}
            assert {_decode(p) for p in ep["finegrained_prompt"][rows]} == {st.text}
            frames = np.arange(st.start, st.end + 1)
            assert np.array_equal(ep["sub_task_index"][rows, 0], frames - st.start)
            assert np.array_equal(ep["sub_task_index"][rows, 1], st.end - frames)
    extra = _read_json(dataset / "meta/extra_data.json")["finegrained_prompt_reasoning"]
    for key in extra:
        lo, hi = (int(x) for x in key.split(", "))
        assert 0 <= lo <= hi < sum(LENGTHS)


# --- Values ------------------------------------------------------------------------------------


def test_rot6d_rows_are_orthonormal_and_poses_plausible(dataset: Path) -> None:
    for e in range(len(LENGTHS)):
        ep = _episode(dataset, e)
        for kind in ("state", "command"):
            cart = ep[f"cartesian_so3_dict.cartesian_pose_{kind}"]
            assert cart.shape == (LENGTHS[e], 34)
            for sl in (slice(3, 9), slice(12, 18), slice(22, 28)):  # torso, left, right
                r1, r2 = cart[:, sl][:, :3], cart[:, sl][:, 3:]
                np.testing.assert_allclose(np.linalg.norm(r1, axis=1), 1.0, atol=1e-9)
                np.testing.assert_allclose(np.linalg.norm(r2, axis=1), 1.0, atol=1e-9)
                np.testing.assert_allclose(np.sum(r1 * r2, axis=1), 0.0, atol=1e-9)
            for xyz in (cart[:, 9:12], cart[:, 19:22]):
                assert (xyz[:, 0] > 0.2).all() and (xyz[:, 0] < 0.8).all()
                assert (xyz[:, 2] > 0.6).all() and (xyz[:, 2] < 1.2).all()
                assert np.abs(np.diff(xyz, axis=0)).max() < 0.03  # smooth: < 3 cm per frame
        state = ep["cartesian_so3_dict.cartesian_pose_state"]
        command = ep["cartesian_so3_dict.cartesian_pose_command"]
        assert not np.allclose(state, command)
        joints_state = ep["joints_dict.joints_position_state"]
        assert joints_state.shape == (LENGTHS[e], 25)
        assert np.array_equal(joints_state[:, [14, 22]], state[:, [18, 28]])  # shared gripper values


def test_same_seed_same_data_and_episodes_do_not_depend_on_count(tmp_path: Path, dataset: Path) -> None:
    more = write_astribot_dataset(
        tmp_path / "more", episode_lengths=(*LENGTHS, 30), cameras=("left",), seed=3, with_extra_data=False
    )
    a = pq.read_table(dataset / "data/chunk-000/episode_000001.parquet")
    b = pq.read_table(more / "data/chunk-000/episode_000001.parquet")
    # Task ids are positions in the sorted task list, so they renumber when tasks are added.
    assert a.drop_columns(["task_index"]).equals(b.drop_columns(["task_index"]))
    assert not (more / "meta/extra_data.json").exists()


# --- Video -----------------------------------------------------------------------------------


def _check_video(path: Path, n_frames: int, episode_for_levels: int, camera: str) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "hevc"
        assert stream.time_base == VIDEO_TIME_BASE
        assert stream.average_rate == ASTRIBOT_FPS
        packets = [p for p in container.demux(stream) if p.size]
    assert len(packets) == n_frames
    assert [p.pts for p in packets] == [PTS_PER_FRAME * i for i in range(n_frames)]
    assert [p.dts for p in packets] == [p.pts for p in packets]  # no B-frames: decode order = display order
    assert [p.is_keyframe for p in packets] == [i % 2 == 0 for i in range(n_frames)]  # GOP 2
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == n_frames
    assert frames[0].format.name == "yuv420p"
    for i, frame in enumerate(frames):
        assert frame.pts == PTS_PER_FRAME * i
        level = frame.to_ndarray(format="rgb24").mean()
        assert abs(level - expected_gray_level(episode_for_levels, i, camera)) <= 6, (path, i, level)


def test_videos_decode_frame_aligned(dataset: Path) -> None:
    info = _read_json(dataset / "meta/info.json")
    for e, length in enumerate(LENGTHS):
        for cam in CAMERAS:
            feat = info["features"][video_key(cam)]
            assert feat["shape"] == [3, 48, 64] and feat["info"]["video.codec"] == "hevc"
            _check_video(_video(dataset, e, cam), length, e, cam)


def test_gray_levels_tell_frames_cameras_and_episodes_apart() -> None:
    levels = [expected_gray_level(0, i, "head") for i in range(300)]
    assert min(levels) >= 28 and max(levels) <= 227
    assert all(abs(a - b) > 12 for a, b in zip(levels, levels[1:]))  # neighbours far apart vs ±6
    assert len({expected_gray_level(0, 5, cam) for cam in CAMERAS}) == 3
    assert expected_gray_level(0, 5, "head") != expected_gray_level(1, 5, "head")


def test_reuse_videos_fifty_episodes_fast_and_valid(tmp_path: Path) -> None:
    lengths = [20 + (i % 3) for i in range(50)]
    start = time.perf_counter()
    root = write_astribot_dataset(
        tmp_path / "many", episode_lengths=lengths, cameras=("head", "left"), video_size=(32, 32), seed=1,
        reuse_videos=True,
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 15.0, f"50 episodes with reuse_videos took {elapsed:.1f}s"
    info = _read_json(root / "meta/info.json")
    assert (info["total_episodes"], info["total_frames"], info["total_videos"]) == (50, sum(lengths), 100)
    mp4s = sorted(root.glob("videos/chunk-000/*/episode_*.mp4"))
    assert len(mp4s) == 100
    # Copies, not hard links: corrupting one episode's file in a test must not touch the others.
    assert all(p.stat().st_nlink == 1 for p in mp4s)
    for e in (0, 3, 49):  # a template, a copy of it, the last episode
        ep = _episode(root, e)
        assert len(ep["index"]) == lengths[e] and ep["index"][0] == sum(lengths[:e])
        _check_video(_video(root, e, "left"), lengths[e], 0, "left")


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_astribot_dataset(tmp_path / "a", video_size=(63, 48))
    with pytest.raises(ValueError):
        write_astribot_dataset(tmp_path / "b", episode_lengths=(10, 0))
    with pytest.raises(ValueError):
        write_astribot_dataset(tmp_path / "c", cameras=("left", "left"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "precious.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError):
        write_astribot_dataset(tmp_path / "d", overwrite=True)
    assert (tmp_path / "d" / "precious.txt").exists()
