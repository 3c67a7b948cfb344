"""Files shipped beside the code: the report templates and the policies.

In a built wheel they live in ``amdet_audit/_bundled/``; in a source checkout at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def bundled(kind: str) -> Path:
    """The ``templates`` or ``policies`` folder."""
    for folder in (PACKAGE / "_bundled" / kind, PACKAGE.parent / kind):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"the {kind} folder is missing from this installation")
