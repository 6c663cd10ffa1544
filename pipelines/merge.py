"""Merge unified datasets into one: ``clap-data merge DS [DS ...] --out DIR``.

Why a merge of our own rather than lerobot's ``aggregate_datasets``: lerobot's keeps the frames but not what makes a
clap-data dataset one — the per-episode provenance (``source/*``), the quarantines, the token columns and the
identity of the tokenizer that wrote them, ``meta/clap_data.json`` and the manifest. Here every input episode goes
through the same :class:`~clap_data.lerobot_v3.writer.DatasetAssembler` an ingest uses, in input order: its rows
re-indexed (episode, global index, task), its video segments copied packet for packet out of the input's files (no
decoding, no re-encoding), its per-episode image statistics carried over and every statistic re-aggregated. One
input data file is held in memory at a time (≤ 100 MB as written), so memory does not grow with the datasets.

Refused, each with a sentence: inputs of another embodiment or fps, cameras not every input has (``--cameras``
keeps a common subset), cameras of different frame sizes, token columns that not every input carries from the same
tokenizer (checkpoint, statistics, queries — ``--drop-tokens`` leaves them out), a video file whose packets are not
in display order (B-frames), ``--out`` among the inputs. The output appears atomically (built beside ``--out``,
renamed into place) under the output's lock, with every input held under a shared lock; a run that dies leaves no
output. It resumes: after each input the assembler checkpoints (every file written so far complete, its state in
``.<out>.clap-merge/checkpoint.json``, with the identity of the inputs and options), and a rerun of the same merge
goes on after the last input checkpointed — writing the same bytes as a run never interrupted — while a merge of
other inputs (or changed ones: their manifests differ) or options starts afresh.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clap_data import __version__, video
from clap_data.atomic import write_json_atomic
from clap_data.conversion import video_record
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.manifest import MANIFEST_PATH
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.writer import DatasetAssembler
from clap_data.locking import dataset_lock
from clap_data.progress import Reporter, SilentReporter
from clap_data.schemas import (
    CLAP_META_PATH,
    PADDED_COLUMN_OF,
    QUARANTINE_SCHEMA,
    TOKEN_COLUMNS,
    camera_feature_key,
)
from clap_data.staging import check_output_folder, window_source

_CARRIED_COLUMNS = ("observation.state", "action", "arm_mask", "subtask", "frame_index")
CHECKPOINT = "checkpoint.json"  # in the work folder beside --out: the state after the last input merged


@dataclass(frozen=True)
class MergeRequest:
    out: Path
    overwrite: bool = False
    cameras: tuple[str, ...] | None = None  # None: the cameras every input has, which must be all of them
    drop_tokens: bool = False
    wait: bool = False


@dataclass
class MergeReport:
    out: str
    inputs: list[str] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    cameras: list[str] = field(default_factory=list)
    token_columns: list[str] = field(default_factory=list)
    dropped_token_columns: list[str] = field(default_factory=list)
    quarantined: int = 0
    resumed_inputs: int = 0  # inputs an interrupted run had merged and checkpointed, not merged again
    seconds: float = 0.0


def _is_clap_dataset(path: Path) -> bool:
    return (path / CLAP_META_PATH).is_file()


def _same(values: list[Any], what: str, inputs: list[DatasetMetadata]) -> Any:
    if len(set(map(str, values))) > 1:
        listed = "; ".join(f"{meta.root} has {value}" for meta, value in zip(inputs, values, strict=True))
        raise ClapDataError(f"the datasets to merge must share {what}: {listed}")
    return values[0]


def _cameras(inputs: list[DatasetMetadata], requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The cameras of the merge: ``requested`` (each in every input), or every input's when all have the same."""
    sets = [set(meta.cameras) for meta in inputs]
    common = [camera for camera in inputs[0].cameras if all(camera in s for s in sets)]
    if requested is None:
        if any(s != sets[0] for s in sets):
            listed = "; ".join(f"{meta.root}: {', '.join(meta.cameras) or 'none'}" for meta in inputs)
            raise ClapDataError(f"the datasets to merge have different cameras ({listed}); keep those every one has "
                                f"with --cameras {','.join(common) or '…'}")
        return tuple(inputs[0].cameras)
    for camera in requested:
        missing = [str(meta.root) for meta in inputs if camera not in meta.cameras]
        if missing:
            raise ClapDataError(f"camera {camera} is not in {', '.join(missing)}; cameras every dataset has: "
                                f"{', '.join(common) or 'none'}")
    return tuple(dict.fromkeys(requested))


