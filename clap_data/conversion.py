"""Convert one episode: read it through its source adapter, validate its videos, stage the result.

This is the unit of work a Ray worker runs. Everything it writes goes to a temporary directory
that is renamed into the staging area only when complete, and everything wrong with the episode
ends as a quarantine record naming the file and the reason, never as a crashed run.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_data import __version__, video
from clap_data.atomic import building_dir, write_text_atomic
from clap_data.lerobot_v3.stats import image_stats
from clap_data.schemas import data_arrow_schema, frame_features
from clap_data.sources.base import (
    CanonicalEpisode,
    EpisodeRef,
    EpisodeRejected,
    ImageSequence,
    Source,
    VideoInput,
    VideoWindow,
    discard_fetched,
)
from clap_data.staging import StagingArea, window_source

STAGED_FRAMES = "frames.parquet"
STAGED_RECORD = "episode.json"
DEFAULT_CODEC = "av1"  # for anything re-encoded without --vcodec: lerobot's own default
# Keyframes decoded per camera and episode for its image statistics (lerobot decodes ~100 frames); on the real
# Astribot wrist video 16 estimate the episode's mean colour within 0.001-0.0015, 4 within 0.007-0.014 (bench/RESULTS.md).
IMAGE_STATS_KEYFRAMES = 16


@dataclass(frozen=True)
class VideoOptions:
    """How videos are validated and written. Stream copy unless a size or codec is asked for."""

    full_decode: bool = False
    resize: tuple[int, int] | None = None  # (height, width)
    codec: str | None = None  # h264 | hevc | av1; None keeps the source's by stream copy
    gop: int = 2
    crf: int = 30
    stats_keyframes: int = IMAGE_STATS_KEYFRAMES  # per camera and episode, for the image statistics

    def __post_init__(self) -> None:
        if self.stats_keyframes < 1:
            raise ValueError(f"stats_keyframes must be at least 1 (image statistics need a frame), not {self.stats_keyframes}")

    @property
    def reencode(self) -> bool:
        return self.resize is not None or self.codec is not None


@dataclass(frozen=True)
class EpisodeOutcome:
    """What the driver learns about one episode: small, so results stream back cheaply."""

    order: int
    source_episode: str
    status: str  # "ok" | "quarantined" | "resumed"
    frames: int
    category: str = ""
    file: str = ""
    reason: str = ""
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per EPISODE_PHASES name


EPISODE_PHASES = ("read", "probe", "decode", "video", "stats", "staging")


class PhaseTimes:
    """Seconds an episode's conversion spends in each of :data:`EPISODE_PHASES` — reading the source, probing its
    videos (demuxing every packet, checking frame counts), decoding frames (to prove they decode, and the keyframes
    sampled for image statistics, in one pass), writing video (copy or re-encode), computing the image statistics,
    staging writes — so that a slow ingest says where its time goes (the summary, ``--json``, ``bench/ingest.py``)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(EPISODE_PHASES, 0.0)

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


def staged_table_schema() -> pa.Schema:
    """Per-episode staged frames: the unified columns that do not depend on the episode's final
    position (episode_index, index and task_index are assigned when the dataset is assembled)."""
    base = data_arrow_schema(frame_features())
    keep = [base.field(name) for name in ("observation.state", "action", "arm_mask", "subtask", "frame_index")]
    return pa.schema(keep + [pa.field("task", pa.string())])


def _frames_table(episode: CanonicalEpisode) -> pa.Table:
    frames = len(episode.state)
    schema = staged_table_schema()

    def vectors(values: np.ndarray, name: str) -> pa.Array:
        flat = pa.array(values.astype(np.float32).ravel(), type=pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, type=schema.field(name).type)

    return pa.Table.from_arrays(
        [
            vectors(episode.state, "observation.state"),
            vectors(episode.action, "action"),
            vectors(episode.arm_mask, "arm_mask"),
            pa.array(episode.subtasks, type=pa.string()),
            pa.array(np.arange(frames, dtype=np.int64)),
            pa.array(episode.tasks, type=pa.string()),
        ],
        schema=schema,
    )


