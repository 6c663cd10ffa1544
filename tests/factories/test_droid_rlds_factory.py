"""The DROID RLDS factory writes TFDS' exact layout: shard names, record framing, one flattened
tf.train.Example per episode whose features match features.json, and the quirks of the release."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clap_data.factories.droid_rlds import (
    CAMERAS,
    RAMP_LEVELS,
    edit_episode,
    expected_rgb,
    main,
    plan_droid_episodes,
    shard_paths,
    write_droid_rlds_dataset,
)
from clap_data.tfrecord import Feature, crc32c, iter_records, parse_example
from tests.test_tfrecord import bitwise_crc32c

LENGTHS = (20, 14, 17, 12)


@pytest.fixture(scope="module")
def droid(tmp_path_factory) -> Path:
    return write_droid_rlds_dataset(tmp_path_factory.mktemp("droid") / "src", LENGTHS, episodes_per_shard=2, image_size=(36, 64))


def masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def raw_records(path: Path) -> list[bytes]:
    """Records parsed from the bytes with struct alone; length CRCs checked bit by bit, data CRCs
    with clap_data's crc32c (itself checked against the bitwise definition in test_tfrecord)."""
    raw, records, offset = path.read_bytes(), [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<Q", raw, offset)
        assert struct.unpack_from("<I", raw, offset + 8)[0] == masked(bitwise_crc32c(raw[offset : offset + 8]))
        data = raw[offset + 12 : offset + 12 + length]
        assert struct.unpack_from("<I", raw, offset + 12 + length)[0] == masked(crc32c(data))
        records.append(data)
        offset += 16 + length
    assert offset == len(raw)
    return records


def flatten_features_json(spec: dict, prefix: str = "") -> dict[str, dict]:
    """TFDS feature names as ExampleSerializer flattens them, with their leaf spec."""
    if "featuresDict" in spec:
        out = {}
        for key, child in spec["featuresDict"]["features"].items():
            out.update(flatten_features_json(child, f"{prefix}{key}/"))
        return out
    if "sequence" in spec:
        return flatten_features_json(spec["sequence"]["feature"], prefix)
    return {prefix.rstrip("/"): spec}


def test_layout_and_dataset_info(droid):
    folder = droid / "droid/1.0.1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "dataset_info.json", "droid-train.tfrecord-00000-of-00002", "droid-train.tfrecord-00001-of-00002", "features.json",
    ]
    info = json.loads((folder / "dataset_info.json").read_text())
    assert (info["name"], info["version"], info["fileFormat"]) == ("droid", "1.0.1", "tfrecord")
    (split,) = info["splits"]
    assert split["name"] == "train" and split["filepathTemplate"] == "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    assert split["shardLengths"] == ["2", "2"], "proto3 JSON writes int64 as strings"
    assert int(split["numBytes"]) == sum(p.stat().st_size for p in shard_paths(droid))
    assert [len(raw_records(p)) for p in shard_paths(droid)] == [2, 2]


def test_every_example_holds_exactly_the_declared_features(droid):
    declared = flatten_features_json(json.loads((droid / "droid/1.0.1/features.json").read_text()))
    assert "steps/observation/cartesian_position" in declared and "episode_metadata/file_path" in declared
    kinds = {"float64": "float_list", "float32": "float_list", "bool": "int64_list"}
    for record in raw_records(shard_paths(droid)[0]):
        example = parse_example(record)
        assert example.keys() == sorted(declared)
        steps = example.size("steps/is_first")
        for name, spec in declared.items():
            if "tensor" in spec:
                dims = [int(d) for d in spec["tensor"]["shape"].get("dimensions", [])]
                assert example.kind(name) == kinds[spec["tensor"]["dtype"]], name
                assert example.size(name) == steps * int(np.prod(dims)), name
            else:  # Image and Text: one bytes string per step (per episode for episode_metadata)
                assert example.kind(name) == "bytes_list", name
                assert example.size(name) == (1 if name.startswith("episode_metadata/") else steps), name


