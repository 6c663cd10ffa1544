"""Reading and validating a source's metadata (JSON, JSON lines) with one-sentence errors naming
the file.

Metadata is read on the driver before anything runs; a missing or garbled file there stops the
run (ClapDataError), unlike a bad episode file, which only quarantines that episode. Metadata is
validated, not trusted: every entry an adapter uses is checked for presence and type
(:func:`entry`), listings must not name one episode or task twice (:func:`check_unique`), the
declared frame rate must be usable (:func:`declared_fps`, :func:`output_fps`) and path templates
must stay inside the source folder (:func:`template_path`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from clap_data.errors import ClapDataError

# The JSON kinds :func:`entry` checks: the Python types json gives them, and how a message names them.
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "integer": ((int,), "an integer"),
    "number": ((int, float), "a number"),
    "string": ((str,), "a string"),
    "object": ((dict,), "a JSON object"),
    "list": ((list,), "a list"),
}
_REQUIRED = object()


def read_json(path: Path, what: str, missing_hint: str = "") -> Any:
    """``what`` names the file's role ("metadata file"); ``missing_hint`` ends the sentence said
    when it is absent (e.g. "is this a LeRobot dataset?")."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ClapDataError(f"{what} {path} is missing" + (f"; {missing_hint}" if missing_hint else "")) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClapDataError(f"{what} {path} cannot be read: {exc}") from None


def read_json_object(path: Path, what: str, missing_hint: str = "") -> dict[str, Any]:
    """:func:`read_json` for files whose top level must be an object (``meta/info.json``)."""
    document = read_json(path, what, missing_hint)
    if not isinstance(document, dict):
        raise ClapDataError(f"{what} {path} is not a JSON object")
    return document


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line, so that later checks can name the line;
    the error names the first line that is not a JSON object."""
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
        rows.append((number, row))
    return rows


def _json_kind(value: Any) -> str:
    """How a message names the JSON kind of a value that has the wrong one."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for types, name in _KINDS.values():
        if isinstance(value, types):
            return name
    return type(value).__name__


def entry(
    record: Mapping[str, Any], key: str, kind: str, where: str, default: Any = _REQUIRED, minimum: int | None = None
) -> Any:
    """``record[key]``, checked to be of JSON ``kind`` (``integer``, ``number``, ``string``,
    ``object``, ``list``; booleans are never numbers) and at least ``minimum``; ``default`` when
    absent, or an error if no default is given. ``where`` names the file (and line) as a sentence
    starts: "episode list /src/meta/episodes.jsonl line 3"."""
    if key not in record:
        if default is _REQUIRED:
            raise ClapDataError(f"{where} has no {key!r} entry")
        return default
    value = record[key]
    types, expected = _KINDS[kind]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ClapDataError(f"{where}: {key} must be {expected}, not {value!r} ({_json_kind(value)})")
    if minimum is not None and value < minimum:
        raise ClapDataError(f"{where}: {key} must be at least {minimum}, not {value!r}")
    return value


def check_unique(occurrences: Iterable[tuple[Hashable, str]], what: str, key: str) -> None:
    """Refuse a listing that names one value of ``key`` more than once: its episode (or task)
    would otherwise be ingested twice or silently replaced. ``occurrences`` are ``(value, place)``,
    the place as a message says it ("line 3"); ``what`` names the listing ("episode list /src/…")."""
    places: dict[Hashable, list[str]] = {}
    for value, place in occurrences:
        places.setdefault(value, []).append(place)
    for value, found in places.items():
        if len(found) > 1:
            times = "twice" if len(found) == 2 else f"{len(found)} times"
            listed = ", ".join(found[:-1]) + f" and {found[-1]}"
            raise ClapDataError(f"{what} lists {key} {value!r} {times} ({listed}); each may appear only once")


def declared_fps(record: Mapping[str, Any], where: str) -> float:
    """The ``fps`` entry of a metadata file: a positive, finite number (not a string, not a bool)."""
    if "fps" not in record:
        raise ClapDataError(f"{where} has no 'fps' entry")
    fps = record["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise ClapDataError(
            f"{where} declares fps {fps!r} ({_json_kind(fps)}); it must be a positive number of frames per second"
        )
    return float(fps)


def output_fps(declared: float, requested: int | None, where: str) -> int:
    """The frame rate written: ``requested`` (``--fps``, the episodes are then resampled onto it)
    or the declared one, which LeRobot v3 needs whole — a rate like 29.97 is refused, never
    truncated, with the option that resamples it."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ClapDataError(f"--fps must be a whole number of frames per second, at least 1; got {requested!r}")
        return requested
    if not declared.is_integer():
        nearest = max(1, round(declared))
        raise ClapDataError(
            f"{where} declares fps {declared:g}, but a LeRobot v3 dataset stores a whole number of frames per second; "
            f"pass --fps {nearest} to resample onto {nearest} fps"
        )
    return int(declared)


def template_path(root: Path, template: str, key: str, where: str, **fields: Any) -> str:
    """A path template of a metadata file (``data_path``, ``video_path``) filled in with
    ``fields``, relative to ``root``. Refused when it cannot be filled in, or when it is absolute
    or climbs out of ``root`` with ``..`` (after filling in: a field such as a video key can
    carry ``..`` too). The check is on the path as written: symlinks inside the source folder
    are the user's own layout and are followed."""
    try:
        relative = template.format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        names = ", ".join(sorted(fields))
        raise ClapDataError(
            f"{where}: {key} {template!r} cannot be filled in ({type(exc).__name__}: {exc}); it may use {names}"
        ) from None
    normal = PurePosixPath(os.path.normpath(relative)) if relative else PurePosixPath(".")
    if normal.is_absolute() or normal.parts[:1] == (os.pardir,):
        resolved = os.path.normpath(os.path.join(os.path.abspath(root), relative))
        raise ClapDataError(
            f"{where}: {key} {template!r} resolves to {resolved}, outside the source folder {root}; "
            "path templates must stay inside --src"
        )
    return relative


