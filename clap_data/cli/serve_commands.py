"""``clap-data serve``: a trained policy behind a websocket (:mod:`clap_data.training.policy_server`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from clap_data.cli.act_vae_commands import DeviceOption
from clap_data.cli.common import app, stderr, user_errors


@app.command("serve", no_args_is_help=True)
@user_errors
def serve(
    ckpt: Annotated[Path, typer.Option(help="The policy checkpoint folder (clap-data train ntp or train rf).")],
    host: Annotated[str, typer.Option(help="The interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The TCP port (0: a free one, printed).")] = 8000,
    device: DeviceOption = "auto",
    act_vae: Annotated[Path | None, typer.Option(help="The Act-VAE folder, if not the recorded one.")] = None,
) -> None:
    """Answer observations with chunks of 32 absolute actions over a websocket (msgpack frames; the protocol is in
    the README, the client is clap_data.training.policy_client.PolicyClient), until SIGINT or SIGTERM."""
    from clap_data.training import policy_server
    from clap_data.training.policies import load_policy

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")  # connections and tracebacks, on stderr
    policy_server.logger.setLevel(logging.INFO)
    stderr.print(f"serve: loading {ckpt} …", highlight=False)
    policy = load_policy(ckpt, device=device, act_vae=act_vae)

    def listening(bound_host: str, bound_port: int) -> None:  # the first stdout line: scripts read the port from it
        print(f"serving {ckpt} ({policy.meta['kind']}) on ws://{bound_host}:{bound_port}", flush=True)

    server = policy_server.serve(policy, host, port, ready=listening)
    print(f"stopped: {server.summary()}", flush=True)
