"""What ``train act-vae --init CKPT`` trains: the model of the checkpoint folder it starts from.

Why a fine-tune takes its model from ``CKPT/config.json`` rather than from ``--preset``: the weights only fit
the network they were made for, and a release import is no preset's size for certain (``Nq``, ``K`` and the
layer counts come from the released tensors). A ``--preset``, ``--num-queries`` or ``--codebook-size`` given
as well must describe the same model, or it is refused rather than silently ignored. The learning rate
defaults to the preset the model is (up to ``Nq`` and ``K``, the two sizes a preset is overridden with):
fine-tuning a release model at the small preset's 1e-3 would wreck it, so a model that is no preset's needs
``--lr``. The weights themselves are loaded by :func:`clap_data.act_vae.training.train_act_vae`.
"""

from __future__ import annotations

import json
from pathlib import Path

from clap_data.act_vae.training import PRESETS, preset_config
from clap_data.errors import ClapDataError
from clap_data.models import ActVAEConfig
from clap_data.models.checkpoint import CONFIG_NAME

SHOWN = 5  # differing settings named in a refusal


def read_config(ckpt: Path) -> ActVAEConfig:
    """The ``ActVAEConfig`` of a checkpoint folder, from its ``config.json`` alone (no weights read)."""
    path = Path(ckpt) / CONFIG_NAME
    if not path.is_file():
        raise ClapDataError(f"--init {ckpt} is not an Act-VAE checkpoint: {CONFIG_NAME} missing")
    try:
        data = json.loads(path.read_text())
        return ActVAEConfig(**{k: v for k, v in data.items() if k in ActVAEConfig.__dataclass_fields__})
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ClapDataError(f"{path} cannot be read as an Act-VAE config: {exc}") from None


def init_config(
    init: Path, preset: str | None = None, num_queries: int | None = None, codebook_size: int | None = None
) -> tuple[ActVAEConfig, str | None]:
    """``init``'s config, refusing options that describe another model, and the preset whose default
    learning rate applies (``preset``, else the one the config is up to Nq and K; None when none is)."""
    config = read_config(init)
    sizes = {"num_queries": num_queries, "codebook_size": codebook_size}
    asked = preset_config(preset, **sizes).to_dict() if preset else {k: v for k, v in sizes.items() if v is not None}
    have = config.to_dict()
    differ = [f"{name} {have[name]} there, {asked[name]} asked" for name in asked if asked[name] != have[name]]
    if differ:
        flags = f"--preset {preset}" if preset else "--num-queries/--codebook-size"
        more = f" and {len(differ) - SHOWN} more" if len(differ) > SHOWN else ""
        raise ClapDataError(
            f"--init {init} holds another model than {flags} describes ({', '.join(differ[:SHOWN])}{more}); "
            f"leave {flags} out: a fine-tune's model comes from its --init"
        )
    if preset is None:
        sizes = {"num_queries": config.num_queries, "codebook_size": config.codebook_size}
        preset = next((name for name in PRESETS if preset_config(name, **sizes) == config), None)
    return config, preset
