"""Write a synthetic Ego4D hand-object-interaction download in the exact on-disk layout of the real one.

Ego4D is licence-gated and may never be redistributed, so tests and benchmarks of the Ego4D
ingester generate data here (see the Ego4D section of ``docs/FORMATS.md``)::

    ego4d.json                           videos[] with video_metadata.fps; clips[]
    v2/annotations/fho_main.json         videos[].annotated_intervals[].narrated_actions[]
    v2/annotations/narration.json        {video_uid: {"narration_pass_1": {"narrations": [...]}, ...}}
    v2/clips/<clip_uid>.mp4              H.264 with B-frames and an AAC track, like the canonical clips

Every field of the real annotation files is written (critical frames in clip and parent-video
frames, per-frame hand/object boxes, the rejection flags), and the quirks the ingester must treat as
normal input are available per clip: a first video timestamp that is not 0 (non-zero start
offset), an audio track longer than the video (the container's duration then disagrees with the
video stream's), a real frame rate that differs from the one ``ego4d.json`` declares, a
video absent from ``ego4d.json``, a clip file absent from the download, narrations with prefix
variants (``#C C``, ``#c c``, spaces, none), a narration missing from ``fho_main.json`` but present
in ``narration.json``, and rejected / invalid / partial / too-short / out-of-clip actions
(:func:`default_ego4d_plan` has them all).

Frames are made of three flat gray bands whose levels encode (clip mark, frame index // 25,
frame index % 25) in steps of 8 levels — see :func:`read_frame_marks` — so a reader can prove that
a cut window holds exactly the clip's frames ``pre..post`` after lossy (re-)encoding.

Run ``python -m clap_data.factories.ego4d DEST`` to write the default dataset.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

from clap_data.factories.common import clear_generated

__all__ = [
    "EGO4D_FPS",
    "Ego4DActionSpec",
    "Ego4DClipSpec",
    "clip_path",
    "default_ego4d_plan",
    "frame_levels",
    "read_frame_marks",
    "scaled_ego4d_plan",
    "write_ego4d_dataset",
]

EGO4D_FPS = 30  # canonical clips and videos
METADATA_FILE = "ego4d.json"
FHO_MAIN_FILE = "v2/annotations/fho_main.json"
NARRATION_FILE = "v2/annotations/narration.json"
CLIPS_DIR = "v2/clips"

# Gray bands: level = GRAY_BASE + GRAY_STEP * value, value in 0..GRAY_VALUES-1 (28..220). Flat
# areas survive H.264/AV1 within a few levels, so rounding to the nearest step is exact.
GRAY_BASE = 28
GRAY_STEP = 8
GRAY_VALUES = 25
MAX_FRAMES = GRAY_VALUES * GRAY_VALUES
GOP = 12  # keyframe every 12 frames: most windows start between keyframes, as in the real clips
AUDIO_RATE = 16_000
_VERBS = ("take_(pick,_grab,_get)", "put_(place,_leave,_drop)", "open", "wipe", "hold_(support,_grip,_grasp)", "cut_(trim,_slice,_chop)")


@dataclass(frozen=True)
class Ego4DActionSpec:
    """One narrated action of a clip, as annotated in ``fho_main.json``.

    ``critical`` = (pre_frame, post_frame) in clip frames, written with a pnr and a contact frame
    between them; None writes ``clip_critical_frames: null`` (and no boxes). ``bounds`` =
    (clip_start_frame, clip_end_frame); None puts them two frames outside ``critical`` (clamped
    to the clip). ``narration`` is written as is; ``narration_in_fho=False`` writes
    ``narration_text: null`` and leaves the text to ``narration.json`` only.
    """

    narration: str
    critical: tuple[int, int] | None
    bounds: tuple[int, int] | None = None
    verb: str | None = _VERBS[0]
    is_valid_action: bool = True
    is_rejected: bool = False
    is_partial: bool = False
    narration_in_fho: bool = True


@dataclass(frozen=True)
class Ego4DClipSpec:
    """One canonical clip and its annotated interval.

    ``first_pts_frames``: the video's first timestamp, in frames (the non-zero start offset quirk).
    ``stream_fps``: the real frame rate of the stream (the annotation's frame indices count its
    frames whatever it is). ``audio_seconds``: length of the AAC track, None for none; a longer
    track makes the container's duration exceed the video stream's.
    ``declared_fps``: ``video_metadata.fps`` of the clip's video in ``ego4d.json``; None leaves
    the video out of ``ego4d.json``. ``write_file=False`` leaves the mp4 out of the download.
    """

    clip_uid: str
    video_uid: str
    frames: int
    actions: tuple[Ego4DActionSpec, ...]
    first_pts_frames: int = 0
    stream_fps: int = EGO4D_FPS
    audio_seconds: float | None = None
    declared_fps: float | None = float(EGO4D_FPS)
    parent_start_frame: int = 0
    write_file: bool = True


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def default_ego4d_plan(seed: int = 0) -> list[Ego4DClipSpec]:
    """Five clips of three videos holding every quirk (module docstring) and every skip reason.

    Clip 0 (72 frames): actions with ``#C C``, ``  #c c …  `` and no prefix, one without critical
    frames, one whose narration is only in narration.json, and one each rejected, invalid,
    partial, too short (11 frames) and running past the clip's end. Clip 1 (60 frames, same video):
    first timestamp 3 frames late, 3 s of audio for 2 s of video; one window ends on its last frame.
    Clip 2 (50 frames): a 25 fps stream whose video ego4d.json declares 30 fps, audio shorter than
    the video. Clip 3 (48 frames): its video is absent from ego4d.json. Clip 4 (same video): its
    mp4 is absent from the download.
    """
    rng = np.random.default_rng(seed)
    videos = [_uid(rng) for _ in range(3)]
    clips = [_uid(rng) for _ in range(5)]
    act = Ego4DActionSpec
    return [
        Ego4DClipSpec(
            clips[0], videos[0], 72,
            (
                act("#C C picks up a cup", (4, 40)),
                act("  #c c puts the cup on the table  ", (30, 70), verb=_VERBS[1]),
                act("#C C opens the drawer", None, bounds=(10, 50), verb=None),
                act("#C C wipes the counter", (5, 45), is_rejected=True, verb=_VERBS[3]),
                act("#C C holds a knife", (6, 46), is_valid_action=False, verb=_VERBS[4]),
                act("#C C cuts the onion", (7, 47), is_partial=True, verb=_VERBS[5]),
                act("#C C drops the lid", (60, 70), verb=_VERBS[1]),
                act("#C C lifts the pan", (40, 80)),
                act("stirs the soup", (20, 60), verb=None),
                act("#C C closes the drawer", (0, 36), narration_in_fho=False, verb=None),
            ),
            parent_start_frame=3600,
        ),
        Ego4DClipSpec(
            clips[1], videos[0], 60,
            (act("#C C takes a spoon", (5, 45)), act("#C  C rinses the spoon", (20, 59), verb=None)),
            first_pts_frames=3, audio_seconds=3.0, parent_start_frame=9000,
        ),
        Ego4DClipSpec(
            clips[2], videos[1], 50, (act("#C C folds the towel", (8, 48), verb=None),),
            stream_fps=25, audio_seconds=0.5, parent_start_frame=300,
        ),
        Ego4DClipSpec(clips[3], videos[2], 48, (act("#C C waters the plant", (3, 43)),), declared_fps=None),
        Ego4DClipSpec(
            clips[4], videos[2], 60, (act("#C C sweeps the floor", (2, 40)),),
            declared_fps=None, parent_start_frame=1800, write_file=False,
        ),
    ]


def scaled_ego4d_plan(clips: int, actions_per_clip: int, frames: int = 300, seed: int = 0) -> list[Ego4DClipSpec]:
    """Many clips of valid 40-frame actions (10 clips per video), for listing-cost tests and
    benchmarks; write them with ``encode_videos=False`` unless the clips are short."""
    rng = np.random.default_rng(seed)
    plan = []
    video = _uid(rng)
    for c in range(clips):
        if c % 10 == 0:
            video = _uid(rng)
        starts = np.linspace(0, frames - 41, actions_per_clip).astype(int)
        actions = tuple(
            Ego4DActionSpec(f"#C C moves object {c}-{a}", (int(s), int(s) + 39), verb=_VERBS[a % len(_VERBS)])
            for a, s in enumerate(starts)
        )
        plan.append(Ego4DClipSpec(_uid(rng), video, frames, actions, parent_start_frame=c * frames))
    return plan


# --- Frames -----------------------------------------------------------------------------------


def frame_levels(clip_mark: int, frame_index: int) -> tuple[int, int, int]:
    """The three band levels of clip frame ``frame_index`` of the clip with mark ``clip_mark``
    (its position in the plan, modulo 25)."""
    if not 0 <= frame_index < MAX_FRAMES:
        raise ValueError(f"frame index {frame_index} cannot be encoded (0..{MAX_FRAMES - 1})")
    values = (clip_mark % GRAY_VALUES, frame_index // GRAY_VALUES, frame_index % GRAY_VALUES)
    return tuple(GRAY_BASE + GRAY_STEP * v for v in values)  # type: ignore[return-value]


def read_frame_marks(rgb: NDArray[np.uint8]) -> tuple[int, int]:
    """``(clip_mark, frame_index)`` of a decoded ``HxWx3`` frame written by this factory.

    Reads the middle of each band (away from the blurred band edges) and rounds to the nearest
    step, so codec noise of up to ±3 levels reads back exactly.
    """
    height, width = rgb.shape[:2]
    band = width // 3
    rows = slice(height // 4, height - height // 4)
    values = []
    for b in range(3):
        cols = slice(b * band + band // 4, (b + 1) * band - band // 4)
        level = float(rgb[rows, cols].mean())
        values.append(int(np.clip(round((level - GRAY_BASE) / GRAY_STEP), 0, GRAY_VALUES - 1)))
    return values[0], values[1] * GRAY_VALUES + values[2]


def _frame(clip_mark: int, frame_index: int, size: tuple[int, int]) -> NDArray[np.uint8]:
    width, height = size
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    band = width // 3
    for b, level in enumerate(frame_levels(clip_mark, frame_index)):
        rgb[:, b * band : (b + 1) * band if b < 2 else width] = level
    return rgb


def _encode_clip(
    path: Path, spec: Ego4DClipSpec, clip_mark: int, size: tuple[int, int], rgb: NDArray[np.uint8] | None = None
) -> None:
    """H.264 (libx264, 2 B-frames, GOP 12) at ``stream_fps``, first pts ``first_pts_frames``,
    plus a silent AAC track of ``audio_seconds``: the shape of a canonical Ego4D clip. ``rgb``
    [frames, height, width, 3] replaces the gray bands when a caller supplies the frames."""
    width, height = size
    if rgb is not None and (rgb.dtype != np.uint8 or rgb.shape != (spec.frames, height, width, 3)):
        raise ValueError(
            f"clip {spec.clip_uid}: supplied frames must be uint8 [{spec.frames}, {height}, {width}, 3], "
            f"got {rgb.dtype} {rgb.shape}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(1, spec.stream_fps)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=spec.stream_fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = rate
        stream.options = {"bf": "2", "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "crf": "12"}
        audio = None
        if spec.audio_seconds is not None:
            audio = container.add_stream("aac", rate=AUDIO_RATE)
            audio.layout = "mono"
        for i in range(spec.frames):
            image = _frame(clip_mark, i, size) if rgb is None else np.ascontiguousarray(rgb[i])
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = spec.first_pts_frames + i
            frame.time_base = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            _encode_silence(container, audio, int(spec.audio_seconds * AUDIO_RATE))


def _encode_silence(container: av.container.OutputContainer, audio: Any, samples: int) -> None:
    done = 0
    while done < samples:
        count = min(1024, samples - done)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, count), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, done, Fraction(1, AUDIO_RATE)
        for packet in audio.encode(frame):
            container.mux(packet)
        done += count
    for packet in audio.encode():
        container.mux(packet)


# --- Annotations ------------------------------------------------------------------------------


def _box(rng: np.random.Generator, object_type: str, noun: str | None) -> dict[str, Any]:
    x, y, width, height = (float(v) for v in np.round(rng.uniform([0, 0, 50, 50], [1400, 800, 400, 400]), 2))
    return {
        "object_type": object_type,
        "structured_noun": noun,
        "instance_number": 1,
        "bbox": {"x": x, "y": y, "width": width, "height": height},
    }


def _critical(spec: Ego4DActionSpec, offset: int) -> dict[str, int] | None:
    if spec.critical is None:
        return None
    pre, post = spec.critical
    pnr = (pre + 2 * post) // 3
    return {"pre_frame": pre + offset, "pnr_frame": pnr + offset, "post_frame": post + offset, "contact_frame": (pre + pnr) // 2 + offset}


def _frames_field(spec: Ego4DActionSpec, offset: int, rng: np.random.Generator) -> list[dict[str, Any]] | None:
    """Per-frame boxes (hands and object) at the critical frames, as in the real file."""
    critical = _critical(spec, 0)
    if critical is None:
        return None
    pre = critical["pre_frame"]
    named = {f"pre_{k}": max(0, pre - k) for k in (45, 30, 15)} | critical
    noun = spec.narration.split()[-1]
    return [
        {
            "frame_type": name,
            "frame_number": clip_frame + offset,
            "clip_frame_number": clip_frame,
            "boxes": [_box(rng, "left_hand", None), _box(rng, "right_hand", None), _box(rng, "object_of_change", noun)],
        }
        for name, clip_frame in sorted(named.items(), key=lambda item: item[1])
    ]


def _bounds(spec: Ego4DActionSpec, frames: int) -> tuple[int, int]:
    if spec.bounds is not None:
        return spec.bounds
    assert spec.critical is not None, "an action needs critical frames or bounds"
    pre, post = spec.critical
    return max(0, pre - 2), max(post, min(frames - 1, post + 2))


def _narration_frame(spec: Ego4DActionSpec, frames: int) -> int:
    start, end = _bounds(spec, frames)
    return (start + end) // 2


def _action(spec: Ego4DActionSpec, clip: Ego4DClipSpec, pass_uid: str, rng: np.random.Generator) -> dict[str, Any]:
    start, end = _bounds(spec, clip.frames)
    offset = clip.parent_start_frame
    narration_frame = _narration_frame(spec, clip.frames)
    return {
        "warnings": [],
        "uid": _uid(rng),
        "start_sec": (start + offset) / EGO4D_FPS,
        "end_sec": (end + offset) / EGO4D_FPS,
        "start_frame": start + offset,
        "end_frame": end + offset,
        "is_valid_action": spec.is_valid_action,
        "is_partial": spec.is_partial,
        "clip_start_sec": start / EGO4D_FPS,
        "clip_end_sec": end / EGO4D_FPS,
        "clip_start_frame": start,
        "clip_end_frame": end,
        "narration_timestamp_sec": (narration_frame + offset) / EGO4D_FPS,
        "clip_narration_timestamp_sec": narration_frame / EGO4D_FPS,
        "narration_text": spec.narration if spec.narration_in_fho else None,
        "narration_annotation_uid": pass_uid,
        "structured_verb": spec.verb,
        "freeform_verb": None,
        "state_transition": None if spec.critical is None else "object moves from one place to another",
        "critical_frames": _critical(spec, offset),
        "clip_critical_frames": _critical(spec, 0),
        "frames": _frames_field(spec, offset, rng),
        "is_rejected": spec.is_rejected,
        "is_invalid_annotation": False,
        "reject_reason": "blurry frames" if spec.is_rejected else None,
        "stage": "stage_2",
    }


def _video_metadata(fps: float, frames: int) -> dict[str, Any]:
    return {
        "video_start_pts": 0,
        "video_base_numerator": 1,
        "video_base_denominator": 30000,
        "duration_sec": frames / fps,
        "num_frames": frames,
        "fps": fps,
        "width": 1920,
        "height": 1080,
        "rotation": None,
    }


def _video_lengths(plan: Sequence[Ego4DClipSpec]) -> dict[str, int]:
    """Parent video length in frames: long enough for every clip placed in it."""
    lengths: dict[str, int] = {}
    for clip in plan:
        lengths[clip.video_uid] = max(lengths.get(clip.video_uid, 0), clip.parent_start_frame + clip.frames + 300)
    return lengths


def _interval(clip: Ego4DClipSpec, index: int, actions: list[dict[str, Any]]) -> dict[str, Any]:
    start, end = clip.parent_start_frame, clip.parent_start_frame + clip.frames
    return {
        "clip_id": index,
        "clip_uid": clip.clip_uid,
        "start_sec": start / EGO4D_FPS,
        "end_sec": end / EGO4D_FPS,
        "clip_parent_start_sec": start / EGO4D_FPS,
        "clip_parent_end_sec": end / EGO4D_FPS,
        "start_frame": start,
        "end_frame": end,
        "clip_parent_start_frame": start,
        "clip_parent_end_frame": end,
        "redacted": False,
        "narrated_actions": actions,
    }


def _annotations(plan: Sequence[Ego4DClipSpec], seed: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(ego4d.json, fho_main.json, narration.json) for ``plan``.

    narration.json holds two narration passes per video; the actions' ``narration_annotation_uid``
    is pass 1's uid, and pass 2 narrates the same moments in other words (a reader that matches
    by timestamp alone could pick the wrong pass).
    """
    rng = np.random.default_rng([seed, 1])
    lengths = _video_lengths(plan)
    pass_uids = {video: (_uid(rng), _uid(rng)) for video in lengths}
    fho_videos: dict[str, dict[str, Any]] = {}
    narrations: dict[str, dict[str, Any]] = {}
    for index, clip in enumerate(plan):
        first_pass, second_pass = pass_uids[clip.video_uid]
        actions = [_action(spec, clip, first_pass, rng) for spec in clip.actions]
        video = fho_videos.setdefault(
            clip.video_uid,
            {"video_uid": clip.video_uid, "annotated_intervals": [], "video_metadata": _video_metadata(float(EGO4D_FPS), lengths[clip.video_uid])},
        )
        video["annotated_intervals"].append(_interval(clip, index, actions))
        passes = narrations.setdefault(clip.video_uid, {"status": "complete"})
        for name, pass_uid, prefix in (("narration_pass_1", first_pass, ""), ("narration_pass_2", second_pass, "#C C repeats: ")):
            items = passes.setdefault(name, {"narrations": [], "summaries": [{"summary_text": "#Summary C works in a kitchen", "annotation_uid": pass_uid}]})["narrations"]
            for spec, action in zip(clip.actions, actions, strict=True):
                items.append({
                    "timestamp_sec": action["narration_timestamp_sec"],
                    "timestamp_frame": round(action["narration_timestamp_sec"] * EGO4D_FPS),
                    "narration_text": prefix + spec.narration.strip() if prefix else spec.narration,
                    "annotation_uid": pass_uid,
                })
    declared = {clip.video_uid: clip.declared_fps for clip in plan}
    metadata = {
        "version": "v2",
        "date": "220208",
        "description": "Ego4D metadata (synthetic, written by clap_data.factories.ego4d)",
        "videos": [
            {"video_uid": uid, "duration_sec": lengths[uid] / fps, "scenarios": ["Cooking"], "video_metadata": _video_metadata(fps, lengths[uid])}
            for uid, fps in declared.items()
            if fps is not None
        ],
        "clips": [
            {
                "clip_uid": clip.clip_uid,
                "video_uid": clip.video_uid,
                "video_start_sec": clip.parent_start_frame / EGO4D_FPS,
                "video_end_sec": (clip.parent_start_frame + clip.frames) / EGO4D_FPS,
                "video_start_frame": clip.parent_start_frame,
                "video_end_frame": clip.parent_start_frame + clip.frames,
            }
            for clip in plan
        ],
    }
    fho_main = {
        "version": "v2",
        "date": "220208",
        "description": "Forecasting Hands & Objects (synthetic, written by clap_data.factories.ego4d)",
        "metadata": "",
        "videos": list(fho_videos.values()),
    }
    return metadata, fho_main, narrations


