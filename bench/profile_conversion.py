"""Where one episode's conversion goes: ``clap_data.conversion.convert_episode`` (what an ingest's Ray worker runs
per episode) under cProfile, in this process, on real-size Astribot episodes: copies of the shared real episode
(``../shared``), of ``--src``'s, or else the factory's.

The ingest benchmark (``bench/ingest.py``) times the pipeline end to end against a raw loop; this says how much of
an episode's cost is its own conversion (read, probe, decode, video staging, image statistics, staging writes) — the
part a worker pays per episode whatever Ray does around it — and which calls inside it cost most. Episodes: 640 ×
360 HEVC (libx265, keyframe every 2 frames, as the real wrists), ``--frames`` frames, the two wrist cameras, the
factory's pose columns (the real episode: 236 frames, its own poses and pixels); the first episode is a warm-up, not
profiled. Prints frames/s on one core, the conversion's own phase split (read / probe / decode / video / stats / staging)
and the ``--top`` calls by cumulative time; then the same for the driver's side, appending the staged episodes to the
dataset (``pipelines.ingest._InOrderAssembly``: the one copy of every video into the v3 files, the data rows, the
statistics, the hashing), which runs serially on one core however many workers convert. Never run by ``make test``.

    python bench/profile_conversion.py [--src DIR] [--episodes 6] [--frames 257] [--size 640x360] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import time
from pathlib import Path

from clap_data.conversion import EPISODE_PHASES, VideoOptions, convert_episode
from clap_data.factories.astribot import write_astribot_dataset
from clap_data.pipelines.ingest import _InOrderAssembly  # the driver's side of an ingest
from clap_data.sources.astribot import AstribotSource
from clap_data.staging import StagingArea

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from ingest import REAL_SAMPLE, replicate_source  # noqa: E402  the real-size source of bench/ingest.py


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="an Astribot folder whose episodes are copied (default: the real sample)")
    parser.add_argument("--episodes", type=int, default=6, help="episodes (the first is a warm-up)")
    parser.add_argument("--frames", type=int, default=257, help="frames per episode")
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of both wrist cameras")
    parser.add_argument("--top", type=int, default=25, help="calls listed, by cumulative time")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "profile_conversion")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    width, height = (int(v) for v in args.size.split("x"))
    copied = args.src or (REAL_SAMPLE if (REAL_SAMPLE / "meta" / "info.json").is_file() else None)
    if copied is not None:
        src = args.out.resolve() / f"copies_{args.episodes}"
        print(replicate_source(copied.resolve(), src, args.episodes))
    else:
        src = args.out.resolve() / f"src_{args.episodes}x{args.frames}_{args.size}"
        if not src.is_dir():
            write_astribot_dataset(src, episode_lengths=[args.frames] * args.episodes, cameras=("left", "right"),
                                   video_size=(width, height), reuse_videos=True)
    out = args.out.resolve() / "dataset"
    shutil.rmtree(out, ignore_errors=True)
    staging = StagingArea(out)
    shutil.rmtree(staging.root, ignore_errors=True)
    source = AstribotSource(src)
    with staging.locked(False, lambda *_args, **_kwargs: None):
        staging.prepare({"bench": "profile_conversion"}, discard_mismatch=True)
        refs = source.list_episodes()
        convert_episode(source, refs[0], staging, VideoOptions())
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        outcomes = [convert_episode(source, ref, staging, VideoOptions()) for ref in refs[1:]]
        profile.disable()
        seconds = time.perf_counter() - started
        frames = sum(outcome.frames for outcome in outcomes)
        print(f"{len(refs) - 1} episodes, {frames:,} frames, 2 cameras {args.size}: {seconds:.2f} s under cProfile, "
              f"{frames / seconds:,.0f} frames/s on one core")
        split = {phase: sum(outcome.phases[phase] for outcome in outcomes) for phase in EPISODE_PHASES}
        print("per episode: " + ", ".join(f"{phase} {total / len(outcomes) * 1000:.1f} ms" for phase, total in split.items()))
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
        profile_assembly(source, refs, staging, out, args.top)
    shutil.rmtree(staging.root, ignore_errors=True)
    return 0


def profile_assembly(source: AstribotSource, refs: list, staging: StagingArea, out: Path, top: int) -> None:
    """Append the staged episodes to a dataset under cProfile, the first one (a warm-up) unprofiled."""
    work = out.parent / "assembly"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    assembly = _InOrderAssembly(source, refs, staging, work)
    assembly.settle([refs[0].order])
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    assembly.settle(ref.order for ref in refs[1:])
    profile.disable()
    seconds = time.perf_counter() - started
    print(f"driver: appending {len(refs) - 1} episodes: {seconds / (len(refs) - 1) * 1000:.1f} ms per episode under cProfile")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(top)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
