"""Export pipeline: tokenized unified datasets → training shards (``clap_data.schemas.shards_v1``).

One row per chunk start ``t`` (every ``stride`` frames) of every episode, on the side of the shared held-out split
(:class:`clap_data.splits.Holdout`, keyed on provenance) the chunk falls: images at ``t`` (decoded once per
episode, resized, JPEG), embodiment, instruction, subtask, the tokens in storage and text order, the absolute
state, the normalised ``[32, 14]`` chunk and the arm mask. Robot rows carry ``action_tokens`` (padded chunks kept,
flagged); human rows carry ``pseudo_tokens``, and a human frame whose ``t + 32`` ran past the episode's end has no
valid pseudo-token and is left out.

Two Ray Data stages, each resumable:

1. **Stage** (the reader): one task per episode reads its rows, decodes each camera sequentially after one seek
   (:func:`clap_data.vd_vae.frame_pairs.iter_episode_frames`), encodes the sampled frames and writes the episode's
   rows to ``.<out>.clap-staging/episodes/<dataset>-<episode>.arrow`` (an Arrow IPC file, renamed into place when
   complete; a rerun skips it).
2. **Shard** (the writer): every sample's id is hashed with the seed; the hash picks its shard and, with a second
   draw, its place in the shard, so the shuffle is deterministic and needs no global sort of image rows (a shard is
   gathered row group by row group from the memory-mapped staged files). The shard count is the split's bytes ÷
   ``--shard-mb`` (at least one per non-empty split). Each shard is written to ``dataset/<split>/`` beside its record
   (rows, bytes, sha256); a rerun skips shards whose record is there.

Then ``manifest.json`` and one rename onto ``--out``. The output bytes are a function of the inputs and options only:
two exports, or a run killed at any point and rerun, give identical files.

Decisions, stated once:

* **Mixing weights are recorded, not applied.** Every sample is written exactly once; ``--mix`` weights go into the
  manifest and the loader (:mod:`clap_data.training.loader`) applies them per epoch, as streaming tools do, so
  changing a mix never needs a re-export.
* **An unreadable episode fails the export** (one sentence naming the file, nothing published) rather than being
  quarantined: the datasets were validated at ingest, so a video that no longer decodes is damage, and a training
  set that silently lost episodes is worse than a stop. Staged episodes are kept for the rerun.
* **Statistics** are the ones the Act-VAE tokens were made with (``stats_id`` of ``action_tokens``' identity); a
  dataset whose statistics changed since it was tokenized is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clap_data import __version__
from clap_data.actions import CHUNK_SIZE, HUMAN, NormStats, chunks_at, model_chunks
from clap_data.atomic import remove_temp_leftovers, temp_sibling, write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import column_matrix
from clap_data.locking import dataset_lock
from clap_data.models.tokens import text_tokens
from clap_data.norm_stats import load_norm_stats
from clap_data.pipelines.column_job import _check_manifest
from clap_data.progress import Reporter, SilentReporter
from clap_data.ray_runtime import ray_session
from clap_data.schemas import (
    ACTION_COLUMN,
    ACTION_TOKENS,
    ARM_MASK_COLUMN,
    PADDED_COLUMN_OF,
    PSEUDO_TOKENS,
    STATE_COLUMN,
)
from clap_data.schemas import shards_v1 as shards
from clap_data.sources.lerobot_layout import LeRobotLayout
from clap_data.splits import Holdout, episode_keys
from clap_data.staging import StagingArea, check_output_folder
from clap_data.vd_vae.frame_pairs import EpisodeVideo, episode_videos, iter_episode_frames

JPEG_QUALITY = 90
RESAMPLING = "bilinear"  # PIL's, antialiased when shrinking
ROW_GROUP_BYTES = 16 << 20  # what the loader holds per resident row group, about
NON_IMAGE_ROW_BYTES = 2048  # the rest of a row (mostly the 448 floats of the chunk), for the shard-count estimate
STAGE_BATCH_ROWS = 256  # rows an episode task holds before writing them out
_BLOCKS_PER_WORKER = 16
_PUBLISHING = "publishing.json"
_HELDOUT, _SHARD_KEY, _ORDER_KEY = "_heldout", "_shard_key", "_order_key"
_SPLITS = (shards.TRAIN_SPLIT, shards.HELDOUT_SPLIT)
_NOT_OPTIONS = ("out", "workers", "address", "overwrite", "wait", "mix")  # the mix is in the datasets' entries
_TOKENIZE_HINT = "clap-data tokenize act-vae {root} --ckpt ACT_VAE"
_PSEUDOLABEL_HINT = "clap-data pseudolabel vd-vae {root} --ckpt VD_VAE --backbone BACKBONE"


@dataclass(frozen=True)
class ExportRequest:
    out: Path
    cameras: tuple[str, ...] = shards.CAMERAS_IN_PROMPT_ORDER
    image_size: tuple[int, int] = (240, 320)  # (height, width)
    stride: int = 1
    mix: Mapping[str, float] = field(default_factory=dict)  # dataset (path, folder name or provenance id) → weight
    shard_mb: float = 500.0
    seed: int = 0
    holdout: Holdout = Holdout()
    workers: int | None = None
    address: str | None = None
    overwrite: bool = False
    wait: bool = False  # wait for another command holding a dataset instead of refusing
    row_group_bytes: int = ROW_GROUP_BYTES


@dataclass
class ExportReport:
    """What happened, for the summary screen and scripts; counts per split (``train``, ``heldout``)."""

    out: str
    samples: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)  # split → dataset id → samples
    embodiments: dict[str, dict[str, int]] = field(default_factory=dict)  # split → embodiment → samples
    padded: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    episodes: int = 0
    resumed_episodes: int = 0
    resumed_shards: int = 0
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    already_complete: bool = False


# --- what each dataset contributes, checked on the driver ---------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One ``--data`` dataset, checked: its token column and identity, statistics, cameras and episodes."""

    position: int  # in the sorted --data list: names its staged files
    meta: DatasetMetadata
    token_column: str
    identity: dict[str, Any]
    act_vae_sha256: str
    stats: NormStats | None
    cameras: tuple[str, ...]  # the export's cameras this dataset has
    keys: dict[int, str]  # episode index → provenance key
    weight: float

    @property
    def root(self) -> Path:
        return self.meta.root

    @property
    def dataset_ids(self) -> list[str]:
        return sorted({key.partition("/")[0] for key in self.keys.values()})


