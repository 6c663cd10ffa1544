"""``clap-data verify``: is the dataset on disk still the one clap-data wrote, and self-consistent?

Other tools and accidents change datasets after they are written (a truncated copy, a file edited
or deleted by hand, a sync that stopped halfway), and LeRobot readers trust ``meta/`` blindly. This
checks, streaming (a row group, a video at a time, so memory does not grow with the dataset):

* every file against the manifest: present, same size, same sha256; no file the manifest lacks;
* the schema: ``meta/clap_data.json``'s version, each data file's columns against ``meta/info.json``;
* row counts: data rows = ``total_frames``, episodes = ``total_episodes``, each episode's rows in its
  data file = its ``length``, ``dataset_from_index``/``dataset_to_index`` contiguous;
* videos: each file's frame count = the frames of the episodes stored in it, each episode's
  timestamps span its length; with ``full``, every frame of every video decodes.

Each problem is one sentence naming the file; ``ok`` is what the exit status reports.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_data import video
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.manifest import MANIFEST_PATH
from clap_data.lerobot_v3.metadata import EPISODE_COLUMNS, DatasetMetadata
from clap_data.progress import Reporter, SilentReporter
from clap_data.schemas import data_arrow_schema

_TIMESTAMP_TOLERANCE_FRAMES = 0.5


@dataclass
class VerifyReport:
    dataset: str
    full: bool
    problems: list[str] = field(default_factory=list)
    files_hashed: int = 0
    bytes_hashed: int = 0
    episodes: int = 0
    frames: int = 0
    videos: int = 0
    frames_decoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_manifest(meta: DatasetMetadata, report: VerifyReport, reporter: Reporter) -> None:
    try:
        manifest = meta.manifest()
    except ClapDataError as exc:
        report.problems.append(str(exc))
        return
    if manifest is None:
        report.problems.append(f"{MANIFEST_PATH} is missing: the files' sizes and hashes cannot be checked")
        return
    report.problems.extend(manifest.size_problems(meta.root))
    present = {rel: entry for rel, entry in manifest.files.items() if (meta.root / rel).is_file()
               and (meta.root / rel).stat().st_size == entry["size"]}
    reporter.phase(f"Hashing {len(present)} files ({sum(int(e['size']) for e in present.values()) / 2**20:,.1f} MiB)")
    reporter.start(len(present), 0)
    try:
        for relative, entry in sorted(present.items()):
            if file_sha256(meta.root / relative) != entry["sha256"]:
                report.problems.append(f"{relative} has another sha256 than the manifest records: its content changed")
            report.files_hashed += 1
            report.bytes_hashed += int(entry["size"])
            reporter.advance(True, 0)
    finally:
        reporter.stop()


def _data_rows(meta: DatasetMetadata, report: VerifyReport) -> dict[str, dict[int, int]]:
    """Per data file, episode index → rows; checks each file's schema. Unreadable files are problems."""
    expected = data_arrow_schema(meta.features)
    rows: dict[str, dict[int, int]] = {}
    for relative in meta.data_files():
        try:
            parquet = pq.ParquetFile(meta.root / relative)
            schema = parquet.schema_arrow
            if not schema.equals(expected):
                have, want = set(schema.names), set(expected.names)
                detail = (f"missing {sorted(want - have)}, unexpected {sorted(have - want)}" if have != want
                          else "column types or order differ")
                report.problems.append(f"{relative} does not have the columns meta/info.json declares ({detail})")
            counts: dict[int, int] = defaultdict(int)
            for group in range(parquet.num_row_groups):
                indices, frequency = np.unique(parquet.read_row_group(group, columns=["episode_index"]).column(0).to_numpy(),
                                               return_counts=True)
                for episode, count in zip(indices.tolist(), frequency.tolist(), strict=True):
                    counts[episode] += count
            rows[relative] = dict(counts)
        except (pa.ArrowException, OSError, KeyError) as exc:
            report.problems.append(f"{relative} cannot be read ({exc})")
    return rows


