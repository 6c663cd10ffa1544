"""Benchmark the pseudo-label pipeline against decode-only and model-only on the same frames, in one run.

For each episode count: generate (or reuse) a unified Astribot dataset with one ``head`` camera of ``--size`` and an untrained
backbone + VD-VAE of ``--backbone`` (weights do not change the speed), then measure

* *decode-only*: every episode's frames decoded in order by ``clap_data.vd_vae.frame_pairs.iter_episode_frames``
  (the pipeline readers' decoder, one seek per episode, FFmpeg frame threads), nothing else;
* *model-only*: the pipeline's own model actor (``_VDVAELabeller``, backbone once per frame, then the VD-VAE
  on the pairs) called in this process on segments already decoded into memory, with every core's torch
  threads, over as many frames as the dataset has;
* *pipeline*: ``pseudolabel_dataset`` end to end on a fresh copy (copy not timed), Ray started just before
  through ``ray_session`` so its start-up is reported apart;

each in its own fresh process, sampling its peak RSS (the pipeline's: driver and driver + Ray). **ratio = pipeline frames/s ÷
min(decode-only, model-only)**: 1.0 means the pipeline runs as fast as its slowest stage alone; the
target is ≥ 0.7. Peak RSS should stay flat as episodes grow. Results go to ``bench/RESULTS.md``, a section
per configuration. Never run by ``make test``.

    python bench/pseudolabel.py [--episodes 4,16] [--frames 240] [--size 320x240] [--backbone vit-ti]
                                [--batch-size 32] [--workers 2] [--device auto] [--out bench/out]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # as clap_data.ray_runtime sets it, before Ray is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  Monitor, update_results, machine_description

from clap_data.lerobot_v3.metadata import DatasetMetadata  # noqa: E402

SCRIPT = "bench/pseudolabel.py"
CAMERA = "head"
# Random DINOv2 shapes (weights do not change the speed): tiny is the test suite's, vit-ti a ViT-Ti/16
# (192 wide, 12 layers: 300 patches at 240×320), vit-s a ViT-S/16 (384 wide) — the paper's ViT-B/16 is 768.
BACKBONES = {
    "tiny": {"patch_size": 40, "image_size": 80, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64},
    "vit-ti": {"patch_size": 16, "image_size": 224, "hidden_size": 192, "num_hidden_layers": 12,
               "num_attention_heads": 3, "intermediate_size": 768},
    "vit-s": {"patch_size": 16, "image_size": 224, "hidden_size": 384, "num_hidden_layers": 12,
              "num_attention_heads": 6, "intermediate_size": 1536},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", default="4,16", help="comma-separated episode counts, one run each")
    parser.add_argument("--frames", type=int, default=240, help="frames per episode")
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the camera, as the factory takes it")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="vit-ti")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per backbone call (the CLI's --batch-size)")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the embedded Ray (and torch threads of model-only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ingest_bench.BENCH_DIR / "out")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, write JSON
    parser.add_argument("--part", choices=("decode", "model", "pipeline"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.episode_counts = [int(n) for n in args.episodes.split(",") if n]
    args.video_size = tuple(int(x) for x in args.size.lower().split("x"))
    return args


def device_of(args: argparse.Namespace) -> str:
    from clap_data.act_vae.training import pick_device

    return str(pick_device(args.device))


# --- data and models -------------------------------------------------------------------------------


def dataset_dir(args: argparse.Namespace, episodes: int) -> Path:
    return args.out.resolve() / f"pseudolabel_{episodes}x{args.frames}_{args.size}" / "v3"


def prepare_dataset(args: argparse.Namespace, episodes: int) -> Path:
    """A unified dataset of ``episodes`` × ``--frames`` with one camera, made once and reused untouched."""
    from clap_data.factories.astribot import write_astribot_dataset
    from clap_data.pipelines.ingest import IngestRequest, ingest
    from clap_data.schemas import PSEUDO_TOKENS
    from clap_data.sources.astribot import AstribotSource

    v3 = dataset_dir(args, episodes)
    if (v3 / "meta/info.json").is_file():
        meta = DatasetMetadata.load(v3)
        if meta.total_frames == episodes * args.frames and PSEUDO_TOKENS not in meta.features:
            return v3
    source = v3.parent / "astribot"
    write_astribot_dataset(source, episode_lengths=[args.frames] * episodes, cameras=(CAMERA,),
                           video_size=args.video_size, reuse_videos=True, overwrite=True)
    report = ingest(AstribotSource(source), IngestRequest(out=v3, overwrite=True, workers=args.workers))
    if report.quarantine or report.frames != episodes * args.frames:
        raise SystemExit(f"ingesting {source} gave {report.frames} frames: {report.quarantine[:3]}")
    shutil.rmtree(source)
    return v3


def prepare_models(args: argparse.Namespace) -> tuple[Path, Path]:
    """An untrained backbone of ``--backbone`` and a VD-VAE (small preset) on an untrained Act-VAE's codebook."""
    import torch
    from transformers import Dinov2Config

    from clap_data.act_vae.training import preset_config
    from clap_data.models import VDVAE, ActVAE, VDVAEConfig, save_model
    from clap_data.models.backbone import FrozenBackbone

    folder = args.out.resolve() / f"pseudolabel_models_{args.backbone}"
    backbone, vd_vae = folder / "backbone", folder / "vd_vae"
    if not (vd_vae / "model.safetensors").is_file():
        torch.manual_seed(0)
        frozen = FrozenBackbone.from_config(Dinov2Config(**BACKBONES[args.backbone]))
        frozen.model.save_pretrained(backbone)
        save_model(ActVAE(preset_config("small")), folder / "act_vae")
        config = dataclasses.replace(VDVAEConfig.small(), feature_dim=frozen.hidden_size, num_patches=frozen.num_patches)
        save_model(VDVAE.from_act_vae(folder / "act_vae", config), vd_vae)
    return backbone, vd_vae


