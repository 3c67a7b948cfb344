"""Progress reporting: callbacks for library code, a rich bar on stderr for the CLI."""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable

ProgressCallback = Callable[[int, int, str], None]


def stderr_progress(title: str) -> ProgressCallback:
    """A callback ``(done, total, label)`` that draws a rich progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return lambda done, total, label: None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"{title} [dim]{{task.description}}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    bar = Progress(*columns, console=Console(stderr=True), transient=True)
    task = bar.add_task("", total=None)
    started = False

    def update(done: int, total: int, label: str) -> None:
        nonlocal started
        if not started:
            bar.start()
            atexit.register(bar.stop)
            started = True
        bar.update(task, completed=done, total=total, description=label)
        if done >= total:
            bar.stop()

    return update
