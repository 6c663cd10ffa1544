"""Benchmark the shard loader (``clap_data.training.loader``) against stock ``LeRobotDataset`` on the same frames.

In one run: generate (or reuse) a tokenized dataset — the rendered-motion robot factory (textured frames drawn from
the motion, HEVC with a keyframe every 2 frames: lerobot's own random-access setting), ingested, tokenized with an
untrained ``small`` Act-VAE (weights do not change the speed) — and export it to shards (timed: the export's own
samples/s). Then, each in a fresh process, for ``--seconds``, in ``--rounds`` interleaved rounds (median reported):

* the *loader*: :func:`clap_data.training.loader.iter_steps` with ``--workers`` DataLoader workers, batches of
  ``--batch-size``: per sample the JPEGs of the dataset's cameras at t decoded to uint8 (HWC), the state, the
  normalised ``[32, 14]`` chunk, tokens and text;
* *LeRobotDataset* with ``video_backend="pyav"``, then with lerobot's default (torchcodec), under a shuffled
  ``torch.utils.data.DataLoader`` with the same workers and batch size: per sample the same cameras' frames at t,
  the state and the 32-step action chunk (``delta_timestamps``), i.e. the same frames per sample (its chunk is
  absolute commands: turning it into the model's normalised chunk is not charged to it).

Reports samples/s of each, the ratio loader ÷ LeRobotDataset, time to the first batch, peak RSS of the driver and of
the driver + its DataLoader workers, the CPU other processes used meanwhile; checks that the loader's images and
chunk are LeRobotDataset's frames and chunk (resized JPEG within tolerance; ``tokenizer_input`` of its chunk), and
writes a section into ``--results``. Reuses ``bench/ingest.py``'s measuring helpers. Never run by ``make test``.

    python bench/loader.py [--episodes 8] [--frames 150] [--size 320x240] [--batch-size 32] [--workers 2]
                           [--seconds 15] [--rounds 3] [--out bench/out] [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  the Astribot benchmark's measuring helpers (Monitor, update_results, …)

SCRIPT = "bench/loader.py"
SIDES = ("loader", "lerobot-pyav", "lerobot-torchcodec")
_BENCH = Path(__file__).resolve().parent


# --- data ------------------------------------------------------------------------------------------------------


def work_dir(args: argparse.Namespace) -> Path:
    return args.out.resolve() / f"loader_{args.episodes}x{args.frames}_{args.size}"


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """The rendered source, ingested and tokenized (cached), then exported afresh (timed)."""
    from clap_data.act_vae.training import preset_config
    from clap_data.factories.rendered import write_rendered_robot
    from clap_data.models import ActVAE, save_model
    from clap_data.pipelines.export import ExportRequest, export
    from clap_data.pipelines.ingest import IngestRequest, ingest
    from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset
    from clap_data.sources.astribot import AstribotSource

    root = work_dir(args)
    v3, shards = root / "v3", root / "shards"
    facts: dict[str, Any] = {}
    if not (v3 / "meta/info.json").is_file() or "action_tokens" not in (v3 / "meta/info.json").read_text():
        started = time.perf_counter()
        (source,) = write_rendered_robot(root / "rendered", episodes=args.episodes, lengths=(args.frames, args.frames),
                                         variants=1, size=args.video_size, overwrite=True)
        generated = time.perf_counter()
        ingest(AstribotSource(source), IngestRequest(out=v3, overwrite=True, workers=args.workers))
        import torch

        torch.manual_seed(0)
        save_model(ActVAE(preset_config("small")), root / "ckpt")
        tokenize_dataset(v3, TokenizeRequest(ckpt=root / "ckpt", device="cpu", workers=args.workers))
        facts["generated"] = f"rendered in {generated - started:.0f} s, ingested + tokenized in " \
                             f"{time.perf_counter() - generated:.0f} s"
    else:
        facts["generated"] = f"reused {v3}"
    started = time.perf_counter()
    report = export([v3], ExportRequest(out=shards, cameras=tuple(CAMERAS), overwrite=True, workers=args.workers,
                                        image_size=(args.video_size[1], args.video_size[0])))
    facts["export_seconds"] = time.perf_counter() - started
    facts["export_samples"] = sum(report.samples.values())
    facts["export_mib"] = report.bytes / ingest_bench.MIB
    facts["train_samples"] = report.samples["train"]
    facts["shards"] = report.shards
    lerobot_dataset(v3, "pyav")  # builds lerobot's datasets cache once, outside the measurements
    return facts


CAMERAS = ("head", "wrist_left")  # what the rendered robot records (head, and Astribot's left camera)


def lerobot_dataset(v3: Path, backend: str | None) -> Any:
    from lerobot.datasets import LeRobotDataset

    fps = json.loads((v3 / "meta/info.json").read_text())["fps"]
    options = {"video_backend": backend} if backend else {}
    return LeRobotDataset("local/bench_loader", root=v3, delta_timestamps={"action": [k / fps for k in range(32)]},
                          **options)


# --- the measurements, each in its own process -------------------------------------------------------------------


def own_cpu_seconds() -> float:
    """CPU time of this process and its children, live ones and exited ones (reaped DataLoader workers)."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += child_times.user + child_times.system
    return total