@dataclass(frozen=True)
class LayoutInfo:
    """The entries of a LeRobot-style ``meta/info.json`` (v2.x and v3.0, Astribot's too) that
    readers use, validated by :func:`layout_info`."""

    where: str  # how messages name the file: "metadata file /src/meta/info.json"
    fps: float  # as declared; :func:`output_fps` gives the rate written
    data_path: str
    video_path: str  # "" when the dataset has no video features
    chunks_size: int
    features: dict[str, dict[str, Any]]

    @property
    def video_keys(self) -> tuple[str, ...]:
        return tuple(key for key, feature in self.features.items() if feature.get("dtype") == "video")

    def data_file(self, root: Path, **fields: Any) -> str:
        """The ``data_path`` template filled in, relative to ``root`` (see :func:`template_path`)."""
        return template_path(root, self.data_path, "data_path", self.where, **fields)

    def video_file(self, root: Path, **fields: Any) -> str:
        """The ``video_path`` template filled in, relative to ``root`` (see :func:`template_path`)."""
        return template_path(root, self.video_path, "video_path", self.where, **fields)


def layout_info(info: Mapping[str, Any], where: str) -> LayoutInfo:
    """Check the entries every LeRobot layout reader needs: ``fps``, ``data_path``, ``features``
    (an object of objects), ``chunks_size`` (default 1000) and ``video_path`` (needed once a
    feature is a video; lerobot writes null without videos)."""
    features = entry(info, "features", "object", where)
    for name, feature in features.items():
        if not isinstance(feature, dict):
            raise ClapDataError(
                f"{where}: features entry {name!r} must be a JSON object, not {feature!r} ({_json_kind(feature)})"
            )
    layout = LayoutInfo(
        where=where,
        fps=declared_fps(info, where),
        data_path=entry(info, "data_path", "string", where),
        video_path="" if info.get("video_path") is None else entry(info, "video_path", "string", where),
        chunks_size=entry(info, "chunks_size", "integer", where, default=1000, minimum=1),
        features=features,
    )
    if layout.video_keys and not layout.video_path:
        raise ClapDataError(
            f"{where} declares video features ({', '.join(layout.video_keys)}) but no 'video_path' template"
        )
    return layout


@dataclass(frozen=True)
class ListedEpisode:
    """One line of a LeRobot v2 ``meta/episodes.jsonl``, checked."""

    line: int
    index: int
    chunk: int  # ``episode_chunk`` when the line has one, else index // chunks_size
    length: int
    tasks: tuple[str, ...]


def read_episode_list(path: Path, chunks_size: int) -> list[ListedEpisode]:
    """Every episode of a v2 ``meta/episodes.jsonl`` in file order: ``episode_index`` and
    ``length`` are required non-negative integers, ``tasks`` a list of strings when given, and no
    ``episode_index`` may appear twice."""
    episodes = []
    for line, row in read_jsonl(path, "episode list"):
        where = f"episode list {path} line {line}"
        index = entry(row, "episode_index", "integer", where, minimum=0)
        tasks = entry(row, "tasks", "list", where, default=[])
        if not all(isinstance(task, str) for task in tasks):
            raise ClapDataError(f"{where}: tasks must be a list of strings, not {tasks!r}")
        episodes.append(ListedEpisode(
            line=line,
            index=index,
            chunk=entry(row, "episode_chunk", "integer", where, default=index // chunks_size, minimum=0),
            length=entry(row, "length", "integer", where, minimum=0),
            tasks=tuple(tasks),
        ))
    check_unique(((e.index, f"line {e.line}") for e in episodes), f"episode list {path}", "episode_index")
    return episodes


def read_task_list(path: Path) -> dict[int, str]:
    """``task_index`` → task of a v2 ``meta/tasks.jsonl``: both entries required on every line,
    no ``task_index`` twice (a second one would silently replace the first one's text)."""
    rows = []
    for line, row in read_jsonl(path, "task list"):
        where = f"task list {path} line {line}"
        rows.append((line, entry(row, "task_index", "integer", where, minimum=0), entry(row, "task", "string", where)))
    check_unique(((index, f"line {line}") for line, index, _ in rows), f"task list {path}", "task_index")
    return {index: task for _, index, task in rows}
