"""Act-VAE commands: ``train act-vae``, ``import act-vae``, ``tokenize act-vae``, ``detokenize``,
``eval act-vae``, ``sweep act-vae``. The verb comes first (as in ``clap-data ingest SOURCE``) so that the VD-VAE can
join the same verbs later (``train vd-vae``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from clap_data.cli.common import app, stderr, stdout, training_run_line, user_errors
from clap_data.errors import ClapDataError


def _verb(name: str, help_text: str) -> typer.Typer:
    """A verb whose sub-command names the model (``train act-vae``, ``train vd-vae``, ``train ntp``)."""
    group = typer.Typer(no_args_is_help=True, help=help_text)
    app.add_typer(group, name=name)
    return group


train_app = _verb("train", "Train a tokenizer (act-vae, vd-vae) or a policy (ntp, rf).")
import_app = _verb("import", "Bring released weights in as a checkpoint folder.")
tokenize_app = _verb("tokenize", "Add token columns to datasets.")
eval_app = _verb("eval", "Evaluate a tokenizer or a policy on held-out data.")
sweep_app = _verb("sweep", "Rate–distortion sweeps (the paper's Table V).")
predict_app = _verb("predict", "Act with a policy on one exported sample and compare with its ground truth.")

StatsOption = Annotated[str, typer.Option(help="Normalisation statistics: openclap (the released table) or dataset (clap-data normstats).")]
HoldoutOption = Annotated[str, typer.Option(help="Held-out split: episodes (a hash of each episode's source dataset and id) or tail (the end of every episode).")]
HoldoutFractionOption = Annotated[float, typer.Option(min=0.0, max=0.95, help="Fraction held out of training.")]
DeviceOption = Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda, cuda:1 …")]
WaitOption = Annotated[bool, typer.Option(help="If another command holds the dataset, wait for it instead of refusing.")]
MaxFramesOption = Annotated[int, typer.Option(min=1000, help="Frames held in memory (120 bytes each); beyond it a fixed random subset of episodes is used.")]


def _check_stats(stats: str) -> None:
    if stats not in ("openclap", "dataset"):
        raise typer.BadParameter(f"{stats!r} is not openclap or dataset", param_hint="--stats")


def _holdout(mode: str, fraction: float):  # noqa: ANN202  (imports stay lazy: --help must be fast)
    from clap_data.splits import HOLDOUT_MODES, Holdout

    if mode not in HOLDOUT_MODES:
        raise typer.BadParameter(f"{mode!r} is not one of {', '.join(HOLDOUT_MODES)}", param_hint="--holdout")
    return Holdout(mode, fraction)


_PRESET_HELP = "small (CPU, minutes; the default) or release (METHOD.md §3, ~72 M parameters); --init: its own."
_INIT_HELP = "Fine-tune from this checkpoint folder (imported or trained): its model and its weights are the start."


@train_app.command("act-vae", no_args_is_help=True)
@user_errors
def train_act_vae(
    data: Annotated[list[Path], typer.Option(help="Unified robot datasets (repeat the option); embodiments mix.")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder (safetensors + config.json); rerunning resumes it.")],
    preset: Annotated[str | None, typer.Option(help=_PRESET_HELP)] = None,
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
    max_frames: MaxFramesOption = 20_000_000,
    init: Annotated[Path | None, typer.Option(help=_INIT_HELP)] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard a checkpoint at --out and start afresh.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Train the Act-VAE on the datasets' action chunks (single-arm data contributes its active arm)."""
    from clap_data.act_vae.fine_tuning import init_config
    from clap_data.act_vae.training import TrainOptions, preset_config
    from clap_data.act_vae.training import train_act_vae as run_training

    _check_stats(stats)
    if init is None:
        preset = preset or "small"
        config = preset_config(preset, num_queries=num_queries, codebook_size=codebook_size)
    else:
        config, preset = init_config(init, preset, num_queries=num_queries, codebook_size=codebook_size)
    options = TrainOptions(
        steps=steps, batch_size=batch_size, learning_rate=lr, stats=stats, holdout=_holdout(holdout, holdout_fraction),
        device=device, seed=seed, save_every=save_every, overwrite=overwrite, max_frames=max_frames, init=init,
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
        "last": report.last.__dict__ if report.last else None, "notice": report.notice,
    }
    if as_json:
        print(json.dumps(result))
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("train", training_run_line(report, str(report.device)))
    if init is not None:
        table.add_row("init", f"fine-tuned from {init}")
    table.add_row("chunks", f"{report.train_chunks:,} one-arm training chunks")
    if report.notice:
        table.add_row("note", report.notice)
    if report.last:
        table.add_row("last", f"loss {report.last.loss:.5f}, reconstruction MSE {report.last.recon_mse:.5f}, codes used {report.last.code_usage:.0%}")
    table.add_row("checkpoint", f"{report.ckpt} (sha256 {report.sha256[:16]}…)")
    stdout.print(table)


