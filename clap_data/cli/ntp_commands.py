"""CLAP-NTP commands: ``train ntp``, ``eval ntp`` and ``predict ntp`` (on the verbs the Act-VAE commands made)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from clap_data.cli.act_vae_commands import DeviceOption, eval_app, predict_app, train_app
from clap_data.cli.common import stderr, stdout, user_errors
from clap_data.cli.train_options import (
    AddressOption,
    BatchSizeOption,
    JsonOption,
    LogEveryOption,
    NumWorkersOption,
    OverwriteOption,
    SaveEveryOption,
    StepsOption,
    TrainDeviceOption,
    WarmupOption,
    WristDropOption,
    print_json,
    print_summary,
)

_MODEL_HELP = "The vision-language model to start from: a transformers folder or hub id (Qwen2.5-VL, Qwen3-VL, …)."


ShardsOption = Annotated[Path, typer.Option(help="The shard folder (clap-data export).")]
SplitOption = Annotated[str, typer.Option(help="heldout or train.")]
ActVAEOverrideOption = Annotated[Path | None, typer.Option(help="The Act-VAE folder, if not the recorded one.")]


def _model_source(model: str) -> str:
    """A local folder as an absolute path (the run's identity must not depend on the working directory)."""
    return str(Path(model).absolute()) if Path(model).exists() else model


def _progress_line(m: dict[str, Any]) -> str:
    return (f"step {m['step']}/{m['steps']}  loss {m['loss']:.6f}  action-token accuracy {m['token_accuracy']:.1%}  "
            f"{m['samples_per_second']:.1f} samples/s  lr {m['learning_rate']:.2e}")


@train_app.command("ntp", no_args_is_help=True)
@user_errors
def train_ntp(
    shards: ShardsOption,
    model: Annotated[str, typer.Option(help=_MODEL_HELP)],
    out: Annotated[Path, typer.Option(help="Checkpoint folder (save_pretrained + training state); rerunning resumes.")],
    steps: StepsOption = 1000,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW peak learning rate (the paper: 5e-5).")] = 5e-5,
    warmup_steps: WarmupOption = 100,
    batch_size: BatchSizeOption = 8,
    num_workers: NumWorkersOption = 1,
    address: AddressOption = None,
    device: TrainDeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the sample order, the wrist drops and the new embeddings.")] = 0,
    wrist_drop: WristDropOption = 0.5,
    save_every: SaveEveryOption = 500,
    log_every: LogEveryOption = 10,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train CLAP-NTP (METHOD.md §5) on exported shards with Ray Train (DDP), resumably."""
    from clap_data.training.ntp_train import NTPTrainSettings
    from clap_data.training.ray_launcher import train_ntp as run_training

    settings = NTPTrainSettings(
        shards=str(shards.absolute()), model=_model_source(model), out=str(out.absolute()), steps=steps,
        batch_size=batch_size, learning_rate=lr, warmup_steps=warmup_steps, wrist_drop=wrist_drop, seed=seed,
        save_every=save_every, log_every=log_every,
    )
    stderr.print(f"train ntp: starting {num_workers} Ray Train worker(s) …", highlight=False)
    report = run_training(settings, num_workers=num_workers, address=address, device=device, overwrite=overwrite,
                          on_progress=lambda m: stderr.print(_progress_line(m), highlight=False))
    if as_json:
        print_json(report)
        return
    rows = [("samples", f"{report.train_samples:,} training samples in {shards}; {batch_size * num_workers} per step")]
    if report.last:
        rows.append(("last", _progress_line(report.last)))
    print_summary(report, rows, f"{report.ckpt} (save_pretrained: load it with clap_data.training.NTPPolicy)")


def check_split(split: str) -> None:
    from clap_data.schemas.shards_v1 import HELDOUT_SPLIT, TRAIN_SPLIT

    if split not in (HELDOUT_SPLIT, TRAIN_SPLIT):
        raise typer.BadParameter(f"{split!r} is not {HELDOUT_SPLIT} or {TRAIN_SPLIT}", param_hint="--split")


def _rate(value: float) -> str:
    return f"{value:.1%}"


def format_mse(value: float | None) -> str:
    return "—" if value is None else f"{value:.3e}"


@eval_app.command("ntp", no_args_is_help=True)
@user_errors
def eval_ntp(
    ckpt: Annotated[Path, typer.Option(help="The CLAP-NTP checkpoint folder (clap-data train ntp).")],
    shards: ShardsOption,
    split: SplitOption = "heldout",
    act_vae: ActVAEOverrideOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts generated together.")] = 8,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report (with every prediction) as JSON.")] = False,
) -> None:
    """Token accuracy per slot and action MSE per DOF of greedy answers, against the most-frequent-token baseline."""
    from clap_data.training.ntp_eval import evaluate_ntp

    check_split(split)
    started = time.perf_counter()
    report = evaluate_ntp(ckpt, shards, split, batch_size=batch_size, device=device, act_vae=act_vae)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("samples", f"{report.samples:,} of {shards}/{split} ({report.robot_samples:,} robot), "
                            f"{report.malformed:,} malformed answers, {time.perf_counter() - started:.1f} s")
    head.add_row("baseline", "the most frequent training token of each slot: "
                             f"{', '.join(map(str, report.baseline_tokens))}")
    stdout.print(head)
    scores = Table(show_edge=False, padding=(0, 1))
    for column in ("", "policy", "baseline"):
        scores.add_column(column, justify="right" if column else "left")
    scores.add_row("token accuracy", _rate(report.token_accuracy), _rate(report.baseline_token_accuracy))
    for slot, mine, base in zip(report.slots, report.per_slot_accuracy, report.baseline_per_slot_accuracy, strict=True):
        scores.add_row(f"  {slot}", _rate(mine), _rate(base))
    scores.add_row(f"action MSE ({report.scored_chunks:,} chunks)", format_mse(report.mse_mean),
                   format_mse(report.baseline_mse_mean))
    for dof, mine in report.mse_per_dof.items():
        scores.add_row(f"  {dof}", format_mse(mine), format_mse(report.baseline_mse_per_dof[dof]))
    stdout.print(scores)
    better = report.mse_mean is not None and report.baseline_mse_mean is not None \
        and report.mse_mean < report.baseline_mse_mean and report.token_accuracy > report.baseline_token_accuracy
    stdout.print(f"the policy {'beats' if better else 'does not beat'} the most-frequent-token baseline "
                 "(token accuracy and action MSE)", highlight=False)


def _chunk_rows(actions: Any, steps: tuple[int, ...]) -> list[str]:
    import numpy as np

    chunk = np.asarray(actions)
    return [f"{f'[{t}]':>5} {np.array2string(chunk[t], precision=4, max_line_width=200)}" for t in steps]


@predict_app.command("ntp", no_args_is_help=True)
@user_errors
def predict_ntp(
    ckpt: Annotated[Path, typer.Option(help="The CLAP-NTP checkpoint folder (clap-data train ntp).")],
    shards: Annotated[Path, typer.Option(help="The shard folder (clap-data export) whose sample to act on.")],
    split: SplitOption = "heldout",
    sample: Annotated[int, typer.Option(min=0, help="The sample's position in the split (file order).")] = 0,
    sample_id: Annotated[str | None, typer.Option(help="Or the sample's id: DATASET_ID/EPISODE_ID/FRAME.")] = None,
    act_vae: ActVAEOverrideOption = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the prediction and the truth as JSON.")] = False,
) -> None:
    """NTPPolicy.predict on one robot sample (its images, instruction, state): the absolute 32×14 chunk, beside
    the sample's own chunk, tokens and subtask."""
    import dataclasses

    from clap_data.training.ntp_data import ShardSet
    from clap_data.training.ntp_policy import NTPPolicy
    from clap_data.training.ntp_predict import predict_shard_sample

    check_split(split)
    policy = NTPPolicy.from_pretrained(ckpt, act_vae=act_vae, device=device)
    p = predict_shard_sample(policy, ShardSet.open(shards), split, sample, sample_id)
    if as_json:
        print(json.dumps(dataclasses.asdict(p)))
        return
    hits = sum(a == b for a, b in zip(p.tokens, p.truth_tokens, strict=True))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("sample", f"{p.sample_id} ({p.embodiment}; cameras {', '.join(p.cameras)})")
    table.add_row("instruction", p.instruction)
    table.add_row("subtask", f"{p.subtask!r} (truth {p.truth_subtask!r})")
    table.add_row("tokens", f"{p.tokens} ({hits}/{len(p.tokens)} equal to the sample's {p.truth_tokens})")
    table.add_row("chunk", "\n".join(_chunk_rows(p.actions, (0, 15, 31))))
    table.add_row("truth", "\n".join(_chunk_rows(p.truth_actions, (0, 15, 31))))
    table.add_row("mse", f"{format_mse(p.mse)} over the active arms' DOFs (robot units; the whole [32, 14] chunk)")
    stdout.print(table, highlight=False)
