"""The AgiBot World adapter on its own (no Ray): canonical values against an independent scipy
implementation, the action fill rule with hand-written values, every quirk of FORMATS.md, and
every bad input with its category and message."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clap_data.errors import ClapDataError
from clap_data.factories.agibot import ACTION_LAYOUTS, plan_agibot_episodes, write_agibot_dataset
from clap_data.sources.agibot import KNOWN_BAD_TASKS, AgibotSource
from clap_data.sources.base import EpisodeRejected, VideoWindow
from tests.reference import copy_source

TASKS = {327: (40, 44, 36, 38), 352: (30,)}
H5 = "proprio_stats/327/632700/proprio_stats.h5"  # the first episode: N = 40, by_frame layout
N = 40


@pytest.fixture(scope="module")
def agibot_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agibot") / "src"
    return write_agibot_dataset(root, tasks=TASKS, fisheye=False, depth=False, orphan_episodes=1)


@pytest.fixture
def src(agibot_src, tmp_path) -> Path:
    """A writable copy to edit."""
    return copy_source(agibot_src, tmp_path / "src")


# --- independent reference (scipy, plain loops) --------------------------------------------------


def ref_arm(position: np.ndarray, quat_xyzw: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    euler = Rotation.from_quat(quat_xyzw).as_euler("xyz")  # scipy: scalar-last (xyzw), extrinsic xyz
    return np.concatenate([position, euler, gripper[:, None]], axis=1)


def ref_state(h5: h5py.File, open_mm: float = 120.0) -> np.ndarray:
    position, quat = h5["state/end/position"][()], h5["state/end/orientation"][()]
    grip = np.clip(1.0 - 2.0 * h5["state/effector/position"][()] / open_mm, -1.0, 1.0)
    return np.hstack([ref_arm(position[:, a], quat[:, a], grip[:, a]) for a in (0, 1)])


def ref_commands(rows: np.ndarray, index: np.ndarray, frames: int) -> dict[int, np.ndarray]:
    """frame -> command row, by the documented rule, written out case by case."""
    if index.size == 0:
        return {f: rows[f] for f in range(len(rows))}
    if len(rows) == len(index) and len(rows) != frames:
        return {int(f): rows[k] for k, f in enumerate(index)}
    return {int(f): rows[f] for f in index if f < len(rows)}


def ref_fill(commands: dict[int, np.ndarray], fallback: np.ndarray) -> np.ndarray:
    out, last = [], None
    for frame in range(len(fallback)):
        last = commands.get(frame, last)
        out.append(fallback[frame] if last is None else last)
    return np.array(out)


def ref_action(h5: h5py.File, state: np.ndarray) -> np.ndarray:
    frames = len(state)
    position, quat = h5["action/end/position"][()], h5["action/end/orientation"][()]
    end = ref_commands(np.concatenate([position.reshape(len(position), 6), quat.reshape(len(quat), 8)], 1),
                       h5["action/end/index"][()], frames)
    pose = {f: np.concatenate([ref_arm(v[None, 3 * a : 3 * a + 3], v[None, 6 + 4 * a : 10 + 4 * a], np.zeros(1))[0, :6] for a in (0, 1)])
            for f, v in end.items()}
    grip = {f: np.clip(2.0 * v - 1.0, -1, 1) for f, v in ref_commands(h5["action/effector/position"][()], h5["action/effector/index"][()], frames).items()}
    pose_cols, grip_cols = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12], [6, 13]
    action = state.copy()
    action[:, pose_cols] = ref_fill(pose, state[:, pose_cols])
    action[:, grip_cols] = ref_fill(grip, state[:, grip_cols])
    return action


def read(root: Path, h5_relative: str = H5, **options):
    source = AgibotSource(root, **options)
    ref = next(r for r in source.list_episodes() if r.path == h5_relative)
    return source.read_episode(ref)


def set_dataset(root: Path, name: str, values, h5_relative: str = H5) -> None:
    with h5py.File(root / h5_relative, "r+") as h5:
        if name in h5:
            del h5[name]
        h5.create_dataset(name, data=np.asarray(values))


def get(root: Path, name: str, h5_relative: str = H5) -> np.ndarray:
    with h5py.File(root / h5_relative, "r") as h5:
        return h5[name][()]


def reference_state(root: Path, h5_relative: str = H5) -> np.ndarray:
    with h5py.File(root / h5_relative, "r") as h5:
        return ref_state(h5)


# --- canonical values --------------------------------------------------------------------------


def test_every_episode_matches_the_reference_in_all_action_layouts(agibot_src):
    source = AgibotSource(agibot_src)
    good = [r for r in source.list_episodes() if r.details["task_id"] == 327]
    layouts = [s.action_layout for s in plan_agibot_episodes(TASKS, orphan_episodes=1) if s.task_id == 327 and s.listed]
    assert sorted(layouts) == sorted(ACTION_LAYOUTS)  # by_frame, short, paired, unindexed: one each
    for ref in good:
        episode = source.read_episode(ref)
        with h5py.File(agibot_src / ref.path) as h5:
            state = ref_state(h5)
            action = ref_action(h5, state)
        np.testing.assert_allclose(episode.state, state, atol=1e-6)
        np.testing.assert_allclose(episode.action, action, atol=1e-6)
        assert (episode.arm_mask == 1).all() and episode.arm_mask.shape == (len(state), 2)


def test_quaternions_are_xyzw_and_need_not_be_unit_or_positive(src):
    quat = np.tile([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)], (N, 2, 1))  # 90 deg about z, xyzw
    quat[5] *= -2.0  # same rotation: sign flipped, not unit length
    set_dataset(src, "state/end/orientation", quat)
    state = read(src).state
    np.testing.assert_allclose(state[:, 3:6], np.tile([0.0, 0.0, np.pi / 2], (N, 1)), atol=1e-9)
    np.testing.assert_allclose(state[:, 10:13], np.tile([0.0, 0.0, np.pi / 2], (N, 1)), atol=1e-9)


def test_state_gripper_mm_maps_open_to_minus_one_and_clamps(src):
    opening = np.zeros((N, 2))
    opening[:4, 0] = [0.0, 60.0, 120.0, 130.0]  # closed, half, fully open, beyond the stroke
    opening[:4, 1] = [30.0, 90.0, -2.0, 119.0]
    set_dataset(src, "state/effector/position", opening)
    state = read(src).state
    np.testing.assert_allclose(state[:4, 6], [1.0, 0.0, -1.0, -1.0])
    np.testing.assert_allclose(state[:4, 13], [0.5, -0.5, 1.0, 1 - 2 * 119 / 120])
    wide = read(src, gripper_open_mm=60.0).state
    np.testing.assert_allclose(wide[:4, 6], [1.0, -1.0, -1.0, -1.0])


def test_action_gripper_0_open_1_closed_maps_to_2g_minus_1(src):
    closed = np.zeros((N, 2))
    closed[:, 0] = np.linspace(0.0, 1.0, N)
    closed[:4, 1] = [0.0, 0.25, 1.0, 1.2]
    set_dataset(src, "action/effector/position", closed)
    set_dataset(src, "action/effector/index", np.zeros(0, np.int64))  # every row is a command
    action = read(src).action
    np.testing.assert_allclose(action[:, 6], np.linspace(-1.0, 1.0, N))
    np.testing.assert_allclose(action[:4, 13], [-1.0, -0.5, 1.0, 1.0])


# --- the fill rule, with hand-written values ----------------------------------------------------


def end_rows(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct recognisable end commands: row k puts the left arm at x = 10 + k, identity rotation."""
    position = np.zeros((count, 2, 3))
    position[:, 0, 0] = 10.0 + np.arange(count)
    orientation = np.tile([0.0, 0.0, 0.0, 1.0], (count, 2, 1))
    return position, orientation


