"""CLAP-RF commands: ``train rf`` and ``eval rf`` (on the verbs the Act-VAE commands made)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from clap_data.cli import train_options as opts
from clap_data.cli.act_vae_commands import DeviceOption, eval_app, train_app
from clap_data.cli.common import stderr, stdout, user_errors
from clap_data.cli.ntp_commands import ShardsOption, SplitOption, check_split, format_mse

_ALPHA_HELP = "Knowledge Matching weight α (default 0.005; 0: plain fine-tuning, no reference model)."
_MODES = {"km": "Knowledge Matching (α = {alpha:g}) against the frozen NTP model; backbone and head train",
          "plain": "plain fine-tuning (α = 0, no reference model); backbone and head train",
          "ki": "Knowledge Insulation: backbone frozen, without gradients; the head trains"}


def _vl_layers(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not comma-separated layer indices such as 0,4,8",
                                 param_hint="--vl-layers") from None


def _kl(value: float | None) -> str:
    return "—" if value is None else f"{value:.3e}"


def _progress_line(m: dict[str, Any]) -> str:
    return (f"step {m['step']}/{m['steps']}  loss {m['loss']:.6f}  flow loss {m['flow_loss']:.6f}  "
            f"KL {_kl(m['kl'])}  {m['samples_per_second']:.1f} samples/s  lr {m['learning_rate']:.2e}")


@train_app.command("rf", no_args_is_help=True)
@user_errors
def train_rf(
    init: Annotated[Path, typer.Option(help="The CLAP-NTP checkpoint to start from (clap-data train ntp).")],
    shards: Annotated[Path, typer.Option(help="The shard folder (clap-data export); its robot samples train.")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder (backbone + RF head + training state); rerunning resumes.")],
    km_alpha: Annotated[float | None, typer.Option(min=0.0, help=_ALPHA_HELP)] = None,
    ki: Annotated[bool, typer.Option("--ki", help="Knowledge Insulation: freeze the backbone (α = 0).")] = False,
    steps: opts.StepsOption = 1000,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate of the RF head.")] = 1e-4,
    backbone_lr: Annotated[float | None, typer.Option(min=0.0, help="The backbone's (default: --lr / 10).")] = None,
    warmup_steps: opts.WarmupOption = 100,
    batch_size: opts.BatchSizeOption = 8,
    num_workers: opts.NumWorkersOption = 1,
    address: opts.AddressOption = None,
    device: opts.TrainDeviceOption = "auto",
    vl_layers: Annotated[str | None, typer.Option(help="Hidden-state indices the head reads, e.g. 0,4,8 (0: embeddings; default: an early and a middle layer).")] = None,
    head_width: Annotated[int, typer.Option(min=2, help="The RF head's width.")] = 64,
    head_depth: Annotated[int, typer.Option(min=1, help="The RF head's blocks.")] = 4,
    head_heads: Annotated[int, typer.Option(min=1, help="The RF head's attention heads.")] = 4,
    flow_steps: Annotated[int, typer.Option(min=1, help="Euler steps when acting (recorded in the checkpoint).")] = 4,
    act_vae: Annotated[Path | None, typer.Option(help="The Act-VAE folder, if not where the NTP checkpoint recorded it (it must be the same one).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample order, the wrist drops, the head and the flow noise.")] = 0,
    wrist_drop: opts.WristDropOption = 0.5,
    save_every: opts.SaveEveryOption = 500,
    log_every: opts.LogEveryOption = 10,
    overwrite: opts.OverwriteOption = False,
    as_json: opts.JsonOption = False,
) -> None:
    """Train CLAP-RF (METHOD.md §6): a rectified-flow action head on a CLAP-NTP backbone, with Knowledge Matching
    (default), plain fine-tuning (--km-alpha 0) or Knowledge Insulation (--ki), on Ray Train (DDP), resumably."""
    from clap_data.training.knowledge_matching import DEFAULT_ALPHA
    from clap_data.training.ray_launcher import train_rf as run_training
    from clap_data.training.rf_train import RFTrainSettings

    alpha = km_alpha if km_alpha is not None else 0.0 if ki else DEFAULT_ALPHA
    settings = RFTrainSettings(
        init=str(init.absolute()), shards=str(shards.absolute()), out=str(out.absolute()), steps=steps,
        batch_size=batch_size, learning_rate=lr, backbone_learning_rate=backbone_lr, warmup_steps=warmup_steps,
        km_alpha=alpha, ki=ki, vl_layers=_vl_layers(vl_layers), head_width=head_width, head_depth=head_depth,
        head_heads=head_heads, flow_steps=flow_steps, wrist_drop=wrist_drop, seed=seed, save_every=save_every,
        log_every=log_every, act_vae=None if act_vae is None else str(act_vae.absolute()),
    )
    stderr.print(f"train rf ({settings.mode}): starting {num_workers} Ray Train worker(s) …", highlight=False)
    report = run_training(settings, num_workers=num_workers, address=address, device=device, overwrite=overwrite,
                          on_progress=lambda m: stderr.print(_progress_line(m), highlight=False))
    if as_json:
        opts.print_json(report, mode=settings.mode, km_alpha=alpha)
        return
    rows = [("mode", _MODES[settings.mode].format(alpha=alpha)),
            ("samples", f"{report.train_samples:,} robot training samples in {shards} (human video has no actions); "
                        f"{batch_size * num_workers} per step")]
    if report.last:
        rows.append(("last", _progress_line(report.last)))
    rows.append(("init", str(init)))
    opts.print_summary(report, rows, f"{report.ckpt} (load it with clap_data.training.RFPolicy; clap-data serve serves it)")


def _change(before: float | None, after: float | None, percent: bool) -> str:
    if before is None or after is None:
        return "—"
    shown = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    return f"{shown(before)} → {shown(after)}"


@eval_app.command("rf", no_args_is_help=True)
@user_errors
def eval_rf(
    ckpt: Annotated[list[Path], typer.Option(help="CLAP-RF checkpoint folders (repeat: KM, KI, plain side by side).")],
    shards: ShardsOption,
    split: SplitOption = "heldout",
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per model call (NTP scores and decoding).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the RF head's noise.")] = 0,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Action MSE per DOF of the RF chunks beside the starting NTP's decoded tokens on the same frames, and what the
    fine-tuned backbone forgot: NTP cross-entropy and action-token accuracy before and after, robot and human."""
    from clap_data.training.rf_eval import evaluate_rf

    check_split(split)
    report = evaluate_rf(ckpt, shards, split, batch_size=batch_size, device=device, seed=seed)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    names = [Path(c.ckpt).name for c in report.checkpoints]
    actions = Table(title=f"actions on {shards}/{split}: MSE per DOF in robot units", show_edge=False, padding=(0, 1))
    actions.add_column("")
    for name, c in zip(names, report.checkpoints, strict=True):
        actions.add_column(f"{name} ({c.mode})", justify="right")
        actions.add_column("its NTP", justify="right")
    actions.add_row("chunks", *(v for c in report.checkpoints
                                for v in (f"{c.rf.chunks:,}", f"{c.ntp.chunks:,} ({c.ntp.malformed} malformed)")))
    actions.add_row("mean", *(v for c in report.checkpoints
                              for v in (format_mse(c.rf.mse_mean), format_mse(c.ntp.mse_mean))))
    for dof in report.checkpoints[0].rf.mse_per_dof:
        actions.add_row(f"  {dof}", *(v for c in report.checkpoints for v in (
            format_mse(c.rf.mse_per_dof[dof]), format_mse(c.ntp.mse_per_dof[dof]))))
    stdout.print(actions)
    kept = Table(title="forgetting: the NTP answer scores of the backbone, before → after post-training",
                 show_edge=False, padding=(0, 1))
    kept.add_column("")
    for name, c in zip(names, report.checkpoints, strict=True):
        kept.add_column(f"{name} ({c.mode}, α {c.km_alpha:g})", justify="right")
    for label, key, percent in (("cross-entropy (nats/token)", "cross_entropy", False),
                                ("action-token accuracy", "action_token_accuracy", True)):
        for group in (None, "robot", "human"):
            cells = []
            for c in report.checkpoints:
                before = c.before if group is None else c.before["groups"].get(group, {})
                after = c.after if group is None else c.after["groups"].get(group, {})
                cells.append(_change(before.get(key), after.get(key), percent))
            kept.add_row(label if group is None else f"  {group}", *cells)
    stdout.print(kept)
