"""Progress on stderr: one bar, labelled by phase, gone before the verdict; a waiting line for a busy build."""

from __future__ import annotations

import fcntl
import sys
import threading
import time
from pathlib import Path

import pytest

from amdet_audit.cache import build_lock
from amdet_audit.progress import phase, stderr_progress


def test_bar_labels_phases_and_is_gone_after_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    labels: list[str] = []
    inner = phase(lambda done, total, label: labels.append(label), "reference baseline")
    inner(1, 10, "inverting pseudo-trigger")
    assert labels == ["reference baseline: inverting pseudo-trigger"]
    bar = stderr_progress("scan")
    bar(0, 0, "trying real-token triggers")  # an unknown total is shown as such, never "0/None" or done
    assert bar.bar is not None and bar.bar.tasks[0].total is None and not bar.bar.tasks[0].finished
    bar(3, 120, "model: inverting pseudo-trigger")
    assert bar.bar.tasks[0].description == "model: inverting pseudo-trigger" and bar.bar.tasks[0].total == 120
    bar.close()
    assert bar.bar is None
    bar(4, 120, "late")  # after close nothing is drawn again
    assert bar.bar is None


def test_a_busy_build_lock_says_it_waits(tmp_path: Path) -> None:
    lock = tmp_path / ".canary.lock"
    waited: list[float] = []
    with open(lock, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)

        def build() -> None:
            with build_lock(lock, on_wait=lambda: waited.append(time.monotonic())):
                pass

        worker = threading.Thread(target=build)
        worker.start()
        time.sleep(0.3)
        assert len(waited) == 1 and worker.is_alive()  # told, and still waiting for the holder
        fcntl.flock(holder, fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert not worker.is_alive()
    with build_lock(lock, on_wait=lambda: waited.append(0.0)):  # free: no waiting line
        pass
    assert len(waited) == 1
