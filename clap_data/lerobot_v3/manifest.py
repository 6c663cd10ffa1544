"""The manifest of a dataset's files (``meta/clap_manifest.json``): each file's size and sha256.

A dataset is hundreds of files that other tools can damage after clap-data wrote them (a copy cut
short, a sync that truncated a parquet, a file deleted by hand). Without a record of what was
written, ``info`` happily reports the frames the metadata declares and a column update finds
"nothing changed". The manifest is that record: written by ingest (each file hashed as it is
completed, while it is still in the page cache), updated by every column update for the files it
replaced, checked cheaply (sizes) by ``info`` and column updates and fully (hashes) by
``clap-data verify``. It is a pure function of the files, so resumed runs stay byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clap_data.atomic import write_text_atomic
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256

MANIFEST_PATH = "meta/clap_manifest.json"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """Relative path → ``{"size": bytes, "sha256": hex}`` of every file of a dataset but itself."""

    files: dict[str, dict[str, int | str]] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = Path(root) / MANIFEST_PATH
        try:
            data = json.loads(path.read_text())
            files = data["files"]
            if data.get("manifest_version") != MANIFEST_VERSION or not isinstance(files, dict):
                raise ValueError(f"unknown manifest version {data.get('manifest_version')!r}")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ClapDataError(f"{path} cannot be read ({exc}); `clap-data verify` cannot check this dataset") from None
        return cls(dict(files))

    @classmethod
    def of_tree(cls, root: Path) -> Manifest:
        """Hash every file under ``root`` (the manifest itself excepted)."""
        manifest = cls()
        for path in sorted(Path(root).rglob("*")):
            relative = str(path.relative_to(root))
            if path.is_file() and relative != MANIFEST_PATH:
                manifest.record(root, relative)
        return manifest

    def record(self, root: Path, relative: str) -> None:
        """(Re-)hash one file, e.g. right after writing it."""
        path = Path(root) / relative
        self.files[relative] = {"size": path.stat().st_size, "sha256": file_sha256(path)}

    def write(self, root: Path) -> None:
        text = json.dumps({"manifest_version": MANIFEST_VERSION, "algorithm": "sha256", "files": dict(sorted(self.files.items()))},
                          indent=1)
        write_text_atomic(Path(root) / MANIFEST_PATH, text + "\n")

    def size_problems(self, root: Path) -> list[str]:
        """Files missing, of another size than recorded, or not recorded at all — a ``stat`` per file,
        cheap enough to run before every command (hashes are for ``verify``)."""
        root = Path(root)
        problems = []
        for relative, entry in self.files.items():
            path = root / relative
            if not path.is_file():
                problems.append(f"{relative} is missing")
            elif path.stat().st_size != entry["size"]:
                problems.append(f"{relative} is {path.stat().st_size:,} bytes, the manifest says {int(entry['size']):,}")
        for path in sorted(root.rglob("*")):
            relative = str(path.relative_to(root))
            if path.is_file() and relative != MANIFEST_PATH and relative not in self.files:
                problems.append(f"{relative} is not in the manifest (added after the dataset was written)")
        return problems
