"""Benchmark the Act-VAE tokenize pipeline against the bare model forward on the same chunks.

In one run: generate (or reuse) a unified Astribot dataset with long episodes and an untrained
checkpoint of ``--preset`` (weights do not change the speed), then, each in a fresh process,

* the *bare forward*: build the normalised dual-arm chunks of the whole dataset exactly as the
  pipeline does (``episode_chunks`` + ``model_chunks`` with the dataset's openclap statistics), then
  time only ``model.tokenize_dual(batch)`` over batches of ``--batch-size`` on ``--device``;
* the *pipeline*: ``tokenize_dataset`` end to end on a fresh copy of the dataset (the copy is not
  timed), with Ray started just before it through ``ray_session`` so its start-up is reported apart,

sampling peak RSS of the driver and of the driver plus every Ray process. Prints chunks/s of both
and their ratio (the pipeline's efficiency), checks that both produced the same tokens, and writes
a section per configuration (device and preset included) into ``bench/RESULTS.md``. Reuses the
measuring helpers of ``bench/ingest.py``. Never run by ``make test``.

    python bench/tokenize_act_vae.py [--frames 40000] [--episodes 40] [--preset small] [--batch-size 4096]
                             [--workers 2] [--device auto] [--baseline-threads N] [--out bench/out]

Named ``tokenize_act_vae.py``, not ``tokenize.py``: a file called ``tokenize.py`` in ``bench/`` would
shadow the standard library's ``tokenize`` for every script run from here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # as clap_data.ray_runtime sets it, before Ray is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  the Astribot benchmark's measuring helpers (Monitor, update_results, …)

from clap_data.lerobot_v3.metadata import DatasetMetadata  # noqa: E402
from clap_data.pipelines.column_job import pool_shape  # noqa: E402
from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset  # noqa: E402
from clap_data.schemas import ACTION_TOKENS as TOKENS_COLUMN  # noqa: E402

_BENCH = str(Path(__file__).resolve().parent)


SCRIPT = "bench/tokenize_act_vae.py"
STATS = "openclap"  # the pipeline's default statistics, used by both sides
CAMERA_SIZE = (32, 32)  # one small camera: only the actions matter here
CPU_WARMUP_CHUNKS = 256  # a full batch on CPU takes seconds; one-time set-up needs only a call


# --- data and checkpoint --------------------------------------------------------------------------


def dataset_tag(args: argparse.Namespace) -> str:
    return f"tokenize_{args.episodes}x{args.episode_frames}"


def master_dataset(args: argparse.Namespace) -> Path:
    """The unified dataset every measurement starts from; it is never tokenized itself."""
    return args.out.resolve() / dataset_tag(args) / "v3"


def scratch(args: argparse.Namespace, name: str) -> Path:
    """Where one configuration's measuring processes leave their numbers and tokens for the parent."""
    return args.out.resolve() / dataset_tag(args) / f"{args.device_key}_{args.preset}_{name}"


def checkpoint_dir(args: argparse.Namespace) -> Path:
    return args.out.resolve() / f"tokenize_ckpt_{args.preset}"


def prepare_dataset(args: argparse.Namespace) -> str:
    """Generate the Astribot source and ingest it, unless a complete untokenized one is there."""
    from clap_data.factories.astribot import write_astribot_dataset
    from clap_data.pipelines.ingest import IngestRequest, ingest
    from clap_data.sources.astribot import AstribotSource

    v3 = master_dataset(args)
    if (v3 / "meta/info.json").is_file():
        meta = DatasetMetadata.load(v3)
        if (meta.total_frames, meta.total_episodes) == (args.total_frames, args.episodes) and TOKENS_COLUMN not in meta.features:
            return f"reused {v3}"
    source = v3.parent / "astribot"
    started = time.perf_counter()
    write_astribot_dataset(
        source, episode_lengths=[args.episode_frames] * args.episodes, cameras=("head",), video_size=CAMERA_SIZE,
        reuse_videos=True, overwrite=True,
    )
    generated = time.perf_counter()
    report = ingest(AstribotSource(source), IngestRequest(out=v3, overwrite=True, workers=args.workers))
    if report.quarantine or report.frames != args.total_frames:
        raise SystemExit(f"ingesting {source} gave {report.frames} frames of {args.total_frames}: {report.quarantine[:3]}")
    shutil.rmtree(source)  # only the unified dataset is needed from now on
    return f"generated in {generated - started:.0f} s, ingested in {time.perf_counter() - generated:.0f} s"


