"""``clap-data merge``: several unified datasets → one, read back by lerobot; provenance, quarantines, token columns
and statistics carried over; the refusals, each a sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clap_data import video
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.verify import verify_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.pipelines.merge import MergeRequest, merge_datasets
from clap_data.schemas import ACTION_TOKENS, PSEUDO_TOKENS
from clap_data.sources.astribot import AstribotSource

runner = CliRunner()


def frames_of(root: Path) -> dict[str, np.ndarray]:
    table = pq.ParquetDataset(root / "data").read().sort_by("index")
    return {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}


def episodes_of(root: Path) -> list[dict]:
    return sorted(pq.ParquetDataset(root / "meta/episodes").read().to_pylist(), key=lambda r: r["episode_index"])


def tasks_by_frame(root: Path) -> list[str]:
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pandas()
    name_of = dict(zip(tasks["task_index"], tasks.index, strict=True))
    return [name_of[i] for i in frames_of(root)["task_index"]]


def segment(root: Path, row: dict, key: str, fps: int) -> list[bytes]:
    """The decoded frames of one episode's segment of one camera, as lerobot looks them up."""
    path = root / f"videos/{key}/chunk-{row[f'videos/{key}/chunk_index']:03d}/file-{row[f'videos/{key}/file_index']:03d}.mp4"
    first = round(row[f"videos/{key}/from_timestamp"] * fps)
    return [frame.tobytes() for _, frame in video.iter_rgb_frames(path)][first:first + row["length"]]


