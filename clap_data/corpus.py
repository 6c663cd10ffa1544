"""SQL views over one or many clap-data datasets, made by DuckDB straight from their parquet files.

Why DuckDB, straight from parquet: a corpus is tens of millions of frames in many datasets; DuckDB scans
the ``data/`` files in parallel, streaming, so memory follows what a query keeps (its aggregates), never the
number of rows, and the same views serve ad-hoc questions (``clap-data sql``), the token statistics
(:mod:`clap_data.stats`, ``clap-data stats``) and the HTML report (``clap-data report``). Views, each with a
``dataset`` column (the folder name, made unique):

* ``frames``: every row of ``data/chunk-*/file-*.parquet``, plus ``robot_type``; datasets whose columns
  differ (a human dataset has no ``action_tokens``, cameras differ) are unioned by name, the missing
  columns NULL;
* ``episodes`` (``meta/episodes``), ``tasks`` (``meta/tasks.parquet``), ``quarantine``
  (``quarantine.parquet``, empty with the same columns where a dataset has none) and ``datasets`` (one
  row per dataset: robot_type, root, fps, episodes, frames, token columns).

A filter on ``dataset`` costs nothing: DuckDB drops the other datasets' branches of the union before reading.

A dataset may be a URL (``hf://datasets/ORG/NAME[@REV]``, any fsspec URL): its small metadata is mirrored locally
(:class:`~clap_data.sources.remote_files.RemoteFolder`, pinned to the commit it resolves to) and DuckDB reads
its data files through the same fsspec filesystem, registered with the connection — DuckDB's own ``httpfs``
extension, which it would download on first use, is not needed. Remote datasets are read-only: no lock.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.locking import dataset_lock
from clap_data.schemas import QUARANTINE_SCHEMA
from clap_data.sources.remote_files import RemoteFolder
from clap_data.urls import is_url

VIEWS = ("frames", "episodes", "tasks", "quarantine", "datasets")


def sql_literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def first_sentence(error: duckdb.Error) -> str:
    """DuckDB's message without the query excerpt and caret it appends ("LINE 1: …")."""
    kept = []
    for line in str(error).splitlines():
        if line.startswith("LINE "):
            break
        kept.append(line.strip())
    return " ".join(filter(None, kept)).rstrip(".") or type(error).__name__


@dataclass(frozen=True)
class CorpusDataset:
    """One dataset of a corpus: the name its rows carry in the views, its metadata, where its files are (its
    folder, or its pinned URL, whose metadata is mirrored at ``meta.root``) and its data files (relative)."""

    name: str
    meta: DatasetMetadata
    location: str
    data_files: tuple[str, ...]

    def path(self, relative: str) -> str:
        """A file of the dataset as DuckDB reads it: a local path or a URL."""
        return f"{self.location}/{relative}"

    def frames_select(self, files: list[str] | None = None) -> str:
        """Its data rows (all data files, or the relative ``files``) with ``dataset`` and ``robot_type`` in front."""
        paths = [self.path(f) for f in files or ["data/chunk-*/file-*.parquet"]]
        sources = "[" + ", ".join(sql_literal(p) for p in paths) + "]"
        return (f"SELECT {sql_literal(self.name)} AS dataset, {sql_literal(self.meta.robot_type)} AS robot_type, * "
                f"FROM read_parquet({sources}, union_by_name = true)")


@dataclass
class Corpus:
    """A DuckDB connection holding the views over ``datasets``."""

    connection: duckdb.DuckDBPyConnection
    datasets: list[CorpusDataset]


def unique_names(roots: list[Path]) -> list[str]:
    """Folder names, with ``_2``, ``_3``… after repeats, so rows of two ``v3`` folders stay apart."""
    names: list[str] = []
    for root in roots:
        base, n = Path(root).name or "dataset", 1
        name = base
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def _union(selects: list[str]) -> str:
    return " UNION ALL BY NAME ".join(f"({select})" for select in selects)


def _view_statements(datasets: list[CorpusDataset]) -> dict[str, str]:
    def with_name(ds: CorpusDataset, path: Path) -> str:
        files = sql_literal(str(path))
        return f"SELECT {sql_literal(ds.name)} AS dataset, * FROM read_parquet({files}, union_by_name = true)"

    quarantined = [with_name(ds, ds.meta.root / layout.QUARANTINE_PATH) for ds in datasets
                   if (ds.meta.root / layout.QUARANTINE_PATH).is_file()]
    rows = ", ".join(
        f"({sql_literal(ds.name)}, {sql_literal(ds.meta.robot_type)}, {sql_literal(ds.location)}, "
        f"{ds.meta.fps}, {ds.meta.total_episodes}, {ds.meta.total_frames}, "
        f"CAST([{', '.join(sql_literal(c) for c in ds.meta.token_columns)}] AS VARCHAR[]))"
        for ds in datasets
    )
    columns = "dataset, robot_type, root, fps, episodes, frames, token_columns"
    return {
        "frames": _union([ds.frames_select() for ds in datasets]),
        "episodes": _union([with_name(ds, ds.meta.root / "meta" / "episodes" / "chunk-*" / "file-*.parquet")
                            for ds in datasets]),
        "tasks": _union([with_name(ds, ds.meta.root / layout.TASKS_PATH) for ds in datasets]),
        "quarantine": _union(quarantined) if quarantined else _empty_quarantine(),
        "datasets": f"SELECT * FROM (VALUES {rows}) AS t({columns})",
    }


