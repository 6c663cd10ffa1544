"""The command line as a user runs it: exit statuses, one-sentence errors, `info --json`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clap_data import __version__
from clap_data.cli import app
from tests.reference import copy_source

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def real_output(real_astribot, tmp_path_factory, ray_local) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("cli") / "astribot_v3"
    result = run("ingest", "astribot", "--src", str(real_astribot), "--out", str(out), "--workers", "2")
    return out, result


def test_ingest_prints_summary_and_exits_3_for_quarantine(real_output):
    _, result = real_output
    assert result.exit_code == 3
    assert "1 written, 1 quarantined" in result.output
    assert "episode_000001.parquet is missing" in result.output
    assert "camera head (images_dict.head.rgb)" in result.output
    assert "exit status 3" in result.output
    # where the time went: the steps, and the workers' split of the one converted episode (validation and keyframe
    # statistics decode video, in one pass; the stream copy waits for assembly, so no time is spent writing video)
    text = " ".join(result.output.split())  # the table may wrap the row
    time_row = text[text.index(" time listing "):]
    for step in ("listing", "converting", "assembling", "publishing"):
        assert re.search(rf"{step} \d+\.\d s", time_row)
    split = dict(re.findall(r"(read|probe|decode|video|stats|staging) (\d+)%", time_row))
    assert set(split) == {"read", "probe", "decode", "video", "stats", "staging"} and split["video"] == "0"
    assert int(split["decode"]) > 0 and 95 <= sum(map(int, split.values())) <= 105
    assert re.search(r"the driver appended episodes for \d+\.\d s of it", time_row)


def test_info_json_has_the_documented_fields(real_output, real_astribot):
    out, _ = real_output
    result = run("info", str(out), "--json")
    assert result.exit_code == 0
    summary = json.loads(result.output)
    frames = json.loads((real_astribot / "meta/episodes.jsonl").read_text().splitlines()[0])["length"]
    assert summary["episodes"] == 1
    assert summary["frames"] == frames
    assert summary["fps"] == 30
    assert summary["robot_type"] == "S1-stationary"
    assert summary["cameras"] == ["wrist_left", "wrist_right"]
    assert summary["schema_version"] == 1
    assert summary["token_columns"] == []
    assert summary["quarantine"] == [
        {"episode": "000001", "reason": "data file data/chunk-000/episode_000001.parquet is missing",
         "category": "missing_file", "file": "data/chunk-000/episode_000001.parquet"}
    ]


def test_info_screen_lists_quarantine(real_output):
    out, _ = real_output
    result = run("info", str(out))
    assert result.exit_code == 0
    assert "S1-stationary" in result.output and "000001" in result.output


def test_second_run_refuses_to_overwrite_a_finished_dataset(real_output, real_astribot):
    out, _ = real_output
    before = (out / "meta/info.json").read_bytes()
    result = run("ingest", "astribot", "--src", str(real_astribot), "--out", str(out))
    assert result.exit_code == 1
    assert "already holds a dataset; add --overwrite" in result.output
    assert (out / "meta/info.json").read_bytes() == before


def test_info_refuses_an_unknown_schema_version(real_output, tmp_path):
    out, _ = real_output
    copy = copy_source(out, tmp_path / "copy")
    meta = json.loads((copy / "meta/clap_data.json").read_text())
    meta["schema_version"] = 99
    (copy / "meta/clap_data.json").write_text(json.dumps(meta))
    result = run("info", str(copy))
    assert result.exit_code == 1
    assert "version 99" in result.output and "upgrade clap-data" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda root: (root / "meta/info.json").unlink(), "metadata file"),
        (lambda root: (root / "meta/info.json").write_text("{not json"), "cannot be read"),
        (lambda root: (root / "meta/episodes.jsonl").write_text("{}\n{oops\n"), "line 2 is not valid JSON"),
    ],
)
def test_unreadable_metadata_fails_with_one_sentence(astribot_src, tmp_path, break_it, message):
    root = copy_source(astribot_src, tmp_path / "src")
    break_it(root)
    result = run("ingest", "astribot", "--src", str(root), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resize", "224"], "HEIGHTxWIDTH"),
        (["--vcodec", "mpeg2"], "not one of h264, hevc, av1"),
        (["--workers", "0"], "--workers"),
        (["--image-stats-keyframes", "0"], "--image-stats-keyframes"),
    ],
)
def test_bad_arguments_exit_2(astribot_src, tmp_path, args, message):
    result = runner.invoke(app, ["ingest", "astribot", "--src", str(astribot_src), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_image_stats_keyframes_sets_how_many_keyframes_each_episodes_statistics_count(astribot_src, tmp_path, ray_local):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    result = run("ingest", "astribot", "--src", str(astribot_src), "--out", str(out), "--image-stats-keyframes", "3")
    assert result.exit_code == 0, result.output
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    counts = {key: [row[key] for row in episodes] for key in episodes[0] if key.startswith("stats/observation.images")
              and key.endswith("/count")}
    assert len(counts) == 3 and all(value == [[3]] * 3 for value in counts.values())  # 3 cameras, 3 episodes
    stats = json.loads((out / "meta/stats.json").read_text())
    assert stats["observation.images.head"]["count"] == [9]
    assert json.loads((out / "meta/clap_data.json").read_text())["video"]["stats_keyframes"] == 3


def test_camera_errors_name_the_camera(astribot_src, real_astribot, tmp_path):
    result = run("ingest", "astribot", "--src", str(astribot_src), "--out", str(tmp_path / "o"), "--cameras", "wrist_left,belly")
    assert result.exit_code == 1 and "unknown camera 'belly'" in result.output
    result = run("ingest", "astribot", "--src", str(real_astribot), "--out", str(tmp_path / "o"), "--cameras", "head")
    assert result.exit_code == 1 and "camera head was requested but none of its video files exist" in result.output


def test_missing_source_folder(tmp_path):
    result = run("ingest", "astribot", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "does not exist" in result.output


def test_unknown_source_and_options_meant_for_another_source_exit_2(astribot_src, tmp_path):
    result = runner.invoke(app, ["ingest", "kinect", "--src", str(astribot_src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'kinect' is not one of" in result.output


def test_options_are_checked_against_the_source(astribot_src):
    from clap_data.sources.registry import OptionError, SourceOptions, build_source

    assert build_source("astribot", astribot_src, SourceOptions(cameras=["wrist_left"])).cameras == ("wrist_left",)
    with pytest.raises(OptionError, match="unknown source"):
        build_source("kinect", astribot_src, SourceOptions())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-frames", "5"], "--min-frames applies to ego4d only, not astribot"),
        (["--tasks", "327"], "--tasks applies to agibot only, not astribot"),
        (["--force-known-bad"], "--force-known-bad applies to agibot only"),
    ],
)
def test_options_of_another_source_exit_2(astribot_src, tmp_path, args, message):
    result = runner.invoke(app, ["ingest", "astribot", "--src", str(astribot_src), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output


def test_task_ids_must_be_integers(tmp_path):
    result = runner.invoke(app, ["ingest", "agibot", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--tasks", "327,abc"])
    assert result.exit_code == 2 and "not a comma-separated list of task ids" in result.output


def test_an_unexpected_failure_names_a_log_file_holding_its_traceback(tmp_path, monkeypatch):
    """The sentence stays one line; the traceback a bug report needs is kept without a rerun."""
    from clap_data.lerobot_v3 import reader

    def broken(dataset: Path) -> dict:
        raise RuntimeError("the summary broke [on purpose]")  # brackets: the text is not rich markup

    monkeypatch.setattr(reader, "dataset_summary", broken)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("CLAP_DATA_DEBUG", raising=False)
    result = runner.invoke(app, ["info", str(tmp_path)])
    logs = list((tmp_path / "state" / "clap-data" / "logs").glob("*.log"))
    assert result.exit_code == 1 and len(logs) == 1
    assert result.output == (
        f"error: unexpected failure (RuntimeError: the summary broke [on purpose]); the traceback is in {logs[0]} "
        "(CLAP_DATA_DEBUG=1 prints it)\n"
    )
    text = logs[0].read_text()
    assert text.startswith(f"clap-data {__version__}: ")
    assert "\nTraceback (most recent call last):\n" in text and "in broken\n" in text
    assert text.endswith("RuntimeError: the summary broke [on purpose]\n")
    # no writable log folder: the sentence says how to see the traceback instead
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "not_a_folder"))
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == (
        "error: unexpected failure (RuntimeError: the summary broke [on purpose]); set CLAP_DATA_DEBUG=1 to see the traceback\n"
    )
