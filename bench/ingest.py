"""Benchmark the Astribot ingest pipeline against a raw read + remux loop on the same data.

For each episode count, in a fresh process: write an Astribot S1 dataset, time a single-process baseline that only
reads the parquet columns the reader uses and stream-copies every video with plain PyAV, then time
``clap_data.pipelines.ingest.ingest`` on the same files, sampling the peak RSS of the driver and of the driver plus
every descendant (Ray's GCS, raylet and workers), and break the pipeline's time down: Ray start and stop, listing,
conversion (and, summed over the workers, its phases: read / probe / decode / video / stats / staging), assembly,
publishing. The numbers are printed and written into ``bench/RESULTS.md``. Never run by ``make test``.

Two configurations: ``--preset dev`` (the default: the factory's tiny 64×48 episodes of 60 frames, three cameras)
and ``--preset real`` (real-size episodes: the shared real Astribot S1 episode — two 640×360 HEVC wrist videos, GOP
2, 236 frames, its own pose columns — copied to each episode count; without ``../shared``, the factory's 640×360
HEVC episodes of 257 frames, two wrist cameras). ``--src DIR`` measures a user's own Astribot folder instead, its
episodes copied in turn up to each count of ``--episodes``.

    python bench/ingest.py [--preset dev|real] [--src DIR] [--episodes 100,1000] [--frames 60] [--workers 2]
                           [--size 64x48] [--image-stats-keyframes 16] [--out bench/out]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import av
import psutil
import pyarrow
import pyarrow.parquet as pq
import ray

import clap_data
from clap_data.conversion import IMAGE_STATS_KEYFRAMES, VideoOptions
from clap_data.factories.astribot import write_astribot_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.ray_runtime import _EMBEDDED_OBJECT_STORE_BYTES  # Ray started here matches the pipeline's own
from clap_data.sources.astribot import _READ_COLUMNS, AstribotSource  # the baseline reads what the reader reads
from clap_data.sources.base import Source

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
SAMPLE_SECONDS = 0.1
MIB = 1024 * 1024

RESULTS_HEADER = """\
# Benchmark results

Written by `bench/ingest.py` (see `bench/README.md`). Each section below is replaced when the
same configuration is run again; other configurations are appended.

**What the ratio means.** The *baseline* is the least work any converter of this data must do, in
one process with no Ray and no validation: read the five parquet columns the Astribot reader uses
and stream-copy every camera video into a new mp4 with plain PyAV. The *pipeline* is
`clap_data.pipelines.ingest.ingest` on the same files, end to end (Ray start-up, conversion on
`--workers` Ray workers, validation, staging, assembly of the LeRobot v3.0 dataset, publishing).
**ratio = pipeline frames/s ÷ baseline frames/s**: 1.0 means the pipeline costs no more wall time
than raw read+remux. The pipeline does several times the baseline's work per video (probe, decode
check, copy, probe of the copy, keyframes decoded for image statistics, and a second copy when
assembly concatenates the episodes), so below 1 is the price of validation, statistics, Ray and
assembly; the baseline uses one core while the pipeline uses `--workers`, which is what can push
the ratio up. "excl. Ray init" leaves out `ray.init` (started by the benchmark just before
`ingest`, which reuses it); `ray.shutdown` is counted in both. Each size is measured in a fresh
process.

