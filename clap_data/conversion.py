"""Convert one episode: read it through its source adapter, validate its videos, stage the result.

This is the unit of work a Ray worker runs. Everything it writes goes to a temporary directory
that is renamed into the staging area only when complete, and everything wrong with the episode
ends as a quarantine record naming the file and the reason, never as a crashed run.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass
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
)
from clap_data.staging import StagingArea

STAGED_FRAMES = "frames.parquet"
STAGED_RECORD = "episode.json"
DEFAULT_CODEC = "av1"  # for anything re-encoded without --vcodec: lerobot's own default
IMAGE_STATS_KEYFRAMES = 16  # per camera and episode; lerobot decodes up to ~100 frames, we sample keyframes


@dataclass(frozen=True)
class VideoOptions:
    """How videos are validated and written. Stream copy unless a size or codec is asked for."""

    full_decode: bool = False
    resize: tuple[int, int] | None = None  # (height, width)
    codec: str | None = None  # h264 | hevc | av1; None keeps the source's by stream copy
    gop: int = 2
    crf: int = 30

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


def _stage_window(window: VideoWindow, relative: str, frames: int, target: Path, fps: int, options: VideoOptions) -> None:
    """Validate a camera's frames in a video file against the episode and write them, regular-timed.
    A window that selects frames (a resampled episode) is re-encoded with just those frames."""
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
    video.check_decodes(window.path, probe, full=options.full_decode, start=window.start, count=count)
    if options.reencode or window.frames is not None or not probe.can_copy(window.start):
        video.reencode(window.path, target, fps, options.resize, options.codec or DEFAULT_CODEC, options.gop, options.crf,
                       start=window.start, count=count, probe=probe, frames=window.frames)
    else:
        video.copy_window(window.path, target, probe, fps, start=window.start, count=count)


def _stage_images(images: ImageSequence, relative: str, frames: int, target: Path, fps: int, options: VideoOptions) -> None:
    if len(images.images) != frames:
        raise EpisodeRejected("frame_count", relative, f"{relative} has {len(images.images)} images for {frames} rows")
    video.encode_images(images.images, target, fps, options.resize, options.codec or DEFAULT_CODEC, options.gop, options.crf)


def _stage_video(frames_from: VideoInput, relative: str, frames: int, target: Path, fps: int, options: VideoOptions) -> dict[str, Any]:
    """Write one camera's frames of the episode to ``target`` and describe the written video."""
    try:
        if isinstance(frames_from, ImageSequence):
            _stage_images(frames_from, relative, frames, target, fps, options)
        else:
            _stage_window(frames_from, relative, frames, target, fps, options)
        written = video.probe_video(target)
        pixels = image_stats(video.sample_keyframes(target, IMAGE_STATS_KEYFRAMES))
    except video.VideoError as exc:
        raise EpisodeRejected("bad_video", relative, f"{'' if isinstance(frames_from, ImageSequence) else 'video file '}{relative} {exc}") from None
    return {
        "source_file": relative,  # what a quarantine at assembly time names (check_episode)
        "image_stats": {name: value.tolist() for name, value in pixels.items()},
        "frame_count": written.frame_count,
        "codec": written.codec,
        "width": written.width,
        "height": written.height,
        "pix_fmt": written.pix_fmt,
        "fingerprint": written.codec_fingerprint,
    }


def _describe_input(frames_from: VideoInput, source: Source, ref: EpisodeRef, camera: str) -> str:
    """How quarantine reasons name a camera's input: the file relative to the source root."""
    if isinstance(frames_from, ImageSequence):
        return f"{ref.path} camera {camera}"
    return str(frames_from.path.relative_to(source.root))


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
    staging.clear_quarantine(ref)  # this attempt replaces what an earlier one recorded (an error log too)
    try:
        episode = source.read_episode(ref)
        frames = len(episode.state)
        with building_dir(staging.episode_dir(ref)) as work:
            videos = {
                camera: _stage_video(
                    frames_from, _describe_input(frames_from, source, ref, camera), frames,
                    work / "videos" / f"{camera}.mp4", source.fps, options,
                )
                for camera, frames_from in episode.videos.items()
            }
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
        return EpisodeOutcome(ref.order, ref.source_episode, "ok", frames, seconds=time.perf_counter() - started)
    except EpisodeRejected as rejected:
        outcome = EpisodeOutcome(
            ref.order, ref.source_episode, "quarantined", 0, rejected.category, rejected.file or ref.path,
            rejected.reason, time.perf_counter() - started,
        )
    except Exception as exc:  # one unexpected episode must not sink a 100k-episode run
        logged = _log_internal_error(source, ref, staging)
        outcome = EpisodeOutcome(
            ref.order, ref.source_episode, "quarantined", 0, "internal_error", ref.path,
            f"unexpected error while converting {ref.path}: {type(exc).__name__}: {exc} ({logged})",
            time.perf_counter() - started,
        )
    staging.write_quarantine(ref, {k: v for k, v in asdict(outcome).items() if k not in ("status", "frames", "seconds")})
    return outcome