def _check_window(window: VideoWindow, relative: str, frames: int) -> tuple[video.VideoProbe, int]:
    """Probe a camera's video file and check the window against the episode's rows; returns the file's probe and how
    many of its frames the window spans. Whether those frames decode is proved after (:func:`_decoded_samples`)."""
    probe = video.probe_video(window.path)
    if window.count is None and probe.frame_count != frames:
        raise EpisodeRejected(
            "frame_count", relative, f"video file {relative} has {probe.frame_count} frames but the data file has {frames} rows"
        )
    count = frames if window.count is None else window.count
    selected = count if window.frames is None else len(window.frames)
    if selected != frames:
        raise EpisodeRejected(
            "frame_count", relative, f"video file {relative}: the episode selects {selected} frames for {frames} rows"
        )
    if window.start < 0 or window.start + count > probe.frame_count:
        raise EpisodeRejected(
            "frame_count", relative,
            f"video file {relative} has {probe.frame_count} frames; the episode needs frames {window.start} to {window.start + count - 1}",
        )
    return probe, count


def _decoded_samples(path: Path, probe: video.VideoProbe, full: bool, keyframes: int, start: int, count: int,
                     times: PhaseTimes) -> dict[str, np.ndarray]:
    """Prove the window decodes and, from the ``keyframes`` keyframes decoded on the way, its image statistics."""
    with times.timing("decode"):
        samples = video.check_and_sample(path, probe, full, keyframes, start, count)
    with times.timing("stats"):
        return image_stats(samples)


def _copied_at_assembly(window: VideoWindow, probe: video.VideoProbe, options: VideoOptions) -> bool:
    """Whether assembly can copy the window's packets straight from the source file into the dataset's video file,
    so that nothing is staged: a plain stream copy (no re-encoding, no frame selection) of a window that starts on
    a keyframe of a stream without B-frames (its packets then come in display order, one per frame)."""
    return not options.reencode and window.frames is None and probe.decode_delay == 0 and probe.can_copy(window.start)


def _stage_window(window: VideoWindow, relative: str, frames: int, target: Path, fps: int, options: VideoOptions,
                  times: PhaseTimes) -> dict[str, Any]:
    """Validate a camera's frames in a video file against the episode; then either note where assembly will copy
    them from, or write them to ``target`` (re-encoded, or stream-copied when their packets need reordering)."""
    with times.timing("probe"):
        probe, count = _check_window(window, relative, frames)
    if _copied_at_assembly(window, probe, options) and not window.fetched:
        pixels = _decoded_samples(window.path, probe, options.full_decode, options.stats_keyframes, window.start, count,
                                  times)
        return video_record(relative, probe, count, pixels,
                            copy_from=window_source(window.path, probe.display_pts[window.start]))
    with times.timing("decode"):  # the statistics come from the staged file, what assembly appends
        video.check_decodes(window.path, probe, options.full_decode, window.start, count)
    with times.timing("video"):
        if options.reencode or window.frames is not None or not probe.can_copy(window.start):
            video.reencode(window.path, target, fps, options.resize, options.codec or DEFAULT_CODEC, options.gop,
                           options.crf, start=window.start, count=count, probe=probe, frames=window.frames)
        else:
            video.copy_window(window.path, target, probe, fps, start=window.start, count=count)
    return _staged_video_record(relative, target, options, times)


def _stage_images(images: ImageSequence, relative: str, frames: int, target: Path, fps: int, options: VideoOptions,
                  times: PhaseTimes) -> dict[str, Any]:
    if len(images.images) != frames:
        raise EpisodeRejected("frame_count", relative, f"{relative} has {len(images.images)} images for {frames} rows")
    with times.timing("video"):
        video.encode_images(images.images, target, fps, options.resize, options.codec or DEFAULT_CODEC, options.gop, options.crf)
    return _staged_video_record(relative, target, options, times)


def _staged_video_record(relative: str, target: Path, options: VideoOptions, times: PhaseTimes) -> dict[str, Any]:
    """Describe a video written to the staging area (probed again: it is what assembly will append)."""
    with times.timing("video"):
        written = video.probe_video(target)
    with times.timing("decode"):
        samples = video.sample_keyframes(target, written, options.stats_keyframes)
    with times.timing("stats"):
        pixels = image_stats(samples)
    return video_record(relative, written, written.frame_count, pixels)