_LOADERS = {
    "safetensors": "tensors only",
    "weights-only": "read with torch.load(weights_only=True)",
    "restricted-unpickler": "read without running any of its code (restricted unpickler)",
    "trusted-pickle": "unpickled in full (--trust-pickle): its code ran",
}
_RELEASE_FILE_HELP = "The released file: a Lightning .ckpt, a torch.save-d state dict or a .safetensors file."
_TRUST_PICKLE_HELP = (
    "If the safe reader refuses the file, unpickle it in full: that EXECUTES the file's code (for a file you trust)."
)


@import_app.command("act-vae", no_args_is_help=True)
@user_errors
def import_act_vae(
    release_file: Annotated[Path, typer.Argument(metavar="CKPT", help=_RELEASE_FILE_HELP)],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write (for tokenize, detokenize, eval, --init).")],
    release: Annotated[str, typer.Option("--from", help="Whose release: openclap (clap-s1-l32 and its variants).")],
    trust_pickle: Annotated[bool, typer.Option(help=_TRUST_PICKLE_HELP)] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the checkpoint folder at --out (no other folder).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print import.json, the folder and the config.")] = False,
) -> None:
    """Turn released Act-VAE weights into a clap-data checkpoint folder, without running the file's code."""
    from clap_data.act_vae.importing import RELEASES
    from clap_data.act_vae.importing import import_act_vae as run_import

    if release not in RELEASES:
        raise typer.BadParameter(f"{release!r} is not one of {', '.join(RELEASES)}", param_hint="--from")
    report = run_import(release_file, out, release=release, trust_pickle=trust_pickle, overwrite=overwrite)
    if as_json:
        print(json.dumps({"out": str(report.out), **report.to_dict(), "config": report.config.to_dict()}))
        return
    c, read = report.config, report.source
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("import", f"{read['path']} ({read['format']}, {_LOADERS[read['loader']]})")
    layers = f"{c.encoder_layers} + {c.decoder_layers} layers"
    table.add_row("model", f"{c.architecture} network: Nq {c.num_queries} per arm, K {c.codebook_size}, code dim "
                           f"{c.code_dim}, {layers}, {report.parameters:,} parameters")
    table.add_row("checkpoint", f"{report.out} (sha256 {report.sha256[:16]}…)")
    table.add_row("statistics", "openclap, the release's q01/q99 table: tokenize act-vae and eval act-vae use it "
                                "by default (--stats openclap)")
    for notice in report.notices:
        table.add_row("note", notice)
    table.add_row("next", f"clap-data tokenize act-vae DATASET --ckpt {report.out} --stats openclap")
    stdout.print(table, highlight=False)