**Other columns.** *first episode after*: from the start of conversion to the first episode back
from a worker (Ray Data start-up). *other processes (cores)*: average cores that processes other
than the benchmark's kept busy during the run; above ~0.2 on a 2-core machine the timings are
disturbed. Peak RSS is sampled every 0.1 s; "driver + Ray" sums RSS over the driver and all its
descendants, so pages shared between processes (libraries, Ray's object store) are counted once
per process: compare it across sizes, not with physical memory. Because the benchmark starts Ray,
Ray stays up during assembly (a CLI run shuts it down before), so that peak is if anything high.
Both runs read files the generator has just written (warm page cache).

**Re-run:** `.venv/bin/python bench/ingest.py --episodes 100,1000 --frames 60 --workers 2`
(`make bench` runs the defaults, which are the same).
"""


@dataclass(frozen=True)
class BaselineResult:
    seconds: float
    frames: int
    episodes: int
    driver_peak_mib: float
    other_cores: float  # average cores other processes kept busy meanwhile


@dataclass(frozen=True)
class PipelineResult:
    ray_init_seconds: float
    ingest_seconds: float  # ingest() plus ray.shutdown(), which a CLI run also pays
    frames: int
    episodes: int
    setup_seconds: float  # ingest start -> conversion starts (staging, listing)
    first_episode_seconds: float  # conversion starts -> first episode back from a worker
    convert_seconds: float
    assemble_seconds: float  # assembly, publish and clean-up
    ray_shutdown_seconds: float
    step_seconds: dict[str, float]  # the report's: listing, converting, assembling, publishing (wall)
    episode_phase_seconds: dict[str, float]  # the report's: each conversion phase, summed over the workers
    assembly_seconds: float  # the report's: the driver's time appending episodes (mostly during conversion)
    driver_start_mib: float
    driver_peak_mib: float
    tree_peak_mib: float
    processes_peak: int
    other_cores: float  # average cores other processes kept busy meanwhile
    cpu_seconds: dict[str, float]  # CPU time of the run by process role (Monitor.cpu_seconds_by_role)


@dataclass(frozen=True)
class SizeResult:
    episodes: int
    baseline: BaselineResult
    pipeline: PipelineResult


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (steal included: it is time we did not get)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


class Monitor:
    """Samples the driver and its descendants every 0.1 s in a background thread.

    Peak RSS can come and go between two moments we could look, so polling is the cheapest way
    to see it without instrumenting Ray. The CPU time of our processes, set against the whole
    machine's, tells how much other work shared the cores: a benchmark on a shared 2-core machine
    means little without it.
    """

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval = interval
        self.driver_start = 0
        self.driver_peak = 0
        self.tree_peak = 0
        self.processes_peak = 0
        self.other_cores = 0.0  # average cores busy with processes that are not ours
        self._me = psutil.Process()
        self._cpu_by_pid: dict[int, float] = {}  # last seen, so exited workers still count
        self._cpu_at_start: dict[int, float] = {}  # of the processes already there when monitoring began
        self._role_by_pid: dict[int, str] = {}
        self._started = 0.0
        self._others_at_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def _sample(self) -> None:
        """One look at the driver and every process below it (Ray's workers are the raylet's children)."""
        tree = driver = alive = 0
        for process in [self._me, *self._me.children(recursive=True)]:
            try:
                rss = process.memory_info().rss
                cpu = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited between listing and reading: nothing to count
            driver = rss if process.pid == self._me.pid else driver
            tree += rss
            alive += 1
            self._cpu_by_pid[process.pid] = cpu.user + cpu.system
            self._role_by_pid[process.pid] = process_role(process, self._me.pid)
        self.driver_peak = max(self.driver_peak, driver)
        self.tree_peak = max(self.tree_peak, tree)
        self.processes_peak = max(self.processes_peak, alive)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Monitor:
        self.driver_start = self._me.memory_info().rss
        self._sample()
        self._cpu_at_start = dict(self._cpu_by_pid)
        self._started = time.perf_counter()
        self._others_at_start = busy_cpu_seconds() - sum(self._cpu_by_pid.values())
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        others = busy_cpu_seconds() - sum(self._cpu_by_pid.values()) - self._others_at_start
        self.other_cores = max(0.0, others / (time.perf_counter() - self._started))

    @property
    def cpu_seconds_by_role(self) -> dict[str, float]:
        """CPU seconds spent while monitoring, by :func:`process_role`: what a run costs the machine beyond its wall
        time, and how much of it is Ray's own bookkeeping rather than conversion or assembly. The driver's includes
        this monitor's own sampling; a worker is counted in the role it had when last seen."""
        totals = dict.fromkeys(PROCESS_ROLES, 0.0)
        for pid, seconds in self._cpu_by_pid.items():
            totals[self._role_by_pid[pid]] += seconds - self._cpu_at_start.get(pid, 0.0)
        return totals


PROCESS_ROLES = ("driver", "Ray workers", "Ray system")


def process_role(process: psutil.Process, driver_pid: int) -> str:
    """The driver (this process: listing, Ray Data's scheduling, assembly), a Ray worker (its processes are named
    ``ray::…``: the actors converting episodes, idle workers) or one of Ray's own services (GCS, raylet, agents)."""
    if process.pid == driver_pid:
        return "driver"
    try:
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "Ray system"
    return "Ray workers" if name.startswith("ray::") else "Ray system"


class PhaseClock:
    """A pipeline Reporter that only notes when each phase begins, to split conversion from
    assembly without touching the pipeline."""

    def __init__(self) -> None:
        self.converting = 0.0
        self.assembling = 0.0
        self.first_episode = 0.0

    def phase(self, text: str) -> None:
        now = time.perf_counter()
        if text.startswith("Converting"):
            self.converting = now
        elif text.startswith("Assembling"):
            self.assembling = now

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: bool, frames: int) -> None:
        if not self.first_episode:
            self.first_episode = time.perf_counter()

    def stop(self) -> None:
        pass


