"""What a small CLAP-NTP reaches on held-out episodes of the rendered-motion data, against the most-frequent-token
baseline.

Runs what a user runs, command by command (``clap-data …`` in subprocesses), on robot data whose pixels show the
recorded motion (:mod:`clap_data.factories.rendered`):

1. render ``--episodes`` dual-arm motions (one appearance) and ingest them as an Astribot source; with
   ``--human-episodes``, human-hand motions too, ingested as Ego4D and pseudo-labelled by a VD-VAE trained on a
   random backbone (step 2's Act-VAE codebook);
2. train a small Act-VAE on the episodes outside the held-out split and tokenize the dataset with it;
3. export training shards (``--image-size``, ``--stride``; whole episodes held out by the shared provenance
   split) and build the factory VLM of ``--size`` from a config (random weights: nothing can be downloaded here);
4. ``train ntp`` for ``--steps`` steps (one Ray Train worker on the CPU);
5. ``eval ntp`` on the held-out shards and on the training shards: token accuracy per slot and action MSE per
   DOF in robot units, both against the baseline that answers every sample with each slot's most frequent
   training token.

The VLM starts from random weights and sees 56 × 56 (tiny) or 112 × 112 (small) images, so read the numbers as
what the method and its evaluation give end to end at this scale, not as the paper's. The table goes to
``bench/RESULTS.md``. Never run by ``make test``.

    python bench/ntp_eval.py [--episodes 16] [--lengths 96,160] [--act-steps 600] [--steps 600] [--size tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  update_results, section_header
from vd_vae_eval import run, step_times  # noqa: E402  one command as a user runs it; the timings line

SCRIPT = "bench/ntp_eval.py"
CLI = [sys.executable, "-m", "clap_data.cli"]


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options of the data and the NTP run (``bench/rf_eval.py`` builds on the same)."""
    parser.add_argument("--episodes", type=int, default=16, help="rendered robot motions")
    parser.add_argument("--human-episodes", type=int, default=0,
                        help="rendered human motions, pseudo-labelled by a VD-VAE on a random backbone (0: none)")
    parser.add_argument("--lengths", default="96,160", help="LOW,HIGH episode lengths (frames)")
    parser.add_argument("--act-steps", type=int, default=600, help="Act-VAE training steps (small preset)")
    parser.add_argument("--vd-steps", type=int, default=200, help="VD-VAE training steps (with --human-episodes)")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny", help="the factory VLM")
    parser.add_argument("--steps", type=int, default=600, help="train ntp steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--stride", type=int, default=2, help="export stride (frames between samples)")
    parser.add_argument("--image-size", default="112x112")
    parser.add_argument("--holdout-fraction", type=float, default=0.25, help="share of episodes held out")
    parser.add_argument("--seed", type=int, default=0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--out", type=Path, default=ingest_bench.BENCH_DIR / "out" / "ntp_eval")
    return parser.parse_args(argv)


def _pseudo_labelled_human(args: argparse.Namespace, paths: dict[str, Path], split: list[str],
                           timings: dict[str, float]) -> None:
    """Ingest the rendered human video and label it with a VD-VAE on a random backbone (its quality is not the
    point: the shards then hold human samples, as CLAP-NTP's do)."""
    import torch
    from pseudolabel import BACKBONES  # the random backbone shapes
    from transformers import Dinov2Config

    from clap_data.models.backbone import FrozenBackbone

    _, timings["ingest human"] = run([*CLI, "ingest", "ego4d", "--src", str(paths["rendered"] / "human/variant_00"),
                                      "--out", str(paths["human"]), "--overwrite"])
    torch.manual_seed(args.seed)
    FrozenBackbone.from_config(Dinov2Config(**BACKBONES["tiny"])).model.save_pretrained(paths["backbone"])
    _, timings["train vd-vae"] = run([*CLI, "train", "vd-vae", "--robot", str(paths["robot"]), "--human",
                                      str(paths["human"]), "--act-vae", str(paths["act_vae"]), "--backbone",
                                      str(paths["backbone"]), "--out", str(paths["vd_vae"]), "--steps",
                                      str(args.vd_steps), "--batch-size", "32", "--seed", str(args.seed),
                                      "--overwrite", *split])
    _, timings["pseudolabel"] = run([*CLI, "pseudolabel", "vd-vae", str(paths["human"]), "--ckpt",
                                     str(paths["vd_vae"]), "--backbone", str(paths["backbone"])])


def build(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, float]]:
    """Steps 1–4 (with human video when asked); the paths and each step's seconds."""
    out = args.out.resolve()
    names = ("rendered", "robot", "human", "backbone", "act_vae", "vd_vae", "shards", "vlm", "ntp")
    paths = {name: out / name for name in names}
    split = ["--holdout", "episodes", "--holdout-fraction", str(args.holdout_fraction)]
    timings: dict[str, float] = {}
    _, timings["render"] = run([sys.executable, "-m", "clap_data.factories.rendered", str(paths["rendered"]),
                                "--robot-episodes", str(args.episodes), "--human-episodes",
                                str(args.human_episodes), "--variants", "1", "--lengths", args.lengths,
                                "--seed", str(args.seed)])
    _, timings["ingest"] = run([*CLI, "ingest", "astribot", "--src", str(paths["rendered"] / "robot/variant_00"),
                                "--out", str(paths["robot"]), "--overwrite"])
    _, timings["train act-vae"] = run([*CLI, "train", "act-vae", "--data", str(paths["robot"]), "--out",
                                       str(paths["act_vae"]), "--steps", str(args.act_steps), "--seed",
                                       str(args.seed), "--overwrite", *split])
    _, timings["tokenize"] = run([*CLI, "tokenize", "act-vae", str(paths["robot"]), "--ckpt", str(paths["act_vae"])])
    data = ["--data", str(paths["robot"])]
    if args.human_episodes:
        _pseudo_labelled_human(args, paths, split, timings)
        data += ["--data", str(paths["human"])]
    _, timings["export"] = run([*CLI, "export", *data, "--out", str(paths["shards"]), "--image-size",
                                args.image_size, "--stride", str(args.stride), "--seed", str(args.seed),
                                "--overwrite", *split])
    _, timings["vlm"] = run([sys.executable, "-m", "clap_data.factories.tiny_vlm", str(paths["vlm"]), "--size",
                             args.size])
    _, timings["train ntp"] = run([*CLI, "train", "ntp", "--shards", str(paths["shards"]), "--model",
                                   str(paths["vlm"]), "--out", str(paths["ntp"]), "--steps", str(args.steps),
                                   "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-steps",
                                   "20", "--log-every", "50", "--save-every", str(args.steps), "--seed",
                                   str(args.seed), "--device", "cpu", "--overwrite"])
    return paths, timings


