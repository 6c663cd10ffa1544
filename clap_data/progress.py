"""Progress and end-of-run summaries on the terminal (rich), kept apart from the pipelines so
that library callers and tests can run them silently."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter(Protocol):
    def phase(self, text: str) -> None: ...

    def start(self, total: int, done: int) -> None: ...

    def advance(self, ok: bool, frames: int) -> None: ...

    def stop(self) -> None: ...


class SilentReporter:
    """For library use: reports nothing."""

    def phase(self, text: str) -> None:
        pass

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: bool, frames: int) -> None:
        pass

    def stop(self) -> None:
        pass


class ConsoleReporter:
    """A live bar on stderr: items (``unit``: episodes, row groups, files) done/total, frames, ETA,
    and for episodes the quarantined count."""

    def __init__(self, console: Console | None = None, unit: str = "episodes"):
        self.console = console or Console(stderr=True)
        self.unit = unit
        self._progress: Progress | None = None
        self._task = None
        self._frames = 0
        self._quarantined = 0

    def phase(self, text: str) -> None:
        self.console.print(f"[bold]{text}[/bold]")

    def start(self, total: int, done: int) -> None:
        self._progress = Progress(
            TextColumn(self.unit),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[frames]} frames" + (", {task.fields[quarantined]} quarantined" if self.unit == "episodes" else "")),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("ingest", total=total, completed=done, frames=0, quarantined=0)

    def advance(self, ok: bool, frames: int) -> None:
        self._frames += frames
        self._quarantined += 0 if ok else 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, frames=self._frames, quarantined=self._quarantined)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
