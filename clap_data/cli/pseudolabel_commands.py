"""Pseudo-label commands: ``pseudolabel vd-vae`` (a verb of its own, named like ``tokenize act-vae``, because
it reads video where ``tokenize`` reads actions, and works on human datasets as well as robot ones)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clap_data.cli.act_vae_commands import DeviceOption, WaitOption, _verb
from clap_data.cli.common import stderr, stdout, user_errors

pseudolabel_app = _verb("pseudolabel", "Add pseudo-token columns to datasets from their video.")

_CAMERA_HELP = "Camera to pair: CAM for every dataset, or DATASET=CAM for one (repeat or comma-separate)."


@pseudolabel_app.command("vd-vae", no_args_is_help=True)
@user_errors
def pseudolabel_vd_vae(
    datasets: Annotated[list[Path], typer.Argument(help="Unified datasets (human or robot) to label in place.")],
    ckpt: Annotated[Path, typer.Option(help="A VD-VAE checkpoint folder (clap-data train vd-vae).")],
    backbone: Annotated[Path, typer.Option(help="The frozen backbone the VD-VAE was trained on (a transformers folder).")],
    camera: Annotated[list[str] | None, typer.Option(help=_CAMERA_HELP)] = None,
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per backbone call (and pairs per VD-VAE call).")] = 64,
    workers: Annotated[int | None, typer.Option(min=1, help="CPU workers (default: all CPUs).")] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting a local Ray.")] = None,
    wait: WaitOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Add pseudo_tokens (int16 [2·Nq] per frame: the VD-VAE's codes of (o_t, o_t+32), left arm's then right's)
    and pseudo_tokens_padded."""
    from clap_data.pipelines.pseudolabel import PseudolabelRequest, pseudolabel_dataset
    from clap_data.progress import ConsoleReporter, SilentReporter
    from clap_data.vd_vae.frame_pairs import parse_camera_option

    cameras = parse_camera_option(camera or ["head"], datasets)  # every dataset checked before any is written
    reports = []
    for dataset in datasets:
        request = PseudolabelRequest(ckpt=ckpt, backbone=backbone, camera=cameras[dataset], device=device,
                                     batch_size=batch_size, workers=workers, address=address, wait=wait)
        report = pseudolabel_dataset(dataset, request, SilentReporter() if as_json else ConsoleReporter(stderr, "row groups"))
        reports.append(report)
        if as_json:
            continue
        sha, used = report.identity["checkpoint_sha256"][:16], report.identity["camera"]
        if report.unchanged:
            stdout.print(f"{dataset}: already pseudo-labelled with checkpoint {sha}… on camera {used}; nothing changed")
            continue
        what = (f"replaced pseudo-tokens of checkpoint {report.replaced['checkpoint_sha256'][:16]}…" if report.replaced
                else "added pseudo_tokens")
        resumed = f" ({report.resumed_files} file(s) resumed from an interrupted run)" if report.resumed_files else ""
        stdout.print(
            f"{dataset}: {what}: {report.frames:,} frames ({report.flagged:,} padded pairs) in {report.seconds:.1f} s"
            f"{resumed}; checkpoint {sha}…, camera {used}, gap {report.identity['gap']}, "
            f"Nq {report.identity['num_queries']}, K {report.identity['codebook_size']}"
        )
    if as_json:
        print(json.dumps([r.__dict__ for r in reports]))