def prepare_checkpoint(args: argparse.Namespace) -> str:
    """An untrained model of the preset, seeded: weights do not change the speed of a forward."""
    import torch

    from clap_data.act_vae.training import preset_config
    from clap_data.models import ActVAE, save_model

    ckpt = checkpoint_dir(args)
    if not (ckpt / "config.json").is_file() or not (ckpt / "model.safetensors").is_file():
        torch.manual_seed(0)
        save_model(ActVAE(preset_config(args.preset)), ckpt)
    model = json.loads((ckpt / "config.json").read_text())
    shape = ", ".join(f"{k} {model[k]}" for k in ("width", "encoder_layers", "num_queries", "codebook_size"))
    size = (ckpt / "model.safetensors").stat().st_size / ingest_bench.MIB
    return f"untrained `{args.preset}` preset ({shape}; {size:,.1f} MiB of weights)"


def dataset_chunks(root: Path, stats: Any) -> np.ndarray:
    """Every frame's normalised dual-arm chunk, float32 ``[frames, 32, 14]``, in the order of the
    rows of the dataset's data files (the order the pipeline's ``action_tokens`` column then has)."""
    from clap_data.actions import episode_chunks, model_chunks

    out = []
    for relative in DatasetMetadata.load(root).data_files():
        table = pq.read_table(root / relative, columns=["episode_index", "frame_index", "observation.state", "action", "arm_mask"])
        episodes, frames = table.column("episode_index").to_numpy(), table.column("frame_index").to_numpy()
        state, action, arm_mask = (
            np.asarray(table.column(name).combine_chunks().flatten(), dtype=np.float64).reshape(table.num_rows, -1)
            for name in ("observation.state", "action", "arm_mask")
        )
        chunks = np.empty((table.num_rows, 32, 14), np.float32)
        for episode in np.unique(episodes):
            rows = np.flatnonzero(episodes == episode)
            rows = rows[np.argsort(frames[rows], kind="stable")]
            relative_chunks, _ = episode_chunks(state[rows], action[rows])
            chunks[rows] = model_chunks(relative_chunks, arm_mask[rows], stats)
        out.append(chunks)
    return np.concatenate(out)


# --- the two measurements, each in its own process -------------------------------------------------


