"""End to end: DROID RLDS shards → unified LeRobot v3.0, read back by stock lerobot and checked
against an independent implementation of METHOD.md and against the source JPEG frames."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets import LeRobotDataset
from PIL import Image
from scipy.spatial.transform import Rotation

from clap_data.errors import ExitCode
from clap_data.factories.droid_rlds import edit_episode, plan_droid_episodes, shard_paths, write_droid_rlds_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.droid_rlds import DroidRldsSource
from clap_data.tfrecord import Feature, iter_record_spans, iter_records, parse_example
from tests.reference import copy_source

pytestmark = pytest.mark.usefixtures("ray_local")

LENGTHS = (20, 14, 17, 12)
CAMERA_SOURCES = {"head": "exterior_image_1_left", "wrist_right": "wrist_image_left"}


def load(out: Path) -> LeRobotDataset:
    return LeRobotDataset("local/clap-data-test", root=out, video_backend="pyav")


def reference_state(example) -> np.ndarray:
    """METHOD.md §1 for DROID, written independently: scipy "xyz" Euler, 2g−1 clamped, right slot."""
    cartesian = example.get("steps/observation/cartesian_position").values.astype(np.float64).reshape(-1, 6)
    gripper = example.get("steps/observation/gripper_position").values.astype(np.float64)
    state = np.zeros((len(cartesian), 14))
    state[:, 7:10] = cartesian[:, :3]
    state[:, 10:13] = Rotation.from_euler("xyz", cartesian[:, 3:]).as_euler("xyz")
    state[:, 13] = np.clip(2 * gripper - 1, -1, 1)
    return state


def decoded_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def assert_episode_matches_source(dataset: LeRobotDataset, episode_index: int, example) -> None:
    """Every frame: canonical values to 1e-5 (float32 storage), angles modulo 2π; every camera
    frame close to its source JPEG and closer to it than to the neighbouring frames."""
    state = reference_state(example)
    action = np.vstack([state[1:], state[-1:]])
    instruction = example.get("steps/language_instruction").values[0].decode()
    episode = dataset.meta.episodes[episode_index]
    start, stop = episode["dataset_from_index"], episode["dataset_to_index"]
    assert stop - start == len(state)
    sources = {cam: [decoded_jpeg(b) for b in example.get(f"steps/observation/{key}").values] for cam, key in CAMERA_SOURCES.items()}
    for offset in range(len(state)):
        item = dataset[start + offset]
        assert item["frame_index"].item() == offset
        assert item["timestamp"].item() == pytest.approx(offset / 15, abs=1e-6)
        for name, expected in (("observation.state", state[offset]), ("action", action[offset])):
            got = item[name].numpy().astype(np.float64)
            np.testing.assert_allclose(np.angle(np.exp(1j * (got - expected))), 0, atol=1e-5, err_msg=name)
        assert item["arm_mask"].tolist() == [0.0, 1.0]
        assert item["task"] == instruction and item["subtask"] == ""
        for camera, frames in sources.items():
            decoded = (item[f"observation.images.{camera}"] * 255).permute(1, 2, 0).to(torch.float64).numpy()
            errors = [np.abs(decoded - frames[k]).mean() for k in range(max(0, offset - 1), min(len(frames), offset + 2))]
            own = np.abs(decoded - frames[offset]).mean()
            assert own < 4.0, f"{camera} frame {offset} differs from its JPEG by {own:.1f} levels on average"
            assert own == min(errors), f"{camera} frame {offset} is closer to a neighbouring source frame"


@pytest.fixture(scope="module")
def droid_src(tmp_path_factory) -> Path:
    return write_droid_rlds_dataset(tmp_path_factory.mktemp("droid") / "src", LENGTHS, episodes_per_shard=2)


@pytest.fixture(scope="module")
def clean_ingest(droid_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("droid_out") / "droid_v3"
    return out, ingest(DroidRldsSource(droid_src), IngestRequest(out=out))


def test_report(clean_ingest):
    _, report = clean_ingest
    assert report.exit_code == ExitCode.OK
    assert (report.listed, report.written, report.frames) == (4, 4, sum(LENGTHS))
    assert report.cameras == ["head", "wrist_right"]
    assert report.notices == ["camera exterior_image_2_left has no unified camera name and is not ingested"]


def test_stock_lerobot_reads_every_frame_equal_to_the_source(clean_ingest, droid_src):
    out, _ = clean_ingest
    dataset = load(out)
    assert (dataset.meta.total_episodes, dataset.fps, dataset.meta.robot_type) == (4, 15, "droid")
    assert dataset.meta.video_keys == ["observation.images.head", "observation.images.wrist_right"]
    examples = [parse_example(r) for shard in shard_paths(droid_src) for r in iter_records(shard)]
    for index, example in enumerate(examples):
        assert_episode_matches_source(dataset, index, example)


def test_episode_metadata_keeps_droid_facts(clean_ingest):
    out, _ = clean_ingest
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    specs = plan_droid_episodes(LENGTHS)
    assert [e["source/episode_id"] for e in episodes] == [
        f"droid/1.0.1/droid-train.tfrecord-0000{i // 2}-of-00002#{i % 2}" for i in range(4)
    ]
    for episode, spec in zip(episodes, specs, strict=True):
        assert episode["source/dataset"] == "droid"
        assert episode["source/is_episode_successful"] is spec.success
        assert episode["source/file_path"] == spec.file_path
        assert episode["source/empty_instruction"] is (spec.instruction == "")
        assert (episode["source/language_instruction_2"], episode["source/language_instruction_3"]) == (spec.instruction_2, spec.instruction_3)
        assert episode["tasks"] == [spec.instruction]


def test_bad_records_are_quarantined_and_the_rest_intact(droid_src, tmp_path):
    root = copy_source(droid_src, tmp_path / "src")
    shard_0, shard_1 = shard_paths(root)
    raw = bytearray(shard_0.read_bytes())
    raw[list(iter_record_spans(shard_0))[1].offset + 5000] ^= 0xFF  # episode 1: payload CRC
    shard_0.write_bytes(bytes(raw))

    def truncate_middle_frame(features: dict[str, Feature]) -> None:  # episode 2: passes the first/last check
        frames = list(features["steps/observation/exterior_image_1_left"].values)
        frames[8] = frames[8][: len(frames[8]) // 2]
        features["steps/observation/exterior_image_1_left"] = Feature.bytes(frames)

    edit_episode(shard_1, 0, truncate_middle_frame)
    report = ingest(DroidRldsSource(root), IngestRequest(out=tmp_path / "out"))
    assert report.exit_code == ExitCode.QUARANTINED
    assert [(q["source_episode"], q["category"]) for q in report.quarantine] == [
        ("droid/1.0.1/droid-train.tfrecord-00000-of-00002#1", "corrupt_record"),
        ("droid/1.0.1/droid-train.tfrecord-00001-of-00002#0", "bad_video"),
    ]
    assert "fails its data CRC check" in report.quarantine[0]["reason"]
    assert "camera head" in report.quarantine[1]["reason"] and "image 8 cannot be decoded" in report.quarantine[1]["reason"]
    dataset = load(tmp_path / "out")
    assert dataset.meta.total_episodes == 2
    assert_episode_matches_source(dataset, 0, parse_example(next(iter_records(shard_0))))  # episode 0
    assert_episode_matches_source(dataset, 1, parse_example(list(iter_records(shard_1))[1]))  # episode 3