def test_sparse_index_holds_the_last_command_and_uses_the_state_before_the_first(src):
    position, orientation = end_rows(N)
    set_dataset(src, "action/end/position", position)
    set_dataset(src, "action/end/orientation", orientation)
    set_dataset(src, "action/end/index", [3, 7])
    set_dataset(src, "action/effector/position", np.full((N, 2), 1.0))
    set_dataset(src, "action/effector/index", [5])
    state = reference_state(src)
    action = read(src).action
    np.testing.assert_allclose(action[:3, 0], state[:3, 0])  # before the first command: the state
    assert action[3:7, 0].tolist() == [13.0] * 4  # row 3, held until the next command
    assert action[7:, 0].tolist() == [17.0] * (N - 7)  # row 7, held to the end
    np.testing.assert_allclose(action[3:, 3:6], 0.0, atol=1e-12)  # identity rotation of the commands
    np.testing.assert_allclose(action[:5, [6, 13]], state[:5, [6, 13]])  # gripper: state until frame 5
    assert (action[5:, [6, 13]] == 1.0).all()


def test_rows_matching_the_index_length_are_the_commands_at_those_frames(src):
    position, orientation = end_rows(2)  # L = M = 2 < N: row k was sent at index[k]
    set_dataset(src, "action/end/position", position)
    set_dataset(src, "action/end/orientation", orientation)
    set_dataset(src, "action/end/index", [4, 30])
    state = reference_state(src)
    action = read(src).action
    np.testing.assert_allclose(action[:4, 0], state[:4, 0])
    assert action[4:30, 0].tolist() == [10.0] * 26
    assert action[30:, 0].tolist() == [11.0] * (N - 30)