def _token_column(meta: DatasetMetadata) -> tuple[str, dict[str, Any], str]:
    """The column a dataset's samples take their tokens from, its identity and the Act-VAE it speaks."""
    human = meta.robot_type == HUMAN
    column = PSEUDO_TOKENS if human else ACTION_TOKENS
    identity = meta.token_identity(column)
    if identity is None:
        what = "human video" if human else f"{meta.robot_type} robot data"
        hint = (_PSEUDOLABEL_HINT if human else _TOKENIZE_HINT).format(root=meta.root)
        raise ClapDataError(f"{meta.root} is {what} without {column}, which the export needs: add them with `{hint}`")
    return column, identity, identity["act_vae_sha256"] if human else identity["checkpoint_sha256"]


def _statistics(meta: DatasetMetadata, identity: dict[str, Any]) -> NormStats | None:
    """The statistics the Act-VAE tokens were made with; refuses a dataset whose statistics changed since."""
    if meta.robot_type == HUMAN:
        return None
    wanted = identity["stats_id"]
    which = "openclap" if wanted.startswith("openclap:") else "dataset"
    stats = load_norm_stats(meta.root, which)
    if stats is None or stats.stats_id != wanted:
        found = stats.stats_id if stats else "none"
        raise ClapDataError(
            f"{meta.root}: its action_tokens were made with statistics {wanted}, but the dataset's {which} statistics "
            f"are now {found}; re-tokenize it (`{_TOKENIZE_HINT.format(root=meta.root)} --stats {which}`) first"
        )
    return stats


def _check_sources(sources: list[_Source]) -> None:
    """One Act-VAE vocabulary for every dataset, and no episode claimed by two datasets."""
    first = sources[0]
    for other in sources[1:]:
        if other.act_vae_sha256 != first.act_vae_sha256:
            raise ClapDataError(
                f"the datasets' tokens come from different Act-VAEs: {first.root} ({first.token_column}) from "
                f"{first.act_vae_sha256[:16]}…, {other.root} ({other.token_column}) from {other.act_vae_sha256[:16]}…; "
                "a policy reads one vocabulary: tokenize (or pseudo-label with a VD-VAE built on) the same Act-VAE"
            )
        if other.identity["num_queries"] != first.identity["num_queries"]:
            raise ClapDataError(f"{first.root} and {other.root} have tokens of different lengths (num_queries)")
    stats_of: dict[str, tuple[str, Path]] = {}
    for source in (s for s in sources if s.stats is not None):
        known = stats_of.setdefault(source.stats.embodiment, (source.stats.stats_id, source.root))
        if known[0] != source.stats.stats_id:
            raise ClapDataError(
                f"{known[1]} and {source.root} are both {source.stats.embodiment} but were tokenized with other "
                f"statistics ({known[0]} and {source.stats.stats_id}): a policy denormalises an embodiment one way; "
                "tokenize both with the same --stats"
            )
    owner: dict[str, Path] = {}
    for source in sources:
        for dataset_id in source.dataset_ids:
            if dataset_id in owner:
                raise ClapDataError(
                    f"{owner[dataset_id]} and {source.root} hold episodes of the same source dataset {dataset_id!r}: "
                    "their samples would share ids; export each source dataset once"
                )
            owner[dataset_id] = source.root