def cpu_seconds(monitor: Any) -> float:
    """CPU time the benchmark's own processes used while ``monitor`` watched (exited ones included)."""
    return sum(monitor._cpu_by_pid.values())  # Monitor keeps it per pid; see bench/ingest.py


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Chunks built first (timed apart), then only ``tokenize_dual`` over the batches is timed."""
    import torch

    from clap_data.act_vae.checkpoint import load_act_vae
    from clap_data.norm_stats import load_norm_stats

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.baseline_threads)
    root = master_dataset(args)
    with ingest_bench.Monitor() as monitor:
        started = time.perf_counter()
        model, _ = load_act_vae(checkpoint_dir(args), str(device))
        loaded = time.perf_counter()
        chunks = dataset_chunks(root, load_norm_stats(root, STATS))
        built = time.perf_counter()
        batches = torch.from_numpy(chunks).split(args.batch_size)  # views on the CPU, like the actor's input
        warmup = batches[0] if device.type == "cuda" else batches[0][:CPU_WARMUP_CHUNKS]
        model.tokenize_dual(warmup).cpu()
        warmed = time.perf_counter()
        tokens = [model.tokenize_dual(batch).cpu() for batch in batches]  # .cpu() waits for the GPU
        finished = time.perf_counter()
    np.save(scratch(args, "baseline_tokens.npy"), torch.cat(tokens).numpy())
    return {
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "gpu_max_allocated_mib": torch.cuda.max_memory_allocated(device) / ingest_bench.MIB if device.type == "cuda" else None,
        "chunks": len(chunks),
        "batches": len(batches),
        "load_seconds": loaded - started,
        "build_seconds": built - loaded,
        "warmup_seconds": warmed - built,
        "forward_seconds": finished - warmed,
        "driver_peak_mib": monitor.driver_peak / ingest_bench.MIB,
        "cpu_seconds": cpu_seconds(monitor),
        "other_cores": monitor.other_cores,
    }


class TokenizeClock:
    """A pipeline Reporter that only notes when things happen, to split the tokenize run into phases
    without touching the pipeline (``advance`` is called once per row group whose codes are all in)."""

    def __init__(self) -> None:
        self.tokenizing = self.tokenizing_epoch = self.first_group = self.last_group = self.stopped = 0.0
        self.groups = self.frames = 0

    def phase(self, text: str) -> None:
        if text.startswith("Tokenizing"):
            self.tokenizing, self.tokenizing_epoch = time.perf_counter(), time.time()

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: bool, frames: int) -> None:
        self.last_group = time.perf_counter()
        self.first_group = self.first_group or self.last_group
        self.groups += 1
        self.frames += frames

    def stop(self) -> None:
        self.stopped = time.perf_counter()


def time_ray_work(log: Path) -> None:
    """Wrap the pipeline's model actor and chunk-building function so that each constructor, model
    call and chunk-building task appends its wall-clock span to ``log`` (one JSON line, written from
    the Ray worker): the only way to see, from outside, how much of the pipeline's time is the model
    and how much is start-up and plumbing. Costs a small file append per call; the pool, resources
    and batches are the pipeline's own."""
    import clap_data.pipelines.tokenize as pipeline

    tokenizer, build_chunks, path = pipeline._ActVAETokenizer, pipeline._build_chunks, str(log)

    def note(kind: str, started: float, chunks: int) -> None:
        with open(path, "a") as handle:
            handle.write(json.dumps({"kind": kind, "start": started, "end": time.time(), "chunks": chunks}) + "\n")

    class TimedTokenizer(tokenizer):
        def __init__(self, **kwargs: Any) -> None:  # whatever the pipeline's actor takes
            started = time.time()
            super().__init__(**kwargs)
            note("actor_init", started, 0)

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            started = time.time()
            out = super().__call__(batch)
            note("model_call", started, len(batch["chunk"]))
            return out

    def timed_build_chunks(batch: dict[str, np.ndarray], root: str, stats: Any) -> dict[str, Any]:
        started = time.time()
        out = build_chunks(batch, root, stats)
        note("chunk_build", started, len(out["row"]))
        return out

    pipeline._ActVAETokenizer, pipeline._build_chunks = TimedTokenizer, timed_build_chunks


