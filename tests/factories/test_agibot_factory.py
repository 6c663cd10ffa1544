"""The AgiBot World factory writes the release's on-disk format (FORMATS.md) with its quirks, and
its values are what it promises. No real sample exists, so the spec is the reference here."""

from __future__ import annotations

import json
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
from PIL import Image

from clap_data.factories.agibot import (
    ALL_CAMERAS,
    COMMAND_LEAD_FRAMES,
    NOMINAL_OPEN_MM,
    expected_gray_level,
    main,
    plan_agibot_episodes,
    write_agibot_dataset,
)
from clap_data.video import VideoError, probe_video

TASKS = {327: (40, 36, 38, 44), 352: (30,), 380: (20,)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_agibot_dataset(tmp_path_factory.mktemp("agibot") / "tree", tasks=TASKS, seed=3, orphan_episodes=1)


@pytest.fixture(scope="module")
def specs():
    return plan_agibot_episodes(TASKS, seed=3, orphan_episodes=1)


def h5_arrays(root: Path, spec) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(root / "proprio_stats" / spec.relative_dir / "proprio_stats.h5") as h5:
        h5.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def decode(path: Path) -> tuple[str, list[float], list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return stream.codec_context.name, [float(stream.average_rate)], frames


def test_tree_layout(tree, specs):
    assert sorted(p.name for p in (tree / "task_info").iterdir()) == ["task_327.json", "task_352.json", "task_380.json"]
    for spec in specs:
        episode = f"{spec.task_id}/{spec.episode_id}"
        assert (tree / "proprio_stats" / episode / "proprio_stats.h5").is_file()
        assert sorted(p.stem for p in (tree / "observations" / episode / "videos").iterdir()) == sorted(ALL_CAMERAS)
        depth = sorted((tree / "observations" / episode / "depth").iterdir())
        assert [p.name for p in depth] == [f"head_depth_{i:06d}.png" for i in range(spec.length)]
        assert sorted(p.name for p in (tree / "parameters" / episode / "camera").iterdir())[0] == "hand_left_extrinsic_params.json"


def test_depth_is_uint16_millimetres(tree, specs):
    with Image.open(tree / "observations" / specs[0].relative_dir / "depth/head_depth_000003.png") as image:
        depth = np.asarray(image)
    assert depth.dtype == np.uint16 and depth.shape == (32, 32) and (depth == 815).all()


def test_task_info_entries_have_half_open_segments_with_gaps(tree, specs):
    entries = json.loads((tree / "task_info/task_327.json").read_text())
    assert [e["episode_id"] for e in entries] == [s.episode_id for s in specs if s.task_id == 327 and s.listed]
    entry = entries[0]
    assert set(entry) == {"episode_id", "task_name", "init_scene_text", "label_info"}
    segments = entry["label_info"]["action_config"]
    assert set(segments[0]) == {"start_frame", "end_frame", "action_text", "skill"}
    starts, ends = [s["start_frame"] for s in segments], [s["end_frame"] for s in segments]
    assert starts[0] > 0 and ends[-1] < specs[0].length  # unlabelled start and end
    assert starts[1] > ends[0]  # a gap in the middle
    assert starts[2] == ends[1]  # half-open: adjacent segments share the boundary value


def test_h5_has_every_documented_dataset_and_empty_placeholders(tree, specs):
    spec = specs[0]
    n = spec.length
    arrays = h5_arrays(tree, spec)
    shapes = {
        "timestamp": (n,), "state/end/position": (n, 2, 3), "state/end/orientation": (n, 2, 4),
        "state/joint/position": (n, 14), "state/joint/current_value": (n, 14), "state/effector/position": (n, 2),
        "state/head/position": (n, 2), "state/waist/position": (n, 2), "action/end/position": (n, 2, 3),
        "action/end/orientation": (n, 2, 4), "action/effector/position": (n, 2), "action/joint/position": (n, 14),
        "action/head/position": (n, 2), "action/waist/position": (n, 2),
        "action/end/index": (len(spec.end_index),), "action/effector/index": (len(spec.effector_index),),
    }
    assert {name: arrays[name].shape for name in shapes} == shapes
    assert arrays["timestamp"].dtype == np.int64 and arrays["action/end/index"].dtype == np.int64
    assert arrays["state/joint/effort"].shape == (0,) and arrays["action/robot/velocity"].shape == (0,)
    assert arrays["action/head/index"].shape == (0,)


def test_timestamps_are_int64_ns_at_30_hz_with_jitter(tree, specs):
    steps = np.diff(h5_arrays(tree, specs[0])["timestamp"])
    assert (steps > 0).all()
    assert abs(steps.mean() - 1e9 / 30) < 1e6 and steps.std() > 1e5


def test_action_layouts_and_sparse_indices(tree, specs):
    listed = [s for s in specs if s.task_id == 327 and s.listed]
    assert [s.action_layout for s in listed] == ["by_frame", "short", "paired", "unindexed"]
    for spec in listed:
        arrays = h5_arrays(tree, spec)
        n, rows = spec.length, len(arrays["action/end/position"])
        if spec.action_layout == "by_frame":
            assert rows == n and 0 < len(arrays["action/end/index"]) < n
            unused = np.setdiff1d(np.arange(n), arrays["action/end/index"])
            assert (arrays["action/end/orientation"][unused] == 0).all()  # rows outside the index are unset
        elif spec.action_layout == "short":
            assert rows == n - 5 and arrays["action/end/index"].max() >= rows  # the index reaches past the rows
        elif spec.action_layout == "paired":
            assert rows == len(arrays["action/end/index"]) < n
        else:
            assert rows == n - 3 and arrays["action/end/index"].shape == (0,) == arrays["action/effector/index"].shape


def test_commands_lead_the_state(tree, specs):
    spec = specs[0]  # by_frame: row f holds the command of frame f
    arrays = h5_arrays(tree, spec)
    frame = spec.end_index[0]
    np.testing.assert_allclose(arrays["action/end/position"][frame], arrays["state/end/position"][frame + COMMAND_LEAD_FRAMES])


def test_quaternions_are_xyzw_flip_sign_and_are_not_exactly_unit(tree, specs):
    quat = h5_arrays(tree, specs[0])["state/end/orientation"]
    norms = np.linalg.norm(quat, axis=-1)
    assert np.abs(norms - 1).max() < 1e-3 and np.abs(norms - 1).max() > 1e-6
    # Frame 3 is stored with the opposite sign of its neighbours: the dot product turns negative.
    assert (np.sum(quat[3] * quat[2], axis=-1) < 0).all() and (np.sum(quat[2] * quat[1], axis=-1) > 0).all()


def test_grippers_open_past_the_nominal_width_and_commands_are_0_to_1(tree, specs):
    arrays = h5_arrays(tree, specs[0])
    assert arrays["state/effector/position"].max() > NOMINAL_OPEN_MM
    assert arrays["state/effector/position"].min() < 40
    commands = arrays["action/effector/position"]
    assert commands.min() == 0.0 and commands.max() == 1.0


def test_videos_are_av1_30fps_one_frame_per_row_with_the_promised_levels(tree, specs):
    spec = specs[1]
    for camera in ("head_color", "hand_right_color", "back_left_fisheye_color"):
        codec, rates, frames = decode(tree / "observations" / spec.relative_dir / "videos" / f"{camera}.mp4")
        assert codec in ("libdav1d", "av1") and rates == [30.0]
        assert len(frames) == spec.length and frames[0].shape == (32, 32, 3)
        levels = [frame.mean() for frame in frames]
        expected = [expected_gray_level(spec.episode_id, i, camera) for i in range(spec.length)]
        np.testing.assert_allclose(levels, expected, atol=6)


def test_h264_option(tmp_path):
    root = write_agibot_dataset(tmp_path / "t", tasks={327: (20,)}, codec="h264", fisheye=False, depth=False, video_size=(48, 32))
    codec, _, frames = decode(root / "observations/327/632700/videos/head_color.mp4")
    assert codec == "h264" and len(frames) == 20 and frames[0].shape == (32, 48, 3)
    assert not (root / "observations/327/632700/depth").exists()
    assert not (root / "observations/327/632700/videos/head_left_fisheye_color.mp4").exists()


def test_known_bad_tasks_carry_their_defect(tree, specs):
    too_long = next(s for s in specs if s.task_id == 352)
    arrays = h5_arrays(tree, too_long)
    assert len(arrays["action/end/position"]) == too_long.length + 3 == len(arrays["action/effector/position"])
    corrupt = next(s for s in specs if s.task_id == 380)
    with pytest.raises(VideoError):  # what the ingest's video check makes of it
        probe_video(tree / "observations" / corrupt.relative_dir / "videos/head_color.mp4")
    assert len(decode(tree / "observations" / corrupt.relative_dir / "videos/hand_left_color.mp4")[2]) == corrupt.length


def test_orphan_episode_has_files_but_no_entry(tree, specs):
    orphan = [s for s in specs if not s.listed]
    assert len(orphan) == 1 and orphan[0].task_id == 327
    assert (tree / "proprio_stats" / orphan[0].relative_dir / "proprio_stats.h5").is_file()
    ids = [e["episode_id"] for e in json.loads((tree / "task_info/task_327.json").read_text())]
    assert orphan[0].episode_id not in ids


def test_dexterous_hand_variant(tmp_path):
    root = write_agibot_dataset(tmp_path / "t", tasks={390: (20,)}, dexterous_tasks=[390], fisheye=False, depth=False)
    with h5py.File(root / "proprio_stats/390/639000/proprio_stats.h5") as h5:
        assert h5["state/effector/position"].shape == (20, 12) and h5["action/effector/position"].shape == (20, 12)


def test_deterministic_per_seed(tmp_path):
    a = write_agibot_dataset(tmp_path / "a", tasks={327: (20,)}, fisheye=False, depth=False)
    b = write_agibot_dataset(tmp_path / "b", tasks={327: (20,)}, fisheye=False, depth=False)
    spec = plan_agibot_episodes({327: (20,)})[0]
    first, second = h5_arrays(a, spec), h5_arrays(b, spec)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    other = h5_arrays(write_agibot_dataset(tmp_path / "c", tasks={327: (20,)}, seed=1, fisheye=False, depth=False), spec)
    assert not np.array_equal(first["state/end/position"], other["state/end/position"])


def test_bad_arguments_and_refusing_to_overwrite(tmp_path):
    with pytest.raises(ValueError, match="lengths must be ints >= 16"):
        plan_agibot_episodes({327: (8,)})
    with pytest.raises(ValueError, match="video_size must be even"):
        write_agibot_dataset(tmp_path / "x", video_size=(15, 16))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no AgiBot tree"):
        write_agibot_dataset(tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy/keep.txt").read_text() == "mine"


def test_main_writes_a_tree(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--tasks", "327:20;352:18", "--no-fisheye", "--no-depth", "--codec", "h264"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert (tmp_path / "cli/task_info/task_352.json").is_file()
    assert (tmp_path / "cli/proprio_stats/352/635200/proprio_stats.h5").is_file()
    assert main([str(tmp_path / "cli"), "--tasks", "327:20", "--no-fisheye", "--no-depth"]) == 0  # regenerates in place
    assert not (tmp_path / "cli/task_info/task_352.json").exists()
