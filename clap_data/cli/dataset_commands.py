"""Commands on unified datasets: ``ingest``, ``info``, ``normstats``, ``chunk``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from clap_data.cli.common import app, split_list, stderr, stdout, user_errors
from clap_data.conversion import IMAGE_STATS_KEYFRAMES, VideoOptions
from clap_data.errors import ExitCode


def _task_ids(value: str | None) -> list[int] | None:
    items = split_list(value)
    if items is None:
        return None
    try:
        return [int(item) for item in items]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of task ids", param_hint="--tasks") from None


def _video_options(full_decode: bool, resize: str | None, vcodec: str | None, gop: int, crf: int,
                   stats_keyframes: int) -> VideoOptions:
    from clap_data.video import parse_size

    try:
        size = parse_size(resize) if resize else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--resize") from None
    if vcodec is not None and vcodec not in ("h264", "hevc", "av1"):
        raise typer.BadParameter(f"{vcodec!r} is not one of h264, hevc, av1", param_hint="--vcodec")
    if gop < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--gop")
    return VideoOptions(full_decode=full_decode, resize=size, codec=vcodec, gop=gop, crf=crf,
                        stats_keyframes=stats_keyframes)


def _where_the_time_went(steps: dict[str, float], phases: dict[str, float], assembly: float) -> str:
    """``listing 0.1 s · converting 30.2 s (workers: read 8 %, probe 3 %, decode 80 %, …) · …``: the steps' wall time, how
    the workers' conversion time splits among its phases, and the driver's time appending episodes (mostly while
    the workers convert)."""
    busy = sum(phases.values())
    split = ", ".join(f"{name} {seconds / busy:.0%}" for name, seconds in phases.items()) if busy > 0 else ""
    line = " · ".join(f"{step} {seconds:.1f} s" + (f" (workers: {split})" if step == "converting" and split else "")
                      for step, seconds in steps.items())
    return f"{line} · the driver appended episodes for {assembly:.1f} s of it"


def _print_ingest_summary(source_name: str, report: Any) -> None:
    status = report.exit_code
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    title = "already complete (an interrupted run was finished)" if report.already_complete else f"{source_name} → {report.out}"
    table.add_row("ingest", title)
    table.add_row(
        "episodes",
        f"{report.written} written, {len(report.quarantine)} quarantined "
        f"({report.listed} listed, {report.resumed} resumed from an earlier run)",
    )
    rate = report.frames / report.seconds if report.seconds > 0 else 0.0
    table.add_row("frames", f"{report.frames:,} in {report.seconds:.1f} s ({rate:,.0f} frames/s)")
    table.add_row("cameras", ", ".join(report.cameras) or "none")
    if report.step_seconds:
        table.add_row("time", _where_the_time_went(report.step_seconds, report.episode_phase_seconds,
                                                   report.assembly_seconds))
    for notice in report.notices:
        table.add_row("note", notice)
    if report.error_log:
        table.add_row("error logs", f"{report.error_log} (the traceback of each internal_error episode)")
    stdout.print(table)
    if report.quarantine:
        quarantine = Table(title="quarantined episodes", title_justify="left", show_edge=False)
        for column in ("episode", "category", "reason"):
            quarantine.add_column(column, overflow="fold")
        for row in report.quarantine[:20]:
            quarantine.add_row(row["source_episode"], row["category"], row["reason"])
        stdout.print(quarantine)
        if len(report.quarantine) > 20:
            stdout.print(f"… and {len(report.quarantine) - 20} more: clap-data info {report.out}")
    meaning = {
        ExitCode.OK: "every episode was written",
        ExitCode.QUARANTINED: "the dataset was written; some episodes were quarantined",
        ExitCode.FAILED: "no episode could be ingested, nothing was written",
    }[status]
    stdout.print(f"exit status {int(status)}: {meaning}")


@app.command("ingest", no_args_is_help=True)
@user_errors
def ingest(
    source_name: Annotated[str, typer.Argument(metavar="SOURCE", help="Which source format --src holds: astribot, agibot, droid, ego4d, lerobot.")],
    src: Annotated[
        str,
        typer.Option(help="The source dataset folder, in the layout the source publishes; lerobot and droid also take "
                          "hf://datasets/ORG/NAME[@REV][/FOLDER] or any fsspec URL (read by byte range, no download)."),
    ],
    out: Annotated[Path, typer.Option(help="Where the LeRobot v3.0 dataset is written.")],
    cameras: Annotated[
        str | None,
        typer.Option(help="astribot, agibot, droid, lerobot: comma-separated unified cameras (head, wrist_left, wrist_right). Default: all the source has."),
    ] = None,
    tasks: Annotated[str | None, typer.Option(help="agibot: comma-separated task ids to ingest (default: all).")] = None,
    force_known_bad: Annotated[bool, typer.Option(help="agibot: also ingest the release's known-bad tasks.")] = False,
    gripper_open_mm: Annotated[float | None, typer.Option(min=1, help="agibot: fully-open gripper width in mm (default 120).")] = None,
    min_frames: Annotated[int | None, typer.Option(min=1, help="ego4d: shortest action window kept (default 33 = the 32-frame gap + 1).")] = None,
    mapping: Annotated[Path | None, typer.Option(help="lerobot: the mapping file (docs/lerobot_mapping.md).")] = None,
    fps: Annotated[
        int | None,
        typer.Option(
            min=1, help="astribot, droid, lerobot: resample every episode onto this frame rate (nearest frame in time)."
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Parallel episode conversions (default: all CPUs).")] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting a local Ray.")] = None,
    full_decode: Annotated[bool, typer.Option(help="Decode every video frame to validate (default: a fast check).")] = False,
    resize: Annotated[str | None, typer.Option(help="Re-encode videos to HEIGHTxWIDTH, e.g. 224x224.")] = None,
    vcodec: Annotated[str | None, typer.Option(help="Re-encode videos with h264, hevc or av1 (default: stream copy).")] = None,
    gop: Annotated[int, typer.Option(help="Keyframe interval when re-encoding.")] = 2,
    crf: Annotated[int, typer.Option(help="Quality when re-encoding (lower is better).")] = 30,
    image_stats_keyframes: Annotated[
        int,
        typer.Option(min=1, help="Keyframes decoded per camera and episode for the image statistics: decoding them is "
                                 "most of an ingest's time; fewer is faster and estimates less closely (README)."),
    ] = IMAGE_STATS_KEYFRAMES,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished dataset at --out, or discard an interrupted run with other options.")] = False,
    wait: Annotated[bool, typer.Option(help="If another command holds --out, wait for it instead of refusing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Convert a source dataset into a unified LeRobot v3.0 dataset."""
    from clap_data.pipelines.ingest import IngestRequest
    from clap_data.pipelines.ingest import ingest as run_ingest
    from clap_data.progress import ConsoleReporter, SilentReporter
    from clap_data.sources.registry import SOURCE_NAMES, OptionError, SourceOptions, build_source

    if source_name not in SOURCE_NAMES:
        raise typer.BadParameter(f"{source_name!r} is not one of {', '.join(SOURCE_NAMES)}", param_hint="SOURCE")
    video = _video_options(full_decode, resize, vcodec, gop, crf, image_stats_keyframes)
    try:
        options = SourceOptions(
            cameras=split_list(cameras), min_frames=min_frames, tasks=_task_ids(tasks),
            force_known_bad=force_known_bad, gripper_open_mm=gripper_open_mm, mapping=mapping, fps=fps,
        )
        source = build_source(source_name, src, options)
    except OptionError as exc:
        raise typer.BadParameter(str(exc)) from None
    request = IngestRequest(out=out, overwrite=overwrite, workers=workers, address=address, video=video, wait=wait)
    report = run_ingest(source, request, SilentReporter() if as_json else ConsoleReporter(stderr))
    if as_json:
        stdout.print_json(json.dumps({**asdict(report), "exit_code": int(report.exit_code)}))
    else:
        _print_ingest_summary(source.name, report)
    raise typer.Exit(int(report.exit_code))