def _resolve_mix(
    mix: Mapping[str, float], metas: list[DatasetMetadata], ids: dict[Path, set[str]],
) -> dict[Path, float]:
    """``--mix`` names (a dataset's path, folder name or provenance id) → weight per dataset root (default 1)."""
    weights = {meta.root: 1.0 for meta in metas}
    for name, weight in mix.items():
        if not (weight >= 0 and math.isfinite(weight)):
            raise ClapDataError(f"--mix {name}={weight}: a weight must be a finite number ≥ 0")
        exact = [m.root for m in metas if m.root == Path(name).absolute()]
        found = exact or [m.root for m in metas if m.root.name == name or name in ids[m.root]]
        if len(found) != 1:
            known = ", ".join(str(m.root) for m in metas)
            why = "matches several datasets; give its path" if found else f"is none of the --data datasets ({known})"
            raise ClapDataError(f"--mix {name}={weight}: {name!r} {why}")
        weights[found[0]] = float(weight)
    return weights


def _plan_sources(roots: list[Path], request: ExportRequest) -> list[_Source]:
    if not roots:
        raise ClapDataError("give at least one dataset to export (--data)")
    metas = sorted((DatasetMetadata.load(root) for root in roots), key=lambda m: str(m.root))
    if len({m.root for m in metas}) != len(metas):
        raise ClapDataError("a dataset is given twice in --data")
    keys = {meta.root: episode_keys(meta) for meta in metas}
    ids = {root: {key.partition("/")[0] for key in by_episode.values()} for root, by_episode in keys.items()}
    weights = _resolve_mix(request.mix, metas, ids)
    sources = []
    for position, meta in enumerate(metas):
        column, identity, act_vae = _token_column(meta)
        cameras = tuple(c for c in request.cameras if c in meta.cameras)
        if not cameras:
            raise ClapDataError(f"{meta.root} has none of the cameras {', '.join(request.cameras)} "
                                f"(its cameras: {', '.join(meta.cameras) or 'none'}); choose --cameras it has")
        sources.append(_Source(position, meta, column, identity, act_vae, _statistics(meta, identity), cameras,
                               keys[meta.root], weights[meta.root]))
    _check_sources(sources)
    return sources


# --- stage 1: one episode → its rows (the reader) ----------------------------------------------------------------


@dataclass(frozen=True)
class _EpisodeWork:
    """What one Ray task needs to stage one episode (small and picklable)."""

    staged: Path
    log: Path
    data_file: Path
    episode_index: int
    key: str
    length: int
    embodiment: str
    token_column: str
    num_queries: int
    stats: NormStats | None
    tasks: dict[int, str]  # task index → text, the episode's only
    videos: dict[str, EpisodeVideo]  # camera → its video, for the export's cameras the dataset has
    cameras: tuple[str, ...]  # the export's cameras (columns)
    holdout: Holdout
    stride: int
    seed: int
    image_size: tuple[int, int]


def sample_keys(sample_id: str, seed: int) -> tuple[int, int]:
    """Two stable 64-bit draws from a sample's id and the seed: its shard (mod the count) and its place in it."""
    digest = hashlib.sha256(f"clap-shards:{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big")


