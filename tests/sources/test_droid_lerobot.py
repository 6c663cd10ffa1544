"""DROID's LeRobot port through DroidSource: canonical values against scipy, the next-state action,
camera names old and new, language and success facts, and the layout dispatch."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.transform import Rotation

from clap_data.errors import ClapDataError
from clap_data.factories.lerobot import plan_episodes, write_lerobot_dataset
from clap_data.sources.droid import DroidSource
from clap_data.sources.mapping import MappingError
from tests.reference import copy_source

LENGTHS = (12, 9, 14, 11)
CART = "observation.state.cartesian_position"
GRIP = "observation.state.gripper_position"


@pytest.fixture(scope="module")
def port(tmp_path_factory) -> Path:
    return write_lerobot_dataset(tmp_path_factory.mktemp("droid") / "v3", episode_lengths=LENGTHS, video_size=(32, 32))


def episode_rows(root: Path, episode_index: int) -> pa.Table:
    tables = [pq.read_table(p) for p in sorted(root.glob("data/*/*.parquet"))]
    table = pa.concat_tables(tables)
    return table.filter(pa.compute.equal(table.column("episode_index"), episode_index))


def reference_state(rows: pa.Table, euler: str = "xyz") -> np.ndarray:
    """METHOD.md §1 for DROID, with scipy: right slot, Euler through a rotation, gripper 2g − 1."""
    pose = np.array(rows.column(CART).to_pylist(), dtype=np.float64)
    grip = np.array(rows.column(GRIP).to_pylist(), dtype=np.float64)
    euler_out = Rotation.from_euler(euler, pose[:, 3:]).as_euler("xyz")
    right = np.hstack([pose[:, :3], euler_out, np.clip(2 * grip - 1, -1, 1)[:, None]])
    return np.hstack([np.zeros((len(pose), 7)), right])


def read_all(source: DroidSource):
    return [(ref, source.read_episode(ref)) for ref in source.list_episodes()]


def test_state_is_the_right_arm_in_canonical_form(port):
    source = DroidSource(port)
    assert (source.name, source.embodiment, source.fps) == ("droid", "droid", 15)
    for ref, episode in read_all(source):
        rows = episode_rows(port, int(ref.source_episode))
        np.testing.assert_allclose(episode.state, reference_state(rows), atol=1e-6)
        assert (episode.arm_mask == [0.0, 1.0]).all()
        assert (episode.state[:, :7] == 0).all() and (episode.action[:, :7] == 0).all()


def test_euler_angles_are_lowercase_extrinsic_xyz(port):
    """The intrinsic reading ("XYZ", a known bug elsewhere) gives other angles for DROID's poses."""
    episode = DroidSource(port).read_episode(DroidSource(port).list_episodes()[0])
    rows = episode_rows(port, 0)
    np.testing.assert_allclose(episode.state[:, 10:13], reference_state(rows, "xyz")[:, 10:13], atol=1e-6)
    assert np.abs(episode.state[:, 10:13] - reference_state(rows, "XYZ")[:, 10:13]).max() > 0.05
    roll = np.concatenate([e.state[:, 10] for _, e in read_all(DroidSource(port))])
    assert (roll > 2.5).any() and (roll < -2.5).any()  # the wrap at ±π is kept, not unwrapped


def test_action_is_the_next_state_not_the_commanded_pose(port):
    for ref, episode in read_all(DroidSource(port)):
        np.testing.assert_array_equal(episode.action[:-1], episode.state[1:])
        np.testing.assert_array_equal(episode.action[-1], episode.state[-1])
        commanded = np.array(episode_rows(port, int(ref.source_episode)).column("action.cartesian_position").to_pylist())
        assert np.abs(episode.action[:, 7:10] - commanded[:, :3]).max() > 1e-3


def test_gripper_maps_to_plus_one_closed_and_clamps(port, tmp_path):
    root = copy_source(port, tmp_path / "src")
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    grip = table.column(GRIP).to_pylist()
    grip[0], grip[1], grip[2] = 1.05, -0.02, 0.25
    field = table.schema.field(GRIP)
    pq.write_table(table.set_column(table.schema.get_field_index(GRIP), field, pa.array(grip, field.type)), path)
    source = DroidSource(root)
    episode = source.read_episode(source.list_episodes()[0])
    np.testing.assert_allclose(episode.state[:3, 13], [1.0, -1.0, -0.5])


