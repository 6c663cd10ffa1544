"""Benchmark ingest of AgiBot, DROID (LeRobot v3 port and RLDS) and Ego4D against a raw baseline.

For each source: generate a small dataset with its factory, time a single-process baseline that
does only the work any converter of that source must do (plain h5py / pyarrow / PyAV, no Ray, no
validation), then time ``ingest(build_source(...), IngestRequest(...))`` on the same files,
sampling peak RSS of the driver and of the driver plus all descendants. Each source is measured in
a fresh process. Numbers are printed and written into this script's own section of
``bench/RESULTS.md``. Reuses the measuring helpers of ``bench/ingest.py``. Never run by ``make test``.

    python bench/ingest_sources.py [--sources agibot,droid-lerobot,droid-rlds,ego4d] [--workers 2] [--codec av1]

Baselines (what each pipeline cannot avoid):
- agibot: read the h5 datasets the adapter reads; stream-copy the three camera mp4s (PyAV remux).
- droid-lerobot: read the episode's parquet rows; stream-copy the episode's segment of the two
  ingested camera files (exterior_1_left, wrist_left).
- droid-rlds: read every TFRecord record, parse it, decode the JPEG frames of the two ingested
  cameras and encode them to video with ``--codec`` (the pipeline encodes them too).
- ego4d: decode each action window of its clip and encode it with ``--codec`` (the pipeline
  re-encodes windows, which do not start on a keyframe).
The pipeline of the re-encoding sources gets ``VideoOptions(codec=--codec)``, so both encode with
the same codec and settings (crf 30, GOP 2, no B-frames).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402  the Astribot benchmark's measuring helpers
    MIB,
    SAMPLE_SECONDS,
    BaselineResult,
    Monitor,
    PipelineResult,
    machine_description,
    measure_pipeline,
    remux,
    update_results,
)

from clap_data.conversion import EPISODE_PHASES, VideoOptions  # noqa: E402
from clap_data.factories.ego4d import clip_path, scaled_ego4d_plan  # noqa: E402  light: the baseline needs the plan
from clap_data.pipelines.ingest import IngestRequest  # noqa: E402
from clap_data.sources.registry import SourceOptions, build_source  # noqa: E402
from clap_data.tfrecord import parse_example  # noqa: E402  protobuf decoding only; framing is read here

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
SOURCES = ("agibot", "droid-lerobot", "droid-rlds", "ego4d")
REGISTRY_NAME = {"agibot": "agibot", "droid-lerobot": "droid", "droid-rlds": "droid", "ego4d": "ego4d"}
REENCODES = {"droid-rlds", "ego4d"}  # sources whose pipeline encodes video (the others stream-copy)
ENCODERS = {"h264": "libx264", "av1": "libsvtav1"}
CRF, GOP = 30, 2  # clap-data's VideoOptions defaults


@dataclass(frozen=True)
class SourceResult:
    source: str
    dataset: str  # what was generated
    generate_seconds: float
    baseline: BaselineResult
    pipeline: PipelineResult


# --- baseline building blocks: plain PyAV ---------------------------------------------------------


class Encoder:
    """An mp4 writer with clap-data's settings (yuv420p, GOP 2, no B-frames, crf 30)."""

    def __init__(self, dst: Path, fps: int, codec: str):
        self.out = av.open(str(dst), "w", format="mp4")
        self.fps, self.codec, self.stream, self.count = fps, codec, None, 0

    def add(self, frame: av.VideoFrame) -> None:
        if self.stream is None:
            stream = self.out.add_stream(ENCODERS[self.codec], rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
            stream.codec_context.gop_size = GOP
            if self.codec == "av1":
                stream.options = {"crf": str(CRF), "preset": "8", "svtav1-params": f"keyint={GOP}:scd=0"}
            else:
                stream.options = {"crf": str(CRF), "bf": "0", "g": str(GOP), "keyint_min": str(GOP)}
            self.stream = stream
        out_frame = frame.reformat(format="yuv420p")
        out_frame.pts, out_frame.time_base = self.count, Fraction(1, self.fps)
        self.out.mux(self.stream.encode(out_frame))
        self.count += 1

    def close(self) -> None:
        if self.stream is not None:
            self.out.mux(self.stream.encode())
        self.out.close()


def copy_segment(src: Path, dst: Path, start: float, end: float) -> int:
    """Stream-copy the packets whose time lies in [start, end) seconds; returns packets copied."""
    copied = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(stream, opaque=True)
        inp.seek(int(start / stream.time_base), stream=stream, backward=True)
        half = 0.5 / float(stream.average_rate or 15)
        for packet in inp.demux(stream):
            if packet.pts is None:
                continue
            t = float(packet.pts * stream.time_base)
            if t >= end - half:
                break
            if t < start - half:
                continue
            packet.stream = out_stream
            out.mux(packet)
            copied += 1
    return copied


def tfrecords(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (8-byte length, 4-byte CRC, payload, 4-byte CRC); CRCs not checked."""
    with open(path, "rb") as handle:
        while header := handle.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            yield handle.read(length)
            handle.read(4)


# --- per-source datasets and baselines ------------------------------------------------------------


def generate(source: str, root: Path, args: argparse.Namespace) -> str:
    """Write the source's dataset with its factory; returns a one-line description. Runs in its
    own process: the factories pull in lerobot and torch, which would inflate the measured RSS."""
    from clap_data.factories.agibot import write_agibot_dataset
    from clap_data.factories.droid_rlds import write_droid_rlds_dataset
    from clap_data.factories.ego4d import write_ego4d_dataset
    from clap_data.factories.lerobot import write_lerobot_dataset

    n, frames, (width, height) = args.episodes[source], args.frames, args.video_size
    if source == "agibot":
        write_agibot_dataset(root, {327: [frames] * n}, video_size=(width, height), fisheye=False, depth=False, overwrite=True)
        return f"{n} episodes × {frames} frames, 3 cameras {width}x{height} AV1 (task 327, no fisheye/depth)"
    if source == "droid-lerobot":
        per_file = args.lerobot_episodes_per_file
        write_lerobot_dataset(root, "v3.0", "droid", [frames] * n, video_size=(width, height), overwrite=True,
                              episodes_per_data_file=per_file, episodes_per_video_file=per_file)
        return (f"{n} episodes × {frames} frames, LeRobot v3.0 DROID port, {per_file} episodes per data/video file, "
                f"3 cameras {width}x{height} AV1 (2 ingested)")
    if source == "droid-rlds":
        write_droid_rlds_dataset(root, [frames] * n, episodes_per_shard=10, image_size=(height, width))
        return f"{n} episodes × {frames} steps, RLDS, 10 per shard, 3 JPEG cameras {width}x{height} (2 ingested)"
    clips, actions = args.ego4d_clips, n // args.ego4d_clips
    width = -(-width // 6) * 6  # the factory draws three colour bands: width must be a multiple of 6
    write_ego4d_dataset(root, scaled_ego4d_plan(clips, actions, args.ego4d_clip_frames), video_size=(width, height), overwrite=True)
    return f"{clips} clips × {actions} actions of 40 frames ({clips * actions} episodes), {args.ego4d_clip_frames}-frame H.264 clips {width}x{height}"


AGIBOT_H5 = (
    "timestamp", "state/end/position", "state/end/orientation", "state/effector/position", "action/end/position",
    "action/end/orientation", "action/effector/position", "action/end/index", "action/effector/index",
)
AGIBOT_VIDEOS = ("head_color", "hand_left_color", "hand_right_color")
DROID_PORT_VIDEOS = ("observation.images.exterior_1_left", "observation.images.wrist_left")
DROID_RLDS_CAMERAS = ("exterior_image_1_left", "wrist_image_left")
DROID_RLDS_STATE = ("steps/observation/cartesian_position", "steps/observation/gripper_position")


def baseline_agibot(root: Path, tmp: Path, codec: str) -> tuple[int, int]:
    frames = episodes = 0
    for h5_file in sorted(root.glob("proprio_stats/*/*/proprio_stats.h5")):
        task, episode = h5_file.parent.parent.name, h5_file.parent.name
        with h5py.File(h5_file, "r") as h5:
            arrays = {name: h5[name][()] for name in AGIBOT_H5 if name in h5}
        frames += len(arrays["state/end/position"])
        for camera in AGIBOT_VIDEOS:
            remux(root / "observations" / task / episode / "videos" / f"{camera}.mp4", tmp / f"{episode}_{camera}.mp4")
        episodes += 1
    return frames, episodes


def baseline_droid_lerobot(root: Path, tmp: Path, codec: str) -> tuple[int, int]:
    frames = episodes = 0
    meta = pq.read_table(sorted(root.glob("meta/episodes/*/*.parquet"))).to_pylist()
    data_file, table = None, None
    for row in meta:
        path = root / f"data/chunk-{row['data/chunk_index']:03d}/file-{row['data/file_index']:03d}.parquet"
        if path != data_file:
            data_file, table = path, pq.read_table(path)
        index = table.column("index").to_numpy()
        rows = table.filter((index >= row["dataset_from_index"]) & (index < row["dataset_to_index"]))
        frames += rows.num_rows
        for key in DROID_PORT_VIDEOS:
            src = root / f"videos/{key}/chunk-{row[f'videos/{key}/chunk_index']:03d}/file-{row[f'videos/{key}/file_index']:03d}.mp4"
            copy_segment(src, tmp / f"{row['episode_index']}_{key}.mp4", row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"])
        episodes += 1
    return frames, episodes


def baseline_droid_rlds(root: Path, tmp: Path, codec: str) -> tuple[int, int]:
    frames = episodes = 0
    for shard in sorted(root.rglob("*.tfrecord-*-of-*")):
        for record in tfrecords(shard):
            example = parse_example(record)
            state = [np.asarray(example.get(key).values) for key in DROID_RLDS_STATE]
            for camera in DROID_RLDS_CAMERAS:
                images = example.get(f"steps/observation/{camera}").values
                decoder = av.CodecContext.create("mjpeg", "r")
                encoder = Encoder(tmp / f"{episodes}_{camera}.mp4", 15, codec)
                for data in images:
                    for frame in decoder.decode(av.Packet(data)):
                        encoder.add(frame)
                encoder.close()
            frames += len(state[1])
            episodes += 1
    return frames, episodes


def baseline_ego4d(root: Path, tmp: Path, codec: str, plan: list) -> tuple[int, int]:
    frames = episodes = 0
    for clip in plan:
        with av.open(str(clip_path(root, clip.clip_uid))) as inp:
            stream = inp.streams.video[0]
            fps, start_pts = float(stream.average_rate), stream.start_time or 0
            for action in clip.actions:
                first, last = action.critical
                inp.seek(start_pts + int(first / fps / stream.time_base), stream=stream, backward=True)
                encoder = Encoder(tmp / f"{episodes}.mp4", 30, codec)
                for frame in inp.decode(stream):
                    index = round(float((frame.pts - start_pts) * stream.time_base) * fps)
                    if index > last:
                        break
                    if index >= first:
                        encoder.add(frame)
                encoder.close()
                frames += encoder.count
                episodes += 1
    return frames, episodes


def run_baseline(source: str, root: Path, scratch: Path, args: argparse.Namespace) -> BaselineResult:
    """The floor for the source, in one process, timed with bench/ingest.py's Monitor."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix="baseline-") as tmp, Monitor() as monitor:
        started = time.perf_counter()
        if source == "ego4d":
            plan = scaled_ego4d_plan(args.ego4d_clips, args.episodes[source] // args.ego4d_clips, args.ego4d_clip_frames)
            frames, episodes = baseline_ego4d(root, Path(tmp), args.codec, plan)
        else:
            run = {"agibot": baseline_agibot, "droid-lerobot": baseline_droid_lerobot, "droid-rlds": baseline_droid_rlds}[source]
            frames, episodes = run(root, Path(tmp), args.codec)
        seconds = time.perf_counter() - started
    return BaselineResult(seconds, frames, episodes, monitor.driver_peak / MIB, monitor.other_cores)


def run_pipeline(source: str, root: Path, out: Path, args: argparse.Namespace) -> PipelineResult:
    """Ingest the source end to end (``ingest.measure_pipeline``); the re-encoding sources with ``--codec``."""
    video = VideoOptions(codec=args.codec) if source in REENCODES else VideoOptions()
    request = IngestRequest(out=out, overwrite=True, workers=args.workers, video=video)
    return measure_pipeline(lambda: build_source(REGISTRY_NAME[source], root, SourceOptions()), request, source)


def generate_source(source: str, args: argparse.Namespace) -> None:
    """Generate the source's dataset and note what was written for the measuring process."""
    out: Path = args.out.resolve()
    root = out / f"sources_{source}"
    print(f"\n== {source}: generating {root}", flush=True)
    started = time.perf_counter()
    dataset = generate(source, root, args)
    generated = time.perf_counter() - started
    print(f"   {dataset}; generated in {generated:.1f} s", flush=True)
    (out / f"sources_dataset_{source}.json").write_text(json.dumps({"dataset": dataset, "seconds": generated}))


def run_source(source: str, args: argparse.Namespace) -> SourceResult:
    """Baseline then pipeline on the generated files, in a process that did not generate them."""
    out: Path = args.out.resolve()
    root = out / f"sources_{source}"
    generated = json.loads((out / f"sources_dataset_{source}.json").read_text())
    dataset, generated = generated["dataset"], generated["seconds"]
    print("   baseline…", flush=True)
    baseline = run_baseline(source, root, out, args)
    print(f"   baseline {baseline.seconds:.1f} s; pipeline…", flush=True)
    pipeline = run_pipeline(source, root, out / f"sources_{source}_v3", args)
    print(f"   pipeline {pipeline.ray_init_seconds + pipeline.ingest_seconds:.1f} s", flush=True)
    if pipeline.frames != baseline.frames or pipeline.episodes != baseline.episodes:
        raise SystemExit(f"{source}: pipeline {pipeline.episodes} episodes / {pipeline.frames} frames, "
                         f"baseline {baseline.episodes} / {baseline.frames}")
    return SourceResult(source, dataset, generated, baseline, pipeline)


# --- report ---------------------------------------------------------------------------------------


def table(results: list[SourceResult]) -> str:
    lines = [
        "| source | episodes | frames | baseline s | baseline frames/s | baseline episodes/s | Ray init s | pipeline s "
        "| pipeline frames/s | pipeline episodes/s | **ratio** | ratio excl. Ray init | convert s "
        "| workers: " + " / ".join(EPISODE_PHASES) + " s | driver: appending episodes s | assemble + publish s "
        "| baseline peak driver RSS MiB | pipeline peak driver RSS MiB | pipeline peak driver + Ray RSS MiB "
        "| other processes, baseline / pipeline (cores) |",
        "|---|" + "---:|" * 19,
    ]
    for r in results:
        b, p = r.baseline, r.pipeline
        total = p.ray_init_seconds + p.ingest_seconds
        b_fps, p_fps, x_fps = b.frames / b.seconds, p.frames / total, p.frames / p.ingest_seconds
        lines.append(
            f"| {r.source} | {p.episodes} | {p.frames} | {b.seconds:.2f} | {b_fps:,.0f} | {b.episodes / b.seconds:,.1f} "
            f"| {p.ray_init_seconds:.2f} | {total:.2f} | {p_fps:,.0f} | {p.episodes / total:,.1f} | **{p_fps / b_fps:.3f}** "
            f"| {x_fps / b_fps:.3f} | {p.convert_seconds:.2f} "
            f"| {' / '.join(f'{seconds:.1f}' for seconds in p.episode_phase_seconds.values())} "
            f"| {p.assembly_seconds:.2f} | {p.assemble_seconds:.2f} | {b.driver_peak_mib:,.0f} "
            f"| {p.driver_peak_mib:,.0f} | {p.tree_peak_mib:,.0f} | {b.other_cores:.2f} / {p.other_cores:.2f} |"
        )
    return "\n".join(lines)


def section(args: argparse.Namespace, command: str, machine: dict[str, str], results: list[SourceResult]) -> str:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine_lines = "\n".join(f"- {name}: {value}" for name, value in machine.items())
    datasets = "\n".join(f"- {r.source}: {r.dataset} (generated in {r.generate_seconds:.0f} s)" for r in results)
    return (
        f"## Per-source ingest vs raw baseline: {config_key(args)} ({date})\n\n"
        f"Written by `bench/ingest_sources.py` (see `bench/README.md`). Baseline = one process, no Ray, no "
        f"validation: agibot reads the h5 datasets and remuxes 3 mp4s; droid-lerobot reads the episode's parquet rows "
        f"and stream-copies its segment of 2 camera files; droid-rlds reads each TFRecord record and decodes + encodes "
        f"its 2 cameras' JPEGs; ego4d decodes + encodes each action window. Re-encoding uses {args.codec} "
        f"(crf {CRF}, GOP {GOP}) in both baseline and pipeline (`VideoOptions(codec=\"{args.codec}\")`); agibot and "
        f"droid-lerobot stream-copy in both. Pipeline = `ingest(build_source(...), IngestRequest(workers={args.workers}))` "
        f"end to end, with Ray started just before it (\"excl. Ray init\" leaves that out). **ratio = pipeline frames/s "
        f"÷ baseline frames/s.** Each source is measured in a fresh process; RSS sampled every {SAMPLE_SECONDS} s "
        f"(\"driver + Ray\" sums all descendants, shared pages counted per process). \"Other processes\" = average "
        f"cores busy with work that is not the benchmark's (above ~0.2 on 2 cores the timings are disturbed).\n\n"
        f"Command: `{command}`\n\n{machine_lines}\n\nDatasets:\n\n{datasets}\n\n{table(results)}\n"
    )


def config_key(args: argparse.Namespace) -> str:
    episodes = ",".join(f"{s}={args.episodes[s]}" for s in args.sources)
    return (f"episodes={episodes} frames={args.frames} lerobot-per-file={args.lerobot_episodes_per_file} "
            f"workers={args.workers} codec={args.codec} size={args.size}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated, from " + ", ".join(SOURCES))
    parser.add_argument("--episodes", default="agibot=300,droid-lerobot=250,droid-rlds=150,ego4d=200",
                        help="episodes per source, source=N,…")
    parser.add_argument("--frames", type=int, default=50, help="frames per episode (ego4d windows are 40 frames)")
    parser.add_argument("--ego4d-clips", type=int, default=20, help="ego4d clips the episodes are spread over")
    parser.add_argument("--ego4d-clip-frames", type=int, default=300)
    parser.add_argument("--lerobot-episodes-per-file", type=int, default=50,
                        help="episodes per data and per video file of the LeRobot v3 port (real ports hold many)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--codec", default="av1", choices=sorted(ENCODERS), help="codec of the re-encoding sources")
    parser.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of every camera")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one source, write JSON
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)  # internal: with --one, generate only
    args = parser.parse_args(argv)
    args.sources = [s for s in args.sources.split(",") if s]
    unknown = set(args.sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown sources {sorted(unknown)}")
    args.episodes = {k: int(v) for k, v in (item.split("=") for item in args.episodes.split(",") if item)}
    args.video_size = tuple(int(x) for x in args.size.lower().split("x"))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one and args.generate:
        generate_source(args.one, args)
        return 0
    if args.one:
        (args.out / f"sources_result_{args.one}.json").write_text(json.dumps(asdict(run_source(args.one, args))))
        return 0
    machine = machine_description()
    for name, value in machine.items():
        print(f"{name}: {value}")
    results = []
    for source in args.sources:
        script = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", source]
        child = subprocess.run([*script, "--generate"])
        if not child.returncode:
            child = subprocess.run(script)  # a fresh process: its RSS carries none of the factories' imports
        if child.returncode:
            raise SystemExit(f"measuring {source} failed (exit status {child.returncode}); its output is above")
        data = json.loads((args.out / f"sources_result_{source}.json").read_text())
        data["baseline"], data["pipeline"] = BaselineResult(**data["baseline"]), PipelineResult(**data["pipeline"])
        results.append(SourceResult(**data))
    print()
    print(table(results))
    command = shlex.join([".venv/bin/python", "bench/ingest_sources.py", *argv])
    update_results(RESULTS_PATH, config_key(args), section(args, command, machine, results), script="bench/ingest_sources.py")
    print(f"\nwritten to {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
