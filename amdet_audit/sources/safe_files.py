"""Reading files of an untrusted target: regular files inside the target only, size- and depth-capped, never blocking.

A model folder is attacker-controlled input. Every file the tool reads from it goes through this module:

* containment: the path as written lies inside the target folder, and so does the file it resolves to (a symlink
  may point elsewhere inside the folder, or, for a hub snapshot, into that repo's blob store: ``link_roots``);
* file type: the path is stat'ed before it is opened and anything but a regular file (a FIFO, a device, a socket,
  a folder) is refused; the file is then opened with ``O_NONBLOCK`` and checked again on the open descriptor, so a
  file swapped for a FIFO in between cannot block the read either;
* size and nesting: JSON and YAML documents are capped in bytes and in nesting depth before and after parsing.

Every refusal is an :class:`~amdet_audit.errors.AmdetError` whose message names the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amdet_audit.errors import AmdetError, ConfigFileError, UnsafeFileError, WeightsError

MAX_CONFIG_BYTES = 1 << 20  # config.json, model_index.json, tokenizer_config.json, policies
MAX_TOKENIZER_BYTES = 64 << 20  # tokenizer.json, vocab.json, merges.txt, vocab.txt
MAX_DEPTH = 64  # nesting of JSON / YAML containers
MAX_HEADER_BYTES = 100_000_000  # a safetensors header (the safetensors library's own limit)
MAX_WALK_ENTRIES = 200_000  # files and folders listed under one target
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
UNREADABLE = "not a readable safetensors file"
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symlink"}


def kind_of(mode: int) -> str:
    """'a FIFO', 'a folder'... for a stat mode that is not a regular file."""
    return FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def is_plain_name(name: str) -> bool:
    """True for a single folder or file name: no separators, not ``.`` or ``..``, not absolute, not hidden."""
    return bool(PLAIN_NAME.match(name)) and name not in (".", "..") and ".." not in name


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` (both made absolute and normalised, symlinks not followed)."""
    return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))


def contained(path: Path, root: Path, link_roots: tuple[Path, ...] = ()) -> Path:
    """The real path of ``path`` after checking that it is written inside ``root`` and resolves inside ``root``
    (or inside one of ``link_roots``). UnsafeFileError names the file otherwise."""
    allowed = [Path(os.path.realpath(r)) for r in (root, *link_roots)]
    if not (inside(path, root) or inside(Path(os.path.realpath(path.parent), path.name), allowed[0])):
        raise UnsafeFileError(f"{path}: outside the target folder {root}")
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(a) for a in allowed):
        raise UnsafeFileError(f"{path}: a symlink that leads outside the target folder; refused")
    return real


def check_regular(path: Path, root: Path | None = None, link_roots: tuple[Path, ...] = ()) -> os.stat_result:
    """stat ``path`` (following symlinks, contained in ``root`` when given) and refuse anything but a regular file.

    Raises:
        UnsafeFileError: outside the folder, or a FIFO, device, socket or folder.
        FileNotFoundError: the path does not exist (a plain OSError, for callers that treat absence themselves).
    """
    real = contained(path, root, link_roots) if root is not None else path
    try:
        info = os.stat(real)
    except FileNotFoundError:
        raise
    except OSError as err:  # permission denied, a symlink loop, a name too long...
        raise UnsafeFileError(f"{path}: cannot be read ({err.strerror or err})") from err
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(f"{path}: {kind_of(info.st_mode)}, not a regular file; refused")
    return info


def open_regular(path: Path, root: Path | None = None, link_roots: tuple[Path, ...] = ()) -> int:
    """A read-only descriptor on a regular file, opened without blocking (see :func:`check_regular`)."""
    check_regular(path, root, link_roots)
    real = contained(path, root, link_roots) if root is not None else path
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # swapped between the stat and the open
        os.close(fd)
        raise UnsafeFileError(f"{path}: {kind_of(info.st_mode)}, not a regular file; refused")
    os.set_blocking(fd, True)
    return fd


