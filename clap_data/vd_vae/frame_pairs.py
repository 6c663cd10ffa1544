"""The VD-VAE's inputs: frame pairs ``(o_t, o_{t+gap})`` of one camera of one episode (METHOD.md §4).

Every frame of an episode is an ``o_t`` and, ``gap`` frames earlier, an ``o_{t+gap}``, so the episode
is decoded once, sequentially with PyAV: one seek to the episode's first frame (a keyframe in our
files, each episode's video made on its own before concatenation; otherwise the frames decoded from
the keyframe before it are skipped), then forward decoding — a seek per frame would decode up to a
GOP each time. FFmpeg's frame threads are on: 1.5–2.2× PyAV's default on HEVC, the same pixels
(``bench/decoders.py``; AV1's dav1d threads itself either way).

The pairs stream (:func:`iter_frame_pairs`): only a window of ``gap + 1`` frames is held, so memory
stays bounded however long the episode (a 10-minute 720p episode at 30 fps would be 50 GB decoded).
A pair whose ``t + gap`` falls past the episode's end has the last frame in its place and is flagged
``padded``: training skips those, pseudo-labelling keeps them (every frame gets a label) with the flag.
Frames are handed out read-only because one array is the ``o_t`` of one pair and the ``o_{t+gap}``
of another; augment a copy.

Episodes are placed in their camera's files through the episodes metadata of our LeRobot v3 layout
(``videos/<key>/chunk_index|file_index|from_timestamp``, frame ``k`` of a file at ``k / fps``) and
frames matched to positions by timestamp, as lerobot's own decoder does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.metadata import DatasetMetadata

GAP = 32  # frames between o_t and o_{t+gap} (paper §III-C2)
CAMERA_PREFIX = "observation.images."


@dataclass(frozen=True)
class EpisodeVideo:
    """Where one episode's frames of one camera lie: ``length`` frames from ``first_frame`` of ``path``.
    Small and picklable, so a pipeline can ship it to the worker that decodes it."""

    episode_index: int
    camera: str
    path: Path
    first_frame: int
    length: int
    fps: int


@dataclass(frozen=True)
class FramePair:
    """Frame ``t`` of the episode and the frame ``gap`` later (``t_gap``; the last frame when ``padded``)."""

    t: int
    t_gap: int
    frame_t: np.ndarray
    frame_gap: np.ndarray
    padded: bool


def decoder_identity() -> dict[str, str]:
    """The decoder that turns our videos into the pixels a model sees: part of the pseudo-tokens' identity,
    since decoders (and FFmpeg builds) may differ in the last bit of a pixel, and so in a code."""
    libavcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    return {"name": "pyav", "version": av.__version__, "libavcodec": libavcodec}


def camera_video_key(meta: DatasetMetadata, camera: str) -> str:
    """The video feature of ``camera`` (``head`` → ``observation.images.head``); refuses a camera the
    dataset lacks, naming the cameras it has."""
    if camera not in meta.cameras:
        has = f"its cameras are {', '.join(meta.cameras)}" if meta.cameras else "it has no camera"
        raise ClapDataError(f"{meta.root} has no camera {camera!r}: {has}")
    return CAMERA_PREFIX + camera


def episode_videos(meta: DatasetMetadata, camera: str) -> dict[int, EpisodeVideo]:
    """Episode index → its video of ``camera``, from one read of the episodes metadata."""
    key = camera_video_key(meta, camera)
    names = ("episode_index", "length", f"videos/{key}/chunk_index", f"videos/{key}/file_index",
             f"videos/{key}/from_timestamp")
    columns = meta.episodes(list(names))
    fps = meta.fps
    videos = {}
    for episode, length, chunk, file, start in zip(*(columns.column(name).to_pylist() for name in names), strict=True):
        path = meta.root / layout.VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
        videos[episode] = EpisodeVideo(episode, camera, path, round(start * fps), length, fps)
    return videos


def iter_episode_frames(video: EpisodeVideo) -> Iterator[np.ndarray]:
    """The episode's frames in order, each a read-only uint8 ``[H, W, 3]`` RGB array, decoded once
    each after a single seek. Refuses a file that lacks some of the episode's frames."""
    end = video.first_frame + video.length
    expected = video.first_frame
    if expected == end:
        return
    try:
        with av.open(str(video.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads (see the module docstring)
            ticks_per_frame = 1 / (stream.time_base * video.fps)
            if video.first_frame > 0:
                target = round(video.first_frame * ticks_per_frame)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                index = round(Fraction(frame.pts) / ticks_per_frame)
                if index < expected:  # decoded from the keyframe before the episode, or a repeat
                    continue
                if index > expected:  # a frame is missing: refused below
                    break
                pixels = frame.to_ndarray(format="rgb24")
                pixels.flags.writeable = False
                yield pixels
                expected += 1
                if expected == end:
                    return
    except (av.error.FFmpegError, OSError, IndexError) as exc:
        raise ClapDataError(f"{video.path}: episode {video.episode_index} cannot be decoded ({exc})") from None
    if expected != end:
        raise ClapDataError(f"{video.path}: episode {video.episode_index} decodes to {expected - video.first_frame} "
                            f"frames in order where its {video.length} frames are expected")


def iter_frame_pairs(video: EpisodeVideo, gap: int = GAP) -> Iterator[FramePair]:
    """Every frame ``t`` of the episode paired with frame ``t + gap`` (``padded`` past the end), in
    order of ``t``, holding at most ``gap + 1`` decoded frames."""
    if gap < 1:
        raise ValueError(f"gap must be at least 1, not {gap}")
    window: deque[np.ndarray] = deque(maxlen=gap + 1)
    t = 0
    for frame in iter_episode_frames(video):
        window.append(frame)
        if len(window) == gap + 1:
            yield FramePair(t, t + gap, window[0], frame, padded=False)
            t += 1
    pending = list(window)[len(window) - (video.length - t):]  # frames t… found no frame gap later
    for offset, frame in enumerate(pending):
        yield FramePair(t + offset, video.length - 1, frame, window[-1], padded=True)


def _resolve(name: str, datasets: list[Path]) -> Path:
    """The dataset a ``DS=`` names: the path as given, or (when unambiguous) the folder's name."""
    exact = [path for path in datasets if path.absolute() == Path(name).absolute()]
    by_name = [path for path in datasets if path.name == name]
    found = exact or by_name
    if not found:
        raise ClapDataError(f"--camera names dataset {name!r}, which is none of {', '.join(map(str, datasets))}")
    if len(found) > 1:
        raise ClapDataError(f"--camera {name}=… is ambiguous: several datasets are named {name!r}; give the path")
    return found[0]


def parse_camera_option(values: list[str], datasets: list[Path]) -> dict[Path, str]:
    """``--camera`` values → the camera of each dataset, each checked against the dataset's metadata.

    A bare ``CAM`` is for every dataset not named otherwise; ``DS=CAM`` (DS the path as given or the
    folder's name) is for one. Values may also be comma-separated (``--camera a=head,b=ego``)."""
    default: str | None = None
    chosen: dict[Path, str] = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        name, equals, camera = item.rpartition("=")
        if not camera or (equals and not name):
            raise ClapDataError(f"--camera {item!r} is not of the form CAM or DATASET=CAM")
        if not name:
            if default not in (None, camera):
                raise ClapDataError(f"--camera got two cameras for every dataset ({default} and {camera}); "
                                    "give one, or DATASET=CAM per dataset")
            default = camera
            continue
        dataset = _resolve(name, datasets)
        if chosen.get(dataset, camera) != camera:
            raise ClapDataError(f"--camera got two cameras for {dataset} ({chosen[dataset]} and {camera})")
        chosen[dataset] = camera
    cameras = {}
    for dataset in datasets:
        camera = chosen.get(dataset, default)
        if camera is None:
            raise ClapDataError(f"no camera for {dataset}: give --camera CAM for all, or --camera {dataset.name}=CAM")
        camera_video_key(DatasetMetadata.load(dataset), camera)
        cameras[dataset] = camera
    return cameras