@pytest.fixture(scope="module")
def merged(tokenized_corpus, robot_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "both"
    merge_datasets([tokenized_corpus.robot, robot_copy], MergeRequest(out=out))
    return out


def test_merged_frames_are_the_inputs_frames_reindexed(merged, tokenized_corpus, robot_copy):
    first, second, both = frames_of(tokenized_corpus.robot), frames_of(robot_copy), frames_of(merged)
    n = len(first["index"])
    assert len(both["index"]) == 2 * n and list(both["index"]) == list(range(2 * n))
    for name in ("observation.state", "action", "arm_mask", "frame_index", ACTION_TOKENS, PSEUDO_TOKENS):
        assert np.array_equal(both[name][:n], first[name]) and np.array_equal(both[name][n:], second[name])
    episodes = len(set(first["episode_index"]))
    assert list(both["episode_index"][n:]) == list(first["episode_index"] + episodes)
    assert tasks_by_frame(merged) == tasks_by_frame(tokenized_corpus.robot) * 2


def test_merged_videos_hold_each_episodes_own_frames(merged, tokenized_corpus, robot_copy):
    meta = DatasetMetadata.load(merged)
    inputs = episodes_of(tokenized_corpus.robot) + episodes_of(robot_copy)
    for row, source_row, root in zip(episodes_of(merged), inputs, [tokenized_corpus.robot] * 3 + [robot_copy] * 3,
                                     strict=True):
        for key in meta.video_keys:
            assert segment(merged, row, key, meta.fps) == segment(root, source_row, key, meta.fps)


def test_provenance_tokens_identity_and_stats_are_carried(merged, tokenized_corpus, robot_copy):
    rows, inputs = episodes_of(merged), episodes_of(tokenized_corpus.robot) + episodes_of(robot_copy)
    for row, source_row in zip(rows, inputs, strict=True):
        provenance = {k: v for k, v in source_row.items() if k.startswith("source/")}
        assert provenance and {k: row[k] for k in provenance} == provenance
        assert row["stats/observation.images.head/mean"] == source_row["stats/observation.images.head/mean"]
    meta, source = DatasetMetadata.load(merged), DatasetMetadata.load(tokenized_corpus.robot)
    assert meta.token_columns == [ACTION_TOKENS, PSEUDO_TOKENS]
    assert meta.token_identity(ACTION_TOKENS) == source.token_identity(ACTION_TOKENS)
    assert [m["path"] for m in meta.clap["source"]["merged_from"]] == [str(tokenized_corpus.robot), str(robot_copy)]
    stats = json.loads((merged / "meta/stats.json").read_text())
    state = frames_of(merged)["observation.state"]
    assert stats["observation.state"]["count"] == [len(state)]
    assert np.allclose(stats["observation.state"]["mean"], state.mean(axis=0), atol=1e-5)
    source_stats = json.loads((tokenized_corpus.robot / "meta/stats.json").read_text())
    assert np.allclose(stats["observation.images.head"]["mean"], source_stats["observation.images.head"]["mean"])
    assert verify_dataset(merged, full=True).ok


def test_lerobot_reads_the_merged_dataset(merged, tokenized_corpus):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/merged", root=merged, video_backend="pyav")
    source = LeRobotDataset("local/source", root=tokenized_corpus.robot, video_backend="pyav")
    assert dataset.num_episodes == 2 * source.num_episodes and len(dataset) == 2 * len(source)
    last = len(dataset) - 1
    mine, theirs = dataset[last], source[len(source) - 1]
    assert int(mine["episode_index"]) == 2 * source.num_episodes - 1
    for key in ("observation.images.head", "observation.state", ACTION_TOKENS):
        assert np.array_equal(np.asarray(mine[key]), np.asarray(theirs[key]))


def test_quarantines_are_carried_over(real_astribot, tmp_path, ray_local):
    real = tmp_path / "real"
    ingest(AstribotSource(real_astribot), IngestRequest(out=real, workers=1))
    copy = tmp_path / "real_b"
    shutil.copytree(real, copy)
    out = tmp_path / "merged"
    report = merge_datasets([real, copy], MergeRequest(out=out))
    rows = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert report.quarantined == 2 == len(rows) and rows[0] == pq.read_table(real / "quarantine.parquet").to_pylist()[0]


def test_refusals_are_sentences(tokenized_corpus, unified_astribot, unified_droid, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ClapDataError, match="must share one embodiment"):
        merge_datasets([unified_astribot, unified_droid], MergeRequest(out=out))
    with pytest.raises(ClapDataError, match=f"{ACTION_TOKENS} does not come from one tokenizer.*--drop-tokens"):
        merge_datasets([tokenized_corpus.robot, unified_astribot], MergeRequest(out=out))
    with pytest.raises(ClapDataError, match="is one of the datasets to merge"):
        merge_datasets([unified_astribot, tmp_path / "out"], MergeRequest(out=unified_astribot))
    with pytest.raises(ClapDataError, match="camera wrist_middle is not in"):
        merge_datasets([tokenized_corpus.robot, unified_astribot], MergeRequest(out=out, cameras=("wrist_middle",)))
    assert not out.exists() and not list(tmp_path.glob(".out*merge*"))


def test_drop_tokens_and_cameras_subset(tokenized_corpus, unified_astribot, tmp_path):
    out = tmp_path / "out"
    report = merge_datasets([tokenized_corpus.robot, unified_astribot],
                            MergeRequest(out=out, drop_tokens=True, cameras=("head",)))
    meta = DatasetMetadata.load(out)
    assert report.dropped_token_columns == [ACTION_TOKENS, PSEUDO_TOKENS] and meta.token_columns == []
    assert meta.cameras == ["head"] and ACTION_TOKENS not in frames_of(out)
    assert verify_dataset(out).ok


def test_cli_merge_prints_a_summary_and_refuses_an_existing_output(tokenized_corpus, robot_copy, tmp_path):
    out = tmp_path / "merged"
    args = ["merge", str(tokenized_corpus.robot), str(robot_copy), "--out", str(out)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 datasets" in result.output and "6 (" in result.output and ACTION_TOKENS in result.output
    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_a_publish_cut_short_by_a_crash_is_undone_and_overwrite_replaces(merged, tokenized_corpus, robot_copy, tmp_path):
    out = tmp_path / "merged"
    shutil.copytree(merged, out)
    parked = tmp_path / ".merged.clap-replaced"
    out.rename(parked)  # what a crash between parking the old dataset and moving the new one in leaves
    with pytest.raises(ClapDataError, match="--overwrite"):
        merge_datasets([tokenized_corpus.robot, robot_copy], MergeRequest(out=out))
    assert verify_dataset(out).ok and not parked.exists()  # the old dataset is back in place
    (out / "meta/stale_marker").write_text("from the old dataset")
    merge_datasets([robot_copy, tokenized_corpus.robot], MergeRequest(out=out, overwrite=True))
    assert not (out / "meta/stale_marker").exists() and not parked.exists() and verify_dataset(out).ok
    assert [m["path"] for m in DatasetMetadata.load(out).clap["source"]["merged_from"]][0] == str(robot_copy)


def test_an_episode_starting_between_keyframes_is_refused(robot_copy, tokenized_corpus, tmp_path):
    """A file re-encoded with its own GOP (as LeRobot's delete-episodes does) can hold an episode that starts on a
    P-frame, which cannot be copied packet by packet: here episode 1's segment is moved one frame on."""
    doctored = tmp_path / "doctored"
    shutil.copytree(robot_copy, doctored)
    path = next((doctored / "meta/episodes").glob("chunk-*/file-*.parquet"))
    table = pq.read_table(path)
    key = "videos/observation.images.head/from_timestamp"
    shifted = [t + (1 / 30 if i == 1 else 0) for i, t in enumerate(table.column(key).to_pylist())]
    table = table.set_column(table.schema.get_field_index(key), key, pa.array(shifted, table.schema.field(key).type))
    pq.write_table(table, path)
    with pytest.raises(ClapDataError, match="episode 1 of .* starts between keyframes"):
        merge_datasets([doctored, tokenized_corpus.robot], MergeRequest(out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def three_inputs(tokenized_corpus, robot_copy, tmp_path_factory) -> list[Path]:
    third = tmp_path_factory.mktemp("third") / "astribot"
    shutil.copytree(robot_copy, third)
    return [tokenized_corpus.robot, robot_copy, third]


@pytest.fixture(scope="module")
def merged_three(three_inputs, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("merged_three") / "out"
    merge_datasets(three_inputs, MergeRequest(out=out))
    return tree_bytes(out)


class _Crash(Exception):
    pass


def crash_on_episode(monkeypatch, number: int) -> None:
    """Make the ``number``-th episode appended (counting from 1, over the whole merge) crash the run."""
    from clap_data.lerobot_v3.writer import DatasetAssembler

    real, calls = DatasetAssembler.add_episode, []

    def add_episode(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise _Crash("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DatasetAssembler, "add_episode", add_episode)


@pytest.mark.parametrize("crash_at", [5, 8])  # inside the second input (3 episodes each), inside the third
def test_an_interrupted_merge_resumes_after_its_last_checkpoint_to_the_same_bytes(three_inputs, merged_three, tmp_path,
                                                                                   monkeypatch, crash_at):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        crash_on_episode(patch, crash_at)
        with pytest.raises(_Crash):
            merge_datasets(three_inputs, MergeRequest(out=out))
    assert not out.exists()
    checkpoint = json.loads((tmp_path / ".out.clap-merge" / "checkpoint.json").read_text())
    assert checkpoint["inputs_done"] == (crash_at - 1) // 3
    report = merge_datasets(three_inputs, MergeRequest(out=out))
    assert report.resumed_inputs == (crash_at - 1) // 3
    assert tree_bytes(out) == merged_three  # half-written files of the crashed input were thrown away, not kept
    assert not (tmp_path / ".out.clap-merge").exists()


def test_a_checkpoint_of_other_inputs_is_not_resumed(three_inputs, merged_three, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        crash_on_episode(patch, 5)
        with pytest.raises(_Crash):
            merge_datasets(three_inputs, MergeRequest(out=out))
    report = merge_datasets(list(reversed(three_inputs)), MergeRequest(out=out))
    assert report.resumed_inputs == 0
    assert verify_dataset(out).ok
    assert [m["path"] for m in DatasetMetadata.load(out).clap["source"]["merged_from"]] == [str(p) for p in reversed(three_inputs)]
