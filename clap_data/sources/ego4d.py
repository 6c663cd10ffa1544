"""Ego4D hand-object interactions (FHO v2): one human episode per narrated action window of a clip.

Input, as the Ego4D CLI downloads it (FORMATS.md)::

    ego4d.json                        videos[].video_metadata.fps (optional, see fps below)
    v2/annotations/fho_main.json      videos[].annotated_intervals[] (clip_uid) .narrated_actions[]
    v2/annotations/narration.json     optional: fills narrations missing from fho_main.json
    v2/clips/<clip_uid>.mp4           the clip: the head (egocentric) camera

Decisions (the CLAP/UniVLA recipe, FORMATS.md and METHOD.md §1):

- **Window.** ``[pre_frame, post_frame]`` of ``clip_critical_frames`` when both are given, else
  ``[clip_start_frame, clip_end_frame]``; both **inclusive** (the post frame shows the state after
  the action, so it belongs to the episode): ``count = last - first + 1`` clip frames, counted in
  display order from the clip's first displayed frame, whatever the stream's timestamps say (a
  non-zero start offset, another real frame rate than the declared one, a container duration
  that disagrees with the video stream). The head camera is ``VideoWindow(clip, first, count)``,
  which the conversion step cuts frame-accurately.
- **Instruction.** ``narration_text`` without the narrator tag: ``#C C`` in any case, with any
  spacing, after stripping surrounding spaces (:func:`narration_instruction`); a narration without
  the tag is kept as written. The narration is also the per-frame subtask, because it is already
  the finest step there is (an empty subtask is a known defect of the public release, METHOD.md §7).
- **Labels.** Embodiment ``human``; state and action are all zero (human video has no labels);
  ``arm_mask`` is ``[1, 1]`` on every frame, because the VD-VAE pseudo-tokens of human video cover
  both hands (both arm slots take part in the contrastive loss). ``extra`` says
  ``action_labels=False`` and keeps the provenance (same keys for every episode): ``clip_uid``,
  ``video_uid``, ``action_uid``, ``narration_uid`` (the narration annotation), ``narration_text``
  (as written), ``narration_source`` (``fho_main.json`` or ``narration.json``),
  ``window_start_frame`` / ``window_end_frame`` (inclusive clip frames), ``window_source``
  (``critical_frames`` or ``action_bounds``), ``pnr_frame`` (clip frame, -1 when none),
  ``structured_verb`` ("" when none).
- **Skipped actions** (quarantined with the category): ``rejected_action`` (``is_rejected``),
  ``invalid_action`` (``is_valid_action`` false or ``is_invalid_annotation`` true),
  ``partial_action`` (``is_partial``), ``no_instruction``, ``bad_window`` (no usable frame
  numbers, or post before pre), ``fps_mismatch`` (the clip's video declares another fps than the
  dataset's), ``too_short`` (fewer than ``min_frames``, default the 32-frame chunk gap + 1 = 33,
  so that every episode holds at least one (t, t+32) frame pair), ``outside_clip`` (the window
  starts before frame 0 or ends past the clip's last frame), ``no_clip`` (no clip_uid),
  ``missing_file`` (the clip is not in the download). A clip that does not decode is reported by
  the conversion step. Absent flags count as the harmless value.
- **Duplicates.** A narrated action ``uid`` listed twice in fho_main.json (a repeated video or
  interval) stops the listing, naming both places: it would otherwise be ingested twice.
- **fps.** Canonical Ego4D clips are 30 fps. Each video's ``video_metadata.fps`` in ego4d.json,
  rounded (LeRobot stores an integer), is its clips' fps; a video that ego4d.json does not list
  (or a missing ego4d.json) is taken as 30 fps. The dataset's fps is the most common one among the
  annotated videos; actions of videos declaring another are quarantined (``fps_mismatch``).
- **narration.json** is read only when some narrated action has no narration text: the text is
  then taken from the narration of the same video at the same timestamp (within half a frame),
  preferring the narration pass whose ``annotation_uid`` is the action's
  ``narration_annotation_uid``.
- **Listing cost.** The constructor parses fho_main.json once on the driver and each listed ref
  carries its window, flags and instruction, so ``read_episode`` touches only its clip (its mp4
  header, for the clip's frame count). Parsing keeps only the listed fields of each narrated
  action as soon as it is parsed (the per-frame boxes, most of the file, are dropped on the fly):
  peak memory is about twice the file's size (its bytes and its decoded text) plus ~1.2 KB per
  listed action, e.g. ~0.3 GB for a 100 MB fho_main.json of 100k actions, where a plain
  ``json.load`` needs 4-5 times the file. The listing is not pickled with the source, so workers
  receive a small object.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from clap_data.errors import ClapDataError
from clap_data.sources.base import CanonicalEpisode, EpisodeRef, EpisodeRejected, VideoWindow, require_file
from clap_data.sources.metadata_io import check_unique

EMBODIMENT = "human"
CANONICAL_FPS = 30
CHUNK_GAP = 32  # METHOD.md §2: the frame gap H between the two frames a pseudo-token describes
DEFAULT_MIN_FRAMES = CHUNK_GAP + 1

METADATA_FILE = "ego4d.json"
FHO_MAIN_FILE = "v2/annotations/fho_main.json"
NARRATION_FILE = "v2/annotations/narration.json"
CLIPS_DIR = "v2/clips"

# "#C" marks the camera wearer; "#C C picks up a cup" reads "the camera wearer picks up a cup".
_NARRATOR_TAG = re.compile(r"#\s*c\s+c\b\s*", re.IGNORECASE)
# Half a frame at 30 fps: narration.json and fho_main.json copy the same timestamp.
_TIMESTAMP_TOLERANCE_S = 0.5 / CANONICAL_FPS
# The fields of a narrated action the listing uses; everything else is dropped while parsing.
_ACTION_FIELDS = (
    "uid", "narration_text", "narration_annotation_uid", "narration_timestamp_sec", "structured_verb",
    "clip_critical_frames", "clip_start_frame", "clip_end_frame", "is_valid_action", "is_rejected",
    "is_partial", "is_invalid_annotation", "reject_reason",
)  # fmt: skip


def narration_instruction(text: object) -> str:
    """The instruction of an Ego4D narration: ``"#C C picks up a cup"`` → ``"picks up a cup"``.

    The tag is matched in any case and spacing (``#c c``, ``#C  C``) after surrounding spaces are
    stripped; a narration without it is returned stripped; anything but a string gives "".
    """
    if not isinstance(text, str):
        return ""
    text = text.strip()
    tag = _NARRATOR_TAG.match(text)
    return text[tag.end() :].strip() if tag else text


def _frame_number(value: object) -> int | None:
    """A frame number as JSON gives it (``40`` or ``40.0``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _action_window(action: dict[str, Any]) -> tuple[int, int, str] | None:
    """``(first, last, source)`` inclusive clip frames of an action (module docstring), or None."""
    critical = action.get("clip_critical_frames")
    if isinstance(critical, dict):
        pre, post = _frame_number(critical.get("pre_frame")), _frame_number(critical.get("post_frame"))
        if pre is not None and post is not None:
            return pre, post, "critical_frames"
    start, end = _frame_number(action.get("clip_start_frame")), _frame_number(action.get("clip_end_frame"))
    if start is not None and end is not None:
        return start, end, "action_bounds"
    return None


# --- Parsing the big JSON files on the driver -------------------------------------------------


def _slim_fho_object(obj: dict[str, Any]) -> dict[str, Any]:
    """``object_hook`` for fho_main.json. JSON objects are built innermost first, so a narrated
    action is trimmed right after its per-frame boxes are parsed and those are freed at once."""
    if "narrated_actions" in obj:  # an annotated interval
        return {"clip_uid": obj.get("clip_uid"), "narrated_actions": obj["narrated_actions"]}
    if "annotated_intervals" in obj:  # a video
        return {"video_uid": obj.get("video_uid"), "annotated_intervals": obj["annotated_intervals"]}
    if "narration_text" in obj or "clip_critical_frames" in obj:  # a narrated action
        return {key: obj[key] for key in _ACTION_FIELDS if key in obj}
    return obj


def _slim_metadata_object(obj: dict[str, Any]) -> dict[str, Any] | None:
    """``object_hook`` for ego4d.json: keeps each video's uid and fps, drops clip records."""
    if "clip_uid" in obj:
        return None
    if "video_uid" in obj:
        metadata = obj.get("video_metadata")
        return {"video_uid": obj["video_uid"], "fps": metadata.get("fps") if isinstance(metadata, dict) else None}
    return obj


def _slim_narration_object(obj: dict[str, Any]) -> dict[str, Any] | None:
    """``object_hook`` for narration.json: keeps narrations, drops summaries."""
    if "summary_text" in obj:
        return None
    if "narration_text" in obj:
        return {key: obj.get(key) for key in ("timestamp_sec", "narration_text", "annotation_uid")}
    return obj


def _read_json(path: Path, what: str, hook: Callable[[dict[str, Any]], Any]) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle, object_hook=hook)
    except FileNotFoundError:
        raise ClapDataError(f"{what} {path} is missing; is this an Ego4D download (ego4d.json, v2/annotations, v2/clips)?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"{what} {path} cannot be read: {exc}") from None


def _list_of(value: object, path: Path, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ClapDataError(f"{path} has no list at {where}; is it the Ego4D v2 format?")
    return value


def _declared_fps(path: Path) -> dict[str, int]:
    """Rounded ``video_metadata.fps`` per video uid of ego4d.json (videos without one left out)."""
    metadata = _read_json(path, "metadata file", _slim_metadata_object)
    videos = _list_of(metadata.get("videos") if isinstance(metadata, dict) else None, path, "'videos'")
    declared = {}
    for video in videos:
        if not isinstance(video, dict) or video.get("fps") is None:
            continue
        fps = video["fps"]
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or round(fps) < 1:
            raise ClapDataError(f"{path} declares fps {fps!r} for video {video['video_uid']}; expected a positive number")
        declared[str(video["video_uid"])] = int(round(fps))
    return declared


def _narration_lookup(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Narrations of narration.json per video uid, in pass order."""
    data = _read_json(path, "narration file", _slim_narration_object)
    if not isinstance(data, dict):
        raise ClapDataError(f"{path} is not a mapping of video uids to narration passes")
    lookup: dict[str, list[dict[str, Any]]] = {}
    for video_uid, passes in data.items():
        if not isinstance(passes, dict):
            continue
        for name in sorted(key for key, value in passes.items() if isinstance(value, dict)):
            narrations = passes[name].get("narrations")
            if isinstance(narrations, list):
                lookup.setdefault(video_uid, []).extend(n for n in narrations if isinstance(n, dict))
    return lookup


def _find_narration(candidates: list[dict[str, Any]], action: dict[str, Any]) -> str:
    """The narration at the action's timestamp; the action's own narration pass wins ties."""
    when = action.get("narration_timestamp_sec")
    if isinstance(when, bool) or not isinstance(when, int | float):
        return ""
    matches = [
        n for n in candidates
        if isinstance(n.get("timestamp_sec"), int | float) and abs(n["timestamp_sec"] - when) <= _TIMESTAMP_TOLERANCE_S
        and narration_instruction(n.get("narration_text"))
    ]  # fmt: skip
    own = [n for n in matches if n.get("annotation_uid") == action.get("narration_annotation_uid")]
    best = (own or matches or [{}])[0]
    return str(best.get("narration_text") or "")


class Ego4DSource:
    """Narrated action windows of Ego4D FHO v2 clips (module docstring); ``min_frames`` ≥ 1."""

    name = "ego4d"
    embodiment = EMBODIMENT
    cameras = ("head",)

    def __init__(self, root: Path, min_frames: int = DEFAULT_MIN_FRAMES):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClapDataError(f"source folder {self.root} does not exist")
        if isinstance(min_frames, bool) or not isinstance(min_frames, int) or min_frames < 1:
            raise ClapDataError(f"--min-frames must be a whole number of frames, at least 1; got {min_frames!r}")
        self.min_frames = min_frames
        self.notices: list[str] = []
        declared = self._read_metadata()
        actions = self._read_actions()
        self.fps = self._choose_fps(actions, declared)
        self._refs = self._make_refs(actions, declared)

    def __getstate__(self) -> dict[str, Any]:
        """Workers get the source without the listing (``read_episode`` needs only the ref), so
        shipping the source to every worker stays cheap however many actions there are."""
        return {**self.__dict__, "_refs": []}

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "root": str(self.root.resolve()), "min_frames": self.min_frames, "fps": self.fps}

    def list_episodes(self) -> list[EpisodeRef]:
        return list(self._refs)

    # --- Listing (driver) ---------------------------------------------------------------------

    def _read_metadata(self) -> dict[str, int]:
        path = self.root / METADATA_FILE
        if not path.is_file():
            self.notices.append(f"{METADATA_FILE} is absent, so every clip is taken as {CANONICAL_FPS} fps (canonical Ego4D)")
            return {}
        return _declared_fps(path)

    def _read_actions(self) -> list[tuple[str, str | None, str, dict[str, Any]]]:
        """``(video_uid, clip_uid, fallback id, action)`` for every narrated action, in file order,
        with missing narrations filled from narration.json where it has them."""
        path = self.root / FHO_MAIN_FILE
        data = _read_json(path, "annotation file", _slim_fho_object)
        videos = _list_of(data.get("videos") if isinstance(data, dict) else None, path, "'videos'")
        actions, uids = [], []
        for v, video in enumerate(videos):
            if not isinstance(video, dict) or not isinstance(video.get("video_uid"), str):
                raise ClapDataError(f"{path} videos[{v}] has no video_uid")
            intervals = _list_of(video.get("annotated_intervals"), path, f"videos[{v}].annotated_intervals")
            for i, interval in enumerate(intervals):
                where = f"videos[{v}].annotated_intervals[{i}]"
                if not isinstance(interval, dict):
                    raise ClapDataError(f"{path} {where} is not an object")
                clip_uid = interval.get("clip_uid") if isinstance(interval.get("clip_uid"), str) else None
                for a, action in enumerate(_list_of(interval.get("narrated_actions"), path, f"{where}.narrated_actions")):
                    if not isinstance(action, dict):
                        raise ClapDataError(f"{path} {where}.narrated_actions[{a}] is not an object")
                    actions.append((video["video_uid"], clip_uid, f"{video['video_uid']}:{i}:{a}", action))
                    if isinstance(action.get("uid"), str) and action["uid"]:
                        uids.append((action["uid"], f"{where}.narrated_actions[{a}]"))
        # An action listed twice (a video or interval repeated) would become two episodes.
        check_unique(uids, f"annotation file {path}", "narrated action uid")
        self._fill_narrations(actions)
        return actions

    def _fill_narrations(self, actions: list[tuple[str, str | None, str, dict[str, Any]]]) -> None:
        """Mark where each narration comes from; take missing ones from narration.json."""
        missing = []
        for video_uid, _, _, action in actions:
            action["narration_source"] = FHO_MAIN_FILE
            if not narration_instruction(action.get("narration_text")):
                missing.append((video_uid, action))
        if not missing:
            return
        path = self.root / NARRATION_FILE
        if not path.is_file():
            self.notices.append(f"{len(missing)} narrated action(s) have no narration text and {NARRATION_FILE} is absent to fill them")
            return
        lookup = _narration_lookup(path)
        filled = 0
        for video_uid, action in missing:
            text = _find_narration(lookup.get(video_uid, []), action)
            if text:
                action["narration_text"], action["narration_source"] = text, NARRATION_FILE
                filled += 1
        self.notices.append(f"{filled} of {len(missing)} narration(s) missing from {FHO_MAIN_FILE} were taken from {NARRATION_FILE}")

    def _choose_fps(self, actions: list[tuple[str, str | None, str, dict[str, Any]]], declared: dict[str, int]) -> int:
        """The most common fps among the annotated videos (module docstring)."""
        videos = dict.fromkeys(video_uid for video_uid, _, _, _ in actions)
        undeclared = [uid for uid in videos if uid not in declared]
        if declared and undeclared:
            self.notices.append(
                f"{len(undeclared)} of {len(videos)} annotated video(s) have no fps in {METADATA_FILE}; their clips are taken as {CANONICAL_FPS} fps"
            )
        counts = Counter(declared.get(uid, CANONICAL_FPS) for uid in videos)
        fps = counts.most_common(1)[0][0] if counts else CANONICAL_FPS
        others = sorted(uid for uid in videos if declared.get(uid, CANONICAL_FPS) != fps)
        if others:
            self.notices.append(
                f"{len(others)} annotated video(s) declare another fps than the dataset's {fps} in {METADATA_FILE}; their actions are quarantined"
            )
        return fps

    def _make_refs(self, actions: list[tuple[str, str | None, str, dict[str, Any]]], declared: dict[str, int]) -> list[EpisodeRef]:
        refs = []
        for order, (video_uid, clip_uid, fallback_id, action) in enumerate(actions):
            uid = action.get("uid") if isinstance(action.get("uid"), str) and action.get("uid") else None
            window = _action_window(action)
            critical = action.get("clip_critical_frames")
            pnr = _frame_number(critical.get("pnr_frame")) if isinstance(critical, dict) else None
            details = {
                "video_uid": video_uid,
                "clip_uid": clip_uid,
                "action_uid": uid or "",
                "narration_uid": str(action.get("narration_annotation_uid") or ""),
                "narration_text": action.get("narration_text") if isinstance(action.get("narration_text"), str) else "",
                "narration_source": action["narration_source"],
                "window": None if window is None else [window[0], window[1]],
                "window_source": "" if window is None else window[2],
                "pnr_frame": -1 if pnr is None else pnr,
                "structured_verb": action.get("structured_verb") if isinstance(action.get("structured_verb"), str) else "",
                "video_fps": declared.get(video_uid, CANONICAL_FPS),
                "is_rejected": action.get("is_rejected") is True,
                "is_valid_action": action.get("is_valid_action") is not False,
                "is_invalid_annotation": action.get("is_invalid_annotation") is True,
                "is_partial": action.get("is_partial") is True,
                "reject_reason": str(action.get("reject_reason") or ""),
            }
            path = f"{CLIPS_DIR}/{clip_uid}.mp4" if clip_uid else FHO_MAIN_FILE
            refs.append(EpisodeRef(source_episode=uid or fallback_id, order=order, path=path, details=details))
        return refs

    # --- Reading (worker) ---------------------------------------------------------------------

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        """The action's window as a zero-label human episode; opens only the clip's mp4 header."""
        d = ref.details
        first, last = self._check_annotation(ref)
        clip = require_file(self.root / ref.path, self.root, "clip file")
        frames = _clip_frame_count(clip)
        if frames is not None and last >= frames:
            raise EpisodeRejected(
                "outside_clip", ref.path,
                f"{self._what(ref)} ends at frame {last} but clip file {ref.path} has {frames} frames (0..{frames - 1})",
            )
        count = last - first + 1
        instruction = narration_instruction(d["narration_text"])
        extra: dict[str, str | int | float | bool] = {
            "action_labels": False,
            "clip_uid": d["clip_uid"],
            "video_uid": d["video_uid"],
            "action_uid": d["action_uid"],
            "narration_uid": d["narration_uid"],
            "narration_text": d["narration_text"],
            "narration_source": d["narration_source"],
            "window_start_frame": first,
            "window_end_frame": last,
            "window_source": d["window_source"],
            "pnr_frame": d["pnr_frame"],
            "structured_verb": d["structured_verb"],
        }
        return CanonicalEpisode(
            state=np.zeros((count, 14)),
            action=np.zeros((count, 14)),
            arm_mask=np.ones((count, 2)),
            tasks=[instruction] * count,
            subtasks=[instruction] * count,
            videos={"head": VideoWindow(clip, first, count)},
            extra=extra,
        )

    @staticmethod
    def _what(ref: EpisodeRef) -> str:
        return f"narrated action {ref.source_episode} of clip {ref.details['clip_uid']}"

    def _check_annotation(self, ref: EpisodeRef) -> tuple[int, int]:
        """The action's inclusive window, or the annotation's reason to skip it (no file read)."""
        d = ref.details
        what = self._what(ref)

        def reject(category: str, reason: str) -> EpisodeRejected:
            return EpisodeRejected(category, FHO_MAIN_FILE, f"{FHO_MAIN_FILE}: {what} {reason}")

        if d["clip_uid"] is None:
            raise EpisodeRejected("no_clip", FHO_MAIN_FILE, f"{FHO_MAIN_FILE}: narrated action {ref.source_episode} has no clip_uid")
        if d["is_rejected"]:
            raise reject("rejected_action", f"is marked is_rejected (reason: {d['reject_reason'] or 'none given'})")
        if not d["is_valid_action"]:
            raise reject("invalid_action", "is marked is_valid_action false")
        if d["is_invalid_annotation"]:
            raise reject("invalid_action", "is marked is_invalid_annotation")
        if d["is_partial"]:
            raise reject("partial_action", "is marked is_partial")
        if not narration_instruction(d["narration_text"]):
            raise reject("no_instruction", f"has no narration text, and none was found for it in {NARRATION_FILE}")
        if d["window"] is None:
            raise reject("bad_window", "has neither integer clip_critical_frames pre/post frames nor clip_start_frame/clip_end_frame")
        first, last = d["window"]
        if last < first:
            raise reject("bad_window", f"ends (frame {last}) before it starts (frame {first})")
        if d["video_fps"] != self.fps:
            raise EpisodeRejected(
                "fps_mismatch", METADATA_FILE,
                f"{what}: {METADATA_FILE} declares {d['video_fps']} fps for video {d['video_uid']}, not the dataset's {self.fps}",
            )
        if last - first + 1 < self.min_frames:
            raise reject("too_short", f"spans {last - first + 1} frames ({first}..{last}), fewer than --min-frames {self.min_frames}")
        if first < 0:
            raise reject("outside_clip", f"starts at frame {first}, before the clip's first frame")
        return first, last


def _clip_frame_count(path: Path) -> int | None:
    """Frames of the clip's video stream, from the mp4 sample table (the header: no decoding, and
    unlike the container's duration it counts the video's own frames); counted by demuxing when
    the header does not say. None when the file cannot be opened: the conversion step reports it."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except (av.error.FFmpegError, OSError):
        return None