def test_cameras_head_and_wrist_right_and_exterior_2_left_out(port):
    source = DroidSource(port)
    assert source.cameras == ("head", "wrist_right")
    assert source.notices == ["video observation.images.exterior_2_left is not mapped to a unified camera and is not ingested"]
    episode = source.read_episode(source.list_episodes()[2])
    head, wrist = episode.videos["head"], episode.videos["wrist_right"]
    assert head.path == port / "videos/observation.images.exterior_1_left/chunk-000/file-000.mp4"
    assert wrist.path == port / "videos/observation.images.wrist_left/chunk-000/file-000.mp4"
    assert (head.start, head.count) == (21, 14)
    only_wrist = DroidSource(port, cameras=["wrist_right"])
    assert only_wrist.cameras == ("wrist_right",)
    assert set(only_wrist.read_episode(only_wrist.list_episodes()[0]).videos) == {"wrist_right"}
    message = "^camera 'wrist_left' is not mapped by built-in DROID mapping; mapped cameras: head, wrist_right$"
    with pytest.raises(ClapDataError, match=message):
        DroidSource(port, cameras=["wrist_left"])


def test_older_ports_camera_names_are_read_from_info_json(tmp_path):
    root = write_lerobot_dataset(tmp_path / "legacy", flavour="droid_legacy", episode_lengths=(6,), video_size=(32, 32))
    source = DroidSource(root)
    assert source.cameras == ("head", "wrist_right")
    assert source.notices == ["video observation.images.exterior_image_2_left is not mapped to a unified camera and is not ingested"]
    videos = source.read_episode(source.list_episodes()[0]).videos
    assert videos["head"].path.parent.parent.name == "observation.images.exterior_image_1_left"
    assert videos["wrist_right"].path.parent.parent.name == "observation.images.wrist_image_left"


def test_language_success_and_empty_instruction(port):
    specs = plan_episodes("droid", LENGTHS)
    episodes = read_all(DroidSource(port))
    assert {tuple(sorted(e.extra)) for _, e in episodes} == {
        ("empty_instruction", "is_episode_successful", "language_instruction_2", "language_instruction_3")
    }
    for (ref, episode), spec in zip(episodes, specs, strict=True):
        assert episode.tasks == [spec.language[0]] * spec.length
        assert episode.subtasks == [""] * spec.length
        assert episode.extra == {
            "language_instruction_2": spec.language[1],
            "language_instruction_3": spec.language[2],
            "is_episode_successful": spec.successful,
            "empty_instruction": spec.language[0] == "",
        }
    assert episodes[1][1].extra["empty_instruction"] is True and episodes[1][1].tasks[0] == ""  # kept, flagged
    assert episodes[2][1].extra["language_instruction_3"] == "" and episodes[2][1].extra["is_episode_successful"] is False


def test_a_v21_port_reads_the_same_values(tmp_path):
    root = write_lerobot_dataset(tmp_path / "v21", version="v2.1", episode_lengths=(7, 5), video_size=(32, 32))
    source = DroidSource(root)
    assert source.describe()["codebase_version"] == "v2.1"
    ref = source.list_episodes()[1]
    episode = source.read_episode(ref)
    np.testing.assert_allclose(episode.state, reference_state(pq.read_table(root / ref.path)), atol=1e-6)
    assert episode.videos["head"].path == root / "videos/chunk-000/observation.images.exterior_1_left/episode_000001.mp4"
    assert episode.videos["head"].count is None


def test_describe_and_pickle(port):
    source = DroidSource(port)
    described = source.describe()
    assert {k: v for k, v in described.items() if k != "mapping"} == {
        "source": "droid", "layout": "lerobot", "root": str(port.resolve()), "codebase_version": "v3.0",
        "embodiment": "droid", "cameras": ["head", "wrist_right"], "fps": 15,
    }
    assert described["mapping"]["origin"] == "built-in DROID mapping"
    assert described["mapping"]["arms"]["right"]["state"]["rotation"] == {
        "key": "arms.right.state.rotation", "name": "observation.state.cartesian_position", "start": 3, "stop": 6,
    }
    assert described["mapping"]["arms"]["right"]["action"] is None  # next_state
    json.dumps(described)  # written to meta/clap_data.json
    clone = pickle.loads(pickle.dumps(source))
    ref = clone.list_episodes()[3]
    np.testing.assert_array_equal(clone.read_episode(ref).state, source.read_episode(ref).state)


