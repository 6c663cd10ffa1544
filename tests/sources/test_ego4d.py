"""The Ego4D adapter on its own (no Ray): windows, instructions, labels, every skip reason and
every quirk of FORMATS.md, checked against the raw annotation files and the decoded clips."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest

from clap_data.errors import ClapDataError
from clap_data.factories.ego4d import (
    clip_path,
    default_ego4d_plan,
    read_frame_marks,
    scaled_ego4d_plan,
    write_ego4d_dataset,
)
from clap_data.sources.base import EpisodeRef, EpisodeRejected, VideoWindow
from clap_data.sources.ego4d import Ego4DSource, narration_instruction
from clap_data.video import iter_rgb_frames
from tests.reference import copy_source

FHO = "v2/annotations/fho_main.json"
NARRATIONS = "v2/annotations/narration.json"
METADATA = "ego4d.json"
PLAN = default_ego4d_plan()
EXTRA_KEYS = {
    "action_labels", "clip_uid", "video_uid", "action_uid", "narration_uid", "narration_text", "narration_source",
    "window_start_frame", "window_end_frame", "window_source", "pnr_frame", "structured_verb",
}  # fmt: skip


@pytest.fixture(scope="module")
def ego4d_src(tmp_path_factory) -> Path:
    return write_ego4d_dataset(tmp_path_factory.mktemp("ego4d") / "src")


@pytest.fixture
def writable(ego4d_src, tmp_path) -> Path:
    return copy_source(ego4d_src, tmp_path / "src")


def edit_json(root: Path, relative: str, edit: Callable[[Any], None]) -> None:
    path = root / relative
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def raw_actions(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(video_uid, clip_uid, action) of fho_main.json in file order, parsed plainly."""
    data = json.loads((root / FHO).read_text())
    return [
        (video["video_uid"], interval["clip_uid"], action)
        for video in data["videos"]
        for interval in video["annotated_intervals"]
        for action in interval["narrated_actions"]
    ]


def raw_action(root: Path, narration_part: str) -> dict[str, Any]:
    (action,) = [a for _, _, a in raw_actions(root) if narration_part in (a["narration_text"] or "")]
    return action


def ref_of(source: Ego4DSource, uid: str) -> EpisodeRef:
    (ref,) = [r for r in source.list_episodes() if r.details["action_uid"] == uid]
    return ref


def rejection(source: Ego4DSource, uid: str) -> EpisodeRejected:
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(ref_of(source, uid))
    return rejected.value


def clip_mark(clip_uid: str) -> int:
    return next(i for i, clip in enumerate(PLAN) if clip.clip_uid == clip_uid)


def decoded_marks(window: VideoWindow) -> list[tuple[int, int]]:
    """Marks of the window's frames, decoding the whole clip in display order (the reference cut)."""
    frames = [read_frame_marks(f) for _, f in iter_rgb_frames(window.path)]
    return frames[window.start : window.start + window.count]


def expected_window(action: dict[str, Any]) -> tuple[int, int]:
    """The spec, independently: inclusive [pre_frame, post_frame], else [clip_start_frame, clip_end_frame]."""
    critical = action["clip_critical_frames"]
    if critical is not None:
        return critical["pre_frame"], critical["post_frame"]
    return action["clip_start_frame"], action["clip_end_frame"]


# --- Windows, instructions, labels -------------------------------------------------------------


def test_every_kept_window_holds_exactly_the_clip_frames_pre_to_post_inclusive(ego4d_src):
    source = Ego4DSource(ego4d_src)
    kept = 0
    for video_uid, clip_uid, action in raw_actions(ego4d_src):
        ref = ref_of(source, action["uid"])
        try:
            episode = source.read_episode(ref)
        except EpisodeRejected:
            continue
        kept += 1
        first, last = expected_window(action)
        window = episode.videos["head"]
        assert window == VideoWindow(clip_path(ego4d_src, clip_uid), first, last - first + 1)
        assert len(episode.state) == last - first + 1
        assert decoded_marks(window) == [(clip_mark(clip_uid), i) for i in range(first, last + 1)]
        assert (episode.extra["window_start_frame"], episode.extra["window_end_frame"]) == (first, last)
        assert episode.extra["video_uid"] == video_uid
    assert kept == 9


