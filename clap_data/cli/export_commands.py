"""``clap-data export``: tokenized datasets → training shards (:mod:`clap_data.pipelines.export`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from clap_data.cli.act_vae_commands import HoldoutFractionOption, HoldoutOption, WaitOption, _holdout
from clap_data.cli.common import app, stderr, stdout, user_errors

_CAMERAS_HELP = "Cameras to store, comma-separated (columns in prompt order: head, wrist_right, wrist_left)."
_MIX_HELP = ("Mixing weights DS=W (DS: a --data path, its folder name or provenance id; repeat or comma-separate): "
             "recorded in the manifest and applied by the loader (W = how often each sample of DS is seen per epoch).")


def _cameras(value: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise typer.BadParameter("give at least one camera", param_hint="--cameras")
    return items


def _image_size(value: str) -> tuple[int, int]:
    from clap_data.video import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--image-size") from None


def _mix(values: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in (part.strip() for value in values for part in value.split(",") if part.strip()):
        name, equals, weight = item.rpartition("=")
        try:
            number = float(weight)
        except ValueError:
            number = None
        if not equals or not name or number is None:
            raise typer.BadParameter(f"{item!r} is not of the form DATASET=WEIGHT", param_hint="--mix")
        if weights.get(name, number) != number:
            raise typer.BadParameter(f"two weights for {name}", param_hint="--mix")
        weights[name] = number
    return weights


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items()) or "none"


def _print_summary(report: Any) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    title = "already complete (an interrupted run was finished)" if report.already_complete else report.out
    table.add_row("export", title)
    resumed = f", {report.resumed_episodes:,} staged by an earlier run" if report.resumed_episodes else ""
    table.add_row("episodes", f"{report.episodes:,}{resumed}")
    for split, samples in report.samples.items():
        shards = f"{report.shards[split]} shard(s)"
        table.add_row(split, f"{samples:,} samples ({report.padded[split]:,} padded chunks) in {shards}")
        table.add_row("", f"by dataset: {_counts(report.datasets[split])}")
        table.add_row("", f"by embodiment: {_counts(report.embodiments[split])}")
    total = sum(report.samples.values())
    timed = report.seconds > 0 and not report.already_complete
    rate = f", {total / report.seconds:,.0f} samples/s" if timed else ""
    table.add_row("written", f"{report.bytes / (1 << 20):,.1f} MiB in {report.seconds:.1f} s{rate}")
    for notice in report.notices:
        table.add_row("note", notice)
    table.add_row("read with", f"clap_data.training.loader.iter_batches({report.out!r}, …)")
    stdout.print(table)


_DATA_HELP = "Tokenized unified datasets (repeat the option); robots and humans mix."
_OUT_HELP = "The shard folder: train/, heldout/ and manifest.json (atomically, when complete)."
_SIZE_HELP = "HEIGHTxWIDTH every image is resized to (aspect not kept)."
_STRIDE_HELP = "One sample every N frames (chunk starts t with t % N == 0)."
_SHARD_HELP = "About this many MiB per shard (the count is estimated)."
_SEED_HELP = "Seed of the shuffle (samples hashed to shards, order within a shard)."
_WORKERS_HELP = "Parallel episodes (default: all CPUs of the embedded Ray)."
_OVERWRITE_HELP = "Replace shards at --out, or discard an interrupted run with other options."


@app.command("export", no_args_is_help=True)
@user_errors
def export(
    data: Annotated[list[Path], typer.Option(help=_DATA_HELP)],
    out: Annotated[Path, typer.Option(help=_OUT_HELP)],
    cameras: Annotated[str, typer.Option(help=_CAMERAS_HELP)] = "head,wrist_right,wrist_left",
    image_size: Annotated[str, typer.Option(help=_SIZE_HELP)] = "240x320",
    stride: Annotated[int, typer.Option(min=1, help=_STRIDE_HELP)] = 1,
    mix: Annotated[list[str] | None, typer.Option(help=_MIX_HELP)] = None,
    shard_mb: Annotated[float, typer.Option(min=0.001, help=_SHARD_HELP)] = 500.0,
    seed: Annotated[int, typer.Option(help=_SEED_HELP)] = 0,
    holdout: HoldoutOption = "episodes",
    holdout_fraction: HoldoutFractionOption = 0.1,
    workers: Annotated[int | None, typer.Option(min=1, help=_WORKERS_HELP)] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting a local Ray.")] = None,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE_HELP)] = False,
    wait: WaitOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Write training shards: one sample per chunk start (images, instruction, subtask, tokens, state, normalised
    chunk, arm mask, provenance), held-out episodes apart, shuffled deterministically from --seed."""
    from clap_data.pipelines.export import ExportRequest
    from clap_data.pipelines.export import export as run_export
    from clap_data.progress import ConsoleReporter, SilentReporter

    request = ExportRequest(
        out=out, cameras=_cameras(cameras), image_size=_image_size(image_size), stride=stride, mix=_mix(mix or []),
        shard_mb=shard_mb, seed=seed, holdout=_holdout(holdout, holdout_fraction), workers=workers, address=address,
        overwrite=overwrite, wait=wait,
    )
    report = run_export(data, request, SilentReporter() if as_json else ConsoleReporter(stderr, "items"))
    if as_json:
        print(json.dumps(asdict(report)))
        return
    _print_summary(report)
