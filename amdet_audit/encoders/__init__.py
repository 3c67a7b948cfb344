"""Text encoders behind one Adapter protocol, loaded from local files without running their code.

Importing the package imports no torch: :mod:`amdet_audit.encoders.consumers` (what each pipeline reads) is
used where no model is loaded (cache keys, file-checks-only audits); the rest loads on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Adapter", "EncoderOutput", "TextBatch", "load_component"]


def __getattr__(name: str) -> Any:
    """``load_component`` and the Adapter types, imported on first use (they import torch)."""
    if name == "load_component":
        from amdet_audit.encoders.load import load_component

        return load_component
    if name in ("Adapter", "EncoderOutput", "TextBatch"):
        from amdet_audit.encoders import base

        return getattr(base, name)
    raise AttributeError(f"module 'amdet_audit.encoders' has no attribute {name!r}")
