"""Unified schema v1 is stated once and refuses what it does not know."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from clap_data.schemas import (
    POSE14_NAMES,
    SCHEMA_NAME,
    UnknownSchemaError,
    camera_feature_key,
    data_arrow_schema,
    frame_features,
    read_clap_meta,
)


def test_pose_names_are_left_then_right_seven_dof():
    assert len(POSE14_NAMES) == 14
    assert POSE14_NAMES[:7] == ("left_x", "left_y", "left_z", "left_roll", "left_pitch", "left_yaw", "left_gripper")
    assert POSE14_NAMES[7:] == tuple(name.replace("left", "right") for name in POSE14_NAMES[:7])


def test_data_schema_uses_fixed_size_lists_for_vectors():
    schema = data_arrow_schema(frame_features())
    assert schema.field("observation.state").type == pa.list_(pa.float32(), 14)
    assert schema.field("action").type == pa.list_(pa.float32(), 14)
    assert schema.field("arm_mask").type == pa.list_(pa.float32(), 2)
    assert schema.field("subtask").type == pa.string()
    assert schema.field("timestamp").type == pa.float32()
    assert schema.names == ["observation.state", "action", "arm_mask", "subtask", "timestamp", "frame_index", "episode_index", "index", "task_index"]


def test_camera_keys():
    assert camera_feature_key("wrist_left") == "observation.images.wrist_left"
    with pytest.raises(ValueError, match="unknown camera"):
        camera_feature_key("left")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "clap_data.json is missing"),
        ("{", "cannot be read"),
        (json.dumps({"schema": SCHEMA_NAME, "schema_version": 2}), "version 2"),
        (json.dumps({"schema": "someone-else", "schema_version": 1}), "someone-else"),
    ],
)
def test_readers_refuse_unknown_or_missing_schema(tmp_path, content, message):
    (tmp_path / "meta").mkdir()
    if content is not None:
        (tmp_path / "meta/clap_data.json").write_text(content)
    with pytest.raises(UnknownSchemaError, match=message):
        read_clap_meta(tmp_path)


def test_reader_accepts_v1(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/clap_data.json").write_text(json.dumps({"schema": SCHEMA_NAME, "schema_version": 1, "x": 1}))
    assert read_clap_meta(tmp_path)["x"] == 1
