"""Add or replace per-frame columns of a finished LeRobot v3 dataset, atomically and resumably.

``tokenize`` (``action_tokens``) and later ``pseudo-label`` (``pseudo_tokens``) add columns to every
``data/`` file of a dataset in place. A dataset is many files, so no single rename can swap them
all; instead the update is staged and then rolled forward:

1. New data files are written beside the dataset, in ``.<name>.clap-columns/new/`` (same filesystem),
   each complete before it gets its final name. ``run.json`` there records what produced them,
   so a rerun after a crash keeps the finished files of the same run and redoes only the rest.
2. The new ``meta/info.json`` (features), ``meta/clap_data.json`` (provenance) and
   ``meta/clap_manifest.json`` (the new files' sizes and hashes) join them.
3. ``commit.json`` is written: from then on the update *will* happen. Each staged file replaces
   its original with ``os.replace``, data files first and metadata last; then the staging
   folder goes. A crash during this step is finished by the next run of the same command.

The caller holds the dataset's exclusive lock (:func:`clap_data.locking.dataset_lock`) throughout,
so no other writer — another update, an ingest replacing the dataset — interleaves with it; and the
dataset's manifest is updated in the same commit (:mod:`clap_data.lerobot_v3.manifest`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clap_data.atomic import remove_temp_leftovers, temp_sibling, write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.manifest import MANIFEST_PATH, Manifest
from clap_data.schemas import CLAP_META_PATH

_COMMIT = "commit.json"
_RUN = "run.json"


class ColumnUpdate:
    """The staging area of one in-place column update of the dataset at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.staging = self.root.parent / f".{self.root.name}.clap-columns"
        self.new = self.staging / "new"

    def finish_interrupted_commit(self) -> bool:
        """Roll a committed-but-unfinished update forward; True if there was one."""
        commit = self.staging / _COMMIT
        if not commit.is_file():
            return False
        for relative in json.loads(commit.read_text())["files"]:
            staged = self.new / relative
            if staged.is_file():
                os.replace(staged, self.root / relative)
        shutil.rmtree(self.staging)
        return True

    def prepare(self, run: dict[str, Any], files: list[str]) -> set[str]:
        """Start staging for ``run`` (which must name what the staged files depend on: the
        producer's identity and the input files' sizes and hashes); returns those of ``files``
        already staged by an interrupted run of the same ``run`` (work of another run is discarded)."""
        previous = None
        if (self.staging / _RUN).is_file():
            previous = json.loads((self.staging / _RUN).read_text())
        if previous != run and self.staging.exists():
            shutil.rmtree(self.staging)
        self.new.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.staging / _RUN, run)
        done = set()
        for relative in files:
            staged = self.new / relative
            remove_temp_leftovers(staged.parent)
            if staged.is_file():
                done.add(relative)
        return done

    def write_data_file(self, relative: str, columns: dict[str, pa.Array], replace: list[str]) -> None:
        """Stage ``relative`` with ``columns`` (one value per row, in file order) appended, after
        dropping the columns named in ``replace``. Row groups are kept, read one at a time."""
        source = pq.ParquetFile(self.root / relative)
        expected = source.metadata.num_rows
        for name, values in columns.items():
            if len(values) != expected:
                raise ClapDataError(f"{relative}: {name} has {len(values)} values for {expected} rows")
        keep = [name for name in source.schema_arrow.names if name not in replace]
        schema = pa.schema([source.schema_arrow.field(n) for n in keep] + [pa.field(n, v.type) for n, v in columns.items()])
        target = self.new / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(target)
        offset = 0
        with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
            for group in range(source.num_row_groups):
                table = source.read_row_group(group, columns=keep)
                for name, values in columns.items():
                    table = table.append_column(name, values.slice(offset, table.num_rows))
                writer.write_table(table)
                offset += table.num_rows
        os.replace(tmp, target)

    def commit(self, info: dict[str, Any], clap_meta: dict[str, Any], files: list[str], manifest: Manifest | None) -> None:
        """Stage the metadata (and the manifest updated for every staged file), then make every staged
        file live (see the module docstring). ``files`` are the data files that must all be staged."""
        staged = sorted(str(p.relative_to(self.new)) for p in self.new.glob("data/chunk-*/file-*.parquet"))
        missing = sorted(set(files) - set(staged))
        if missing:
            raise ClapDataError(f"{self.root}: {len(missing)} data file(s) were not staged, e.g. {missing[0]}")
        write_json_atomic(self.new / layout.INFO_PATH, info)
        write_json_atomic(self.new / CLAP_META_PATH, clap_meta)
        metadata = [layout.INFO_PATH, CLAP_META_PATH]
        if manifest is not None:
            for relative in staged + metadata:
                manifest.record(self.new, relative)
            manifest.write(self.new)
            metadata.append(MANIFEST_PATH)
        write_json_atomic(self.staging / _COMMIT, {"files": staged + metadata})
        self.finish_interrupted_commit()

    def abandon(self) -> None:
        """Drop the staging area (nothing to change)."""
        if self.staging.exists() and not (self.staging / _COMMIT).is_file():
            shutil.rmtree(self.staging)

    def discard(self) -> None:
        """Drop the staging area whatever it holds: the dataset it was made for has been replaced."""
        shutil.rmtree(self.staging, ignore_errors=True)