def sample_frames(
    holdout: Holdout, key: str, length: int, stride: int, valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The chunk starts an episode contributes (``t % stride == 0`` and ``valid[t]``), in order, and which of them
    are held out (:meth:`Holdout.starts`: in tail mode training chunks end before the held-out tail)."""
    train, held = holdout.starts(key, length, False), holdout.starts(key, length, True)
    frames = np.concatenate([train, held])
    heldout = np.concatenate([np.zeros(len(train), bool), np.ones(len(held), bool)])
    keep = (frames % stride == 0) & valid[frames]
    order = np.argsort(frames[keep], kind="stable")
    return frames[keep][order], heldout[keep][order]


def encode_jpeg(pixels: np.ndarray, size: tuple[int, int]) -> bytes:
    """One RGB frame resized to ``size`` (height, width; aspect not kept, as the backbone sees it) as JPEG."""
    from PIL import Image

    image = Image.fromarray(pixels)
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _encoded_frames(work: _EpisodeWork, frames: np.ndarray) -> Iterator[dict[str, bytes]]:
    """The JPEGs of each camera at ``frames`` (ascending), every camera decoded once, in lockstep."""
    cameras = [c for c in work.cameras if c in work.videos]
    wanted = set(frames.tolist())
    streams = [iter_episode_frames(work.videos[c]) for c in cameras]
    try:
        for t, pixels in enumerate(zip(*streams, strict=False)):
            if t in wanted:
                yield {c: encode_jpeg(p, work.image_size) for c, p in zip(cameras, pixels, strict=True)}
                if t == frames[-1]:
                    return
    finally:
        for stream in streams:
            stream.close()
    raise ClapDataError(f"{work.videos[cameras[0]].path}: episode {work.episode_index} has fewer frames than its rows")


def staged_schema(cameras: tuple[str, ...], num_tokens: int) -> pa.Schema:
    """The shard schema plus what the writer needs: the split and the two hash draws."""
    extra = [(_HELDOUT, pa.bool_()), (_SHARD_KEY, pa.uint64()), (_ORDER_KEY, pa.uint64())]
    return pa.schema([*shards.shard_arrow_schema(cameras, num_tokens), *extra])


def _read_episode(work: _EpisodeWork) -> pa.Table:
    """The episode's rows, in frame order (one row group of its data file)."""
    columns = ["frame_index", "task_index", "subtask", STATE_COLUMN, ACTION_COLUMN, ARM_MASK_COLUMN,
               work.token_column, PADDED_COLUMN_OF[work.token_column]]
    table = pq.read_table(work.data_file, columns=columns, filters=[("episode_index", "=", work.episode_index)])
    table = table.sort_by("frame_index")
    if not np.array_equal(table.column("frame_index").to_numpy(), np.arange(work.length)):
        raise ClapDataError(f"{work.data_file}: episode {work.episode_index} does not hold frames 0..{work.length - 1} "
                            "in its rows; the dataset was not written by clap-data")
    return table


def _episode_values(work: _EpisodeWork) -> tuple[dict[str, Any], np.ndarray]:
    """Every column of the episode's samples but the images, and the sampled frames."""
    table = _read_episode(work)
    state, action, arm_mask = (column_matrix(table, c) for c in (STATE_COLUMN, ACTION_COLUMN, ARM_MASK_COLUMN))
    padded = table.column(PADDED_COLUMN_OF[work.token_column]).to_numpy(zero_copy_only=False)
    valid = ~padded if work.embodiment == HUMAN else np.ones_like(padded)  # a padded pseudo-token is no label
    frames, heldout = sample_frames(work.holdout, work.key, work.length, work.stride, valid)
    n = len(frames)
    if work.stats is None:  # human: no action labels (METHOD.md §2)
        actions = np.zeros((n, CHUNK_SIZE, shards.ACTION_DIM))
    else:
        chunks, _ = chunks_at(state, action, frames, np.full(n, work.length - 1))
        actions = model_chunks(chunks, arm_mask[frames], work.stats)
    tokens = column_matrix(table, work.token_column).astype(np.int16)[frames]
    instruction = [work.tasks[int(i)] for i in table.column("task_index").to_numpy()[frames]]
    subtasks = table.column("subtask").take(pa.array(frames)).to_pylist()
    dataset_id, _, episode_id = work.key.partition("/")
    ids = [f"{work.key}/{t}" for t in frames]
    keys = np.array([sample_keys(i, work.seed) for i in ids], dtype=np.uint64).reshape(-1, 2)
    values = {
        shards.SAMPLE_ID: ids, shards.DATASET: [dataset_id] * n, shards.EPISODE_INDEX: np.full(n, work.episode_index),
        shards.SOURCE_EPISODE_ID: [episode_id] * n, shards.FRAME_INDEX: frames,
        shards.EMBODIMENT: [work.embodiment] * n,
        shards.INSTRUCTION: instruction, shards.SUBTASK: [s or i for s, i in zip(subtasks, instruction, strict=True)],
        shards.TOKENS: tokens, shards.TOKENS_TEXT: [text_tokens(t, work.num_queries) for t in tokens],
        shards.TOKEN_SOURCE: [work.token_column] * n, shards.PADDED: padded[frames],
        shards.STATE: state[frames].astype(np.float32), shards.ACTIONS: actions.reshape(n, -1).astype(np.float32),
        shards.ARM_MASK: arm_mask[frames] != 0, _HELDOUT: heldout, _SHARD_KEY: keys[:, 0], _ORDER_KEY: keys[:, 1],
    }
    return values, frames


def _record_batch(
    schema: pa.Schema, values: dict[str, Any], images: list[dict[str, bytes]], start: int,
) -> pa.RecordBatch:
    """Rows ``start … start + len(images) - 1`` of the episode's samples."""
    rows = slice(start, start + len(images))
    arrays = []
    for column in schema:
        name, kind = column.name, column.type
        if name.startswith(shards.IMAGE_PREFIX):
            camera = name.removeprefix(shards.IMAGE_PREFIX)
            arrays.append(pa.array([frame.get(camera) for frame in images], pa.binary()))
        elif pa.types.is_fixed_size_list(kind):
            flat = pa.array(np.asarray(values[name][rows]).reshape(-1), kind.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, kind.list_size))
        else:
            arrays.append(pa.array(values[name][rows], kind))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def stage_episode(work: _EpisodeWork) -> dict[str, int]:
    """Write one episode's samples to ``work.staged`` (complete or not at all), :data:`STAGE_BATCH_ROWS` at a time."""
    values, frames = _episode_values(work)
    schema = staged_schema(work.cameras, 2 * work.num_queries)
    tmp = temp_sibling(work.staged)
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            images: list[dict[str, bytes]] = []
            start = 0
            for encoded in _encoded_frames(work, frames) if len(frames) else ():
                images.append(encoded)
                if len(images) == STAGE_BATCH_ROWS:
                    writer.write_batch(_record_batch(schema, values, images, start))
                    start, images = start + len(images), []
            if images:
                writer.write_batch(_record_batch(schema, values, images, start))
        os.replace(tmp, work.staged)
    finally:
        tmp.unlink(missing_ok=True)
    return {"samples": len(frames)}


def _guarded(run: Any, work: Any, what: str, log: Path) -> dict[str, Any]:
    """``run(work)``, an error turned into a sentence (an unexpected one with its traceback in ``log``), so the
    driver stops with a message instead of Ray's traceback."""
    try:
        return run(work)
    except ClapDataError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001  (any failure must reach the user as a sentence)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        failure = f"{type(exc).__name__}: {exc}"
        return {"error": f"unexpected failure while writing {what} ({failure}); the traceback is in {log}"}