def test_arrays_shorter_than_the_state_without_index_hold_their_last_row(src):
    position, orientation = end_rows(25)
    set_dataset(src, "action/end/position", position)
    set_dataset(src, "action/end/orientation", orientation)
    set_dataset(src, "action/end/index", np.zeros(0, np.int64))  # the release's empty placeholder
    action = read(src).action
    assert action[:25, 0].tolist() == [10.0 + k for k in range(25)]
    assert action[25:, 0].tolist() == [34.0] * (N - 25)


def test_index_frames_past_the_rows_are_not_commands(src):
    position, orientation = end_rows(20)  # L = 20, by frame (M = 3 differs from L)
    set_dataset(src, "action/end/position", position)
    set_dataset(src, "action/end/orientation", orientation)
    set_dataset(src, "action/end/index", [2, 10, 25])  # frame 25 has no row
    action = read(src).action
    assert action[2:10, 0].tolist() == [12.0] * 8
    assert action[10:, 0].tolist() == [20.0] * (N - 10)


def test_rows_that_are_not_commands_may_hold_anything(src):
    """The release leaves rows outside the index unset: NaN and zero quaternions there are ignored."""
    position, orientation = end_rows(N)
    position[0, 0, 0] = np.nan
    orientation[1] = 0.0
    set_dataset(src, "action/end/position", position)
    set_dataset(src, "action/end/orientation", orientation)
    set_dataset(src, "action/end/index", [3])
    assert read(src).action[3:, 0].tolist() == [13.0] * (N - 3)


def test_empty_action_datasets_mean_no_command_and_the_action_is_the_state(src):
    set_dataset(src, "action/end/position", np.zeros(0))
    set_dataset(src, "action/end/orientation", np.zeros(0))
    set_dataset(src, "action/effector/position", np.zeros(0))
    episode = read(src)
    np.testing.assert_allclose(episode.action, episode.state)
    assert (episode.extra["end_command_frames"], episode.extra["effector_command_frames"]) == (0, 0)


def test_a_missing_index_dataset_is_read_like_an_empty_one(src):
    delete_dataset(src, "action/end/index")
    position, orientation = end_rows(N)
    set_dataset(src, "action/end/position", position)
    set_dataset(src, "action/end/orientation", orientation)
    assert read(src).action[:, 0].tolist() == [10.0 + k for k in range(N)]


def test_commanded_frame_counts_are_kept(agibot_src):
    spec = plan_agibot_episodes(TASKS)[0]
    extra = read(agibot_src).extra
    assert extra["end_command_frames"] == len(spec.end_index) < N
    assert extra["effector_command_frames"] == len(spec.effector_index) < N


# --- language and extra facts --------------------------------------------------------------------


def test_instruction_subtasks_and_kept_labels(agibot_src):
    episode = read(agibot_src)
    entry = json.loads((agibot_src / "task_info/task_327.json").read_text())[0]
    assert episode.tasks == [entry["task_name"]] * N
    segments = entry["label_info"]["action_config"]
    expected = [""] * N
    for segment in segments:
        expected[segment["start_frame"] : segment["end_frame"]] = [segment["action_text"]] * (segment["end_frame"] - segment["start_frame"])
    assert episode.subtasks == expected
    assert episode.subtasks[0] == "" and episode.subtasks[-1] == ""  # unlabelled start and end
    assert "" in episode.subtasks[segments[0]["end_frame"] : segments[1]["start_frame"]]  # gap in the middle
    assert json.loads(episode.extra["action_config"]) == segments  # skills included
    assert {s["skill"] for s in json.loads(episode.extra["action_config"])} == {"Pick", "Place", "Retract"}
    assert episode.extra["init_scene_text"] == entry["init_scene_text"]
    assert episode.extra["task_id"] == 327


