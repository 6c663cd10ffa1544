"""DROID in its RLDS/TFDS layout (``droid/1.0.1/droid-train.tfrecord-XXXXX-of-02048``), read
without TensorFlow.

**Layout.** Every TFRecord record is one episode, one ``tf.train.Example`` whose step features
are flattened and concatenated (see :mod:`clap_data.factories.droid_rlds`):
``steps/observation/cartesian_position`` holds T*6 floats, each camera T JPEG files, and so on.
``dataset_info.json`` and ``features.json`` beside the shards are read when present (a partial
copy may lack them); any ``*.tfrecord-*-of-*`` file under the root is a shard.

**Listing cost.** An episode is ``(shard, record index, byte offset)``, listed in shard-name then
record order. Listing reads only the 12-byte record headers and seeks past the payloads: one
small read per episode (~96k reads for the whole 1.7 TB release, never a payload byte), the
shards scanned by a pool of 32 threads (latency-bound on network filesystems). Measured here:
2048 shards × 46 records (94k episodes) listed in ~1 s from the page cache. An episode's worker
then reads only its record (~15 MB in the real data) at its offset and verifies both CRCs. A
record whose header is corrupt or cut short is still listed, so that it is quarantined with the
reason; records after a corrupt header cannot be located, which a notice says, as it does a
record count that differs from ``dataset_info.json`` and shards missing from a partial download.

**Canonical values** (METHOD.md §1). DROID is one Franka arm: it goes in the *right* slot, the
left slot is zero, ``arm_mask = [0, 1]``.
- state = ``observation/cartesian_position`` (x, y, z in metres; roll, pitch, yaw with
  R = Rz(yaw)·Ry(pitch)·Rx(roll), i.e. scipy's lowercase "xyz", the canonical convention, taken
  through the rotation matrix so the angles follow the same formulas as every other source) and
  ``observation/gripper_position`` (0 open … 1 closed) mapped to ``2g − 1``, clamped to [−1, 1].
  Roll sits near ±π (gripper pointing down) and may jump from +π to −π inside an episode; that
  is the same rotation and is kept as is.
- action[t] = state[t+1], and the last frame repeats the last state: METHOD.md §2 uses the next
  *states* as DROID's commands, so the recorded ``action`` / ``action_dict/*`` streams are not used.
- TFRecord stores DROID's float64 tensors as float32, so values carry float32 round-off.

**Cameras.** ``exterior_image_1_left`` → ``head``, ``wrist_image_left`` → ``wrist_right`` (the
wrist camera of the arm in the right slot). ``exterior_image_2_left`` has no place in the
unified schema and is left out (a notice says so). Frames are returned as JPEG bytes
(:class:`ImageSequence`) and encoded into video by the conversion step.

**Language.** The task is ``language_instruction`` of the first step (whitespace-stripped,
UTF-8 with invalid bytes replaced). Episodes without an annotation (``""``) are kept, with
``extra["empty_instruction"] = True``, so users can filter them as DROID's own loaders do.
``extra`` always holds ``language_instruction_2``, ``language_instruction_3`` (first step,
``""`` when absent), ``file_path`` (``episode_metadata/file_path``), ``is_episode_successful`` (the file path
contains ``/success/``) and ``empty_instruction``.

**Frame rate.** 15 fps. ``fps`` (``--fps``) resamples onto another rate: RLDS steps carry no
timestamps, so step i is taken at i / 15 s and each output frame keeps the nearest step (state,
images); the action is then the next *kept* state. Two shard files naming one shard of a split
(another zero padding or shard total) are refused when listing, as they would list episodes twice.

**Validation** (each → :class:`EpisodeRejected` naming ``<shard>#<record index>``): truncated
record or CRC mismatch (``truncated`` / ``corrupt_record``, with the byte offset), a record that
is not a ``tf.train.Example``, missing or wrongly typed features, per-step lengths that do not
match T (``bad_shape``), ``is_first`` other than exactly step 0 or ``is_last`` other than exactly
the last step (``step_flags``), NaN/Inf in the used values (``non_finite``), an image that is not a
JPEG/PNG file, or a first or last image per camera that Pillow cannot decode (``bad_image``).
Images in between are decoded when the conversion step encodes the video; a corrupt one is then
quarantined as ``bad_video``.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clap_data import geometry
from clap_data.errors import ClapDataError
from clap_data.sources.base import (
    CanonicalEpisode,
    EpisodeRef,
    EpisodeRejected,
    ImageSequence,
    nearest_frames,
    require_file,
    select_frames,
)
from clap_data.sources.metadata_io import check_unique, output_fps, read_json
from clap_data.tfrecord import (
    DecodeError,
    ParsedExample,
    RecordSpan,
    TFRecordError,
    iter_record_spans,
    parse_example,
    read_record,
)

EMBODIMENT = "droid"
DROID_FPS = 15

# Unified camera name -> DROID image key (under steps/observation/).
CAMERA_KEYS = {"head": "exterior_image_1_left", "wrist_right": "wrist_image_left"}
UNMAPPED_CAMERAS = ("exterior_image_2_left",)

CARTESIAN = "steps/observation/cartesian_position"
GRIPPER = "steps/observation/gripper_position"
IS_FIRST = "steps/is_first"
IS_LAST = "steps/is_last"
INSTRUCTION = "steps/language_instruction"
ALTERNATIVE_INSTRUCTIONS = {
    "language_instruction_2": "steps/language_instruction_2",
    "language_instruction_3": "steps/language_instruction_3",
}
FILE_PATH = "episode_metadata/file_path"
SUCCESS_MARKER = "/success/"

# Values per step of the step features whose shape DROID fixes (checked when present).
STEP_WIDTHS = {
    CARTESIAN: 6, GRIPPER: 1, "steps/observation/joint_position": 7, "steps/action": 7,
    IS_FIRST: 1, IS_LAST: 1, INSTRUCTION: 1, **{key: 1 for key in ALTERNATIVE_INSTRUCTIONS.values()},
    **{f"steps/observation/{key}": 1 for key in (*CAMERA_KEYS.values(), *UNMAPPED_CAMERAS)},
}
# features.json must declare these for the folder to be taken as DROID.
REQUIRED_DECLARED = (CARTESIAN, GRIPPER, IS_FIRST, IS_LAST)

SHARD_PATTERN = re.compile(r"^(?P<prefix>.+)\.tfrecord-(?P<shard>\d+)-of-(?P<total>\d+)$")
LISTING_THREADS = 32  # default for the shard header scan: latency-bound on network filesystems
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def _declared_features(spec: dict[str, Any], prefix: str = "") -> set[str]:
    """Flattened feature names of a TFDS features.json (FeaturesDict, Dataset nest like the data)."""
    names: set[str] = set()
    if "featuresDict" in spec:
        for key, child in spec["featuresDict"].get("features", {}).items():
            names |= _declared_features(child, f"{prefix}{key}/")
    elif "sequence" in spec:
        names |= _declared_features(spec["sequence"].get("feature", {}), prefix)
    else:
        names.add(prefix.rstrip("/"))
    return names


def _shard_fields(shard: Path) -> tuple[str, int, int]:
    """(prefix such as "droid-train", shard index, shard total) of a shard file name."""
    match = SHARD_PATTERN.match(shard.name)
    assert match is not None, "only names matching SHARD_PATTERN are listed as shards"
    return match["prefix"], int(match["shard"]), int(match["total"])


def _scan_shard(path: Path) -> tuple[list[RecordSpan], TFRecordError | None]:
    """Every record header of a shard, and the error that stopped the scan, if any."""
    spans: list[RecordSpan] = []
    try:
        spans.extend(iter_record_spans(path))
    except TFRecordError as exc:
        return spans, exc
    except OSError as exc:
        raise ClapDataError(f"shard {path} cannot be read: {exc}") from None
    return spans, None


class DroidRldsSource:
    """DROID's RLDS release under ``root`` (the ``droid/1.0.1`` folder or any folder above it);
    ``cameras=None`` takes ``head`` and ``wrist_right``. ``workers_hint`` (the run's worker count,
    passed by :class:`~clap_data.sources.droid.DroidSource`) can raise the number of threads that
    scan shard headers above the default 32, never lower it: the scan waits on I/O, not on cores."""

    name = "droid"
    embodiment = EMBODIMENT

    def __init__(
        self, root: Path, cameras: Sequence[str] | None = None, workers_hint: int | None = None, fps: int | None = None
    ):
        self.root = Path(root)
        self.fps = output_fps(float(DROID_FPS), fps, "DROID's RLDS release")
        self._listing_threads = max(LISTING_THREADS, workers_hint or 0)
        if not self.root.is_dir():
            raise ClapDataError(f"source folder {self.root} does not exist")
        self._shards = self._find_shards()
        self.notices: list[str] = []
        folder = self.root / self._shards[0].parent
        self._shard_lengths = self._declared_shard_lengths(folder / "dataset_info.json")
        declared_cameras = self._check_features(folder / "features.json")
        self.cameras = self._choose_cameras(cameras, declared_cameras)
        self._note_missing_shards()
        self._metadata_notices = list(self.notices)

    # --- source-level metadata -------------------------------------------------------------

    def _find_shards(self) -> list[Path]:
        """Shard paths relative to the root, sorted (zero-padded indices sort numerically)."""
        shards = sorted(
            p.relative_to(self.root) for p in self.root.rglob("*.tfrecord-*-of-*") if SHARD_PATTERN.match(p.name) and p.is_file()
        )
        if not shards:
            raise ClapDataError(
                f"no TFRecord shards (*.tfrecord-*-of-*) under {self.root}; is this DROID in its RLDS layout (droid/1.0.1)?"
            )
        folders = sorted({str(p.parent) for p in shards})
        if len(folders) > 1:
            raise ClapDataError(
                f"{self.root} holds TFRecord shards in several folders ({', '.join(folders)}); "
                "point it at one dataset version folder such as droid/1.0.1"
            )
        # Two files naming one shard of a split (another zero padding, another shard total) would
        # list its episodes twice.
        occurrences = []
        for shard in shards:
            prefix, index, _ = _shard_fields(shard)
            occurrences.append((f"{prefix} #{index}", str(shard)))
        check_unique(occurrences, f"the RLDS folder {self.root}", "shard")
        return shards

    def _declared_shard_lengths(self, path: Path) -> dict[tuple[str, int], int]:
        """(split, shard index) -> record count declared by dataset_info.json ({} when absent)."""
        if not path.is_file():
            return {}
        info = read_json(path, "dataset info")
        try:
            return {
                (str(split["name"]), index): int(length)
                for split in info.get("splits", [])
                for index, length in enumerate(split.get("shardLengths", []))
            }
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ClapDataError(f"dataset info {path} has a malformed splits entry ({exc})") from None

    def _check_features(self, path: Path) -> set[str] | None:
        """The camera keys features.json declares (None when there is no features.json)."""
        if not path.is_file():
            return None
        try:
            declared = _declared_features(read_json(path, "feature description"))
        except (AttributeError, TypeError):
            raise ClapDataError(f"feature description {path} is not a TFDS FeaturesDict") from None
        missing = [name for name in REQUIRED_DECLARED if name not in declared]
        if missing:
            raise ClapDataError(f"feature description {path} declares no {missing[0]}; is this DROID's RLDS release?")
        cameras = {name.removeprefix("steps/observation/") for name in declared if name.startswith("steps/observation/")}
        return cameras & {*CAMERA_KEYS.values(), *UNMAPPED_CAMERAS}

    def _choose_cameras(self, requested: Sequence[str] | None, declared: set[str] | None) -> tuple[str, ...]:
        for key in UNMAPPED_CAMERAS:
            if declared is None or key in declared:
                self.notices.append(f"camera {key} has no unified camera name and is not ingested")
        if requested is None:
            return tuple(cam for cam, key in CAMERA_KEYS.items() if declared is None or key in declared)
        for camera in requested:
            if camera not in CAMERA_KEYS:
                raise ClapDataError(f"unknown camera {camera!r}; DROID cameras are {', '.join(CAMERA_KEYS)}")
            if declared is not None and CAMERA_KEYS[camera] not in declared:
                raise ClapDataError(f"camera {camera} ({CAMERA_KEYS[camera]}) is not declared in features.json")
        return tuple(dict.fromkeys(requested))

    def _note_missing_shards(self) -> None:
        """A partial download is normal input; say how much of each split is present."""
        present: Counter[tuple[str, int]] = Counter()
        for shard in self._shards:
            prefix, _, total = _shard_fields(shard)
            present[(prefix, total)] += 1
        for (prefix, total), count in sorted(present.items()):
            if count < total:
                self.notices.append(f"{count} of the {total} shards of {prefix} are present; only those are ingested")

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name, "layout": "rlds", "root": str(self.root.resolve()), "cameras": list(self.cameras),
            "fps": self.fps,
        }

    # --- listing ---------------------------------------------------------------------------

    def _declared_length(self, shard: Path) -> int | None:
        """The record count dataset_info.json declares for this shard (TFDS names shards
        ``<dataset>-<split>.tfrecord-<index>-of-<total>``)."""
        prefix, index, _ = _shard_fields(shard)
        return self._shard_lengths.get((prefix.rsplit("-", 1)[-1], index))

    def list_episodes(self) -> list[EpisodeRef]:
        """One ref per record header found. A record whose header is bad or cut short is listed
        too, so that reading it quarantines it with the precise reason."""
        self.notices = list(self._metadata_notices)  # listing findings are re-derived on every listing
        paths = [self.root / shard for shard in self._shards]
        with ThreadPoolExecutor(max_workers=min(self._listing_threads, len(paths))) as pool:
            scans = list(pool.map(_scan_shard, paths))
        refs: list[EpisodeRef] = []
        for shard, (spans, error) in zip(self._shards, scans, strict=True):
            located = [(span.index, span.offset) for span in spans]
            if error is not None:
                located.append((len(spans), error.offset))
                if error.kind == "crc_mismatch":
                    self.notices.append(
                        f"shard {shard}: the record header at byte offset {error.offset} is corrupt, so record "
                        f"{len(spans)} and any after it cannot be located"
                    )
            declared = self._declared_length(shard)
            if declared is not None and declared != len(located):
                self.notices.append(f"shard {shard} holds {len(located)} records but dataset_info.json declares {declared}")
            for index, offset in located:
                refs.append(
                    EpisodeRef(
                        source_episode=f"{shard}#{index}",
                        order=len(refs),
                        path=str(shard),
                        details={"index": index, "offset": offset},
                    )
                )
        return refs

    # --- reading one episode ---------------------------------------------------------------

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        example = self._read_example(ref)
        reject = _Rejector(ref)
        steps = self._step_count(example, reject)
        self._check_step_flags(example, steps, reject)
        # The steps written: all, or (--fps) those nearest in time to the output frames; RLDS has no
        # timestamps, so step i is at i / 15 s. The action (next state) is taken among the kept steps.
        picks = np.arange(steps) if self.fps == DROID_FPS else nearest_frames(np.arange(steps) / DROID_FPS, self.fps)
        cartesian = _floats(example, CARTESIAN, steps, 6, reject)[picks]
        gripper = _floats(example, GRIPPER, steps, 1, reject)[picks, 0]
        rotation = geometry.euler_to_matrix(cartesian[:, 3:6])
        arm = geometry.arm_pose7(cartesian[:, :3], rotation, geometry.gripper_from_unit_closed1(gripper))
        state, mask = geometry.dual_arm14(None, arm)
        action = np.vstack([state[1:], state[-1:]])
        instruction = _first_text(example, INSTRUCTION, steps, reject, required=True)
        file_path = _first_text(example, FILE_PATH, 1, reject, required=True)
        extra: dict[str, str | int | float | bool] = {
            name: _first_text(example, key, steps, reject, required=False) for name, key in ALTERNATIVE_INSTRUCTIONS.items()
        }
        extra.update(file_path=file_path, is_episode_successful=SUCCESS_MARKER in file_path, empty_instruction=instruction == "")
        videos = {
            camera: select_frames(_images(example, CAMERA_KEYS[camera], steps, reject), picks, steps)
            for camera in self.cameras
        }
        return CanonicalEpisode(
            state=state, action=action, arm_mask=mask, tasks=[instruction] * len(picks), subtasks=[""] * len(picks),
            videos=videos, extra=extra,
        )

    def _read_example(self, ref: EpisodeRef) -> ParsedExample:
        shard = require_file(self.root / ref.path, self.root, "shard")
        where = ref.source_episode
        try:
            data = read_record(shard, int(ref.details["offset"]))
        except TFRecordError as exc:
            category = "truncated" if exc.kind == "truncated" else "corrupt_record"
            raise EpisodeRejected(category, ref.path, f"{where}: {exc.reason} (byte offset {exc.offset})") from None
        except OSError as exc:
            raise EpisodeRejected("unreadable_file", ref.path, f"{where}: the shard cannot be read ({exc})") from None
        try:
            return parse_example(data)
        except DecodeError:
            offset = ref.details["offset"]
            raise EpisodeRejected(
                "unreadable_file", ref.path, f"{where}: the record at byte offset {offset} is not a tf.train.Example"
            ) from None

    @staticmethod
    def _step_count(example: ParsedExample, reject: _Rejector) -> int:
        """T from ``steps/is_first``; every other step feature must hold a whole number of
        values per step, and the ones DROID fixes exactly their width."""
        _require(example, IS_FIRST, "int64_list", reject)
        steps = example.size(IS_FIRST)
        if steps == 0:
            raise reject("empty", "has no steps")
        for key in example.keys():
            if not key.startswith("steps/"):
                continue
            size, width = example.size(key), STEP_WIDTHS.get(key)
            if (width is not None and size != width * steps) or size % steps:
                expected = f"{steps} steps × {width}" if width is not None else f"a multiple of {steps} steps"
                raise reject("bad_shape", f"{key} holds {size} values, expected {expected}")
        return steps

    @staticmethod
    def _check_step_flags(example: ParsedExample, steps: int, reject: _Rejector) -> None:
        """RLDS marks exactly step 0 as first and exactly the last step as last; anything else
        means steps were lost or episodes were merged."""
        for key, at in ((IS_FIRST, 0), (IS_LAST, steps - 1)):
            _require(example, key, "int64_list", reject)
            flags = np.asarray(example.get(key).values)
            expected = np.zeros(steps, dtype=np.int64)
            expected[at] = 1
            if not np.array_equal(flags != 0, expected != 0):
                set_at = np.flatnonzero(flags).tolist()
                raise reject("step_flags", f"{key} is set at steps {set_at}; RLDS sets it at step {at} only")


class _Rejector:
    """Builds :class:`EpisodeRejected` naming ``<shard>#<record index>``."""

    def __init__(self, ref: EpisodeRef):
        self.ref = ref

    def __call__(self, category: str, problem: str) -> EpisodeRejected:
        return EpisodeRejected(category, self.ref.path, f"{self.ref.source_episode}: {problem}")


