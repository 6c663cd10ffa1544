"""The adapter contract every source follows: list episodes cheaply, read one into canonical frames.

Listing runs once on the driver and must only look at metadata and file names; reading runs on Ray
workers, one episode at a time, so it must only touch that episode's files. Anything wrong with
one episode is raised as :class:`EpisodeRejected` (the episode is quarantined, the run goes on);
anything wrong with the whole source is a :class:`~clap_data.errors.ClapDataError` (the run stops).

Frame rates follow the same split: a declared rate that is no usable number stops the run at
listing (:mod:`clap_data.sources.metadata_io`), an episode whose timestamps run at another rate
than the declared one is quarantined when it is read (:func:`require_frame_rate`), since listing
reads no episode file. Resampling onto another rate (``--fps``) picks, for every output frame, the
source frame nearest in time (:func:`nearest_frames`, :func:`select_frames`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray


class EpisodeRejected(Exception):
    """One episode cannot be ingested. ``category`` is a stable name for scripts and DuckDB."""

    def __init__(self, category: str, file: str | None, reason: str):
        super().__init__(reason)
        self.category = category
        self.file = file
        self.reason = reason


@dataclass(frozen=True)
class EpisodeRef:
    """An episode as listed on the driver: small and picklable, shipped to a worker."""

    source_episode: str  # the id the source itself uses, e.g. "000001" or "<task>/<episode>"
    order: int  # position in the source's listing: fixes the output episode order
    path: str  # the episode's main file relative to the source root (provenance)
    details: dict[str, Any] = field(default_factory=dict)  # adapter-private, JSON-able


@dataclass(frozen=True)
class VideoWindow:
    """One camera's frames of an episode, from a video file: frames ``[start, start + count)``
    in display order, or the whole file when ``count`` is None.

    A whole file, or a window that starts on a keyframe of a stream without B-frames (episodes of
    a LeRobot v3 file), is stream-copied; any other window (a narrated action inside an Ego4D
    clip) is re-encoded so that it starts exactly at ``start``.

    ``frames``, when given, are the window's frames the episode keeps, in order, as offsets from
    ``start`` (a resampled episode: non-decreasing, repeats allowed); they are re-encoded, and
    ``count`` must then be given.

    ``name`` is how messages name the file (relative to the source root) where ``path`` is not under it;
    ``fetched`` marks a local copy of a remote file holding only this window's bytes: conversion stages its
    frames (never leaves them to be copied at assembly) and then deletes it.
    """

    path: Path
    start: int = 0
    count: int | None = None
    frames: tuple[int, ...] | None = None
    name: str | None = None
    fetched: bool = False

    def __post_init__(self) -> None:
        if self.frames is not None and self.count is None:
            raise ValueError("a VideoWindow that selects frames needs the count of frames it selects from")


@dataclass(frozen=True)
class ImageSequence:
    """One camera's frames as encoded still images (JPEG or PNG bytes, e.g. RLDS), one per
    frame; they are encoded into a video on ingest."""

    images: tuple[bytes, ...]


VideoInput = VideoWindow | ImageSequence


@dataclass
class CanonicalEpisode:
    """One episode in the unified representation (METHOD.md §1), before it is written."""

    state: NDArray[np.float64]  # [N, 14]
    action: NDArray[np.float64]  # [N, 14]
    arm_mask: NDArray[np.float64]  # [N, 2]
    tasks: list[str]  # per-frame episode instruction (the LeRobot task)
    subtasks: list[str]  # per-frame fine instruction, "" where none
    videos: dict[str, VideoInput]  # unified camera name -> where its frames come from
    # Source facts kept per episode as `source/<key>` columns of meta/episodes (e.g. DROID's
    # alternative instructions and success flag). An adapter must give every episode the same keys.
    extra: dict[str, str | int | float | bool] = field(default_factory=dict)


class Source(Protocol):
    """What the ingest pipeline needs from a source. Implementations must pickle cheaply."""

    name: str  # CLI name, e.g. "astribot"
    root: Path  # the source folder; quarantine reasons name files relative to it
    embodiment: str  # robot_type of the output
    fps: int
    cameras: tuple[str, ...]  # unified camera names that will be written
    notices: list[str]  # dataset-level findings shown in the summary (e.g. a camera left out)

    def list_episodes(self) -> list[EpisodeRef]: ...

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode: ...

    def describe(self) -> dict[str, Any]:
        """Provenance written to ``meta/clap_data.json``: source kind, root, options."""
        ...


def require_file(path: Path, root: Path, what: str) -> Path:
    """``path`` if it is a file, else reject the episode naming the file relative to ``root``."""
    if not path.is_file():
        raise EpisodeRejected("missing_file", str(path.relative_to(root)), f"{what} {path.relative_to(root)} is missing")
    return path


def require_increasing(timestamps: np.ndarray, category_file: str, what: str, unit: str = "row") -> None:
    """Reject an episode whose clock has NaN/Inf or does not strictly increase.

    ``what`` names the file as the reason should ("data file data/…"), ``unit`` what an index
    counts ("row", "frame"). Integer clocks (nanoseconds) are printed as they are.
    """
    values = np.asarray(timestamps)
    if not np.isfinite(values.astype(np.float64)).all():
        raise EpisodeRejected("timestamps", category_file, f"{what} has NaN or Inf timestamps")
    bad = np.diff(values) <= 0
    if bad.any():
        index = int(np.argmax(bad)) + 1
        before, after = values[index - 1], values[index]
        shown = (before, after) if np.issubdtype(values.dtype, np.integer) else (f"{before:.6f}", f"{after:.6f}")
        raise EpisodeRejected(
            "timestamps", category_file, f"{what} has non-increasing timestamps at {unit} {index} ({shown[0]} then {shown[1]})"
        )


# Relative tolerance of a declared frame rate against the episode's clock (29.97 vs 30 is 0.1 %).
FRAME_RATE_TOLERANCE = 5e-4


def require_frame_rate(timestamps: np.ndarray, fps: float, category_file: str, what: str, declared_in: str) -> None:
    """Reject an episode whose clock runs at another rate than its metadata declares
    (``fps_mismatch``): the median frame interval, which a few dropped or doubled frames do not
    move, must be 1 / ``fps`` within :data:`FRAME_RATE_TOLERANCE` and the resolution of the stored
    timestamps (float32 ones are coarse late in long episodes). ``declared_in`` names the file."""
    values = np.asarray(timestamps)
    if len(values) < 2:
        return
    interval = float(np.median(np.diff(values.astype(np.float64))))
    if interval <= 0:
        return  # not a clock at all: the monotonicity checks name the first bad row
    resolution = float(np.spacing(np.abs(values).max())) if np.issubdtype(values.dtype, np.floating) else 0.0
    if abs(interval - 1 / fps) > FRAME_RATE_TOLERANCE / fps + resolution:
        raise EpisodeRejected(
            "fps_mismatch", category_file,
            f"{what} has timestamps {interval:.6f} s apart (median), i.e. {1 / interval:.3f} fps, "
            f"but {declared_in} declares fps {fps:g}",
        )


def nearest_frames(times: np.ndarray, fps: int) -> np.ndarray:
    """Resampling onto ``fps``: for each output frame k at ``k / fps`` (from the first frame's time
    to the last's), the index of the source frame nearest in time, the earlier one on a tie.
    ``times`` are the source frames' times in seconds, increasing. Comparisons allow a thousandth
    of an output frame, so that float32 round-off neither adds a frame nor decides a tie."""
    times = np.asarray(times, dtype=np.float64) - float(times[0])
    slack = 1e-3 / fps
    grid = np.arange(int(np.floor((times[-1] + slack) * fps)) + 1) / fps
    after = np.clip(np.searchsorted(times, grid), 0, len(times) - 1)
    before = np.maximum(after - 1, 0)
    return np.where(grid - times[before] <= times[after] - grid + slack, before, after)


def select_frames(video: VideoInput, picks: np.ndarray, source_frames: int) -> VideoInput:
    """One camera's input reduced to the frames ``picks`` (indices into the episode's
    ``source_frames`` frames, e.g. from :func:`nearest_frames`)."""
    if isinstance(video, ImageSequence):
        return ImageSequence(tuple(video.images[i] for i in picks))
    count = source_frames if video.count is None else video.count
    return replace(video, count=count, frames=tuple(int(i) for i in picks))


def discard_fetched(videos: Iterable[VideoInput]) -> None:
    """Delete the local copies of remote video windows (:attr:`VideoWindow.fetched`) once they are no longer needed:
    after conversion staged them, or when the episode was rejected after fetching some."""
    for frames_from in videos:
        if isinstance(frames_from, VideoWindow) and frames_from.fetched:
            frames_from.path.unlink(missing_ok=True)