# --- the three measurements ------------------------------------------------------------------------


def run_decode_only(root: Path) -> dict[str, Any]:
    from clap_data.vd_vae.frame_pairs import episode_videos, iter_episode_frames

    videos = episode_videos(DatasetMetadata.load(root), CAMERA)
    with ingest_bench.Monitor() as monitor:
        started = time.perf_counter()
        frames = sum(1 for video in videos.values() for _ in iter_episode_frames(video))
        seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "peak_mib": monitor.driver_peak / ingest_bench.MIB,
            "other_cores": monitor.other_cores}


def run_model_only(root: Path, args: argparse.Namespace, backbone: Path, vd_vae: Path) -> dict[str, Any]:
    """The pipeline's actor on in-memory segments of the first episode, repeated to the dataset's frame count."""
    from clap_data.pipelines.pseudolabel import SEGMENT_FRAMES, _VDVAELabeller
    from clap_data.vd_vae.frame_pairs import GAP, episode_videos, iter_episode_frames

    meta = DatasetMetadata.load(root)
    video = episode_videos(meta, CAMERA)[0]
    frames = np.stack(list(iter_episode_frames(video)))
    device = device_of(args)
    labeller = _VDVAELabeller(str(vd_vae), str(backbone), device, args.workers, args.batch_size)
    segments = []
    for start in range(0, len(frames), SEGMENT_FRAMES):
        stop = min(start + SEGMENT_FRAMES, len(frames))
        segments.append({"file": np.array(["x"]), "group": np.array([0]), "first_row": np.array([start]),
                         "start": np.array([start]), "stop": np.array([stop]), "length": np.array([len(frames)]),
                         "frames": frames[start:min(stop + GAP, len(frames))][None]})
    labeller(segments[0])  # warm-up: first-call allocations and kernels
    with ingest_bench.Monitor() as monitor:
        started = time.perf_counter()
        labelled = 0
        while labelled < meta.total_frames:
            for segment in segments:
                labelled += len(labeller(segment)["row"])
        seconds = time.perf_counter() - started
    return {"frames": labelled, "seconds": seconds, "peak_mib": monitor.driver_peak / ingest_bench.MIB,
            "other_cores": monitor.other_cores, "device": device}