def test_window_falls_back_to_the_action_bounds_without_critical_frames(ego4d_src):
    action = raw_action(ego4d_src, "opens the drawer")
    assert action["clip_critical_frames"] is None
    episode = Ego4DSource(ego4d_src).read_episode(ref_of(Ego4DSource(ego4d_src), action["uid"]))
    first, last = action["clip_start_frame"], action["clip_end_frame"]
    assert (episode.videos["head"].start, episode.videos["head"].count) == (first, last - first + 1)
    assert episode.extra["window_source"] == "action_bounds"
    assert episode.extra["pnr_frame"] == -1


def test_critical_frames_win_over_the_action_bounds(ego4d_src):
    action = raw_action(ego4d_src, "picks up a cup")
    assert action["clip_start_frame"] != action["clip_critical_frames"]["pre_frame"]
    source = Ego4DSource(ego4d_src)
    episode = source.read_episode(ref_of(source, action["uid"]))
    assert episode.videos["head"].start == action["clip_critical_frames"]["pre_frame"]
    assert episode.extra["window_source"] == "critical_frames"
    assert episode.extra["pnr_frame"] == action["clip_critical_frames"]["pnr_frame"]


@pytest.mark.parametrize(
    ("narration", "instruction"),
    [
        ("#C C picks up a cup", "picks up a cup"),
        ("  #c c puts the cup on the table  ", "puts the cup on the table"),
        ("#C  C rinses the spoon", "rinses the spoon"),
        ("#c C\topens the tap", "opens the tap"),
        ("stirs the soup", "stirs the soup"),
        ("  stirs the soup ", "stirs the soup"),
        ("#O man X takes a knife", "#O man X takes a knife"),
        ("#C Cuts", "#C Cuts"),
        ("#C C", ""),
        ("   ", ""),
        (None, ""),
    ],
)
def test_narrator_tag_is_stripped_in_every_variant(narration, instruction):
    assert narration_instruction(narration) == instruction


def test_instruction_is_the_task_and_the_subtask_of_every_frame(ego4d_src):
    source = Ego4DSource(ego4d_src)
    for text, instruction in [
        ("  #c c puts the cup", "puts the cup on the table"),
        ("stirs the soup", "stirs the soup"),
        ("#C  C rinses", "rinses the spoon"),
    ]:
        action = raw_action(ego4d_src, text)
        episode = source.read_episode(ref_of(source, action["uid"]))
        assert episode.tasks == [instruction] * len(episode.state)
        assert episode.subtasks == episode.tasks
        assert episode.extra["narration_text"] == action["narration_text"]


def test_human_episodes_have_zero_labels_and_both_hands_active(ego4d_src):
    source = Ego4DSource(ego4d_src)
    assert (source.name, source.embodiment, source.cameras, source.fps) == ("ego4d", "human", ("head",), 30)
    episode = source.read_episode(source.list_episodes()[0])
    frames = len(episode.tasks)
    assert episode.state.shape == episode.action.shape == (frames, 14)
    assert not episode.state.any() and not episode.action.any()
    assert episode.arm_mask.shape == (frames, 2) and (episode.arm_mask == 1).all()


def test_extra_marks_no_action_labels_with_the_same_keys_everywhere(ego4d_src):
    source = Ego4DSource(ego4d_src)
    extras = []
    for ref in source.list_episodes():
        try:
            extras.append(source.read_episode(ref).extra)
        except EpisodeRejected:
            pass
    assert len(extras) == 9
    for extra in extras:
        assert set(extra) == EXTRA_KEYS
        assert extra["action_labels"] is False
        assert all(isinstance(value, str | int | float | bool) for value in extra.values())
    types = {key: {type(extra[key]) for extra in extras} for key in EXTRA_KEYS}
    assert all(len(kinds) == 1 for kinds in types.values()), types
    first = raw_actions(ego4d_src)[0][2]
    assert extras[0]["action_uid"] == first["uid"]
    assert extras[0]["narration_uid"] == first["narration_annotation_uid"]
    assert extras[0]["structured_verb"] == first["structured_verb"]
    assert extras[2]["structured_verb"] == ""  # null in the file


