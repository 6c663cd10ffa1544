"""Ingest pipeline: any :class:`~clap_data.sources.base.Source` → one unified LeRobot v3.0 dataset.

Three steps (DESIGN.md): list episodes on the driver (metadata only) → convert, validate and stage
each episode on Ray workers (Ray Data ``map_batches``, streaming, so memory does not grow with the
number of episodes) → assemble the v3 files from the staged episodes in source order — on the driver, while the
workers convert, each episode as soon as all before it are settled — and move the finished dataset onto ``--out``
in one rename. Every step can be interrupted and re-run.
"""

from __future__ import annotations

import json
import pickle
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from clap_data import __version__
from clap_data.atomic import building_dir, write_json_atomic
from clap_data.conversion import EPISODE_PHASES, STAGED_FRAMES, EpisodeOutcome, VideoOptions, convert_episode
from clap_data.errors import ClapDataError, ExitCode
from clap_data.lerobot_v3.column_update import ColumnUpdate
from clap_data.lerobot_v3.writer import DatasetAssembler
from clap_data.progress import Reporter, SilentReporter
from clap_data.ray_runtime import ray_session
from clap_data.schemas import CLAP_META_PATH
from clap_data.sources.base import EpisodeRef, Source
from clap_data.splits import source_dataset_id
from clap_data.staging import StagingArea, check_output_folder

_BLOCKS_PER_WORKER = 16  # enough to balance uneven episodes; few enough to keep scheduling cheap
_PUBLISHING = "publishing.json"


@dataclass(frozen=True)
class IngestRequest:
    out: Path
    overwrite: bool = False
    workers: int | None = None
    address: str | None = None
    video: VideoOptions = VideoOptions()
    wait: bool = False  # wait for another command holding the dataset instead of refusing


@dataclass
class IngestReport:
    """What happened, for the summary screen and for scripts (``exit_code``)."""

    out: str
    listed: int = 0
    written: int = 0
    frames: int = 0
    resumed: int = 0
    seconds: float = 0.0
    quarantine: list[dict[str, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    already_complete: bool = False
    error_log: str = ""  # the folder of the tracebacks of internal_error episodes, kept after the run
    # Where the time went: wall seconds of each step (listing, converting, assembling, publishing) and, summed
    # over the episodes converted in this run, the seconds of each conversion phase (EPISODE_PHASES) on the workers.
    step_seconds: dict[str, float] = field(default_factory=dict)
    episode_phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(EPISODE_PHASES, 0.0))
    assembly_seconds: float = 0.0  # the driver's time appending episodes, most of it while the workers convert

    @property
    def exit_code(self) -> ExitCode:
        if self.written == 0:
            return ExitCode.FAILED
        return ExitCode.QUARANTINED if self.quarantine else ExitCode.OK


def _is_clap_dataset(path: Path) -> bool:
    return (path / CLAP_META_PATH).is_file()


class _EpisodeConverter:
    """What Ray Data runs in its actor pool: each long-lived actor converts episode after episode,
    instead of a task per block paying again for shipping the source and importing the readers
    (which cost more than converting a short episode)."""

    def __init__(self, source: Source, staging: StagingArea, video: VideoOptions):
        self.source, self.staging, self.video = source, staging, video

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        outcomes = [convert_episode(self.source, pickle.loads(blob), self.staging, self.video) for blob in batch["ref"]]
        return {"outcome": [json.dumps(asdict(o)) for o in outcomes]}


def _convert_on_ray(
    source: Source, refs: list[EpisodeRef], staging: StagingArea, video: VideoOptions, workers: int | None
) -> Iterator[EpisodeOutcome]:
    """Stream outcomes back as actors finish episodes (order not preserved)."""
    import ray

    pool = min(len(refs), workers or max(1, int(ray.available_resources().get("CPU", 1))))
    items = [{"ref": pickle.dumps(ref)} for ref in refs]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), pool * _BLOCKS_PER_WORKER)))
    with warnings.catch_warnings():
        # max_restarts=0: an actor that dies fails the run (rerunning it resumes), rather than Ray
        # restarting it from constructor arguments it may no longer hold, which Ray warns about
        # on every run. Ray 2.60 (pinned) only takes it through the deprecated remote-args route;
        # revisit before moving to Ray 2.64.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        converted = dataset.map_batches(
            _EpisodeConverter, fn_constructor_args=(source, staging, video), batch_size=1, num_cpus=1,
            concurrency=pool, max_restarts=0,
        )
    for batch in converted.iter_batches(batch_size=1, batch_format="numpy"):
        for text in batch["outcome"]:
            yield EpisodeOutcome(**json.loads(str(text)))