def ray_work(log: Path, since: float) -> dict[str, float]:
    """Sums and first/last moments (seconds after ``since``, the "Tokenizing" phase) of the spans."""
    spans = [json.loads(line) for line in log.read_text().splitlines()]

    def of(kind: str) -> list[dict[str, float]]:
        return [s for s in spans if s["kind"] == kind]

    calls, builds, inits = of("model_call"), of("chunk_build"), of("actor_init")
    if not (calls and builds and inits):
        raise SystemExit(f"{log} lacks model calls, chunk building or actor start-ups: the pipeline changed")
    return {
        "actor_init_seconds": max(s["end"] - s["start"] for s in inits),
        "first_call_after_seconds": min(s["start"] for s in calls) - since,
        "last_call_after_seconds": max(s["end"] for s in calls) - since,
        "model_calls_seconds": sum(s["end"] - s["start"] for s in calls),
        "model_calls": len(calls),
        "chunks_encoded": sum(s["chunks"] for s in calls),
        "chunk_build_seconds": sum(s["end"] - s["start"] for s in builds),
    }


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """tokenize_dataset end to end on a fresh copy, Ray started first (through the pipeline's own
    ray_session, which tokenize_dataset then joins) so that its start-up can be told apart."""
    from clap_data.ray_runtime import ray_session

    work = scratch(args, "run")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(master_dataset(args), work / "v3")  # not timed: the pipeline changes it in place
    log = work / "ray_work.jsonl"
    time_ray_work(log)
    clock = TokenizeClock()
    request = TokenizeRequest(ckpt=checkpoint_dir(args), stats=STATS, device=args.device, batch_size=args.batch_size, workers=args.workers)
    with ingest_bench.Monitor() as monitor:
        started = time.perf_counter()
        with ray_session(None, args.workers):
            ray_ready = time.perf_counter()
            report = tokenize_dataset(work / "v3", request, clock)
            tokenized = time.perf_counter()
        finished = time.perf_counter()
    if report.unchanged or report.frames != args.total_frames:
        raise SystemExit(f"the pipeline tokenized {report.frames} of {args.total_frames} frames (unchanged: {report.unchanged})")
    if not (clock.tokenizing and clock.first_group and clock.stopped):
        raise SystemExit("the pipeline's reporter calls changed: update TokenizeClock, the phase timings would be wrong")
    tokens = np.concatenate([pq.read_table(work / "v3" / f, columns=[TOKENS_COLUMN]).column(0).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                             for f in DatasetMetadata.load(work / "v3").data_files()])
    np.save(scratch(args, "pipeline_tokens.npy"), tokens.reshape(args.total_frames, -1))
    work_spans = ray_work(log, clock.tokenizing_epoch)
    if work_spans["chunks_encoded"] != args.total_frames:
        raise SystemExit(f"the model actors encoded {work_spans['chunks_encoded']} chunks, the dataset has {args.total_frames}")
    shutil.rmtree(work)
    return {
        "ray_init_seconds": ray_ready - started,
        "tokenize_seconds": tokenized - ray_ready,
        "ray_shutdown_seconds": finished - tokenized,
        "setup_seconds": clock.tokenizing - ray_ready,  # checks, model load for the identity, staging
        "first_group_seconds": clock.first_group - clock.tokenizing,  # until the codes of a row group are all back
        "encode_seconds": clock.stopped - clock.tokenizing,  # until the last data file is staged
        "commit_seconds": tokenized - clock.stopped,
        **work_spans,
        "frames": report.frames,
        "files": report.files,
        "row_groups": clock.groups,
        "model_actors": model_actors(args),
        "driver_start_mib": monitor.driver_start / ingest_bench.MIB,
        "driver_peak_mib": monitor.driver_peak / ingest_bench.MIB,
        "tree_peak_mib": monitor.tree_peak / ingest_bench.MIB,
        "processes_peak": monitor.processes_peak,
        "cpu_seconds": cpu_seconds(monitor),
        "other_cores": monitor.other_cores,
    }


def model_actors(args: argparse.Namespace) -> str:
    """The actor pool the pipeline runs with Ray started on ``--workers`` CPUs."""
    if args.device_key.startswith("cuda"):
        return "1 per GPU"
    pool = pool_shape(args.workers, 0, args.workers)
    return f"{pool.actors} × {pool.threads} thread(s)"


# --- report ---------------------------------------------------------------------------------------


def agreement(args: argparse.Namespace) -> dict[str, float]:
    """How many chunks got the same tokens from both sides (same weights, same chunks): a check that
    the two measured the same work; float rounding can differ with the batch boundaries."""
    base = np.load(scratch(args, "baseline_tokens.npy"))
    pipe = np.load(scratch(args, "pipeline_tokens.npy"))
    if base.shape != pipe.shape:
        raise SystemExit(f"baseline tokens {base.shape} vs pipeline tokens {pipe.shape}")
    return {"chunks": float((base == pipe).all(axis=1).mean()), "tokens": float((base == pipe).mean())}


