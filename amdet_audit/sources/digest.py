"""File digests for provenance."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from amdet_audit.sources.model import FileRecord
from amdet_audit.sources.safe_files import open_regular

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a regular file (anything else is refused, never waited on), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path, root: Path) -> FileRecord:
    """A FileRecord for ``path``, named relative to ``root`` when it lies below it (absolute otherwise)."""
    try:  # name by the path as given: hub cache snapshots are symlinks into a blob store
        name = path.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        name = str(path.absolute())
    return FileRecord(path=name, size=path.stat().st_size, sha256=sha256_file(path))
