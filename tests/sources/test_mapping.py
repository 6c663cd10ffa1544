"""The mapping file and the generic LeRobot adapter it drives: parsing, one-sentence errors naming
the bad key, and canonical values for every rotation convention against scipy."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy.spatial.transform import Rotation

from clap_data.errors import ClapDataError
from clap_data.factories.lerobot import ROTATIONS, write_lerobot_dataset
from clap_data.sources.base import EpisodeRejected
from clap_data.sources.droid import droid_mapping_document
from clap_data.sources.lerobot import LeRobotSource
from clap_data.sources.mapping import MappingError, SourceMapping, load_mapping, parse_mapping
from tests.reference import copy_source

DOCS = Path(__file__).resolve().parents[2] / "docs"


def bimanual_document(rotation: str) -> dict:
    """The mapping a user writes for the factory's bimanual robot: per arm [xyz, rotation, opening %]."""
    width = ROTATIONS[rotation]
    arms = {}
    for slot, first in (("left", 0), ("right", width + 4)):
        def stream(column: str, first: int = first) -> dict:
            return {
                "position": f"{column}[{first}:{first + 3}]",
                "rotation": f"{column}[{first + 3}:{first + 3 + width}]",
                "rotation_convention": rotation,
                "gripper": f"{column}[{first + 3 + width}]",
                "gripper_open": 100,
                "gripper_closed": 0,
            }
        arms[slot] = {"state": stream("observation.state"), "action": stream("action")}
    return {
        "embodiment": "bimanual_arms",
        "arms": arms,
        "cameras": {"head": "observation.images.cam_high", "wrist_left": "observation.images.cam_left_wrist"},
    }


def _rows(root: Path, column: str) -> np.ndarray:
    return np.array(
        [row for path in sorted(root.glob("data/*/*.parquet")) for row in pq.read_table(path).column(column).to_pylist()], dtype=np.float64
    )


def reference_arm(values: np.ndarray, rotation: str) -> np.ndarray:
    """METHOD.md §1 for one arm written with scipy, independently of clap_data.geometry."""
    rot = values[:, 3 : 3 + ROTATIONS[rotation]]
    if rotation == "euler_xyz":
        r = Rotation.from_euler("xyz", rot)
    elif rotation == "quat_xyzw":
        r = Rotation.from_quat(rot)
    elif rotation == "quat_wxyz":
        r = Rotation.from_quat(rot, scalar_first=True)
    elif rotation == "matrix":
        r = Rotation.from_matrix(rot.reshape(-1, 3, 3))
    else:
        b1 = rot[:, :3] / np.linalg.norm(rot[:, :3], axis=1, keepdims=True)
        b2 = rot[:, 3:] - np.sum(b1 * rot[:, 3:], axis=1, keepdims=True) * b1
        b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
        r = Rotation.from_matrix(np.stack([b1, b2, np.cross(b1, b2)], axis=1))
    grip = np.clip(1.0 - values[:, -1] / 50.0, -1.0, 1.0)  # opening %: 100 open → -1, 0 → +1
    return np.hstack([values[:, :3], r.as_euler("xyz"), grip[:, None]])