def throughput_table(b: dict[str, Any], p: dict[str, Any], args: argparse.Namespace) -> str:
    total = p["ray_init_seconds"] + p["tokenize_seconds"] + p["ray_shutdown_seconds"]
    excl = total - p["ray_init_seconds"]
    b_cps, p_cps, x_cps = b["chunks"] / b["forward_seconds"], p["frames"] / total, p["frames"] / excl
    device = b["gpu"] or f"cpu, {b['threads']} threads"
    lines = [
        "| device | preset | chunks (= frames) | batch | bare forward s | bare forward chunks/s | Ray init s | pipeline s "
        "| pipeline chunks/s | **ratio** | pipeline s excl. Ray init | chunks/s excl. init | ratio excl. init |",
        "|---|---|" + "---:|" * 11,
        f"| {device} | {args.preset} | {p['frames']:,} | {args.batch_size} | {b['forward_seconds']:.2f} | {b_cps:,.0f} "
        f"| {p['ray_init_seconds']:.2f} | {total:.2f} | {p_cps:,.0f} | **{p_cps / b_cps:.3f}** | {excl:.2f} | {x_cps:,.0f} "
        f"| {x_cps / b_cps:.3f} |",
    ]
    return "\n".join(lines)


def phases_table(b: dict[str, Any], p: dict[str, Any]) -> str:
    """Where each side's time goes; times after "Tokenizing" are counted from that phase message."""
    lines = [
        "| pipeline: setup s | first model call after s | of which actor start-up s | model calls s (sum) "
        "| last model call done after s | last file staged after s | commit s | Ray shutdown s "
        "| chunk-building tasks s (sum) | model actors | CPU s used | other processes (cores) |",
        "|" + "---:|" * 12,
        f"| {p['setup_seconds']:.2f} | {p['first_call_after_seconds']:.2f} | {p['actor_init_seconds']:.2f} "
        f"| {p['model_calls_seconds']:.2f} ({p['model_calls']} calls) | {p['last_call_after_seconds']:.2f} "
        f"| {p['encode_seconds']:.2f} | {p['commit_seconds']:.2f} | {p['ray_shutdown_seconds']:.2f} "
        f"| {p['chunk_build_seconds']:.2f} | {p['model_actors']} | {p['cpu_seconds']:.1f} | {p['other_cores']:.2f} |",
        "",
        "| bare: chunk building s (not timed) | model load s | warm-up s | forward s | CPU s used | other processes (cores) |",
        "|" + "---:|" * 6,
        f"| {b['build_seconds']:.2f} | {b['load_seconds']:.2f} | {b['warmup_seconds']:.2f} | {b['forward_seconds']:.2f} "
        f"({b['batches']} calls) | {b['cpu_seconds']:.1f} | {b['other_cores']:.2f} |",
        "",
        f"Model throughput: the pipeline's model calls {p['chunks_encoded'] / p['model_calls_seconds']:,.0f} chunks per second "
        f"of call time (actors: {p['model_actors']}), the bare forward {b['chunks'] / b['forward_seconds']:,.0f} chunks/s.",
    ]
    return "\n".join(lines)


def memory_table(b: dict[str, Any], p: dict[str, Any]) -> str:
    gpu = f"{b['gpu_max_allocated_mib']:,.0f}" if b["gpu_max_allocated_mib"] is not None else "–"
    lines = [
        "| bare: peak RSS MiB | bare: GPU max allocated MiB | pipeline: driver RSS before MiB | peak driver RSS MiB "
        "| peak driver + Ray RSS MiB | processes at most |",
        "|" + "---:|" * 6,
        f"| {b['driver_peak_mib']:,.0f} | {gpu} | {p['driver_start_mib']:,.0f} | {p['driver_peak_mib']:,.0f} "
        f"| {p['tree_peak_mib']:,.0f} | {p['processes_peak']} |",
    ]
    return "\n".join(lines)


