"""End to end: AgiBot World tree → unified LeRobot v3.0, read back by stock lerobot and checked
against the independent reference of tests/sources/test_agibot.py and the source videos."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets import LeRobotDataset

from clap_data.errors import ExitCode
from clap_data.factories.agibot import write_agibot_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.agibot import CAMERA_FILES, AgibotSource
from clap_data.video import iter_rgb_frames
from tests.sources.test_agibot import ref_action, ref_state

pytestmark = pytest.mark.usefixtures("ray_local")

TASKS = {327: (40, 36, 38, 44), 352: (30,), 390: (20,)}  # 352: known bad; 390: dexterous hand
GOOD = ["327/632700", "327/632701", "327/632702", "327/632703"]


def load(out: Path) -> LeRobotDataset:
    return LeRobotDataset("local/clap-data-agibot", root=out, video_backend="pyav")


@pytest.fixture(scope="module")
def agibot_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agibot") / "src"
    # The full release layout, fisheye videos and depth PNGs included: they must be left alone.
    return write_agibot_dataset(root, tasks=TASKS, dexterous_tasks=[390], orphan_episodes=1)


@pytest.fixture(scope="module")
def agibot_ingest(agibot_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "agibot_v3"
    report = ingest(AgibotSource(agibot_tree), IngestRequest(out=out, workers=2))
    return out, report


def assert_episode_matches_source(dataset: LeRobotDataset, episode_index: int, src: Path, source_episode: str) -> None:
    """Every frame equals the source: canonical values to 1e-5 (float32) against the reference,
    instruction and subtask per frame, video frames pixel for pixel (stream copy)."""
    task, episode_id = source_episode.split("/")
    with h5py.File(src / f"proprio_stats/{source_episode}/proprio_stats.h5") as h5:
        state = ref_state(h5)
        action = ref_action(h5, state)
    entry = next(e for e in json.loads((src / f"task_info/task_{task}.json").read_text()) if str(e["episode_id"]) == episode_id)
    subtasks = [""] * len(state)
    for segment in entry["label_info"]["action_config"]:
        for frame in range(segment["start_frame"], min(segment["end_frame"], len(state))):
            subtasks[frame] = segment["action_text"]
    episode = dataset.meta.episodes[episode_index]
    start, stop = episode["dataset_from_index"], episode["dataset_to_index"]
    assert stop - start == len(state)
    frames = {
        camera: [f for _, f in iter_rgb_frames(src / f"observations/{source_episode}/videos/{CAMERA_FILES[camera]}.mp4")]
        for camera in CAMERA_FILES
    }
    for offset in range(len(state)):
        item = dataset[start + offset]
        assert item["frame_index"].item() == offset
        assert item["timestamp"].item() == pytest.approx(offset / 30, abs=1e-6)
        np.testing.assert_allclose(item["observation.state"].numpy(), state[offset], atol=1e-5)
        np.testing.assert_allclose(item["action"].numpy(), action[offset], atol=1e-5)
        assert item["arm_mask"].tolist() == [1.0, 1.0]
        assert item["task"] == entry["task_name"]
        assert item["subtask"] == subtasks[offset]
        for camera, source_frames in frames.items():
            decoded = (item[f"observation.images.{camera}"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(decoded, source_frames[offset])


def test_report_quarantines_known_bad_and_dexterous_and_names_the_orphan(agibot_ingest):
    _, report = agibot_ingest
    assert report.exit_code == ExitCode.QUARANTINED
    assert (report.listed, report.written, report.frames) == (6, 4, 40 + 36 + 38 + 44)
    assert [(q["source_episode"], q["category"]) for q in report.quarantine] == [
        ("352/635200", "known_bad_task"), ("390/639000", "dexterous_hand"),
    ]
    assert report.quarantine[0]["file"] == "proprio_stats/352/635200/proprio_stats.h5"
    assert "state/effector/position has shape (20, 12)" in report.quarantine[1]["reason"]
    assert report.cameras == ["head", "wrist_left", "wrist_right"]
    assert any("no entry in task_info/task_327.json (632704)" in notice for notice in report.notices)


def test_stock_lerobot_reads_every_frame_equal_to_the_source(agibot_ingest, agibot_tree):
    out, _ = agibot_ingest
    dataset = load(out)
    assert dataset.meta.total_episodes == 4
    assert dataset.meta.robot_type == "agibot-go1"
    assert dataset.fps == 30
    assert dataset.meta.video_keys == ["observation.images.head", "observation.images.wrist_left", "observation.images.wrist_right"]
    for index in (0, 3):  # by_frame and unindexed action layouts
        assert_episode_matches_source(dataset, index, agibot_tree, GOOD[index])


def test_all_episodes_state_and_action_in_the_data_files(agibot_ingest, agibot_tree):
    out, _ = agibot_ingest
    table = pq.read_table(out / "data/chunk-000/file-000.parquet")
    state = np.array(table.column("observation.state").to_pylist())
    action = np.array(table.column("action").to_pylist())
    episodes = np.array(table.column("episode_index").to_pylist())
    for index, source_episode in enumerate(GOOD):
        with h5py.File(agibot_tree / f"proprio_stats/{source_episode}/proprio_stats.h5") as h5:
            expected_state = ref_state(h5)
            expected_action = ref_action(h5, expected_state)
        np.testing.assert_allclose(state[episodes == index], expected_state, atol=1e-5)
        np.testing.assert_allclose(action[episodes == index], expected_action, atol=1e-5)


def test_episode_metadata_keeps_provenance_labels_and_scene(agibot_ingest, agibot_tree):
    out, _ = agibot_ingest
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["source/episode_id"] for e in episodes] == GOOD
    first = episodes[0]
    assert first["source/dataset"] == "agibot"
    assert first["source/path"] == "proprio_stats/327/632700/proprio_stats.h5"
    entry = json.loads((agibot_tree / "task_info/task_327.json").read_text())[0]
    assert first["tasks"] == [entry["task_name"]]
    assert first["source/task_id"] == 327
    assert first["source/init_scene_text"] == entry["init_scene_text"]
    assert json.loads(first["source/action_config"]) == entry["label_info"]["action_config"]
    assert 0 < first["source/end_command_frames"] < 40


def test_forced_known_bad_tasks_are_read_and_rejected_for_their_defects(tmp_path):
    root = write_agibot_dataset(tmp_path / "src", tasks={327: (20,), 352: (20,), 380: (20,)}, fisheye=False, depth=False)
    report = ingest(AgibotSource(root, force_known_bad=True), IngestRequest(out=tmp_path / "out"))
    assert report.written == 1
    assert [(q["source_episode"], q["category"]) for q in report.quarantine] == [
        ("352/635200", "action_longer_than_state"), ("380/638000", "bad_video"),
    ]
    assert report.quarantine[1]["file"] == "observations/380/638000/videos/head_color.mp4"


def test_tasks_and_cameras_options(agibot_tree, tmp_path):
    report = ingest(AgibotSource(agibot_tree, tasks=[327], cameras=["wrist_right"]), IngestRequest(out=tmp_path / "out"))
    assert report.exit_code == ExitCode.OK and report.written == 4
    info = json.loads((tmp_path / "out/meta/info.json").read_text())
    assert [k for k, f in info["features"].items() if f["dtype"] == "video"] == ["observation.images.wrist_right"]
    assert info["robot_type"] == "agibot-go1" and info["fps"] == 30
