"""The streaming loader over an export's shards (``clap-data export``; ``clap_data.schemas.shards_v1``).

Why it is built this way: a trainer needs batches that are (1) disjoint across DDP ranks, and across the
DataLoader workers of a rank, (2) shuffled, (3) a function of ``(seed, epoch, step, world size)`` only, so that a
run resumed at step ``s`` sees exactly the batches the uninterrupted run saw from ``s`` on, (4) equally many on
every rank (DDP hangs otherwise), and (5) read with bounded memory. All five follow from one idea: the order of an
epoch is planned on *row references* (integers), from parquet footers alone, and only then are rows read.

**The plan of epoch e** (:class:`EpochPlan`, from the seed and ``e``): the split's row groups are permuted, the rows
inside each permuted; with mixing weights each row is repeated ``floor(w)`` times plus once more with probability
``w − floor(w)`` (so ``w`` is how often each sample of its dataset is seen per epoch: 2 doubles a dataset's share,
0.5 shows a different half of it each epoch); the resulting sequence is cut into ``world_size`` contiguous equal
parts (``even``: the remainder, fewer than ``world_size`` samples, is left out of that epoch) and each rank's part
goes through a seeded windowed shuffle — every row moves fewer than ``shuffle_buffer`` places, which is what a
shuffle buffer of that size does, but decided ahead. The rank's part is then cut into batches.

**Reading**: DataLoader worker ``w`` of ``W`` produces the rank's batches ``start_step + w``, ``start_step + w + W``, …,
so the DataLoader's round-robin hands them out in order ``start_step, start_step + 1, …`` whatever ``W`` is: the
batches do not depend on the number of workers, and a resumed run restarts at any step without replaying the epoch.
A worker reads each parquet row group its batches draw on once and drops it when its last row has been taken;
since rows move fewer than ``shuffle_buffer`` places, about ``shuffle_buffer / rows per group + 2`` row groups are
resident (the export writes groups of ~16 MiB). Each worker reads every row group of its rank (it needs a few rows
of each): reading is cheap beside decoding, which is split among the workers. JPEGs are decoded only when a batch
is assembled, into one uint8 tensor per camera: in a worker, into one of its reused shared-memory slots
(``training/image_ring.py``: fresh shared memory per batch made the hand-over cost more than the decoding), copied
out by the trainer's process.

**Resuming**: ``iter_batches(root, epoch=e, start_step=s, batch_size=B, rank=r, world_size=n)`` yields batches
``s, s + 1, …`` of epoch ``e``; :func:`iter_steps` runs epoch after epoch from a global step. Keep ``seed``,
``batch_size``, ``world_size``, ``shuffle_buffer``, the mixing weights and ``even``/``drop_last`` the same when
resuming; ``num_workers`` may change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.utils.data
from torchvision.io import ImageReadMode  # imported here: forked workers inherit it
from torchvision.io import decode_jpeg as _decode_jpeg

from clap_data.errors import ClapDataError
from clap_data.schemas import shards_v1 as shards
from clap_data.training.image_ring import ImageRing, InSlot

_TEXT_COLUMNS = (shards.SAMPLE_ID, shards.DATASET, shards.SOURCE_EPISODE_ID, shards.EMBODIMENT, shards.INSTRUCTION,
                 shards.SUBTASK, shards.TOKENS_TEXT, shards.TOKEN_SOURCE)


def read_manifest(root: Path) -> dict[str, Any]:
    """The export's ``manifest.json``; refuses a folder that is not a shard folder of the schema this code reads."""
    path = Path(root) / shards.SHARD_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClapDataError(f"{root} is not a shard folder ({shards.SHARD_MANIFEST} is missing); write one with "
                            "clap-data export") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"{path} cannot be read: {exc}") from None
    found = (manifest.get("schema"), manifest.get("schema_version"))
    if found != (shards.SHARDS_SCHEMA_NAME, shards.SHARDS_SCHEMA_VERSION):
        raise ClapDataError(f"{root} holds shards of schema {found[0]!r} version {found[1]!r}; this clap-data reads "
                            f"{shards.SHARDS_SCHEMA_NAME} version {shards.SHARDS_SCHEMA_VERSION}")
    return manifest


