"""Write a synthetic DROID dataset in its RLDS/TFDS on-disk layout, as ``tfds`` writes it.

Layout (``droid/1.0.1`` of the public bucket, ~1.7 TB in 2048 shards)::

    <dest>/droid/1.0.1/dataset_info.json
    <dest>/droid/1.0.1/features.json
    <dest>/droid/1.0.1/droid-train.tfrecord-00000-of-NNNNN ...

Every record is one episode serialized as one ``tf.train.Example`` (TFDS' ``ExampleSerializer``):
the nested feature dict is flattened with ``/`` and every step feature is the concatenation of
its per-step values, so ``steps/observation/cartesian_position`` is a float_list of T*6 values,
``steps/observation/exterior_image_1_left`` a bytes_list of T JPEG files,
``steps/language_instruction`` a bytes_list of T (identical) strings, ``steps/is_first`` an
int64_list of T 0/1 values (TFDS stores booleans as int64), and ``episode_metadata/file_path``
a bytes_list of one string. float64 tensors are stored as float32 (``FloatList``).

Quirks of the real data kept here: episodes without a language annotation have ``""`` as
instruction; the alternative instructions ``_2``/``_3`` are often empty; success is only
encoded in ``episode_metadata/file_path`` (``.../success/...`` or ``.../failure/...``); the
Franka's gripper points down, so roll sits near ±π and wraps from +π to -π inside an episode;
``dataset_info.json`` may declare more shards than a partial download holds
(``declared_shards``).

Values are plausible, not physical (joints are not the inverse kinematics of the poses).
Images are tiny (``image_size``; 180×320 in reality): a flat colour per (episode, step,
camera), see :func:`expected_rgb`, plus a faint horizontal ramp, JPEG-encoded with Pillow.

Run ``python -m clap_data.factories.droid_rlds DEST`` to write the default dataset.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from clap_data.tfrecord import Feature, encode_example, iter_records, parse_example, write_records

__all__ = [
    "CAMERAS",
    "DROID_FPS",
    "DroidEpisodeSpec",
    "edit_episode",
    "episode_features",
    "expected_rgb",
    "plan_droid_episodes",
    "shard_paths",
    "write_droid_rlds_dataset",
]

DROID_FPS = 15
DATASET_NAME = "droid"
VERSION = "1.0.1"
SPLIT = "train"
CAMERAS = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
DECLARED_IMAGE_SHAPE = (180, 320, 3)  # what features.json declares, whatever size is written
LANGUAGE_EMBEDDING_DIM = 512
RAW_DATA_ROOT = "/nfs/kun2/datasets/r2d2/r2d2-data-full"  # prefix of episode_metadata/file_path
_LABS = ("AUTOLab", "ILIAD", "IRIS", "RAIL", "REAL", "TRI")
_TASKS = (
    "put the marker in the cup",
    "close the top drawer",
    "move the blue bowl to the left",
    "wipe the table with the towel",
    "pick up the spoon and put it in the pot",
)
_ALTERNATIVES = ("place the pen inside the mug", "push the drawer shut", "slide the bowl leftwards")
_HOME_XYZ = np.array([0.52, 0.0, 0.36])

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class DroidEpisodeSpec:
    """What one synthetic episode says about itself; per-step values come from the seed."""

    episode_index: int
    length: int
    instruction: str  # "" for an episode without language annotation (kept by DROID)
    instruction_2: str
    instruction_3: str
    success: bool
    file_path: str  # episode_metadata/file_path: ".../success/..." or ".../failure/..."
    recording_folderpath: str


def expected_rgb(episode_index: int, step: int, camera: str) -> tuple[int, int, int]:
    """The flat RGB colour of a frame (before the ramp), distinct per channel so a channel swap
    shows, and 17 levels apart between neighbouring steps so a frame shift shows after lossy
    coding. Levels stay within 28..227, clear of studio-range clipping."""
    base = (17 * step + 40 * CAMERAS.index(camera) + 7 * episode_index) % 200
    return base + 28, (base + 70) % 200 + 28, (base + 140) % 200 + 28


# Horizontal ramp added to the flat colour: 0 at the left edge, RAMP_LEVELS - 1 at the right.
RAMP_LEVELS = 12


def _rng(seed: int, episode_index: int, stream: int) -> np.random.Generator:
    # One generator per (episode, purpose): adding episodes never changes the earlier ones.
    return np.random.default_rng([seed, episode_index, stream])


def plan_droid_episodes(episode_lengths: Sequence[int], seed: int = 0) -> list[DroidEpisodeSpec]:
    """The episode specs :func:`write_droid_rlds_dataset` writes. With four or more episodes,
    episode 1 is a failure and episode 2 has no language annotation, as in the real release."""
    specs = []
    for index, length in enumerate(episode_lengths):
        if int(length) != length or length < 1:
            raise ValueError(f"episode {index}: length must be a positive int, got {length!r}")
        rng = _rng(seed, index, 0)
        annotated = index % 4 != 2
        success = index % 3 != 1
        lab = str(rng.choice(_LABS))
        day = 7 + index % 20
        clock = f"{9 + index % 10:02d}:{index % 60:02d}:{int(rng.integers(60)):02d}"
        # DROID's raw folders are named like "Fri_Jul__7_09:42:23_2023" (ctime with "_" for " ").
        outcome = "success" if success else "failure"
        folder = f"{RAW_DATA_ROOT}/{lab}/{outcome}/2023-07-{day:02d}/Fri_Jul_{day:>2}_{clock}_2023".replace(" ", "_")
        specs.append(
            DroidEpisodeSpec(
                episode_index=index,
                length=int(length),
                instruction=str(rng.choice(_TASKS)) if annotated else "",
                instruction_2=str(rng.choice(_ALTERNATIVES)) if annotated and index % 2 == 0 else "",
                instruction_3=str(rng.choice(_ALTERNATIVES)) if annotated and index % 3 == 0 else "",
                success=success,
                file_path=f"{folder}/trajectory.h5",
                recording_folderpath=f"{folder}/recordings/MP4",
            )
        )
    return specs


def _smooth(rng: np.random.Generator, n: int, dims: int, amplitude: float) -> FloatArray:
    """Sum of slow random sinusoids per dimension, bounded by ``amplitude``."""
    t = np.arange(n)[:, None, None] / DROID_FPS
    freq = rng.uniform(0.1, 0.6, size=(1, dims, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(1, dims, 3))
    return (amplitude / 3 * np.sin(2 * np.pi * freq * t + phase)).sum(-1)


def _wrap(angle: FloatArray) -> FloatArray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _robot_streams(spec: DroidEpisodeSpec, seed: int) -> dict[str, FloatArray]:
    """Observed state and the recorded command stream (which runs one step ahead of it)."""
    rng = _rng(seed, spec.episode_index, 1)
    n = spec.length + 1  # one extra step: the command at t is the state at t+1
    xyz = _HOME_XYZ + rng.normal(0, 0.02, 3) + _smooth(rng, n, 3, 0.08)
    # Gripper pointing down: roll drifts across ±π mid-episode (wrapping from +π to -π).
    roll = _wrap(np.pi - 0.06 + 0.12 * np.arange(n) / max(n - 1, 1) + _smooth(rng, n, 1, 0.01)[:, 0])
    pitch = _smooth(rng, n, 1, 0.25)[:, 0]
    yaw = _smooth(rng, n, 1, 0.6)[:, 0]
    cartesian = np.column_stack([xyz, roll, pitch, yaw])
    t = np.arange(n) / max(n - 1, 1)
    gripper = np.clip(np.interp(t, [0.0, 0.3, 0.45, 0.75, 0.9, 1.0], [0.0, 0.0, 0.85, 0.85, 0.0, 0.0]), 0.0, 1.0)
    joints = np.array([0.0, -0.6, 0.0, -2.3, 0.0, 1.8, 0.8]) + _smooth(rng, n, 7, 0.4)
    return {
        "cartesian": cartesian[:-1],
        "gripper": gripper[:-1, None],
        "joints": joints[:-1],
        "cmd_cartesian": cartesian[1:],
        "cmd_gripper": gripper[1:, None],
        "cmd_joints": joints[1:],
    }


def _jpeg(rgb: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    height, width = size
    ramp = np.linspace(0, RAMP_LEVELS - 1, width).round().astype(np.int16)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for channel, level in enumerate(rgb):
        pixels[:, :, channel] = np.clip(level + ramp, 0, 255)[None, :]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _step_flag(length: int, at: int) -> NDArray[np.int64]:
    flags = np.zeros(length, dtype=np.int64)
    flags[at] = 1
    return flags


def episode_features(
    spec: DroidEpisodeSpec, seed: int = 0, image_size: tuple[int, int] = (36, 64), language_embeddings: bool = True
) -> dict[str, Feature]:
    """The flattened features of one episode's ``tf.train.Example``, as TFDS serializes DROID."""
    n = spec.length
    s = _robot_streams(spec, seed)
    velocity = np.vstack([np.diff(s["cartesian"], axis=0), np.zeros((1, 6))]) * DROID_FPS
    features: dict[str, Feature] = {
        "episode_metadata/file_path": Feature.bytes([spec.file_path]),
        "episode_metadata/recording_folderpath": Feature.bytes([spec.recording_folderpath]),
        "steps/action": Feature.floats(np.hstack([s["cmd_cartesian"], s["cmd_gripper"]])),
        "steps/action_dict/cartesian_position": Feature.floats(s["cmd_cartesian"]),
        "steps/action_dict/cartesian_velocity": Feature.floats(velocity),
        "steps/action_dict/gripper_position": Feature.floats(s["cmd_gripper"]),
        "steps/action_dict/gripper_velocity": Feature.floats((s["cmd_gripper"] - s["gripper"]) * DROID_FPS),
        "steps/action_dict/joint_position": Feature.floats(s["cmd_joints"]),
        "steps/action_dict/joint_velocity": Feature.floats((s["cmd_joints"] - s["joints"]) * DROID_FPS),
        "steps/discount": Feature.floats(np.ones(n)),
        "steps/is_first": Feature.ints(_step_flag(n, 0)),
        "steps/is_last": Feature.ints(_step_flag(n, n - 1)),
        "steps/is_terminal": Feature.ints(_step_flag(n, n - 1)),
        "steps/language_instruction": Feature.bytes([spec.instruction] * n),
        "steps/language_instruction_2": Feature.bytes([spec.instruction_2] * n),
        "steps/language_instruction_3": Feature.bytes([spec.instruction_3] * n),
        "steps/observation/cartesian_position": Feature.floats(s["cartesian"]),
        "steps/observation/gripper_position": Feature.floats(s["gripper"]),
        "steps/observation/joint_position": Feature.floats(s["joints"]),
        "steps/reward": Feature.floats(_step_flag(n, n - 1)),
    }
    for camera in CAMERAS:
        frames = [_jpeg(expected_rgb(spec.episode_index, step, camera), image_size) for step in range(n)]
        features[f"steps/observation/{camera}"] = Feature.bytes(frames)
    if language_embeddings:
        rng = _rng(seed, spec.episode_index, 2)
        for suffix in ("", "_2", "_3"):
            embedding = rng.normal(0, 0.05, LANGUAGE_EMBEDDING_DIM)
            features[f"steps/language_embedding{suffix}"] = Feature.floats(np.tile(embedding, n))
    return features


