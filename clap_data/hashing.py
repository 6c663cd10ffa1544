"""The sha256 of a file: the identity of checkpoints, imported weights and every file of a dataset's
manifest, computed one way everywhere (streamed, so a multi-GB file never sits in memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