def _empty_quarantine() -> str:
    """The quarantine's columns (all strings) and no row, for a corpus where no dataset has one."""
    names = ["dataset", *QUARANTINE_SCHEMA.names]
    return "SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {sql_identifier(n)}" for n in names) + " WHERE false"


def _local_dataset(root: Path) -> tuple[DatasetMetadata, str, tuple[str, ...]]:
    if not root.is_dir():
        raise ClapDataError(f"{root} does not exist" if not root.exists() else f"{root} is not a folder")
    meta = DatasetMetadata.load(root)
    return meta, str(meta.root), tuple(meta.data_files())


def _remote_dataset(url: str) -> tuple[DatasetMetadata, str, tuple[str, ...], RemoteFolder]:
    folder = RemoteFolder(url, also=(layout.QUARANTINE_PATH,))
    return DatasetMetadata.load(folder.root), folder.location, tuple(folder.glob("data/chunk-*/file-*.parquet")), folder


def _load(roots: list[str | Path], remotes: dict[str, tuple[DatasetMetadata, str, tuple[str, ...], RemoteFolder]]
          ) -> list[CorpusDataset]:
    """The datasets, checked; ``remotes`` holds the URLs among ``roots``, opened once (no writer can change them)."""
    if not roots:
        raise ClapDataError("give at least one dataset")
    found = [remotes[str(root)][:3] if str(root) in remotes else _local_dataset(Path(root)) for root in roots]
    seen: dict[str, str | Path] = {}
    for root, (_, location, data_files) in zip(roots, found, strict=True):
        key = location if is_url(location) else str(Path(location).resolve())
        if key in seen:
            raise ClapDataError(f"{root} is given twice (also as {seen[key]}): its rows would count twice")
        seen[key] = root
        if not data_files:
            raise ClapDataError(f"{root} has no data files (data/chunk-*/file-*.parquet)")
    names = unique_names([meta.root for meta, _, _ in found])
    return [CorpusDataset(name, meta, location, files) for name, (meta, location, files) in zip(names, found, strict=True)]


@contextmanager
def open_corpus(
    roots: list[str | Path], *, purpose: str, database: str = ":memory:", threads: int | None = None,
    memory_limit: str | None = None,
) -> Iterator[Corpus]:
    """The views over ``roots`` (folders or URLs) in a DuckDB ``database`` (in memory, or a file that keeps them),
    each local dataset's lock held shared for the block so that no writer changes a dataset while it is read."""
    remotes = {str(root): _remote_dataset(str(root)) for root in roots if is_url(root)}
    local = [Path(root) for root in roots if str(root) not in remotes]
    _load(roots, remotes)  # what is not a dataset is refused before a lock file is made beside it
    with ExitStack() as stack:
        for root in local:
            stack.enter_context(dataset_lock(root, exclusive=False, purpose=purpose))
        datasets = _load(roots, remotes)  # again, now that no writer can change them
        spill = tempfile.mkdtemp(prefix="clap-duckdb-")  # DuckDB would spill into ./.tmp otherwise
        stack.callback(shutil.rmtree, spill, True)
        try:
            connection = duckdb.connect(database)
        except duckdb.Error as exc:
            raise ClapDataError(f"{database} cannot be opened as a DuckDB database ({first_sentence(exc)})") from None
        stack.callback(connection.close)
        connection.execute(f"SET temp_directory = {sql_literal(spill)}")
        connection.execute("SET preserve_insertion_order = false")  # lets scans stream into aggregates
        connection.execute("SET enable_progress_bar = false")  # it would print into the results on stdout
        if threads:
            connection.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            connection.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
        for fs in {folder.fs.protocol: folder.fs for *_, folder in remotes.values()}.values():
            connection.register_filesystem(fs)  # one per protocol: DuckDB reads hf://… through it
        for view, select in _view_statements(datasets).items():
            try:
                connection.execute(f"CREATE OR REPLACE VIEW {view} AS {select}")
            except duckdb.Error as exc:
                raise ClapDataError(f"the {view} view cannot be made: {first_sentence(exc)}") from None
        yield Corpus(connection, datasets)
