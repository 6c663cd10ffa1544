"""The VD-VAE's eval tables on the rendered-motion factory: the contrastive model against its ablation.

Runs what a user runs, command by command (``clap-data …`` in subprocesses), on data whose pixels show the
recorded motion (:mod:`clap_data.factories.rendered`):

1. render ``--robot-episodes`` dual-arm motions under two appearances (variant 0 neutral, variant 1 another
   background and lighting) and ``--human-episodes`` human-hand motions; ingest robot variant 0 and 1 and
   the human data;
2. train a small Act-VAE on robot variant 0 and tokenize it (so the eval reads the stored tokens);
3. train two VD-VAEs on robot variant 0 + the human data with the same seed, steps and data: the
   contrastive one (SigLIP weight 0.1, METHOD.md §4) and the ablation (``--siglip-weight 0``);
4. ``eval vd-vae --compare``: both scored on the same held-out pairs — agreement with the Act-VAE, decoded
   MSE, the constant-code baseline, robustness under brightness/contrast, grayscale, noise and the
   background swap (variant 1's frames of the same motions).

The backbone is a random DINOv2 built from a config (nothing can be downloaded here), so the numbers say
what the VD-VAE learns from random patch features of rendered frames, not what a DINOv3 gives: read them as
a check that the method and its evaluation work end to end, and record them whatever they show. The tables
go to ``bench/RESULTS.md``. Never run by ``make test``.

    python bench/vd_vae_eval.py [--robot-episodes 16] [--human-episodes 8] [--act-steps 600] [--vd-steps 400]
                                [--backbone vit-ti] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  update_results, machine_description
from pseudolabel import BACKBONES  # noqa: E402  the random backbone shapes

SCRIPT = "bench/vd_vae_eval.py"
CLI = [sys.executable, "-m", "clap_data.cli"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robot-episodes", type=int, default=16)
    parser.add_argument("--human-episodes", type=int, default=8)
    parser.add_argument("--lengths", default="96,160", help="LOW,HIGH episode lengths (frames)")
    parser.add_argument("--act-steps", type=int, default=600)
    parser.add_argument("--vd-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny")
    parser.add_argument("--holdout-fraction", type=float, default=0.25, help="share of episodes held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ingest_bench.BENCH_DIR / "out" / "vd_vae_eval")
    return parser.parse_args(argv)


def run(command: list[str], ok: tuple[int, ...] = (0,)) -> tuple[str, float]:
    """Run one step as a user would; stop the benchmark with its output when it fails."""
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in ok:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout, time.perf_counter() - started


def split(args: argparse.Namespace) -> list[str]:
    """One held-out split of whole episodes for both trainers (the eval then takes the VD-VAE's own)."""
    return ["--holdout", "episodes", "--holdout-fraction", str(args.holdout_fraction)]


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1–3; returns the paths and how long each step took."""
    import torch
    from transformers import Dinov2Config

    from clap_data.models.backbone import FrozenBackbone

    out = args.out.resolve()
    rendered, timings = out / "rendered", {}
    _, timings["render"] = run([sys.executable, "-m", "clap_data.factories.rendered", str(rendered),
                                "--robot-episodes", str(args.robot_episodes), "--human-episodes",
                                str(args.human_episodes), "--variants", "2", "--lengths", args.lengths,
                                "--seed", str(args.seed)])
    paths = {"robot": out / "robot_v0", "robot_swap": out / "robot_v1", "human": out / "human"}
    for name, source, src in (("robot", "astribot", rendered / "robot/variant_00"),
                              ("robot_swap", "astribot", rendered / "robot/variant_01"),
                              ("human", "ego4d", rendered / "human/variant_01")):
        _, timings[f"ingest {name}"] = run([*CLI, "ingest", source, "--src", str(src), "--out", str(paths[name]),
                                            "--overwrite"])
    torch.manual_seed(args.seed)
    backbone = out / f"backbone_{args.backbone}"
    FrozenBackbone.from_config(Dinov2Config(**BACKBONES[args.backbone])).model.save_pretrained(backbone)
    paths |= {"backbone": backbone, "act_vae": out / "act_vae", "contrastive": out / "vd_contrastive",
              "ablation": out / "vd_ablation"}
    _, timings["train act-vae"] = run([*CLI, "train", "act-vae", "--data", str(paths["robot"]), "--out",
                                       str(paths["act_vae"]), "--steps", str(args.act_steps), "--overwrite",
                                       "--seed", str(args.seed), *split(args)])
    _, timings["tokenize"] = run([*CLI, "tokenize", "act-vae", str(paths["robot"]), "--ckpt", str(paths["act_vae"])])
    for name, weight in (("contrastive", "0.1"), ("ablation", "0")):
        _, timings[f"train vd-vae ({name})"] = run([
            *CLI, "train", "vd-vae", "--robot", str(paths["robot"]), "--human", str(paths["human"]), "--act-vae",
            str(paths["act_vae"]), "--backbone", str(backbone), "--out", str(paths[name]), "--steps",
            str(args.vd_steps), "--batch-size", str(args.batch_size), "--siglip-weight", weight, "--seed",
            str(args.seed), "--overwrite", *split(args)])
    return {"paths": paths, "timings": timings}


def step_times(timings: dict[str, float]) -> str:
    """The section's line of how long each command took."""
    return "- step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "\n"


def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def tables(report: dict[str, Any]) -> str:
    """The eval report as the README's tables: agreement, decoded MSE, robustness, per model and baseline."""
    models = report["models"]
    names = [Path(m["ckpt"]).name for m in models]
    lines = ["| | " + " | ".join(names) + " | constant code | Act-VAE (own tokens) |",
             "|---|" + "---:|" * (len(models) + 2),
             "| exact code match | " + " | ".join(rate(m["exact_match"]) for m in models)
             + f" | {rate(report['constant_match'])} | 100.0% |",
             "| beats the constant code | " + " | ".join(str(m["beats_constant"]) for m in models) + " | | |",
             "| decoded MSE, mean over DOFs | " + " | ".join(f"{m['decoded_mse_mean']:.2e}" for m in models)
             + f" | | {report['act_vae_decoded_mse_mean']:.2e} |"]
    for change in models[0]["robustness"]:
        lines.append(f"| codes unchanged: {change.replace('_', ' ')} | "
                     + " | ".join(rate(m["robustness"][change]) for m in models) + " | 100.0% | |")
    slots = len(models[0]["per_slot_match"])
    lines += ["", "Exact match per slot (left arm's slots, then right's):", "",
              "| model | " + " | ".join(str(i) for i in range(slots)) + " |", "|---|" + "---:|" * slots]
    for name, m in zip(names, models, strict=True):
        lines.append(f"| {name} | " + " | ".join(rate(v) for v in m["per_slot_match"]) + " |")
    lines.append("| constant code | " + " | ".join(rate(v) for v in report["constant_per_slot"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    built = build(args)
    paths, timings = built["paths"], built["timings"]
    stdout, timings["eval vd-vae"] = run([
        *CLI, "eval", "vd-vae", str(paths["robot"]), "--ckpt", str(paths["contrastive"]), "--compare",
        str(paths["ablation"]), "--backbone", str(paths["backbone"]), "--act-vae", str(paths["act_vae"]),
        "--background-swap", f"{paths['robot']}={paths['robot_swap']}", "--json"])
    report = json.loads(stdout)
    shape = BACKBONES[args.backbone]
    key = (f"robot={args.robot_episodes} human={args.human_episodes} lengths={args.lengths} act={args.act_steps} "
           f"vd={args.vd_steps} backbone={args.backbone} seed={args.seed}")
    section = (
        ingest_bench.section_header(f"VD-VAE on the rendered factory: contrastive vs ablation ({key})", SCRIPT, argv)
        + f"- backbone: **random** DINOv2 from a config (patch {shape['patch_size']}, width {shape['hidden_size']}, "
        f"{shape['num_hidden_layers']} layers); Act-VAE small, {args.act_steps} steps; VD-VAE small, {args.vd_steps} "
        f"steps of {args.batch_size} pairs, seed {args.seed}, contrastive = SigLIP 0.1, ablation = SigLIP 0\n"
        f"- held-out pairs: {report['pairs']:,} (split {report['holdout']}); Act-VAE tokens "
        f"{', '.join(report['token_source'].values())}\n"
        f"{step_times(timings)}\n"
        f"{tables(report)}\n"
    )
    ingest_bench.record(key, section, SCRIPT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