def _token_columns(inputs: list[DatasetMetadata], drop: bool) -> tuple[list[str], list[str]]:
    """(kept, dropped) token columns: kept when every input has it from the same tokenizer identity."""
    kept, dropped = [], []
    for column in TOKEN_COLUMNS:
        identities = [meta.token_identity(column) for meta in inputs]
        if all(identity is None for identity in identities):
            continue
        if all(identity is not None for identity in identities) and all(i == identities[0] for i in identities):
            kept.append(column)
            continue
        if not drop:
            why = "; ".join(
                f"{meta.root}: " + ("none" if identity is None else
                                    f"checkpoint {str(identity.get('checkpoint_sha256', '?'))[:12]}, "
                                    f"statistics {identity.get('stats_id', identity.get('statistics_id', '?'))}")
                for meta, identity in zip(inputs, identities, strict=True))
            raise ClapDataError(f"{column} does not come from one tokenizer in every dataset ({why}); tokenize them "
                                "with the same checkpoint first, or merge without the column with --drop-tokens")
        dropped.append(column)
    return kept, dropped


def _check_frame_sizes(inputs: list[DatasetMetadata], cameras: tuple[str, ...]) -> None:
    for camera in cameras:
        key = camera_feature_key(camera)
        _same([meta.features[key]["shape"] for meta in inputs], f"the frame size of camera {camera}", inputs)


def _tasks(meta: DatasetMetadata) -> dict[int, str]:
    table = pq.read_table(meta.root / layout.TASKS_PATH)
    names = table.column("task").to_pylist() if "task" in table.column_names else table.column(
        table.schema.pandas_metadata["index_columns"][0]).to_pylist()
    return dict(zip(table.column("task_index").to_pylist(), names, strict=True))


