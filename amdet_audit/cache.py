"""Where amdet-audit keeps what it builds or computes once (canary encoders, later scan results)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """``$AMDET_AUDIT_CACHE``, else ``$XDG_CACHE_HOME/amdet-audit``, else ``~/.cache/amdet-audit`` (read per call)."""
    if explicit := os.environ.get("AMDET_AUDIT_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amdet-audit"


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file) while building something other processes may also want.

    On systems without ``fcntl`` the lock is a no-op; builds stay safe (temp folder plus rename), only not
    deduplicated.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
