"""Advisory ``flock`` locks: one writer per dataset, readers that never see it change halfway.

Every command that changes a dataset (ingest, ``--overwrite``, tokenize, normstats, later
pseudo-label and merge) holds the dataset's lock exclusively; commands that read a dataset and
must not see it change under them (train, eval, export, publish) hold it shared. The lock file
lives *beside* the dataset (``.<name>.clap-lock``), because ingest publishes by renaming a new
folder onto the dataset's path, and it is keyed by the resolved path, so two spellings of one
dataset take one lock. It is never deleted: removing a lock file that another process may just
have opened lets two processes each lock their own file.

Each holder appends a line naming itself (pid, mode, command) to the lock file, and an exclusive
holder first empties it, so a refusal can say who holds the dataset; lines of processes that are
gone are ignored. A process may take a lock it already holds (nested commands): the inner one is a
no-op, except that a shared holder cannot upgrade to exclusive.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from clap_data.errors import ClapDataError

_held: dict[Path, bool] = {}  # lock files this process holds → exclusive?


def dataset_lock_file(root: Path) -> Path:
    """Where the lock of the dataset at ``root`` lives (it need not exist yet)."""
    resolved = Path(root).expanduser().resolve()
    return resolved.parent / f".{resolved.name}.clap-lock"


def _command_line() -> str:
    words = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    text = " ".join(words)
    return text if len(text) <= 160 else text[:157] + "..."


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holders(handle, exclusive_only: bool) -> list[str]:  # noqa: ANN001  (an open text file)
    """The live holders the lock file names (the newest exclusive one, or every reader)."""
    handle.seek(0)
    found = []
    for line in handle.read().splitlines():
        pid_text, _, rest = line.partition(" ")
        mode, _, command = rest.partition(" ")
        if pid_text.isdigit() and process_alive(int(pid_text)) and (mode == "exclusive" or not exclusive_only):
            found.append(f"pid {pid_text}: {command}")
    return found[-1:] if exclusive_only else found


def _conflict(handle, target: Path, purpose: str) -> str:  # noqa: ANN001
    """Who holds the lock we could not get: a writer, or readers (when a shared lock can be had)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        writer = _holders(handle, exclusive_only=True)
        return f"{target} is being written by {writer[0] if writer else 'another clap-data command'}"
    readers = "; ".join(_holders(handle, exclusive_only=False)) or "another clap-data command"
    return f"{target} is being read by {readers}, and {purpose} would change it under them"


def _open_lock_file(path: Path, exclusive: bool):  # noqa: ANN202  (an open text file, or None)
    """The lock file, created if needed. A reader that may not create it (a read-only mount, a
    shared folder without write bits) opens an existing one read-only, or goes without."""
    try:
        if exclusive:
            path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except OSError:
        if exclusive:
            raise
    try:
        return open(path)
    except OSError:
        return None


@contextmanager
def file_lock(
    lock_file: Path, target: Path, *, exclusive: bool, purpose: str, wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold ``lock_file`` (created if needed) for the block, exclusively or shared.

    Without ``wait`` a conflicting holder makes it raise at once with a sentence naming the holder;
    with ``wait`` it blocks, telling ``on_wait`` why first.
    """
    key = Path(lock_file).absolute()
    if key in _held:
        if exclusive and not _held[key]:
            raise ClapDataError(f"{target}: {purpose} needs to change it while this process is only reading it")
        yield
        return
    if not exclusive and not Path(target).exists():
        raise ClapDataError(f"{target} does not exist")
    handle = _open_lock_file(key, exclusive)
    if handle is None:  # a reader of a dataset in a read-only place: nobody here can change it
        yield
        return
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            conflict = _conflict(handle, target, purpose)
            if not wait:
                raise ClapDataError(f"{conflict}; rerun when it is done, or add --wait to wait for it") from None
            if on_wait:
                on_wait(f"waiting: {conflict}")
            fcntl.flock(handle, mode)
        if handle.writable():
            if exclusive:
                handle.truncate(0)
            handle.write(f"{os.getpid()} {'exclusive' if exclusive else 'shared'} {purpose}: {_command_line()}\n")
            handle.flush()
        _held[key] = exclusive
        try:
            yield
        finally:
            del _held[key]
    finally:
        handle.close()


def dataset_lock(
    root: Path, *, exclusive: bool, purpose: str, wait: bool = False, on_wait: Callable[[str], None] | None = None,
) -> AbstractContextManager[None]:
    """The lock of the dataset at ``root`` (see the module docstring)."""
    return file_lock(dataset_lock_file(root), Path(root), exclusive=exclusive, purpose=purpose, wait=wait, on_wait=on_wait)


def exclusive_lock(lock_file: Path, target: Path) -> AbstractContextManager[None]:
    """One writer for a folder that is not a dataset (a checkpoint being trained)."""
    return file_lock(lock_file, target, exclusive=True, purpose="this command")
