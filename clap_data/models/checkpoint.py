"""A model checkpoint folder (huggingface_hub's ``PyTorchModelHubMixin`` layout) and its identity.

    FOLDER/
      model.safetensors    the weights: their sha256 is the checkpoint's identity in token metadata
      config.json          the model's config, from which the mixin rebuilds the model

Why a module of its own: the Act-VAE, the VD-VAE and the policies all write and read such folders, and
token metadata names a checkpoint by the same sha256 whichever model made the tokens. What a training
run adds beside these files (e.g. ``training.json``) belongs to that model's own package.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import TypeVar

from huggingface_hub import PyTorchModelHubMixin

from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
EXPORT_PREFIX = ".export-"  # save_model's scratch folder inside the checkpoint (left behind only by a crash)

M = TypeVar("M", bound=PyTorchModelHubMixin)


def checkpoint_sha256(folder: str | Path) -> str:
    """Hex sha256 of ``<folder>/model.safetensors`` (the checkpoint identity used in token metadata)."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder}")
    return file_sha256(path)


def save_model(model: PyTorchModelHubMixin, folder: str | Path) -> str:
    """Write ``model.safetensors`` + ``config.json`` into ``folder``, each file replaced atomically (a
    reader sees the old file or the new one, never a partial one); return the weights' sha256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=EXPORT_PREFIX) as tmp:
        model.save_pretrained(tmp)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(Path(tmp) / name, folder / name)
    return checkpoint_sha256(folder)


def load_model(cls: type[M], folder: str | Path, device: str = "cpu", *, kind: str, hint: str = "") -> tuple[M, str]:
    """``cls`` rebuilt from a local checkpoint folder, in eval mode on ``device``, and its sha256.

    Every weight must be in the file and every tensor of the file must be used (``strict``: the mixin's
    default would leave a missing tensor at its random initial value). ``kind`` names the model with its
    article in errors (e.g. ``"an Act-VAE"``); ``hint`` says how to get a checkpoint when files are missing.
    Errors are one sentence (:class:`ClapDataError`).
    """
    folder = Path(folder)
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if not (folder / name).is_file()]
    if missing:
        advice = f" ({hint})" if hint else ""
        raise ClapDataError(f"{folder} is not {kind} checkpoint: {', '.join(missing)} missing{advice}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints "Loading weights from local directory"
            model = cls.from_pretrained(folder, strict=True)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        reason = " ".join(str(exc).split())  # strict loading lists the keys on several lines
        raise ClapDataError(f"{folder} cannot be loaded as {kind} checkpoint: {reason[:400]}") from None
    return model.to(device).eval(), checkpoint_sha256(folder)
