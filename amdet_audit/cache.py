"""Where amdet-audit keeps what it builds or computes once (canary encoders, later scan results)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$AMDET_AUDIT_CACHE``, else ``$XDG_CACHE_HOME/amdet-audit``, else ``~/.cache/amdet-audit`` (read per call)."""
    if explicit := os.environ.get("AMDET_AUDIT_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amdet-audit"
