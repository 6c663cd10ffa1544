"""Reading a source's JSON and JSON-lines metadata with one-sentence errors naming the file.

Metadata is read on the driver before anything runs; a missing or garbled file there stops the
run (ClapDataError), unlike a bad episode file, which only quarantines that episode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clap_data.errors import ClapDataError


def read_json(path: Path, what: str, missing_hint: str = "") -> Any:
    """``what`` names the file's role ("metadata file"); ``missing_hint`` ends the sentence said
    when it is absent (e.g. "is this a LeRobot dataset?")."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ClapDataError(f"{what} {path} is missing" + (f"; {missing_hint}" if missing_hint else "")) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"{what} {path} cannot be read: {exc}") from None


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    """One JSON object per non-blank line; the error names the first bad line."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ClapDataError(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClapDataError(f"{what} {path} cannot be read: {exc}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ClapDataError(f"{what} {path} line {number} is not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise ClapDataError(f"{what} {path} line {number} is not a JSON object")
        rows.append(row)
    return rows
