"""Benchmark the DuckDB token statistics (``clap_data.stats``) against numpy on arrays already in memory.

In one run: generate (once, cached in ``bench/out/stats_<frames>x<episode frames>_<file frames>/``) a minimal
clap-data dataset of ``--frames`` frames — ``action_tokens`` int16[16] (8 left + 8 right, K 512, each slot
holding its code for a few frames, new codes skewed towards a few common ones, as real chunk codes are),
``action_tokens_padded``, ``arm_mask`` (a quarter of the episodes single-arm, right slot), ``episode_index``,
``frame_index`` — written one episode (one row group, as lerobot writes them) at a time, so that generation
needs bounded memory; and the same at a quarter of the frames. Then, each in a fresh process (so that its
peak RSS, ``ru_maxrss``, is its own):

* *numpy*: the token and arm-mask arrays loaded into memory (not timed), then ``np.bincount`` per slot
  over the frames whose arm is active — the lower bound for per-slot usage; its peak RSS includes the arrays;
* *duckdb usage*: ``clap_data.stats.slot_usage`` — the same per-slot counts, read from parquet;
* *duckdb full*: ``clap_data.stats.token_stats`` — usage, entropy, dead codes, top codes per slot and
  pooled, and the chunk transitions (t → t + 32 in the same episode).

Each time is the fastest of ``--repeat`` runs (the machine may be shared). Prints the times, duckdb ÷ numpy,
peak RSS at both sizes (flat for DuckDB as rows grow), checks that DuckDB's counts equal numpy's, and writes
a section into ``--results`` (default ``bench/RESULTS.md``). Never run by ``make test``.

    python bench/stats.py [--frames 10000000] [--episode-frames 1000] [--file-frames 2000000]
                          [--threads 2] [--memory-limit 2GB] [--repeat 3] [--out bench/out]
                          [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from clap_data.schemas import (
    ACTION_TOKENS,
    ACTION_TOKENS_PADDED,
    ARM_MASK_COLUMN,
    CLAP_META_PATH,
    SCHEMA_NAME,
    SCHEMA_VERSION,
)

BENCH_DIR = Path(__file__).resolve().parent
SCRIPT = "bench/stats.py"
NUM_QUERIES, CODEBOOK, CHUNK = 8, 512, 32
SLOTS = 2 * NUM_QUERIES
HOLD_FRAMES = 8  # mean frames a slot keeps its code
SINGLE_ARM_SHARE = 0.25
MIB = 1024 * 1024

SCHEMA = pa.schema([
    ("episode_index", pa.int64()), ("frame_index", pa.int64()), (ARM_MASK_COLUMN, pa.list_(pa.float32(), 2)),
    (ACTION_TOKENS, pa.list_(pa.int16(), SLOTS)), (ACTION_TOKENS_PADDED, pa.bool_()),
])


# --- the dataset ------------------------------------------------------------------------------------


def episode_codes(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[frames, 16] codes: each slot holds a code for ~HOLD_FRAMES frames, new codes skewed towards low
    indices (a few codes common, a long tail, some never used), like a trained tokenizer's."""
    fresh = (CODEBOOK * rng.random((frames, SLOTS)) ** 3).astype(np.int16)
    change = rng.random((frames, SLOTS)) < 1 / HOLD_FRAMES
    change[0] = True
    since = np.where(change, np.arange(frames)[:, None], 0)
    np.maximum.accumulate(since, axis=0, out=since)
    return np.take_along_axis(fresh, since, axis=0)


def write_dataset(root: Path, frames: int, episode_frames: int, file_frames: int) -> None:
    """A clap-data dataset with only the columns the statistics read; its metadata says what the readers need."""
    rng = np.random.default_rng(0)
    episodes = frames // episode_frames
    per_file = max(1, file_frames // episode_frames)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    rows = []
    for first in range(0, episodes, per_file):
        path = root / "data" / "chunk-000" / f"file-{first // per_file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path, SCHEMA, compression="snappy") as writer:
            for episode in range(first, min(first + per_file, episodes)):
                single = rng.random() < SINGLE_ARM_SHARE
                mask = np.tile(np.array([0.0 if single else 1.0, 1.0], np.float32), episode_frames)
                frame = np.arange(episode_frames)
                codes = episode_codes(rng, episode_frames)
                writer.write_table(pa.table({
                    "episode_index": np.full(episode_frames, episode), "frame_index": frame,
                    ARM_MASK_COLUMN: pa.FixedSizeListArray.from_arrays(mask, 2),
                    ACTION_TOKENS: pa.FixedSizeListArray.from_arrays(codes.reshape(-1), SLOTS),
                    ACTION_TOKENS_PADDED: frame + CHUNK > episode_frames,
                }, schema=SCHEMA))
                rows.append({"episode_index": episode, "length": episode_frames, "data/chunk_index": 0,
                             "data/file_index": first // per_file, "dataset_from_index": episode * episode_frames,
                             "dataset_to_index": (episode + 1) * episode_frames})
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["bench"]}), root / "meta" / "tasks.parquet")
    identity = {"tokenizer": "act-vae", "checkpoint_sha256": "bench", "num_queries": NUM_QUERIES,
                "codebook_size": CODEBOOK, "chunk_size": CHUNK, "padded_column": ACTION_TOKENS_PADDED}
    features = {
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        ARM_MASK_COLUMN: {"dtype": "float32", "shape": [2], "names": ["left", "right"]},
        ACTION_TOKENS: {"dtype": "int16", "shape": [SLOTS], "names": None, "info": identity},
        ACTION_TOKENS_PADDED: {"dtype": "bool", "shape": [1], "names": None},
    }
    info = {"codebase_version": "v3.0", "robot_type": "bench-robot", "fps": 30, "total_episodes": episodes,
            "total_frames": episodes * episode_frames, "total_tasks": 1, "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (root / CLAP_META_PATH).write_text(json.dumps({"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION}))