def _episode_rows(meta: DatasetMetadata) -> Iterator[dict[str, Any]]:
    """The input's episodes metadata rows, in episode order, one metadata file at a time."""
    for path in sorted((meta.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        yield from sorted(pq.read_table(path).to_pylist(), key=lambda row: row["episode_index"])


class _InputFrames:
    """An input's frames, one data file in memory at a time, sliced out episode by episode."""

    def __init__(self, meta: DatasetMetadata, columns: list[str]):
        self.meta, self.columns = meta, columns
        self._file: tuple[int, int] | None = None
        self._table: pa.Table | None = None
        self._first_index = 0

    def episode(self, row: dict[str, Any]) -> pa.Table:
        where = (row["data/chunk_index"], row["data/file_index"])
        if where != self._file:
            relative = layout.DATA_PATH.format(chunk_index=where[0], file_index=where[1])
            self._table = pq.read_table(self.meta.root / relative, columns=[*self.columns, "index"])
            self._first_index = int(self._table.column("index")[0].as_py())
            self._file = where
        start = row["dataset_from_index"] - self._first_index
        return self._table.slice(start, row["length"])


def _video_entry(meta: DatasetMetadata, row: dict[str, Any], camera: str) -> dict[str, Any]:
    """The staged-record entry that has the assembler copy ``camera``'s segment of this episode out of the input's
    video file (``copy_from``), with the episode's image statistics carried over."""
    key = camera_feature_key(camera)
    relative = layout.VIDEO_PATH.format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                        file_index=row[f"videos/{key}/file_index"])
    path = meta.root / relative
    try:
        probe = video.probe_video(path)
    except video.VideoError as exc:
        raise ClapDataError(f"{path} {exc}") from None
    if probe.decode_delay:
        raise ClapDataError(f"{path} has B-frames (its packets are not in display order), so its episodes cannot be "
                            "copied one by one; ingest that dataset again with --vcodec to merge it")
    first = int(round(row[f"videos/{key}/from_timestamp"] * meta.fps))
    if first not in probe.keyframe_ranks:
        raise ClapDataError(f"episode {row['episode_index']} of {meta.root} starts between keyframes of {path}, so it "
                            "cannot be copied packet by packet (LeRobot's tools may have re-encoded the file)")
    if first + row["length"] > probe.frame_count:
        raise ClapDataError(f"{path} has {probe.frame_count} frames; episode {row['episode_index']} of {meta.root} "
                            f"needs frames {first} to {first + row['length'] - 1}")
    prefix = f"stats/{key}/"
    pixels = {name.removeprefix(prefix): value for name, value in row.items() if name.startswith(prefix)}
    return video_record(f"{meta.root.name}/{relative}", probe, row["length"], pixels,
                        copy_from=window_source(path, probe.display_pts[first]))


def _provenance(row: dict[str, Any]) -> dict[str, Any]:
    return {name.removeprefix("source/"): value for name, value in row.items() if name.startswith("source/")}


def _quarantine(inputs: list[DatasetMetadata]) -> list[dict[str, str]]:
    rows = []
    for meta in inputs:
        path = meta.root / layout.QUARANTINE_PATH
        if path.is_file():
            rows += pq.read_table(path, schema=QUARANTINE_SCHEMA).to_pylist()
    return rows


def merge_datasets(paths: list[Path], request: MergeRequest, reporter: Reporter | None = None) -> MergeReport:
    """Merge ``paths`` (in that order) into ``request.out``; see the module docstring."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    out = request.out.absolute()
    if len(paths) < 2:
        raise ClapDataError("merge needs at least two datasets")
    resolved = [Path(p).resolve() for p in paths]
    if out.resolve() in resolved:
        raise ClapDataError(f"--out {out} is one of the datasets to merge; choose a new folder")
    if len(set(resolved)) < len(resolved):
        raise ClapDataError("a dataset is named twice among the datasets to merge")
    with ExitStack() as locks:
        locks.enter_context(dataset_lock(out, exclusive=True, purpose="merge", wait=request.wait, on_wait=reporter.phase))
        for path in resolved:
            locks.enter_context(dataset_lock(path, exclusive=False, purpose="merge", wait=request.wait,
                                             on_wait=reporter.phase))
        inputs = [DatasetMetadata.load(path) for path in resolved]
        report = _merge_locked(inputs, out, request, reporter)
    report.seconds = time.perf_counter() - started
    return report


def _merge_locked(inputs: list[DatasetMetadata], out: Path, request: MergeRequest, reporter: Reporter) -> MergeReport:
    robot_type = _same([meta.robot_type for meta in inputs], "one embodiment (robot_type)", inputs)
    fps = _same([meta.fps for meta in inputs], "one fps", inputs)
    cameras = _cameras(inputs, request.cameras)
    _check_frame_sizes(inputs, cameras)
    kept, dropped = _token_columns(inputs, request.drop_tokens)
    replaced = out.parent / f".{out.name}.clap-replaced"
    _finish_interrupted_publish(out, replaced)
    check_output_folder(out, request.overwrite, _is_clap_dataset, "dataset")
    extra = {name: inputs[0].features[name] for column in kept for name in (column, PADDED_COLUMN_OF[column])}
    report = MergeReport(out=str(out), inputs=[str(meta.root) for meta in inputs], cameras=list(cameras),
                         token_columns=kept, dropped_token_columns=dropped)
    work_dir = out.parent / f".{out.name}.clap-merge"
    built = work_dir / "dataset"
    identity = _identity(inputs, cameras, kept, dropped)
    checkpoint = _read_checkpoint(work_dir, identity)
    if checkpoint is None:
        shutil.rmtree(work_dir, ignore_errors=True)  # another merge's work, or none
        built.mkdir(parents=True)
        assembler, done = DatasetAssembler(built, fps, robot_type, cameras, extra_features=extra), 0
    else:
        assembler = DatasetAssembler.resume(built, fps, robot_type, cameras, checkpoint["assembler"], extra_features=extra)
        done = checkpoint["inputs_done"]
        report.resumed_inputs = done
    total = sum(meta.total_episodes for meta in inputs)
    reporter.phase(f"Merging {total} episodes of {len(inputs)} datasets"
                   + (f" (resuming after {done} of them, checkpointed by an earlier run)" if done else ""))
    reporter.start(total, assembler.episodes)
    try:
        for number, meta in enumerate(inputs[done:], start=done + 1):
            _append_dataset(assembler, meta, cameras, list(extra), reporter)
            if number < len(inputs):
                state = {"identity": identity, "inputs_done": number, "assembler": assembler.checkpoint()}
                write_json_atomic(work_dir / CHECKPOINT, state)
        quarantine = _quarantine(inputs)
        assembler.finish(_clap_meta(inputs, cameras, kept, dropped), quarantine)
        report.episodes, report.frames, report.quarantined = assembler.episodes, assembler.frames, len(quarantine)
    finally:
        reporter.stop()
    _publish(built, out, replaced)
    shutil.rmtree(work_dir, ignore_errors=True)
    return report


def _identity(inputs: list[DatasetMetadata], cameras: tuple[str, ...], kept: list[str], dropped: list[str]) -> dict[str, Any]:
    """What a checkpoint is valid for: this clap-data, the inputs in order — each by its path and the digest of its
    manifest (which every clap-data writer rewrites), else of its ``info.json`` — and the options that shape the
    output."""
    def digest(meta: DatasetMetadata) -> str:
        manifest = meta.root / MANIFEST_PATH
        return file_sha256(manifest if manifest.is_file() else meta.root / layout.INFO_PATH)

    return {"clap_data": __version__, "inputs": [[str(meta.root), digest(meta)] for meta in inputs],
            "cameras": list(cameras), "token_columns": kept, "dropped_token_columns": dropped}


def _read_checkpoint(work_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint an interrupted run of this same merge left, or None."""
    path = work_dir / CHECKPOINT
    try:
        checkpoint = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return checkpoint if checkpoint.get("identity") == identity and (work_dir / "dataset").is_dir() else None


def _publish(work_dir: Path, out: Path, replaced: Path) -> None:
    """Move the merged dataset onto ``out``; a dataset already there (``--overwrite``) is parked as ``replaced``
    until the new one is in place (:func:`_finish_interrupted_publish` completes a publish a crash cut short)."""
    if out.exists():
        out.rename(replaced)
    work_dir.rename(out)
    shutil.rmtree(replaced, ignore_errors=True)


def _finish_interrupted_publish(out: Path, replaced: Path) -> None:
    """A crash between parking the old dataset and moving the new one in left no dataset at ``out``: put the old
    one back (the merge will be redone), or drop the parked one if the new one made it."""
    if not replaced.exists():
        return
    if out.exists():
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        replaced.rename(out)


def _append_dataset(assembler: DatasetAssembler, meta: DatasetMetadata, cameras: tuple[str, ...],
                    extra_columns: list[str], reporter: Reporter) -> None:
    tasks = _tasks(meta)
    frames = _InputFrames(meta, [*_CARRIED_COLUMNS, "task_index", *extra_columns])
    for row in _episode_rows(meta):
        table = frames.episode(row)
        task_names = pa.array([tasks[int(i)] for i in table.column("task_index").to_numpy()], pa.string())
        table = table.drop_columns(["task_index", "index"]).append_column("task", task_names)
        record = {"videos": {camera: _video_entry(meta, row, camera) for camera in cameras}}
        problem = assembler.check_episode(record)
        if problem:
            raise ClapDataError(f"episode {row['episode_index']} of {meta.root} cannot join the merge: {problem[1]}")
        assembler.add_episode(table, record, _provenance(row))
        reporter.advance(True, row["length"])


def _clap_meta(inputs: list[DatasetMetadata], cameras: tuple[str, ...], kept: list[str],
               dropped: list[str]) -> dict[str, Any]:
    first = inputs[0].clap
    meta: dict[str, Any] = {
        "embodiment": first.get("embodiment"),
        "source": {"merged_from": [{"path": str(m.root), "episodes": m.total_episodes, "source": m.clap.get("source")}
                                   for m in inputs]},
        "video": {"mode": "stream-copy", "merged": True},
        "notices": [notice for m in inputs for notice in m.clap.get("notices", [])]
        + [f"merged by clap-data {__version__} from {len(inputs)} datasets"]
        + ([f"token columns dropped (not from one tokenizer in every dataset): {', '.join(dropped)}"] if dropped else []),
    }
    tokenizers = {column: first.get("tokenizers", {}).get(column) for column in kept
                  if first.get("tokenizers", {}).get(column) is not None}
    if tokenizers:
        meta["tokenizers"] = tokenizers
    return meta
