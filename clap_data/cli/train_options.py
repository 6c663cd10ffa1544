"""What the Ray training commands share (``train ntp``, ``train rf``): their common options, the JSON report and
the summary table, so that both read, and answer, alike."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from clap_data.cli.common import stdout, training_run_line

StepsOption = Annotated[int, typer.Option(min=1, help="Optimizer steps in total (more continue a finished run).")]
WarmupOption = Annotated[int, typer.Option(min=0, help="Linear warmup steps, then a constant rate.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Samples per step and worker.")]
NumWorkersOption = Annotated[int, typer.Option(min=1, help="Ray Train workers (DDP ranks).")]
AddressOption = Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting a local Ray.")]
TrainDeviceOption = Annotated[str, typer.Option(
    help="auto (GPU workers when the Ray cluster has a GPU for each), cpu or cuda.")]
WristDropOption = Annotated[float, typer.Option(min=0.0, max=1.0, help="Chance of leaving both wrist images out.")]
SaveEveryOption = Annotated[int, typer.Option(min=1, help="Save (and make resumable) every N steps.")]
LogEveryOption = Annotated[int, typer.Option(min=1, help="Print progress every N steps.")]
OverwriteOption = Annotated[bool, typer.Option(help="Discard a checkpoint at --out and start afresh.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


def print_json(report: Any, **extra: Any) -> None:
    """A train report (``clap_data.training.ray_launcher.TrainReport``) and ``extra`` as one JSON line."""
    print(json.dumps({**report.__dict__, "ckpt": str(report.ckpt), **extra}))


def print_summary(report: Any, rows: list[tuple[str, str]], checkpoint: str) -> None:
    """The summary: the ``train`` line, ``rows`` (name, text), the Act-VAE and statistics, the checkpoint."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("train", training_run_line(report, f"{report.num_workers} worker(s) ({report.device})"))
    for name, text in rows:
        table.add_row(name, text)
    table.add_row("act-vae", f"sha256 {report.act_vae_sha256[:16]}…; statistics "
                             f"{', '.join(report.stats_ids.values()) or 'none'}")
    table.add_row("checkpoint", checkpoint)
    stdout.print(table)
