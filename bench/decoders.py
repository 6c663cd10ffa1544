"""Sequential video decoding for the VD-VAE's frame pairs: PyAV against decord and decord2.

The VD-VAE reads every frame of an episode once, in order (``clap_data.vd_vae.frame_pairs``), so
what matters is forward decoding to RGB uint8 of the codecs our datasets hold: HEVC (Astribot, stream
copied) and AV1 (every re-encode), with H.264 as a control. For each codec, in one run: the video
(the real Astribot S1 wrist camera, 640×360 HEVC, from ``../shared/fixtures``, or a synthetic
textured one when that is absent; AV1 and H.264 re-encoded from it by ``clap_data.video.reencode``
with the pipeline's re-encode settings, GOP 2, CRF 30), PyAV's frames as the reference, then each
decoder in a fresh process, ``--repeats`` full decodes each (opening the file included), in ``--rounds``
interleaved rounds, the fastest counting: frames decoded, frames/s, cores used (and by other processes
meanwhile, the machine may be shared), and pixel agreement with PyAV.

decord and decord2 both install as the module ``decord``, so each is installed with pip into its own
folder, ``<--out>/packages/<name>`` (``pip install --no-deps --target``; never into the venv, never a
dependency), and put on its worker's ``PYTHONPATH``; a decord worker imports no PyAV (that would be two
FFmpeg builds in one process): it compares against the reference frames saved as ``.npy``. Writes a
section into ``bench/RESULTS.md``. Never run by ``make test``.

    python bench/decoders.py [--repeats 5] [--rounds 3] [--out bench/out/decoders]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REAL_HEVC = (BENCH_DIR.parents[1] / "shared/fixtures/astribot_s1_dummy/videos/chunk-000/images_dict.left.rgb"
             / "episode_000000.mp4")
DECODERS = ("pyav", "pyav-frame-threads", "frame_pairs", "decord", "decord2")
PACKAGES = {"decord": "decord", "decord2": "decord2"}  # decoder → the PyPI package that provides it
CODECS = ("hevc", "av1", "h264")
FPS = 30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="full decodes per process; the fastest counts")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh processes per (codec, decoder), interleaved; the fastest counts")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "decoders")
    parser.add_argument("--worker", choices=DECODERS, help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- the worker: one decoder on one video, in its own process -----------------------------------

def pyav_frames(path: Path, thread_type: str | None) -> Iterator[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if thread_type:
            stream.thread_type = thread_type
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def frame_pairs_frames(path: Path) -> Iterator[np.ndarray]:
    """Our reader on the whole file as one episode (its count is the reference's, from the .npy)."""
    from clap_data.vd_vae.frame_pairs import EpisodeVideo, iter_episode_frames

    length = np.load(reference_path(path), mmap_mode="r").shape[0]
    return iter_episode_frames(EpisodeVideo(0, "bench", path, 0, length, FPS))


def decord_frames(path: Path) -> Iterator[np.ndarray]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    while True:
        try:
            yield reader.next().asnumpy()
        except StopIteration:
            return


def decoder_frames(decoder: str) -> Callable[[Path], Iterator[np.ndarray]]:
    return {
        "pyav": lambda path: pyav_frames(path, None),  # PyAV's default: slice threads
        "pyav-frame-threads": lambda path: pyav_frames(path, "AUTO"),
        "frame_pairs": frame_pairs_frames,
        "decord": decord_frames,
        "decord2": decord_frames,
    }[decoder]


def decoder_version(decoder: str) -> str:
    if decoder.startswith("decord"):
        import decord

        return f"decord module {decord.__version__}"
    import av

    return f"av {av.__version__}"


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy, so a run disturbed by other work shows."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def run_worker(decoder: str, video: Path, repeats: int) -> dict:
    """Best-of-``repeats`` wall time of decoding every frame, then agreement with the reference."""
    frames_of = decoder_frames(decoder)
    result: dict = {"decoder": decoder, "version": decoder_version(decoder)}
    best = None
    try:
        for _ in range(repeats):
            wall, cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_seconds()
            frames = list(frames_of(video))
            wall, cpu, busy = time.perf_counter() - wall, time.process_time() - cpu, busy_cpu_seconds() - busy
            if best is None or wall < best[0]:
                best = (wall, cpu, max(0.0, busy - cpu))
    except Exception as exc:  # a decoder that cannot read the codec: its own words go in the table
        text = str(exc).strip().splitlines()[-1].split(" ERROR ")[-1]  # decord prefixes a time and its source line
        result["error"] = f"{type(exc).__name__}: {text[:160]}"
        return result
    reference = np.load(reference_path(video), mmap_mode="r")
    result.update(frames=len(frames), reference_frames=int(reference.shape[0]), wall_s=best[0],
                  fps=len(frames) / best[0], cores=best[1] / best[0], others=best[2] / best[0])
    if len(frames) == reference.shape[0] and frames and frames[0].shape == reference.shape[1:]:
        identical = total = largest = 0
        for frame, expected in zip(frames, reference, strict=True):
            diff = np.abs(frame.astype(np.int16) - expected)
            identical += int((diff == 0).sum())
            total += int(diff.sum())
            largest = max(largest, int(diff.max()))
        values = reference.size
        result.update(identical=identical / values, max_diff=largest, mean_diff=total / values)
    return result


# ---- the parent: videos, reference frames, packages, table ------------------------------------

def reference_path(video: Path) -> Path:
    return video.with_suffix(".reference.npy")


def synthetic_hevc(dst: Path, frames: int = 250) -> None:
    """A textured, moving 640×360 scene (flat frames would decode unrealistically fast)."""
    from PIL import Image

    from clap_data.video import encode_images

    height, width = 360 + frames, 640 + 2 * frames
    coarse = np.random.default_rng(0).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    images = []
    for i in range(frames):
        buffer = io.BytesIO()
        Image.fromarray(texture[i:i + 360, 2 * i:2 * i + 640]).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    encode_images(images, dst, FPS, None, "hevc", gop=2, crf=30)


def make_videos(out: Path) -> tuple[dict[str, Path], str]:
    """The three test videos and a sentence saying where the content comes from."""
    from clap_data.video import reencode

    videos = {codec: out / f"{codec}.mp4" for codec in CODECS}
    if REAL_HEVC.is_file():
        shutil.copyfile(REAL_HEVC, videos["hevc"])
        origin = "the real Astribot S1 left wrist camera (shared/fixtures/astribot_s1_dummy), HEVC as shipped"
    else:
        synthetic_hevc(videos["hevc"])
        origin = "a synthetic textured scene scrolling diagonally, HEVC by clap_data.video (GOP 2, CRF 30)"
    for codec in ("av1", "h264"):
        if not videos[codec].is_file():
            reencode(videos["hevc"], videos[codec], FPS, None, codec, gop=2, crf=30)
    return videos, origin


def save_reference(video: Path) -> dict:
    import av

    frames = list(pyav_frames(video, None))
    np.save(reference_path(video), np.stack(frames))
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return {"frames": len(frames), "size": f"{stream.width}×{stream.height}",
                "pyav_decoder": stream.codec_context.name, "bytes": video.stat().st_size}


def install(decoder: str, out: Path) -> tuple[Path | None, str]:
    """The folder holding ``decoder``'s package (pip-installed there if needed), or None and pip's last line."""
    target = out / "packages" / decoder
    if (target / "decord").is_dir():
        return target, "installed earlier"
    child = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                            PACKAGES[decoder]], capture_output=True, text=True)
    last = (child.stderr.strip() or child.stdout.strip()).splitlines()[-1:] or [""]
    return (target, last[0]) if child.returncode == 0 else (None, last[0])


