"""Progress on stderr: one bar, labelled by phase, gone before the verdict; a waiting line for a busy build."""

from __future__ import annotations

import fcntl
import re
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


@pytest.mark.slow
def test_a_real_scan_on_a_terminal_shows_phases_and_clears_its_bar(tmp_path: Path) -> None:
    """stderr on a pseudo-terminal, as a user sees it: labelled phases, no '0/None', the bar erased at the end."""
    import os
    import pty
    import subprocess

    primary, secondary = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # read while the scan runs: a full terminal buffer would block its writes
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    done = subprocess.run([sys.executable, "-m", "amdet_audit", "scan", "canary:backdoored", "--no-cache",
                           "--out", str(tmp_path / "r")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=secondary, env=env, timeout=280)
    os.close(secondary)
    reader.join(timeout=10)
    os.close(primary)
    raw = b"".join(chunks).decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert done.returncode == 1, text[-2000:]
    assert "scan model: inverting pseudo-trigger" in text  # the component names the phase
    assert "model: trying real-token triggers" in text  # the next phase under its own label
    over = [m.group(0) for m in re.finditer(r"(\d+)/(\d+)", text) if int(m.group(1)) > int(m.group(2))]
    assert "None" not in text and not over, over  # no "0/None", no count beyond its total
    assert raw.endswith("\x1b[2K") and "\x1b[?25h" in raw[-40:], repr(raw[-200:])  # the bar erased at the end
