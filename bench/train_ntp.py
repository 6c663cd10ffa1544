"""CLAP-NTP training throughput: the training loop's samples/s against the bare model step, in the same run.

For each ``--sizes`` entry of the factory VLM (:mod:`clap_data.factories.tiny_vlm`: ``tiny`` ≈ 0.2 M parameters,
56 × 56 images; ``small`` ≈ 32 M, 112 × 112 images; random weights — speed does not depend on them), on factory
shards (:mod:`clap_data.factories.shards`, ``--image-size`` JPEGs, an untrained tiny Act-VAE: 8 action tokens),
on ``--device``:

* **bare step** (the ceiling): one batch encoded once, then forward + backward + clip + AdamW step repeated on it
  (bf16 autocast and gradient checkpointing on CUDA, as the loop does) — no data, no logging;
* **input alone**: the loop's input side only — shard rows → wrist drops → the processor's encoding — samples/s;
* **loop**: :func:`clap_data.training.ntp_train.train_loop` in this process (input encoded one batch ahead in a
  thread while the model steps), samples/s from its own log windows after the first (warm-up) one;
* **train ntp**: the command a user runs (``clap-data train ntp``, one Ray Train worker, a subprocess), samples/s
  from its progress lines after the first window; its wall time includes Ray's start-up, reported apart.

**ratio = loop ÷ bare step**: 1.0 means the input pipeline, the prefetch and the bookkeeping cost nothing over the
model's own step. On a CPU the prefetch thread competes with the model's threads for the same cores, so below 1
is expected there. Peak RSS is sampled by ``bench/ingest.py``'s ``Monitor`` (which also reports how many cores
other processes kept busy: a shared machine's numbers mean little without it). The section goes into
``--results`` (default ``bench/RESULTS.md``). Never run by ``make test``.

    python bench/train_ntp.py [--sizes tiny,small] [--device cpu|cuda] [--batch-size 8] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  Monitor, update_results, section_header

from clap_data.factories.shards import write_ntp_shards  # noqa: E402
from clap_data.factories.tiny_vlm import SIZES, write_tiny_vlm  # noqa: E402
from clap_data.models import ActVAE, ActVAEConfig, save_model  # noqa: E402
from clap_data.training.ntp_data import ShardSet, iter_training_batches  # noqa: E402
from clap_data.training.ntp_model import add_action_tokens, load_vlm  # noqa: E402
from clap_data.training.ntp_train import NTPTrainSettings, train_loop  # noqa: E402
from clap_data.training.prompts import encode_training_batch  # noqa: E402
from clap_data.training.train_common import wrist_drops  # noqa: E402

SCRIPT = "bench/train_ntp.py"
CLI = [sys.executable, "-c", "import clap_data.cli.ntp_commands; from clap_data.cli import main; main()"]
STEP_LINE = re.compile(r"step (\d+)/\d+ .* ([\d.]+) samples/s")
TINY_ACT_VAE = ActVAEConfig(num_queries=4, codebook_size=16, code_dim=8, width=32, encoder_layers=1,
                            decoder_layers=1, heads=4)


@dataclass(frozen=True)
class SizeResult:
    size: str
    parameters: float  # millions
    tokens_per_sample: float
    bare: float  # samples/s
    input_only: float
    loop: float
    command: float
    command_seconds: float  # the whole command, Ray start-up and model loading included
    peak_rss_mib: float
    cuda_peak_mib: float | None
    other_cores: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each side (the loop: 4 windows)")
    parser.add_argument("--image-size", type=int, default=224, help="the shards' square JPEG size")
    parser.add_argument("--out", type=Path, default=ingest_bench.BENCH_DIR / "out" / "train_ntp")
    parser.add_argument("--results", type=Path, default=ingest_bench.RESULTS_PATH)
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    """The shards (6 episodes of 16 samples per dataset) and each size's model folder, cached in ``--out``."""
    act_vae = args.out / "act_vae"
    if not act_vae.is_dir():
        torch.manual_seed(0)
        save_model(ActVAE(TINY_ACT_VAE), act_vae)
    shards = args.out / f"shards_{args.image_size}"
    if not shards.is_dir():
        write_ntp_shards(shards, act_vae, episodes=6, frames=16, image_size=(args.image_size, args.image_size))
    models = {}
    for size in args.sizes.split(","):
        models[size] = args.out / f"vlm_{size}"
        if not models[size].is_dir():
            write_tiny_vlm(models[size], size=size)
    return shards, models


def _batches(shards: ShardSet, processor: object, batch_size: int):  # noqa: ANN202  (an iterator of batches)
    for step, samples in enumerate(iter_training_batches(shards, batch_size, 0, 1, seed=0)):
        yield encode_training_batch(processor, samples, wrist_drops(samples, 0.5, 0, step, 0), shards.num_queries)