def measure(decoder: str, video: Path, repeats: int, package: Path | None) -> dict:
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", decoder, "--video", str(video),
                            "--repeats", str(repeats)], capture_output=True, text=True, env=env)
    lines = child.stdout.strip().splitlines()
    if child.returncode or not lines:
        tail = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        return {"decoder": decoder, "error": f"worker died (exit {child.returncode}): {tail[:160]}"}
    return json.loads(lines[-1])


def table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| codec | decoder | frames decoded / PyAV's | frames/s | cores used | other processes (cores) "
             "| identical pixels | max \\|Δ\\| | mean \\|Δ\\| |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for codec, r in rows:
        if "error" in r:
            lines.append(f"| {codec} | {r['decoder']} | **fails**: {r['error']} | – | – | – | – | – | – |")
            continue
        agree = (f"{100 * r['identical']:.2f}% | {r['max_diff']} | {r['mean_diff']:.3f}" if "identical" in r
                 else "– | – | –")
        lines.append(f"| {codec} | {r['decoder']} | {r['frames']} / {r['reference_frames']} | {r['fps']:.0f} "
                     f"| {r['cores']:.2f} | {r['others']:.2f} | {agree} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.video, args.repeats)))
        return 0
    sys.path.insert(0, str(BENCH_DIR))
    import ingest as ingest_bench  # the machine description and RESULTS.md sections of the other benchmarks

    args.out.mkdir(parents=True, exist_ok=True)
    videos, origin = make_videos(args.out)
    references = {codec: save_reference(path) for codec, path in videos.items()}
    packages = {decoder: install(decoder, args.out) for decoder in PACKAGES}
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.rounds):  # interleaved, so a burst of other work on the machine hits every decoder alike
        for codec, video in videos.items():
            for decoder in DECODERS:
                package, note = packages.get(decoder, (None, ""))
                if decoder in PACKAGES and package is None:
                    result = {"decoder": decoder, "error": f"pip install {PACKAGES[decoder]} failed: {note}"}
                else:
                    result = measure(decoder, video, args.repeats, package)
                print(codec, result, flush=True)
                if result.get("fps", -1) >= best.get((codec, decoder), {}).get("fps", -1):
                    best[codec, decoder] = result
    rows = [(codec, best[codec, decoder]) for codec in videos for decoder in DECODERS]
    versions = sorted({r["version"] for _, r in rows if "version" in r})
    machine = ingest_bench.machine_description()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    inputs = "\n".join(f"- {codec}: {ref['frames']} frames {ref['size']}, {ref['bytes'] / 1024:.0f} KiB, "
                       f"PyAV decoder `{ref['pyav_decoder']}`" for codec, ref in references.items())
    section = (
        f"## Sequential decoding for frame pairs: PyAV vs decord vs decord2 ({date})\n\n"
        f"Written by `bench/decoders.py`. Content: {origin}; AV1 and H.264 re-encoded from it by "
        "`clap_data.video.reencode` (GOP 2, CRF 30, no B-frames). Each decoder in a fresh process decodes every "
        f"frame to RGB uint8, {args.repeats} times, in {args.rounds} interleaved rounds; the fastest decode of all "
        "counts (opening the file included). *cores used* = the process's CPU time ÷ wall time; *other processes* = "
        "cores the rest of the machine kept busy meanwhile (on 2 cores, above ~0.2 the number is disturbed). "
        "*pyav* = PyAV's default (slice threads), *pyav-frame-threads* = `thread_type = \"AUTO\"`, "
        "*frame_pairs* = `clap_data.vd_vae.frame_pairs.iter_episode_frames` (frame threads). decord and decord2 "
        "both install as the module `decord`, so each was pip-installed into its own folder under "
        "`bench/out/decoders/packages` (not the venv, not a dependency). Pixels are compared with PyAV's "
        "`to_ndarray(format=\"rgb24\")`, which is what lerobot's pyav backend returns."
        f"\n\nCommand: `{shlex.join(['.venv/bin/python', 'bench/decoders.py', *argv])}`\n\n"
        + "\n".join(f"- {name}: {value}" for name, value in machine.items())
        + f"\n- decoders: {', '.join(versions)}\n\n{inputs}\n\n{table(rows)}\n"
    )
    print()
    print(table(rows))
    key = f"repeats={args.repeats} rounds={args.rounds}"
    ingest_bench.update_results(ingest_bench.RESULTS_PATH, key, section, "bench/decoders.py")
    print(f"\nwritten to {ingest_bench.RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