# --- Writing ----------------------------------------------------------------------------------


def clip_path(root: Path, clip_uid: str) -> Path:
    """Where the download keeps a clip."""
    return Path(root) / CLIPS_DIR / f"{clip_uid}.mp4"


def _check_plan(
    plan: Sequence[Ego4DClipSpec], video_size: tuple[int, int], encode_videos: bool, banded: bool = True
) -> None:
    """``banded``: the clips get the gray bands (not caller-supplied frames), which limit the
    clip length and the width."""
    width, height = video_size
    if not plan:
        raise ValueError("need at least one clip")
    declared: dict[str, float | None] = {}
    for clip in plan:
        if declared.setdefault(clip.video_uid, clip.declared_fps) != clip.declared_fps:
            raise ValueError(f"clips of video {clip.video_uid} declare different fps")
        if encode_videos and banded and clip.frames > MAX_FRAMES:
            raise ValueError(f"clip {clip.clip_uid} has {clip.frames} frames; at most {MAX_FRAMES} can be encoded")
    if not banded:
        if width < 16 or width % 2 or height < 16 or height % 2:
            raise ValueError(f"video_size must be even and at least 16x16, got {video_size}")
        return
    # Three bands of at least 16 px (one H.264 macroblock each); yuv420p needs even sides.
    if width % 3 or width // 3 < 16 or width % 2 or height < 16 or height % 2:
        raise ValueError(f"video_size must be (3·k·2, even) with bands of at least 16 px, e.g. (48, 32); got {video_size}")