def evaluate(paths: dict[str, Path], split: str, timings: dict[str, float]) -> dict[str, Any]:
    stdout, timings[f"eval {split}"] = run([*CLI, "eval", "ntp", "--ckpt", str(paths["ntp"]), "--shards",
                                            str(paths["shards"]), "--split", split, "--batch-size", "16",
                                            "--device", "cpu", "--json"])
    return json.loads(stdout)


def _mse(value: float | None) -> str:
    return "–" if value is None else f"{value:.3e}"


def table(reports: dict[str, dict[str, Any]]) -> str:
    """Policy and baseline side by side, one column pair per split."""
    splits = list(reports)
    lines = ["| | " + " | ".join(f"policy ({s}) | baseline ({s})" for s in splits) + " |",
             "|---|" + "---:|" * (2 * len(splits))]

    def row(label: str, policy: Any, baseline: Any) -> str:
        return f"| {label} | " + " | ".join(f"{policy(r)} | {baseline(r)}" for r in reports.values()) + " |"

    lines.append(row("samples (malformed answers)", lambda r: f"{r['samples']:,} ({r['malformed']})",
                     lambda r: f"{r['samples']:,}"))
    lines.append(row("token accuracy", lambda r: f"{r['token_accuracy']:.1%}",
                     lambda r: f"{r['baseline_token_accuracy']:.1%}"))
    for i, slot in enumerate(next(iter(reports.values()))["slots"]):
        lines.append(row(f"&nbsp;&nbsp;{slot}", lambda r, i=i: f"{r['per_slot_accuracy'][i]:.1%}",
                         lambda r, i=i: f"{r['baseline_per_slot_accuracy'][i]:.1%}"))
    lines.append(row("action MSE, mean over DOFs", lambda r: _mse(r["mse_mean"]),
                     lambda r: _mse(r["baseline_mse_mean"])))
    for dof in next(iter(reports.values()))["mse_per_dof"]:
        lines.append(row(f"&nbsp;&nbsp;{dof}", lambda r, d=dof: _mse(r["mse_per_dof"][d]),
                         lambda r, d=dof: _mse(r["baseline_mse_per_dof"][d])))
    return "\n".join(lines)


def data_key(args: argparse.Namespace) -> str:
    """The configuration a RESULTS section is filed under."""
    human = f" human={args.human_episodes} vd={args.vd_steps}" if args.human_episodes else ""
    return (f"episodes={args.episodes}{human} lengths={args.lengths} act={args.act_steps} size={args.size} "
            f"steps={args.steps} stride={args.stride} seed={args.seed}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    paths, timings = build(args)
    reports = {split: evaluate(paths, split, timings) for split in ("heldout", "train")}
    manifest = json.loads((paths["shards"] / "manifest.json").read_text())
    counts = {split: entry.get("samples", sum(s["rows"] for s in entry["shards"]))
              for split, entry in manifest["splits"].items()}
    held = reports["heldout"]
    beats = held["token_accuracy"] > held["baseline_token_accuracy"] and held["mse_mean"] is not None \
        and held["mse_mean"] < held["baseline_mse_mean"]
    key = data_key(args)
    section = (
        ingest_bench.section_header(f"CLAP-NTP on the rendered-motion data vs the most-frequent-token baseline "
                                    f"({key})", SCRIPT, argv)
        + f"- data: {args.episodes} rendered dual-arm episodes"
        + (f" and {args.human_episodes} human ones (pseudo-tokens of a VD-VAE on a random backbone)"
           if args.human_episodes else "")
        + f" of {args.lengths} frames, {args.holdout_fraction:.0%}"
        f" of the episodes held out; exported at {args.image_size}, stride {args.stride}: "
        + ", ".join(f"{n:,} {s} samples" for s, n in counts.items()) + "\n"
        f"- model: the factory VLM `{args.size}` (random weights from a config), {args.steps} steps of "
        f"{args.batch_size}, lr {args.lr:g}; Act-VAE small, {args.act_steps} steps, Nq {len(held['slots']) // 2}"
        f"\n{step_times(timings)}"
        f"- on the held-out episodes the policy **{'beats' if beats else 'does not beat'}** the baseline "
        "(token accuracy and action MSE together)\n\n"
        f"{table(reports)}\n"
    )
    ingest_bench.record(key, section, SCRIPT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
