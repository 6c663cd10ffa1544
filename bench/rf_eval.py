"""CLAP-RF post-training three ways on the rendered-motion data — Knowledge Matching, Knowledge Insulation, plain
fine-tuning — and the RF head's latency per chunk against CLAP-NTP's.

Runs what a user runs, command by command (``clap-data …`` in subprocesses):

1. the data and the NTP checkpoint of ``bench/ntp_eval.py`` (rendered robot episodes, and human ones
   pseudo-labelled by a VD-VAE on a random backbone, so that forgetting can be measured where RF never trains);
2. ``train rf`` from that NTP checkpoint three times with the same seed, steps and data: ``--km-alpha 0.005``
   (KM), ``--ki`` (KI) and ``--km-alpha 0`` (plain);
3. ``eval rf`` with the three checkpoints on the held-out shards: action MSE of the RF chunks beside NTP's decoded
   tokens on the same frames, and the NTP answer scores (teacher-forced cross-entropy, action-token accuracy) of
   each fine-tuned backbone before and after, robot and human samples apart (the paper's Tables VI–VII analog);
4. latency, in this process on ``--latency-samples`` held-out robot samples: one ``RFPolicy.predict`` (one VLM
   forward + the head's Euler steps) against one ``NTPPolicy.predict`` (autoregressive decoding + the Act-VAE
   decoder), median seconds per chunk, on the CPU (no device machine was lent to this task).

Random-weight models at toy scale: read the table as the three arms run end to end and what they do to the
backbone here, not as the paper's numbers. The section goes to ``bench/RESULTS.md``. Never run by ``make test``.

    python bench/rf_eval.py [--human-episodes 8] [--rf-steps 300] [ntp_eval.py's options]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  record, section_header
import ntp_eval  # noqa: E402  the data and the NTP run
from vd_vae_eval import run, step_times  # noqa: E402

SCRIPT = "bench/rf_eval.py"
CLI = [sys.executable, "-m", "clap_data.cli"]
ARMS = {"km": ["--km-alpha", "0.005"], "ki": ["--ki"], "plain": ["--km-alpha", "0"]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ntp_eval.add_data_options(parser)
    parser.set_defaults(human_episodes=8)
    parser.add_argument("--rf-steps", type=int, default=300, help="train rf steps per arm")
    parser.add_argument("--rf-lr", type=float, default=1e-3, help="the head's learning rate (backbone: a tenth)")
    parser.add_argument("--latency-samples", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ingest_bench.BENCH_DIR / "out" / "rf_eval")
    return parser.parse_args(argv)


def train_arms(args: argparse.Namespace, paths: dict[str, Path], timings: dict[str, float]) -> dict[str, Path]:
    arms = {}
    for arm, flags in ARMS.items():
        arms[arm] = args.out.resolve() / f"rf_{arm}"
        _, timings[f"train rf {arm}"] = run([
            *CLI, "train", "rf", "--init", str(paths["ntp"]), "--shards", str(paths["shards"]), "--out",
            str(arms[arm]), *flags, "--steps", str(args.rf_steps), "--batch-size", str(args.batch_size), "--lr",
            str(args.rf_lr), "--warmup-steps", "20", "--log-every", "50", "--save-every", str(args.rf_steps),
            "--seed", str(args.seed), "--device", "cpu", "--overwrite"])
    return arms


def latency(paths: dict[str, Path], rf_ckpt: Path, samples: int) -> dict[str, float]:
    """Median seconds per chunk of RF and NTP acting on the same held-out robot samples (the first call of each
    is a warm-up, not counted)."""
    from clap_data.errors import ClapDataError
    from clap_data.schemas import shards_v1 as S
    from clap_data.training import NTPPolicy
    from clap_data.training.ntp_data import ShardSet, iter_samples
    from clap_data.training.rf_policy import RFPolicy

    shards = ShardSet.open(paths["shards"])
    robot = [s for batch in iter_samples(shards, S.HELDOUT_SPLIT, 64) for s in batch if s[S.EMBODIMENT] != "human"]
    robot = robot[:samples + 1]
    seconds: dict[str, float] = {"malformed": 0}
    for name, policy in (("rf", RFPolicy.from_pretrained(rf_ckpt, device="cpu")),
                         ("ntp", NTPPolicy.from_pretrained(paths["ntp"], device="cpu"))):
        times = []
        for sample in robot:
            started = time.perf_counter()
            try:
                policy.predict(sample["images"], sample[S.INSTRUCTION], sample[S.EMBODIMENT], sample[S.STATE],
                               sample[S.ARM_MASK])
            except ClapDataError:  # an NTP answer that never reached "Action:": it ran to the token budget
                seconds["malformed"] += 1
            times.append(time.perf_counter() - started)
        seconds[name] = statistics.median(times[1:])
    return seconds


def _mse(value: float | None) -> str:
    return "–" if value is None else f"{value:.3e}"


def _score(scores: dict[str, Any], group: str | None, key: str) -> float | None:
    source = scores if group is None else scores["groups"].get(group, {})
    return source.get(key)


def table(report: dict[str, Any]) -> str:
    """One row per arm: actions (RF vs NTP on the same frames), then forgetting before → after."""
    lines = ["| arm | α | RF action MSE | NTP action MSE (same frames) | NTP CE before → after (all) | robot | human "
             "| action-token accuracy before → after (all) | robot | human |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in report["checkpoints"]:
        cells = [c["mode"], f"{c['km_alpha']:g}", _mse(c["rf"]["mse_mean"]),
                 f"{_mse(c['ntp']['mse_mean'])} ({c['ntp']['malformed']} malformed)"]
        for key, fmt in (("cross_entropy", "{:.3f}"), ("action_token_accuracy", "{:.1%}")):
            for group in (None, "robot", "human"):
                before, after = _score(c["before"], group, key), _score(c["after"], group, key)
                cells.append("–" if before is None or after is None else f"{fmt.format(before)} → {fmt.format(after)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    paths, timings = ntp_eval.build(args)
    arms = train_arms(args, paths, timings)
    stdout, timings["eval rf"] = run([*CLI, "eval", "rf", *(a for arm in arms.values() for a in ("--ckpt", str(arm))),
                                      "--shards", str(paths["shards"]), "--device", "cpu", "--json"])
    report = json.loads(stdout)
    seconds = latency(paths, arms["km"], args.latency_samples)
    key = f"{ntp_eval.data_key(args)} rf={args.rf_steps}"
    section = (
        ingest_bench.section_header(f"CLAP-RF: Knowledge Matching, Knowledge Insulation, plain fine-tuning ({key})",
                                    SCRIPT, argv)
        + f"- data and NTP run: as `bench/ntp_eval.py` with the same options (factory VLM `{args.size}`, random "
        f"weights, {args.steps} NTP steps); RF: {args.rf_steps} steps of {args.batch_size} robot samples per arm, "
        f"head lr {args.rf_lr:g} (backbone a tenth), seed {args.seed}\n"
        f"- held-out samples scored: {report['checkpoints'][0]['rf']['chunks']:,} robot chunks for the actions; "
        f"every held-out sample (robot and human) for the NTP scores\n"
        f"- latency per chunk on the CPU (median of {args.latency_samples}): RF {seconds['rf'] * 1000:.0f} ms "
        f"(one VLM forward + the head's Euler steps), NTP {seconds['ntp'] * 1000:.0f} ms (greedy decoding + the "
        f"Act-VAE decoder; {seconds['malformed']:.0f} of its answers malformed): RF **{seconds['ntp'] / seconds['rf']:.1f}×** "
        "faster\n"
        f"{step_times(timings)}\n"
        f"{table(report)}\n"
    )
    ingest_bench.record(key, section, SCRIPT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
