"""Datasets edited as a whole: ``clap-data merge`` (several unified datasets into one, ``clap_data.pipelines.merge``)
and ``clap-data adopt`` (a unified dataset rewritten by LeRobot's tools, ``clap_data.lerobot_v3.adopt``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from clap_data.cli.common import app, split_list, stderr, stdout, summary_grid, user_errors


@app.command("merge", no_args_is_help=True)
@user_errors
def merge(
    datasets: Annotated[list[Path], typer.Argument(metavar="DS...", help="The unified datasets to merge, in order.")],
    out: Annotated[Path, typer.Option(help="Where the merged LeRobot v3.0 dataset is written.")],
    cameras: Annotated[str | None, typer.Option(help="Comma-separated cameras to keep (each in every dataset). "
                                                     "Default: all, which every dataset must then have.")] = None,
    drop_tokens: Annotated[bool, typer.Option(help="Leave out token columns that do not come from one tokenizer "
                                                   "in every dataset, instead of refusing.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished dataset at --out.")] = False,
    wait: Annotated[bool, typer.Option(help="If another command holds a dataset, wait for it instead of refusing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Merge unified datasets of one embodiment and fps into one, keeping provenance, quarantines and tokens."""
    from clap_data.pipelines.merge import MergeRequest, merge_datasets
    from clap_data.progress import ConsoleReporter, SilentReporter

    chosen = tuple(split_list(cameras)) if cameras else None
    request = MergeRequest(out=out, overwrite=overwrite, cameras=chosen, drop_tokens=drop_tokens, wait=wait)
    report = merge_datasets(datasets, request, SilentReporter() if as_json else ConsoleReporter(stderr))
    if as_json:
        stdout.print_json(json.dumps(asdict(report)))
        return
    table = summary_grid()
    table.add_row("merge", f"{len(report.inputs)} datasets → {report.out}")
    table.add_row("episodes", f"{report.episodes:,} ({report.frames:,} frames) in {report.seconds:.1f} s")
    table.add_row("cameras", ", ".join(report.cameras) or "none")
    table.add_row("token columns", ", ".join(report.token_columns) or "none")
    if report.dropped_token_columns:
        table.add_row("dropped", ", ".join(report.dropped_token_columns) + " (not from one tokenizer in every dataset)")
    table.add_row("quarantine", f"{report.quarantined} episode(s) carried over from the inputs")
    if report.resumed_inputs:
        table.add_row("resumed", f"after the first {report.resumed_inputs} dataset(s), merged by an interrupted run")
    stdout.print(table)


@app.command("adopt", no_args_is_help=True)
@user_errors
def adopt(
    dataset: Annotated[Path, typer.Argument(metavar="DS", help="A unified dataset rewritten by LeRobot's tools.")],
    wait: Annotated[bool, typer.Option(help="If another command holds the dataset, wait for it instead of refusing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Restore the clap-data metadata of a dataset that lerobot-edit-dataset or aggregate_datasets rewrote."""
    from clap_data.lerobot_v3.adopt import adopt_dataset

    report = adopt_dataset(dataset, wait=wait)
    if as_json:
        stdout.print_json(json.dumps(asdict(report)))
        return
    table = summary_grid()
    table.add_row("adopted", f"{report.dataset} ({report.episodes:,} episodes)")
    table.add_row("provenance", "kept (source/* columns survived)" if report.provenance == "kept" else
                  "reconstructed (LeRobot dropped it): source/dataset 'unknown', source/episode_id = the episode's index")
    table.add_row("token columns", ", ".join(report.token_columns) or "none")
    for column, why in report.stale_columns.items():
        table.add_row("stale", f"{column}: {why}")
    if report.quarantine_written:
        table.add_row("quarantine", "none survived; an empty quarantine.parquet was written")
    table.add_row("manifest", "rewritten: every command works on the dataset again (clap-data info, verify, stats, …)")
    stdout.print(table)
