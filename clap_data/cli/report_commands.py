"""``clap-data report``: one self-contained HTML page about tokenized datasets (figures, tables, quarantine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from clap_data.cli.common import app, stderr, stdout, user_errors

_ACT_VAE_HELP = "Act-VAE checkpoint folder: adds its codebook in 2-D and sampled chunks decoded from the tokens."
_SAMPLES_HELP = "Chunks to decode with --act-vae and plot against the recorded actions."


@app.command("report", no_args_is_help=True)
@user_errors
def report(
    datasets: Annotated[list[Path], typer.Argument(help="Unified datasets (robot and human) to report on.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write (replaced atomically).")],
    act_vae: Annotated[Path | None, typer.Option("--act-vae", help=_ACT_VAE_HELP)] = None,
    samples: Annotated[int, typer.Option(min=0, help=_SAMPLES_HELP)] = 4,
) -> None:
    """Code usage per slot, human vs robot usage, episode lengths, tasks, quarantine, and with --act-vae the
    codebook map and decoded chunks, in one HTML file with everything embedded (no network, no script)."""
    from clap_data.report import build_report

    def progress(text: str) -> None:
        stderr.print(f"[bold]report[/bold] {text}", highlight=False)

    result = build_report(datasets, out, act_vae=act_vae, samples=samples, progress=progress)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("report", f"{result.path} ({result.size_bytes / 1e6:.2f} MB)")
    table.add_row("contents", f"{result.datasets} dataset(s), {result.figures} figures")
    for note in result.notes:
        table.add_row("note", note)
    stdout.print(table, highlight=False)