class _InOrderAssembly:
    """Appends staged episodes to the v3 dataset in source order, each as soon as every episode before it is settled
    (staged, or quarantined), so that assembly runs on the driver while the workers are still converting instead of
    alone after them. The order is the source's whatever order the workers finish in, so the output is still a pure
    function of the staged episodes (what makes a resumed run byte-identical); memory is the set of settled orders
    not yet appended (bounded by how far the workers run ahead) plus the assembler's O(1) per file."""

    def __init__(self, source: Source, refs: list[EpisodeRef], staging: StagingArea, work: Path):
        self.source, self.refs, self.staging = source, refs, staging
        self.assembler = DatasetAssembler(work, source.fps, source.embodiment, source.cameras)
        self.rejected: dict[int, dict[str, Any]] = {}  # quarantined at assembly (inconsistent_video)
        self._settled: set[int] = set()
        self._next = 0
        self.seconds = 0.0  # spent appending episodes

    def settle(self, orders: Iterable[int]) -> None:
        """These episodes are settled: append every episode whose turn has come."""
        self._settled.update(orders)
        while self._next < len(self.refs) and self.refs[self._next].order in self._settled:
            ref = self.refs[self._next]
            self._settled.discard(ref.order)
            self._append(ref)
            self._next += 1

    def _append(self, ref: EpisodeRef) -> None:
        started = time.perf_counter()
        try:
            self._append_staged(ref)
        finally:
            self.seconds += time.perf_counter() - started

    def _append_staged(self, ref: EpisodeRef) -> None:
        record = self.staging.staged_episode(ref, check_sources=False)  # check_episode names a changed source
        if record is None:  # quarantined by its worker
            return
        problem = self.assembler.check_episode(record)
        if problem:
            camera, why = problem
            video_file = record["videos"][camera]["source_file"]
            self.rejected[ref.order] = {
                "order": ref.order, "source_episode": ref.source_episode, "category": "inconsistent_video",
                "file": video_file, "reason": f"episode {ref.source_episode} ({video_file}): {why}",
            }
            return
        provenance = {
            "dataset": self.source.name, "dataset_id": source_dataset_id(self.source.name, self.source.root),
            "episode_id": ref.source_episode, "path": ref.path, **record["extra"],
        }
        staged = self.staging.episode_dir(ref)
        self.assembler.add_episode(pq.read_table(staged / STAGED_FRAMES), record, provenance, staged)

    def finish(self, clap_meta: dict[str, Any]) -> tuple[int, int, list[dict[str, str]]]:
        """Append what is left (every episode is settled by now) and write the metadata; the episodes and frames
        written and the quarantine, in source order."""
        self.settle(ref.order for ref in self.refs)
        quarantine = {int(r["order"]): r for r in self.staging.quarantine_records()} | self.rejected
        records = [quarantine[order] for order in sorted(quarantine)]
        if self.assembler.episodes == 0:
            raise _NothingWritten(records)
        self.assembler.finish(clap_meta, records)
        return self.assembler.episodes, self.assembler.frames, records


class _NothingWritten(Exception):
    def __init__(self, quarantine: list[dict[str, str]]):
        super().__init__("no episode could be ingested")
        self.quarantine = quarantine


def ingest(source: Source, request: IngestRequest, reporter: Reporter | None = None) -> IngestReport:
    """Run the whole ingest. Raises ClapDataError for problems that stop the run; a run that
    stops leaves nothing beside ``--out`` unless a rerun can resume from it (the lock file and the
    error logs excepted)."""
    reporter = reporter or SilentReporter()
    out = request.out.absolute()
    staging = StagingArea(out)
    with staging.locked(request.wait, reporter.phase):
        try:
            report = _ingest_locked(source, request, staging, reporter)
        except BaseException:
            if not staging.has_resumable_work():
                staging.remove()
            raise
        if report.written == 0 and not staging.has_resumable_work():
            staging.remove()
    return report


