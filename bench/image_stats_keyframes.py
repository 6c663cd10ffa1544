"""What ``--image-stats-keyframes`` trades: for each count, the time an ingest's conversion spends decoding one
camera of one episode (the decode check and the sampled keyframes, one pass: ``video.check_and_sample``) and how far
the resulting image statistics are from those of every frame.

Videos: the shared real Astribot S1 wrist videos (640×360 HEVC, GOP 2, 236 frames) by default, or every ``*.mp4``
under ``--src``; without either, a factory episode of the real size. Reference: ``image_stats`` of every frame of
the video, strided as the samples are. Errors are the largest over the three channels, in lerobot's [0, 1] units.
Two baselines are timed in the same run, interleaved: the decode check alone (no statistics), and the check then the
keyframes each on its own (what conversion did before they shared one pass); the ingest's other costs are in
``bench/ingest.py``'s tables. Never run by ``make test``.

    python bench/image_stats_keyframes.py [--src DIR] [--counts 2,4,8,16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clap_data import video
from clap_data.conversion import IMAGE_STATS_KEYFRAMES
from clap_data.factories.astribot import write_astribot_dataset
from clap_data.lerobot_v3.stats import image_stats

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from ingest import REAL_SAMPLE, machine_description, record  # noqa: E402  shared measuring helpers

COMPARED = ("mean", "std", "q01", "q50", "q99", "min", "max")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="a folder whose *.mp4 files are measured (default: the real sample)")
    parser.add_argument("--counts", default="2,4,8,16", help="comma-separated keyframe counts")
    parser.add_argument("--repeats", type=int, default=5, help="timings per video and count (the best is kept)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "image_stats_keyframes")
    return parser.parse_args(argv)


def videos_to_measure(args: argparse.Namespace) -> list[Path]:
    """The ``--src`` videos, the real wrist videos, or a factory episode's two wrist cameras."""
    root = args.src or (REAL_SAMPLE if (REAL_SAMPLE / "meta" / "info.json").is_file() else None)
    if root is None:
        root = args.out / "factory"
        if not (root / "meta" / "info.json").is_file():
            write_astribot_dataset(root, episode_lengths=[236], cameras=("left", "right"), video_size=(640, 360))
    found = sorted(root.rglob("*.mp4"))
    if not found:
        raise SystemExit(f"no .mp4 file under {root}")
    return found


def best_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: the file in the page cache, the decoder's first use
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def check_then_sample(path: Path, probe: video.VideoProbe, count: int) -> None:
    """What a conversion did before the two shared one pass: the decode check, then the keyframes, each on its own."""
    video.check_decodes(path, probe, full=False)
    video.sample_keyframes(path, probe, count)


def every_frame_stats(path: Path, probe: video.VideoProbe) -> dict[str, np.ndarray]:
    """Statistics of every frame, strided as the samples are (what the samples estimate)."""
    sample_shape = video.sample_keyframes(path, probe, 1).shape[1:3]
    frames = [frame for _, frame in video.iter_rgb_frames(path)]
    stride = frames[0].shape[0] // sample_shape[0]
    return image_stats(np.stack([frame[::stride, ::stride] for frame in frames]))


def measure(path: Path, counts: list[int], repeats: int) -> list[dict[str, float]]:
    probe = video.probe_video(path)
    reference = every_frame_stats(path, probe)
    check_ms = best_ms(lambda: video.check_decodes(path, probe, full=False), repeats)
    rows = []
    for count in counts:
        samples = video.check_and_sample(path, probe, False, count)
        stats = image_stats(samples)
        row = {"count": count, "sampled": len(samples), "check_ms": check_ms,
               "ms": best_ms(lambda count=count: video.check_and_sample(path, probe, False, count), repeats),
               "apart_ms": best_ms(lambda count=count: check_then_sample(path, probe, count), repeats)}
        row |= {name: float(np.abs(stats[name] - reference[name]).max()) for name in COMPARED}
        rows.append(row)
    return rows


def section(command: str, machine: dict[str, str], results: dict[str, list[dict[str, float]]]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Image statistics: keyframes decoded vs accuracy ({now})", "", f"Command: `{command}`", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += ["", f"Per camera and episode; default {IMAGE_STATS_KEYFRAMES}. ms: `check_and_sample` (decode check + "
              "keyframes, one pass), best of the repeats; baselines measured alongside: the decode check alone, and "
              "the check then the keyframes each on its own (what conversion did before they shared one pass). "
              "Errors: largest over the three channels against every frame's statistics, [0, 1] units.", "",
              "| video | keyframes | ms | check, then keyframes, apart ms | one pass ÷ apart | decode check alone ms "
              "| one pass ÷ check | " + " | ".join(f"{name} error" for name in COMPARED) + " |",
              "|---|" + "---:|" * (6 + len(COMPARED))]
    for name, rows in results.items():
        for row in rows:
            errors = " | ".join(f"{row[key]:.4f}" for key in COMPARED)
            lines.append(f"| {name} | {row['sampled']} | {row['ms']:.1f} | {row['apart_ms']:.1f} "
                         f"| {row['ms'] / row['apart_ms']:.2f} | {row['check_ms']:.1f} | {row['ms'] / row['check_ms']:.2f} "
                         f"| {errors} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    counts = [int(value) for value in args.counts.split(",") if value]
    results = {}
    for path in videos_to_measure(args):
        name = f"{path.parent.name}/{path.name}"
        print(f"measuring {name}…")
        results[name] = measure(path, counts, args.repeats)
    command = " ".join(["python", "bench/image_stats_keyframes.py", *argv])
    record(f"counts={args.counts} src={args.src or 'default'}", section(command, machine_description(), results),
           "bench/image_stats_keyframes.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