def _timed(batches: Any, seconds: float, size: Any) -> dict[str, float]:
    """First batch apart, then as many batches as fit in ``seconds``, with the CPU time they took (on a shared
    machine samples per CPU-second compares readers where samples/s depends on what else runs)."""
    started = time.perf_counter()
    next(batches)
    first, cpu = time.perf_counter(), own_cpu_seconds()
    samples = 0
    while time.perf_counter() - first < seconds:
        samples += size(next(batches))
    return {"first_batch_seconds": first - started, "seconds": time.perf_counter() - first, "samples": samples,
            "cpu_seconds": own_cpu_seconds() - cpu}


def run_loader(args: argparse.Namespace) -> dict[str, Any]:
    from clap_data.training.loader import iter_steps

    with ingest_bench.Monitor() as monitor:
        batches = iter_steps(work_dir(args) / "shards", batch_size=args.batch_size, num_workers=args.workers)
        result = _timed(batches, args.seconds, len)
    return {**result, **_memory(monitor)}


def run_lerobot(args: argparse.Namespace, backend: str | None) -> dict[str, Any]:
    import torch

    def endless() -> Any:
        dataset = lerobot_dataset(work_dir(args) / "v3", backend)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
            generator=torch.Generator().manual_seed(0), persistent_workers=True,
        )
        while True:
            yield from loader

    with ingest_bench.Monitor() as monitor:
        result = _timed(endless(), args.seconds, lambda batch: len(batch["index"]))
    return {**result, **_memory(monitor)}


def _memory(monitor: Any) -> dict[str, float]:
    mib = ingest_bench.MIB
    return {"driver_peak_mib": monitor.driver_peak / mib, "tree_peak_mib": monitor.tree_peak / mib,
            "processes_peak": monitor.processes_peak, "other_cores": monitor.other_cores}