def config_key(args: argparse.Namespace) -> str:
    """Identifies a configuration; device and preset are part of it so CPU and GPU sections coexist."""
    key = f"device={args.device_key} preset={args.preset} frames={args.total_frames} episodes={args.episodes} " \
          f"batch-size={args.batch_size} workers={args.workers}"
    return key + (f" baseline-threads={args.baseline_threads}" if args.device_key == "cpu" and args.baseline_threads != args.workers else "")


def results_section(args: argparse.Namespace, command: str, machine: dict[str, str], prepared: dict[str, str],
                    b: dict[str, Any], p: dict[str, Any], agree: dict[str, float]) -> str:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine_lines = "\n".join(f"- {name}: {value}" for name, value in {**machine, "torch": prepared["torch"]}.items())
    threads = (f"torch threads = {b['threads']}: `--baseline-threads`, by default `--workers`, for a fair share of the "
               f"cores; the pipeline's model actors: {model_actors(args)}") if b["threads"] else f"{b['gpu']}"
    return (
        f"## Act-VAE tokenize vs bare forward: {config_key(args)} ({date})\n\n"
        f"Written by `{SCRIPT}` (see `bench/README.md`). **Bare forward** = `ActVAE.tokenize_dual` in one process on "
        f"the same device ({threads}), over the dataset's chunks in batches of {args.batch_size} consecutive chunks "
        f"(the last one partial); the timed loop is `model.tokenize_dual(batch).cpu()`, so on CUDA it includes each "
        f"batch's copy to the GPU and the tokens' copy back, as the pipeline's actor does. It *excludes* reading the "
        f"parquet files, building and normalising the chunks (`episode_chunks` + `model_chunks`, {STATS} statistics; "
        f"timed apart as \"chunk building\"), loading the model, one untimed warm-up call (a full batch on CUDA, "
        f"{CPU_WARMUP_CHUNKS} chunks on CPU) and writing anything. **Pipeline** = `tokenize_dataset` end to end on a "
        f"fresh copy of the dataset (the copy is not timed): checks, loading the model for its identity, Ray Data "
        f"chunk building, the model actor pool, collecting codes, staging the data files with the new columns and "
        f"the commit; Ray is started by the benchmark just before, through `ray_session(None, {args.workers})` "
        f"(which `tokenize_dataset` joins), so \"excl. Ray init\" can leave it out; `ray.shutdown` is counted in both. "
        f"Its phases are seen from outside: a Reporter notes the \"Tokenizing\" message (times below count from it) "
        f"and the row groups whose codes are back, and the benchmark wraps the pipeline's model actor and "
        f"chunk-building function to log the span of each actor start-up, model call and chunk-building task "
        f"(\"model calls s\" is the same work as the bare forward, done by the pipeline's actors). "
        f"One chunk per frame, so pipeline chunks/s = frames/s. **ratio = pipeline chunks/s ÷ bare forward "
        f"chunks/s.** Both sides are measured in a fresh process; RSS is sampled every {ingest_bench.SAMPLE_SECONDS} s "
        f"(\"driver + Ray\" sums all descendants, shared pages counted per process); the bare side holds every chunk "
        f"of the dataset in memory, the pipeline streams them. \"CPU s used\" sums the CPU time of the benchmark's own "
        f"processes; \"other processes\" = average cores busy with work that is not the benchmark's (above ~0.2 "
        f"on 2 cores the timings are disturbed). GPU memory of the pipeline's actor is not measured.\n\n"
        f"Command: `{command}`\n\n{machine_lines}\n\n"
        f"- dataset: {args.episodes} Astribot S1 episodes × {args.episode_frames} frames ({args.total_frames:,} frames), "
        f"1 camera {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}, ingested to LeRobot v3.0 (data files: {p['files']}, "
        f"{p['row_groups']} row groups)\n- checkpoint: {prepared['checkpoint']}\n\n"
        f"{throughput_table(b, p, args)}\n\nWhere the time goes (pipeline, then bare forward):\n\n{phases_table(b, p)}\n\n"
        f"Peak memory:\n\n{memory_table(b, p)}\n\n"
        f"Same tokens from both sides: {agree['chunks']:.2%} of chunks ({agree['tokens']:.3%} of tokens).\n"
    )


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40000, help="total frames (= chunks), spread evenly over the episodes")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--preset", default="small", choices=("small", "release"), help="Act-VAE size (untrained)")
    parser.add_argument("--batch-size", type=int, default=4096, help="chunks per model call, both sides")
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs for the pipeline (and --workers of its request)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N, both sides")
    parser.add_argument("--baseline-threads", type=int, help="torch threads of the bare forward on CPU (default: --workers)")
    parser.add_argument("--out", type=Path, default=Path(_BENCH) / "out", help="scratch folder (gitignored bench/out)")
    parser.add_argument("--step", choices=("baseline", "pipeline"), help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.frames < args.episodes:
        parser.error("need at least one episode and one frame per episode")
    args.episode_frames = args.frames // args.episodes
    args.total_frames = args.episode_frames * args.episodes
    args.baseline_threads = args.baseline_threads or args.workers
    return args


def resolve_device(args: argparse.Namespace) -> None:
    """``auto`` becomes what the pipeline would pick; the result names the configuration."""
    from clap_data.act_vae.training import pick_device

    args.device = str(pick_device(args.device))
    args.device_key = args.device


def measure(step: str, argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh interpreter, so that its peak RSS carries nothing of the other's."""
    print(f"== {step}…", flush=True)
    child = subprocess.run([sys.executable, os.path.realpath(__file__), *argv, "--device", args.device, "--step", step])
    if child.returncode:
        raise SystemExit(f"the {step} measurement failed (exit status {child.returncode}); its output is above")
    return json.loads(scratch(args, f"{step}.json").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    resolve_device(args)
    if args.step:
        result = run_baseline(args) if args.step == "baseline" else run_pipeline(args)
        scratch(args, f"{args.step}.json").write_text(json.dumps(result))
        return 0
    import torch

    machine = ingest_bench.machine_description()
    for name, value in machine.items():
        print(f"{name}: {value}")
    print(f"== dataset {master_dataset(args)}: {args.episodes} episodes × {args.episode_frames} frames", flush=True)
    print(f"   {prepare_dataset(args)}", flush=True)
    prepared = {"checkpoint": prepare_checkpoint(args), "torch": f"{torch.__version__} (device {args.device})"}
    print(f"   checkpoint {checkpoint_dir(args)}: {prepared['checkpoint']}", flush=True)
    baseline = measure("baseline", argv, args)
    print(f"   bare forward {baseline['forward_seconds']:.1f} s (chunk building {baseline['build_seconds']:.1f} s)", flush=True)
    pipeline = measure("pipeline", argv, args)
    total = pipeline["ray_init_seconds"] + pipeline["tokenize_seconds"] + pipeline["ray_shutdown_seconds"]
    print(f"   pipeline {total:.1f} s", flush=True)
    agree = agreement(args)
    print()
    print(throughput_table(baseline, pipeline, args))
    print()
    print(phases_table(baseline, pipeline))
    print()
    print(memory_table(baseline, pipeline))
    print(f"\nsame tokens: {agree['chunks']:.2%} of chunks, {agree['tokens']:.3%} of tokens")
    command = shlex.join([".venv/bin/python", SCRIPT, *argv])
    section = results_section(args, command, machine, prepared, baseline, pipeline, agree)
    ingest_bench.update_results(ingest_bench.RESULTS_PATH, config_key(args), section, script=SCRIPT)
    print(f"\nwritten to {ingest_bench.RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