def test_episode_values_and_quirks(droid):
    specs = plan_droid_episodes(LENGTHS)
    examples = [parse_example(r) for p in shard_paths(droid) for r in iter_records(p)]
    rolls = []
    for spec, example in zip(specs, examples, strict=True):
        n = spec.length
        assert example.get("steps/is_first").values.tolist() == [1] + [0] * (n - 1)
        assert example.get("steps/is_last").values.tolist() == [0] * (n - 1) + [1]
        assert example.get("steps/language_instruction").values == [spec.instruction.encode()] * n
        assert example.get("episode_metadata/file_path").values == [spec.file_path.encode()]
        assert ("/success/" in spec.file_path) == spec.success and ("/failure/" in spec.file_path) != spec.success
        cartesian = example.get("steps/observation/cartesian_position").values.reshape(n, 6)
        gripper = example.get("steps/observation/gripper_position").values
        assert cartesian.dtype == np.float32 and gripper.min() >= 0 and gripper.max() <= 1
        # The recorded command runs one step ahead of the observed state.
        np.testing.assert_array_equal(example.get("steps/action_dict/cartesian_position").values.reshape(n, 6)[:-1], cartesian[1:])
        np.testing.assert_array_equal(example.get("steps/action").values.reshape(n, 7)[:, :6], example.get("steps/action_dict/cartesian_position").values.reshape(n, 6))
        rolls.append(cartesian[:, 3])
    assert [s.instruction == "" for s in specs] == [False, False, True, False], "episode 2 has no annotation"
    assert [s.success for s in specs] == [True, False, True, True], "episode 1 failed"
    assert all((r > 3.0).any() and (r < -3.0).any() for r in rolls), "roll wraps from +π to -π"


def test_images_are_jpegs_of_the_expected_colour(droid):
    example = parse_example(next(iter_records(shard_paths(droid)[1])))  # episode 2
    for camera in CAMERAS:
        frames = example.get(f"steps/observation/{camera}").values
        assert len(frames) == LENGTHS[2]
        for step in (0, 9, LENGTHS[2] - 1):
            image = Image.open(io.BytesIO(frames[step]))
            assert image.format == "JPEG" and image.size == (64, 36)
            pixels = np.asarray(image.convert("RGB")).astype(float)
            left = pixels[:, :4].reshape(-1, 3).mean(axis=0)  # the ramp starts at 0 on the left edge
            np.testing.assert_allclose(left, expected_rgb(2, step, camera), atol=3)
            assert pixels[:, -1].mean() - pixels[:, 0].mean() == pytest.approx(RAMP_LEVELS - 1, abs=3)


def test_partial_download_declares_all_shards(tmp_path):
    root = write_droid_rlds_dataset(tmp_path / "d", (5, 6, 7), episodes_per_shard=2, declared_shards=2048,
                                    image_size=(16, 16), language_embeddings=False)
    assert [p.name for p in shard_paths(root)] == ["droid-train.tfrecord-00000-of-02048", "droid-train.tfrecord-00001-of-02048"]
    info = json.loads((root / "droid/1.0.1/dataset_info.json").read_text())
    assert len(info["splits"][0]["shardLengths"]) == 2048
    assert "steps/language_embedding" not in flatten_features_json(json.loads((root / "droid/1.0.1/features.json").read_text()))


def test_seeded_and_deterministic(tmp_path):
    a = write_droid_rlds_dataset(tmp_path / "a", (6, 5), image_size=(16, 16), seed=3)
    b = write_droid_rlds_dataset(tmp_path / "b", (6, 5), image_size=(16, 16), seed=3)
    c = write_droid_rlds_dataset(tmp_path / "c", (6, 5), image_size=(16, 16), seed=4)
    assert shard_paths(a)[0].read_bytes() == shard_paths(b)[0].read_bytes() != shard_paths(c)[0].read_bytes()


def test_edit_episode_rewrites_one_record_with_valid_framing(tmp_path):
    root = write_droid_rlds_dataset(tmp_path / "d", (5, 6), image_size=(16, 16), language_embeddings=False)
    shard = shard_paths(root)[0]

    def rename(features: dict[str, Feature]) -> None:
        features["steps/language_instruction"] = Feature.bytes(["edited"] * 6)

    edit_episode(shard, 1, rename)
    first, second = (parse_example(r) for r in raw_records(shard))
    assert second.get("steps/language_instruction").values == [b"edited"] * 6
    assert first.get("steps/language_instruction").values != [b"edited"] * 5


def test_main_writes_the_dataset(tmp_path, capsys):
    main([str(tmp_path / "cli"), "--lengths", "4", "3", "--image-size", "16", "16"])
    assert len(shard_paths(tmp_path / "cli")) == 1
    assert "wrote 2 DROID RLDS episodes" in capsys.readouterr().out
