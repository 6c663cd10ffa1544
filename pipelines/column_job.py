"""The batch-inference column job every model stage shares (tokenize, pseudo-label, …).

A stage brings two things — a reader that turns row groups into model inputs, and a model actor
— and gets the rest from here, once: the dataset's exclusive lock; the check that the dataset it
looked at before taking the lock is still the one on disk and still matches its manifest; "same
producer as the columns already there? then nothing changes, not even an mtime"; the actor-pool
shape (one actor per GPU, or CPU actors with their share of cores); the collection of each data
file's rows as batches come back in any order; the atomic, resumable column update
(:mod:`clap_data.lerobot_v3.column_update`) and the provenance entry in ``meta/clap_data.json``.

The stage's encoder yields numpy batches with ``file`` (data file, relative to the root),
``group`` (row group), ``row`` (row within the group) and one array per output column.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.column_update import ColumnUpdate
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.locking import dataset_lock
from clap_data.models.tokens import TOKEN_ORDER_STORAGE, TOKEN_ORDER_TEXT
from clap_data.progress import Reporter, SilentReporter
from clap_data.ray_runtime import ray_session
from clap_data.schemas import ARM_MASK_NAMES, PADDED_COLUMN_OF

READER_TASK_CPUS = 0.25  # what a reader task asks for; the model actors leave it free
CORES_PER_CPU_ACTOR = 4

Batch = dict[str, np.ndarray]
Encoder = Callable[[Path, list[str]], Iterator[Batch]]


@dataclass(frozen=True)
class OutputColumn:
    """One column a job adds: ``width`` values of ``dtype`` per row (None: a scalar per row)."""

    name: str
    dtype: str
    width: int | None = None

    def arrow(self, values: np.ndarray) -> pa.Array:
        flat = pa.array(values.reshape(-1), pa.from_numpy_dtype(np.dtype(self.dtype)))
        return flat if self.width is None else pa.FixedSizeListArray.from_arrays(flat, self.width)


@dataclass(frozen=True)
class ColumnJob:
    """What a stage adds to a dataset, and who it is.

    ``identity`` is stored as the ``info`` of the first column's feature: a rerun whose identity
    equals the stored one changes nothing. ``features`` are the new columns' ``meta/info.json``
    entries; ``provenance`` is recorded under ``tokenizers[<first column>]`` in ``meta/clap_data.json``.
    ``flag_column`` (a bool column, e.g. padded) is counted for the summary.
    """

    purpose: str
    columns: tuple[OutputColumn, ...]
    identity: dict[str, Any]
    features: dict[str, dict[str, Any]]
    provenance: dict[str, Any]
    flag_column: str | None = None

    @property
    def key(self) -> str:
        return self.columns[0].name


def token_orders(column: str) -> dict[str, Any]:
    """The layout facts every token column's identity states: storage and text order, arm order, and
    which column flags its padded rows."""
    return {
        "token_order": TOKEN_ORDER_STORAGE, "text_order": TOKEN_ORDER_TEXT, "arm_order": list(ARM_MASK_NAMES),
        "padded_column": PADDED_COLUMN_OF[column],
    }


def token_column_job(purpose: str, column: str, identity: dict[str, Any], provenance: dict[str, Any]) -> ColumnJob:
    """The job of a token stage (``action_tokens``, ``pseudo_tokens``): int16 ``[2·Nq]`` codes per frame,
    left arm's then right's, plus the bool padded flag, with ``identity`` (holding ``num_queries``) as the
    feature's info."""
    nq = identity["num_queries"]
    padded = PADDED_COLUMN_OF[column]
    names = [f"{arm}_{i}" for arm in ARM_MASK_NAMES for i in range(nq)]
    return ColumnJob(
        purpose=purpose,
        columns=(OutputColumn(column, "int16", 2 * nq), OutputColumn(padded, "bool")),
        identity=identity,
        features={
            column: {"dtype": "int16", "shape": [2 * nq], "names": names, "info": identity},
            padded: {"dtype": "bool", "shape": [1], "names": None},
        },
        provenance=provenance,
        flag_column=padded,
    )


@dataclass
class ColumnJobReport:
    dataset: str
    identity: dict[str, Any]
    unchanged: bool = False
    replaced: dict[str, Any] | None = None  # the identity of the columns that were replaced
    files: int = 0
    resumed_files: int = 0
    frames: int = 0
    flagged: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class PoolShape:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: int
    threads: int  # torch intra-op threads per CPU actor