def prepare(args: argparse.Namespace, frames: int) -> Path:
    """The dataset of ``frames`` frames, generated unless a complete one is already there."""
    root = args.out.resolve() / f"stats_{frames}x{args.episode_frames}_{args.file_frames}"
    done = root / ".complete"
    if not done.is_file():
        if root.exists():
            subprocess.run(["rm", "-rf", str(root)], check=True)
        started = time.perf_counter()
        write_dataset(root, frames, args.episode_frames, args.file_frames)
        done.write_text("")
        print(f"generated {frames:,} frames in {time.perf_counter() - started:.1f} s: {root}", file=sys.stderr)
    return root


# --- one measurement per process ------------------------------------------------------------------------


def load_arrays(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [N, 16] and arm mask [N, 2] in preallocated arrays, file by file, so that the peak is the
    arrays plus one file's table, as a numpy user holding the data would have it."""
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    tokens, mask = np.empty((total, SLOTS), np.int16), np.empty((total, 2), np.float32)
    at = 0
    for path in files:
        table = pq.read_table(path, columns=[ACTION_TOKENS, ARM_MASK_COLUMN])
        n = table.num_rows
        tokens[at:at + n] = table.column(ACTION_TOKENS).combine_chunks().values.to_numpy().reshape(n, SLOTS)
        mask[at:at + n] = table.column(ARM_MASK_COLUMN).combine_chunks().values.to_numpy().reshape(n, 2)
        at += n
        del table
    return tokens, mask


def timed(work: Any, repeat: int) -> tuple[tuple[float, float], Any]:
    """(wall, CPU) seconds of the fastest of ``repeat`` runs of ``work()`` (CPU: every thread of the process,
    which tells apart a slow run from one that only waited for cores other processes held), and its result."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best, result


def numpy_usage(root: Path, repeat: int) -> tuple[tuple[float, float], list[list[int]]]:
    """Per-slot ``bincount`` over the active arms, the arrays in memory."""
    tokens, mask = load_arrays(root)

    def work() -> list[np.ndarray]:
        active = mask > 0.5
        return [np.bincount(tokens[active[:, s // NUM_QUERIES], s], minlength=CODEBOOK) for s in range(SLOTS)]

    seconds, counts = timed(work, repeat)
    return seconds, [c.tolist() for c in counts]


def duckdb_run(root: Path, kind: str, args: argparse.Namespace) -> tuple[float, tuple[float, float], list[list[int]]]:
    """Seconds to open the corpus (connect, lock, make the views: no row read), then the statistics."""
    from clap_data.corpus import open_corpus
    from clap_data.stats import slot_usage, token_stats

    def work() -> list[list[int]]:
        if kind == "usage":
            return slot_usage(corpus)
        return [slot.usage.counts for slot in token_stats(corpus).columns[0].overall.slots]

    started = time.perf_counter()
    with open_corpus([root], purpose="bench", threads=args.threads, memory_limit=args.memory_limit) as corpus:
        opened = time.perf_counter() - started
        seconds, counts = timed(work, args.repeat)
    return opened, seconds, counts


def busy_cpu_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def measure_one(args: argparse.Namespace) -> None:
    """In a fresh process: run one measurement, print its numbers as JSON (counts to a file beside)."""
    me = psutil.Process()
    start_rss = me.memory_info().rss
    busy, own = busy_cpu_seconds(), sum(me.cpu_times()[:2])
    wall = time.perf_counter()
    if args.one == "numpy":
        opening, (seconds, counts) = 0.0, numpy_usage(args.dataset, args.repeat)
    else:
        opening, seconds, counts = duckdb_run(args.dataset, args.one, args)
    wall = time.perf_counter() - wall
    others = (busy_cpu_seconds() - busy) - (sum(me.cpu_times()[:2]) - own)
    Path(args.counts).write_text(json.dumps(counts))
    print(json.dumps({"seconds": seconds[0], "cpu_seconds": seconds[1], "open_seconds": opening,
                      "start_mib": start_rss / MIB,
                      "other_cores": max(0.0, others / wall),
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(args: argparse.Namespace, root: Path, kind: str) -> dict[str, Any]:
    counts = args.out.resolve() / f"stats_counts_{kind}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", kind, "--dataset", str(root),
            "--counts", str(counts), "--threads", str(args.threads), "--memory-limit", args.memory_limit,
            "--repeat", str(args.repeat)]
    child = subprocess.run(argv, capture_output=True, text=True)
    if child.returncode:
        raise SystemExit(f"measuring {kind} on {root} failed:\n{child.stderr}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["counts"] = json.loads(counts.read_text())
    counts.unlink()
    print(f"  {kind:>6}: {result['seconds']:.2f} s, {result['cpu_seconds']:.2f} CPU s "
          f"(+ {result['open_seconds']:.2f} s to open), "
          f"peak RSS {result['peak_mib']:.0f} MiB (other processes {result['other_cores']:.2f} cores)", file=sys.stderr)
    return result


# --- the report -------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    import duckdb

    return (f"{os.cpu_count()} × {cpu}, {psutil.virtual_memory().total / 1024**3:.1f} GiB RAM; "
            f"duckdb {duckdb.__version__}, numpy {np.__version__}, pyarrow {pa.__version__}")


def measuring_options() -> list[str]:
    """This run's command-line options, less where it writes (``--out``, ``--results``)."""
    words, shown = iter(sys.argv[1:]), []
    for word in words:
        if word in ("--out", "--results"):
            next(words, None)  # its value
        elif not word.startswith(("--out=", "--results=")):
            shown.append(word)
    return shown


def section(args: argparse.Namespace, results: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = [
        f"## Token statistics: DuckDB from parquet vs numpy in memory ({datetime.date.today().isoformat()})", "",
        f"Machine: {machine()} (shared with other work; *other* = cores other processes kept busy).",
        f"Command: `.venv/bin/python {shlex.join([SCRIPT, *measuring_options()])}`; "
        f"DuckDB limited to {args.threads} threads "
        f"and {args.memory_limit}; numpy's `bincount` runs on one core; each time is the fastest of "
        f"{args.repeat} runs.",
        f"Data: `action_tokens` int16[16] (K {CODEBOOK}), padded flag, arm mask "
        f"({SINGLE_ARM_SHARE:.0%} of episodes single-arm), "
        f"episode and frame index; episodes of {args.episode_frames} frames, one row group each, "
        f"{args.file_frames:,} frames per file, snappy.",
        "",
        "| frames | numpy bincount: s (CPU s) | duckdb usage: s (CPU s) | usage ÷ numpy: time (CPU) "
        "| duckdb full stats: s (CPU s) | full ÷ numpy: time (CPU) | duckdb open (s) "
        "| peak RSS numpy / usage / full (MiB) | other (cores) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for frames, r in sorted(results.items()):
        n, u, f = r["numpy"], r["usage"], r["full"]

        def cell(x: dict[str, Any]) -> str:
            return f"{x['seconds']:.3f} ({x['cpu_seconds']:.3f})"

        def ratio(x: dict[str, Any]) -> str:
            return f"{x['seconds'] / n['seconds']:.1f}× ({x['cpu_seconds'] / n['cpu_seconds']:.1f}×)"

        other = max(x["other_cores"] for x in (n, u, f))
        lines.append(f"| {frames:,} | {cell(n)} | {cell(u)} | {ratio(u)} | {cell(f)} | {ratio(f)} "
                     f"| {u['open_seconds']:.2f} | {n['peak_mib']:.0f} / {u['peak_mib']:.0f} / {f['peak_mib']:.0f} "
                     f"| ≤ {other:.2f} |")
    start = max(r[k]["start_mib"] for r in results.values() for k in ("usage", "full"))
    lines += ["", f"Times exclude loading (numpy) and opening the corpus (DuckDB: connect, lock, create the views; "
              f"shown apart). Peak RSS is each measuring process's `ru_maxrss`, the interpreter and imports "
              f"included (≤ {start:.0f} MiB before measuring)."]
    lines += ["", "Counts: DuckDB's per-slot usage equals numpy's at every size (checked by the benchmark).", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000_000, help="frames of the large dataset (and a quarter)")
    parser.add_argument("--episode-frames", type=int, default=1000, help="frames per episode (one row group)")
    parser.add_argument("--file-frames", type=int, default=2_000_000, help="frames per data file")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is reported")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="scratch folder (gitignored bench/out)")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md", help="where the section is written")
    parser.add_argument("--one", choices=("numpy", "usage", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--counts", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        measure_one(args)
        return
    results = {}
    for frames in (args.frames // 4, args.frames):
        root = prepare(args, frames)
        print(f"{frames:,} frames:", file=sys.stderr)
        results[frames] = {kind: measure(args, root, kind) for kind in ("numpy", "usage", "full")}
        for kind in ("usage", "full"):
            if results[frames][kind]["counts"] != results[frames]["numpy"]["counts"]:
                raise SystemExit(f"duckdb {kind} counts differ from numpy's at {frames:,} frames")
    text = section(args, results)
    print(text)
    sys.path.insert(0, str(BENCH_DIR))
    from ingest import update_results  # bench/ingest.py writes every RESULTS.md section

    update_results(args.results, f"frames={args.frames}", text, SCRIPT)


if __name__ == "__main__":
    main()
