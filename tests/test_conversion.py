"""The per-episode conversion step on its own (no Ray): video windows — stream-copied when they
start on a keyframe, re-encoded frame-accurately otherwise — image sequences, and rejections."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clap_data import __version__, video
from clap_data.conversion import VideoOptions, convert_episode
from clap_data.sources.base import CanonicalEpisode, EpisodeRef, ImageSequence, VideoInput, VideoWindow
from clap_data.staging import StagingArea
from tests.test_video import X265_NO_B, encode, gray_levels


@dataclass
class OneCameraSource:
    """The smallest Source: one episode of ``rows`` zero frames whose head camera is ``frames_from``."""

    root: Path
    frames_from: VideoInput
    rows: int
    name: str = "test"
    embodiment: str = "test"
    fps: int = 30
    cameras: tuple[str, ...] = ("head",)
    notices: list[str] = field(default_factory=list)

    def list_episodes(self) -> list[EpisodeRef]:
        return [EpisodeRef("e0", 0, "episode0")]

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        zeros = np.zeros((self.rows, 14))
        return CanonicalEpisode(zeros, zeros, np.ones((self.rows, 2)), ["t"] * self.rows, [""] * self.rows,
                                {"head": self.frames_from}, extra={"kind": "test"})

    def describe(self) -> dict[str, Any]:
        return {}


def convert(tmp_path: Path, frames_from: VideoInput, rows: int, options: VideoOptions = VideoOptions()):
    """The outcome, and the head camera's video as assembly appends it to the dataset (:func:`assembled_video`)."""
    source = OneCameraSource(tmp_path, frames_from, rows)
    staging = StagingArea(tmp_path / "out")
    outcome = convert_episode(source, source.list_episodes()[0], staging, options)
    return outcome, assembled_video(staging.episode_dir(source.list_episodes()[0]), tmp_path / "assembled.mp4")


def assembled_video(episode_dir: Path, dst: Path) -> Path:
    """The head camera's frames as assembly writes them into a dataset file — from the staged copy, or straight
    from the source window the record names (``copy_from``) — alone in ``dst``; ``dst`` is not written for an
    episode that staged nothing (quarantined)."""
    record_file = episode_dir / "episode.json"
    if not record_file.is_file():
        return dst
    entry = json.loads(record_file.read_text())["videos"]["head"]
    copy_from = entry.get("copy_from")
    joined = video.VideoConcatenator(dst, fps=30)
    src = episode_dir / "videos" / "head.mp4" if copy_from is None else Path(copy_from["path"])
    joined.append(src, entry["frame_count"], entry["fingerprint"], None if copy_from is None else copy_from["start_pts"])
    joined.close()
    return dst


@pytest.fixture
def clip(tmp_path) -> Path:
    """30 frames, keyframe every 2nd frame, a clock starting at 0.5 s (as Ego4D clips may)."""
    return encode(tmp_path / "clip.mp4", "libx265", frames=30, options=X265_NO_B, pts=lambda i: 15 + i)


def test_keyframe_aligned_window_is_stream_copied_bit_exactly(tmp_path, clip):
    outcome, staged = convert(tmp_path, VideoWindow(clip, start=10, count=8), rows=8)
    assert outcome.status == "ok"
    episode = tmp_path / ".out.clap-staging" / "episodes" / "00000000"
    assert not (episode / "videos").exists()  # nothing staged: assembly copies the packets from the source
    copy_from = json.loads((episode / "episode.json").read_text())["videos"]["head"]["copy_from"]
    assert copy_from["path"] == str(clip) and copy_from["start_pts"] == video.probe_video(clip).display_pts[10]
    source_frames = [f.tobytes() for _, f in video.iter_rgb_frames(clip)][10:18]
    assert [f.tobytes() for _, f in video.iter_rgb_frames(staged)] == source_frames
    assert [t for t, _ in video.iter_rgb_frames(staged)] == pytest.approx([i / 30 for i in range(8)])
    assert video.probe_video(staged).codec == "hevc"  # copied, not re-encoded


def test_window_starting_between_keyframes_is_reencoded_from_exactly_that_frame(tmp_path, clip):
    outcome, staged = convert(tmp_path, VideoWindow(clip, start=11, count=7), rows=7, options=VideoOptions(codec="h264"))
    assert outcome.status == "ok"
    assert video.probe_video(staged).codec == "h264"
    expected = gray_levels(clip)[11:18]
    assert np.abs(np.array(gray_levels(staged)) - np.array(expected)).max() <= 3
    assert video.probe_video(staged).frame_count == 7


def test_window_beyond_the_file_is_rejected_naming_it(tmp_path, clip):
    outcome, _ = convert(tmp_path, VideoWindow(clip, start=25, count=8), rows=8)
    assert (outcome.status, outcome.category) == ("quarantined", "frame_count")
    assert outcome.reason == "video file clip.mp4 has 30 frames; the episode needs frames 25 to 32"


def test_window_of_another_length_than_the_rows_is_rejected(tmp_path, clip):
    outcome, _ = convert(tmp_path, VideoWindow(clip, start=0, count=8), rows=9)
    assert outcome.category == "frame_count" and "selects 8 frames for 9 rows" in outcome.reason