@pytest.fixture(scope="module")
def datasets_by_rotation(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bimanual")
    return {
        rotation: write_lerobot_dataset(
            base / rotation, flavour="bimanual", rotation=rotation, episode_lengths=(10, 8), video_size=(32, 32)
        )
        for rotation in ROTATIONS
    }


@pytest.fixture(scope="module")
def droid(tmp_path_factory) -> Path:
    return write_lerobot_dataset(tmp_path_factory.mktemp("droid") / "src", episode_lengths=(8, 6), video_size=(32, 32))


# --- Values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", list(ROTATIONS))
def test_every_rotation_convention_matches_scipy(datasets_by_rotation, rotation):
    root = datasets_by_rotation[rotation]
    source = LeRobotSource(root, parse_mapping(bimanual_document(rotation), "test"))
    state = np.vstack([source.read_episode(ref).state for ref in source.list_episodes()])
    action = np.vstack([source.read_episode(ref).action for ref in source.list_episodes()])
    block = 3 + ROTATIONS[rotation] + 1
    for column, canonical in (("observation.state", state), ("action", action)):
        raw = _rows(root, column)
        expected = np.hstack([reference_arm(raw[:, :block], rotation), reference_arm(raw[:, block:], rotation)])
        np.testing.assert_allclose(canonical, expected, atol=1e-6)
    assert state[:, [6, 13]].min() == -1.0  # openings past 100 % clamp to fully open


def test_dual_arm_mask_tasks_cameras_and_notice(datasets_by_rotation):
    source = LeRobotSource(datasets_by_rotation["quat_xyzw"], parse_mapping(bimanual_document("quat_xyzw"), "test"))
    assert source.cameras == ("head", "wrist_left") and source.fps == 20 and source.embodiment == "bimanual_arms"
    assert source.notices == ["video observation.images.cam_right_wrist is not mapped to a unified camera and is not ingested"]
    refs = source.list_episodes()
    episode = source.read_episode(refs[1])
    assert (episode.arm_mask == [1.0, 1.0]).all()
    assert episode.tasks == ["hand over the cube"] * 8 and episode.subtasks == [""] * 8
    assert episode.extra == {"empty_instruction": False}
    assert (episode.videos["head"].start, episode.videos["head"].count) == (10, 8)
    assert pickle.loads(pickle.dumps(source)).read_episode(refs[0]).state.shape == (10, 14)


def test_single_arm_in_the_left_slot_and_next_state_action(datasets_by_rotation):
    document = bimanual_document("euler_xyz")
    document["arms"] = {"left": {"state": document["arms"]["right"]["state"], "action": "next_state"}}
    source = LeRobotSource(datasets_by_rotation["euler_xyz"], parse_mapping(document, "test"))
    episode = source.read_episode(source.list_episodes()[0])
    assert (episode.arm_mask == [1.0, 0.0]).all()
    assert (episode.state[:, 7:] == 0).all()
    right_arm = _rows(datasets_by_rotation["euler_xyz"], "observation.state")[:10, 7:]
    np.testing.assert_allclose(episode.state[:, :7], reference_arm(right_arm, "euler_xyz"), atol=1e-6)
    np.testing.assert_array_equal(episode.action[:-1], episode.state[1:])
    np.testing.assert_array_equal(episode.action[-1], episode.state[-1])


def test_subtask_and_extra_columns(droid):
    document = droid_mapping_document(["observation.images.exterior_1_left"])
    document["subtask"] = "language_instruction_2"
    document["extra"] = {"building": "building", "success": "is_episode_successful"}
    source = LeRobotSource(droid, parse_mapping(document, "test"), cameras=["head"])
    episode = source.read_episode(source.list_episodes()[0])
    assert episode.subtasks == ["place the marker into the mug"] * 8
    assert episode.extra == {"building": "building_0", "success": True, "empty_instruction": False}


def test_mapping_file_path_and_camera_choice(droid, tmp_path):
    path = tmp_path / "droid.json"
    path.write_text(json.dumps(droid_mapping_document(["observation.images.exterior_1_left", "observation.images.wrist_left"])))
    assert LeRobotSource(droid, path).cameras == ("head", "wrist_right")
    assert LeRobotSource(droid, path, cameras=["wrist_right"]).cameras == ("wrist_right",)
    with pytest.raises(ClapDataError, match=r"camera 'wrist_left' is not mapped by file .*droid.json; mapped cameras: head, wrist_right"):
        LeRobotSource(droid, path, cameras=["wrist_left"])


def _rewrite_state(root: Path, row: int, values) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    rows = table.column("observation.state").to_pylist()
    rows[row] = values(rows[row])
    field = table.schema.field("observation.state")
    pq.write_table(table.set_column(table.schema.get_field_index("observation.state"), field, pa.array(rows, field.type)), path)


@pytest.mark.parametrize(
    "rotation, corrupt, category, reason",
    [
        ("quat_xyzw", lambda r: r[:3] + [0, 0, 0, 0] + r[7:], "bad_rotation",
         "column observation.state (arms.left.state.rotation) at row 4: quaternion is not unit length"),
        ("matrix", lambda r: r[:3] + [1, 0, 0, 0, 1, 0, 0, 0, -1] + r[12:], "bad_rotation",
         "column observation.state (arms.left.state.rotation) at row 4: matrix is not a rotation"),
        ("rot6d_rows", lambda r: r[:3] + [1, 0, 0, 1, 0, 0] + r[9:], "bad_rotation",
         "column observation.state (arms.left.state.rotation) at row 4: rows are nearly parallel"),
        ("euler_xyz", lambda r: r[:1] + [float("nan")] + r[2:], "non_finite",
         "column observation.state (arms.left.state.position) has NaN or Inf at row 4"),
    ],
)
def test_values_that_are_not_poses_reject_the_episode(datasets_by_rotation, tmp_path, rotation, corrupt, category, reason):
    root = copy_source(datasets_by_rotation[rotation], tmp_path / "src")
    _rewrite_state(root, 4, corrupt)
    source = LeRobotSource(root, parse_mapping(bimanual_document(rotation), "test"))
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(source.list_episodes()[0])
    assert rejected.value.category == category
    assert rejected.value.reason == f"data file data/chunk-000/file-000.parquet {reason}"
    source.read_episode(source.list_episodes()[1])  # the other episode is intact


def test_unknown_task_index_rejects_the_episode(datasets_by_rotation, tmp_path):
    root = copy_source(datasets_by_rotation["quat_xyzw"], tmp_path / "src")
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("task_index"), "task_index", pa.array([7] * table.num_rows)), path)
    source = LeRobotSource(root, parse_mapping(bimanual_document("quat_xyzw"), "test"))
    with pytest.raises(EpisodeRejected, match="refers to task_index 7, absent from the task list") as rejected:
        source.read_episode(source.list_episodes()[0])
    assert rejected.value.category == "unknown_task"


