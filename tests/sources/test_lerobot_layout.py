"""The LeRobot v2.1 / v3.0 layout reader: listing, one episode's rows, its video windows, and
every way a source folder or an episode can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_data.errors import ClapDataError
from clap_data.factories.lerobot import DROID_FPS, write_lerobot_dataset
from clap_data.sources.base import EpisodeRejected
from clap_data.sources.lerobot_layout import LayoutEpisode, LeRobotLayout, column_matrix
from tests.reference import copy_source

LENGTHS = (12, 9, 14, 11)
WRIST = "observation.images.wrist_left"
GRIP = "observation.state.gripper_position"
POSE = "observation.state.cartesian_position"


@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> Path:
    return write_lerobot_dataset(tmp_path_factory.mktemp("layout") / "v3", episode_lengths=LENGTHS, video_size=(32, 32))


@pytest.fixture(scope="module")
def v21(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout") / "v21"
    return write_lerobot_dataset(root, version="v2.1", episode_lengths=LENGTHS[:2], video_size=(32, 32))


def _episode(root: Path, index: int, keys: tuple[str, ...] = (WRIST,)) -> LayoutEpisode:
    return LeRobotLayout(root).episodes(keys)[index]


def _expected_rows(root: Path, episode_index: int) -> list[dict]:
    rows = []
    for path in sorted(root.glob("data/*/*.parquet")):
        rows += [r for r in pq.read_table(path).to_pylist() if r["episode_index"] == episode_index]
    return rows


def test_v3_lists_episodes_across_meta_files_with_rows_and_video_windows(v3):
    layout = LeRobotLayout(v3)
    assert (layout.version, layout.fps, layout.is_v3) == ("v3.0", DROID_FPS, True)
    assert layout.video_keys == tuple(f"observation.images.{c}" for c in ("wrist_left", "exterior_1_left", "exterior_2_left"))
    episodes = layout.episodes((WRIST,))
    assert [e.index for e in episodes] == [0, 1, 2, 3]
    assert [e.data_file for e in episodes] == ["data/chunk-000/file-000.parquet"] * 2 + ["data/chunk-000/file-001.parquet"] * 2
    assert [e.rows for e in episodes] == [(0, 12), (12, 21), (21, 35), (35, 46)]
    # Episode 3 opens the second video file; the others sit at their running frame offsets.
    assert [e.videos[WRIST] for e in episodes] == [
        (f"videos/{WRIST}/chunk-000/file-000.mp4", 0, 12),
        (f"videos/{WRIST}/chunk-000/file-000.mp4", 12, 9),
        (f"videos/{WRIST}/chunk-000/file-000.mp4", 21, 14),
        (f"videos/{WRIST}/chunk-000/file-001.mp4", 0, 11),
    ]
    assert episodes[1].tasks == ("",) and episodes[2].tasks == ("close the drawer",)
    assert LayoutEpisode.from_details(json.loads(json.dumps(episodes[2].to_details()))) == episodes[2]
    window = layout.video_window(episodes[2], WRIST)
    assert (window.path, window.start, window.count) == (v3 / f"videos/{WRIST}/chunk-000/file-000.mp4", 21, 14)


def test_v3_video_start_rounds_from_timestamp(v3, tmp_path):
    """lerobot sums float durations, so from_timestamp * fps is only nearly a frame number."""
    root = copy_source(v3, tmp_path / "src")
    path = root / "meta/episodes/chunk-000/file-001.parquet"
    table = pq.read_table(path)
    column = f"videos/{WRIST}/from_timestamp"
    drifted = [v + 3e-7 if i == 0 else v for i, v in enumerate(table.column(column).to_pylist())]
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(drifted, pa.float64())), path)
    assert drifted[0] * DROID_FPS != 21
    assert _episode(root, 2).videos[WRIST][1] == 21


def test_v3_reads_only_the_episodes_rows(v3, monkeypatch):
    layout = LeRobotLayout(v3)
    read_groups = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        read_groups.append(list(row_groups))
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    for episode in layout.episodes(()):
        table = layout.read_rows(episode, [POSE, GRIP])
        expected = _expected_rows(v3, episode.index)
        assert table.column("index").to_pylist() == [r["index"] for r in expected]
        np.testing.assert_array_equal(column_matrix(table, POSE, ""), np.array([r[POSE] for r in expected], dtype=np.float32))
        layout.check_clock(table, episode.data_file)
    assert read_groups == [[0], [1], [0], [1]]  # one row group per episode; the file's others are skipped


def test_v21_lists_one_file_per_episode(v21):
    layout = LeRobotLayout(v21)
    assert layout.version == "v2.1" and not layout.is_v3
    episodes = layout.episodes((WRIST,))
    assert [(e.index, e.length, e.rows) for e in episodes] == [(0, 12, None), (1, 9, None)]
    assert episodes[1].data_file == "data/chunk-000/episode_000001.parquet"
    assert episodes[1].videos[WRIST] == (f"videos/chunk-000/{WRIST}/episode_000001.mp4", 0, None)
    window = layout.video_window(episodes[1], WRIST)
    assert (window.start, window.count) == (0, None)  # the whole file
    table = layout.read_rows(episodes[1], [GRIP])
    assert table.column("frame_index").to_pylist() == list(range(9))
    assert layout.tasks() == {0: "put the marker in the cup", 1: ""}


def test_scalar_and_list_columns_become_matrices():
    table = pa.table({"s": pa.array([1.0, 2.0], pa.float32()), "v": pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.float64(), 3))})
    assert column_matrix(table, "s", "x").shape == (2, 1)
    np.testing.assert_array_equal(column_matrix(table, "v", "x"), [[1, 2, 3], [4, 5, 6]])
    ragged = pa.table({"v": pa.array([[1.0, 2.0], [3.0]])})
    with pytest.raises(EpisodeRejected, match="has 1 values at row 1 but 2 at row 0") as rejected:
        column_matrix(ragged, "v", "data/x.parquet")
    assert rejected.value.category == "bad_shape"


# --- Whole-source problems: ClapDataError, one sentence naming the file ---------------------------


def _write_info(root: Path, **changes) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info.update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


def test_missing_folder_and_info(tmp_path):
    with pytest.raises(ClapDataError, match="does not exist"):
        LeRobotLayout(tmp_path / "nowhere")
    (tmp_path / "meta").mkdir()
    with pytest.raises(ClapDataError, match=r"metadata file .*meta/info.json is missing; is this a LeRobot dataset\?"):
        LeRobotLayout(tmp_path)
    (tmp_path / "meta/info.json").write_text("{not json")
    with pytest.raises(ClapDataError, match="cannot be read"):
        LeRobotLayout(tmp_path)


def test_unsupported_version_and_bad_info(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    _write_info(root, codebase_version="v1.6")
    with pytest.raises(ClapDataError, match="declares codebase_version 'v1.6'; the LeRobot reader supports v2.0, v2.1, v3.0"):
        LeRobotLayout(root)
    _write_info(root, codebase_version="v2.1", fps="fast")
    with pytest.raises(ClapDataError, match=r"info.json declares fps 'fast' \(a string\); it must be a positive number of frames per second"):
        LeRobotLayout(root)
    _write_info(root, fps=15)
    info = json.loads((root / "meta/info.json").read_text())
    del info["data_path"]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ClapDataError, match="has no 'data_path' entry"):
        LeRobotLayout(root)


def test_v3_without_episode_metadata(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    for path in root.glob("meta/episodes/*/*.parquet"):
        path.unlink()
    with pytest.raises(ClapDataError, match=r"has no episode metadata \(meta/episodes/chunk-\*/file-\*.parquet\)"):
        LeRobotLayout(root).episodes(())


def test_v3_episode_metadata_without_a_camera_column(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns([f"videos/{WRIST}/from_timestamp"]), path)
    with pytest.raises(ClapDataError, match=f"lacks column\\(s\\) videos/{WRIST}/from_timestamp"):
        LeRobotLayout(root).episodes((WRIST,))


def test_v21_bad_episode_line_and_duplicates(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    (root / "meta/episodes.jsonl").write_text("\n".join([lines[0], "{broken"]) + "\n")
    with pytest.raises(ClapDataError, match="episodes.jsonl line 2 is not valid JSON"):
        LeRobotLayout(root).episodes(())
    (root / "meta/episodes.jsonl").write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.raises(ClapDataError, match=r"episodes.jsonl lists episode_index 0 twice \(line 1 and line 2\)"):
        LeRobotLayout(root).episodes(())
    (root / "meta/episodes.jsonl").write_text('{"episode_index": 0}\n')
    with pytest.raises(ClapDataError, match="episodes.jsonl line 1 has no 'length' entry"):
        LeRobotLayout(root).episodes(())


# --- One episode's problems: EpisodeRejected with a category and the file ---------------------


def _reject(root: Path, index: int, columns=(GRIP,)) -> EpisodeRejected:
    layout = LeRobotLayout(root)
    episode = layout.episodes((WRIST,))[index]
    with pytest.raises(EpisodeRejected) as rejected:
        table = layout.read_rows(episode, list(columns))
        layout.check_clock(table, episode.data_file)
        layout.video_window(episode, WRIST)
    return rejected.value


def test_missing_data_file(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    (root / "data/chunk-000/episode_000001.parquet").unlink()
    rejected = _reject(root, 1)
    assert (rejected.category, rejected.file) == ("missing_file", "data/chunk-000/episode_000001.parquet")
    assert rejected.reason == "data file data/chunk-000/episode_000001.parquet is missing"


def test_missing_video_file(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    (root / f"videos/{WRIST}/chunk-000/file-001.mp4").unlink()
    rejected = _reject(root, 3)
    assert (rejected.category, rejected.file) == ("missing_file", f"videos/{WRIST}/chunk-000/file-001.mp4")


def test_unreadable_data_file(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    (root / "data/chunk-000/episode_000000.parquet").write_bytes(b"PAR1 garbage")
    rejected = _reject(root, 0)
    assert rejected.category == "unreadable_file"
    assert rejected.reason.startswith("data file data/chunk-000/episode_000000.parquet cannot be read")


def test_missing_column(v21):
    rejected = _reject(v21, 0, columns=("observation.state.nothing",))
    assert rejected.category == "missing_column"
    assert rejected.reason == "data file data/chunk-000/episode_000000.parquet lacks column(s) observation.state.nothing"


def test_declared_length_differs_from_rows(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("length"), "length", pa.array([12, 10]))
    pq.write_table(table, path)
    rejected = _reject(root, 1)
    assert rejected.category == "frame_count"
    assert rejected.reason == (
        "data file data/chunk-000/file-000.parquet rows index 12..20 has 9 rows but the episode metadata declares length 10"
    )


def test_rows_of_another_episode(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    path = root / "data/chunk-000/file-001.parquet"
    table = pq.read_table(path)
    owners = table.column("episode_index").to_pylist()
    owners[3] = 3
    pq.write_table(table.set_column(table.schema.get_field_index("episode_index"), "episode_index", pa.array(owners)), path)
    rejected = _reject(root, 2)
    assert rejected.category == "episode_rows"
    assert "holds rows of episode(s) [2, 3], not of episode 2 alone" in rejected.reason


def _rewrite_column(path: Path, name: str, values) -> None:
    table = pq.read_table(path)
    field = table.schema.field(name)
    pq.write_table(table.set_column(table.schema.get_field_index(name), field, pa.array(values, field.type)), path)


def test_frames_missing_or_out_of_order(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    _rewrite_column(root / "data/chunk-000/episode_000000.parquet", "frame_index", [0, 1, 2, 4, 3, 5, 6, 7, 8, 9, 10, 11])
    rejected = _reject(root, 0)
    assert rejected.category == "frame_index"
    assert rejected.reason == (
        "data file data/chunk-000/episode_000000.parquet has frame_index 4 at row 3: frames are missing or out of order"
    )


def test_timestamps_off_the_frame_clock(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    stamps = (np.arange(12) / DROID_FPS).tolist()
    stamps[5] += 0.01
    _rewrite_column(root / "data/chunk-000/episode_000000.parquet", "timestamp", stamps)
    rejected = _reject(root, 0)
    assert rejected.category == "timestamps"
    assert "has timestamp 0.343333 at frame 5, not 0.333333 (frame_index / fps at 15 fps)" in rejected.reason
    stamps[5] = float("nan")
    _rewrite_column(root / "data/chunk-000/episode_000000.parquet", "timestamp", stamps)
    assert "NaN or Inf timestamps" in _reject(root, 0).reason


def test_empty_episode(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    path = root / "data/chunk-000/episode_000001.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    rejected = _reject(root, 1)
    assert rejected.category == "empty"
    assert rejected.reason == "data file data/chunk-000/episode_000001.parquet has no rows for episode 1"


# --- Metadata is validated, not trusted -------------------------------------------------------


def test_v3_episode_listed_in_two_metadata_files_is_refused(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    first, second = root / "meta/episodes/chunk-000/file-000.parquet", root / "meta/episodes/chunk-000/file-001.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(second), pq.read_table(first).slice(0, 1)]), second)
    with pytest.raises(ClapDataError) as error:
        LeRobotLayout(root).episodes((WRIST,))
    assert str(error.value) == (
        f"the episode metadata of {root} lists episode_index 0 twice (meta/episodes/chunk-000/file-000.parquet row 0 "
        "and meta/episodes/chunk-000/file-001.parquet row 2); each may appear only once"
    )


def test_v21_task_listed_twice_is_refused(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    path = root / "meta/tasks.jsonl"
    path.write_text(path.read_text() + json.dumps({"task_index": 0, "task": "another text"}) + "\n")
    with pytest.raises(ClapDataError) as error:
        LeRobotLayout(root).tasks()
    assert str(error.value) == (
        f"task list {path} lists task_index 0 twice (line 1 and line 3); each may appear only once"
    )


def test_v3_task_listed_twice_is_refused(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    path = root / "meta/tasks.parquet"
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), path)
    index = table.column("task_index")[0].as_py()
    with pytest.raises(ClapDataError) as error:
        LeRobotLayout(root).tasks()
    assert str(error.value) == (
        f"task list {path} lists task_index {index} twice (row 0 and row {table.num_rows}); each may appear only once"
    )


def test_v3_video_template_escaping_the_source_is_refused(v3, tmp_path):
    root = copy_source(v3, tmp_path / "src")
    template = "../outside_videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    _write_info(root, video_path=template)
    with pytest.raises(ClapDataError) as error:
        LeRobotLayout(root).episodes((WRIST,))
    outside = tmp_path / f"outside_videos/{WRIST}/chunk-000/file-000.mp4"
    assert str(error.value) == (
        f"metadata file {root / 'meta/info.json'}: video_path {template!r} resolves to {outside}, "
        f"outside the source folder {root}; path templates must stay inside --src"
    )


def test_features_that_are_not_an_object_are_refused(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    _write_info(root, features=["observation.state.gripper_position"])
    with pytest.raises(ClapDataError) as error:
        LeRobotLayout(root)
    assert str(error.value) == (
        f"metadata file {root / 'meta/info.json'}: features must be a JSON object, "
        "not ['observation.state.gripper_position'] (a list)"
    )


def test_timestamps_at_another_rate_than_declared_name_both_rates(v21, tmp_path):
    root = copy_source(v21, tmp_path / "src")
    _write_info(root, fps=30)
    rejected = _reject(root, 0)
    assert (rejected.category, rejected.file) == ("fps_mismatch", "data/chunk-000/episode_000000.parquet")
    assert rejected.reason == (
        "data file data/chunk-000/episode_000000.parquet has timestamps 0.066667 s apart (median), i.e. 15.000 fps, "
        "but meta/info.json declares fps 30"
    )


def test_a_fractional_rate_is_kept_as_declared_for_the_episode_clock(v21, tmp_path):
    """The layout reads the clock at the declared rate; the rate written is the source's decision."""
    root = copy_source(v21, tmp_path / "src")
    _write_info(root, fps=14.985)
    _rewrite_column(root / "data/chunk-000/episode_000000.parquet", "timestamp", (np.arange(12) / 14.985).tolist())
    layout = LeRobotLayout(root)
    episode = layout.episodes(())[0]
    assert layout.fps == 14.985
    layout.check_clock(layout.read_rows(episode, [GRIP]), episode.data_file)
