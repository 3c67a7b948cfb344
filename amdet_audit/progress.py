"""Progress reporting: callbacks for library code, a rich bar on stderr for the CLI."""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable
from typing import Any

ProgressCallback = Callable[[int, int, str], None]


def phase(progress: ProgressCallback | None, name: str) -> ProgressCallback | None:
    """``progress`` with every label prefixed by ``name`` (so a counter that restarts reads as a new phase)."""
    if progress is None:
        return None
    return lambda done, total, label: progress(done, total, f"{name}: {label}")


class StderrProgress:
    """A callback ``(done, total, label)`` drawing one rich bar on stderr when it is a terminal (a total of 0
    or less is unknown); :meth:`close` removes the bar before the caller prints its result."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.bar: Any = None
        self.task: Any = None
        self.closed = False

    def __call__(self, done: int, total: int, label: str) -> None:
        if self.closed or not sys.stderr.isatty():
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn(f"{self.title} [dim]{{task.description}}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                                transient=True)
            self.bar.start()
            atexit.register(self.close)
        known = total if total > 0 else None
        if self.task is None or self.bar.tasks[0].description != label or self.bar.tasks[0].total != known:
            if self.task is not None:  # a new phase: a new counter under its own label
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(label, total=known, completed=done)
        else:
            self.bar.update(self.task, completed=done)

    def close(self) -> None:
        """Remove the bar (idempotent); later calls draw nothing."""
        self.closed = True
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def stderr_progress(title: str) -> StderrProgress:
    """A :class:`StderrProgress` titled ``title``."""
    return StderrProgress(title)