def jpeg(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), level, np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_image_sequence_is_encoded_one_frame_per_image(tmp_path):
    images = ImageSequence(tuple(jpeg(30 + 9 * i) for i in range(12)))
    outcome, staged = convert(tmp_path, images, rows=12, options=VideoOptions(codec="h264", crf=10))
    assert outcome.status == "ok"
    probe = video.probe_video(staged)
    assert (probe.frame_count, probe.width, probe.height) == (12, 48, 32)
    assert np.abs(np.array(gray_levels(staged)) - (30 + 9 * np.arange(12))).max() <= 2
    record = json.loads((tmp_path / ".out.clap-staging/episodes/00000000/episode.json").read_text())
    assert record["extra"] == {"kind": "test"} and "copy_from" not in record["videos"]["head"]


def test_corrupt_image_and_wrong_image_count_are_rejected(tmp_path):
    outcome, _ = convert(tmp_path, ImageSequence((jpeg(40), b"not a jpeg", jpeg(60))), rows=3)
    assert outcome.category == "bad_video"
    assert outcome.reason.startswith("episode0 camera head image 1 cannot be decoded")
    outcome, _ = convert(tmp_path / "b", ImageSequence((jpeg(40),)), rows=3)
    assert outcome.category == "frame_count" and "has 1 images for 3 rows" in outcome.reason


class BrokenReaderSource(OneCameraSource):
    """A source whose reader fails in a way no check anticipates, as a bug in an adapter would."""

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        raise RuntimeError("the reader broke on purpose")


def test_unexpected_error_is_quarantined_with_its_traceback_in_the_episodes_log(tmp_path, clip):
    staging = StagingArea(tmp_path / "out")
    broken = BrokenReaderSource(tmp_path, VideoWindow(clip, start=0, count=8), rows=8)
    ref = broken.list_episodes()[0]
    outcome = convert_episode(broken, ref, staging, VideoOptions())
    log = tmp_path / ".out.clap-staging" / "logs" / "00000000.log"
    assert staging.error_log(ref) == log
    assert (outcome.status, outcome.category, outcome.file) == ("quarantined", "internal_error", "episode0")
    assert outcome.reason == (
        f"unexpected error while converting episode0: RuntimeError: the reader broke on purpose (traceback in {log})"
    )
    assert staging.quarantine_records()[0]["reason"] == outcome.reason
    text = log.read_text()
    header = f"clap-data {__version__}, test episode e0 (episode0): unexpected error\n"
    assert text.startswith(header + "Traceback (most recent call last):\n")
    assert 'in read_episode\n    raise RuntimeError("the reader broke on purpose")' in text
    assert text.endswith("RuntimeError: the reader broke on purpose\n")
    # the rerun converts it: neither the quarantine record nor the stale log remain
    fixed = OneCameraSource(tmp_path, VideoWindow(clip, start=0, count=8), rows=8)
    assert convert_episode(fixed, ref, staging, VideoOptions()).status == "ok"
    assert staging.quarantine_records() == [] and not log.exists() and not staging.has_error_logs()


def test_the_staged_record_names_each_cameras_source_file(tmp_path, clip):
    convert(tmp_path, VideoWindow(clip, start=10, count=8), rows=8)
    record = json.loads((tmp_path / ".out.clap-staging/episodes/00000000/episode.json").read_text())
    assert record["videos"]["head"]["source_file"] == "clip.mp4"
    convert(tmp_path / "b", ImageSequence(tuple(jpeg(40) for _ in range(3))), rows=3)
    record = json.loads((tmp_path / "b/.out.clap-staging/episodes/00000000/episode.json").read_text())
    assert record["videos"]["head"]["source_file"] == "episode0 camera head"


def test_a_stream_with_b_frames_is_staged_as_a_copy_in_display_order(tmp_path):
    """Packets of a B-frame stream come out of display order: assembly cannot take them one per frame from the
    source, so the conversion stages a reordered copy (and the frames stay bit-identical)."""
    clip = encode(tmp_path / "b.mp4", "libx264", frames=24, options={"bf": "2", "g": "8"})
    assert video.probe_video(clip).decode_delay > 0
    outcome, assembled = convert(tmp_path, VideoWindow(clip), rows=24)
    assert outcome.status == "ok" and (tmp_path / ".out.clap-staging/episodes/00000000/videos/head.mp4").is_file()
    assert [f.tobytes() for _, f in video.iter_rgb_frames(assembled)] == [f.tobytes() for _, f in video.iter_rgb_frames(clip)]


def test_a_source_video_that_changes_after_validation_makes_the_episode_convert_again(tmp_path, clip):
    source = OneCameraSource(tmp_path, VideoWindow(clip, start=0, count=30), 30)
    staging, ref = StagingArea(tmp_path / "out"), source.list_episodes()[0]
    assert convert_episode(source, ref, staging, VideoOptions()).status == "ok"
    before = staging.staged_episode(ref)["videos"]["head"]["copy_from"]["start_pts"]
    encode(clip, "libx265", frames=30, options=X265_NO_B, pts=lambda i: 40 + i)  # rewritten in place
    assert staging.staged_episode(ref) is None  # stale: a rerun does not resume it
    assert convert_episode(source, ref, staging, VideoOptions()).status == "ok"
    copy_from = staging.staged_episode(ref)["videos"]["head"]["copy_from"]
    assert copy_from["start_pts"] == video.probe_video(clip).display_pts[0] != before
    assert copy_from["size"] == clip.stat().st_size


def test_the_outcome_says_where_the_episodes_time_went(tmp_path, clip):
    outcome, _ = convert(tmp_path, VideoWindow(clip, start=10, count=8), rows=8)
    assert set(outcome.phases) == {"read", "probe", "decode", "video", "stats", "staging"}
    assert all(outcome.phases[name] > 0 for name in ("probe", "decode", "stats")) and outcome.phases["video"] == 0
    assert sum(outcome.phases.values()) <= outcome.seconds