# --- The file on its own -------------------------------------------------------------------------


def test_droid_example_file_is_the_builtin_mapping():
    shipped = load_mapping(DOCS / "mappings/droid.yaml")
    builtin = parse_mapping(droid_mapping_document(["observation.images.exterior_1_left", "observation.images.wrist_left"]), "x")
    assert dataclasses.replace(shipped, origin="x") == builtin


def test_the_documented_example_is_the_bimanual_mapping():
    text = (DOCS / "lerobot_mapping.md").read_text()
    example = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    expected = bimanual_document("quat_wxyz")
    expected.update(embodiment="my_bimanual", instruction="task")
    expected["cameras"]["wrist_right"] = "observation.images.cam_right_wrist"
    assert parse_mapping(example, "doc") == parse_mapping(expected, "doc")


def test_json_is_accepted_and_defaults_apply(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(bimanual_document("matrix")))
    mapping = load_mapping(path)
    assert isinstance(mapping, SourceMapping)
    assert mapping.origin == f"file {path}" and mapping.instruction == "task" and mapping.subtask is None and mapping.extra == {}
    assert mapping.arms["right"].state.rotation.name == "observation.state"
    assert (mapping.arms["right"].state.rotation.start, mapping.arms["right"].state.rotation.stop) == (16, 25)
    assert (mapping.arms["right"].state.gripper.start, mapping.arms["right"].state.gripper.stop) == (25, 26)


def _set(document: dict, dotted: str, value) -> dict:
    document = copy.deepcopy(document)
    *parents, last = dotted.split(".")
    node = document
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return document