def _is_generated_ego4d(root: Path) -> bool:
    try:
        return "clap_data.factories.ego4d" in json.loads((root / METADATA_FILE).read_text()).get("description", "")
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_root(root: Path, overwrite: bool) -> None:
    clear_generated(root, overwrite, _is_generated_ego4d, "generated Ego4D dataset")
    (root / "v2/annotations").mkdir(parents=True, exist_ok=True)


def write_ego4d_dataset(
    root: Path,
    plan: Sequence[Ego4DClipSpec] | None = None,
    video_size: tuple[int, int] = (48, 32),
    seed: int = 0,
    with_narration_json: bool = True,
    encode_videos: bool = True,
    overwrite: bool = False,
    frames: Callable[[int, Ego4DClipSpec], NDArray[np.uint8]] | None = None,
) -> Path:
    """Write an Ego4D FHO download for ``plan`` (default :func:`default_ego4d_plan`) to ``root``.

    Clip ``i`` of the plan gets clip mark ``i % 25`` in its frames (:func:`read_frame_marks`).
    ``encode_videos=False`` writes the annotations only (listing tests, benchmarks of the
    listing); ``with_narration_json=False`` leaves narration.json out. ``overwrite`` replaces
    ``root`` only if it holds a dataset written by this factory. ``frames(i, clip)``, when given,
    supplies clip ``i``'s frames (uint8 ``[clip.frames, height, width, 3]``) instead of the gray
    bands, e.g. the rendered-motion factory's hands (:mod:`clap_data.factories.rendered`).
    """
    root = Path(root)
    plan = list(default_ego4d_plan(seed) if plan is None else plan)
    video_size = (int(video_size[0]), int(video_size[1]))
    _check_plan(plan, video_size, encode_videos, banded=frames is None)
    _prepare_root(root, overwrite)
    metadata, fho_main, narrations = _annotations(plan, seed)
    (root / METADATA_FILE).write_text(json.dumps(metadata))
    (root / FHO_MAIN_FILE).write_text(json.dumps(fho_main))
    if with_narration_json:
        (root / NARRATION_FILE).write_text(json.dumps(narrations))
    if encode_videos:
        for index, clip in enumerate(plan):
            if clip.write_file:
                rgb = None if frames is None else frames(index, clip)
                _encode_clip(clip_path(root, clip.clip_uid), clip, index % GRAY_VALUES, video_size, rgb)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clap_data.factories.ego4d DEST``: a stand-in for a licence-gated Ego4D download."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size", default="48x32", help="WIDTHxHEIGHT of the clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", default="", help="CLIPSxACTIONS: many valid 300-frame clips instead of the quirk plan")
    parser.add_argument("--no-videos", action="store_true", help="write the annotations only")
    args = parser.parse_args(argv)
    width, height = (int(x) for x in args.size.lower().split("x"))
    plan = None
    if args.scale:
        clips, actions = (int(x) for x in args.scale.lower().split("x"))
        plan = scaled_ego4d_plan(clips, actions, seed=args.seed)
    path = write_ego4d_dataset(
        args.dest, plan, video_size=(width, height), seed=args.seed, encode_videos=not args.no_videos, overwrite=True
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