def _convert(source: Source, todo: list[EpisodeRef], staging: StagingArea, request: IngestRequest, reporter: Reporter,
             report: IngestReport, assembly: _InOrderAssembly) -> None:
    """Convert ``todo`` on Ray, handing each episode to the assembly as it comes back and counting its phases."""
    with ray_session(request.address, request.workers):
        reporter.start(report.listed, report.resumed)
        try:
            for outcome in _convert_on_ray(source, todo, staging, request.video, request.workers):
                reporter.advance(outcome.status != "quarantined", outcome.frames)
                for phase, seconds in outcome.phases.items():
                    report.episode_phase_seconds[phase] += seconds
                assembly.settle([outcome.order])
        finally:
            reporter.stop()


def _ingest_locked(source: Source, request: IngestRequest, staging: StagingArea, reporter: Reporter) -> IngestReport:
    started = time.perf_counter()
    out = staging.out
    report = IngestReport(out=str(out), cameras=list(source.cameras))
    run_options = {"clap_data": __version__, "source": source.describe(), "video": asdict(request.video)}
    finished = _finish_interrupted_publish(staging, run_options)
    if finished is not None:
        finished.already_complete = True
        return finished
    check_output_folder(out, request.overwrite, _is_clap_dataset, "dataset")
    staging.prepare(run_options, discard_mismatch=request.overwrite)
    listing = time.perf_counter()
    refs = source.list_episodes()
    if not refs:
        raise ClapDataError(f"the source {source.root} lists no episodes")
    report.listed = len(refs)
    report.notices = list(source.notices)  # listing may add some (e.g. unreadable shard headers)
    todo = [ref for ref in refs if staging.staged_episode(ref) is None]
    report.resumed = len(refs) - len(todo)
    converting = time.perf_counter()
    report.step_seconds["listing"] = converting - listing
    for notice in source.notices:
        reporter.phase(f"note: {notice}")
    reporter.phase(f"Converting {len(todo)} of {len(refs)} episodes" + (f" ({report.resumed} already staged)" if report.resumed else ""))
    try:
        with building_dir(staging.dataset_dir) as work:
            assembly = _InOrderAssembly(source, refs, staging, work)
            converting_now = {ref.order for ref in todo}
            assembly.settle(ref.order for ref in refs if ref.order not in converting_now)  # staged by an earlier run
            if todo:
                _convert(source, todo, staging, request, reporter, report, assembly)
            assembling = time.perf_counter()
            report.step_seconds["converting"] = assembling - converting  # the assembly done meanwhile included
            report.error_log = str(staging.logs_dir) if staging.has_error_logs() else ""
            reporter.phase("Assembling the LeRobot v3.0 dataset")
            clap_meta = {
                "embodiment": source.embodiment,
                "source": source.describe(),
                "video": {"mode": "re-encode" if request.video.reencode else "stream-copy", **asdict(request.video)},
                "notices": list(source.notices),
            }
            report.written, report.frames, report.quarantine = assembly.finish(clap_meta)
            report.assembly_seconds = assembly.seconds
    except _NothingWritten as nothing:
        report.quarantine = nothing.quarantine
        report.seconds = time.perf_counter() - started
        return report
    publishing = time.perf_counter()
    report.step_seconds["assembling"] = publishing - assembling
    write_json_atomic(staging.root / _PUBLISHING, asdict(report))
    _publish(staging)
    report.seconds = time.perf_counter() - started
    report.step_seconds["publishing"] = time.perf_counter() - publishing
    return report


def _publish(staging: StagingArea) -> None:
    """Move the new dataset into place. A column update of the dataset it replaces that was
    interrupted belongs to the old files: it is dropped, never applied to the new ones."""
    staging.publish()
    ColumnUpdate(staging.out).discard()
    staging.remove()


def _finish_interrupted_publish(staging: StagingArea, run_options: dict[str, Any]) -> IngestReport | None:
    """If a run with these options was killed while publishing, complete it and return its report."""
    marker = staging.root / _PUBLISHING
    if not marker.is_file() or staging.run_options() != run_options:
        return None
    report = IngestReport(**json.loads(marker.read_text()))
    if staging.dataset_dir.is_dir():
        _publish(staging)
    staging.remove()
    return report