def run_pipeline(root: Path, args: argparse.Namespace, backbone: Path, vd_vae: Path) -> dict[str, Any]:
    from clap_data.pipelines.pseudolabel import PseudolabelRequest, pseudolabel_dataset
    from clap_data.ray_runtime import ray_session

    work = root.parent / "run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root, work / "v3")
    request = PseudolabelRequest(ckpt=vd_vae, backbone=backbone, camera=CAMERA, device=args.device,
                                 batch_size=args.batch_size, workers=args.workers)
    with ingest_bench.Monitor() as monitor:
        started = time.perf_counter()
        with ray_session(None, args.workers):
            ready = time.perf_counter()
            report = pseudolabel_dataset(work / "v3", request)
            labelled = time.perf_counter()
        finished = time.perf_counter()
    shutil.rmtree(work)
    return {"frames": report.frames, "ray_init_seconds": ready - started, "label_seconds": labelled - ready,
            "ray_shutdown_seconds": finished - labelled, "driver_peak_mib": monitor.driver_peak / ingest_bench.MIB,
            "tree_peak_mib": monitor.tree_peak / ingest_bench.MIB, "other_cores": monitor.other_cores}


PARTS = ("decode", "model", "pipeline")


def run_part(episodes: int, part: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of one size, in the process the parent started for it alone (so its peak RSS is its own)."""
    root = prepare_dataset(args, episodes)
    backbone, vd_vae = prepare_models(args)
    if part == "decode":
        return run_decode_only(root)
    if part == "model":
        return run_model_only(root, args, backbone, vd_vae)
    return run_pipeline(root, args, backbone, vd_vae)


def measure(episodes: int, part: str, argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--one", str(episodes), "--part", part])
    if child.returncode:
        raise SystemExit(f"measuring {part} on {episodes} episodes failed (exit status {child.returncode})")
    return json.loads(result_file(args, episodes, part).read_text())


def result_file(args: argparse.Namespace, episodes: int, part: str) -> Path:
    return args.out / f"pseudolabel_{part}_{episodes}.json"


# --- report ----------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| episodes | frames | decode-only fps | model-only fps | pipeline fps | **ratio** | fps excl. Ray init "
        "| ratio excl. init | decode peak MiB | model peak MiB | pipeline driver peak MiB | driver + Ray peak MiB "
        "| other processes (cores) |",
        "|" + "---:|" * 13,
    ]
    for r in results:
        d, m, p = r["decode"], r["model"], r["pipeline"]
        decode_fps, model_fps = d["frames"] / d["seconds"], m["frames"] / m["seconds"]
        total = p["ray_init_seconds"] + p["label_seconds"] + p["ray_shutdown_seconds"]
        fps, excl = p["frames"] / total, p["frames"] / (total - p["ray_init_seconds"])
        bound = min(decode_fps, model_fps)
        others = max(d["other_cores"], m["other_cores"], p["other_cores"])
        lines.append(
            f"| {r['episodes']} | {p['frames']:,} | {decode_fps:,.1f} | {model_fps:,.1f} | {fps:,.1f} | **{fps / bound:.2f}** "
            f"| {excl:,.1f} | {excl / bound:.2f} | {d['peak_mib']:,.0f} | {m['peak_mib']:,.0f} | {p['driver_peak_mib']:,.0f} "
            f"| {p['tree_peak_mib']:,.0f} | {others:.2f} |")
    return "\n".join(lines)


def config_key(args: argparse.Namespace, device: str) -> str:
    return (f"episodes={args.episodes} frames={args.frames} size={args.size} backbone={args.backbone} "
            f"batch={args.batch_size} workers={args.workers} device={device}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        result_file(args, args.one, args.part).write_text(json.dumps(run_part(args.one, args.part, args)))
        return 0
    results = []
    for episodes in args.episode_counts:
        results.append({"episodes": episodes, **{part: measure(episodes, part, argv, args) for part in PARTS}})
    device = results[0]["model"]["device"]
    shape = BACKBONES[args.backbone]
    title = f"Pseudo-label pipeline vs decode-only and model-only: {config_key(args, device)}"
    section = (
        ingest_bench.section_header(title, SCRIPT, argv)
        + f"- backbone: random DINOv2, patch {shape['patch_size']}, width {shape['hidden_size']}, "
        f"{shape['num_hidden_layers']} layers (frames resized to 240×320); VD-VAE: small preset\n\n"
        f"**ratio = pipeline fps ÷ min(decode-only fps, model-only fps)** (target ≥ 0.7). Pipeline time includes "
        f"Ray start-up, checks, the column update and commit; \"excl. Ray init\" leaves out `ray.init`.\n\n"
        f"{table(results)}\n"
    )
    ingest_bench.record(config_key(args, device), section, SCRIPT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