def pool_shape(cpus: int, gpus: int, workers: int | None) -> PoolShape:
    """The model pool for this many CPUs and GPUs.

    The actors hold their CPUs for the whole run, yet the readers must still get CPU time: each
    asks for :data:`READER_TASK_CPUS`. With GPUs: one actor per GPU. On CPU: one actor per 4 cores,
    each running torch on its share of the cores (large batches use intra-op threads well; many
    single-thread actors would each hold a copy of the model).
    """
    if gpus:
        return PoolShape(gpus, 0.0, 1, 1)
    actors = max(1, min(workers or cpus, -(-cpus // CORES_PER_CPU_ACTOR)))
    actor_cpus = (cpus - READER_TASK_CPUS) / actors
    return PoolShape(actors, actor_cpus, 0, max(1, round(actor_cpus)))


def cluster_pool_shape(device: str, workers: int | None) -> PoolShape:
    """:func:`pool_shape` for the Ray cluster this process is connected to."""
    import ray

    resources = ray.available_resources()
    gpus = int(resources.get("GPU", 0)) if device.startswith("cuda") else 0
    return pool_shape(max(1, int(resources.get("CPU", 1))), gpus, workers)


def row_groups(root: Path, files: list[str]) -> list[dict[str, Any]]:
    """One work item per row group of ``files`` (an episode never spans two row groups)."""
    return [{"file": f, "group": g} for f in files for g in range(pq.ParquetFile(root / f).num_row_groups)]


def readers_then_model(
    items: list[dict[str, Any]], reader: Callable[..., Batch], reader_kwargs: dict[str, Any], model: type,
    model_kwargs: dict[str, Any], *, batch_size: int, device: str, workers: int | None,
) -> Iterator[Batch]:
    """The two Ray Data stages every stage runs: ``reader`` tasks (one work item each, a share of a CPU)
    feeding a pool of ``model`` actors shaped by :func:`cluster_pool_shape` (their constructor also gets
    ``device`` and ``threads``), ``batch_size`` reader rows per model call; batches stream back in any order."""
    import ray

    pool = cluster_pool_shape(device, workers)
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * cpus)))
    inputs = dataset.map_batches(reader, fn_kwargs=reader_kwargs, batch_size=1, num_cpus=READER_TASK_CPUS)
    with warnings.catch_warnings():
        # max_restarts=0 goes through Ray 2.60's deprecated remote-args route: see pipelines/ingest.py
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        outputs = inputs.map_batches(
            model, fn_constructor_kwargs={**model_kwargs, "device": device, "threads": pool.threads},
            batch_size=batch_size, concurrency=pool.actors, num_gpus=pool.gpus_per_actor,
            num_cpus=pool.cpus_per_actor, max_restarts=0,
        )
    yield from outputs.iter_batches(batch_size=None, batch_format="numpy")


@dataclass
class _Pending:
    values: dict[str, np.ndarray]
    left: int


@dataclass
class _FileCollector:
    """Gathers each data file's rows as batches arrive (in any order) and stages a file as soon as
    all its rows are in: memory holds the outputs of the files in flight, not of the dataset."""

    root: Path
    job: ColumnJob
    update: ColumnUpdate
    reporter: Reporter
    offsets: dict[str, list[int]] = field(default_factory=dict)
    pending: dict[str, _Pending] = field(default_factory=dict)
    group_left: dict[tuple[str, int], int] = field(default_factory=dict)
    frames: int = 0
    flagged: int = 0

    def expect(self, files: list[str]) -> None:
        for relative in files:
            meta = pq.ParquetFile(self.root / relative).metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self.offsets[relative] = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
            values = {
                c.name: np.zeros((meta.num_rows,) if c.width is None else (meta.num_rows, c.width), np.dtype(c.dtype))
                for c in self.job.columns
            }
            self.pending[relative] = _Pending(values, meta.num_rows)
            self.group_left.update({(relative, g): n for g, n in enumerate(sizes)})

    def add(self, batch: Batch) -> None:
        for name in np.unique(batch["file"]):
            mine = batch["file"] == name
            relative = str(name)
            if relative not in self.pending:
                raise ClapDataError(f"the pipeline returned rows of {relative}, which was not asked for or is complete")
            entry = self.pending[relative]
            groups, rows = batch["group"][mine].astype(int), batch["row"][mine].astype(int)
            index = np.asarray(self.offsets[relative])[groups] + rows
            for column in self.job.columns:
                entry.values[column.name][index] = batch[column.name][mine]
            entry.left -= int(mine.sum())
            for group, count in zip(*np.unique(groups, return_counts=True), strict=True):
                key = (relative, int(group))
                self.group_left[key] -= int(count)
                if self.group_left[key] == 0:
                    self.reporter.advance(True, self.offsets[relative][int(group) + 1] - self.offsets[relative][int(group)])
            if entry.left == 0:
                self._stage(relative, self.pending.pop(relative))

    def _stage(self, relative: str, entry: _Pending) -> None:
        columns = {c.name: c.arrow(entry.values[c.name]) for c in self.job.columns}
        self.update.write_data_file(relative, columns, replace=[c.name for c in self.job.columns])
        rows = len(next(iter(entry.values.values())))
        self.frames += rows
        if self.job.flag_column:
            self.flagged += int(entry.values[self.job.flag_column].sum())

    def check_complete(self) -> None:
        if self.pending:
            raise ClapDataError(f"the pipeline returned no outputs for some rows of {next(iter(self.pending))}")