def test_listing_follows_the_file_and_names_each_clip(ego4d_src):
    refs = Ego4DSource(ego4d_src).list_episodes()
    actions = raw_actions(ego4d_src)
    assert [r.order for r in refs] == list(range(len(actions)))
    assert [r.source_episode for r in refs] == [a["uid"] for _, _, a in actions]
    assert [r.path for r in refs] == [f"v2/clips/{clip}.mp4" for _, clip, _ in actions]
    assert all(json.loads(json.dumps(r.details)) == r.details for r in refs)  # JSON-able
    assert [r.details["window"] for r in refs] == [list(expected_window(a)) for _, _, a in actions]


def test_action_without_uid_gets_a_positional_id(writable):
    edit_json(writable, FHO, lambda d: d["videos"][0]["annotated_intervals"][1]["narrated_actions"][1].update(uid=None))
    refs = Ego4DSource(writable).list_episodes()
    video = json.loads((writable / FHO).read_text())["videos"][0]["video_uid"]
    assert refs[11].source_episode == f"{video}:1:1"
    assert len({r.source_episode for r in refs}) == len(refs)


# --- Skipped actions: category, file and reason ------------------------------------------------


@pytest.mark.parametrize(
    ("narration", "category", "message"),
    [
        ("wipes the counter", "rejected_action", "is marked is_rejected (reason: blurry frames)"),
        ("holds a knife", "invalid_action", "is marked is_valid_action false"),
        ("cuts the onion", "partial_action", "is marked is_partial"),
        ("drops the lid", "too_short", "spans 11 frames (60..70), fewer than --min-frames 33"),
    ],
)
def test_annotated_skip_reasons(ego4d_src, narration, category, message):
    action = raw_action(ego4d_src, narration)
    rejected = rejection(Ego4DSource(ego4d_src), action["uid"])
    assert rejected.category == category
    assert rejected.file == FHO
    assert rejected.reason.startswith(f"{FHO}: narrated action {action['uid']} of clip ")
    assert rejected.reason.endswith(message)


def test_window_past_the_clip_end_is_outside_the_clip(ego4d_src):
    action = raw_action(ego4d_src, "lifts the pan")
    rejected = rejection(Ego4DSource(ego4d_src), action["uid"])
    clip = f"v2/clips/{PLAN[0].clip_uid}.mp4"
    assert (rejected.category, rejected.file) == ("outside_clip", clip)
    assert rejected.reason.endswith(f"ends at frame 80 but clip file {clip} has 72 frames (0..71)")


def test_window_before_the_clip_start_is_outside_the_clip(writable):
    edit_json(writable, FHO, lambda d: d["videos"][0]["annotated_intervals"][0]["narrated_actions"][0]["clip_critical_frames"].update(pre_frame=-2))
    action = raw_action(writable, "picks up a cup")
    rejected = rejection(Ego4DSource(writable), action["uid"])
    assert rejected.category == "outside_clip"
    assert rejected.reason.endswith("starts at frame -2, before the clip's first frame")


def test_missing_clip_file_is_named(ego4d_src):
    action = raw_action(ego4d_src, "sweeps the floor")
    rejected = rejection(Ego4DSource(ego4d_src), action["uid"])
    clip = f"v2/clips/{PLAN[4].clip_uid}.mp4"
    assert (rejected.category, rejected.file) == ("missing_file", clip)
    assert rejected.reason == f"clip file {clip} is missing"


def test_is_invalid_annotation_is_an_invalid_action(writable):
    edit_json(writable, FHO, lambda d: d["videos"][0]["annotated_intervals"][0]["narrated_actions"][0].update(is_invalid_annotation=True))
    rejected = rejection(Ego4DSource(writable), raw_action(writable, "picks up a cup")["uid"])
    assert rejected.category == "invalid_action"
    assert rejected.reason.endswith("is marked is_invalid_annotation")


def test_min_frames_option_changes_the_shortest_window(ego4d_src):
    action = raw_action(ego4d_src, "drops the lid")
    source = Ego4DSource(ego4d_src, min_frames=11)
    assert len(source.read_episode(ref_of(source, action["uid"])).state) == 11
    assert rejection(Ego4DSource(ego4d_src, min_frames=12), action["uid"]).category == "too_short"
    long_action = raw_action(ego4d_src, "picks up a cup")  # 37 frames
    assert rejection(Ego4DSource(ego4d_src, min_frames=38), long_action["uid"]).category == "too_short"


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "33"])
def test_bad_min_frames_stops_the_source(ego4d_src, value):
    with pytest.raises(ClapDataError, match="--min-frames must be a whole number of frames, at least 1"):
        Ego4DSource(ego4d_src, min_frames=value)


