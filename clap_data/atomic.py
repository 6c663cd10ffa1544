"""Write-then-rename helpers: a reader (or a rerun after ``kill -9``) sees a file or directory
either complete or not at all, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_sibling(path: Path) -> Path:
    """A unique name beside ``path`` (same filesystem, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``, complete or not at all (a temporary sibling renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` only if the block completes.

    If ``final`` appeared meanwhile (another worker of an interrupted run finished the same
    deterministic work), ours is discarded: both hold the same bytes.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_temp_leftovers(directory: Path, name: str = "*") -> None:
    """Delete the temporary names (:func:`temp_sibling`) of ``name`` (default: of anything) that an
    interrupted run left behind in ``directory``."""
    if not directory.is_dir():
        return
    for entry in directory.glob(f".{name}.tmp-*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
