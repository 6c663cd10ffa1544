"""Act-VAE commands: ``train act-vae``, ``tokenize act-vae``, ``detokenize``, ``eval act-vae``,
``sweep act-vae``. The verb comes first (as in ``clap-data ingest SOURCE``) so that the VD-VAE can
join the same verbs later (``train vd-vae``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from clap_data.cli.common import app, stderr, stdout, user_errors

train_app = typer.Typer(no_args_is_help=True, help="Train a tokenizer.")
app.add_typer(train_app, name="train")

StatsOption = Annotated[str, typer.Option(help="Normalisation statistics: openclap (the released table) or dataset (clap-data normstats).")]
HoldoutOption = Annotated[str, typer.Option(help="Held-out split: episodes (a hash of the episode index) or tail (the end of every episode).")]
HoldoutFractionOption = Annotated[float, typer.Option(min=0.0, max=0.95, help="Fraction held out of training.")]
DeviceOption = Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda, cuda:1 …")]


def _check_stats(stats: str) -> None:
    if stats not in ("openclap", "dataset"):
        raise typer.BadParameter(f"{stats!r} is not openclap or dataset", param_hint="--stats")


def _holdout(mode: str, fraction: float):  # noqa: ANN202  (imports stay lazy: --help must be fast)
    from clap_data.act_vae.chunk_pool import HOLDOUT_MODES, Holdout

    if mode not in HOLDOUT_MODES:
        raise typer.BadParameter(f"{mode!r} is not one of {', '.join(HOLDOUT_MODES)}", param_hint="--holdout")
    return Holdout(mode, fraction)


@train_app.command("act-vae", no_args_is_help=True)
@user_errors
def train_act_vae(
    data: Annotated[list[Path], typer.Option(help="Unified robot datasets (repeat the option); embodiments mix.")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder (safetensors + config.json); rerunning resumes it.")],
    preset: Annotated[str, typer.Option(help="small (CPU, minutes) or release (METHOD.md §3, ~95 M parameters).")] = "small",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps in total (a finished run asked for more continues).")] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="One-arm chunks per step.")] = 128,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate (default: the preset's; the codebook gets ×codebook_lr_scale).")] = None,
    num_queries: Annotated[int | None, typer.Option(min=1, help="Override Nq, the codes per arm.")] = None,
    codebook_size: Annotated[int | None, typer.Option(min=2, help="Override K, the codebook size.")] = None,
    stats: StatsOption = "openclap",
    holdout: HoldoutOption = "episodes",
    holdout_fraction: HoldoutFractionOption = 0.1,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batch sampling.")] = 0,
    save_every: Annotated[int, typer.Option(min=1, help="Save (and make resumable) every N steps.")] = 500,
    overwrite: Annotated[bool, typer.Option(help="Discard a checkpoint at --out and start afresh.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Train the Act-VAE on the datasets' action chunks (single-arm data contributes its active arm)."""
    from clap_data.act_vae.training import TrainOptions, preset_config, train_act_vae as run_training

    _check_stats(stats)
    config = preset_config(preset, num_queries=num_queries, codebook_size=codebook_size)
    options = TrainOptions(
        steps=steps, batch_size=batch_size, learning_rate=lr, stats=stats, holdout=_holdout(holdout, holdout_fraction),
        device=device, seed=seed, save_every=save_every, overwrite=overwrite,
    )
    columns = (
        TextColumn("[bold]train act-vae"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, disable=as_json, transient=False) as progress:
        task = progress.add_task("train", total=steps, metrics="loading chunks…")

        def show(metrics, total: int) -> None:  # noqa: ANN001
            progress.update(
                task, completed=metrics.step, total=total,
                metrics=f"loss {metrics.loss:.4f}  mse {metrics.recon_mse:.4f}  codes used {metrics.code_usage:.0%}  {metrics.steps_per_second:.1f} steps/s",
            )

        report = run_training(data, out, preset=preset, config=config, options=options, on_progress=show)
    result = {
        "ckpt": str(report.ckpt), "sha256": report.sha256, "steps": report.steps, "resumed_from": report.resumed_from,
        "already_complete": report.already_complete, "train_chunks": report.train_chunks, "device": report.device,
        "seconds": round(report.seconds, 2), "reseeded_codes": report.reseeded_codes,
        "last": report.last.__dict__ if report.last else None,
    }
    if as_json:
        print(json.dumps(result))
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    if report.already_complete:
        table.add_row("train", f"{report.ckpt} is already trained to {report.steps} steps; nothing to do (ask for more --steps to continue)")
    else:
        resumed = f", resumed from step {report.resumed_from}" if report.resumed_from else ""
        table.add_row("train", f"{report.steps} steps on {report.device} in {report.seconds:.1f} s{resumed}")
    table.add_row("chunks", f"{report.train_chunks:,} one-arm training chunks")
    if report.last:
        table.add_row("last", f"loss {report.last.loss:.5f}, reconstruction MSE {report.last.recon_mse:.5f}, codes used {report.last.code_usage:.0%}")
    table.add_row("checkpoint", f"{report.ckpt} (sha256 {report.sha256[:16]}…)")
    stdout.print(table)
