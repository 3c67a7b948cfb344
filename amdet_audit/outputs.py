"""Exclusive writes: every folder and file amdet-audit writes is new, never an existing one or a symlink.

Report folders are created with ``mkdir`` (never ``exist_ok``) and every file in them with ``O_CREAT | O_EXCL``
and ``O_NOFOLLOW``, so a file or symlink that appears after a check (planted by someone who can write to the
folder) is neither followed nor overwritten: the write fails with :class:`OutputError` instead.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from amdet_audit.errors import OutputError

__all__ = ["OutputError", "claim_out", "copy_new", "make_new_dir", "new_report_folder", "remove_if_empty",
           "write_new"]

MAX_NAME_TRIES = 1000
EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def describe_existing(path: Path) -> str:
    """What stands at ``path``: 'a symbolic link', 'a folder', 'a file' or 'something'."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "something"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a folder" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else "something"


def make_new_dir(path: Path, what: str = "output folder") -> Path:
    """Create the folder ``path`` (its parents as needed); it must not exist in any form, symlinks included."""
    path = Path(path)
    if path.parent != path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{what} {path}: cannot create its parent folder ({exc.strerror or exc})") from exc
    try:
        os.mkdir(path)
    except FileExistsError as exc:
        raise OutputError(f"{what} {path} already exists ({describe_existing(path)}); outputs never overwrite"
                          ) from exc
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot create it ({exc.strerror or exc})") from exc
    return path


def claim_out(out: Path) -> bool:
    """Make ``out`` this run's folder: created new, or an existing empty real folder (never a symlink).

    Returns whether the folder was created here (so a run that fails may remove it again).
    """
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        make_new_dir(out, "--out")
        return True
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot use it ({exc.strerror or exc})") from exc
    if stat.S_ISLNK(mode):
        raise OutputError(f"--out {out} is a symbolic link; give a new folder (outputs never follow links)")
    try:
        occupied = not stat.S_ISDIR(mode) or any(Path(out).iterdir())
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot list it ({exc.strerror or exc})") from exc
    if occupied:
        raise OutputError(f"--out {out} already exists and is not an empty folder; reports never overwrite")
    return False


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``-_.``), never empty, never a dot name."""
    cleaned = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "-" for ch in text)
    cleaned = cleaned.strip("-.")[:limit].strip("-.")
    return cleaned or "target"


def new_report_folder(target: str, where: Path = Path(".")) -> Path:
    """A new folder ``amdet-audit-<target>-<UTC time>`` in ``where``; ``-2``, ``-3``... when that name is taken."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"amdet-audit-{slug(target)}-{stamp}"
    for i in range(1, MAX_NAME_TRIES + 1):
        candidate = Path(where) / (base if i == 1 else f"{base}-{i}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"report folder {candidate}: cannot create it ({exc.strerror or exc})") from exc
        return candidate
    raise OutputError(f"no free report folder name for {base} after {MAX_NAME_TRIES} tries; pass --out")


def open_new(path: Path) -> int:
    """A descriptor of the new file ``path`` (created exclusively, no symlink followed); OutputError otherwise."""
    try:
        return os.open(path, EXCLUSIVE, 0o644)
    except FileExistsError as exc:
        raise OutputError(f"{path} already exists ({describe_existing(path)}); outputs never overwrite") from exc
    except OSError as exc:
        raise OutputError(f"{path}: cannot create it ({exc.strerror or exc})") from exc


def write_new(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to the new file ``path``; an existing file or symlink there is an error."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return fill_new(open_new(path), path, lambda handle: handle.write(payload))


def copy_new(source: Path, path: Path) -> Path:
    """Copy the regular file ``source`` to the new file ``path`` (exclusive, like :func:`write_new`)."""
    fd = open_new(path)

    def copy(handle: IO[bytes]) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle)

    return fill_new(fd, path, copy)


def fill_new(fd: int, path: Path, writer: Callable[[IO[bytes]], object]) -> Path:
    """Run ``writer`` on the new file open at ``fd``; when writing fails (a full disk, a quota, a source that
    cannot be read) the partial file is removed and OutputError names it."""
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
    except OSError as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise OutputError(f"{path}: could not be written ({exc.strerror or exc}); the partial file was removed"
                          ) from exc
    return Path(path)


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it is (still) an empty folder this run created; anything else stays."""
    try:
        os.rmdir(folder)
    except OSError:
        pass