def _check_manifest(meta: DatasetMetadata) -> None:
    """The files still match the manifest (sizes: a stat per file); a damaged dataset is not updated."""
    manifest = meta.manifest()
    problems = manifest.size_problems(meta.root) if manifest else []
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ClapDataError(
            f"{meta.root} does not match its manifest: {problems[0]}{more}; nothing was written. "
            f"Run `clap-data verify {meta.root}` for every problem, then re-ingest the dataset"
        )


def _input_identity(meta: DatasetMetadata, files: list[str]) -> dict[str, Any]:
    """What the staged outputs depend on besides the producer: the data files as they are."""
    manifest = meta.manifest()
    if manifest is not None:
        return {f: manifest.files.get(f) for f in files}
    return {f: [(meta.root / f).stat().st_size, (meta.root / f).stat().st_mtime_ns] for f in files}


Preparation = Callable[[DatasetMetadata], tuple[ColumnJob, Encoder]]


def run_column_job(
    root: Path, prepare: Preparation, *, reporter: Reporter | None = None, address: str | None = None,
    workers: int | None = None, wait: bool = False, device: str = "cpu",
) -> ColumnJobReport:
    """Add or replace the columns of the job ``prepare`` makes for the dataset at ``root`` (see the
    module docstring).

    ``prepare`` reads what the job needs (the embodiment, statistics, the model's identity) and
    refuses what it cannot work on — before the lock, so refusals are immediate. Under the lock the
    dataset must still be the one it read: if another command replaced or updated it meanwhile, the
    job refuses, or with ``wait`` (it waited for that command) prepares again on the dataset as it is.
    """
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    before = DatasetMetadata.load(root)
    job, encode = prepare(before)
    with dataset_lock(before.root, exclusive=True, purpose=job.purpose, wait=wait, on_wait=reporter.phase):
        if DatasetMetadata.load(before.root).snapshot() != before.snapshot():
            if not wait:
                raise ClapDataError(
                    f"{before.root} changed while {job.purpose} was starting (another command replaced or updated it); "
                    "nothing was written: rerun to work on the dataset as it is now"
                )
            reporter.phase(f"{before.root} changed while {job.purpose} waited for it: preparing again")
            job, encode = prepare(DatasetMetadata.load(before.root))
        report = _update_columns(before.root, job, encode, reporter, address, workers, device)
    report.seconds = time.perf_counter() - started
    return report


def _update_columns(
    root: Path, job: ColumnJob, encode: Encoder, reporter: Reporter, address: str | None, workers: int | None, device: str,
) -> ColumnJobReport:
    """The part under the lock: roll an interrupted commit forward, then unchanged / stage / commit."""
    report = ColumnJobReport(dataset=str(root), identity=job.identity)
    update = ColumnUpdate(root)
    update.finish_interrupted_commit()
    meta = DatasetMetadata.load(root)
    _check_manifest(meta)
    current = meta.token_identity(job.key)
    if current == job.identity and job.key not in meta.clap.get("stale_columns", {}):  # stale: recompute it
        update.abandon()
        report.unchanged = True
        report.frames = meta.total_frames
        return report
    report.replaced = current
    files = meta.data_files()
    done = update.prepare({"identity": job.identity, "inputs": _input_identity(meta, files)}, files)
    todo = [f for f in files if f not in done]
    report.files, report.resumed_files = len(files), len(done)
    resumed = f" ({len(done)} staged by an earlier run)" if done else ""
    reporter.phase(f"{job.purpose}: {len(todo)} of {len(files)} data files on {device}{resumed}")
    if todo:
        collector = _FileCollector(root, job, update, reporter)
        collector.expect(todo)
        with ray_session(address, workers):
            reporter.start(len(collector.group_left), 0)
            try:
                for batch in encode(root, todo):
                    collector.add(batch)
            finally:
                reporter.stop()
        collector.check_complete()
        report.frames, report.flagged = collector.frames, collector.flagged
    replaced = {c.name for c in job.columns}
    info = {**meta.info, "features": {k: v for k, v in meta.features.items() if k not in replaced} | job.features}
    tokenizers = {**meta.clap.get("tokenizers", {}), job.key: job.provenance}
    update.commit(info, _fresh_clap_meta(meta.clap, tokenizers, replaced), files, meta.manifest())
    return report


def _fresh_clap_meta(clap: dict[str, Any], tokenizers: dict[str, Any], written: set[str]) -> dict[str, Any]:
    """The dataset's clap metadata after the update: the new tokenizer provenance, and the columns just written no
    longer listed as stale (``clap-data adopt`` flags pixel-derived columns whose videos may have changed)."""
    fresh = {**clap, "tokenizers": tokenizers}
    if "stale_columns" in clap:
        fresh["stale_columns"] = {column: why for column, why in clap["stale_columns"].items() if column not in written}
    return fresh