PRESETS = {  # --preset: the defaults it gives --episodes, --frames and --size
    "dev": {"episodes": "100,1000", "frames": 60, "size": "64x48"},
    "real": {"episodes": "40,400", "frames": 257, "size": "640x360"},
}
REAL_SAMPLE = BENCH_DIR.parent.parent / "shared" / "fixtures" / "astribot_s1_dummy"  # ../shared, where present
REAL_CAMERAS = ("left", "right")  # the real sample's wrist cameras (its head camera's files are not shipped)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options of the module docstring; ``--size`` is WIDTHxHEIGHT because the factory takes it so."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="dev",
                        help="dev: tiny factory episodes; real: real-size episodes (the shared real sample, copied)")
    parser.add_argument("--src", type=Path, help="an Astribot folder to measure on, its episodes copied to each count")
    parser.add_argument("--episodes", help="comma-separated episode counts, one run each (dev 100,1000; real 40,400)")
    parser.add_argument("--frames", type=int, help="frames per factory episode (dev 60; real 257)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (and num_cpus) for the pipeline")
    parser.add_argument("--size", help="WIDTHxHEIGHT of every factory camera (dev 64x48; real 640x360)")
    parser.add_argument("--image-stats-keyframes", type=int, default=IMAGE_STATS_KEYFRAMES,
                        help="the ingest option of that name: keyframes decoded per camera and episode for statistics")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="scratch folder (gitignored bench/out)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, write JSON
    args = parser.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.src is None and args.preset == "real" and (REAL_SAMPLE / "meta" / "info.json").is_file():
        args.src = REAL_SAMPLE
    args.episode_counts = [int(n) for n in args.episodes.split(",") if n]
    args.video_size = tuple(int(x) for x in args.size.lower().split("x"))
    return args


def machine_description() -> dict[str, str]:
    """What the numbers depend on, so a reader can tell whether two result tables compare."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = models[0] if models else cpu
    return {
        "CPU": f"{os.cpu_count()} × {cpu}",
        "RAM": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "Python": platform.python_version(),
        "platform": platform.platform(),
        "versions": f"clap-data {clap_data.__version__}, ray {ray.__version__}, av {av.__version__}, pyarrow {pyarrow.__version__}",
    }


def episode_files(root: Path) -> list[tuple[Path, list[Path]]]:
    """Each episode's parquet file and camera videos, found from the on-disk layout rather than
    through the source adapter, so the baseline shares no code with the pipeline."""
    episodes = []
    for data in sorted(root.glob("data/chunk-*/episode_*.parquet")):
        videos = sorted(root.glob(f"videos/{data.parent.name}/*/{data.stem}.mp4"))
        episodes.append((data, videos))
    return episodes


def remux(src: Path, dst: Path) -> None:
    """Plain PyAV stream copy: every packet into a new mp4, timestamps as they come."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream, opaque=True)
        for packet in inp.demux(in_stream):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            packet.stream = out_stream
            out.mux(packet)