def test_reversed_window_is_a_bad_window(writable):
    edit_json(writable, FHO, lambda d: d["videos"][0]["annotated_intervals"][0]["narrated_actions"][0]["clip_critical_frames"].update(pre_frame=40, post_frame=4))
    rejected = rejection(Ego4DSource(writable), raw_action(writable, "picks up a cup")["uid"])
    assert (rejected.category, rejected.file) == ("bad_window", FHO)
    assert rejected.reason.endswith("ends (frame 4) before it starts (frame 40)")


def test_window_without_usable_frame_numbers_is_a_bad_window(writable):
    def garble(data: dict) -> None:
        action = data["videos"][0]["annotated_intervals"][0]["narrated_actions"][2]  # no critical frames
        action.update(clip_start_frame="10", clip_end_frame=None)

    edit_json(writable, FHO, garble)
    rejected = rejection(Ego4DSource(writable), raw_action(writable, "opens the drawer")["uid"])
    assert rejected.category == "bad_window"
    assert "has neither integer clip_critical_frames pre/post frames nor clip_start_frame/clip_end_frame" in rejected.reason


def test_integral_float_frame_numbers_are_accepted(writable):
    edit_json(writable, FHO, lambda d: d["videos"][0]["annotated_intervals"][0]["narrated_actions"][0]["clip_critical_frames"].update(pre_frame=4.0, post_frame=40.0))
    source = Ego4DSource(writable)
    window = source.read_episode(ref_of(source, raw_action(writable, "picks up a cup")["uid"])).videos["head"]
    assert (window.start, window.count) == (4, 37)


def test_interval_without_clip_uid_rejects_its_actions(writable):
    edit_json(writable, FHO, lambda d: d["videos"][1]["annotated_intervals"][0].update(clip_uid=None))
    source = Ego4DSource(writable)
    ref = ref_of(source, raw_action(writable, "folds the towel")["uid"])
    assert ref.path == FHO
    rejected = rejection(source, ref.details["action_uid"])
    assert (rejected.category, rejected.file) == ("no_clip", FHO)
    assert rejected.reason.endswith("has no clip_uid")


# --- Quirks of the clips (FORMATS.md: start offset, container/stream mismatch, frame rate) ------


def test_clip_with_start_offset_and_longer_container_is_cut_by_frame_index(ego4d_src):
    path = clip_path(ego4d_src, PLAN[1].clip_uid)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.start_time > 0  # first frame shown 3 frames late
        video_seconds = float(stream.duration * stream.time_base)
        assert container.duration / 1e6 == pytest.approx(3.0, abs=0.05) and video_seconds == pytest.approx(2.0)
    source = Ego4DSource(ego4d_src)
    episode = source.read_episode(ref_of(source, raw_action(ego4d_src, "rinses the spoon")["uid"]))
    window = episode.videos["head"]
    assert (window.start, window.count) == (20, 40)  # ends on the clip's last frame, 59
    assert decoded_marks(window) == [(1, i) for i in range(20, 60)]


def test_window_inside_the_container_duration_but_past_the_last_video_frame_is_outside(writable):
    edit_json(writable, FHO, lambda d: d["videos"][0]["annotated_intervals"][1]["narrated_actions"][1]["clip_critical_frames"].update(post_frame=60))
    rejected = rejection(Ego4DSource(writable), raw_action(writable, "rinses the spoon")["uid"])
    assert rejected.category == "outside_clip"
    assert "has 60 frames (0..59)" in rejected.reason


def test_clip_whose_real_frame_rate_differs_from_the_declared_one_is_cut_by_frame_index(ego4d_src):
    path = clip_path(ego4d_src, PLAN[2].clip_uid)
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 25
    declared = {v["video_uid"]: v["video_metadata"]["fps"] for v in json.loads((ego4d_src / METADATA).read_text())["videos"]}
    assert declared[PLAN[2].video_uid] == 30
    source = Ego4DSource(ego4d_src)
    window = source.read_episode(ref_of(source, raw_action(ego4d_src, "folds the towel")["uid"])).videos["head"]
    assert (window.start, window.count) == (8, 41)
    assert decoded_marks(window) == [(2, i) for i in range(8, 49)]


