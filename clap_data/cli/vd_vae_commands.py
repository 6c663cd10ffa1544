"""VD-VAE commands: ``train vd-vae`` and ``eval vd-vae`` (on the verbs the Act-VAE commands made)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from clap_data.cli.act_vae_commands import (
    DeviceOption,
    HoldoutFractionOption,
    HoldoutOption,
    _holdout,
    eval_app,
    train_app,
)
from clap_data.cli.common import stderr, stdout, training_run_line, user_errors

_CAMERA_HELP = "Camera to pair: CAM for every dataset, or DATASET=CAM for one (repeat or comma-separate)."
_AUGMENT_HELP = ("Augment pixels before the backbone each batch (the paper's setup; spools each frame's pixels). "
                 "--no-augment: the online encoder sees the clean tokens.")


@train_app.command("vd-vae", no_args_is_help=True)
@user_errors
def train_vd_vae(
    act_vae: Annotated[Path, typer.Option(help="The Act-VAE checkpoint folder whose codebook is frozen in.")],
    backbone: Annotated[Path, typer.Option(help="The frozen backbone: a transformers folder or hub id.")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder (safetensors + config.json); rerunning resumes it.")],
    robot: Annotated[list[Path] | None, typer.Option(help="Unified robot datasets (repeat the option).")] = None,
    human: Annotated[list[Path] | None, typer.Option(help="Human video datasets (repeat the option).")] = None,
    camera: Annotated[list[str] | None, typer.Option(help=_CAMERA_HELP)] = None,
    preset: Annotated[str, typer.Option(help="small (CPU, minutes) or release (METHOD.md §4).")] = "small",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps in total (a finished run asked for more continues).")] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Frame pairs per step.")] = 32,
    lr: Annotated[float | None, typer.Option(min=0.0, help="AdamW learning rate (default: the preset's).")] = None,
    siglip_weight: Annotated[float | None, typer.Option(min=0.0, help="SigLIP weight (default 0.1; 0: ablation).")] = None,
    augment: Annotated[bool, typer.Option(help=_AUGMENT_HELP)] = True,
    holdout: HoldoutOption = "episodes",
    holdout_fraction: HoldoutFractionOption = 0.1,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batch sampling and augmentation.")] = 0,
    save_every: Annotated[int, typer.Option(min=1, help="Save (and make resumable) every N steps.")] = 500,
    overwrite: Annotated[bool, typer.Option(help="Discard a checkpoint at --out and start afresh.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Train the VD-VAE on frame pairs (o_t, o_t+32): robot pairs against their chunks' Act-VAE latents."""
    from clap_data.actions import HUMAN
    from clap_data.lerobot_v3.metadata import DatasetMetadata
    from clap_data.vd_vae.frame_pairs import parse_camera_option
    from clap_data.vd_vae.training import VDTrainOptions
    from clap_data.vd_vae.training import train_vd_vae as run_training

    datasets = list(robot or []) + list(human or [])
    if not datasets:
        raise typer.BadParameter("give at least one dataset", param_hint="--robot / --human")
    for dataset, option in [(d, "--robot") for d in robot or []] + [(d, "--human") for d in human or []]:
        if (DatasetMetadata.load(dataset).robot_type == HUMAN) != (option == "--human"):
            raise typer.BadParameter(f"{dataset} is {'not ' if option == '--human' else ''}human video", param_hint=option)
    cameras = parse_camera_option(camera or ["head"], datasets)
    options = VDTrainOptions(
        steps=steps, batch_size=batch_size, learning_rate=lr, siglip_weight=siglip_weight,
        holdout=_holdout(holdout, holdout_fraction), device=device, seed=seed, save_every=save_every,
        augment=augment, overwrite=overwrite,
    )
    columns = (TextColumn("[bold]train vd-vae"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, disable=as_json, transient=False) as progress:
        task = progress.add_task("train", total=steps, metrics="spooling frame pairs…")

        def show(m, total: int) -> None:  # noqa: ANN001
            progress.update(task, completed=m.step, total=total, metrics=(
                f"loss {m.loss:.4f}  mse {m.mse:.4f}  siglip {m.siglip:.4f}  l1 {m.l1:.4f}  "
                f"codes used {m.code_usage:.0%}  {m.steps_per_second:.1f} steps/s"))

        report = run_training(cameras, act_vae, backbone, out, preset=preset, options=options, on_progress=show)
    if as_json:
        print(json.dumps({**report.__dict__, "ckpt": str(report.ckpt), "last": report.last.__dict__ if report.last else None}))
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("train", training_run_line(report, str(report.device)))
    camera_of = {str(path.resolve()): name for path, name in cameras.items()}
    for dataset, count in report.train_pairs.items():
        table.add_row("pairs", f"{count:,} training frame pairs of {dataset} (camera {camera_of[dataset]})")
    if report.last:
        m = report.last
        table.add_row("last", f"loss {m.loss:.5f} (mse {m.mse:.5f}, q {m.q:.5f}, commit {m.commit:.5f}, siglip "
                              f"{m.siglip:.5f}, l1 {m.l1:.5f}), codes used {m.code_usage:.0%}, env codes {m.env_code_usage:.0%}")
    table.add_row("checkpoint", f"{report.ckpt} (sha256 {report.sha256[:16]}…)")
    stdout.print(table)


_EVAL_VD_HOLDOUT_HELP = ("episodes or tail (default: the VD-VAE's training split; a checkpoint that records none: "
                         "every pair).")


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _background_swaps(values: list[str], datasets: list[Path]) -> dict[Path, Path]:
    """``--background-swap DS=OTHER`` values → evaluated dataset → its other-background twin."""
    swaps = {}
    for value in values:
        name, equals, other = value.partition("=")
        if not equals or not name or not other:
            raise typer.BadParameter(f"{value!r} is not of the form DATASET=OTHER", param_hint="--background-swap")
        matches = [d for d in datasets if d.absolute() == Path(name).absolute() or d.name == name]
        if len(matches) != 1:
            raise typer.BadParameter(f"{name!r} names {'none' if not matches else 'several'} of the evaluated "
                                     "datasets", param_hint="--background-swap")
        swaps[matches[0]] = Path(other)
    return swaps


@eval_app.command("vd-vae", no_args_is_help=True)
@user_errors
def eval_vd_vae(
    datasets: Annotated[list[Path], typer.Argument(help="Unified robot datasets.")],
    ckpt: Annotated[Path, typer.Option(help="The VD-VAE checkpoint folder (clap-data train vd-vae).")],
    backbone: Annotated[Path, typer.Option(help="The frozen backbone it was trained on: a transformers folder or hub id.")],
    act_vae: Annotated[Path, typer.Option(help="The Act-VAE whose codebook the VD-VAE uses (its tokens are the reference).")],
    camera: Annotated[list[str] | None, typer.Option(help=_CAMERA_HELP)] = None,
    compare: Annotated[Path | None, typer.Option(help="A second VD-VAE checkpoint, scored on the same pairs.")] = None,
    holdout: Annotated[str | None, typer.Option(help=_EVAL_VD_HOLDOUT_HELP)] = None,
    holdout_fraction: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Default: the checkpoint's.")] = None,
    robustness: Annotated[bool, typer.Option(help="Also score each pair under brightness/contrast, grayscale and "
                                                  "noise (4× the backbone calls).")] = True,
    background_swap: Annotated[list[str] | None, typer.Option(
        help="DS=OTHER: OTHER holds DS's motions on another background (episodes matched by source episode id); "
             "its frames are scored as a background change.")] = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Pseudo tokens on held-out robot pairs: code match with the Act-VAE, a constant-code baseline, decoded MSE,
    and the share of codes unchanged under appearance changes (the paper's Table II)."""
    from clap_data.vd_vae.evaluation import evaluate_vd_vae, vd_vae_split
    from clap_data.vd_vae.frame_pairs import parse_camera_option

    trained = vd_vae_split(ckpt)
    if holdout is None and trained is None:
        if holdout_fraction is not None:
            raise typer.BadParameter(f"{ckpt} has no training split: name one with --holdout", param_hint="--holdout-fraction")
        split = None
    else:
        fraction = holdout_fraction if holdout_fraction is not None else (trained.fraction if trained else 0.1)
        split = _holdout(holdout or trained.mode, fraction)
    cameras = parse_camera_option(camera or ["head"], datasets)
    ckpts = [ckpt] + ([compare] if compare is not None else [])
    swaps = _background_swaps(background_swap or [], datasets)
    report = evaluate_vd_vae(ckpts, backbone, act_vae, cameras, split, device=device, robustness=robustness,
                             background_swaps=swaps)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    scope = "every pair (no split)" if split is None else f"held out ({split.mode}, {split.fraction:.0%})"
    table.add_row("pairs", f"{report.pairs:,} frame pairs (o_t, o_t+32), {scope}")
    for dataset, count in report.pairs_per_dataset.items():
        table.add_row("", f"{count:,} of {dataset} (camera {report.cameras[dataset]}, Act-VAE tokens "
                          f"{report.token_source[dataset]})")
    table.add_row("act-vae", f"{act_vae} (sha256 {report.act_vae_sha256[:16]}…, Nq {report.num_queries}, "
                             f"K {report.codebook_size})")
    stdout.print(table)
    scores = report.models
    columns = Table(show_edge=False, padding=(0, 1))
    columns.add_column("")
    for score in scores:
        columns.add_column(f"{Path(score.ckpt).name} ({score.sha256[:8]}…)", justify="right")
    columns.add_column("constant code", justify="right")
    columns.add_column("act-vae (own tokens)", justify="right")
    columns.add_row("exact match", *(_rate(s.exact_match) for s in scores), _rate(report.constant_match), "100.0%")
    slots = 2 * report.num_queries
    for slot in range(slots):
        arm, index = ("left", slot) if slot < report.num_queries else ("right", slot - report.num_queries)
        columns.add_row(f"  {arm} slot {index}", *(_rate(s.per_slot_match[slot]) for s in scores),
                        _rate(report.constant_per_slot[slot]), "")
    mse = (lambda v: "—" if v is None else f"{v:.2e}")  # noqa: E731
    columns.add_row("decoded MSE (mean)", *(mse(s.decoded_mse_mean) for s in scores), "",
                    mse(report.act_vae_decoded_mse_mean))
    for dof in report.act_vae_decoded_mse:
        columns.add_row(f"  {dof}", *(mse(s.decoded_mse[dof]) for s in scores), "", mse(report.act_vae_decoded_mse[dof]))
    if scores[0].robustness:
        columns.add_row("codes unchanged under", *("" for _ in scores), "", "")
        for change in scores[0].robustness:  # a constant code never changes: robustness is read beside agreement
            columns.add_row(f"  {change.replace('_', ' ')}", *(_rate(s.robustness[change]) for s in scores),
                            "100.0%", "")
    stdout.print(columns)
    for score in scores:
        verdict = {True: "beats", False: "does not beat", None: "cannot be compared with"}[score.beats_constant]
        stdout.print(f"{Path(score.ckpt).name} {verdict} the constant-code baseline "
                     f"({_rate(score.exact_match)} vs {_rate(report.constant_match)})", highlight=False)
