"""End to end: Ego4D → unified LeRobot v3.0, read back by stock lerobot. Every head-camera frame of
every episode must be the clip's frame at the same position of the action window (the clips'
gray bands encode their frame index), including clips with a start offset, a container longer
than the video and a frame rate other than the declared one."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets import LeRobotDataset

from clap_data.errors import ExitCode
from clap_data.factories.ego4d import clip_path, default_ego4d_plan, read_frame_marks, write_ego4d_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.ego4d import Ego4DSource, narration_instruction
from tests.reference import copy_source

pytestmark = pytest.mark.usefixtures("ray_local")

PLAN = default_ego4d_plan()
FHO = "v2/annotations/fho_main.json"


def load(out: Path) -> LeRobotDataset:
    return LeRobotDataset("local/clap-data-ego4d-test", root=out, video_backend="pyav")


def expected_episodes(src: Path) -> list[dict]:
    """The episodes the spec asks for, computed from the raw files without clap-data: valid,
    long enough, inside an existing clip; window = inclusive [pre, post] or the action bounds."""
    fho = json.loads((src / FHO).read_text())
    narrations = json.loads((src / "v2/annotations/narration.json").read_text())
    lengths = {c.clip_uid: c.frames for c in PLAN if c.write_file}
    kept = []
    for video in fho["videos"]:
        for interval in video["annotated_intervals"]:
            for action in interval["narrated_actions"]:
                critical = action["clip_critical_frames"]
                first, last = (critical["pre_frame"], critical["post_frame"]) if critical else (action["clip_start_frame"], action["clip_end_frame"])
                text = action["narration_text"]
                if text is None:
                    own = narrations[video["video_uid"]]["narration_pass_1"]["narrations"]
                    (text,) = [n["narration_text"] for n in own if n["timestamp_sec"] == action["narration_timestamp_sec"]]
                ok = not action["is_rejected"] and action["is_valid_action"] and not action["is_partial"]
                clip = interval["clip_uid"]
                if ok and last - first + 1 >= 33 and clip in lengths and 0 <= first and last < lengths[clip]:
                    kept.append({"uid": action["uid"], "clip": clip, "first": first, "last": last, "text": text})
    return kept


@pytest.fixture(scope="module")
def ego4d_src(tmp_path_factory) -> Path:
    return write_ego4d_dataset(tmp_path_factory.mktemp("ego4d") / "src")


@pytest.fixture(scope="module")
def ingested(ego4d_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "ego4d_v3"
    report = ingest(Ego4DSource(ego4d_src), IngestRequest(out=out, workers=2))
    return out, report


def test_report_counts_and_quarantine_reasons(ingested):
    _, report = ingested
    assert report.exit_code == ExitCode.QUARANTINED
    assert (report.listed, report.written) == (15, 9)
    categories = sorted(q["category"] for q in report.quarantine)
    assert categories == ["invalid_action", "missing_file", "outside_clip", "partial_action", "rejected_action", "too_short"]
    (missing,) = [q for q in report.quarantine if q["category"] == "missing_file"]
    assert missing["file"] == f"v2/clips/{PLAN[4].clip_uid}.mp4"
    assert report.cameras == ["head"]


def test_every_head_frame_is_the_window_frame_of_the_source_clip(ingested, ego4d_src):
    out, _ = ingested
    dataset = load(out)
    expected = expected_episodes(ego4d_src)
    assert dataset.meta.total_episodes == len(expected) == 9
    assert dataset.meta.robot_type == "human" and dataset.fps == 30
    assert dataset.meta.video_keys == ["observation.images.head"]
    marks = {c.clip_uid: i for i, c in enumerate(PLAN)}
    for index, want in enumerate(expected):
        episode = dataset.meta.episodes[index]
        start, stop = episode["dataset_from_index"], episode["dataset_to_index"]
        assert stop - start == want["last"] - want["first"] + 1
        instruction = narration_instruction(want["text"])
        for offset in range(stop - start):
            item = dataset[start + offset]
            assert item["frame_index"].item() == offset
            assert item["timestamp"].item() == pytest.approx(offset / 30, abs=1e-6)
            frame = (item["observation.images.head"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            assert read_frame_marks(frame) == (marks[want["clip"]], want["first"] + offset), (want, offset)
            assert not item["observation.state"].any() and not item["action"].any()
            assert item["arm_mask"].tolist() == [1.0, 1.0]
            assert item["task"] == instruction and item["subtask"] == instruction


def test_episode_metadata_says_no_action_labels_and_keeps_provenance(ingested, ego4d_src):
    out, _ = ingested
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    expected = expected_episodes(ego4d_src)
    assert [e["source/episode_id"] for e in episodes] == [w["uid"] for w in expected]
    for episode, want in zip(episodes, expected, strict=True):
        assert episode["source/dataset"] == "ego4d"
        assert episode["source/action_labels"] is False
        assert episode["source/clip_uid"] == want["clip"]
        assert (episode["source/window_start_frame"], episode["source/window_end_frame"]) == (want["first"], want["last"])
        assert episode["source/path"] == f"v2/clips/{want['clip']}.mp4"
        assert episode["tasks"] == [narration_instruction(want["text"])]


def test_undecodable_clip_is_quarantined_by_the_conversion_step(ego4d_src, tmp_path):
    root = copy_source(ego4d_src, tmp_path / "src")
    broken = clip_path(root, PLAN[3].clip_uid)
    broken.write_bytes(broken.read_bytes()[:300])
    report = ingest(Ego4DSource(root), IngestRequest(out=tmp_path / "out", workers=2))
    (entry,) = [q for q in report.quarantine if q["file"] == f"v2/clips/{PLAN[3].clip_uid}.mp4"]
    assert entry["category"] == "bad_video"
    assert f"v2/clips/{PLAN[3].clip_uid}.mp4" in entry["reason"]
    assert report.written == 8
