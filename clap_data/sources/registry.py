"""The sources the command line knows, and which options apply to which.

One ``clap-data ingest SOURCE`` command serves every source, so the options every ingest shares
(output, workers, video encoding, …) are declared once; the source-specific ones are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from clap_data.sources.base import Source
from clap_data.urls import is_url


@dataclass(frozen=True)
class SourceOptions:
    """Source-specific options as given on the command line (None / False: not given)."""

    cameras: list[str] | None = None
    min_frames: int | None = None
    tasks: list[int] | None = None
    force_known_bad: bool = False
    gripper_open_mm: float | None = None
    mapping: Path | None = None
    fps: int | None = None  # resample every episode onto this rate (nearest source frame in time)


# option name -> the sources it applies to
_APPLIES_TO: dict[str, frozenset[str]] = {
    "cameras": frozenset({"astribot", "agibot", "droid", "lerobot"}),
    "min_frames": frozenset({"ego4d"}),
    "tasks": frozenset({"agibot"}),
    "force_known_bad": frozenset({"agibot"}),
    "gripper_open_mm": frozenset({"agibot"}),
    "mapping": frozenset({"lerobot"}),
    "fps": frozenset({"astribot", "droid", "lerobot"}),
}
# Sources whose --src may be a URL (hf://…, any fsspec URL): the LeRobot layout is read by byte range.
_READ_FROM_URLS = frozenset({"droid", "lerobot"})


class OptionError(ValueError):
    """An option given to a source it does not apply to."""


def _astribot(root: str, options: SourceOptions) -> Source:
    from clap_data.sources.astribot import AstribotSource

    return AstribotSource(Path(root), cameras=options.cameras, fps=options.fps)


def _agibot(root: str, options: SourceOptions) -> Source:
    from clap_data.sources.agibot import GRIPPER_OPEN_MM, AgibotSource

    return AgibotSource(
        Path(root), cameras=options.cameras, tasks=options.tasks, force_known_bad=options.force_known_bad,
        gripper_open_mm=GRIPPER_OPEN_MM if options.gripper_open_mm is None else options.gripper_open_mm,
    )


def _droid(root: str, options: SourceOptions) -> Source:
    from clap_data.sources.droid import DroidSource

    return DroidSource(root, cameras=options.cameras, fps=options.fps)


def _lerobot(root: str, options: SourceOptions) -> Source:
    from clap_data.sources.lerobot import LeRobotSource

    if options.mapping is None:
        raise OptionError("ingest lerobot needs --mapping FILE (see docs/lerobot_mapping.md)")
    return LeRobotSource(root, options.mapping, cameras=options.cameras, fps=options.fps)


def _ego4d(root: str, options: SourceOptions) -> Source:
    from clap_data.sources.ego4d import Ego4DSource

    return Ego4DSource(Path(root)) if options.min_frames is None else Ego4DSource(Path(root), min_frames=options.min_frames)


# Adapters are imported only when chosen: each pulls in its own readers (h5py, protobuf, …).
_BUILDERS = {"astribot": _astribot, "agibot": _agibot, "droid": _droid, "ego4d": _ego4d, "lerobot": _lerobot}
SOURCE_NAMES = tuple(_BUILDERS)


def build_source(name: str, root: str | Path, options: SourceOptions) -> Source:
    """The adapter for ``name`` reading ``root`` (a folder, or for some sources a URL); refuses options meant for
    another source, naming them."""
    for option in fields(options):
        given = getattr(options, option.name)
        if given not in (None, False) and name not in _APPLIES_TO[option.name]:
            flag = "--" + option.name.replace("_", "-")
            raise OptionError(f"{flag} applies to {', '.join(sorted(_APPLIES_TO[option.name]))} only, not {name}")
    if name not in _BUILDERS:
        raise OptionError(f"unknown source {name!r}; choose one of {', '.join(SOURCE_NAMES)}")
    if is_url(root) and name not in _READ_FROM_URLS:
        raise OptionError(
            f"--src {root}: only {', '.join(sorted(_READ_FROM_URLS))} (LeRobot layout) can be read from a URL; "
            f"download the {name} source and pass its folder"
        )
    return _BUILDERS[name](str(root), options)