def same_frames(args: argparse.Namespace) -> dict[str, float]:
    """The loader's samples against LeRobotDataset's items at the same (episode, frame): images (JPEG) and the
    chunk (``tokenizer_input`` of LeRobotDataset's raw rows, the Act-VAE's statistics)."""
    from clap_data.actions import tokenizer_input
    from clap_data.norm_stats import load_norm_stats
    from clap_data.training.loader import iter_batches

    v3 = work_dir(args) / "v3"
    dataset = lerobot_dataset(v3, "pyav")
    stats = load_norm_stats(v3, "openclap")
    batch = next(iter(iter_batches(work_dir(args) / "shards", epoch=0, batch_size=16)))
    starts = np.concatenate([[0], np.cumsum(dataset.meta.episodes["length"])])
    pixel, chunk = [], []
    for i in range(len(batch)):
        episode, t = int(batch.episode_index[i]), int(batch.frame_index[i])
        item = dataset[int(starts[episode]) + t]
        for camera in CAMERAS:
            frame = (item[f"observation.images.{camera}"].permute(1, 2, 0) * 255).round().numpy()
            pixel.append(np.abs(frame - batch.images[camera][i].numpy()).mean())
        rows = dataset.hf_dataset.select(range(int(starts[episode]), int(starts[episode + 1])))
        state, action, mask = (np.asarray(rows[c]) for c in ("observation.state", "action", "arm_mask"))
        chunk.append(np.abs(tokenizer_input(state, action, mask, t, stats).action - batch.actions[i].numpy()).max())
    return {"pixel_mean_abs": float(np.mean(pixel)), "chunk_max_abs": float(np.max(chunk)), "samples": len(batch)}


# --- report -------------------------------------------------------------------------------------------------------


def rate(r: dict[str, Any]) -> float:
    return r["samples"] / r["seconds"]


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median samples/s (an odd number of rounds: a measured round, not an average)."""
    return sorted(rounds, key=rate)[len(rounds) // 2]


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Each reader's median round; the ratios are of medians, the per-round rates are listed last."""
    medians = {name: median_round(rounds) for name, rounds in results.items()}
    loader = medians["loader"]
    lines = ["| reader | samples/s (median) | **loader ÷ it** | samples per CPU-second | loader ÷ it per CPU-second "
             "| first batch s | samples timed | peak driver RSS MiB | peak driver + workers RSS MiB | processes "
             "| other processes (cores) | samples/s of each round |", "|---|" + "---:|" * 11]
    for name, r in medians.items():
        own_cpu = r["samples"] / r["cpu_seconds"]
        ratio = "—" if name == "loader" else f"**{rate(loader) / rate(r):.1f}×**"
        cpu_ratio = "—" if name == "loader" else f"{loader['samples'] / loader['cpu_seconds'] / own_cpu:.1f}×"
        rounds = ", ".join(f"{rate(x):,.0f}" for x in results[name])
        lines.append(f"| {name} | {rate(r):,.1f} | {ratio} | {own_cpu:,.1f} | {cpu_ratio} "
                     f"| {r['first_batch_seconds']:.2f} | {r['samples']:,} | {r['driver_peak_mib']:,.0f} "
                     f"| {r['tree_peak_mib']:,.0f} "
                     f"| {r['processes_peak']} | {r['other_cores']:.2f} | {rounds} |")
    return "\n".join(lines)


def config_key(args: argparse.Namespace) -> str:
    return (f"episodes={args.episodes} frames={args.frames} size={args.size} batch-size={args.batch_size} "
            f"workers={args.workers} seconds={args.seconds:g} rounds={args.rounds}")