@tokenize_app.command("act-vae", no_args_is_help=True)
@user_errors
def tokenize_act_vae(
    datasets: Annotated[list[Path], typer.Argument(help="Unified robot datasets to tokenize in place.")],
    ckpt: Annotated[Path, typer.Option(help="An Act-VAE checkpoint folder (clap-data train act-vae).")],
    stats: StatsOption = "openclap",
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Chunks per model call.")] = 4096,
    workers: Annotated[int | None, typer.Option(min=1, help="CPU workers (default: all CPUs).")] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting a local Ray.")] = None,
    wait: WaitOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Add action_tokens (int16 [2·Nq] per frame: left arm's codes, then right's) and action_tokens_padded."""
    from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset
    from clap_data.progress import ConsoleReporter, SilentReporter

    _check_stats(stats)
    request = TokenizeRequest(ckpt=ckpt, stats=stats, device=device, batch_size=batch_size, workers=workers, address=address, wait=wait)
    reports = []
    for dataset in datasets:
        report = tokenize_dataset(dataset, request, SilentReporter() if as_json else ConsoleReporter(stderr, "row groups"))
        reports.append(report)
        if as_json:
            continue
        sha = report.identity["checkpoint_sha256"][:16]
        if report.unchanged:
            stdout.print(f"{dataset}: already tokenized with checkpoint {sha}… and {report.identity['stats_id']}; nothing changed")
            continue
        what = f"replaced tokens of checkpoint {report.replaced['checkpoint_sha256'][:16]}…" if report.replaced else "added action_tokens"
        resumed = f" ({report.resumed_files} file(s) resumed from an interrupted run)" if report.resumed_files else ""
        stdout.print(
            f"{dataset}: {what}: {report.frames:,} frames ({report.flagged:,} padded chunks) in {report.seconds:.1f} s{resumed}; "
            f"checkpoint {sha}…, Nq {report.identity['num_queries']}, K {report.identity['codebook_size']}, statistics {report.identity['stats_id']}"
        )
    if as_json:
        print(json.dumps([r.__dict__ for r in reports]))


@app.command("detokenize", no_args_is_help=True)
@user_errors
def detokenize(
    dataset: Annotated[Path, typer.Argument(help="A dataset tokenized with clap-data tokenize act-vae (or pseudolabel vd-vae).")],
    ckpt: Annotated[Path, typer.Option(help="The Act-VAE checkpoint the tokens came from (for pseudo_tokens: whose codebook the VD-VAE used).")],
    episode: Annotated[int, typer.Option(min=0, help="Episode index.")],
    frame: Annotated[int, typer.Option(min=0, help="Frame whose chunk to decode (its state anchors the chunk).")],
    tokens: Annotated[str | None, typer.Option(help="Decode these instead of the stored ones: <ACT_i> text (right arm first) or comma-separated codes (left arm's first).")] = None,
    column: Annotated[str, typer.Option(help="The stored tokens to decode: action_tokens or pseudo_tokens (clap-data pseudolabel vd-vae).")] = "action_tokens",
    as_embodiment: Annotated[str | None, typer.Option(help="Decode with this embodiment's OpenCLAP statistics (e.g. S1-stationary); required for human datasets, which are decoded relative to zero state.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: tokens, text, padded, state, action [32][14], column, stats_id, note.")] = False,
) -> None:
    """Decode action tokens to the absolute executable chunk (denormalise, p = p0 + Δp, R = ΔR·R0)."""
    import numpy as np

    from clap_data.act_vae.checkpoint import load_act_vae
    from clap_data.act_vae.decoding import DECODABLE_COLUMNS, decode_dataset_frame, parse_tokens_option
    from clap_data.locking import dataset_lock

    if column not in DECODABLE_COLUMNS:
        raise typer.BadParameter(f"{column!r} is not one of {', '.join(DECODABLE_COLUMNS)}", param_hint="--column")
    model, sha256 = load_act_vae(ckpt)  # --tokens is checked against the checkpoint's Nq and K
    config = model.config
    try:
        codes = None if tokens is None else parse_tokens_option(tokens, config.num_queries, config.codebook_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tokens") from None
    with dataset_lock(dataset, exclusive=False, purpose="detokenize"):
        decoded = decode_dataset_frame(dataset, model, sha256, episode, frame, codes, column=column, as_embodiment=as_embodiment)
    if as_json:
        print(json.dumps(decoded.__dict__))
        return
    action = np.asarray(decoded.action)
    if decoded.note:
        stdout.print(decoded.note, highlight=False)
    stdout.print(f"episode {episode}, frame {frame}, {decoded.column}, padded: {decoded.padded}, statistics {decoded.stats_id}", highlight=False)
    stdout.print(f"tokens    {decoded.tokens}")
    stdout.print(f"text      {decoded.text}", highlight=False)
    stdout.print(f"action[0] {np.array2string(action[0], precision=4, max_line_width=160)}")
    stdout.print(f"action[31]{np.array2string(action[-1], precision=4, max_line_width=160)}")


def _eval_split(ckpt: Path, stats: str | None, holdout: str | None, fraction: float | None):  # noqa: ANN202
    """The checkpoint's own training split and statistics unless overridden: scoring on other
    "held-out" chunks would silently include training data. Weights without a training split (an import:
    no training.json) score every chunk (split None) unless --holdout asks for one."""
    from clap_data.act_vae.checkpoint import read_training_meta

    meta = read_training_meta(ckpt)
    run = meta.get("run", {})
    stats = stats or run.get("stats", "openclap")
    _check_stats(stats)
    if not meta and holdout is None:
        if fraction is not None:
            hint = "--holdout-fraction"
            raise typer.BadParameter(f"{ckpt} has no training split: name one with --holdout", param_hint=hint)
        return stats, None
    trained = run.get("holdout", {"mode": "episodes", "fraction": 0.1})
    if holdout is None and trained["mode"] == "episodes" and "key" not in trained:
        raise ClapDataError(
            f"{ckpt} was trained with the episode-index split of an older clap-data, which this version no longer "
            "draws (episodes are now split by provenance): its held-out episodes cannot be told apart, so name a "
            "split with --holdout (tail, or episodes: the provenance split, which may include its training data)"
        )
    return stats, _holdout(holdout or trained["mode"], trained["fraction"] if fraction is None else fraction)


_EVAL_HOLDOUT_HELP = "episodes or tail (default: the checkpoint's training split; an import has none: every chunk)."


@eval_app.command("act-vae", no_args_is_help=True)
@user_errors
def eval_act_vae(
    datasets: Annotated[list[Path], typer.Argument(help="Unified robot datasets.")],
    ckpt: Annotated[Path, typer.Option(help="An Act-VAE checkpoint folder.")],
    stats: Annotated[str | None, typer.Option(help="openclap or dataset (default: what the checkpoint was trained with).")] = None,
    holdout: Annotated[str | None, typer.Option(help=_EVAL_HOLDOUT_HELP)] = None,
    holdout_fraction: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Default: the checkpoint's.")] = None,
    device: DeviceOption = "auto",
    max_frames: MaxFramesOption = 20_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Reconstruction on held-out chunks: per-DOF MSE in robot units, normalised MSE, PSNR, code usage, perplexity, dead codes."""
    from clap_data.act_vae.evaluation import evaluate_act_vae

    stats, split = _eval_split(ckpt, stats, holdout, holdout_fraction)
    report = evaluate_act_vae(ckpt, datasets, stats=stats, holdout=split, device=device, max_frames=max_frames)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("checkpoint", f"{ckpt} (sha256 {report.sha256[:16]}…, Nq {report.num_queries}, K {report.codebook_size})")
    if split is None:
        table.add_row("scored", f"{report.chunks:,} one-arm chunks, statistics {stats}")
    else:
        scope = f"({split.mode}, {split.fraction:.0%})"
        table.add_row("held out", f"{report.chunks:,} one-arm chunks {scope}, statistics {stats}")
    table.add_row("normalised", f"MSE {report.normalised_mse:.6f}, PSNR {report.psnr_db:.2f} dB")
    table.add_row("codes", f"{report.code_usage:.0%} used, perplexity {report.perplexity:.1f}, {report.dead_codes} dead")
    if report.notice:
        table.add_row("note", report.notice)
    stdout.print(table)
    dofs = Table(title="per-DOF MSE (metres, radians; grippers as stored)", title_justify="left", show_edge=False, padding=(0, 1))
    for column in ("arm", "x", "y", "z", "roll", "pitch", "yaw", "gripper"):
        dofs.add_column(column, justify="right")
    for arm in ("left", "right"):
        values = [report.per_dof_mse[f"{arm}_{dof}"] for dof in ("x", "y", "z", "roll", "pitch", "yaw", "gripper")]
        dofs.add_row(arm, *("—" if v is None else f"{v:.1e}" for v in values))
    stdout.print(dofs)


def _int_list(value: str, option: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=option) from None


@sweep_app.command("act-vae", no_args_is_help=True)
@user_errors
def sweep_act_vae(
    datasets: Annotated[list[Path], typer.Argument(help="Unified robot datasets.")],
    out: Annotated[Path, typer.Option(help="Folder for one checkpoint per point and sweep.{csv,json,md,png}; rerunning resumes.")],
    nq: Annotated[str, typer.Option(help="Comma-separated Nq (codes per arm).")] = "4,8,16",
    k: Annotated[str, typer.Option(help="Comma-separated codebook sizes K.")] = "128,256,512",
    steps: Annotated[int, typer.Option(min=1, help="Training steps per point.")] = 2000,
    preset: Annotated[str, typer.Option(help="Model size of every point: small or release.")] = "small",
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch (one-arm chunks).")] = 128,
    stats: StatsOption = "openclap",
    holdout: HoldoutOption = "episodes",
    holdout_fraction: HoldoutFractionOption = 0.1,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed of every point.")] = 0,
) -> None:
    """Train and evaluate the Act-VAE over a (Nq, K) grid: MSE, PSNR and rate r per point, as a table and a plot."""
    from clap_data.act_vae.sweep import run_sweep, sweep_markdown

    _check_stats(stats)
    with Progress(
        TextColumn("[bold]{task.fields[point]}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(), console=stderr,
    ) as progress:
        task = progress.add_task("sweep", total=steps, point="", metrics="")

        def show(point, metrics, total: int) -> None:  # noqa: ANN001
            progress.update(task, completed=metrics.step, total=total, point=f"Nq {point.num_queries}, K {point.codebook_size}",
                            metrics=f"mse {metrics.recon_mse:.4f}  codes used {metrics.code_usage:.0%}")

        rows = run_sweep(
            datasets, out, _int_list(nq, "--nq"), _int_list(k, "--k"), steps, preset=preset, stats=stats,
            holdout=_holdout(holdout, holdout_fraction), batch_size=batch_size, device=device, seed=seed, on_progress=show,
        )
    stdout.print(sweep_markdown(rows), highlight=False)
    stdout.print(f"table and plot: {out}/sweep.md, sweep.csv, sweep.json, sweep.png")
