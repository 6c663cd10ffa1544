"""Frame pairs of the unified Astribot fixture (episodes of 40, 52 and 45 frames, 64×48 videos)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.vd_vae import frame_pairs
from clap_data.vd_vae.frame_pairs import episode_videos, iter_episode_frames, iter_frame_pairs, parse_camera_option


@pytest.fixture(scope="module")
def lerobot_frames(unified_astribot):
    """Stock lerobot's decoding of the head camera, frame by frame (uint8 HWC)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/frame-pairs", root=unified_astribot, video_backend="pyav")

    def frame(index: int) -> np.ndarray:
        chw = dataset[index]["observation.images.head"].numpy()
        return np.round(chw.transpose(1, 2, 0) * 255).astype(np.uint8)

    return frame


class CountingContainer:
    """An av container that counts seeks and decoded frames, to prove the decoding is sequential."""

    def __init__(self, container, counts: dict[str, int]):
        self._container, self._counts = container, counts
        self.streams = container.streams

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()

    def seek(self, *args, **kwargs):
        self._counts["seeks"] += 1
        self._container.seek(*args, **kwargs)

    def decode(self, stream):
        for frame in self._container.decode(stream):
            self._counts["decoded"] += 1
            yield frame


@pytest.mark.parametrize("episode, start", [(0, 0), (1, 40)])
def test_frames_equal_what_stock_lerobot_decodes_with_one_seek(unified_astribot, lerobot_frames, monkeypatch,
                                                                episode, start):
    counts = {"seeks": 0, "decoded": 0}
    real_open = av.open
    monkeypatch.setattr(frame_pairs.av, "open", lambda path: CountingContainer(real_open(path), counts))
    video = episode_videos(DatasetMetadata.load(unified_astribot), "head")[episode]
    assert (video.first_frame, video.length) == (start, [40, 52][episode])
    frames = list(iter_episode_frames(video))
    monkeypatch.undo()  # lerobot's decoding below is not counted
    assert counts == {"seeks": 1 if start else 0, "decoded": video.length}  # one seek, every frame decoded once
    assert len(frames) == video.length and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    for offset, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, lerobot_frames(start + offset), err_msg=f"frame {offset}")
    assert not frames[0].flags.writeable


def test_an_episode_starting_between_keyframes_skips_the_frames_before_it(unified_astribot, lerobot_frames):
    video = episode_videos(DatasetMetadata.load(unified_astribot), "head")[1]
    shifted = dataclasses.replace(video, first_frame=41, length=5)  # the fixture's keyframes are even frames
    for offset, frame in enumerate(iter_episode_frames(shifted)):
        np.testing.assert_array_equal(frame, lerobot_frames(41 + offset))


def test_a_file_short_of_the_episode_is_refused(unified_astribot):
    video = episode_videos(DatasetMetadata.load(unified_astribot), "head")[2]
    with pytest.raises(ClapDataError, match="episode 2 decodes to 45 frames in order where its 50 frames"):
        list(iter_episode_frames(dataclasses.replace(video, length=50)))


def test_pairs_are_gap_apart_and_flagged_padded_at_the_end(unified_astribot):
    video = episode_videos(DatasetMetadata.load(unified_astribot), "head")[1]  # 52 frames
    frames = list(iter_episode_frames(video))
    pairs = list(iter_frame_pairs(video))
    assert [pair.t for pair in pairs] == list(range(52))
    assert [pair.t_gap for pair in pairs] == [min(t + 32, 51) for t in range(52)]
    assert [pair.padded for pair in pairs] == [t + 32 > 51 for t in range(52)]
    assert sum(not pair.padded for pair in pairs) == 20
    for pair in pairs:
        np.testing.assert_array_equal(pair.frame_t, frames[pair.t])
        np.testing.assert_array_equal(pair.frame_gap, frames[pair.t_gap])


def test_an_episode_shorter_than_the_gap_has_only_padded_pairs(unified_astribot):
    video = episode_videos(DatasetMetadata.load(unified_astribot), "head")[0]  # 40 frames
    pairs = list(iter_frame_pairs(video, gap=50))
    assert len(pairs) == 40 and all(pair.padded and pair.t_gap == 39 for pair in pairs)
    short = list(iter_frame_pairs(video, gap=1))
    assert [(pair.t_gap, pair.padded) for pair in short[-2:]] == [(39, False), (39, True)]


def test_a_missing_camera_is_refused_naming_the_cameras_there(unified_astribot):
    meta = DatasetMetadata.load(unified_astribot)
    with pytest.raises(ClapDataError) as error:
        episode_videos(meta, "ego")
    assert str(error.value) == f"{meta.root} has no camera 'ego': its cameras are head, wrist_left, wrist_right"


def test_camera_option_one_for_all_or_per_dataset(unified_astribot):
    other = Path(str(unified_astribot) + "-copy")  # never opened: named only to be refused
    assert parse_camera_option(["head"], [unified_astribot]) == {unified_astribot: "head"}
    assert parse_camera_option([f"{unified_astribot.name}=wrist_left"], [unified_astribot]) == {
        unified_astribot: "wrist_left"
    }
    assert parse_camera_option(["head", f"{unified_astribot}=wrist_right"], [unified_astribot]) == {
        unified_astribot: "wrist_right"
    }
    with pytest.raises(ClapDataError, match="has no camera 'ego': its cameras are head, wrist_left, wrist_right"):
        parse_camera_option(["ego"], [unified_astribot])
    with pytest.raises(ClapDataError, match=r"two cameras for every dataset \(head and ego\)"):
        parse_camera_option(["head,ego"], [unified_astribot])
    with pytest.raises(ClapDataError, match="names dataset 'droid', which is none of"):
        parse_camera_option(["droid=head"], [unified_astribot])
    with pytest.raises(ClapDataError, match="is not of the form CAM or DATASET=CAM"):
        parse_camera_option([f"{unified_astribot.name}="], [unified_astribot])
    with pytest.raises(ClapDataError, match=f"no camera for {other}: give --camera CAM for all"):
        parse_camera_option([f"{unified_astribot.name}=head"], [unified_astribot, other])
    with pytest.raises(ClapDataError, match="two cameras for"):
        parse_camera_option([f"{unified_astribot}=head", f"{unified_astribot.name}=wrist_left"], [unified_astribot])