def decode_jpegs(images: list[bytes | None], height: int, width: int,
                 out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG bytes (None: no image) → uint8 ``[N, height, width, 3]`` RGB (zeros where None), written into ``out``
    when given, and which are present. torchvision's decoder: the libjpeg-turbo pixels PIL gives, ~1.5× faster."""
    mask = np.array([data is not None for data in images], dtype=bool)
    out = _handed_over((len(images), height, width, 3)) if out is None else out
    pixels = out.numpy()
    pixels[~mask] = 0
    found = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images if data is not None]
    decoded = _decode_jpeg(found, mode=ImageReadMode.RGB) if found else []
    for i, image in zip(np.flatnonzero(mask), decoded, strict=True):
        pixels[i] = image.permute(1, 2, 0).numpy()  # numpy copies on one thread (torch's may spin on a busy machine)
    return out, torch.from_numpy(mask)


def _handed_over(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a DataLoader worker that has no image ring (a ShardStream under a user's own
    DataLoader), made in shared memory, as ``default_collate`` makes its output, so handing it over copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).new(storage).view(shape)


def decode_jpeg(data: bytes) -> np.ndarray:
    """One JPEG → ``[H, W, 3]`` uint8 RGB."""
    image = _decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return image.permute(1, 2, 0).contiguous().numpy()


@dataclass(frozen=True)
class Batch:
    """One batch, ready for a model: tensors for the numbers and the images, lists for the text.

    ``images[camera]`` is uint8 ``[B, H, W, 3]`` (zeros where the sample's dataset lacks the camera:
    ``has_image[camera]``, bool ``[B]``, says which are real; with ``decode_images=False`` a list of JPEG bytes or
    None). Stacked tensors, because DataLoader workers hand tensors over in shared memory where arrays and lists
    are pickled through a pipe (which cost more than the decoding). ``tokens`` are in storage order (left arm's,
    then right's), int64 for embedding lookups; ``actions`` is the normalised ``[32, 14]`` chunk; ``step`` is the
    batch's index in ``epoch``."""

    epoch: int
    step: int
    sample_id: list[str]
    dataset: list[str]
    source_episode_id: list[str]
    embodiment: list[str]
    instruction: list[str]
    subtask: list[str]
    tokens_text: list[str]
    token_source: list[str]
    episode_index: torch.Tensor  # int64 [B]
    frame_index: torch.Tensor  # int64 [B]
    tokens: torch.Tensor  # int64 [B, 2·Nq]
    padded: torch.Tensor  # bool [B]
    state: torch.Tensor  # float32 [B, 14]
    actions: torch.Tensor  # float32 [B, 32, 14]
    arm_mask: torch.Tensor  # bool [B, 2]
    images: dict[str, Any]  # camera → uint8 [B, H, W, 3], or a list of JPEG bytes | None
    has_image: dict[str, torch.Tensor]  # camera → bool [B]

    def __len__(self) -> int:
        return len(self.sample_id)

    def samples(self) -> list[dict[str, Any]]:
        """The batch as one dict per sample: the shard row's columns as Python values and, under ``images``,
        camera → ``[H, W, 3]`` uint8 array for the cameras the sample has."""
        out = []
        for i in range(len(self)):
            row: dict[str, Any] = {name: getattr(self, name)[i] for name in _TEXT_COLUMNS}
            for name in (shards.EPISODE_INDEX, shards.FRAME_INDEX, shards.TOKENS, shards.PADDED, shards.STATE,
                         shards.ARM_MASK):
                row[name] = getattr(self, name)[i].tolist()
            row[shards.ACTIONS] = self.actions[i].reshape(-1).tolist()
            row["images"] = {camera: images[i].numpy() if isinstance(images, torch.Tensor) else images[i]
                             for camera, images in self.images.items() if self.has_image[camera][i]}
            out.append(row)
        return out


@dataclass(frozen=True)
class _Unit:
    """One parquet row group: the unit of reading."""

    path: Path
    group: int
    rows: int


def _split_units(root: Path, manifest: dict[str, Any], split: str) -> list[_Unit]:
    """Every row group of ``split``'s shards (footers only), checked against the manifest's row counts."""
    entry = manifest.get("splits", {}).get(split)
    if entry is None:
        raise ClapDataError(f"{root} has no split {split!r} (it has {', '.join(manifest.get('splits', {})) or 'none'})")
    units = []
    for shard in entry["shards"]:
        path = Path(root) / shard["file"]
        try:
            meta = pq.ParquetFile(path).metadata
        except (OSError, pa.ArrowException) as exc:
            raise ClapDataError(f"{path} cannot be read ({exc}); the shard folder is damaged: export it again") \
                from None
        if meta.num_rows != shard["rows"]:
            raise ClapDataError(f"{path} has {meta.num_rows} rows where the manifest says {shard['rows']}: "
                                "the shard folder is damaged: export it again")
        units.extend(_Unit(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups))
    return units


