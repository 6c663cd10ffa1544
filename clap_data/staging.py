"""The staging area of one output: where an ingest keeps its work until the dataset is complete.

It lives beside the output (``.<name>.clap-staging``, same filesystem; the dataset's lock,
:func:`clap_data.locking.dataset_lock`, is beside it) and holds: ``run.json`` (the options of the run, so a rerun resumes
only work done with the same options), ``episodes/<order>/`` (one converted episode, renamed into
place when complete), ``quarantine/<order>.json``, ``logs/<order>.log`` (the traceback of an
episode's unexpected error, kept after the run) and finally ``dataset/`` (the assembled v3
dataset, moved onto the output path in one rename). A ``kill -9`` at any point leaves only complete
entries and temporary names, so rerunning the same command resumes and produces the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from clap_data.atomic import remove_temp_leftovers, write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.locking import dataset_lock
from clap_data.sources.base import EpisodeRef


class StagingArea:
    def __init__(self, out: Path):
        self.out = out
        self.root = out.parent / f".{out.name}.clap-staging"
        self.episodes_dir = self.root / "episodes"
        self.quarantine_dir = self.root / "quarantine"
        self.dataset_dir = self.root / "dataset"
        self.previous_dir = self.root / "previous"
        self.logs_dir = self.root / "logs"

    def locked(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> AbstractContextManager[None]:
        """Hold the output dataset's lock (exclusive) for the whole run: a second writer, or a
        command reading the dataset, makes it refuse (or wait)."""
        return dataset_lock(self.out, exclusive=True, purpose="ingest", wait=wait, on_wait=on_wait)

    def has_resumable_work(self) -> bool:
        """Whether a rerun would reuse anything here (a converted episode, an assembled dataset)."""
        staged = self.episodes_dir.is_dir() and any(not p.name.startswith(".") for p in self.episodes_dir.iterdir())
        return staged or self.dataset_dir.is_dir() or self.previous_dir.exists()

    def prepare(self, run_options: dict[str, Any], discard_mismatch: bool) -> None:
        """Resume earlier work done with the same options, or start afresh.

        Work with the same options is always resumed (it produces the same bytes); work with other
        options is discarded only when asked (``--overwrite``), so nothing is thrown away by surprise.
        """
        previous = self.run_options()
        if previous == run_options:
            for directory in (self.root, self.episodes_dir, self.quarantine_dir, self.logs_dir):
                remove_temp_leftovers(directory)
            return
        if previous is not None and not discard_mismatch:
            raise ClapDataError(
                f"{self.out} has an interrupted run with other options; rerun it with the same "
                "options to resume, or add --overwrite to discard it"
            )
        self.discard_work()
        write_json_atomic(self.root / "run.json", run_options)

    def discard_work(self) -> None:
        for path in (self.episodes_dir, self.quarantine_dir, self.dataset_dir, self.previous_dir, self.logs_dir):
            shutil.rmtree(path, ignore_errors=True)
        remove_temp_leftovers(self.root)

    def run_options(self) -> dict[str, Any] | None:
        run_file = self.root / "run.json"
        return json.loads(run_file.read_text()) if run_file.is_file() else None

    def episode_dir(self, ref: EpisodeRef) -> Path:
        return self.episodes_dir / f"{ref.order:08d}"

    def staged_episode(self, ref: EpisodeRef, check_sources: bool = True) -> dict[str, Any] | None:
        """The staged record of ``ref`` if a complete one exists for this very episode — and, with
        ``check_sources``, whose source videos have not changed since (assembly checks them itself, to quarantine
        the episode with that reason)."""
        record = self.episode_dir(ref) / "episode.json"
        if not record.is_file():
            return None
        data = json.loads(record.read_text())
        if data.get("source_episode") != ref.source_episode:
            return None
        if check_sources and any(map(source_changed, data["videos"].values())):
            return None
        return data

    def write_quarantine(self, ref: EpisodeRef, record: dict[str, Any]) -> None:
        write_json_atomic(self.quarantine_dir / f"{ref.order:08d}.json", record)

    def forget_attempt(self, ref: EpisodeRef) -> None:
        """Forget what an earlier attempt at ``ref`` left (it is being converted again): a staged episode that is no
        longer valid (:meth:`staged_episode` refused it), a quarantine record, an error log."""
        shutil.rmtree(self.episode_dir(ref), ignore_errors=True)
        (self.quarantine_dir / f"{ref.order:08d}.json").unlink(missing_ok=True)
        self.error_log(ref).unlink(missing_ok=True)

    def error_log(self, ref: EpisodeRef) -> Path:
        """Where the traceback of ``ref``'s unexpected error goes: one file per episode, so Ray
        workers converting at the same time never append to a shared file."""
        return self.logs_dir / f"{ref.order:08d}.log"

    def has_error_logs(self) -> bool:
        return self.logs_dir.is_dir() and any(self.logs_dir.glob("*.log"))

    def quarantine_records(self) -> list[dict[str, Any]]:
        if not self.quarantine_dir.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.quarantine_dir.glob("*.json"))]

    def publish(self) -> None:
        """Move the assembled dataset onto the output path; an existing one is replaced only
        after the new one is complete, and is never left half-overwritten."""
        if self.out.exists():
            if self.previous_dir.exists():
                shutil.rmtree(self.previous_dir)
            os.rename(self.out, self.previous_dir)
        os.rename(self.dataset_dir, self.out)

    def remove(self) -> None:
        """Delete the staging area once the dataset is published, except the error logs: the
        quarantine reasons and the summary name them, and they are what a bug report needs."""
        if not self.has_error_logs():
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for entry in self.root.iterdir():
            if entry == self.logs_dir:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def check_output_folder(out: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse an ``--out`` that would be lost: a file, a folder some other program wrote, or an earlier output of
    ours without ``--overwrite``; an empty folder is removed, so the finished output can be renamed into place.
    ``what`` names the kind of output (``"dataset"``, ``"shard folder"``)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ClapDataError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        out.rmdir()
        return
    if not is_ours(out):
        raise ClapDataError(f"--out {out} exists and is not a clap-data {what}; choose an empty or new folder")
    if not overwrite:
        raise ClapDataError(f"--out {out} already holds a {what}; add --overwrite to replace it")


def window_source(path: Path, start_pts: int) -> dict[str, Any]:
    """A staged camera entry's ``copy_from``: the source file assembly copies the frames from, the first frame's
    timestamp, and the file's size and modification time as validated (what :func:`source_changed` compares)."""
    version = Path(path).stat()
    return {"path": str(Path(path).absolute()), "start_pts": start_pts, "size": version.st_size,
            "mtime_ns": version.st_mtime_ns}


def source_changed(video_entry: dict[str, Any]) -> bool:
    """Whether the source file that a staged camera entry says assembly copies from (``copy_from``) is gone or has
    another size or modification time than when it was validated — the episode must then be converted again."""
    copy_from = video_entry.get("copy_from")
    if copy_from is None:
        return False
    try:
        version = os.stat(copy_from["path"])
    except OSError:
        return True
    return (version.st_size, version.st_mtime_ns) != (copy_from["size"], copy_from["mtime_ns"])