def results_section(args: argparse.Namespace, command: str, machine: dict[str, str], facts: dict[str, Any],
                    results: dict[str, dict[str, Any]], check: dict[str, float]) -> str:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine_lines = "\n".join(f"- {name}: {value}" for name, value in machine.items())
    width, height = args.video_size
    return (
        f"## Shard loader vs LeRobotDataset: {config_key(args)} ({date})\n\n"
        f"Written by `{SCRIPT}` (see `bench/README.md`). Data: {args.episodes} rendered-motion Astribot episodes × "
        f"{args.frames} frames, cameras {', '.join(CAMERAS)} at {width}x{height} (W×H), HEVC, keyframe every 2 frames "
        f"(lerobot's random-access setting), ingested and tokenized ({facts['generated']}); exported at "
        f"{height}x{width} (no resize), JPEG q90, stride 1: {facts['export_samples']:,} samples "
        f"({facts['train_samples']:,} train) in {facts['export_seconds']:.1f} s "
        f"({facts['export_samples'] / facts['export_seconds']:,.0f} samples/s, Ray start-up included), "
        f"{facts['export_mib']:,.1f} MiB, shards {facts['shards']}.\n\n"
        f"Each reader runs in a fresh process for {args.seconds:g} s after its first batch, {args.rounds} rounds of "
        "the three readers one after another (the table shows each reader's median round), batches of "
        f"{args.batch_size}, {args.workers} DataLoader workers, shuffled. **Loader** = `iter_steps` over the train "
        "split (the JPEGs decoded to uint8 HWC, state, normalised chunk, tokens, text). **LeRobotDataset** = "
        "`LeRobotDataset(root=…, delta_timestamps={'action': 32 steps}, video_backend=…)` under "
        "`DataLoader(shuffle=True)`: the same cameras' frames at t (float CHW), state and the 32-step absolute "
        "action chunk (making it the model's normalised chunk is not charged to it). RSS is sampled every "
        f"{ingest_bench.SAMPLE_SECONDS} s; \"driver + workers\" sums the DataLoader workers (shared pages counted per "
        "process). \"other processes\": average cores busy with work that is not the benchmark's (on a shared machine "
        "samples/s depends on it; samples per CPU-second — the CPU time of the reader's own processes over the timed "
        "window — does much less).\n\n"
        f"Command: `{command}`\n\n{machine_lines}\n\n{table(results)}\n\n"
        f"Same frames: over {check['samples']} loader samples, the images differ from LeRobotDataset's frames by "
        f"{check['pixel_mean_abs']:.2f} gray levels on average (JPEG q90), the chunk from `tokenizer_input` of "
        f"LeRobotDataset's rows by at most {check['chunk_max_abs']:.1e}.\n"
    )


# --- command line -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=150, help="frames per episode")
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the cameras, as the factory takes it")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both readers (and Ray CPUs)")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each reader is timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three readers, interleaved (odd)")
    parser.add_argument("--out", type=Path, default=_BENCH / "out", help="scratch folder (gitignored bench/out)")
    parser.add_argument("--results", type=Path, default=ingest_bench.RESULTS_PATH, help="the results file to update")
    parser.add_argument("--step", choices=SIDES, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    args.video_size = tuple(int(x) for x in args.size.lower().split("x"))
    return args


def measure(step: str, argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One reader in a fresh interpreter, so that its peak RSS carries nothing of the others'."""
    print(f"== {step}…", flush=True)
    child = subprocess.run([sys.executable, os.path.realpath(__file__), *argv, "--step", step])
    if child.returncode:
        raise SystemExit(f"the {step} measurement failed (exit status {child.returncode}); its output is above")
    return json.loads((work_dir(args) / f"{step}.json").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.step:
        backend = {"lerobot-pyav": "pyav", "lerobot-torchcodec": None}.get(args.step)
        result = run_loader(args) if args.step == "loader" else run_lerobot(args, backend)
        (work_dir(args) / f"{args.step}.json").write_text(json.dumps(result))
        return 0
    machine = ingest_bench.machine_description()
    for name, value in machine.items():
        print(f"{name}: {value}")
    print(f"== data in {work_dir(args)}", flush=True)
    facts = prepare(args)
    print(f"   {facts['generated']}; export {facts['export_seconds']:.1f} s", flush=True)
    results: dict[str, list[dict[str, Any]]] = {step: [] for step in SIDES}
    for _ in range(args.rounds):  # interleaved: load from other processes that comes and goes hits every reader
        for step in SIDES:
            results[step].append(measure(step, argv, args))
    check = same_frames(args)
    print()
    print(table(results))
    print(f"\nsame frames: pixels {check['pixel_mean_abs']:.2f} levels apart on average, "
          f"chunk {check['chunk_max_abs']:.1e}")
    command = shlex.join([".venv/bin/python", SCRIPT, *argv])
    section = results_section(args, command, machine, facts, results, check)
    ingest_bench.update_results(args.results, config_key(args), section, script=SCRIPT)
    print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