def test_every_episode_has_the_same_extra_keys(agibot_src, tmp_path):
    root = copy_source(agibot_src, tmp_path / "src")
    entries = json.loads((root / "task_info/task_327.json").read_text())
    del entries[1]["label_info"], entries[1]["init_scene_text"]
    (root / "task_info/task_327.json").write_text(json.dumps(entries))
    source = AgibotSource(root, tasks=[327])
    episodes = [source.read_episode(ref) for ref in source.list_episodes()]
    assert len({tuple(sorted(e.extra)) for e in episodes}) == 1
    assert episodes[1].subtasks == [""] * 44 and episodes[1].extra["action_config"] == "[]"
    assert episodes[1].extra["init_scene_text"] == ""


def edit_entry(root: Path, edit: Callable[[dict], None]) -> None:
    path = root / "task_info/task_327.json"
    entries = json.loads(path.read_text())
    edit(entries[0])
    path.write_text(json.dumps(entries))


def test_segments_reaching_past_the_episode_are_clipped(src):
    edit_entry(src, lambda e: e["label_info"]["action_config"].append(
        {"start_frame": 38, "end_frame": 60, "action_text": "wave", "skill": "Wave"}))
    episode = read(src)
    assert episode.subtasks[38:] == ["wave", "wave"] and len(episode.subtasks) == N


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda e: e["label_info"]["action_config"].append({"start_frame": 5, "end_frame": 9, "action_text": "x", "skill": "X"}),
         "action_config segments [1, 13) and [5, 9) overlap"),
        (lambda e: e["label_info"]["action_config"][0].update(end_frame=1), "action_config segment 0 [1, 1) is empty or reversed"),
        (lambda e: e["label_info"]["action_config"][0].update(start_frame=-5),
         "task file task_info/task_327.json: episode 632700 action_config segment 0 [-5, 13) starts at frame -5, "
         "before the episode's first frame 0"),
        (lambda e: e["label_info"]["action_config"][1].update(start_frame="15"), "action_config segment 1 lacks integer frames"),
        (lambda e: e.pop("task_name"), "episode 632700 has no task_name"),
    ],
)
def test_unusable_labels_reject_the_episode(src, edit, reason):
    edit_entry(src, edit)
    with pytest.raises(EpisodeRejected) as rejected:
        read(src)
    assert rejected.value.category == "bad_label"
    assert rejected.value.file == "task_info/task_327.json"
    assert reason in rejected.value.reason


# --- listing, options, notices ----------------------------------------------------------------------


def test_listing_order_ids_and_paths(agibot_src):
    refs = AgibotSource(agibot_src).list_episodes()
    assert [r.source_episode for r in refs] == ["327/632700", "327/632701", "327/632702", "327/632703", "352/635200"]
    assert [r.order for r in refs] == list(range(5))
    assert refs[0].path == H5


def test_known_bad_task_list_is_the_releases():
    assert sorted(KNOWN_BAD_TASKS) == [352, 354, 359, 361, 368, 376, 377, 380, 384, 410, 414, 421, 428, 460, 505, 510, 711]