def run_baseline(root: Path, scratch: Path) -> BaselineResult:
    """The floor any converter pays: read the columns, copy the videos; one process, no checks."""
    episodes = episode_files(root)
    frames = 0
    with tempfile.TemporaryDirectory(dir=scratch, prefix="baseline-") as tmp, Monitor() as monitor:
        started = time.perf_counter()
        for index, (data, videos) in enumerate(episodes):
            frames += pq.read_table(data, columns=_READ_COLUMNS).num_rows
            for camera, src in enumerate(videos):
                remux(src, Path(tmp) / f"{index:06d}_{camera}.mp4")
        seconds = time.perf_counter() - started
    return BaselineResult(seconds, frames, len(episodes), monitor.driver_peak / MIB, monitor.other_cores)


def run_pipeline(root: Path, out: Path, workers: int, stats_keyframes: int) -> PipelineResult:
    """Ingest the Astribot folder end to end (:func:`measure_pipeline`)."""
    request = IngestRequest(out=out, overwrite=True, workers=workers, video=VideoOptions(stats_keyframes=stats_keyframes))
    return measure_pipeline(lambda: AstribotSource(root), request, "astribot")


def measure_pipeline(build: Callable[[], Source], request: IngestRequest, label: str) -> PipelineResult:
    """Ingest end to end, with Ray started here first (``request.workers`` CPUs) so its start-up can be told apart;
    every benchmark of an ingest measures through this. ``build`` makes the source once Ray is up."""
    clock = PhaseClock()
    with Monitor() as monitor:
        started = time.perf_counter()
        ray.init(
            num_cpus=request.workers,
            include_dashboard=False,
            object_store_memory=_EMBEDDED_OBJECT_STORE_BYTES,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        ray_ready = time.perf_counter()
        try:
            report = ingest(build(), request, clock)
        finally:
            ingested = time.perf_counter()
            ray.shutdown()
            finished = time.perf_counter()
    if not (clock.converting and clock.assembling and clock.first_episode):
        raise SystemExit("the pipeline's phase messages changed: update PhaseClock, the phase timings would be wrong")
    if report.quarantine or report.written != report.listed:
        reasons = "; ".join(q["reason"] for q in report.quarantine[:3])
        raise SystemExit(f"{label}: the pipeline wrote {report.written} of {report.listed} episodes: {reasons}")
    return PipelineResult(
        ray_init_seconds=ray_ready - started,
        ingest_seconds=finished - ray_ready,
        frames=report.frames,
        episodes=report.written,
        setup_seconds=clock.converting - ray_ready,
        first_episode_seconds=clock.first_episode - clock.converting,
        convert_seconds=clock.assembling - clock.converting,
        assemble_seconds=ingested - clock.assembling,
        ray_shutdown_seconds=finished - ingested,
        step_seconds=report.step_seconds,
        episode_phase_seconds=report.episode_phase_seconds,
        assembly_seconds=report.assembly_seconds,
        driver_start_mib=monitor.driver_start / MIB,
        driver_peak_mib=monitor.driver_peak / MIB,
        tree_peak_mib=monitor.tree_peak / MIB,
        processes_peak=monitor.processes_peak,
        other_cores=monitor.other_cores,
        cpu_seconds=monitor.cpu_seconds_by_role,
    )


def replicate_source(src: Path, dst: Path, episodes: int) -> str:
    """Write an Astribot (LeRobot v2.0) folder of ``episodes`` episodes into ``dst``: byte copies of ``src``'s
    episodes whose data file exists, taken in turn, with every camera whose videos all exist (the others are left out
    of ``meta/info.json``, as a dataset without them would declare). Returns what was written, in words."""
    meta = src / "meta"
    info = json.loads((meta / "info.json").read_text())
    chunk_size = int(info["chunks_size"])
    listed = [json.loads(line) for line in (meta / "episodes.jsonl").read_text().splitlines() if line.strip()]

    def files(index: int, root: Path, keys: list[str]) -> tuple[Path, list[Path]]:
        where = {"episode_chunk": index // chunk_size, "episode_index": index}
        return (root / info["data_path"].format(**where),
                [root / info["video_path"].format(video_key=key, **where) for key in keys])

    declared = [key for key, feature in info["features"].items() if feature.get("dtype") == "video"]
    present = [e for e in listed if files(e["episode_index"], src, [])[0].is_file()]
    keys = [key for key in declared if all(path.is_file() for e in present
                                           for path in files(e["episode_index"], src, [key])[1])]
    if not present or not keys:
        raise SystemExit(f"{src} has no episode with its data file and videos to copy")
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "meta").mkdir(parents=True)
    rows = []
    for index in range(episodes):
        model = present[index % len(present)]
        (data_from, videos_from), (data_to, videos_to) = files(model["episode_index"], src, keys), files(index, dst, keys)
        for origin, copy in zip([data_from, *videos_from], [data_to, *videos_to], strict=True):
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, copy)
        rows.append({**model, "episode_index": index, "episode_chunk": index // chunk_size})
    for extra in meta.iterdir():
        if extra.name not in ("info.json", "episodes.jsonl"):
            shutil.copyfile(extra, dst / "meta" / extra.name)
    frames = sum(row["length"] for row in rows)
    info.update(total_episodes=episodes, total_frames=frames, total_videos=episodes * len(keys),
                total_chunks=(episodes - 1) // chunk_size + 1, splits={"train": f"0:{episodes}"},
                features={k: v for k, v in info["features"].items() if k not in set(declared) - set(keys)})
    (dst / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (dst / "meta" / "episodes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"{episodes} episodes ({frames:,} frames) copied from the {len(present)} of {src}, cameras {', '.join(keys)}"


def write_source(episodes: int, args: argparse.Namespace) -> tuple[Path, str]:
    """The source folder of one size: copies of ``--src`` (or of the shared real sample), or the factory's."""
    out: Path = args.out.resolve()
    if args.src is not None:
        source = out / f"astribot_copies_{episodes}"
        return source, replicate_source(args.src.resolve(), source, episodes)
    source = out / f"astribot_{episodes}x{args.frames}_{args.size}"
    cameras = REAL_CAMERAS if args.preset == "real" else ("head", "left", "right")
    write_astribot_dataset(source, episode_lengths=[args.frames] * episodes, cameras=cameras,
                           video_size=args.video_size, reuse_videos=True, overwrite=True)
    return source, f"{episodes} factory episodes × {args.frames} frames, cameras {', '.join(cameras)} at {args.size}"


def run_size(episodes: int, args: argparse.Namespace) -> SizeResult:
    """Write one dataset, then measure the baseline and the pipeline on exactly those files."""
    out: Path = args.out.resolve()
    print(f"\n== {episodes} episodes: writing the source", flush=True)
    started = time.perf_counter()
    source, described = write_source(episodes, args)
    os.sync()  # the copies' writeback must not land inside the timed baseline (it did: 4.4 s vs 11.3 s, same files)
    print(f"   {described} in {time.perf_counter() - started:.1f} s; baseline…", flush=True)
    baseline = run_baseline(source, out)
    print(f"   baseline {baseline.seconds:.1f} s; pipeline…", flush=True)
    pipeline = run_pipeline(source, out / f"v3_{source.name}", args.workers, args.image_stats_keyframes)
    print(f"   pipeline {pipeline.ray_init_seconds + pipeline.ingest_seconds:.1f} s", flush=True)
    if pipeline.frames != baseline.frames:
        raise SystemExit(f"the pipeline wrote {pipeline.frames} frames, the baseline read {baseline.frames}")
    shutil.rmtree(out / f"v3_{source.name}", ignore_errors=True)
    if args.src is not None:
        shutil.rmtree(source, ignore_errors=True)  # copies: gigabytes at real size
    return SizeResult(episodes, baseline, pipeline)


def throughput_table(results: list[SizeResult]) -> str:
    """Frames/s and episodes/s of both runs, and their ratio with and without Ray start-up."""
    lines = [
        "| episodes | frames | baseline s | baseline frames/s | baseline episodes/s | Ray init s | pipeline s "
        "| pipeline frames/s | pipeline episodes/s | **ratio** | pipeline s excl. Ray init | frames/s excl. init | ratio excl. init |",
        "|" + "---:|" * 13,
    ]
    for r in results:
        b, p = r.baseline, r.pipeline
        total = p.ray_init_seconds + p.ingest_seconds
        b_fps, p_fps, x_fps = b.frames / b.seconds, p.frames / total, p.frames / p.ingest_seconds
        lines.append(
            f"| {r.episodes} | {p.frames} | {b.seconds:.2f} | {b_fps:,.0f} | {b.episodes / b.seconds:,.1f} "
            f"| {p.ray_init_seconds:.2f} | {total:.2f} | {p_fps:,.0f} | {p.episodes / total:,.1f} | **{p_fps / b_fps:.3f}** "
            f"| {p.ingest_seconds:.2f} | {x_fps:,.0f} | {x_fps / b_fps:.3f} |"
        )
    return "\n".join(lines)


def phases_table(results: list[SizeResult]) -> str:
    """Where the pipeline's time goes (wall seconds of each step; the workers' conversion seconds by phase), and how
    busy other processes kept the machine meanwhile."""
    phases = list(results[0].pipeline.episode_phase_seconds) if results else []
    lines = [
        "| episodes | Ray init s | listing s | first episode after s | convert s | workers: "
        + " / ".join(phases) + " s | driver: appending episodes s | assemble after the last episode s | publish s "
        "| Ray shutdown s | CPU s: " + " / ".join(PROCESS_ROLES) + " | other processes, baseline (cores) "
        "| other processes, pipeline (cores) |",
        "|" + "---:|" * 13,
    ]
    for r in results:
        p = r.pipeline
        split = " / ".join(f"{p.episode_phase_seconds[name]:.1f}" for name in phases)
        lines.append(
            f"| {r.episodes} | {p.ray_init_seconds:.2f} | {p.step_seconds.get('listing', 0):.2f} "
            f"| {p.first_episode_seconds:.2f} | {p.convert_seconds:.2f} | {split} | {p.assembly_seconds:.2f} "
            f"| {p.step_seconds.get('assembling', 0):.2f} | {p.step_seconds.get('publishing', 0):.2f} "
            f"| {p.ray_shutdown_seconds:.2f} | {' / '.join(f'{p.cpu_seconds[role]:.1f}' for role in PROCESS_ROLES)} "
            f"| {r.baseline.other_cores:.2f} | {p.other_cores:.2f} |"
        )
    return "\n".join(lines)


def memory_table(results: list[SizeResult]) -> str:
    """Peak RSS per size: flat across sizes is what bounded, streaming work looks like."""
    lines = [
        "| episodes | baseline: peak driver RSS MiB | pipeline: driver RSS before MiB | peak driver RSS MiB "
        "| peak driver + Ray RSS MiB | processes at most |",
        "|" + "---:|" * 6,
    ]
    for r in results:
        p = r.pipeline
        lines.append(
            f"| {r.episodes} | {r.baseline.driver_peak_mib:,.0f} | {p.driver_start_mib:,.0f} | {p.driver_peak_mib:,.0f} "
            f"| {p.tree_peak_mib:,.0f} | {p.processes_peak} |"
        )
    return "\n".join(lines)


def config_key(args: argparse.Namespace) -> str:
    """Identifies a configuration: re-running it replaces its section in RESULTS.md."""
    if args.preset == "dev" and args.src is None:
        return f"episodes={args.episodes} frames={args.frames} workers={args.workers} size={args.size}"
    what = f"src={args.src}" if args.src is not None else f"frames={args.frames} size={args.size}"
    keyframes = "" if args.image_stats_keyframes == IMAGE_STATS_KEYFRAMES else f" image-stats-keyframes={args.image_stats_keyframes}"
    return f"preset={args.preset} episodes={args.episodes} {what} workers={args.workers}{keyframes}"


def results_section(args: argparse.Namespace, command: str, machine: dict[str, str], results: list[SizeResult]) -> str:
    """A dated section that carries everything needed to judge and repeat the numbers."""
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine_lines = "\n".join(f"- {name}: {value}" for name, value in machine.items())
    return (
        f"## {config_key(args)} ({date})\n\n"
        f"Command: `{command}`\n\n{machine_lines}\n\n"
        f"Throughput (baseline: 1 process; pipeline: {args.workers} Ray workers):\n\n{throughput_table(results)}\n\n"
        f"Pipeline phases:\n\n{phases_table(results)}\n\n"
        f"Peak memory (RSS sampled every {SAMPLE_SECONDS} s):\n\n{memory_table(results)}\n"
    )


def section_header(title: str, script: str, argv: list[str]) -> str:
    """The dated title, the command line and the machine: what every benchmark's section starts with."""
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = "\n".join(f"- {name}: {value}" for name, value in machine_description().items())
    return f"## {title} ({date})\n\nWritten by `{script}`. Command: `{shlex.join(['python', script, *argv])}`\n\n{machine}\n"


def record(key: str, section: str, script: str) -> None:
    """Print a benchmark's section and write it into ``bench/RESULTS.md`` (:func:`update_results`)."""
    print(section)
    update_results(RESULTS_PATH, key, section, script)
    print(f"written to {RESULTS_PATH}")


def update_results(path: Path, key: str, section: str, script: str = "bench/ingest.py") -> None:
    """Replace ``script``'s section for this configuration (between its markers) or append it;
    the header is written only when the file is new, so hand edits to it survive. Every benchmark
    of bench/ writes its results through this, each under its own markers."""
    begin, end = f"<!-- {script} {key} -->", f"<!-- end {script} {key} -->"
    block = f"{begin}\n{section}{end}"
    text = path.read_text() if path.is_file() else RESULTS_HEADER
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def result_file(out: Path, episodes: int) -> Path:
    """Where the process that measured one size leaves its numbers for the parent."""
    return out / f"result_{episodes}.json"


def measure_in_fresh_process(episodes: int, argv: list[str], out: Path) -> SizeResult:
    """Each size gets its own interpreter, so its peak RSS does not carry what an earlier size
    left in the driver (allocator pools, Ray's client state): sizes then compare."""
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--one", str(episodes)])
    if child.returncode:
        raise SystemExit(f"measuring {episodes} episodes failed (exit status {child.returncode}); its output is above")
    data = json.loads(result_file(out, episodes).read_text())
    return SizeResult(episodes, BaselineResult(**data["baseline"]), PipelineResult(**data["pipeline"]))


def main(argv: list[str] | None = None) -> int:
    """Measure each size in a fresh process (baseline and pipeline together), then report all."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        result_file(args.out, args.one).write_text(json.dumps(asdict(run_size(args.one, args))))
        return 0
    command = shlex.join(["python", "bench/ingest.py", *argv])
    machine = machine_description()
    for name, value in machine.items():
        print(f"{name}: {value}")
    results = [measure_in_fresh_process(n, argv, args.out) for n in args.episode_counts]
    print()
    print(throughput_table(results))
    print()
    print(phases_table(results))
    print()
    print(memory_table(results))
    update_results(RESULTS_PATH, config_key(args), results_section(args, command, machine, results))
    print(f"\nwritten to {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
