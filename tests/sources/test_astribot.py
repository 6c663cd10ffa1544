"""The Astribot adapter on its own (no Ray): canonical values, quirks of the real format."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_data.errors import ClapDataError
from clap_data.sources.astribot import AstribotSource
from clap_data.sources.base import EpisodeRejected
from tests.reference import copy_source, reference_canonical


def test_canonical_state_and_action_match_the_reference(real_astribot):
    source = AstribotSource(real_astribot)
    ref = source.list_episodes()[0]
    episode = source.read_episode(ref)
    state, action = reference_canonical(real_astribot / ref.path)
    np.testing.assert_allclose(episode.state, state, atol=1e-8)
    np.testing.assert_allclose(episode.action, action, atol=1e-8)
    assert (episode.arm_mask == 1).all()


def test_grippers_outside_0_100_are_clamped(astribot_src):
    source = AstribotSource(astribot_src)
    raw = pq.read_table(astribot_src / source.list_episodes()[0].path)
    grippers = np.array(raw.column("cartesian_so3_dict.cartesian_pose_state").to_pylist())[:, [18, 28]]
    assert grippers.min() < 0 or grippers.max() > 100, "the factory writes out-of-range grippers, like the real data"
    states = np.vstack([source.read_episode(ref).state for ref in source.list_episodes()])
    assert states[:, [6, 13]].min() >= -1 and states[:, [6, 13]].max() <= 1


def test_task_pair_gives_coarse_task_and_fine_subtask(real_astribot):
    source = AstribotSource(real_astribot)
    ref = source.list_episodes()[0]
    episode = source.read_episode(ref)
    declared = json.loads((real_astribot / "meta/episodes.jsonl").read_text().splitlines()[0])
    assert set(episode.tasks) == set(declared["tasks"])
    assert len(episode.subtasks) == len(episode.tasks)
    assert len(set(episode.subtasks)) > 1  # the fine instruction changes during the episode


def test_scalar_task_index_is_read_as_coarse_only(astribot_src, tmp_path):
    root = copy_source(astribot_src, tmp_path / "src")
    path = root / "data/chunk-000/episode_000000.parquet"
    table = pq.read_table(path)
    coarse = [pair[0] for pair in table.column("task_index").to_pylist()]
    index = table.schema.get_field_index("task_index")
    pq.write_table(table.set_column(index, "task_index", pa.array(coarse, pa.int64())), path)
    source = AstribotSource(root)
    episode = source.read_episode(source.list_episodes()[0])
    tasks = {json.loads(line)["task_index"]: json.loads(line)["task"] for line in (root / "meta/tasks.jsonl").read_text().splitlines()}
    assert episode.tasks == [tasks[i] for i in coarse]
    assert episode.subtasks == [""] * len(coarse)


def test_declared_but_absent_camera_is_left_out_with_a_notice(real_astribot):
    source = AstribotSource(real_astribot)
    assert source.cameras == ("wrist_left", "wrist_right")
    assert len(source.notices) == 1 and "camera head" in source.notices[0]


def test_missing_episode_files_reject_only_that_episode(real_astribot):
    source = AstribotSource(real_astribot)
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(source.list_episodes()[1])
    assert rejected.value.category == "missing_file"
    assert rejected.value.file == "data/chunk-000/episode_000001.parquet"


def test_not_an_astribot_folder(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": 30, "data_path": "x", "features": {}}))
    with pytest.raises(ClapDataError, match="expects the GR00T-flavoured LeRobot v2.0 layout"):
        AstribotSource(tmp_path)
