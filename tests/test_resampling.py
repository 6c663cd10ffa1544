"""Resampling onto another frame rate (``--fps``): which source frame each output frame keeps, and
that the conversion step writes exactly those video frames, regular-timed at the new rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clap_data.conversion import PhaseTimes, VideoOptions, _stage_window
from clap_data.factories.astribot import expected_gray_level
from clap_data.sources.astribot import CAMERA_KEYS
from clap_data.sources.base import EpisodeRejected, ImageSequence, VideoWindow, nearest_frames, select_frames
from clap_data.video import iter_rgb_frames


def test_downsampling_keeps_the_nearest_frame_and_the_earlier_one_on_a_tie():
    times = np.arange(40) / 30
    assert nearest_frames(times, 15).tolist() == list(range(0, 40, 2))
    # 20 fps: output frame k sits at 1.5 k source frames, a tie for odd k
    assert nearest_frames(times, 20).tolist()[:6] == [0, 1, 3, 4, 6, 7]
    assert len(nearest_frames(times, 20)) == 27  # 39 / 30 s = 1.3 s, frames at 0 .. 26 / 20 s


def test_upsampling_repeats_frames_and_float32_timestamps_do_not_add_one():
    assert nearest_frames(np.arange(4) / 10, 20).tolist() == [0, 0, 1, 1, 2, 2, 3]
    stamps = (np.arange(41) / 30).astype(np.float32)  # the last one is 4/3 s, just below or above in float32
    assert len(nearest_frames(stamps, 15)) == 21


def test_irregular_timestamps_are_followed_not_the_frame_index():
    times = np.array([0.0, 0.05, 0.1, 0.3, 0.4])  # a burst, then a gap: 0.2 s is as far from 0.1 as from 0.3
    assert nearest_frames(times, 10).tolist() == [0, 2, 2, 3, 4]


def test_select_frames_makes_windows_explicit_and_picks_images():
    picks = np.array([0, 2, 2])
    assert select_frames(VideoWindow(Path("a.mp4")), picks, 5) == VideoWindow(Path("a.mp4"), 0, 5, (0, 2, 2))
    assert select_frames(VideoWindow(Path("a.mp4"), 7, 4), picks, 4) == VideoWindow(Path("a.mp4"), 7, 4, (0, 2, 2))
    assert select_frames(ImageSequence((b"a", b"b", b"c")), picks, 3) == ImageSequence((b"a", b"c", b"c"))
    with pytest.raises(ValueError, match="needs the count"):
        VideoWindow(Path("a.mp4"), frames=(0,))


def _levels(path: Path) -> list[tuple[float, int]]:
    return [(stamp, int(round(float(rgb.mean())))) for stamp, rgb in iter_rgb_frames(path)]


@pytest.mark.parametrize("picks", [tuple(range(0, 40, 2)), (0, 0, 1, 1, 5, 39, 39)])
def test_a_window_with_frames_writes_exactly_those_frames(astribot_src, tmp_path, picks):
    source = astribot_src / f"videos/chunk-000/{CAMERA_KEYS['head']}/episode_000000.mp4"
    target = tmp_path / "head.mp4"
    _stage_window(VideoWindow(source, 0, 40, picks), "head.mp4", len(picks), target, 15, VideoOptions(), PhaseTimes())
    written = _levels(target)
    assert [stamp for stamp, _ in written] == pytest.approx([k / 15 for k in range(len(picks))], abs=1e-6)
    for (_, level), pick in zip(written, picks, strict=True):
        assert abs(level - expected_gray_level(0, pick, "head")) <= 6


def test_a_selection_that_does_not_match_the_rows_is_rejected(astribot_src, tmp_path):
    source = astribot_src / f"videos/chunk-000/{CAMERA_KEYS['head']}/episode_000000.mp4"
    with pytest.raises(EpisodeRejected, match="^video file head.mp4: the episode selects 3 frames for 4 rows$"):
        _stage_window(VideoWindow(source, 0, 40, (0, 1, 2)), "head.mp4", 4, tmp_path / "x.mp4", 15, VideoOptions(),
                      PhaseTimes())
