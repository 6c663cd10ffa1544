"""The Ego4D factory writes the real download's layout and fields, with the quirks it promises.

The real data is licence-gated, so the field lists below are those of Ego4D's published schema
of fho_main.json and of FORMATS.md; the clips are checked for what the ingester relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from clap_data.factories.ego4d import (
    GOP,
    MAX_FRAMES,
    clip_path,
    default_ego4d_plan,
    frame_levels,
    main,
    read_frame_marks,
    scaled_ego4d_plan,
    write_ego4d_dataset,
)
from clap_data.video import iter_rgb_frames, probe_video

# Ego4D's published schema of fho_main.json.
ACTION_KEYS = {
    "warnings", "uid", "start_sec", "end_sec", "start_frame", "end_frame", "is_valid_action", "is_partial",
    "clip_start_sec", "clip_end_sec", "clip_start_frame", "clip_end_frame", "narration_timestamp_sec",
    "clip_narration_timestamp_sec", "narration_text", "narration_annotation_uid", "structured_verb", "freeform_verb",
    "state_transition", "critical_frames", "clip_critical_frames", "frames", "is_rejected", "is_invalid_annotation",
    "reject_reason", "stage",
}  # fmt: skip
INTERVAL_KEYS = {
    "clip_id", "clip_uid", "start_sec", "end_sec", "clip_parent_start_sec", "clip_parent_end_sec", "narrated_actions",
    "start_frame", "end_frame", "clip_parent_start_frame", "clip_parent_end_frame", "redacted",
}  # fmt: skip
VIDEO_METADATA_KEYS = {
    "video_start_pts", "video_base_numerator", "video_base_denominator", "duration_sec", "num_frames", "fps", "width", "height", "rotation",
}  # fmt: skip
CRITICAL_KEYS = {"pre_frame", "pnr_frame", "post_frame", "contact_frame"}
PLAN = default_ego4d_plan()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_ego4d_dataset(tmp_path_factory.mktemp("ego4d") / "ds")


def read(root: Path, relative: str):
    return json.loads((root / relative).read_text())


def actions(root: Path) -> list[tuple[dict, dict, dict]]:
    fho = read(root, "v2/annotations/fho_main.json")
    return [(v, i, a) for v in fho["videos"] for i in v["annotated_intervals"] for a in i["narrated_actions"]]


def test_layout_is_the_ego4d_cli_download(dataset):
    files = sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file())
    clips = sorted(f"v2/clips/{c.clip_uid}.mp4" for c in PLAN if c.write_file)
    assert files == sorted(["ego4d.json", "v2/annotations/fho_main.json", "v2/annotations/narration.json", *clips])


def test_fho_main_has_every_field_of_the_schema(dataset):
    fho = read(dataset, "v2/annotations/fho_main.json")
    assert {"version", "date", "description", "metadata", "videos"} <= set(fho)
    for video, interval, action in actions(dataset):
        assert set(video) == {"video_uid", "annotated_intervals", "video_metadata"}
        assert set(video["video_metadata"]) == VIDEO_METADATA_KEYS
        assert set(interval) == INTERVAL_KEYS
        assert set(action) == ACTION_KEYS
    assert len(actions(dataset)) == sum(len(c.actions) for c in PLAN)


def test_critical_frames_and_boxes_are_consistent(dataset):
    for _, interval, action in actions(dataset):
        critical = action["clip_critical_frames"]
        if critical is None:
            assert action["critical_frames"] is None and action["frames"] is None
            continue
        assert set(critical) == CRITICAL_KEYS
        offset = interval["clip_parent_start_frame"]
        assert {k: v - offset for k, v in action["critical_frames"].items()} == critical
        assert critical["pre_frame"] <= critical["contact_frame"] <= critical["pnr_frame"] <= critical["post_frame"]
        assert action["start_frame"] - offset == action["clip_start_frame"]
        assert action["clip_start_sec"] == pytest.approx(action["clip_start_frame"] / 30)
        types = {f["frame_type"] for f in action["frames"]}
        assert types == CRITICAL_KEYS | {"pre_45", "pre_30", "pre_15"}
        for frame in action["frames"]:
            assert frame["frame_number"] - offset == frame["clip_frame_number"]
            assert [b["object_type"] for b in frame["boxes"]] == ["left_hand", "right_hand", "object_of_change"]
            assert set(frame["boxes"][0]["bbox"]) == {"x", "y", "width", "height"}


def test_narrations_carry_the_tag_variants_and_the_skip_flags(dataset):
    texts = [a["narration_text"] for _, _, a in actions(dataset)]
    assert "#C C picks up a cup" in texts
    assert "  #c c puts the cup on the table  " in texts
    assert "stirs the soup" in texts
    assert texts.count(None) == 1
    flags = [(a["is_rejected"], a["is_valid_action"], a["is_partial"]) for _, _, a in actions(dataset)]
    assert flags.count((True, True, False)) == flags.count((False, False, False)) == flags.count((False, True, True)) == 1
    (rejected,) = [a for _, _, a in actions(dataset) if a["is_rejected"]]
    assert rejected["reject_reason"] == "blurry frames"


def test_narration_json_has_two_passes_and_the_narration_missing_from_fho_main(dataset):
    narrations = read(dataset, "v2/annotations/narration.json")
    assert set(narrations) == {c.video_uid for c in PLAN}
    (missing,) = [(v, a) for v, _, a in actions(dataset) if a["narration_text"] is None]
    passes = narrations[missing[0]["video_uid"]]
    assert {"narration_pass_1", "narration_pass_2"} <= set(passes)
    first = passes["narration_pass_1"]
    assert set(first["narrations"][0]) == {"timestamp_sec", "timestamp_frame", "narration_text", "annotation_uid"}
    at_time = [n for p in ("narration_pass_1", "narration_pass_2") for n in passes[p]["narrations"] if n["timestamp_sec"] == missing[1]["narration_timestamp_sec"]]
    own = [n["narration_text"] for n in at_time if n["annotation_uid"] == missing[1]["narration_annotation_uid"]]
    assert own == ["#C C closes the drawer"]
    assert len(at_time) == 2  # the other pass narrates the same moment differently


def test_ego4d_json_declares_fps_except_for_one_video(dataset):
    metadata = read(dataset, "ego4d.json")
    declared = {v["video_uid"]: v["video_metadata"]["fps"] for v in metadata["videos"]}
    assert declared == {PLAN[0].video_uid: 30.0, PLAN[2].video_uid: 30.0}
    assert PLAN[3].video_uid not in declared
    assert {c["clip_uid"] for c in metadata["clips"]} == {c.clip_uid for c in PLAN}


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_clip_frames_encode_the_clip_and_frame_index_in_display_order(dataset, index):
    path = clip_path(dataset, PLAN[index].clip_uid)
    marks = [read_frame_marks(frame) for _, frame in iter_rgb_frames(path)]
    assert marks == [(index, i) for i in range(PLAN[index].frames)]


def test_clips_are_h264_with_b_frames_gop_and_audio_like_canonical_clips(dataset):
    path = clip_path(dataset, PLAN[0].clip_uid)
    probe = probe_video(path)
    assert probe.codec == "h264" and probe.decode_delay > 0
    with av.open(str(path)) as container:
        keyframes = [i for i, p in enumerate(sorted((p for p in container.demux(container.streams.video[0]) if p.size), key=lambda p: p.pts)) if p.is_keyframe]
    assert keyframes == list(range(0, PLAN[0].frames, GOP))
    with av.open(str(clip_path(dataset, PLAN[1].clip_uid))) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]


def test_clip_1_starts_late_and_its_container_outlasts_its_video(dataset):
    with av.open(str(clip_path(dataset, PLAN[1].clip_uid))) as container:
        stream = container.streams.video[0]
        first_pts = min(p.pts for p in container.demux(stream) if p.size)
        assert first_pts * stream.time_base == pytest.approx(3 / 30)
        assert float(stream.duration * stream.time_base) == pytest.approx(60 / 30)
        assert container.duration / 1e6 == pytest.approx(3.0, abs=0.05)


def test_clip_2_runs_at_25_fps_though_declared_30(dataset):
    with av.open(str(clip_path(dataset, PLAN[2].clip_uid))) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 25 and stream.frames == 50


def test_same_seed_same_bytes_other_seed_other_uids(tmp_path):
    a = write_ego4d_dataset(tmp_path / "a", seed=4, encode_videos=False)
    b = write_ego4d_dataset(tmp_path / "b", seed=4, encode_videos=False)
    c = write_ego4d_dataset(tmp_path / "c", seed=5, encode_videos=False)
    for name in ("ego4d.json", "v2/annotations/fho_main.json", "v2/annotations/narration.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "ego4d.json").read_bytes() != (c / "ego4d.json").read_bytes()


def test_frame_levels_round_trip_through_codec_noise():
    rng = np.random.default_rng(0)
    for mark, index in [(0, 0), (3, 59), (24, MAX_FRAMES - 1), (7, 300)]:
        frame = np.zeros((32, 48, 3), np.int16)
        for band, level in enumerate(frame_levels(mark, index)):
            frame[:, band * 16 : (band + 1) * 16] = level
        noisy = np.clip(frame + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8)
        assert read_frame_marks(noisy) == (mark, index)
    with pytest.raises(ValueError, match="cannot be encoded"):
        frame_levels(0, MAX_FRAMES)


def test_scaled_plan_and_options(tmp_path):
    plan = scaled_ego4d_plan(12, 5)
    assert len(plan) == 12 and len({c.video_uid for c in plan}) == 2
    assert all(len(c.actions) == 5 and c.actions[0].critical == (0, 39) for c in plan)
    root = write_ego4d_dataset(tmp_path / "s", plan, encode_videos=False, with_narration_json=False)
    assert not (root / "v2/clips").exists() and not (root / "v2/annotations/narration.json").exists()
    assert len(actions(root)) == 60


def test_refuses_to_overwrite_a_folder_that_is_not_its_own(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no generated Ego4D dataset"):
        write_ego4d_dataset(tmp_path, encode_videos=False, overwrite=True)
    root = write_ego4d_dataset(tmp_path / "ds", encode_videos=False)
    with pytest.raises(FileExistsError, match="is not empty"):
        write_ego4d_dataset(root, encode_videos=False)
    assert write_ego4d_dataset(root, encode_videos=False, overwrite=True) == root


@pytest.mark.parametrize("size", [(32, 32), (48, 31), (45, 32), (48, 14)])
def test_rejects_sizes_that_cannot_hold_three_bands(tmp_path, size):
    with pytest.raises(ValueError, match="video_size"):
        write_ego4d_dataset(tmp_path / "ds", video_size=size)


def test_command_line_writes_a_dataset(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--scale", "3x2", "--no-videos"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert len(actions(tmp_path / "cli")) == 6
