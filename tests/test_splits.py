"""The one held-out split: keyed on each episode's provenance (source dataset id + source episode
id), so it follows the episode through renumbering and differs between source datasets whose
episodes share ids; recorded in checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clap_data.act_vae.checkpoint import TRAINING_META_NAME
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.splits import Holdout, episode_keys


def episodes_file(root: Path) -> Path:
    return next((root / "meta/episodes").rglob("*.parquet"))


def test_keys_are_the_recorded_provenance(unified_astribot, unified_droid):
    assert episode_keys(DatasetMetadata.load(unified_astribot)) == {
        0: "astribot:src/000000", 1: "astribot:src/000001", 2: "astribot:src/000002",
    }
    droid = episode_keys(DatasetMetadata.load(unified_droid))
    assert len(droid) == 4 and all(key.startswith("droid:src/") for key in droid.values())


def test_the_split_follows_the_episode_not_its_index(unified_astribot, tmp_path):
    """Renumbered episodes (a merge, a re-ingest with others) keep their side; the same ids in
    another source dataset get a side of their own."""
    copy = tmp_path / "renumbered"
    shutil.copytree(unified_astribot, copy)
    table = pq.read_table(episodes_file(copy))
    column = table.column_names.index("episode_index")
    pq.write_table(table.set_column(column, "episode_index", [[2, 0, 1]]), episodes_file(copy))
    original, renumbered = episode_keys(DatasetMetadata.load(unified_astribot)), episode_keys(DatasetMetadata.load(copy))
    assert {renumbered[2], renumbered[0], renumbered[1]} == set(original.values())
    assert renumbered[2] == original[0]
    holdout = Holdout("episodes", 0.5)
    sides = [holdout.episode_held_out(f"astribot:one/{i:06d}") for i in range(400)]
    others = [holdout.episode_held_out(f"astribot:two/{i:06d}") for i in range(400)]
    assert 150 < sum(sides) < 250 and 100 < sum(a != b for a, b in zip(sides, others, strict=True)) < 300


def test_datasets_without_a_dataset_id_fall_back_to_the_source_kind(unified_astribot, tmp_path):
    copy = tmp_path / "older"
    shutil.copytree(unified_astribot, copy)
    pq.write_table(pq.read_table(episodes_file(copy)).drop_columns(["source/dataset_id"]), episodes_file(copy))
    assert episode_keys(DatasetMetadata.load(copy))[1] == "astribot/000001"


def test_only_the_provenance_scheme_is_accepted():
    with pytest.raises(ClapDataError, match="splits episodes by provenance, not 'episode_index'"):
        Holdout("episodes", 0.1, key="episode_index")


def test_checkpoints_record_the_split(tiny_ckpt):
    run = json.loads((tiny_ckpt / TRAINING_META_NAME).read_text())["run"]
    assert run["holdout"] == {"mode": "tail", "fraction": 0.25, "key": "provenance"}
