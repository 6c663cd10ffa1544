"""Per-embodiment normalisation statistics (q01/q99) computed from unified datasets (METHOD.md §2).

Every chunk of every episode contributes its 32 relative steps, so the sample is 32× the frame
count: rather than holding it in memory, episodes are spooled to a temporary parquet file and
DuckDB computes exact quantiles over it (DuckDB spills to disk, so memory stays bounded). The
result is stored with each dataset (``meta/clap_norm_stats.json``) in the same
``{embodiment: {action|state: {q01, q99}}}`` form as the OpenCLAP reference table.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from clap_data.actions import HUMAN, NormStats, episode_chunks
from clap_data.atomic import write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.locking import dataset_lock
from clap_data.reference import openclap_stats_table

NORM_STATS_PATH = "meta/clap_norm_stats.json"
_COLUMNS = [f"d{i}" for i in range(14)]


def _quantiles(spool: Path) -> dict[str, list[float]]:
    selects = ", ".join(f"quantile_cont({c}, 0.01), quantile_cont({c}, 0.99)" for c in _COLUMNS)
    row = duckdb.sql(f"select {selects} from read_parquet('{spool}')").fetchall()[0]
    return {"q01": [float(v) for v in row[0::2]], "q99": [float(v) for v in row[1::2]]}


def _embodiment_stats(roots: list[Path], workdir: Path) -> dict:
    schema = pa.schema([(c, pa.float64()) for c in _COLUMNS])
    spools = {kind: workdir / f"{kind}.parquet" for kind in ("action", "state")}
    writers = {kind: pq.ParquetWriter(path, schema) for kind, path in spools.items()}
    frames = 0
    try:
        for root in roots:
            for episode in iter_episode_arrays(root):
                chunks, _ = episode_chunks(episode.state, episode.action)
                for kind, values in (("action", chunks.reshape(-1, 14)), ("state", episode.state)):
                    writers[kind].write_table(pa.Table.from_arrays([pa.array(values[:, i]) for i in range(14)], schema=schema))
                frames += len(episode.state)
    finally:
        for writer in writers.values():
            writer.close()
    if frames == 0:
        raise ClapDataError(f"{', '.join(map(str, roots))} hold no frames")
    return {**{kind: _quantiles(path) for kind, path in spools.items()}, "frames": frames}


def compute_norm_stats(roots: list[Path]) -> dict[str, dict]:
    """q01/q99 per embodiment, pooling every dataset of that embodiment. Human datasets have no
    action labels and are refused."""
    by_embodiment: dict[str, list[Path]] = defaultdict(list)
    for root in roots:
        embodiment = DatasetMetadata.load(root).robot_type
        if embodiment == HUMAN:
            raise ClapDataError(f"{root} is human video: it has no action labels to take statistics of")
        by_embodiment[embodiment].append(Path(root))
    table = {}
    with ExitStack() as locks:  # no dataset changes while its chunks are read
        for root in roots:
            locks.enter_context(dataset_lock(Path(root), exclusive=False, purpose="normstats"))
        for embodiment, members in sorted(by_embodiment.items()):
            with tempfile.TemporaryDirectory(prefix="clap-normstats-") as workdir:
                table[embodiment] = _embodiment_stats(members, Path(workdir))
    return table


def table_id(table: dict) -> str:
    """A short content hash: equal statistics, equal id (it goes into token metadata)."""
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]


def write_norm_stats(root: Path, table: dict, wait: bool = False) -> None:
    """Store ``table`` with the dataset (and in its manifest), holding the dataset's lock."""
    with dataset_lock(root, exclusive=True, purpose="normstats", wait=wait):
        write_json_atomic(Path(root) / NORM_STATS_PATH, {"id": table_id(table), "statistics": table})
        manifest = DatasetMetadata.load(root).manifest()
        if manifest is not None:
            manifest.record(Path(root), NORM_STATS_PATH)
            manifest.write(Path(root))


def load_norm_stats(root: Path, which: str) -> NormStats | None:
    """The statistics ``chunk``/``tokenize`` normalise with: ``openclap`` (the released table) or
    ``dataset`` (computed by ``clap-data normstats``). None for human datasets (nothing to scale)."""
    embodiment = DatasetMetadata.load(root).robot_type
    if embodiment == HUMAN:
        return None
    if which == "openclap":
        return NormStats.from_table(openclap_stats_table(), embodiment, "openclap", "the OpenCLAP statistics table")
    if which == "dataset":
        path = Path(root) / NORM_STATS_PATH
        if not path.is_file():
            raise ClapDataError(f"{root} has no {NORM_STATS_PATH}; compute it with: clap-data normstats {root}")
        stored = json.loads(path.read_text())
        return NormStats.from_table(stored["statistics"], embodiment, f"dataset-{stored['id']}", str(path))
    raise ClapDataError(f"--stats must be openclap or dataset, not {which!r}")

