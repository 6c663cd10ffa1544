"""End to end: Astribot → unified LeRobot v3.0, read back by stock lerobot and checked against an
independent implementation of METHOD.md and against frames decoded from the source videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets import LeRobotDataset

from clap_data.conversion import VideoOptions
from clap_data.errors import ExitCode
from clap_data.factories.astribot import expected_gray_level
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.astribot import CAMERA_KEYS, AstribotSource
from clap_data.video import iter_rgb_frames, reencode
from tests.reference import copy_source, reference_canonical

pytestmark = pytest.mark.usefixtures("ray_local")


def load(out: Path) -> LeRobotDataset:
    return LeRobotDataset("local/clap-data-test", root=out, video_backend="pyav")


def source_video(src: Path, episode: int, camera: str) -> Path:
    return src / f"videos/chunk-000/{CAMERA_KEYS[camera]}/episode_{episode:06d}.mp4"


def assert_episode_matches_source(dataset: LeRobotDataset, episode_index: int, src: Path, source_episode: int) -> None:
    """Every frame of one output episode equals the source: canonical values to 1e-5 against the
    reference implementation, video frames pixel for pixel at the same timestamps."""
    state, action = reference_canonical(src / f"data/chunk-000/episode_{source_episode:06d}.parquet")
    tasks = {json.loads(line)["task_index"]: json.loads(line)["task"] for line in (src / "meta/tasks.jsonl").read_text().splitlines()}
    episode = dataset.meta.episodes[episode_index]
    start, stop = episode["dataset_from_index"], episode["dataset_to_index"]
    assert stop - start == len(state)
    cameras = [key.removeprefix("observation.images.") for key in dataset.meta.video_keys]
    frames = {cam: [f for _, f in iter_rgb_frames(source_video(src, source_episode, cam))] for cam in cameras}
    task_pairs = pq.read_table(src / f"data/chunk-000/episode_{source_episode:06d}.parquet", columns=["task_index"]).column("task_index").to_pylist()
    for offset in range(len(state)):
        item = dataset[start + offset]
        assert item["frame_index"].item() == offset
        assert item["timestamp"].item() == pytest.approx(offset / dataset.fps, abs=1e-6)
        np.testing.assert_allclose(item["observation.state"].numpy(), state[offset], atol=1e-5)
        np.testing.assert_allclose(item["action"].numpy(), action[offset], atol=1e-5)
        assert item["arm_mask"].tolist() == [1.0, 1.0]
        assert item["task"] == tasks[task_pairs[offset][0]]
        assert item["subtask"] == tasks[task_pairs[offset][1]]
        for camera, source_frames in frames.items():
            decoded = (item[f"observation.images.{camera}"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(decoded, source_frames[offset])


@pytest.fixture(scope="module")
def real_ingest(real_astribot, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "astribot_v3"
    report = ingest(AstribotSource(real_astribot), IngestRequest(out=out, workers=2))
    return out, report


def test_real_sample_reports_missing_episode_and_head_camera(real_ingest):
    _, report = real_ingest
    assert report.exit_code == ExitCode.QUARANTINED
    assert (report.listed, report.written) == (2, 1)
    assert [(q["source_episode"], q["category"]) for q in report.quarantine] == [("000001", "missing_file")]
    assert "data/chunk-000/episode_000001.parquet is missing" in report.quarantine[0]["reason"]
    assert report.cameras == ["wrist_left", "wrist_right"]
    assert any("camera head (images_dict.head.rgb)" in notice for notice in report.notices)


def test_stock_lerobot_reads_every_frame_equal_to_the_source(real_ingest, real_astribot):
    out, _ = real_ingest
    dataset = load(out)
    assert dataset.meta.total_episodes == 1
    assert dataset.meta.robot_type == "S1-stationary"
    assert dataset.fps == 30
    assert dataset.meta.video_keys == ["observation.images.wrist_left", "observation.images.wrist_right"]
    assert_episode_matches_source(dataset, 0, real_astribot, 0)


def test_output_is_v3_layout_with_stats_and_provenance(real_ingest, real_astribot):
    out, _ = real_ingest
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (out / "data/chunk-000/file-000.parquet").is_file()
    assert (out / "videos/observation.images.wrist_left/chunk-000/file-000.mp4").is_file()
    assert info["features"]["observation.state"]["names"][:7] == ["left_x", "left_y", "left_z", "left_roll", "left_pitch", "left_yaw", "left_gripper"]
    stats = json.loads((out / "meta/stats.json").read_text())
    assert stats["observation.state"]["count"] == [info["total_frames"]]
    assert min(stats["action"]["min"][6], stats["action"]["min"][13]) >= -1.0
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert episodes[0]["source/dataset"] == "astribot"
    assert episodes[0]["source/episode_id"] == "000000"
    assert episodes[0]["source/path"] == "data/chunk-000/episode_000000.parquet"
    declared = json.loads((real_astribot / "meta/episodes.jsonl").read_text().splitlines()[0])
    assert episodes[0]["tasks"] == declared["tasks"]


def test_camera_stats_are_per_channel_in_lerobot_form(real_ingest, real_astribot):
    out, _ = real_ingest
    stats = load(out).meta.stats["observation.images.wrist_left"]
    assert stats["mean"].shape == (3, 1, 1) and stats["q99"].shape == (3, 1, 1)
    assert ((0 <= stats["min"]) & (stats["min"] <= stats["mean"]) & (stats["mean"] <= stats["max"]) & (stats["max"] <= 1)).all()
    # Sampled keyframes estimate the mean colour of every frame of the episode.
    frames = np.stack([f for _, f in iter_rgb_frames(source_video(real_astribot, 0, "wrist_left"))])
    np.testing.assert_allclose(stats["mean"].ravel(), frames.reshape(-1, 3).mean(axis=0) / 255, atol=0.03)


def test_clean_factory_dataset_exits_ok_and_keeps_every_camera(astribot_src, tmp_path):
    report = ingest(AstribotSource(astribot_src), IngestRequest(out=tmp_path / "out"))
    assert report.exit_code == ExitCode.OK
    assert report.written == 3 and report.frames == 40 + 52 + 45
    dataset = load(tmp_path / "out")
    assert len(dataset.meta.video_keys) == 3
    assert_episode_matches_source(dataset, 2, astribot_src, 2)


def test_cameras_option_keeps_only_the_chosen_ones(astribot_src, tmp_path):
    report = ingest(AstribotSource(astribot_src, cameras=["wrist_right"]), IngestRequest(out=tmp_path / "out"))
    assert report.cameras == ["wrist_right"]
    info = json.loads((tmp_path / "out/meta/info.json").read_text())
    assert [k for k, f in info["features"].items() if f["dtype"] == "video"] == ["observation.images.wrist_right"]


def test_resize_reencodes_to_the_requested_size(astribot_src, tmp_path):
    options = VideoOptions(resize=(32, 48), codec="h264")
    ingest(AstribotSource(astribot_src, cameras=["head"]), IngestRequest(out=tmp_path / "out", video=options))
    dataset = load(tmp_path / "out")
    assert dataset.meta.features["observation.images.head"]["shape"] == (32, 48, 3)
    assert dataset.meta.features["observation.images.head"]["info"]["video.codec"] == "h264"
    frame = dataset[5]["observation.images.head"]
    assert tuple(frame.shape) == (3, 32, 48)
    assert abs(frame.mean().item() * 255 - expected_gray_level(0, 5, "head")) < 8


def test_episodes_with_other_codec_parameters_go_to_their_own_video_file(astribot_src, tmp_path):
    root = copy_source(astribot_src, tmp_path / "src")
    head_1 = source_video(root, 1, "head")
    reencode(head_1, tmp_path / "other.mp4", fps=30, size=None, codec="hevc", gop=4, crf=20)
    (tmp_path / "other.mp4").replace(head_1)
    ingest(AstribotSource(root, cameras=["head"]), IngestRequest(out=tmp_path / "out"))
    dataset = load(tmp_path / "out")
    files = [dataset.meta.episodes[i]["videos/observation.images.head/file_index"] for i in range(3)]
    assert files == [0, 1, 2]
    assert dataset.meta.episodes[1]["videos/observation.images.head/from_timestamp"] == 0.0
    for episode in range(3):
        assert_episode_matches_source(dataset, episode, root, episode)