def _check_counts(meta: DatasetMetadata, episodes: pa.Table, rows: dict[str, dict[int, int]], report: VerifyReport) -> None:
    indices = episodes.column("episode_index").to_numpy()
    lengths = episodes.column("length").to_numpy()
    report.episodes, report.frames = len(indices), int(lengths.sum())
    if len(indices) != meta.total_episodes:
        report.problems.append(f"meta/episodes lists {len(indices)} episodes, meta/info.json declares {meta.total_episodes}")
    if not np.array_equal(np.sort(indices), np.arange(len(indices))):
        report.problems.append("meta/episodes: the episode indices are not 0..N-1, each once")
    stored = sum(sum(counts.values()) for counts in rows.values())
    if stored != meta.total_frames:
        report.problems.append(f"the data files hold {stored:,} rows, meta/info.json declares {meta.total_frames:,} frames")
    starts = episodes.column("dataset_from_index").to_numpy()
    ends = episodes.column("dataset_to_index").to_numpy()
    order = np.argsort(indices)
    expected_starts = np.concatenate([[0], np.cumsum(lengths[order])[:-1]])
    if not (np.array_equal(starts[order], expected_starts) and np.array_equal(ends[order] - starts[order], lengths[order])):
        report.problems.append("meta/episodes: dataset_from_index/dataset_to_index do not follow the episode lengths")
    for episode, length, chunk, file in zip(indices.tolist(), lengths.tolist(), episodes.column("data/chunk_index").to_pylist(),
                                            episodes.column("data/file_index").to_pylist(), strict=True):
        relative = layout.DATA_PATH.format(chunk_index=chunk, file_index=file)
        if relative not in rows:
            if not (meta.root / relative).is_file():
                report.problems.append(f"episode {episode}'s data file {relative} is missing")
            continue
        found = rows[relative].get(episode, 0)
        if found != length:
            report.problems.append(f"{relative} holds {found} rows of episode {episode}, whose length is {length}")


def _check_videos(meta: DatasetMetadata, episodes: pa.Table, full: bool, report: VerifyReport, reporter: Reporter) -> None:
    fps = meta.fps
    lengths = episodes.column("length").to_pylist()
    by_file: dict[str, list[tuple[int, int, float, float]]] = defaultdict(list)
    for key in meta.video_keys:
        columns = [f"videos/{key}/{name}" for name in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        chunks, files, starts, ends = (episodes.column(c).to_pylist() for c in columns)
        for episode, length, chunk, file, start, end in zip(
            episodes.column("episode_index").to_pylist(), lengths, chunks, files, starts, ends, strict=True
        ):
            relative = layout.VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            by_file[relative].append((episode, length, start, end))
            if abs((end - start) * fps - length) > _TIMESTAMP_TOLERANCE_FRAMES:
                report.problems.append(
                    f"{relative}: episode {episode} spans {start:.3f}..{end:.3f} s ({(end - start) * fps:.1f} frames "
                    f"at {fps} fps) for {length} frames"
                )
    reporter.phase(f"{'Decoding' if full else 'Probing'} {len(by_file)} video files")
    reporter.start(len(by_file), 0)
    try:
        for relative, members in sorted(by_file.items()):
            path = meta.root / relative
            expected = sum(length for _, length, _, _ in members)
            try:
                probe = video.probe_video(path)
                if probe.frame_count != expected:
                    report.problems.append(f"{relative} has {probe.frame_count} frames; its episodes need {expected}")
                if full:
                    video.check_decodes(path, probe, full=True)
                    report.frames_decoded += probe.frame_count
            except video.VideoError as exc:
                report.problems.append(f"{relative} {exc}")
            report.videos += 1
            reporter.advance(True, expected)
    finally:
        reporter.stop()


def verify_dataset(root: Path, full: bool = False, reporter: Reporter | None = None) -> VerifyReport:
    """Check the dataset at ``root`` (see the module docstring). Unreadable core metadata is
    itself the one problem reported."""
    reporter = reporter or SilentReporter()
    report = VerifyReport(dataset=str(Path(root).absolute()), full=full)
    try:
        meta = DatasetMetadata.load(root)
    except ClapDataError as exc:
        report.problems.append(str(exc))
        return report
    _check_manifest(meta, report, reporter)
    reporter.phase("Checking row counts and episode ranges")
    try:
        episodes = meta.episodes(EPISODE_COLUMNS + meta.video_episode_columns())
    except ClapDataError as exc:
        report.problems.append(str(exc))
        return report
    rows = _data_rows(meta, report)
    _check_counts(meta, episodes, rows, report)
    _check_videos(meta, episodes, full, report, reporter)
    return report