def video_record(relative: str, probe: video.VideoProbe, frame_count: int, pixels: dict[str, Any],
                 copy_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """One camera's entry of a staged record, what the assembler appends (a merge builds them too). ``pixels``: the
    image statistics (arrays or lists); ``copy_from`` (:func:`~clap_data.staging.window_source`), when assembly
    copies the frames straight from a source file."""
    record = {
        "source_file": relative,  # what a quarantine at assembly time names (check_episode)
        "image_stats": {name: np.asarray(value).tolist() for name, value in pixels.items()},
        "frame_count": frame_count,
        "codec": probe.codec,
        "width": probe.width,
        "height": probe.height,
        "pix_fmt": probe.pix_fmt,
        "fingerprint": probe.codec_fingerprint,
    }
    return record if copy_from is None else {**record, "copy_from": copy_from}


def _stage_video(frames_from: VideoInput, relative: str, frames: int, target: Path, fps: int, options: VideoOptions,
                 times: PhaseTimes) -> dict[str, Any]:
    """One camera's frames of the episode, validated and staged (or noted for assembly to copy), described."""
    try:
        if isinstance(frames_from, ImageSequence):
            return _stage_images(frames_from, relative, frames, target, fps, options, times)
        return _stage_window(frames_from, relative, frames, target, fps, options, times)
    except video.VideoError as exc:
        raise EpisodeRejected("bad_video", relative, f"{'' if isinstance(frames_from, ImageSequence) else 'video file '}{relative} {exc}") from None


def _describe_input(frames_from: VideoInput, source: Source, ref: EpisodeRef, camera: str) -> str:
    """How quarantine reasons name a camera's input: the file relative to the source root."""
    if isinstance(frames_from, ImageSequence):
        return f"{ref.path} camera {camera}"
    return frames_from.name or str(frames_from.path.relative_to(source.root))


def _log_internal_error(source: Source, ref: EpisodeRef, staging: StagingArea) -> str:
    """Keep the traceback of the exception being handled in the episode's own log file, where it
    outlives the run (the quarantine keeps one sentence); returns how the reason names it."""
    log = staging.error_log(ref)
    header = f"clap-data {__version__}, {source.name} episode {ref.source_episode} ({ref.path}): unexpected error"
    try:
        write_text_atomic(log, f"{header}\n{traceback.format_exc()}")
    except OSError as exc:  # the episode is quarantined all the same
        return f"its traceback could not be written to {log}: {exc}"
    return f"traceback in {log}"


def convert_episode(source: Source, ref: EpisodeRef, staging: StagingArea, options: VideoOptions) -> EpisodeOutcome:
    """Stage one episode, or quarantine it. Idempotent: a staged episode is not redone."""
    started = time.perf_counter()
    staged = staging.staged_episode(ref)
    if staged is not None:
        return EpisodeOutcome(ref.order, ref.source_episode, "resumed", int(staged["frames"]))
    staging.forget_attempt(ref)  # this attempt replaces what an earlier one left (a stale episode, a quarantine, a log)
    times = PhaseTimes()
    episode = None
    try:
        with times.timing("read"):
            episode = source.read_episode(ref)
        frames = len(episode.state)
        with building_dir(staging.episode_dir(ref)) as work:
            videos = {
                camera: _stage_video(
                    frames_from, _describe_input(frames_from, source, ref, camera), frames,
                    work / "videos" / f"{camera}.mp4", source.fps, options, times,
                )
                for camera, frames_from in episode.videos.items()
            }
            with times.timing("staging"):
                pq.write_table(_frames_table(episode), work / STAGED_FRAMES, compression="snappy")
                record = {
                    "source_episode": ref.source_episode,
                    "order": ref.order,
                    "path": ref.path,
                    "frames": frames,
                    "tasks": list(dict.fromkeys(episode.tasks)),
                    "videos": videos,
                    "extra": episode.extra,
                }
                (work / STAGED_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return EpisodeOutcome(ref.order, ref.source_episode, "ok", frames, seconds=time.perf_counter() - started,
                              phases=times.seconds)
    except EpisodeRejected as rejected:
        outcome = EpisodeOutcome(
            ref.order, ref.source_episode, "quarantined", 0, rejected.category, rejected.file or ref.path,
            rejected.reason, time.perf_counter() - started, times.seconds,
        )
    except Exception as exc:  # one unexpected episode must not sink a 100k-episode run
        logged = _log_internal_error(source, ref, staging)
        outcome = EpisodeOutcome(
            ref.order, ref.source_episode, "quarantined", 0, "internal_error", ref.path,
            f"unexpected error while converting {ref.path}: {type(exc).__name__}: {exc} ({logged})",
            time.perf_counter() - started, times.seconds,
        )
    finally:
        if episode is not None:
            discard_fetched(episode.videos.values())
    staging.write_quarantine(ref, {k: v for k, v in asdict(outcome).items() if k not in ("status", "frames", "seconds", "phases")})
    return outcome
