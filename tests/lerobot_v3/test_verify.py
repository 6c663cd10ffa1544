"""The manifest and `clap-data verify`: what ingest and column updates record, and every kind of
damage done to a dataset after it was written — truncated, edited, deleted or added files, metadata
that no longer matches the data — named by verify (exit 1), warned about by `info` and refused by
column updates."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.manifest import MANIFEST_PATH
from clap_data.lerobot_v3.verify import verify_dataset
from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset

runner = CliRunner()
DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/observation.images.wrist_left/chunk-000/file-000.mp4"


@pytest.fixture
def dataset(unified_astribot, tmp_path) -> Path:
    copy = tmp_path / "astribot"
    shutil.copytree(unified_astribot, copy)
    return copy


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_PATH).read_text())["files"]


def test_ingest_records_every_file_with_its_size_and_sha256(dataset):
    files = sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file() and p.name != "clap_manifest.json")
    recorded = manifest(dataset)
    assert sorted(recorded) == files and DATA in recorded and VIDEO in recorded and "meta/info.json" in recorded
    for relative, entry in recorded.items():
        content = (dataset / relative).read_bytes()
        assert entry == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    result = runner.invoke(app, ["verify", str(dataset), "--full"])
    assert result.exit_code == 0, result.output
    assert "137 frames" in result.output and "3 episodes" in result.output and "exit status 0: intact" in result.output
    assert f"{len(files)} files hashed" in result.output and "411 frames decoded" in result.output  # 3 cameras × 137


def test_a_truncated_data_file_is_named_by_verify_info_and_tokenize(dataset, tiny_ckpt, ray_local):
    path = dataset / DATA
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    result = runner.invoke(app, ["verify", str(dataset)])
    assert result.exit_code == 1
    assert f"{DATA} is {size // 2:,} bytes, the manifest says {size:,}" in result.output
    assert f"{DATA} cannot be read" in result.output
    assert "the data files hold 0 rows, meta/info.json declares 137 frames" in result.output
    info = runner.invoke(app, ["info", str(dataset), "--json"])
    assert info.exit_code == 0
    assert json.loads(info.output)["warnings"] == [
        f"{DATA} is {size // 2:,} bytes, the manifest says {size:,}: the dataset was changed after clap-data wrote it; "
        "run clap-data verify (clap-data adopt, if LeRobot's tools rewrote it)"
    ]
    with pytest.raises(ClapDataError, match=rf"does not match its manifest: {DATA} is .* nothing was written"):
        tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt))
    assert not (dataset.parent / ".astribot.clap-columns").exists()


def test_content_changed_in_place_deleted_and_added_files(dataset):
    video = dataset / VIDEO
    content = bytearray(video.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size, other bytes
    video.write_bytes(bytes(content))
    (dataset / "videos/observation.images.head/chunk-000/file-000.mp4").unlink()
    (dataset / "data/chunk-000/notes.txt").write_text("mine")
    problems = verify_dataset(dataset).problems
    assert f"{VIDEO} has another sha256 than the manifest records: its content changed" in problems
    assert "videos/observation.images.head/chunk-000/file-000.mp4 is missing" in problems
    assert "data/chunk-000/notes.txt is not in the manifest (added after the dataset was written)" in problems
    assert any(p.startswith("videos/observation.images.head/chunk-000/file-000.mp4 cannot be opened") for p in problems)


def test_metadata_that_disagrees_with_the_data(dataset):
    info = json.loads((dataset / "meta/info.json").read_text())
    info["total_frames"] = 140
    (dataset / "meta/info.json").write_text(json.dumps(info, indent=2) + "\n")  # the same size: only the hash tells
    episodes_file = next((dataset / "meta/episodes").rglob("*.parquet"))
    table = pq.read_table(episodes_file)
    lengths = table.column("length").to_pylist()
    table = table.set_column(table.column_names.index("length"), "length", [[lengths[0] + 2] + lengths[1:]])
    pq.write_table(table, episodes_file)
    problems = verify_dataset(dataset).problems
    assert "meta/info.json has another sha256 than the manifest records: its content changed" in problems
    assert "the data files hold 137 rows, meta/info.json declares 140 frames" in problems
    assert f"{DATA} holds 40 rows of episode 0, whose length is 42" in problems
    assert "meta/episodes: dataset_from_index/dataset_to_index do not follow the episode lengths" in problems
    assert any(p.startswith(VIDEO + ": episode 0 spans") for p in problems)


def test_a_data_file_with_other_columns_than_info_declares(dataset):
    table = pq.read_table(dataset / DATA).drop_columns(["subtask"])
    pq.write_table(table, dataset / DATA)
    problems = verify_dataset(dataset).problems
    assert f"{DATA} does not have the columns meta/info.json declares (missing ['subtask'], unexpected [])" in problems


def test_column_updates_and_normstats_keep_the_manifest_true(dataset, tiny_ckpt, ray_local):
    before = manifest(dataset)
    tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt))
    after = manifest(dataset)
    assert after[DATA] != before[DATA] and after["meta/info.json"] != before["meta/info.json"]
    assert after[VIDEO] == before[VIDEO]
    assert runner.invoke(app, ["normstats", str(dataset)]).exit_code == 0
    assert "meta/clap_norm_stats.json" in manifest(dataset)
    report = verify_dataset(dataset, full=False)
    assert report.ok, report.problems


def test_what_is_not_a_dataset_is_one_problem(tmp_path):
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and f"{tmp_path} is not a LeRobot dataset: meta/info.json is missing" in result.output
    result = runner.invoke(app, ["verify", str(tmp_path / "absent")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_a_missing_or_garbled_manifest_is_a_problem_and_a_warning(dataset):
    (dataset / MANIFEST_PATH).write_text("{not json")
    assert verify_dataset(dataset).problems[0].startswith(f"{dataset / MANIFEST_PATH} cannot be read")
    warnings = json.loads(runner.invoke(app, ["info", str(dataset), "--json"]).output)["warnings"]
    assert len(warnings) == 1 and "cannot be read" in warnings[0]
    (dataset / MANIFEST_PATH).unlink()
    assert verify_dataset(dataset).problems[0] == f"{MANIFEST_PATH} is missing: the files' sizes and hashes cannot be checked"