@app.command("normstats", no_args_is_help=True)
@user_errors
def normstats(
    datasets: Annotated[list[Path], typer.Argument(help="Unified datasets; those of one embodiment are pooled.")],
) -> None:
    """Compute per-embodiment q01/q99 of chunk-relative actions and states; store them with each dataset."""
    from clap_data.lerobot_v3.metadata import DatasetMetadata
    from clap_data.norm_stats import compute_norm_stats, table_id, write_norm_stats

    table = compute_norm_stats(datasets)
    for root in datasets:
        embodiment = DatasetMetadata.load(root).robot_type
        write_norm_stats(root, {embodiment: table[embodiment]})
    summary = Table(show_edge=False)
    for column in ("embodiment", "frames", "action q01..q99 (x, left)", "statistics id"):
        summary.add_column(column)
    for embodiment, entry in table.items():
        q01, q99 = entry["action"]["q01"][0], entry["action"]["q99"][0]
        summary.add_row(embodiment, f"{entry['frames']:,}", f"{q01:+.4f} .. {q99:+.4f}", table_id({embodiment: entry}))
    stdout.print(summary)
    stdout.print(f"written to {len(datasets)} dataset(s) as meta/clap_norm_stats.json")


@app.command("chunk", no_args_is_help=True)
@user_errors
def chunk(
    dataset: Annotated[Path, typer.Argument(help="A unified dataset.")],
    episode: Annotated[int, typer.Option(min=0, help="Episode index in the dataset.")],
    frame: Annotated[int, typer.Option(min=0, help="Frame the chunk starts at.")],
    stats: Annotated[str, typer.Option(help="openclap (the released table) or dataset (clap-data normstats).")] = "openclap",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print exactly what the Act-VAE sees for the chunk at one frame (normalised)."""
    from clap_data.actions import tokenizer_input
    from clap_data.lerobot_v3.reader import read_episode_arrays
    from clap_data.norm_stats import load_norm_stats

    if stats not in ("openclap", "dataset"):
        raise typer.BadParameter(f"{stats!r} is not openclap or dataset", param_hint="--stats")
    norm = load_norm_stats(dataset, stats)
    arrays = read_episode_arrays(dataset, episode)
    seen = tokenizer_input(arrays.state, arrays.action, arrays.arm_mask, frame, norm)
    result = {"action": seen.action.tolist(), "state": seen.state.tolist(), "arm_mask": seen.arm_mask.tolist(), "padded": seen.padded}
    if as_json:
        print(json.dumps(result))
        return
    stdout.print(f"episode {episode}, frame {frame}, statistics {norm.stats_id if norm else 'none (human)'}, padded: {seen.padded}")
    stdout.print(f"state     {np.array2string(seen.state, precision=3, max_line_width=160)}")
    stdout.print(f"arm_mask  {seen.arm_mask.tolist()}")
    stdout.print(f"action[0] {np.array2string(seen.action[0], precision=3, max_line_width=160)}")
    stdout.print(f"action[31]{np.array2string(seen.action[-1], precision=3, max_line_width=160)}")


@app.command("info")
@user_errors
def info(
    dataset: Annotated[Path, typer.Argument(help="A dataset written by clap-data.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """One-screen summary of a clap-data dataset."""
    from clap_data.lerobot_v3.reader import dataset_summary

    summary = dataset_summary(dataset)
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("dataset", summary["path"])
    table.add_row("robot_type", str(summary["robot_type"]))
    table.add_row("episodes", f"{summary['episodes']:,} ({summary['frames']:,} frames at {summary['fps']} fps)")
    table.add_row("tasks", str(summary["tasks"]))
    table.add_row("cameras", ", ".join(summary["cameras"]) or "none")
    table.add_row("schema", f"clap-data unified v{summary['schema_version']} (LeRobot {summary['codebase_version']})")
    table.add_row("token columns", ", ".join(summary["token_columns"]) or "none yet")
    table.add_row("source", str(summary["source"].get("root", "")))
    for notice in summary["notices"]:
        table.add_row("note", notice)
    for warning in summary["warnings"]:
        table.add_row("[yellow]warning[/yellow]", warning)
    table.add_row("quarantine", f"{len(summary['quarantine'])} episode(s)")
    for row in summary["quarantine"]:
        table.add_row("", f"{row['episode']}: {row['reason']}")
    stdout.print(table)


@app.command("verify", no_args_is_help=True)
@user_errors
def verify(
    dataset: Annotated[Path, typer.Argument(help="A dataset written by clap-data.")],
    full: Annotated[bool, typer.Option(help="Also decode every frame of every video (slow: a full decode).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a dataset against its manifest (sizes, sha256), its metadata (rows, episode ranges,
    schema) and its videos (frame counts; --full decodes them). Exit 0: intact; 1: problems, each named."""
    from clap_data.lerobot_v3.verify import verify_dataset
    from clap_data.locking import dataset_lock
    from clap_data.progress import ConsoleReporter, SilentReporter

    with dataset_lock(dataset, exclusive=False, purpose="verify"):
        report = verify_dataset(dataset, full=full, reporter=SilentReporter() if as_json else ConsoleReporter(stderr, "files"))
    if as_json:
        print(json.dumps({**asdict(report), "ok": report.ok}))
    else:
        checked = (
            f"{report.files_hashed} files hashed ({report.bytes_hashed / 2**20:,.1f} MiB), {report.episodes:,} episodes, "
            f"{report.frames:,} frames, {report.videos} video files" + (f" ({report.frames_decoded:,} frames decoded)" if full else "")
        )
        stdout.print(f"{report.dataset}: {checked}")
        for problem in report.problems:
            stdout.print(f"[red]problem:[/red] {problem}", highlight=False)
        verdict = "intact" if report.ok else f"{len(report.problems)} problem(s)"
        stdout.print(f"exit status {0 if report.ok else 1}: {verdict}")
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.FAILED)