# --- features.json / dataset_info.json, as TFDS writes them --------------------------------

_TFDS = "tensorflow_datasets.core.features."


def _tensor(shape: Sequence[int], dtype: str, description: str) -> dict[str, Any]:
    kind = "scalar.Scalar" if not shape else "tensor_feature.Tensor"
    dims = {"dimensions": [str(d) for d in shape]} if shape else {}
    return {"pythonClassName": _TFDS + kind, "tensor": {"shape": dims, "dtype": dtype, "encoding": "none"},
            "description": description}


def _image(description: str) -> dict[str, Any]:
    return {
        "pythonClassName": _TFDS + "image_feature.Image",
        "image": {"shape": {"dimensions": [str(d) for d in DECLARED_IMAGE_SHAPE]}, "dtype": "uint8", "encodingFormat": "jpeg"},
        "description": description,
    }


def _text(description: str) -> dict[str, Any]:
    return {"pythonClassName": _TFDS + "text_feature.Text", "text": {}, "description": description}


def _dict(features: dict[str, Any]) -> dict[str, Any]:
    return {"pythonClassName": _TFDS + "features_dict.FeaturesDict", "featuresDict": {"features": features}}


def features_json(language_embeddings: bool = True) -> dict[str, Any]:
    """DROID's features.json (the TFDS FeaturesDict of the release)."""
    observation = {
        "gripper_position": _tensor([1], "float64", "Gripper position statae"),
        "cartesian_position": _tensor([6], "float64", "Robot Cartesian state"),
        "wrist_image_left": _image("Wrist camera RGB left viewpoint"),
        "joint_position": _tensor([7], "float64", "Joint position state"),
        "exterior_image_2_left": _image("Exterior camera 2 left viewpoint"),
        "exterior_image_1_left": _image("Exterior camera 1 left viewpoint"),
    }
    action_dict = {
        "gripper_position": _tensor([1], "float64", "Commanded gripper position"),
        "cartesian_velocity": _tensor([6], "float64", "Commanded Cartesian velocity"),
        "cartesian_position": _tensor([6], "float64", "Commanded Cartesian position"),
        "gripper_velocity": _tensor([1], "float64", "Commanded gripper velocity"),
        "joint_position": _tensor([7], "float64", "Commanded joint position"),
        "joint_velocity": _tensor([7], "float64", "Commanded joint velocity"),
    }
    step = {
        "is_terminal": _tensor([], "bool", "True on last step of the episode if it is a terminal step, True for demos."),
        "is_last": _tensor([], "bool", "True on last step of the episode."),
        "language_instruction_3": _text("Alternative Language Instruction."),
        "observation": _dict(observation),
        "action_dict": _dict(action_dict),
        "discount": _tensor([], "float32", "Discount if provided, default to 1."),
        "reward": _tensor([], "float32", "Reward if provided, 1 on final step for demos."),
        "language_instruction_2": _text("Alternative Language Instruction."),
        "language_instruction": _text("Language Instruction."),
        "is_first": _tensor([], "bool", "True on first step of the episode."),
        "action": _tensor([7], "float64", "Robot action, consists of [6x joint velocities, 1x gripper position]."),
    }
    if language_embeddings:
        for suffix in ("", "_2", "_3"):
            step[f"language_embedding{suffix}"] = _tensor([LANGUAGE_EMBEDDING_DIM], "float32", "Kona language embedding.")
    steps = {"pythonClassName": _TFDS + "dataset_feature.Dataset", "sequence": {"feature": _dict(step), "length": "-1"}}
    metadata = _dict({
        "recording_folderpath": _text("Path to the folder of recordings."),
        "file_path": _text("Path to the original data file."),
    })
    return _dict({"steps": steps, "episode_metadata": metadata})