@dataclass(frozen=True)
class EpochPlan:
    """One rank's row references of one epoch, in order (see the module docstring)."""

    refs: np.ndarray  # global row ids (row groups concatenated in manifest order)
    batch_size: int
    drop_last: bool

    @property
    def steps(self) -> int:
        whole, rest = divmod(len(self.refs), self.batch_size)
        return whole + (1 if rest and not self.drop_last else 0)

    def batch(self, step: int) -> np.ndarray:
        return self.refs[step * self.batch_size:(step + 1) * self.batch_size]


def plan_epoch(
    unit_rows: np.ndarray, *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int,
    shuffle: bool = True, shuffle_buffer: int = 1024, multiplicity: np.ndarray | None = None,
    weights_fraction: np.ndarray | None = None, even: bool = True, drop_last: bool = False,
) -> EpochPlan:
    """The plan of one rank and epoch from the rows of each row group; ``multiplicity`` (whole repeats) and
    ``weights_fraction`` (the chance of one more) per global row apply mixing weights."""
    offsets = np.concatenate([[0], np.cumsum(unit_rows)]).astype(np.int64)
    total = int(offsets[-1])
    rng = np.random.default_rng([seed, epoch])
    if shuffle:
        position = np.empty(len(unit_rows), np.int64)
        position[rng.permutation(len(unit_rows))] = np.arange(len(unit_rows))
        unit_of = np.repeat(np.arange(len(unit_rows)), unit_rows)
        refs = np.lexsort((rng.random(total), position[unit_of])).astype(np.int64)
    else:
        refs = np.arange(total, dtype=np.int64)
    if multiplicity is not None:
        extra = np.random.default_rng([seed, epoch, 1]).random(total) < weights_fraction
        refs = np.repeat(refs, (multiplicity + extra)[refs])
    if even:
        share = len(refs) // world_size
        mine = refs[rank * share:(rank + 1) * share]
    else:
        mine = np.array_split(refs, world_size)[rank]
    if shuffle and shuffle_buffer > 1:
        keys = np.arange(len(mine)) + np.random.default_rng([seed, epoch, 2, rank]).random(len(mine)) * shuffle_buffer
        mine = mine[np.argsort(keys, kind="stable")]
    return EpochPlan(mine, batch_size, drop_last)


class _RowGroupReader:
    """Takes rows by global id, holding each row group from the first row taken to the last one expected."""

    def __init__(self, units: list[_Unit], columns: list[str]) -> None:
        self.units, self.columns = units, columns
        self.offsets = np.concatenate([[0], np.cumsum([u.rows for u in units])]).astype(np.int64)
        self.resident: dict[int, pa.Table] = {}
        self.left = np.zeros(len(units), np.int64)

    def unit_of(self, refs: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, refs, side="right") - 1

    def expect(self, refs: np.ndarray) -> None:
        self.left = np.bincount(self.unit_of(refs), minlength=len(self.units))

    def take(self, refs: np.ndarray) -> pa.Table:
        unit = self.unit_of(refs)
        order = np.argsort(unit, kind="stable")
        sorted_refs, sorted_units = refs[order], unit[order]
        pieces = []
        for u, count in zip(*np.unique(unit, return_counts=True), strict=True):
            u = int(u)
            if u not in self.resident:
                where = self.units[u]
                self.resident[u] = pq.ParquetFile(where.path).read_row_group(  # one thread: a worker is one already
                    where.group, columns=self.columns, use_threads=False)
            pieces.append(self.resident[u].take(pa.array(sorted_refs[sorted_units == u] - self.offsets[u])))
            self.left[u] -= count
            if self.left[u] <= 0:
                del self.resident[u]
        return pa.concat_tables(pieces).take(pa.array(np.argsort(order, kind="stable")))


def _matrix(table: pa.Table, name: str, dtype: type) -> torch.Tensor:
    flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(flat, dtype=dtype).reshape(table.num_rows, -1))  # a copy: arrow's is read-only