def test_undecodable_clip_is_left_to_the_conversion_step(writable):
    clip_path(writable, PLAN[3].clip_uid).write_bytes(b"not an mp4 at all" * 50)
    source = Ego4DSource(writable)
    window = source.read_episode(ref_of(source, raw_action(writable, "waters the plant")["uid"])).videos["head"]
    assert (window.start, window.count) == (3, 41)


# --- fps from ego4d.json -----------------------------------------------------------------------


def test_video_absent_from_ego4d_json_is_taken_as_30_fps(ego4d_src):
    source = Ego4DSource(ego4d_src)
    listed = {v["video_uid"] for v in json.loads((ego4d_src / METADATA).read_text())["videos"]}
    assert PLAN[3].video_uid not in listed
    assert len(source.read_episode(ref_of(source, raw_action(ego4d_src, "waters the plant")["uid"])).state) == 41
    assert "1 of 3 annotated video(s) have no fps in ego4d.json; their clips are taken as 30 fps" in source.notices


def test_declared_fps_is_rounded(writable):
    edit_json(writable, METADATA, lambda d: [v["video_metadata"].update(fps=29.97002997) for v in d["videos"]])
    assert Ego4DSource(writable).fps == 30


def test_most_common_declared_fps_wins_and_other_videos_are_quarantined(writable):
    edit_json(writable, METADATA, lambda d: [v["video_metadata"].update(fps=60.0) for v in d["videos"] if v["video_uid"] == PLAN[2].video_uid])
    source = Ego4DSource(writable)
    assert source.fps == 30
    assert "1 annotated video(s) declare another fps than the dataset's 30 in ego4d.json; their actions are quarantined" in source.notices
    rejected = rejection(source, raw_action(writable, "folds the towel")["uid"])
    assert (rejected.category, rejected.file) == ("fps_mismatch", METADATA)
    assert rejected.reason.endswith(f"ego4d.json declares 60 fps for video {PLAN[2].video_uid}, not the dataset's 30")


def test_missing_ego4d_json_means_canonical_30_fps(writable):
    (writable / METADATA).unlink()
    source = Ego4DSource(writable)
    assert source.fps == 30
    assert "ego4d.json is absent, so every clip is taken as 30 fps (canonical Ego4D)" in source.notices
    assert len(source.read_episode(source.list_episodes()[0]).state) == 37


# --- narration.json ------------------------------------------------------------------------------


def test_missing_narration_is_filled_from_narration_json(ego4d_src):
    (action,) = [a for _, _, a in raw_actions(ego4d_src) if a["narration_text"] is None]
    source = Ego4DSource(ego4d_src)
    episode = source.read_episode(ref_of(source, action["uid"]))
    assert episode.tasks[0] == "closes the drawer"
    assert episode.extra["narration_source"] == NARRATIONS
    assert episode.extra["narration_text"] == "#C C closes the drawer"
    assert "1 of 1 narration(s) missing from v2/annotations/fho_main.json were taken from v2/annotations/narration.json" in source.notices
    assert source.read_episode(source.list_episodes()[0]).extra["narration_source"] == FHO


def test_narration_of_the_actions_own_pass_wins_over_another_pass_at_the_same_time(writable):
    def second_pass_first(data: dict) -> None:
        for video, passes in data.items():
            data[video] = {"narration_pass_0": passes.pop("narration_pass_2"), **passes}

    edit_json(writable, NARRATIONS, second_pass_first)
    (action,) = [a for _, _, a in raw_actions(writable) if a["narration_text"] is None]
    source = Ego4DSource(writable)
    assert source.read_episode(ref_of(source, action["uid"])).tasks[0] == "closes the drawer"


def test_missing_narration_without_narration_json_is_quarantined(writable):
    (writable / NARRATIONS).unlink()
    (action,) = [a for _, _, a in raw_actions(writable) if a["narration_text"] is None]
    source = Ego4DSource(writable)
    assert "1 narrated action(s) have no narration text and v2/annotations/narration.json is absent to fill them" in source.notices
    rejected = rejection(source, action["uid"])
    assert (rejected.category, rejected.file) == ("no_instruction", FHO)
    assert rejected.reason.endswith("has no narration text, and none was found for it in v2/annotations/narration.json")