def bare_and_input(shards_dir: Path, model_dir: Path, args: argparse.Namespace) -> tuple[float, float, float, float]:
    """Samples/s of the bare step and of the input side alone; parameters (M) and tokens per sample."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shards = ShardSet.open(shards_dir)
    model, processor = load_vlm(str(model_dir))
    add_action_tokens(model, processor, shards.codebook_size)
    model.to(device).train()
    model.config.use_cache = False
    if cuda:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = _batches(shards, processor, args.batch_size)
    started = time.perf_counter()
    for _ in range(args.steps):
        batch = next(batches)
    input_only = args.steps * args.batch_size / (time.perf_counter() - started)
    inputs = {k: v.to(device) for k, v in batch.items()}

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(3):  # warm-up (allocator, kernels)
        step()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    bare = args.steps * args.batch_size / (time.perf_counter() - started)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    return bare, input_only, parameters, float(inputs["attention_mask"].sum()) / args.batch_size


def _windows_rate(rates: list[float]) -> float:
    """Samples/s over the windows after the first (equal windows: the harmonic mean of their rates)."""
    later = rates[1:] or rates
    return len(later) / sum(1.0 / r for r in later)


def loop(shards: Path, model: Path, args: argparse.Namespace, out: Path) -> float:
    settings = NTPTrainSettings(shards=str(shards), model=str(model), out=str(out), steps=args.steps,
                                batch_size=args.batch_size, learning_rate=1e-5, save_every=10 * args.steps,
                                log_every=max(1, args.steps // 4))
    rates: list[float] = []
    train_loop(settings, device=torch.device(args.device), report=lambda m: rates.append(m["samples_per_second"]))
    return _windows_rate(rates)


def command(shards: Path, model: Path, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    started = time.perf_counter()
    run = subprocess.run([*CLI, "train", "ntp", "--shards", str(shards), "--model", str(model), "--out", str(out),
                          "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", "1e-5",
                          "--save-every", str(10 * args.steps), "--log-every", str(max(1, args.steps // 4)),
                          "--device", args.device], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"train ntp failed ({run.returncode}):\n{run.stderr[-3000:]}")
    rates = [float(rate) for _, rate in STEP_LINE.findall(run.stderr)]
    return _windows_rate(rates), time.perf_counter() - started


def measure(size: str, shards: Path, model: Path, args: argparse.Namespace) -> SizeResult:
    scratch = args.out / f"runs_{size}_{args.device}"
    shutil.rmtree(scratch, ignore_errors=True)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with ingest_bench.Monitor() as monitor:
        bare, input_only, parameters, tokens = bare_and_input(shards, model, args)
        in_loop = loop(shards, model, args, scratch / "loop")
    by_command, seconds = command(shards, model, args, scratch / "command")
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    return SizeResult(size, parameters, tokens, bare, input_only, in_loop, by_command, seconds,
                      monitor.driver_peak / 2**20, cuda_peak, monitor.other_cores)


def section(args: argparse.Namespace, argv: list[str], results: list[SizeResult]) -> str:
    rows = [
        f"| {r.size} | {r.parameters:.1f} M | {r.tokens_per_sample:.0f} | {r.bare:.1f} | {r.input_only:.1f} | "
        f"{r.loop:.1f} | **{r.loop / r.bare:.2f}** | {r.command:.1f} | {r.command_seconds:.0f} s | "
        f"{r.peak_rss_mib:.0f} MiB | {'—' if r.cuda_peak_mib is None else f'{r.cuda_peak_mib:.0f} MiB'} | "
        f"{r.other_cores:.2f} |"
        for r in results
    ]
    header = ingest_bench.section_header(f"train ntp on {args.device}, batch {args.batch_size}, "
                                         f"{args.image_size}² JPEG shards", SCRIPT, argv)
    return (f"{header}\nSamples/s (one worker; bare step: the same batch repeated; loop and train ntp: their log "
            "windows after the first):\n\n"
            "| size | parameters | tokens/sample | bare step | input alone | loop | loop ÷ bare | train ntp (Ray, 1 "
            "worker) | train ntp wall time | peak RSS (driver) | CUDA peak | other processes (cores) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"```json\n{json.dumps([asdict(r) for r in results], indent=1)}\n```\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    shards, models = prepare(args)
    results = []
    for size, model in models.items():
        result = measure(size, shards, model, args)
        print(f"{size}: bare {result.bare:.1f}, input {result.input_only:.1f}, loop {result.loop:.1f} "
              f"({result.loop / result.bare:.2f} of bare), train ntp {result.command:.1f} samples/s "
              f"({result.command_seconds:.0f} s wall); other processes {result.other_cores:.2f} cores", flush=True)
        results.append(result)
    key = f"device={args.device} batch={args.batch_size} image={args.image_size} sizes={args.sizes}"
    ingest_bench.update_results(args.results, key, section(args, argv, results), SCRIPT)
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