_DELETE = object()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("robot", "x", "unknown key 'robot'; the top level takes embodiment, arms, cameras, instruction, subtask, extra"),
        ("embodiment", _DELETE, "embodiment is missing"),
        ("embodiment", "", "embodiment must be a non-empty string, not ''"),
        ("arms", {}, "arms must map an arm slot (left, right, or both) to its columns"),
        ("arms.middle", {}, "arms.middle is not an arm slot; use left, right or both"),
        ("arms.right.action", "commanded", "arms.right.action 'commanded' must be 'next_state' or a block like arms.right.state"),
        ("arms.right.state.rotation_convention", "euler_XYZ",
         "arms.right.state.rotation_convention 'euler_XYZ' is not one of euler_xyz, quat_xyzw, quat_wxyz, rot6d_rows, matrix "
         "(uppercase XYZ would be intrinsic rotations; the canonical form and DROID use lowercase, extrinsic)"),
        ("arms.right.state.rotation_convention", "axis_angle",
         "arms.right.state.rotation_convention 'axis_angle' is not one of euler_xyz, quat_xyzw, quat_wxyz, rot6d_rows, matrix"),
        ("arms.right.state.position", "observation.state[3:0]", "arms.right.state.position 'observation.state[3:0]' selects no values"),
        ("arms.right.state.position", "observation.state[a:b]",
         "arms.right.state.position 'observation.state[a:b]' is not a column reference like 'name', 'name[3]' or 'name[0:3]'"),
        ("arms.right.state.gripper_open", "wide", "arms.right.state.gripper_open must be a number, not 'wide'"),
        ("arms.right.state.gripper_open", 0, "arms.right.state.gripper_open and gripper_closed are both 0.0; they must differ"),
        ("arms.right.state.gripper", _DELETE, "arms.right.state.gripper is missing"),
        ("arms.right.state.speed", 1, "unknown key 'arms.right.state.speed'; arms.right.state takes position, rotation, "
         "rotation_convention, gripper, gripper_open, gripper_closed"),
        ("cameras.front", "observation.images.cam_high", "cameras.front is not a unified camera; use head, wrist_left, wrist_right"),
        ("extra", {"bad name": "x"}, "extra.bad name must be a plain identifier other than empty_instruction (which is always written)"),
        ("extra", {"empty_instruction": "x"}, "extra.empty_instruction must be a plain identifier other than empty_instruction"),
    ],
)
def test_bad_mapping_documents_name_the_key(tmp_path, key, value, message):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(_set(bimanual_document("quat_xyzw"), key, value)))
    with pytest.raises(MappingError) as error:
        load_mapping(path)
    assert str(error.value).startswith(f"mapping file {path}: {message}")


def test_unreadable_mapping_files(tmp_path):
    with pytest.raises(MappingError, match=r"mapping file .*nope.yaml does not exist"):
        load_mapping(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("embodiment: x\narms: [unclosed\n")
    with pytest.raises(MappingError, match=r"mapping file .*bad.yaml is not valid YAML at line 3"):
        load_mapping(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(MappingError, match="the top level must be a mapping of keys to values, not list"):
        load_mapping(bad)


# --- The file against the dataset ----------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("arms.left.state.position", "observation.state.xyz", "arms.left.state.position refers to column 'observation.state.xyz', "
         "which meta/info.json does not declare"),
        ("arms.left.state.position", "observation.state[0:2]",
         "arms.left.state.position selects 2 value(s) of 'observation.state'; it needs 3"),
        ("arms.left.state.gripper", "observation.state[30]",
         "arms.left.state.gripper selects values 30..30 of 'observation.state', which has 16"),
        ("arms.left.state.rotation", "observation.state[0:3]",
         "arms.left.state.rotation selects 3 value(s) of 'observation.state'; it needs 4"),
        ("arms.left.state.position", "observation.images.cam_high",
         "arms.left.state.position refers to column 'observation.images.cam_high' of dtype video, expected a numeric dtype"),
        ("cameras.head", "observation.state", "cameras.head refers to column 'observation.state' of dtype float32, expected video"),
        ("instruction", "task_index", "instruction refers to column 'task_index' of dtype int64, expected string"),
        ("extra", {"pose": "action"}, "extra.pose refers to column 'action' of shape [16]; extras must be single values"),
    ],
)
def test_mapping_that_does_not_fit_the_dataset(datasets_by_rotation, key, value, message):
    document = _set(bimanual_document("quat_xyzw"), key, value)
    with pytest.raises(MappingError) as error:
        LeRobotSource(datasets_by_rotation["quat_xyzw"], parse_mapping(document, "my.yaml"))
    assert str(error.value).startswith(f"mapping my.yaml: {message}")