def dataset_info_json(shard_lengths: Sequence[int], num_bytes: int) -> dict[str, Any]:
    """dataset_info.json as TFDS writes it (proto3 JSON: int64 values are strings)."""
    return {
        "citation": "@article{khazatsky2024droid, title={DROID: A Large-Scale In-The-Wild Robot Manipulation Dataset}}",
        "description": "DROID: A Large-Scale In-The-Wild Robot Manipulation Dataset (synthetic clap-data fixture)",
        "fileFormat": "tfrecord",
        "moduleName": "droid.droid",
        "name": DATASET_NAME,
        "releaseNotes": {"1.0.0": "Initial release.", VERSION: "Fixed language annotations."},
        "splits": [
            {
                "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                "name": SPLIT,
                "numBytes": str(num_bytes),
                "shardLengths": [str(n) for n in shard_lengths],
            }
        ],
        "version": VERSION,
    }


def shard_name(index: int, total: int) -> str:
    """``droid-train.tfrecord-00003-of-02048``."""
    return f"{DATASET_NAME}-{SPLIT}.tfrecord-{index:05d}-of-{total:05d}"


def shard_paths(root: Path) -> list[Path]:
    """The shards a dataset written here holds, in order."""
    return sorted((Path(root) / DATASET_NAME / VERSION).glob(f"{DATASET_NAME}-{SPLIT}.tfrecord-*"))