def _require(example: ParsedExample, key: str, kind: str, reject: _Rejector) -> None:
    if key not in example:
        raise reject("missing_feature", f"has no {key} feature")
    if example.kind(key) not in (kind, ""):
        raise reject("bad_feature", f"{key} is a {example.kind(key)}, expected a {kind}")


def _floats(example: ParsedExample, key: str, steps: int, width: int, reject: _Rejector) -> np.ndarray:
    """A float step feature as ``[steps, width]`` float64, finite."""
    _require(example, key, "float_list", reject)
    values = np.asarray(example.get(key).values, dtype=np.float64).reshape(steps, width)
    bad = ~np.isfinite(values)
    if bad.any():
        step = int(np.argmax(bad.any(axis=1)))
        raise reject("non_finite", f"{key} has NaN or Inf at step {step}")
    return values


def _first_text(example: ParsedExample, key: str, count: int, reject: _Rejector, required: bool) -> str:
    """The first string of a bytes feature (per-step text is the same on every step)."""
    if key not in example and not required:
        return ""
    _require(example, key, "bytes_list", reject)
    values = example.get(key).values
    if len(values) != count:
        raise reject("bad_shape", f"{key} holds {len(values)} strings, expected {count}")
    return bytes(values[0]).decode("utf-8", errors="replace").strip()


def _decode_image(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def _images(example: ParsedExample, camera_key: str, steps: int, reject: _Rejector) -> ImageSequence:
    """One camera's encoded frames. Every frame must start like a JPEG/PNG file (free); the first
    and the last are fully decoded (cheap, and catches truncated downloads of the record)."""
    key = f"steps/observation/{camera_key}"
    _require(example, key, "bytes_list", reject)
    frames = tuple(bytes(v) for v in example.get(key).values)
    for step, data in enumerate(frames):
        if not data.startswith(_IMAGE_SIGNATURES):
            raise reject("bad_image", f"camera {camera_key} image at step {step} is not a JPEG or PNG file")
    sizes = []
    for step in sorted({0, steps - 1}):
        try:
            sizes.append(_decode_image(frames[step]))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise reject("bad_image", f"camera {camera_key} image at step {step} cannot be decoded ({exc})") from None
    if len(set(sizes)) > 1:
        raise reject("bad_shape", f"camera {camera_key} images change size from {sizes[0]} to {sizes[-1]}")
    return ImageSequence(images=frames)