def test_known_bad_tasks_are_quarantined_without_touching_their_files(src):
    for path in (src / "proprio_stats/352", src / "observations/352"):
        for file in sorted(path.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
    source = AgibotSource(src)
    assert any("known-bad task(s) 352" in notice for notice in source.notices)
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(source.list_episodes()[-1])
    assert rejected.value.category == "known_bad_task"
    assert rejected.value.file == "proprio_stats/352/635200/proprio_stats.h5"
    assert "task 352 is on the release's list of broken tasks (its action arrays are longer than its state)" in rejected.value.reason


def test_forced_known_bad_task_is_read_and_its_defect_named(agibot_src):
    source = AgibotSource(agibot_src, tasks=[352], force_known_bad=True)
    assert not any("known-bad" in notice for notice in source.notices)
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(source.list_episodes()[0])
    assert rejected.value.category == "action_longer_than_state"
    assert rejected.value.reason == (
        "proprio file proprio_stats/352/635200/proprio_stats.h5: action/end/position has 33 rows but the state has 30 frames"
    )


def test_tasks_option_filters_by_id(agibot_src):
    source = AgibotSource(agibot_src, tasks=[352])
    assert [r.source_episode for r in source.list_episodes()] == ["352/635200"]
    assert source.describe()["tasks"] == [352]
    with pytest.raises(ClapDataError, match=r"task 999 was requested but .*task_info has no task_999.json"):
        AgibotSource(agibot_src, tasks=[327, 999])


def test_cameras_default_to_the_three_unified_views(agibot_src):
    episode = read(agibot_src)
    assert episode.videos == {
        "head": VideoWindow(agibot_src / "observations/327/632700/videos/head_color.mp4"),
        "wrist_left": VideoWindow(agibot_src / "observations/327/632700/videos/hand_left_color.mp4"),
        "wrist_right": VideoWindow(agibot_src / "observations/327/632700/videos/hand_right_color.mp4"),
    }
    assert any("fisheye cameras and head depth images" in notice for notice in AgibotSource(agibot_src).notices)


def test_cameras_option_chooses_views_and_names_what_the_schema_lacks(agibot_src):
    assert list(read(agibot_src, cameras=["wrist_right"]).videos) == ["wrist_right"]
    with pytest.raises(ClapDataError, match="fisheye and depth views need an extension of the unified schema"):
        AgibotSource(agibot_src, cameras=["head_center_fisheye_color"])


def test_h5_without_task_info_entry_is_a_notice_not_an_episode(agibot_src):
    source = AgibotSource(agibot_src)
    assert "327/632704" not in [r.source_episode for r in source.list_episodes()]
    assert (
        "proprio_stats/327 has 1 episode(s) with a proprio_stats.h5 but no entry in task_info/task_327.json (632704); "
        "they are not ingested"
    ) in source.notices
    assert not any("proprio_stats/327" in n for n in AgibotSource(agibot_src, tasks=[352]).notices)


def test_describe_records_the_options(agibot_src):
    described = AgibotSource(agibot_src, cameras=["head"], gripper_open_mm=100).describe()
    assert described == {
        "source": "agibot", "root": str(agibot_src.resolve()), "cameras": ["head"], "tasks": None,
        "force_known_bad": False, "gripper_open_mm": 100.0,
    }


# --- bad input: one episode --------------------------------------------------------------------------


def remove(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def put(name: str, values: Callable[[Path], np.ndarray]) -> Callable[[Path], None]:
    return lambda root: set_dataset(root, name, values(root))


def with_value(name: str, index: tuple, value: float) -> Callable[[Path], np.ndarray]:
    def values(root: Path) -> np.ndarray:
        array = get(root, name)
        array[index] = value
        return array

    return values


def delete_dataset(root: Path, name: str) -> None:
    with h5py.File(root / H5, "r+") as h5:
        del h5[name]


def swapped_timestamps(root: Path) -> np.ndarray:
    ts = get(root, "timestamp")
    ts[[10, 11]] = ts[[11, 10]]
    return ts


BAD = {
    "h5 missing": (remove(H5), "missing_file", H5, f"proprio file {H5} is missing"),
    "video missing": (remove("observations/327/632700/videos/hand_left_color.mp4"), "missing_file",
                      "observations/327/632700/videos/hand_left_color.mp4",
                      "video file observations/327/632700/videos/hand_left_color.mp4 is missing"),
    "h5 garbage": (lambda r: (r / H5).write_bytes(b"not an hdf5 file" * 10), "unreadable_file", H5,
                   f"proprio file {H5} cannot be read"),
    "dataset missing": (lambda r: delete_dataset(r, "state/end/orientation"), "missing_dataset", H5, f"proprio file {H5} lacks dataset(s) state/end/orientation"),
    "no frames": (put("state/end/position", lambda r: np.zeros(0)), "empty", H5, f"proprio file {H5} has no frames"),
    "NaN state": (put("state/end/position", with_value("state/end/position", (7, 1, 2), np.nan)), "non_finite", H5,
                  f"proprio file {H5}: state/end/position has NaN or Inf at frame 7"),
    "Inf gripper": (put("state/effector/position", with_value("state/effector/position", (12, 0), np.inf)), "non_finite", H5,
                    f"proprio file {H5}: state/effector/position has NaN or Inf at frame 12"),
    "NaN used command": (put("action/end/orientation", with_value("action/end/orientation", (9, 0, 1), np.nan)), "non_finite", H5,
                         f"proprio file {H5}: action/end/orientation has NaN or Inf at frame 9"),
    "timestamps": (put("timestamp", swapped_timestamps), "timestamps", H5,
                   f"proprio file {H5} has non-increasing timestamps at frame 11"),
    "position shape": (put("state/end/position", lambda r: get(r, "state/end/position")[:, 0, :]), "bad_shape", H5,
                       f"proprio file {H5}: state/end/position has shape (40, 3), expected (40, 2, 3) for its 40 frames"),
    "orientation rows": (put("state/end/orientation", lambda r: get(r, "state/end/orientation")[:-1]), "bad_shape", H5,
                         f"proprio file {H5}: state/end/orientation has shape (39, 2, 4), expected (40, 2, 4)"),
    "timestamp rows": (put("timestamp", lambda r: get(r, "timestamp")[:-2]), "bad_shape", H5,
                       f"proprio file {H5}: timestamp has shape (38,) but the state has 40 frames"),
    "action shape": (put("action/end/position", lambda r: get(r, "action/end/position")[:, :, :2]), "bad_shape", H5,
                     f"proprio file {H5}: action/end/position has shape (40, 2, 2), expected (rows, 2, 3)"),
    "end rows differ": (put("action/end/orientation", lambda r: get(r, "action/end/orientation")[:-1]), "bad_shape", H5,
                        f"proprio file {H5}: action/end/position has 40 rows but action/end/orientation has 39"),
    "action too long": (put("action/effector/position", lambda r: np.zeros((43, 2))), "action_longer_than_state", H5,
                        f"proprio file {H5}: action/effector/position has 43 rows but the state has 40 frames"),
    "index past state": (put("action/end/index", lambda r: np.append(get(r, "action/end/index"), 41)), "action_longer_than_state", H5,
                         f"proprio file {H5}: action/end/index refers to frame 41 but the state has 40 frames"),
    "index unordered": (put("action/effector/index", lambda r: get(r, "action/effector/index")[::-1]), "bad_index", H5,
                        f"proprio file {H5}: action/effector/index is not strictly increasing"),
    "index float": (put("action/end/index", lambda r: get(r, "action/end/index").astype(float)), "bad_index", H5,
                    f"proprio file {H5}: action/end/index is not a list of frame numbers"),
    "zero state quaternion": (put("state/end/orientation", with_value("state/end/orientation", (6, 1), 0.0)), "bad_rotation", H5,
                              f"proprio file {H5}: state/end/orientation of the right arm is a zero quaternion at frame 6"),
    "zero command quaternion": (put("action/end/orientation", with_value("action/end/orientation", (9, 0), 0.0)), "bad_rotation", H5,
                                f"proprio file {H5}: action/end/orientation of the left arm is a zero quaternion at frame 9"),
    "dexterous hand": (put("state/effector/position", lambda r: np.zeros((N, 12))), "dexterous_hand", H5,
                       f"proprio file {H5}: state/effector/position has shape (40, 12), the finger joints of a dexterous hand"),
}


@pytest.mark.parametrize("fault", list(BAD))
def test_bad_episode_is_rejected_with_category_file_and_reason(src, fault):
    inject, category, file, reason = BAD[fault]
    inject(src)
    with pytest.raises(EpisodeRejected) as rejected:
        read(src)
    assert rejected.value.category == category
    assert rejected.value.file == file
    assert reason in rejected.value.reason


def test_dexterous_hand_task_from_the_factory_is_rejected(tmp_path):
    root = write_agibot_dataset(tmp_path / "src", tasks={390: (20,)}, fisheye=False, depth=False, dexterous_tasks=[390])
    with pytest.raises(EpisodeRejected) as rejected:
        read(root, "proprio_stats/390/639000/proprio_stats.h5")
    assert rejected.value.category == "dexterous_hand"


# --- bad input: the whole source ---------------------------------------------------------------------


def test_not_an_agibot_tree(tmp_path):
    with pytest.raises(ClapDataError, match="holds no task_<id>.json files; is .* an unpacked AgiBot World tree"):
        AgibotSource(tmp_path)
    with pytest.raises(ClapDataError, match="does not exist"):
        AgibotSource(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"task file .*task_327.json cannot be read"),
        ('{"episode_id": 1}', r"task file .*task_327.json is not a JSON list of episodes"),
        ('[{"task_name": "x"}]', r"task file .*task_327.json entry 0 has no episode_id"),
        ('[{"episode_id": 5}, {"episode_id": "5"}]', r"task file .*task_327.json lists episode_id '5' twice \(entry 0 and entry 1\)"),
    ],
)
def test_garbled_task_info_stops_the_run(src, content, message):
    (src / "task_info/task_327.json").write_text(content)
    with pytest.raises(ClapDataError, match=message):
        AgibotSource(src)


def test_missing_proprio_folder_and_bad_gripper_width(src):
    with pytest.raises(ClapDataError, match="fully-open gripper width must be a positive number of mm"):
        AgibotSource(src, gripper_open_mm=0)
    (src / "proprio_stats").rename(src / "elsewhere")
    with pytest.raises(ClapDataError, match="has no proprio_stats folder"):
        AgibotSource(src)
