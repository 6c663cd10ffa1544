"""Bad input: every fault in one run. Each faulty episode is quarantined with a reason naming the
file, the good episodes are written intact, and the exit status says what happened."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_data.cli.dataset_commands import _print_ingest_summary
from clap_data.errors import ExitCode
from clap_data.factories.astribot import write_astribot_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.astribot import AstribotSource
from clap_data.sources.base import CanonicalEpisode, EpisodeRef
from tests.pipelines.test_ingest_astribot import assert_episode_matches_source, load

pytestmark = pytest.mark.usefixtures("ray_local")

STATE = "cartesian_so3_dict.cartesian_pose_state"
COMMAND = "cartesian_so3_dict.cartesian_pose_command"


def parquet(root: Path, episode: int) -> Path:
    return root / f"data/chunk-000/episode_{episode:06d}.parquet"


def mp4(root: Path, episode: int, key: str) -> Path:
    return root / f"videos/chunk-000/images_dict.{key}.rgb/episode_{episode:06d}.mp4"


def edit_column(root: Path, episode: int, column: str, edit: Callable[[list], None]) -> None:
    path = parquet(root, episode)
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    edit(values)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, table.schema.field(index), pa.array(values, type=table.schema.field(index).type))
    pq.write_table(table, path)


def set_value(row: int, col: int, value: float) -> Callable[[list], None]:
    def edit(values: list) -> None:
        values[row][col] = value

    return edit


def swap_rows(a: int, b: int) -> Callable[[list], None]:
    def edit(values: list) -> None:
        values[a], values[b] = values[b], values[a]

    return edit


def shorten_row(row: int, length: int) -> Callable[[list], None]:
    def edit(values: list) -> None:
        values[row] = values[row][:length]

    return edit


def zero_left_rotation(row: int) -> Callable[[list], None]:
    def edit(values: list) -> None:
        values[row][12:18] = [0.0] * 6

    return edit


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def declare_length(root: Path, episode: int, length: int) -> None:
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    record = json.loads(lines[episode])
    record["length"] = length
    lines[episode] = json.dumps(record)
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")


# episode -> (how to break it, expected check, text the reason must contain)
FAULTS = {
    1: (lambda r: parquet(r, 1).unlink(), "missing_file", "data file data/chunk-000/episode_000001.parquet is missing"),
    2: (lambda r: mp4(r, 2, "left").unlink(), "missing_file", "video file videos/chunk-000/images_dict.left.rgb/episode_000002.mp4 is missing"),
    3: (lambda r: mp4(r, 3, "right").write_bytes(mp4(r, 0, "right").read_bytes()), "frame_count",
        "video file videos/chunk-000/images_dict.right.rgb/episode_000003.mp4 has 40 frames but the data file has 43 rows"),
    4: (lambda r: truncate(mp4(r, 4, "head"), 0.5), "bad_video", "video file videos/chunk-000/images_dict.head.rgb/episode_000004.mp4"),
    5: (lambda r: mp4(r, 5, "head").write_bytes(np.random.default_rng(0).bytes(5000)), "bad_video",
        "video file videos/chunk-000/images_dict.head.rgb/episode_000005.mp4 cannot be opened"),
    6: (lambda r: truncate(parquet(r, 6), 0.6), "unreadable_file", "data file data/chunk-000/episode_000006.parquet cannot be read"),
    7: (lambda r: pq.write_table(pq.read_table(parquet(r, 7)).slice(0, 0), parquet(r, 7)), "empty",
        "data file data/chunk-000/episode_000007.parquet has no rows"),
    8: (lambda r: edit_column(r, 8, STATE, set_value(5, 10, float("nan"))), "non_finite",
        f"data file data/chunk-000/episode_000008.parquet column {STATE} has NaN or Inf in the left arm at row 5"),
    9: (lambda r: edit_column(r, 9, COMMAND, set_value(7, 20, float("inf"))), "non_finite",
        f"column {COMMAND} has NaN or Inf in the right arm at row 7"),
    10: (lambda r: edit_column(r, 10, "timestamp", swap_rows(10, 11)), "timestamps",
         "data file data/chunk-000/episode_000010.parquet has non-increasing timestamps at row 11"),
    11: (lambda r: edit_column(r, 11, STATE, zero_left_rotation(3)), "bad_rotation",
         "the left arm's rotation at row 3 is not a rotation (a row is zero)"),
    12: (lambda r: declare_length(r, 12, 99), "frame_count", "data file data/chunk-000/episode_000012.parquet has 43 rows but meta/episodes.jsonl declares 99"),
    13: (lambda r: edit_column(r, 13, STATE, shorten_row(4, 20)), "bad_shape",
         f"data file data/chunk-000/episode_000013.parquet column {STATE} is not 34 values long at row 4"),
    14: (lambda r: edit_column(r, 14, COMMAND, shorten_row(0, 0)), "bad_shape", f"column {COMMAND} is not 34 values long at row 0"),
    15: (lambda r: edit_column(r, 15, "task_index", set_value(6, 0, 999)), "unknown_task",
         "data file data/chunk-000/episode_000015.parquet refers to task_index 999, absent from meta/tasks.jsonl"),
}
GOOD = (0, 16)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty") / "src"
    write_astribot_dataset(root, episode_lengths=[40] + [43] * 16, video_size=(64, 48))
    for episode, (inject, _, _) in FAULTS.items():
        inject(root)
    out = tmp_path_factory.mktemp("faulty_out") / "out"
    return root, out, ingest(AstribotSource(root), IngestRequest(out=out, workers=2))


def test_each_fault_is_quarantined_with_a_reason_naming_the_file(faulty_run):
    _, _, report = faulty_run
    by_episode = {q["source_episode"]: q for q in report.quarantine}
    assert sorted(by_episode) == [f"{e:06d}" for e in FAULTS]
    for episode, (_, category, text) in FAULTS.items():
        record = by_episode[f"{episode:06d}"]
        assert record["category"] == category, record
        assert text in record["reason"], record


def test_good_episodes_are_written_intact(faulty_run):
    root, out, report = faulty_run
    assert report.exit_code == ExitCode.QUARANTINED
    assert report.written == len(GOOD)
    dataset = load(out)
    assert dataset.meta.total_episodes == len(GOOD)
    for output_index, source_episode in enumerate(GOOD):
        assert_episode_matches_source(dataset, output_index, root, source_episode)


def test_quarantine_file_is_readable_by_duckdb(faulty_run):
    import duckdb

    _, out, _ = faulty_run
    rows = duckdb.sql(f"select category, count(*) from '{out / 'quarantine.parquet'}' group by category order by category").fetchall()
    expected = {}
    for _, category, _ in FAULTS.values():
        expected[category] = expected.get(category, 0) + 1
    assert dict(rows) == expected


def test_every_episode_bad_writes_nothing_and_fails(tmp_path):
    root = write_astribot_dataset(tmp_path / "src", episode_lengths=(30, 30), video_size=(32, 32))
    for episode in (0, 1):
        parquet(root, episode).unlink()
    report = ingest(AstribotSource(root), IngestRequest(out=tmp_path / "out"))
    assert report.exit_code == ExitCode.FAILED
    assert len(report.quarantine) == 2
    assert not (tmp_path / "out").exists()


def test_full_decode_option_decodes_every_frame(tmp_path):
    from clap_data.conversion import VideoOptions

    root = write_astribot_dataset(tmp_path / "src", episode_lengths=(30,), video_size=(32, 32), cameras=("head",))
    report = ingest(AstribotSource(root), IngestRequest(out=tmp_path / "out", video=VideoOptions(full_decode=True)))
    assert report.exit_code == ExitCode.OK


class BrokenEpisodeSource(AstribotSource):
    """Astribot whose episode 1 fails inside the Ray worker in a way no check anticipates."""

    def read_episode(self, ref: EpisodeRef) -> CanonicalEpisode:
        if ref.order == 1:
            raise RuntimeError("episode 1 broke on purpose")
        return super().read_episode(ref)


def test_an_unexpected_error_keeps_its_traceback_in_a_log_the_summary_names(tmp_path, capsys):
    root = write_astribot_dataset(tmp_path / "src", episode_lengths=(30, 30), video_size=(32, 32), cameras=("head",))
    out = tmp_path / "out"
    report = ingest(BrokenEpisodeSource(root), IngestRequest(out=out))
    logs = tmp_path / ".out.clap-staging" / "logs"
    assert (report.exit_code, report.written) == (ExitCode.QUARANTINED, 1)
    data_file = "data/chunk-000/episode_000001.parquet"
    assert report.quarantine == [{
        "order": 1, "source_episode": "000001", "category": "internal_error", "file": data_file,
        "reason": f"unexpected error while converting {data_file}: RuntimeError: episode 1 broke on purpose "
                  f"(traceback in {logs / '00000001.log'})",
    }]
    text = (logs / "00000001.log").read_text()
    assert "Traceback (most recent call last):" in text and text.endswith("RuntimeError: episode 1 broke on purpose\n")
    # published: of the staging area only the logs are left, and the summary says where they are
    assert report.error_log == str(logs)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in logs.parent.rglob("*")) == [
        ".out.clap-staging/logs", ".out.clap-staging/logs/00000001.log",
    ]
    _print_ingest_summary("astribot", report)
    assert f"error logs  {logs} (the traceback of each internal_error episode)" in capsys.readouterr().out


def test_a_video_of_another_size_is_quarantined_naming_the_mp4(tmp_path):
    root = write_astribot_dataset(tmp_path / "src", episode_lengths=(30, 30), video_size=(32, 32), cameras=("head",))
    other = write_astribot_dataset(tmp_path / "other", episode_lengths=(30, 30), video_size=(64, 48), cameras=("head",))
    # same frames, another size: staged fine, refused when assembled (DatasetAssembler.check_episode)
    shutil.copyfile(mp4(other, 1, "head"), mp4(root, 1, "head"))
    out = tmp_path / "out"
    report = ingest(AstribotSource(root), IngestRequest(out=out))
    video_file = "videos/chunk-000/images_dict.head.rgb/episode_000001.mp4"
    assert report.quarantine == [{
        "order": 1, "source_episode": "000001", "category": "inconsistent_video", "file": video_file,
        "reason": f"episode 000001 ({video_file}): its head video is 64x48 while the dataset's is 32x32; "
                  "re-run with --resize HxW to make them equal",
    }]
    assert pq.read_table(out / "quarantine.parquet").column("file").to_pylist() == [video_file]
    assert report.error_log == ""


class TouchingReporter:
    """A Reporter that changes episode 1's head video (its modification time) as soon as its worker reports it
    converted — after validation, before the driver appends it — as a user editing the source mid-run would."""

    def __init__(self, video: Path):
        self.video = video

    def phase(self, text: str) -> None:
        pass

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: bool, frames: int) -> None:
        status = self.video.stat()
        os.utime(self.video, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # every outcome: ours among them

    def stop(self) -> None:
        pass


def test_a_source_video_changed_after_validation_is_quarantined_not_copied(tmp_path):
    src = write_astribot_dataset(tmp_path / "src", episode_lengths=(30, 34, 32), video_size=(64, 48))
    out = tmp_path / "out"
    report = ingest(AstribotSource(src), IngestRequest(out=out, workers=1), TouchingReporter(mp4(src, 1, "head")))
    assert report.written == 2 and report.exit_code == ExitCode.QUARANTINED
    (record,) = report.quarantine
    assert record["category"] == "inconsistent_video" and record["file"] == "videos/chunk-000/images_dict.head.rgb/episode_000001.mp4"
    assert "changed after it was validated" in record["reason"] and "--overwrite" in record["reason"]
    again = ingest(AstribotSource(src), IngestRequest(out=out, overwrite=True, workers=1))
    assert again.written == 3 and not again.quarantine
