"""End to end: LeRobot v3.0 and v2.1 datasets through a mapping file, and DROID's port, into the
unified LeRobot v3.0 dataset; stock lerobot reads every frame back equal to the source episode's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from lerobot.datasets import LeRobotDataset

from clap_data.errors import ExitCode
from clap_data.factories.lerobot import ROTATIONS, plan_episodes, write_lerobot_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.base import VideoWindow
from clap_data.sources.droid import DroidSource
from clap_data.sources.lerobot import LeRobotSource
from clap_data.video import iter_rgb_frames
from tests.sources.test_droid_lerobot import episode_rows, reference_state
from tests.sources.test_mapping import bimanual_document, reference_arm

pytestmark = pytest.mark.usefixtures("ray_local")
LENGTHS = (12, 9, 14)


def load(out: Path) -> LeRobotDataset:
    return LeRobotDataset("local/clap-data-test", root=out, video_backend="pyav")


def window_frames(window: VideoWindow) -> list[np.ndarray]:
    """The source episode's frames of one camera, decoded from the source file."""
    frames = [frame for _, frame in iter_rgb_frames(window.path)]
    return frames[window.start : window.start + (window.count or len(frames))]


def assert_frames_equal_source(
    dataset: LeRobotDataset, index: int, source, state: np.ndarray, action: np.ndarray, tasks: list[str], source_index: int | None = None
) -> None:
    """Every frame of output episode ``index`` (source episode ``source_index``, by default the
    same): values to 1e-5, task, and pixels equal to the source's frames."""
    episode = dataset.meta.episodes[index]
    start, stop = episode["dataset_from_index"], episode["dataset_to_index"]
    assert stop - start == len(state)
    windows = source.read_episode(source.list_episodes()[index if source_index is None else source_index]).videos
    frames = {camera: window_frames(window) for camera, window in windows.items()}
    for offset in range(len(state)):
        item = dataset[start + offset]
        assert item["frame_index"].item() == offset
        assert item["timestamp"].item() == pytest.approx(offset / dataset.fps, abs=1e-6)
        np.testing.assert_allclose(item["observation.state"].numpy(), state[offset], atol=1e-5)
        np.testing.assert_allclose(item["action"].numpy(), action[offset], atol=1e-5)
        assert item["task"] == tasks[offset]
        for camera, source_frames in frames.items():
            decoded = (item[f"observation.images.{camera}"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(decoded, source_frames[offset])


def bimanual_reference(root: Path, episode_index: int, rotation: str) -> tuple[np.ndarray, np.ndarray]:
    rows = episode_rows(root, episode_index)
    block = 3 + ROTATIONS[rotation] + 1
    out = []
    for column in ("observation.state", "action"):
        raw = np.array(rows.column(column).to_pylist(), dtype=np.float64)
        out.append(np.hstack([reference_arm(raw[:, :block], rotation), reference_arm(raw[:, block:], rotation)]))
    return out[0], out[1]


@pytest.mark.parametrize("version, rotation", [("v3.0", "quat_wxyz"), ("v2.1", "rot6d_rows")])
def test_generic_mapping_file(tmp_path, version, rotation):
    src = write_lerobot_dataset(
        tmp_path / "src", version=version, flavour="bimanual", rotation=rotation, episode_lengths=LENGTHS, video_size=(32, 32)
    )
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(bimanual_document(rotation)))
    source = LeRobotSource(src, mapping)
    report = ingest(source, IngestRequest(out=tmp_path / "out", workers=2))
    assert report.exit_code == ExitCode.OK
    assert (report.written, report.frames) == (3, sum(LENGTHS))
    assert report.notices == ["video observation.images.cam_right_wrist is not mapped to a unified camera and is not ingested"]
    dataset = load(tmp_path / "out")
    assert dataset.meta.robot_type == "bimanual_arms" and dataset.fps == 20
    assert dataset.meta.video_keys == ["observation.images.head", "observation.images.wrist_left"]
    for index in range(3):
        state, action = bimanual_reference(src, index, rotation)
        task = plan_episodes("bimanual", LENGTHS)[index].task
        assert_frames_equal_source(dataset, index, source, state, action, [task] * LENGTHS[index])
        assert dataset[dataset.meta.episodes[index]["dataset_from_index"]]["arm_mask"].tolist() == [1.0, 1.0]
    episodes = pq.read_table(tmp_path / "out/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["source/dataset"] for e in episodes] == ["lerobot"] * 3
    assert [e["source/empty_instruction"] for e in episodes] == [False] * 3


def test_droid_port(tmp_path):
    src = write_lerobot_dataset(tmp_path / "src", episode_lengths=(*LENGTHS, 8), video_size=(32, 32))
    source = DroidSource(src)
    report = ingest(source, IngestRequest(out=tmp_path / "out", workers=2))
    assert report.exit_code == ExitCode.OK and report.written == 4
    assert report.cameras == ["head", "wrist_right"]
    dataset = load(tmp_path / "out")
    assert dataset.meta.robot_type == "droid" and dataset.fps == 15
    specs = plan_episodes("droid", (*LENGTHS, 8))
    for index in range(4):
        state = reference_state(episode_rows(src, index))
        action = np.vstack([state[1:], state[-1:]])
        assert_frames_equal_source(dataset, index, source, state, action, [specs[index].language[0]] * specs[index].length)
        assert dataset[dataset.meta.episodes[index]["dataset_from_index"]]["arm_mask"].tolist() == [0.0, 1.0]
    episodes = pq.read_table(tmp_path / "out/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["tasks"] for e in episodes] == [[s.language[0]] for s in specs]
    assert [e["source/empty_instruction"] for e in episodes] == [False, True, False, False]
    assert [e["source/language_instruction_2"] for e in episodes] == [s.language[1] for s in specs]
    assert [e["source/language_instruction_3"] for e in episodes] == [s.language[2] for s in specs]
    assert [e["source/is_episode_successful"] for e in episodes] == [True, True, False, True]
    assert [e["source/dataset"] for e in episodes] == ["droid"] * 4


def test_broken_episodes_in_shared_files_are_quarantined_alone(tmp_path):
    """v3 files hold several episodes: one episode's bad rows or missing video file must not take
    its neighbours with it."""
    src = write_lerobot_dataset(tmp_path / "src", episode_lengths=(*LENGTHS, 8), video_size=(32, 32))
    data = src / "data/chunk-000/file-000.parquet"  # episodes 0 and 1
    table = pq.read_table(data)
    stamps = table.column("timestamp").to_pylist()
    stamps[LENGTHS[0] + 4] += 0.5
    field = table.schema.field("timestamp")
    pq.write_table(table.set_column(table.schema.get_field_index("timestamp"), field, pa.array(stamps, field.type)), data)
    (src / "videos/observation.images.wrist_left/chunk-000/file-001.mp4").unlink()  # episode 3's wrist video
    report = ingest(DroidSource(src), IngestRequest(out=tmp_path / "out", workers=2))
    assert report.exit_code == ExitCode.QUARANTINED
    assert [(q["source_episode"], q["category"]) for q in report.quarantine] == [("000001", "timestamps"), ("000003", "missing_file")]
    assert report.quarantine[0]["reason"] == (
        "data file data/chunk-000/file-000.parquet has timestamp 0.766667 at frame 4, not 0.266667 (frame_index / fps at 15 fps)"
    )
    assert report.quarantine[1]["reason"] == "video file videos/observation.images.wrist_left/chunk-000/file-001.mp4 is missing"
    dataset = load(tmp_path / "out")
    assert dataset.meta.total_episodes == 2
    source = DroidSource(src)
    for output_index, source_index in ((0, 0), (1, 2)):
        state = reference_state(episode_rows(src, source_index))
        length = LENGTHS[source_index]
        tasks = [plan_episodes("droid", LENGTHS)[source_index].language[0]] * length
        assert_frames_equal_source(dataset, output_index, source, state, np.vstack([state[1:], state[-1:]]), tasks, source_index)
