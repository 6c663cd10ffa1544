"""Tokenize pipeline: a unified robot dataset + an Act-VAE checkpoint → ``action_tokens`` per frame.

Ray Data batch inference in two stages (DESIGN.md): CPU tasks read one episode's row group at a
time and build its normalised dual-arm chunks (METHOD.md §2, exactly what ``clap-data chunk``
prints) → an actor pool holding the model (one actor per GPU, or CPU actors) encodes batches of
chunks to ``2·Nq`` int16 codes (left arm's, then right arm's). The driver collects the codes of a
data file and stages the file with two new columns:

* ``action_tokens``: int16 ``[2·Nq]`` (16 for the release model), the chunk starting at that frame;
* ``action_tokens_padded``: bool, the chunk ran past the episode's end (tail repeated).

``meta/info.json`` describes both, and the ``action_tokens`` feature's ``info`` holds the
tokenizer's identity (checkpoint sha256, Nq, K, chunk size, statistics id, token and arm order), so
a consumer knows how to decode them. The update is atomic and resumable
(:mod:`clap_data.lerobot_v3.column_update`); re-running with the same checkpoint and statistics
changes nothing, another checkpoint replaces the columns and the provenance.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_data.actions import CHUNK_SIZE, HUMAN, episode_chunks, model_chunks
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.column_update import ColumnUpdate, data_files
from clap_data.models import TOKEN_ORDER_STORAGE, TOKEN_ORDER_TEXT
from clap_data.norm_stats import load_norm_stats, robot_type
from clap_data.progress import Reporter, SilentReporter
from clap_data.ray_runtime import ray_session
from clap_data.schemas import ARM_MASK_NAMES, read_clap_meta

TOKENS_COLUMN = "action_tokens"
PADDED_COLUMN = "action_tokens_padded"
_CORES_PER_CPU_ACTOR = 4
_CHUNK_TASK_CPUS = 0.25
_ARRAY_COLUMNS = ["episode_index", "frame_index", "observation.state", "action", "arm_mask"]


@dataclass(frozen=True)
class TokenizeRequest:
    ckpt: Path
    stats: str = "openclap"
    device: str = "auto"
    batch_size: int = 4096  # chunks per model call
    workers: int | None = None
    address: str | None = None


@dataclass
class TokenizeReport:
    dataset: str
    identity: dict[str, Any]
    unchanged: bool = False
    replaced: dict[str, Any] | None = None  # the identity of the tokens that were replaced
    files: int = 0
    resumed_files: int = 0
    frames: int = 0
    padded: int = 0
    seconds: float = 0.0


def tokenizer_identity(model: Any, sha256: str, stats_id: str) -> dict[str, Any]:
    """What a consumer needs to know to trust and decode the tokens (stored in the feature's info)."""
    c = model.config
    return {
        "tokenizer": "act-vae",
        "checkpoint_sha256": sha256,
        "num_queries": c.num_queries,
        "codebook_size": c.codebook_size,
        "code_dim": c.code_dim,
        "chunk_size": c.chunk_size,
        "stats_id": stats_id,
        "token_order": TOKEN_ORDER_STORAGE,
        "text_order": TOKEN_ORDER_TEXT,
        "arm_order": list(ARM_MASK_NAMES),
        "padded_column": PADDED_COLUMN,
    }


def token_features(identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nq = identity["num_queries"]
    names = [f"{arm}_{i}" for arm in ARM_MASK_NAMES for i in range(nq)]
    return {
        TOKENS_COLUMN: {"dtype": "int16", "shape": [2 * nq], "names": names, "info": identity},
        PADDED_COLUMN: {"dtype": "bool", "shape": [1], "names": None},
    }


def _build_chunks(batch: dict[str, np.ndarray], root: str, stats: Any) -> dict[str, Any]:
    """Ray task: one row group (episodes are never split across row groups) → its frames' chunks."""
    out: dict[str, list[Any]] = {"file": [], "group": [], "row": [], "chunk": [], "padded": []}
    for relative, group in zip(batch["file"], batch["group"], strict=True):
        table = pq.ParquetFile(Path(root) / str(relative)).read_row_group(int(group), columns=_ARRAY_COLUMNS)
        episodes = table.column("episode_index").to_numpy()
        frames = table.column("frame_index").to_numpy()

        def matrix(name: str, rows: np.ndarray) -> np.ndarray:
            return np.asarray(table.column(name).combine_chunks().flatten(), dtype=np.float64).reshape(table.num_rows, -1)[rows]

        for episode in np.unique(episodes):
            rows = np.flatnonzero(episodes == episode)
            if not np.array_equal(frames[rows], np.arange(len(rows))):
                raise ClapDataError(f"{relative}: episode {episode} is not complete within one row group; the dataset was not written by clap-data")
            relative_chunks, padded = episode_chunks(matrix("observation.state", rows), matrix("action", rows))
            chunks = model_chunks(relative_chunks, matrix("arm_mask", rows), stats).astype(np.float32)
            out["file"].extend([str(relative)] * len(rows))
            out["group"].extend([int(group)] * len(rows))
            out["row"].extend(rows.tolist())
            out["chunk"].extend(chunks)
            out["padded"].extend(padded.tolist())
    return {key: np.asarray(values) if key != "chunk" else np.stack(values) for key, values in out.items()} if out["row"] else out


class _ActVAETokenizer:
    """Ray actor: loads the checkpoint once, then encodes batch after batch of dual-arm chunks."""

    def __init__(self, ckpt: str, device: str, threads: int) -> None:
        import torch

        from clap_data.act_vae.checkpoint import load_act_vae

        if device == "cpu":
            torch.set_num_threads(threads)  # the actor's share of the cores, no more
        self.torch = torch
        self.device = device
        self.model, _ = load_act_vae(Path(ckpt), device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks = self.torch.from_numpy(np.ascontiguousarray(batch["chunk"], dtype=np.float32)).to(self.device)
        tokens = self.model.tokenize_dual(chunks).cpu().numpy()
        return {"file": batch["file"], "group": batch["group"], "row": batch["row"], "tokens": tokens, "padded": batch["padded"]}


def actor_pool_shape(cpus: int, gpus: int, workers: int | None) -> tuple[int, float, int]:
    """``(actors, CPUs per actor, torch threads per actor)`` of the model pool.

    The actors hold their CPUs for the whole run, yet chunk building (about 5 % of the model's
    cost) must still get CPU time: its tasks ask for a quarter of a CPU each. With GPUs: one actor
    per GPU. On CPU: one actor per 4 cores, each running torch on its share of the cores (large
    batches use intra-op threads well; many single-thread actors would each hold a model copy).
    """
    if gpus:
        return gpus, 0.0, 1
    pool = max(1, min(workers or cpus, -(-cpus // _CORES_PER_CPU_ACTOR)))
    actor_cpus = (cpus - _CHUNK_TASK_CPUS) / pool
    return pool, actor_cpus, max(1, round(actor_cpus))


def _encode_on_ray(root: Path, files: list[str], stats: Any, request: TokenizeRequest, device: str) -> Iterator[dict[str, np.ndarray]]:
    import ray

    items = [{"file": f, "group": g} for f in files for g in range(pq.ParquetFile(root / f).num_row_groups)]
    gpus = int(ray.available_resources().get("GPU", 0)) if device.startswith("cuda") else 0
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    pool, actor_cpus, threads = actor_pool_shape(cpus, gpus, request.workers)
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * cpus)))
    chunks = dataset.map_batches(_build_chunks, fn_kwargs={"root": str(root), "stats": stats}, batch_size=1, num_cpus=_CHUNK_TASK_CPUS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")  # see pipelines/ingest.py
        tokens = chunks.map_batches(
            _ActVAETokenizer, fn_constructor_kwargs={"ckpt": str(request.ckpt), "device": device, "threads": threads},
            batch_size=request.batch_size, concurrency=pool, num_gpus=1 if gpus else 0, num_cpus=actor_cpus,
            max_restarts=0,
        )
    yield from tokens.iter_batches(batch_size=None, batch_format="numpy")


class _FileCollector:
    """Gathers the codes of each data file as they arrive (in any order) and stages a file as soon
    as all its rows are in: memory holds the codes of the files in flight, not of the dataset."""

    def __init__(self, root: Path, files: list[str], width: int, update: ColumnUpdate, reporter: Reporter) -> None:
        self.update, self.reporter = update, reporter
        self.offsets: dict[str, list[int]] = {}
        self.pending: dict[str, dict[str, np.ndarray | int]] = {}
        self.group_left: dict[tuple[str, int], int] = {}
        for relative in files:
            meta = pq.ParquetFile(root / relative).metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self.offsets[relative] = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            self.pending[relative] = {"tokens": np.full((meta.num_rows, width), -1, np.int16), "padded": np.zeros(meta.num_rows, bool), "left": meta.num_rows}
            self.group_left.update({(relative, g): n for g, n in enumerate(sizes)})
        self.frames = self.padded = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for relative in np.unique(batch["file"]):
            mine = batch["file"] == relative
            relative = str(relative)
            entry = self.pending[relative]
            groups, rows = batch["group"][mine], batch["row"][mine]
            index = np.asarray(self.offsets[relative])[groups] + rows
            entry["tokens"][index] = batch["tokens"][mine]
            entry["padded"][index] = batch["padded"][mine]
            entry["left"] -= int(mine.sum())
            for group, count in zip(*np.unique(groups, return_counts=True), strict=True):
                key = (relative, int(group))
                self.group_left[key] -= int(count)
                if self.group_left[key] == 0:
                    self.reporter.advance(True, self.offsets[relative][int(group) + 1] - self.offsets[relative][int(group)])
            if entry["left"] == 0:
                self._stage(relative, self.pending.pop(relative))

    def _stage(self, relative: str, entry: dict[str, Any]) -> None:
        tokens, padded = entry["tokens"], entry["padded"]
        width = tokens.shape[1]
        columns = {
            TOKENS_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1), pa.int16()), width),
            PADDED_COLUMN: pa.array(padded, pa.bool_()),
        }
        self.update.write_data_file(relative, columns, replace=[TOKENS_COLUMN, PADDED_COLUMN])
        self.frames += len(padded)
        self.padded += int(padded.sum())

    def check_complete(self) -> None:
        if self.pending:
            raise ClapDataError(f"the pipeline returned no codes for some rows of {next(iter(self.pending))}")


def tokenize_dataset(root: Path, request: TokenizeRequest, reporter: Reporter | None = None) -> TokenizeReport:
    """Add or replace ``action_tokens`` in the dataset at ``root``; see the module docstring."""
    from clap_data.act_vae.checkpoint import load_act_vae
    from clap_data.act_vae.training import pick_device

    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    root = Path(root).absolute()
    read_clap_meta_or_fail(root)
    if robot_type(root) == HUMAN:
        raise ClapDataError(f"{root} is human video: it has no actions to tokenize (human video gets pseudo_tokens from the VD-VAE)")
    device = str(pick_device(request.device))
    model, sha256 = load_act_vae(request.ckpt, "cpu")
    if model.config.chunk_size != CHUNK_SIZE:
        raise ClapDataError(f"{request.ckpt} was trained on {model.config.chunk_size}-step chunks; datasets are chunked in {CHUNK_SIZE}")
    stats = load_norm_stats(root, request.stats)
    identity = tokenizer_identity(model, sha256, stats.stats_id)
    update = ColumnUpdate(root)
    report = TokenizeReport(dataset=str(root), identity=identity)
    with update.locked():
        update.finish_interrupted_commit()
        info = json.loads((root / layout.INFO_PATH).read_text())
        meta = read_clap_meta_or_fail(root)
        current = info["features"].get(TOKENS_COLUMN, {}).get("info")
        if current == identity:
            update.abandon()
            report.unchanged = True
            report.frames = int(info.get("total_frames", 0))
            report.seconds = time.perf_counter() - started
            return report
        report.replaced = current
        files = data_files(root)
        done = update.prepare({"identity": identity, "files": files})
        todo = [f for f in files if f not in done]
        report.files, report.resumed_files = len(files), len(done)
        reporter.phase(f"Tokenizing {len(todo)} of {len(files)} data files on {device}" + (f" ({len(done)} staged by an earlier run)" if done else ""))
        if todo:
            collector = _FileCollector(root, todo, 2 * model.config.num_queries, update, reporter)
            total_groups = len(collector.group_left)
            with ray_session(request.address, request.workers):
                reporter.start(total_groups, 0)
                try:
                    for batch in _encode_on_ray(root, todo, stats, request, device):
                        collector.add(batch)
                finally:
                    reporter.stop()
            collector.check_complete()
            report.frames, report.padded = collector.frames, collector.padded
        info["features"] = {k: v for k, v in info["features"].items() if k not in (TOKENS_COLUMN, PADDED_COLUMN)} | token_features(identity)
        tokenizers = dict(meta.get("tokenizers", {}))
        tokenizers[TOKENS_COLUMN] = {**identity, "checkpoint": str(Path(request.ckpt).absolute())}
        update.commit(info, {**meta, "tokenizers": tokenizers})
    report.seconds = time.perf_counter() - started
    return report


def read_clap_meta_or_fail(root: Path) -> dict[str, Any]:
    from clap_data.schemas import UnknownSchemaError

    if not (root / layout.INFO_PATH).is_file():
        raise ClapDataError(f"{root} is not a LeRobot dataset: {layout.INFO_PATH} is missing")
    try:
        return read_clap_meta(root)
    except UnknownSchemaError as exc:
        raise ClapDataError(str(exc)) from None
