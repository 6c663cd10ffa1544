"""``clap-data publish``: upload a checked dataset and its card to the Hugging Face Hub (clap_data/hub.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from clap_data.cli.common import app, stderr, stdout, user_errors

if TYPE_CHECKING:
    from clap_data.hub import PublishReport

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_LICENCE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def _print_dry_run(report: PublishReport) -> None:
    files = Table(title=f"would upload to {report.url}", title_justify="left", box=None)
    files.add_column("file", overflow="fold")
    files.add_column("bytes", justify="right")
    for local in report.plan.files:
        files.add_row(local.path, f"{local.size:,}")
    stdout.print(files)
    stdout.print(f"{len(report.plan.files)} files, {report.plan.total_bytes:,} bytes")
    stdout.print("--- README.md (the dataset card) ---")
    stdout.out(report.plan.card, highlight=False, end="")  # as it will be uploaded: no markup, no wrapping
    stdout.print("dry run: nothing was uploaded")


def _print_summary(report: PublishReport) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("published", report.url)
    table.add_row("revision", f"{report.revision} at {report.commit}, tagged {report.tag}"
                  + (" (tag moved here)" if report.tag_moved else " (tag already here)"))
    table.add_row("uploaded", f"{len(report.uploaded)} files ({report.uploaded_bytes / 2**20:,.1f} MiB) "
                  f"in {report.commits} commit(s); {report.unchanged} already on the Hub")
    if report.removed:
        table.add_row("removed", f"{len(report.removed)} files the dataset no longer has")
    table.add_row("licence", report.plan.licence.spdx)
    stdout.print(table)


@app.command("publish", no_args_is_help=True)
@user_errors
def publish(
    dataset: Annotated[Path, typer.Argument(help="A finished clap-data dataset.")],
    repo_id: Annotated[str, typer.Option(help="The dataset repo on the Hub, ORG/NAME (created if needed).")],
    private: Annotated[bool, typer.Option(help="Create the repo private (an existing public one is refused).")] = False,
    revision: Annotated[str, typer.Option(help="The branch to publish to (created from main if needed).")] = "main",
    endpoint: Annotated[str | None, typer.Option(help="The Hub's URL (default: HF_ENDPOINT or huggingface.co).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Check, list the files and print the card; upload nothing.")] = False,
    licence_ok: Annotated[
        bool, typer.Option(help="With --private: every reader of the repo holds the licence of a licence-gated source.")
    ] = False,
    licence: Annotated[str | None, typer.Option(help="The card's licence, a Hub licence id (e.g. cc-by-4.0).")] = None,
) -> None:
    """Publish a dataset to the Hugging Face Hub: checked, with a dataset card, resumable, tagged v3.0."""
    from clap_data.hub import PublishRequest
    from clap_data.hub import publish as run_publish
    from clap_data.progress import ConsoleReporter

    if not _REPO_ID.match(repo_id):
        raise typer.BadParameter(f"{repo_id!r} is not ORG/NAME", param_hint="--repo-id")
    if licence is not None and not _LICENCE.match(licence.lower()):
        raise typer.BadParameter(f"{licence!r} is not a licence id such as cc-by-4.0", param_hint="--licence")
    request = PublishRequest(
        dataset=dataset, repo_id=repo_id, private=private, revision=revision, endpoint=endpoint,
        licence=licence.lower() if licence else None, licence_ok=licence_ok, dry_run=dry_run,
    )
    report = run_publish(request, ConsoleReporter(stderr, "files"))
    for notice in report.plan.notices:
        stderr.print(f"[yellow]note:[/yellow] {escape(notice)}", highlight=False)
    if dry_run:
        _print_dry_run(report)
    else:
        _print_summary(report)