def test_narration_that_is_only_the_tag_counts_as_missing(writable):
    edit_json(writable, FHO, lambda d: d["videos"][0]["annotated_intervals"][0]["narrated_actions"][0].update(narration_text=" #C C "))
    (writable / NARRATIONS).unlink()
    rejected = rejection(Ego4DSource(writable), raw_actions(writable)[0][2]["uid"])
    assert rejected.category == "no_instruction"


# --- Whole-source problems -----------------------------------------------------------------------


def test_missing_source_folder(tmp_path):
    with pytest.raises(ClapDataError, match=f"source folder {tmp_path / 'nope'} does not exist"):
        Ego4DSource(tmp_path / "nope")


def test_missing_fho_main(writable):
    (writable / FHO).unlink()
    with pytest.raises(ClapDataError, match=r"annotation file .*fho_main\.json is missing; is this an Ego4D download"):
        Ego4DSource(writable)


def test_garbled_fho_main(writable):
    (writable / FHO).write_text('{"videos": [')
    with pytest.raises(ClapDataError, match=r"annotation file .*fho_main\.json cannot be read: Expecting value"):
        Ego4DSource(writable)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"clips": []}, r"fho_main\.json has no list at 'videos'; is it the Ego4D v2 format\?"),
        ({"videos": [{"annotated_intervals": []}]}, r"fho_main\.json videos\[0\] has no video_uid"),
        ({"videos": [{"video_uid": "v", "annotated_intervals": [{"clip_uid": "c"}]}]}, r"no list at videos\[0\]\.annotated_intervals\[0\]\.narrated_actions"),
    ],
)
def test_fho_main_of_another_shape(writable, content, message):
    (writable / FHO).write_text(json.dumps(content))
    with pytest.raises(ClapDataError, match=message):
        Ego4DSource(writable)


def test_garbled_ego4d_json(writable):
    (writable / METADATA).write_text("not json")
    with pytest.raises(ClapDataError, match=r"metadata file .*ego4d\.json cannot be read"):
        Ego4DSource(writable)


def test_ego4d_json_with_a_nonsense_fps(writable):
    edit_json(writable, METADATA, lambda d: d["videos"][0]["video_metadata"].update(fps="fast"))
    with pytest.raises(ClapDataError, match=rf"ego4d\.json declares fps 'fast' for video {PLAN[0].video_uid}; expected a positive number"):
        Ego4DSource(writable)


def test_garbled_narration_json_stops_the_source_when_it_is_needed(writable):
    (writable / NARRATIONS).write_text("[1, 2")
    with pytest.raises(ClapDataError, match=r"narration file .*narration\.json cannot be read"):
        Ego4DSource(writable)


# --- Listing cost --------------------------------------------------------------------------------


def test_listing_is_cheap_in_memory_and_ships_small_to_workers(tmp_path):
    root = write_ego4d_dataset(tmp_path / "big", scaled_ego4d_plan(100, 10), encode_videos=False)
    size = (root / FHO).stat().st_size
    tracemalloc.start()
    try:
        source = Ego4DSource(root)
        refs = source.list_episodes()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(refs) == 1000
    assert peak < 2.5 * size, f"listing peaked at {peak / size:.1f}x the size of fho_main.json"
    assert len(pickle.dumps(source)) < 2000
    assert pickle.loads(pickle.dumps(source)).fps == 30
    # No clip exists, yet every ref carries its window: listing never opens a clip.
    assert refs[0].details["window"] == [0, 39]


def test_a_narrated_action_listed_twice_is_refused(writable):
    """A repeated interval would ingest its actions twice; the message names both places."""
    def repeat_interval(data: dict[str, Any]) -> None:
        intervals = data["videos"][0]["annotated_intervals"]
        intervals.append(intervals[0])

    edit_json(writable, FHO, repeat_interval)
    data = json.loads((writable / FHO).read_text())
    uid = data["videos"][0]["annotated_intervals"][0]["narrated_actions"][0]["uid"]
    repeated = len(data["videos"][0]["annotated_intervals"]) - 1
    with pytest.raises(ClapDataError) as error:
        Ego4DSource(writable)
    assert str(error.value) == (
        f"annotation file {writable / FHO} lists narrated action uid {uid!r} twice "
        "(videos[0].annotated_intervals[0].narrated_actions[0] and "
        f"videos[0].annotated_intervals[{repeated}].narrated_actions[0]); each may appear only once"
    )
