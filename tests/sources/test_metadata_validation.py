"""Source metadata is validated, not trusted: each fault is planted into a factory-written Astribot
dataset (the shared helpers of clap_data.sources.metadata_io serve every LeRobot-style reader) and
must give one sentence naming the file and the key or value — never a duplicate ingest, a
truncated frame rate, a file read from outside the source or an "unexpected failure"."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.sources.astribot import CAMERA_KEYS, AstribotSource
from clap_data.sources.base import EpisodeRejected, VideoWindow
from clap_data.sources.registry import OptionError, SourceOptions, build_source
from tests.reference import copy_source

INFO = "meta/info.json"
EPISODES = "meta/episodes.jsonl"
TASKS = "meta/tasks.jsonl"
EPISODE_0 = "data/chunk-000/episode_000000.parquet"


@pytest.fixture
def src(astribot_src, tmp_path) -> Path:
    """A writable copy of the factory dataset (episodes of 40, 52 and 45 frames at 30 fps)."""
    return copy_source(astribot_src, tmp_path / "src")


def edit_info(root: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    path = root / INFO
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))
    return path


def edit_jsonl(root: Path, relative: str, edit: Callable[[list[dict[str, Any]]], None]) -> Path:
    path = root / relative
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    edit(rows)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def refusal(root: Path, **options: Any) -> str:
    with pytest.raises(ClapDataError) as error:
        AstribotSource(root, **options)
    return str(error.value)


def retime(root: Path, relative: str, fps: float) -> None:
    """Rewrite a data file's timestamps as frame_index / fps (float32, as the real files store them)."""
    path = root / relative
    table = pq.read_table(path)
    stamps = pa.array((np.arange(table.num_rows) / fps).astype(np.float32))
    pq.write_table(table.set_column(table.schema.get_field_index("timestamp"), "timestamp", stamps), path)


# --- duplicates -------------------------------------------------------------------------------


def test_an_episode_index_listed_twice_is_refused(src):
    path = edit_jsonl(src, EPISODES, lambda rows: rows.append(dict(rows[1])))
    assert refusal(src) == (
        f"episode list {path} lists episode_index 1 twice (line 2 and line 4); each may appear only once"
    )


def test_a_task_index_listed_twice_is_refused(src):
    path = edit_jsonl(src, TASKS, lambda rows: rows.append({"task_index": 0, "task": "a second text for task 0"}))
    lines = len(path.read_text().splitlines())
    assert refusal(src) == (
        f"task list {path} lists task_index 0 twice (line 1 and line {lines}); each may appear only once"
    )


# --- fps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0 (an integer)"), (-30, "-30 (an integer)"), ("30", "'30' (a string)"), (True, "True (a boolean)"),
        (None, "None (null)"),
    ],
)
def test_an_unusable_fps_is_refused_at_listing(src, value, shown):
    path = edit_info(src, lambda info: info.update(fps=value))
    assert refusal(src) == (
        f"metadata file {path} declares fps {shown}; it must be a positive number of frames per second"
    )


def test_a_missing_fps_is_refused(src):
    path = edit_info(src, lambda info: info.pop("fps"))
    assert refusal(src) == f"metadata file {path} has no 'fps' entry"


def test_a_fractional_fps_is_refused_with_the_option_that_resamples_it(src):
    path = edit_info(src, lambda info: info.update(fps=29.97))
    assert refusal(src) == (
        f"metadata file {path} declares fps 29.97, but a LeRobot v3 dataset stores a whole number of frames "
        "per second; pass --fps 30 to resample onto 30 fps"
    )


def test_timestamps_at_another_rate_than_declared_quarantine_the_episode(src):
    """Listing reads no episode file, so the declared rate meets the clock when an episode is read."""
    edit_info(src, lambda info: info.update(fps=15))
    source = AstribotSource(src)
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(source.list_episodes()[0])
    assert (rejected.value.category, rejected.value.file) == ("fps_mismatch", EPISODE_0)
    assert rejected.value.reason == (
        f"data file {EPISODE_0} has timestamps 0.033333 s apart (median), i.e. 30.000 fps, "
        "but meta/info.json declares fps 15"
    )


def test_fps_option_keeps_the_frame_nearest_each_output_time(astribot_src):
    full, half = AstribotSource(astribot_src), AstribotSource(astribot_src, fps=15)
    assert (half.fps, half.describe()["fps"]) == (15, 15)
    ref = half.list_episodes()[0]
    original, resampled = full.read_episode(ref), half.read_episode(ref)
    picks = list(range(0, 40, 2))  # 40 frames at 30 fps span 1.3 s: output frames 0..19 at k / 15 s
    np.testing.assert_array_equal(resampled.state, original.state[picks])
    np.testing.assert_array_equal(resampled.action, original.action[picks])
    assert resampled.tasks == [original.tasks[i] for i in picks]
    assert resampled.subtasks == [original.subtasks[i] for i in picks]
    head = astribot_src / f"videos/chunk-000/{CAMERA_KEYS['head']}/episode_000000.mp4"
    assert resampled.videos["head"] == VideoWindow(head, 0, 40, tuple(picks))


def test_a_fractional_fps_is_resampled_onto_the_asked_rate_not_truncated(src):
    """29.97 fps onto 30: every output frame k at k / 30 s keeps the source frame nearest in time."""
    edit_info(src, lambda info: info.update(fps=29.97))
    retime(src, EPISODE_0, 29.97)
    source = AstribotSource(src, fps=30)
    episode = source.read_episode(source.list_episodes()[0])
    stamps = np.arange(40) / 29.97
    nearest = [int(np.argmin(np.abs(stamps - k / 30))) for k in range(int(stamps[-1] * 30) + 1)]
    assert episode.videos["head"].frames == tuple(nearest)
    assert len(episode.state) == len(nearest) == 40