def _stage_task(batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Ray task: stage the episodes of a batch."""
    works: list[_EpisodeWork] = [pickle.loads(blob) for blob in batch["work"]]
    return {"outcome": [json.dumps(_guarded(stage_episode, w, f"episode {w.episode_index} of {w.data_file.parents[2]}",
                                            w.log)) for w in works]}


def _episode_work(sources: list[_Source], request: ExportRequest, staging: StagingArea) -> list[_EpisodeWork]:
    work = []
    for source in sources:
        meta = source.meta
        names = ("episode_index", "length", "data/chunk_index", "data/file_index", "tasks")
        columns = meta.episodes(list(names))
        videos = {camera: episode_videos(meta, camera) for camera in source.cameras}
        task_index = {task: index for index, task in LeRobotLayout(meta.root).tasks().items()}
        for episode, length, chunk, file, tasks in zip(*(columns.column(n).to_pylist() for n in names), strict=True):
            name = f"{source.position:03d}-{episode:08d}"
            work.append(_EpisodeWork(
                staged=staging.episodes_dir / f"{name}.arrow", log=staging.logs_dir / f"{name}.log",
                data_file=meta.root / layout.DATA_PATH.format(chunk_index=chunk, file_index=file),
                episode_index=episode,
                key=source.keys[episode], length=length, embodiment=meta.robot_type, token_column=source.token_column,
                num_queries=source.identity["num_queries"], stats=source.stats,
                tasks={task_index[t]: t for t in tasks}, videos={c: videos[c][episode] for c in source.cameras},
                cameras=request.cameras, holdout=request.holdout, stride=request.stride, seed=request.seed,
                image_size=request.image_size,
            ))
    return work


def _run_tasks(function: Any, works: list[Any], workers: int | None) -> Iterator[dict[str, Any]]:
    """``function`` over ``works`` on Ray Data, one item per call; outcomes stream back in any order."""
    import ray

    cpus = workers or max(1, int(ray.available_resources().get("CPU", 1)))
    items = [{"work": pickle.dumps(w)} for w in works]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), cpus * _BLOCKS_PER_WORKER)))
    # Ray may retry a task whose worker died: the work is idempotent (written under temporary names, renamed).
    done = dataset.map_batches(function, batch_size=1, num_cpus=1, concurrency=min(cpus, len(items)))
    for batch in done.iter_batches(batch_size=1, batch_format="numpy"):
        for text in batch["outcome"]:
            outcome = json.loads(str(text))
            if "error" in outcome:
                raise ClapDataError(outcome["error"])
            yield outcome


# --- stage 2: staged rows → shuffled shards (the writer) ---------------------------------------------------------


@dataclass(frozen=True)
class _StagedIndex:
    """Where every staged sample is, its split, dataset, hash draws and size: 30-odd bytes per sample on the driver."""

    names: list[str]
    file: np.ndarray
    row: np.ndarray
    heldout: np.ndarray
    shard_key: np.ndarray
    order_key: np.ndarray
    nbytes: np.ndarray
    padded: np.ndarray
    dataset: np.ndarray  # object array of provenance ids

    @classmethod
    def scan(cls, works: list[_EpisodeWork]) -> _StagedIndex:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in cls.__dataclass_fields__ if name != "names"}
        for number, work in enumerate(works):
            table = _open_staged(work.staged)
            size = np.full(table.num_rows, NON_IMAGE_ROW_BYTES, np.int64)
            for column in (c for c in table.column_names if c.startswith(shards.IMAGE_PREFIX)):
                size += pc.binary_length(table.column(column)).fill_null(0).to_numpy(zero_copy_only=False)
            columns = {"heldout": _HELDOUT, "shard_key": _SHARD_KEY, "order_key": _ORDER_KEY, "padded": shards.PADDED}
            values = {
                "file": np.full(table.num_rows, number, np.int32), "row": np.arange(table.num_rows, dtype=np.int32),
                "nbytes": size, "dataset": np.asarray(table.column(shards.DATASET).to_pylist(), dtype=object),
                **{name: table.column(column).to_numpy(zero_copy_only=False) for name, column in columns.items()},
            }
            for name, array in values.items():
                parts[name].append(array)
        joined = {name: np.concatenate(arrays) for name, arrays in parts.items()}
        return cls(names=[w.staged.name for w in works], **joined)


def _open_staged(path: Path) -> pa.Table:
    """A staged episode, memory-mapped: columns are read only where they are touched."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


@dataclass(frozen=True)
class _ShardWork:
    """One shard to write: the staged rows in shard order, and where it and its record go."""

    split: str
    index: int
    staged_dir: Path
    names: list[str]  # staged files it draws from
    file: np.ndarray  # per row: index into ``names``
    row: np.ndarray
    rows_per_group: int
    path: Path
    record: Path
    log: Path
    cameras: tuple[str, ...]
    num_tokens: int


def _write_row_groups(work: _ShardWork, writer: pq.ParquetWriter, schema: pa.Schema) -> None:
    """Gather each row group from the staged files it draws on, memory-mapped for that group only (a shard may draw
    on every staged episode: keeping them all open would run out of file descriptors)."""
    for start in range(0, len(work.row), work.rows_per_group):
        files, rows = work.file[start:start + work.rows_per_group], work.row[start:start + work.rows_per_group]
        order = np.argsort(files, kind="stable")
        pieces = [_open_staged(work.staged_dir / work.names[int(f)]).take(pa.array(rows[order][files[order] == f]))
                  for f in np.unique(files)]
        gathered = pa.concat_tables(pieces).take(pa.array(np.argsort(order, kind="stable")))
        writer.write_table(gathered.select(schema.names).cast(schema), row_group_size=len(rows))


def write_shard(work: _ShardWork) -> dict[str, Any]:
    """Write one shard (complete or not at all), then its record: rows, bytes, sha256."""
    schema = shards.shard_arrow_schema(work.cameras, work.num_tokens)
    images = [shards.image_column(c) for c in work.cameras]
    plain = [name for name in schema.names if name not in images]
    work.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(work.path)
    try:
        # zstd everywhere (JPEG bytes do not shrink, zstd keeps them as raw blocks); no statistics or dictionary
        # for the image columns
        options = {"compression": "zstd", "use_dictionary": plain, "write_statistics": plain}
        with pq.ParquetWriter(tmp, schema, **options) as writer:
            _write_row_groups(work, writer, schema)
        record = {"rows": len(work.row), "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        os.replace(tmp, work.path)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(work.record, record)
    return record


def _shard_task(batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Ray task: write the shards of a batch."""
    works: list[_ShardWork] = [pickle.loads(blob) for blob in batch["work"]]
    return {"outcome": [json.dumps({"split": w.split, "index": w.index, **_guarded(write_shard, w, str(w.path), w.log)})
                        for w in works]}


def _plan_shards(
    index: _StagedIndex, request: ExportRequest, staging: StagingArea, num_tokens: int,
) -> list[_ShardWork]:
    """Each split's samples hashed to ``ceil(bytes / shard size)`` shards, in hash order within each; row groups of
    about ``row_group_bytes``."""
    plan = []
    for split in _SPLITS:
        mine = np.flatnonzero(index.heldout == (split == shards.HELDOUT_SPLIT))
        if not len(mine):
            continue
        total = int(index.nbytes[mine].sum())
        count = max(1, math.ceil(total / (request.shard_mb * (1 << 20))))
        per_group = max(1, request.row_group_bytes // max(1, total // len(mine)))
        shard = index.shard_key[mine] % np.uint64(count)
        order = np.lexsort((index.order_key[mine], shard))
        bounds = np.searchsorted(shard[order], np.arange(count + 1, dtype=np.uint64))
        for number in range(count):
            rows = mine[order[bounds[number]:bounds[number + 1]]]
            used, local = np.unique(index.file[rows], return_inverse=True)
            name = shards.SHARD_PATTERN.format(index=number)
            plan.append(_ShardWork(
                split=split, index=number, staged_dir=staging.episodes_dir, names=[index.names[i] for i in used],
                file=local.astype(np.int32), row=index.row[rows], rows_per_group=per_group,
                path=staging.dataset_dir / split / name, record=staging.root / "shards" / f"{split}-{name}.json",
                log=staging.logs_dir / f"{split}-{name}.log", cameras=request.cameras, num_tokens=num_tokens,
            ))
    return plan


def _shard_done(work: _ShardWork) -> dict[str, Any] | None:
    """The record of a shard an earlier run finished (the shard itself there, of the recorded size)."""
    if not work.record.is_file() or not work.path.is_file():
        return None
    record = json.loads(work.record.read_text())
    return record if work.path.stat().st_size == record["bytes"] else None


# --- the manifest ----------------------------------------------------------------------------------------------


def _source_entry(source: _Source) -> dict[str, Any]:
    device, inode, info = source.meta.snapshot()
    manifest = source.root / "meta/clap_manifest.json"
    return {
        "path": str(source.root), "dataset_ids": source.dataset_ids, "embodiment": source.meta.robot_type,
        "episodes": source.meta.total_episodes, "frames": source.meta.total_frames, "cameras": list(source.cameras),
        "token_source": source.token_column, "tokenizer": source.identity,
        "stats_id": source.stats.stats_id if source.stats else None, "weight": source.weight,
        "snapshot": {"device": device, "inode": inode, "info_sha256": hashlib.sha256(info.encode()).hexdigest()},
        "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
    }


def _statistics_table(sources: list[_Source]) -> dict[str, Any]:
    """The statistics the robot chunks were normalised with, per embodiment (the OpenCLAP table's form, with its
    ``id``): what turns a policy's tokens back into robot units."""
    return {
        s.stats.embodiment: {"id": s.stats.stats_id,
                             "action": {"q01": s.stats.action_q01.tolist(), "q99": s.stats.action_q99.tolist()},
                             "state": {"q01": s.stats.state_q01.tolist(), "q99": s.stats.state_q99.tolist()}}
        for s in sources if s.stats is not None
    }


def _act_vae_entry(sources: list[_Source]) -> dict[str, Any]:
    """The one Act-VAE every token column speaks; its folder as far as a robot dataset's tokenize recorded it."""
    robots = [s for s in sources if s.token_column == ACTION_TOKENS]
    recorded = [s.meta.clap.get("tokenizers", {}).get(ACTION_TOKENS, {}).get("checkpoint") for s in robots]
    identity = (robots or sources)[0].identity
    return {
        "checkpoint_sha256": sources[0].act_vae_sha256, "checkpoint": next((c for c in recorded if c), None),
        "num_queries": identity["num_queries"], "codebook_size": identity["codebook_size"],
        "chunk_size": identity.get("chunk_size", CHUNK_SIZE), "token_order_storage": identity["token_order"],
        "token_order_text": identity["text_order"],
    }


def _split_counts(index: _StagedIndex, sources: list[_Source]) -> dict[str, dict[str, Any]]:
    embodiment = {dataset_id: s.meta.robot_type for s in sources for dataset_id in s.dataset_ids}
    counts = {}
    for split in _SPLITS:
        mine = index.heldout == (split == shards.HELDOUT_SPLIT)
        datasets = Counter(index.dataset[mine].tolist())
        by_embodiment: Counter[str] = Counter()
        for dataset_id, n in datasets.items():
            by_embodiment[embodiment[dataset_id]] += n
        counts[split] = {"samples": int(mine.sum()), "padded": int(index.padded[mine].sum()),
                         "datasets": dict(sorted(datasets.items())), "embodiments": dict(sorted(by_embodiment.items()))}
    return counts


def _manifest(sources: list[_Source], request: ExportRequest, index: _StagedIndex,
              records: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    splits = _split_counts(index, sources)
    for split, entry in splits.items():
        entry["shards"] = [
            {"file": f"{split}/{shards.SHARD_PATTERN.format(index=i)}", **records[(split, i)]}
            for i in sorted(i for s, i in records if s == split)
        ]
    return {
        "schema": shards.SHARDS_SCHEMA_NAME, "schema_version": shards.SHARDS_SCHEMA_VERSION, "clap_data": __version__,
        "samples": sum(e["samples"] for e in splits.values()), "splits": splits, "act_vae": _act_vae_entry(sources),
        "num_tokens": 2 * sources[0].identity["num_queries"],
        "token_sources": {dataset_id: s.token_column for s in sources for dataset_id in s.dataset_ids},
        "statistics": _statistics_table(sources),
        "mix": {"weights": {dataset_id: s.weight for s in sources for dataset_id in s.dataset_ids},
                "applied_by": "loader"},
        "seed": request.seed, "stride": request.stride, "chunk_steps": shards.CHUNK_STEPS,
        "cameras": list(request.cameras),
        "image": {"height": request.image_size[0], "width": request.image_size[1], "format": "jpeg",
                  "quality": JPEG_QUALITY, "resampling": RESAMPLING},
        "split": request.holdout.to_dict(), "datasets": [_source_entry(s) for s in sources],
    }


# --- the run ---------------------------------------------------------------------------------------------------


def is_shard_folder(path: Path) -> bool:
    manifest = Path(path) / shards.SHARD_MANIFEST
    try:
        return json.loads(manifest.read_text()).get("schema") == shards.SHARDS_SCHEMA_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _run_options(sources: list[_Source], request: ExportRequest) -> dict[str, Any]:
    """Everything the output depends on; a rerun resumes only work done with the very same."""
    options = {
        "clap_data": __version__, "schema_version": shards.SHARDS_SCHEMA_VERSION,
        "datasets": [{"path": str(s.root), "snapshot": s.meta.snapshot(), "weight": s.weight} for s in sources],
        "request": {k: v for k, v in asdict(request).items() if k not in _NOT_OPTIONS},
        "jpeg": [JPEG_QUALITY, RESAMPLING],
    }
    return json.loads(json.dumps(options, default=str))


def export(roots: list[Path], request: ExportRequest, reporter: Reporter | None = None) -> ExportReport:
    """Export ``roots`` into shards at ``request.out`` (see the module docstring). Raises ClapDataError for what
    stops the run; a run that stops leaves nothing beside ``--out`` unless a rerun can resume from it."""
    reporter = reporter or SilentReporter()
    if request.stride < 1:
        raise ClapDataError(f"--stride must be at least 1, not {request.stride}")
    if not request.shard_mb > 0:
        raise ClapDataError(f"--shard-mb must be positive, not {request.shard_mb}")
    for camera in request.cameras:
        if camera not in shards.CAMERAS_IN_PROMPT_ORDER:
            known = ", ".join(shards.CAMERAS_IN_PROMPT_ORDER)
            raise ClapDataError(f"unknown camera {camera!r}; the cameras are {known}")
    request = _with_canonical_cameras(request)
    sources = _plan_sources([Path(r) for r in roots], request)
    out = Path(request.out).absolute()
    staging = StagingArea(out)
    with ExitStack() as held:
        held.enter_context(dataset_lock(out, exclusive=True, purpose="export", wait=request.wait,
                                        on_wait=reporter.phase))
        for source in sources:
            held.enter_context(dataset_lock(source.root, exclusive=False, purpose="export", wait=request.wait,
                                            on_wait=reporter.phase))
            if DatasetMetadata.load(source.root).snapshot() != source.meta.snapshot():
                raise ClapDataError(f"{source.root} changed while the export was starting (another command replaced or "
                                    "updated it); nothing was written: rerun to export the dataset as it is now")
            _check_manifest(source.meta)
        try:
            return _export_locked(sources, request, staging, reporter)
        except BaseException:
            if not staging.has_resumable_work():
                staging.remove()
            raise


def _with_canonical_cameras(request: ExportRequest) -> ExportRequest:
    """Camera columns in prompt order whatever order they were asked in: one selection, one schema."""
    chosen = set(request.cameras)
    return replace(request, cameras=tuple(c for c in shards.CAMERAS_IN_PROMPT_ORDER if c in chosen))


def _export_locked(
    sources: list[_Source], request: ExportRequest, staging: StagingArea, reporter: Reporter,
) -> ExportReport:
    started = time.perf_counter()
    options = _run_options(sources, request)
    finished = _finish_interrupted_publish(staging, options)
    if finished is not None:
        return finished
    check_output_folder(staging.out, request.overwrite, is_shard_folder, "shard folder")
    staging.prepare(options, discard_mismatch=request.overwrite)
    for split in _SPLITS:
        remove_temp_leftovers(staging.dataset_dir / split)
    report = ExportReport(out=str(staging.out))
    report.notices = [f"{s.root} has no {', '.join(c for c in request.cameras if c not in s.cameras)} camera: "
                      "null in those columns" for s in sources if len(s.cameras) < len(request.cameras)]
    for notice in report.notices:
        reporter.phase(f"note: {notice}")
    works = _episode_work(sources, request, staging)
    staging.episodes_dir.mkdir(parents=True, exist_ok=True)
    todo = [w for w in works if not w.staged.is_file()]
    report.episodes, report.resumed_episodes = len(works), len(works) - len(todo)
    resumed = f" ({report.resumed_episodes} staged by an earlier run)" if report.resumed_episodes else ""
    reporter.phase(f"Staging {len(todo)} of {len(works)} episodes{resumed}")
    with ray_session(request.address, request.workers):
        if todo:
            _consume(reporter, len(works), report.resumed_episodes, _run_tasks(_stage_task, todo, request.workers))
        index = _StagedIndex.scan(works)
        if not len(index.row):
            raise ClapDataError("no sample to export: every episode was too short or held out of both splits")
        plan = _plan_shards(index, request, staging, 2 * sources[0].identity["num_queries"])
        records = {(w.split, w.index): r for w in plan if (r := _shard_done(w)) is not None}
        left = [w for w in plan if (w.split, w.index) not in records]
        report.resumed_shards = len(records)
        earlier = f" ({len(records)} written by an earlier run)" if records else ""
        reporter.phase(f"Writing {len(left)} of {len(plan)} shards{earlier}")
        if left:
            for outcome in _consume(reporter, len(plan), len(records), _run_tasks(_shard_task, left, request.workers)):
                records[(outcome["split"], outcome["index"])] = {k: outcome[k] for k in ("rows", "bytes", "sha256")}
    manifest = _manifest(sources, request, index, records)
    write_json_atomic(staging.dataset_dir / shards.SHARD_MANIFEST, manifest)
    _fill_report(report, manifest)
    report.seconds = time.perf_counter() - started
    write_json_atomic(staging.root / _PUBLISHING, asdict(report))
    _publish(staging)
    return report


def _consume(reporter: Reporter, total: int, done: int, outcomes: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every outcome, the reporter advanced by each one (and the samples it staged)."""
    reporter.start(total, done)
    collected = []
    try:
        for outcome in outcomes:
            reporter.advance(True, outcome.get("samples", 0))  # shards count no samples: they were counted staged
            collected.append(outcome)
    finally:
        reporter.stop()
    return collected


def _fill_report(report: ExportReport, manifest: dict[str, Any]) -> None:
    for split, entry in manifest["splits"].items():
        report.samples[split] = entry["samples"]
        report.datasets[split] = entry["datasets"]
        report.embodiments[split] = entry["embodiments"]
        report.padded[split] = entry["padded"]
        report.shards[split] = len(entry["shards"])
        report.bytes += sum(s["bytes"] for s in entry["shards"])


def _publish(staging: StagingArea) -> None:
    staging.publish()
    staging.remove()


def _finish_interrupted_publish(staging: StagingArea, options: dict[str, Any]) -> ExportReport | None:
    """If a run with these options was killed while publishing, complete it and return its report."""
    marker = staging.root / _PUBLISHING
    if not marker.is_file() or staging.run_options() != options:
        return None
    report = ExportReport(**json.loads(marker.read_text()))
    report.already_complete = True
    if staging.dataset_dir.is_dir():
        staging.publish()
    staging.remove()
    return report