def write_droid_rlds_dataset(
    dest: Path,
    episode_lengths: Sequence[int] = (20, 14, 17, 12),
    episodes_per_shard: int = 2,
    seed: int = 0,
    image_size: tuple[int, int] = (36, 64),
    declared_shards: int | None = None,
    language_embeddings: bool = True,
) -> Path:
    """Write DROID in its RLDS layout under ``dest`` (replaced if it exists) and return ``dest``.

    Episodes fill shards in order, ``episodes_per_shard`` each. ``declared_shards`` (>= the
    number written) makes the data look like a partial download: shard names say ``-of-<that>``
    and dataset_info.json declares that many shards, repeating the last length for the absent ones.
    """
    if episodes_per_shard < 1:
        raise ValueError("episodes_per_shard must be at least 1")
    specs = plan_droid_episodes(episode_lengths, seed)
    groups = [specs[i : i + episodes_per_shard] for i in range(0, len(specs), episodes_per_shard)]
    total = declared_shards or len(groups)
    if total < len(groups):
        raise ValueError(f"declared_shards={total} is less than the {len(groups)} shards written")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    folder = dest / DATASET_NAME / VERSION
    folder.mkdir(parents=True)
    num_bytes = 0
    for index, group in enumerate(groups):
        path = folder / shard_name(index, total)
        write_records(path, (encode_example(episode_features(s, seed, image_size, language_embeddings)) for s in group))
        num_bytes += path.stat().st_size
    lengths = [len(g) for g in groups] + [len(groups[-1])] * (total - len(groups))
    (folder / "dataset_info.json").write_text(json.dumps(dataset_info_json(lengths, num_bytes), indent=2))
    (folder / "features.json").write_text(json.dumps(features_json(language_embeddings), indent=4))
    return dest


def edit_episode(shard: Path, index: int, edit: Callable[[dict[str, Feature]], None]) -> None:
    """Rewrite record ``index`` of ``shard`` after ``edit`` changed its features in place (fault
    injection for tests: the record is re-framed with valid CRCs)."""
    records = list(iter_records(shard))
    features = parse_example(records[index]).to_dict()
    edit(features)
    records[index] = encode_example(features)
    write_records(shard, records)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder to write (replaced if it exists)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 14, 17, 12], help="steps per episode")
    parser.add_argument("--episodes-per-shard", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, nargs=2, default=[36, 64], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--declared-shards", type=int, default=None, help="pretend to be a partial download of this many shards")
    args = parser.parse_args(argv)
    root = write_droid_rlds_dataset(
        args.dest, args.lengths, args.episodes_per_shard, args.seed, tuple(args.image_size), args.declared_shards
    )
    print(f"wrote {len(args.lengths)} DROID RLDS episodes to {root / DATASET_NAME / VERSION}")


if __name__ == "__main__":
    main()