def read_bytes(
    path: Path,
    *,
    limit: int,
    root: Path | None = None,
    link_roots: tuple[Path, ...] = (),
    error: type[AmdetError] = ConfigFileError,
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``error`` (or UnsafeFileError) names the file."""
    try:
        fd = open_regular(path, root, link_roots)
    except FileNotFoundError as err:
        raise error(f"{path}: not found") from err
    except AmdetError:
        raise
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from err
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        if size > limit:
            raise error(f"{path}: {size} bytes, more than the {limit} this file may have")
        try:  # sized to the file (a read of limit + 1 bytes would allocate that much up front)
            data = handle.read(size + 1)
            if len(data) > size:  # grew since the stat: read on, to the limit at most
                data += handle.read(limit + 1 - len(data))
        except OSError as err:
            raise error(f"{path}: cannot be read ({err.strerror or err})") from err
    if len(data) > limit:
        raise error(f"{path}: more than the {limit} bytes this file may have")
    return data


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """The container nesting depth of parsed JSON/YAML data, counted without recursion; stops past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list, tuple)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(data: bytes, path: Path, *, error: type[AmdetError] = ConfigFileError, depth: int = MAX_DEPTH) -> Any:
    """Parse UTF-8 JSON bytes; ``error`` names the file and what is wrong (syntax, encoding, depth, huge number)."""
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text") from err
    except RecursionError as err:
        raise error(f"{path}: JSON nested deeper than {depth} levels") from err
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise error(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from err
    if nesting_depth(value, depth) > depth:
        raise error(f"{path}: JSON nested deeper than {depth} levels")
    return value


def read_json(
    path: Path,
    *,
    root: Path | None = None,
    link_roots: tuple[Path, ...] = (),
    limit: int = MAX_CONFIG_BYTES,
    error: type[AmdetError] = ConfigFileError,
    want: type | tuple[type, ...] = dict,
) -> Any:
    """Read a JSON file of the target safely (:func:`read_bytes`, :func:`parse_json`) and check its top type."""
    value = parse_json(read_bytes(path, limit=limit, root=root, link_roots=link_roots, error=error), path, error=error)
    if not isinstance(value, want):
        names = {dict: "object", list: "array"}
        wanted = " or ".join(names.get(t, t.__name__) for t in (want if isinstance(want, tuple) else (want,)))
        raise error(f"{path}: expected a JSON {wanted}, found {type(value).__name__}")
    return value


def walk(root: Path, limit: int = MAX_WALK_ENTRIES, *, unreadable: list[Path] | None = None,
         skip: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Every entry under ``root`` (files, symlinks, special files), without following symlinked folders and
    without entering folders named in ``skip``.

    A folder that cannot be listed fails closed: it is appended to ``unreadable`` when a list is given (for the
    caller to report), else UnsafeFileError names it. UnsafeFileError also when the tree holds more than
    ``limit`` entries.
    """

    def refuse(err: OSError) -> None:
        folder = Path(err.filename) if err.filename else root
        if unreadable is None:
            raise UnsafeFileError(f"{folder}: cannot be listed ({err.strerror or err})") from err
        unreadable.append(folder)

    count = 0
    for folder, dirs, files in os.walk(root, onerror=refuse, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in skip or os.path.islink(os.path.join(folder, d)))
        for name in [*sorted(files), *(d for d in dirs if os.path.islink(os.path.join(folder, d)))]:
            count += 1
            if count > limit:
                raise UnsafeFileError(f"{root}: more than {limit} files; refused")
            yield Path(folder, name)


def safetensors_header(path: Path, root: Path | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """tensor name -> (dtype, shape) from a safetensors file's header, read without loading any tensor.

    Checks what a loader relies on: the header length and JSON, each entry's dtype, shape and data offsets, and
    that the offsets lie inside the file. WeightsError names the file otherwise.
    """
    header, data_bytes = _read_header(path, root)
    return {name: _tensor_entry(path, name, entry, data_bytes)
            for name, entry in header.items() if name != "__metadata__"}


def safetensors_metadata(path: Path, root: Path | None = None) -> dict[str, str]:
    """The string-to-string ``__metadata__`` of a safetensors file's header (empty when it has none);
    WeightsError when the header is unreadable or the metadata is not strings."""
    metadata = _read_header(path, root)[0].get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(f"{path}: {UNREADABLE} (__metadata__ is not a map of strings)")
    return metadata


def _read_header(path: Path, root: Path | None) -> tuple[dict[str, Any], int]:
    """(the parsed header, the size of the data after it) of a safetensors file; WeightsError when malformed."""
    with os.fdopen(_open_weights(path, root), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise WeightsError(f"{path}: {UNREADABLE} (bad header length)")
        try:
            header = parse_json(handle.read(length), path, error=WeightsError)
        except WeightsError as err:
            raise WeightsError(f"{path}: {UNREADABLE} (header: {str(err).removeprefix(f'{path}: ')})") from err
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: {UNREADABLE} (header is not a JSON object)")
    return header, size - 8 - length


def _open_weights(path: Path, root: Path | None) -> int:
    """open_regular for a weight file, its errors as WeightsError."""
    try:
        return open_regular(path, root)
    except AmdetError:
        raise
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: weight file not found") from err
    except OSError as err:
        raise WeightsError(f"{path}: cannot be read ({err.strerror or err})") from err


def _tensor_entry(path: Path, name: str, entry: Any, data_bytes: int) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of one header entry, checked; WeightsError names the tensor when malformed."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    ints = (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*shape, *offsets]))
    if (dtype not in DTYPE_BYTES or not ints or not offsets[0] <= offsets[1] <= data_bytes
            or math.prod(shape) * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]):
        raise WeightsError(f"{path}: {UNREADABLE} (corrupt or truncated entry for tensor {name[:80]!r})")
    return dtype, tuple(shape)


class Jail:
    """The folder a target's files must lie in, and the folders its symlinks may also lead into (a hub
    snapshot's blob store): the checks of this module bound to one target."""

    def __init__(self, root: Path, link_roots: tuple[Path, ...] = ()) -> None:
        self.root, self.link_roots = root, link_roots

    def contained(self, path: Path) -> Path:
        """See :func:`contained`."""
        return contained(path, self.root, self.link_roots)

    def regular(self, path: Path) -> os.stat_result:
        """See :func:`check_regular`."""
        return check_regular(path, self.root, self.link_roots)

    def json(self, path: Path, *, limit: int = MAX_CONFIG_BYTES, error: type[AmdetError] = ConfigFileError,
             want: type | tuple[type, ...] = dict) -> Any:
        """See :func:`read_json`."""
        return read_json(path, root=self.root, link_roots=self.link_roots, limit=limit, error=error, want=want)

    def check_folder(self, folder: Path) -> None:
        """A model or tokenizer folder a loader reads by name: it lies in the target, and each entry is a folder,
        a regular file, or a symlink to one of them inside the target. UnsafeFileError otherwise."""
        self.contained(folder)
        if not folder.is_dir():
            return
        try:
            entries = sorted(folder.iterdir())
        except OSError as err:
            raise UnsafeFileError(f"{folder}: cannot be listed ({err.strerror or err})") from err
        for entry in entries:
            if entry.is_symlink():
                if os.path.isdir(self.contained(entry)):
                    continue
            elif entry.is_dir():
                continue
            try:
                self.regular(entry)
            except FileNotFoundError:  # a dangling link inside the folder: nothing can be read through it
                continue


def hub_blob_store(folder: Path, levels: int = 8) -> tuple[Path, ...]:
    """The blob store of a Hugging Face cache snapshot that ``folder`` lies in (``<repo>/snapshots/<sha>/...``,
    whose files link to ``<repo>/blobs/<hash>``), as a one-element tuple; empty for any other folder."""
    absolute = Path(os.path.abspath(folder))
    for ancestor in [absolute, *absolute.parents][:levels]:
        if ancestor.parent.name == "snapshots" and (ancestor.parent.parent / "blobs").is_dir():
            return (ancestor.parent.parent / "blobs",)
    return ()