def test_rlds_shards_are_handed_to_the_rlds_reader(tmp_path, monkeypatch):
    (tmp_path / "droid_rlds").mkdir()
    (tmp_path / "droid_rlds/droid_101-train.tfrecord-00000-of-02048").write_bytes(b"")
    calls = []

    class FakeRlds:
        def __init__(self, root, cameras=None, workers_hint=None, fps=None):
            calls.append((root, cameras, workers_hint, fps))
            self.root, self.embodiment, self.fps, self.cameras, self.notices = root, "droid", 15, ("head",), ["rlds"]

        def describe(self):
            return {"source": "droid_rlds", "root": str(self.root)}

    monkeypatch.setitem(sys.modules, "clap_data.sources.droid_rlds", types.SimpleNamespace(DroidRldsSource=FakeRlds))
    source = DroidSource(tmp_path / "droid_rlds", cameras=["head"], workers_hint=4)
    assert calls == [(tmp_path / "droid_rlds", ["head"], 4, None)]
    assert (source.layout, source.cameras, source.notices, source.fps) == ("rlds", ("head",), ["rlds"], 15)
    assert source.describe() == {"source": "droid", "root": str(tmp_path / "droid_rlds"), "layout": "rlds"}


def test_not_a_droid_folder(tmp_path):
    with pytest.raises(ClapDataError, match="source folder .* does not exist"):
        DroidSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClapDataError) as error:
        DroidSource(tmp_path / "empty")
    assert str(error.value) == (
        f"{tmp_path / 'empty'} is not a DROID dataset: it has neither meta/info.json (a LeRobot port such as "
        "lerobot/droid_1.0.1) nor RLDS shards (*.tfrecord-*-of-*, e.g. droid/1.0.1)"
    )


def test_a_port_without_the_language_column(port, tmp_path):
    root = copy_source(port, tmp_path / "src")
    info = json.loads((root / "meta/info.json").read_text())
    del info["features"]["language_instruction"]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(MappingError, match="^mapping built-in DROID mapping: instruction refers to column 'language_instruction', "
                       "which meta/info.json does not declare$"):
        DroidSource(root)


def test_fps_option_resamples_the_port_and_takes_the_next_state_among_kept_frames(port):
    """15 fps onto 5: the frames nearest k / 5 s are every third one; DROID's action is the next
    state, which after resampling is the state of the next frame written, not of the next source row."""
    full, slow = DroidSource(port), DroidSource(port, fps=5)
    assert (slow.fps, slow.describe()["fps"]) == (5, 5)
    ref = slow.list_episodes()[2]  # 14 frames, the third episode of the first video file
    original, resampled = full.read_episode(ref), slow.read_episode(ref)
    picks = [0, 3, 6, 9, 12]
    np.testing.assert_array_equal(resampled.state, original.state[picks])
    np.testing.assert_array_equal(resampled.action[:-1], resampled.state[1:])
    np.testing.assert_array_equal(resampled.action[-1], resampled.state[-1])
    assert resampled.tasks == [original.tasks[i] for i in picks]
    window, source_window = resampled.videos["head"], original.videos["head"]
    assert (window.path, window.start, window.count, window.frames) == (source_window.path, 21, 14, tuple(picks))


def test_a_fractional_port_rate_is_refused_with_the_resampling_hint(port, tmp_path):
    root = copy_source(port, tmp_path / "src")
    info = json.loads((root / "meta/info.json").read_text())
    info["fps"] = 14.985
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ClapDataError) as error:
        DroidSource(root)
    assert str(error.value) == (
        f"metadata file {root / 'meta/info.json'} declares fps 14.985, but a LeRobot v3 dataset stores a whole number "
        "of frames per second; pass --fps 15 to resample onto 15 fps"
    )