def test_fps_applies_to_astribot_droid_and_lerobot_only(tmp_path):
    with pytest.raises(OptionError, match="^--fps applies to astribot, droid, lerobot only, not agibot$"):
        build_source("agibot", tmp_path, SourceOptions(fps=15))


# --- path templates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "template", "resolves_to"),
    [
        ("data_path", "../outside_data/episode_{episode_index:06d}.parquet", "../outside_data/episode_000000.parquet"),
        ("data_path", "data/../../outside_data/episode_{episode_index:06d}.parquet",
         "../outside_data/episode_000000.parquet"),
        ("video_path", "/srv/elsewhere/{video_key}/episode_{episode_index:06d}.mp4",
         "/srv/elsewhere/images_dict.head.rgb/episode_000000.mp4"),
    ],
)
def test_path_templates_escaping_the_source_are_refused(src, key, template, resolves_to):
    path = edit_info(src, lambda info: info.update({key: template}))
    resolved = os.path.normpath(os.path.join(src, resolves_to))
    assert refusal(src) == (
        f"metadata file {path}: {key} {template!r} resolves to {resolved}, outside the source folder {src}; "
        "path templates must stay inside --src"
    )


def test_a_template_with_an_unknown_field_is_refused(src):
    path = edit_info(src, lambda info: info.update(data_path="data/{chunk}/episode_{episode_index:06d}.parquet"))
    assert refusal(src) == (
        f"metadata file {path}: data_path 'data/{{chunk}}/episode_{{episode_index:06d}}.parquet' cannot be filled in "
        "(KeyError: 'chunk'); it may use episode_chunk, episode_index"
    )


def test_symlinked_folders_inside_the_source_are_followed(src, tmp_path):
    """Templates are checked as written: a folder the user linked into the source is their layout."""
    (src / "data").rename(tmp_path / "data_elsewhere")
    (src / "data").symlink_to(tmp_path / "data_elsewhere", target_is_directory=True)
    source = AstribotSource(src)
    assert len(source.read_episode(source.list_episodes()[0]).state) == 40


# --- missing and mistyped entries ---------------------------------------------------------------


def _drop(key: str, line: int = 0) -> Callable[[list[dict[str, Any]]], None]:
    return lambda rows: rows[line].pop(key)


def _set(key: str, value: Any, line: int = 0) -> Callable[[list[dict[str, Any]]], None]:
    return lambda rows: rows[line].update({key: value})


@pytest.mark.parametrize(
    ("relative", "edit", "problem"),
    [
        (EPISODES, _drop("episode_index"), "line 1 has no 'episode_index' entry"),
        (EPISODES, _drop("length", 2), "line 3 has no 'length' entry"),
        (EPISODES, _set("length", "40"), "line 1: length must be an integer, not '40' (a string)"),
        (EPISODES, _set("episode_index", -1), "line 1: episode_index must be at least 0, not -1"),
        (EPISODES, _set("tasks", "put it away"), "line 1: tasks must be a list, not 'put it away' (a string)"),
        (TASKS, _drop("task_index", 1), "line 2 has no 'task_index' entry"),
        (TASKS, _set("task_index", 2.0), "line 1: task_index must be an integer, not 2.0 (a number)"),
        (TASKS, _drop("task"), "line 1 has no 'task' entry"),
    ],
)
def test_listing_entries_are_required_and_typed(src, relative, edit, problem):
    path = edit_jsonl(src, relative, edit)
    what = "episode list" if relative == EPISODES else "task list"
    assert refusal(src) == f"{what} {path} {problem}"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda info: info.update(features=list(info["features"])[:2]),
         ": features must be a JSON object, not ['prompt', "),
        (lambda info: info["features"].update(prompt="int64"),
         ": features entry 'prompt' must be a JSON object, not 'int64' (a string)"),
        (lambda info: info.pop("data_path"), " has no 'data_path' entry"),
        (lambda info: info.update(chunks_size="1000"), ": chunks_size must be an integer, not '1000' (a string)"),
        (lambda info: info.pop("video_path"),
         " declares video features (images_dict.head.rgb, images_dict.left.rgb, images_dict.right.rgb) "
         "but no 'video_path' template"),
    ],
)
def test_info_entries_are_required_and_typed(src, edit, problem):
    path = edit_info(src, edit)
    assert refusal(src).startswith(f"metadata file {path}{problem}")


# --- through the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plant", "what", "sentence"),
    [
        (lambda root: edit_info(root, lambda info: info.update(fps=29.97)), "metadata file",
         "declares fps 29.97, but a LeRobot v3 dataset stores a whole number of frames per second; "
         "pass --fps 30 to resample onto 30 fps"),
        (lambda root: edit_jsonl(root, EPISODES, lambda rows: rows.append(dict(rows[0]))), "episode list",
         "lists episode_index 0 twice (line 1 and line 4); each may appear only once"),
    ],
)
def test_ingest_refuses_bad_metadata_with_exit_status_1_and_one_sentence(src, tmp_path, plant, what, sentence):
    path = plant(src)
    out = tmp_path / "out"
    args = ["ingest", "astribot", "--src", str(src), "--out", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 1
    assert " ".join(result.output.split()) == f"error: {what} {path} {sentence}"
    assert not out.exists()