def _batch(table: pa.Table, epoch: int, step: int, cameras: tuple[str, ...], image_size: tuple[int, int],
           decode: bool, into: Mapping[str, torch.Tensor] | None = None) -> Batch:
    """The batch of ``table``'s rows; decoded images go into ``into``'s buffers where given."""
    def numbers(name: str, dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.array(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype))

    images, has_image = {}, {}
    for camera in cameras:
        data = table.column(shards.image_column(camera)).to_pylist()
        if decode:
            buffer = None if into is None else into[camera]
            images[camera], has_image[camera] = decode_jpegs(data, *image_size, out=buffer)
        else:
            images[camera], has_image[camera] = data, torch.tensor([d is not None for d in data], dtype=torch.bool)
    return Batch(
        epoch=epoch, step=step, **{name: table.column(name).to_pylist() for name in _TEXT_COLUMNS},
        episode_index=numbers(shards.EPISODE_INDEX, np.int64), frame_index=numbers(shards.FRAME_INDEX, np.int64),
        tokens=_matrix(table, shards.TOKENS, np.int64), padded=numbers(shards.PADDED, np.bool_),
        state=_matrix(table, shards.STATE, np.float32),
        actions=_matrix(table, shards.ACTIONS, np.float32).reshape(-1, shards.CHUNK_STEPS, shards.ACTION_DIM),
        arm_mask=_matrix(table, shards.ARM_MASK, np.bool_), images=images, has_image=has_image,
    )


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardStream(torch.utils.data.IterableDataset):
    """The batches of one rank from step ``start_step`` of ``epoch`` on — to the end of that epoch, or epoch after
    epoch with ``endless`` (see the module docstring): an ``IterableDataset`` for
    ``torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=keep_batch, …)``, which :func:`iter_batches`
    and :func:`iter_steps` build. ``rank`` and ``world_size`` default to ``torch.distributed``'s.

    ``mix``: True applies the manifest's weights, False sees every sample once, a mapping sets weights by dataset
    id (others 1). ``even`` gives every rank the same number of samples (for DDP); ``even=False, shuffle=False``
    reads the split exactly once in file order (evaluation). ``cameras`` picks the image columns read."""

    def __init__(
        self, root: Path, split: str = shards.TRAIN_SPLIT, *, batch_size: int, seed: int = 0, epoch: int = 0,
        start_step: int = 0, rank: int | None = None, world_size: int | None = None, shuffle: bool = True,
        shuffle_buffer: int = 1024, mix: bool | Mapping[str, float] = True, even: bool = True, drop_last: bool = False,
        cameras: tuple[str, ...] | None = None, decode_images: bool = True, endless: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ClapDataError(f"batch_size must be at least 1, not {batch_size}")
        self.root, self.split = Path(root), split
        self.manifest = read_manifest(self.root)
        self.units = _split_units(self.root, self.manifest, split)
        if not self.units:
            raise ClapDataError(f"{self.root} holds no {split} samples")
        default_rank, default_world = _distributed()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ClapDataError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        self.batch_size, self.seed, self.epoch, self.start_step = batch_size, seed, epoch, start_step
        self.shuffle, self.shuffle_buffer, self.even, self.drop_last = shuffle, shuffle_buffer, even, drop_last
        exported = tuple(self.manifest["cameras"])
        unknown = [c for c in cameras or () if c not in exported]
        if unknown:
            raise ClapDataError(f"{self.root} has no camera {', '.join(unknown)} (its cameras: {', '.join(exported)})")
        self.cameras = exported if cameras is None else tuple(cameras)
        self.image_size = (int(self.manifest["image"]["height"]), int(self.manifest["image"]["width"]))
        self.decode_images, self.endless = decode_images, endless
        self.ring: ImageRing | None = None  # set by iter_batches / iter_steps before their workers fork
        self.weights = self._weights(mix)
        self._repeats = self._multiplicity() if self.weights else None

    def _weights(self, mix: bool | Mapping[str, float]) -> dict[str, float]:
        """Weights by dataset id, or nothing when every sample is seen once."""
        recorded = dict(self.manifest.get("mix", {}).get("weights", {}))
        if mix is True:
            weights = recorded
        elif mix is False:
            weights = {}
        else:
            unknown = sorted(set(mix) - set(recorded))
            if unknown:
                raise ClapDataError(f"mix names {', '.join(unknown)}, which {self.root} does not hold "
                                    f"(it holds {', '.join(sorted(recorded))})")
            weights = {**dict.fromkeys(recorded, 1.0), **{k: float(v) for k, v in mix.items()}}
        if any(not (w >= 0 and math.isfinite(w)) for w in weights.values()):
            raise ClapDataError(f"mixing weights must be finite numbers ≥ 0, got {weights}")
        return {} if all(w == 1.0 for w in weights.values()) else weights

    def _multiplicity(self) -> tuple[np.ndarray, np.ndarray]:
        """Per global row: whole repeats and the fraction of its dataset's weight (reads the dataset column)."""
        names = [pq.ParquetFile(u.path).read_row_group(u.group, columns=[shards.DATASET]).column(0).to_pylist()
                 for u in self.units]
        weight = np.array([self.weights.get(name, 1.0) for rows in names for name in rows])
        return np.floor(weight).astype(np.int64), weight - np.floor(weight)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        repeats, fraction = self._repeats or (None, None)
        return plan_epoch(
            np.array([u.rows for u in self.units]), seed=self.seed, epoch=self.epoch if epoch is None else epoch,
            rank=self.rank, world_size=self.world_size, batch_size=self.batch_size, shuffle=self.shuffle,
            shuffle_buffer=self.shuffle_buffer, multiplicity=repeats, weights_fraction=fraction, even=self.even,
            drop_last=self.drop_last,
        )

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        """Batches of this rank in an epoch (the same on every rank with ``even``)."""
        return self.plan(epoch).steps

    def start_of(self, global_step: int) -> tuple[int, int]:
        """(epoch, step in it) of a global step counted from epoch 0 (epochs of fractional mixing differ in length)."""
        epoch, step = 0, global_step
        while step >= (steps := self.steps_per_epoch(epoch)):
            if steps == 0:
                raise ClapDataError(f"{self.root} gives rank {self.rank} no batch of {self.batch_size} in an epoch; "
                                    "lower the batch size")
            epoch, step = epoch + 1, step - steps
        return epoch, step

    def __iter__(self) -> Iterator[Batch | InSlot]:
        """This worker's batches: the k-th batch of the iteration (k = 0 at ``(epoch, start_step)``) is worker
        ``k % W``'s, so the DataLoader's round-robin yields them in order. With an image ring (and in a worker), a
        batch's images are decoded into the worker's next slot and the batch is sent as an :class:`InSlot`."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch, first, offset = self.epoch, self.start_step, 0
        columns = shards.shard_arrow_schema(self.cameras, 1).names
        while True:
            plan = self.plan(epoch)
            steps = range(first, plan.steps)
            mine = [step for k, step in enumerate(steps, offset) if k % workers == worker]
            reader = _RowGroupReader(self.units, columns)
            if mine:
                reader.expect(np.concatenate([plan.batch(step) for step in mine]))
            for step in mine:
                table = reader.take(plan.batch(step))
                if self.ring is None or info is None or not self.decode_images:
                    yield _batch(table, epoch, step, self.cameras, self.image_size, self.decode_images)
                    continue
                slot, into = self.ring.take(worker, table.num_rows)
                batch = _batch(table, epoch, step, self.cameras, self.image_size, True, into=into)
                yield InSlot(replace(batch, images={}), worker, slot, table.num_rows)
            if not self.endless or plan.steps == 0:
                return
            epoch, first, offset = epoch + 1, 0, offset + len(steps)


def keep_batch(batch: Batch) -> Batch:
    """The DataLoader's collate: batches are assembled by the stream already."""
    return batch


def _iterate(stream: ShardStream, num_workers: int, prefetch_factor: int) -> Iterator[Batch]:
    """The stream's batches, in this process or from ``num_workers`` DataLoader workers that hand decoded images
    over through an :class:`ImageRing` (see ``training/image_ring.py`` for why)."""
    if num_workers == 0:
        yield from stream
        return
    if stream.decode_images:
        stream.ring = ImageRing(workers=num_workers, prefetch_factor=prefetch_factor, cameras=stream.cameras,
                                batch_size=stream.batch_size, image_size=stream.image_size)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=keep_batch,
                                         prefetch_factor=prefetch_factor,
                                         multiprocessing_context="fork")  # the ring's semaphores are fork's
    for item in loader:
        yield stream.ring.receive(item) if isinstance(item, InSlot) else item


def iter_batches(
    root: Path, *, epoch: int, start_step: int = 0, batch_size: int, rank: int | None = None,
    world_size: int | None = None, num_workers: int = 0, prefetch_factor: int = 2, **options: Any,
) -> Iterator[Batch]:
    """Batches ``start_step, start_step + 1, …`` of ``epoch`` for this rank, decoded by ``num_workers`` DataLoader
    processes (0: in this process). ``options`` are :class:`ShardStream`'s (split, seed, shuffle_buffer, mix, …)."""
    stream = ShardStream(root, batch_size=batch_size, epoch=epoch, start_step=start_step, rank=rank,
                         world_size=world_size, **options)
    yield from _iterate(stream, num_workers, prefetch_factor)


def iter_steps(
    root: Path, *, start_step: int = 0, batch_size: int, num_workers: int = 0, prefetch_factor: int = 2,
    **options: Any,
) -> Iterator[Batch]:
    """Endless batches from global step ``start_step``, epoch after epoch, in the same DataLoader workers (global
    step = the steps of the epochs before + the step in its epoch). ``options`` are :class:`ShardStream`'s."""
    stream = ShardStream(root, batch_size=batch_size, endless=True, **options)
    stream.epoch, stream.start_step = stream.start_of(start_step)
    yield from _iterate(stream, num_workers, prefetch_factor)
