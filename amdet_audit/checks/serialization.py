"""The serialization check: pickle content in the target, and what unpickling it would import.

Import discovery is picklescan's opcode walk (GLOBAL, INST, STACK_GLOBAL with memo resolution, every pickle of a
stream); this module decides which files and archive members hold pickles, bounds the work, and grades what is
found. It fails closed: a stream that cannot be read or parsed to its end, or that exceeds the analysis budget,
is a high finding; an import outside the known torch/numpy/collections checkpoint globals is high; an import
that can run code (os, subprocess, builtins.eval, runpy...) is critical. Nothing is ever unpickled.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import io
import lzma
import os
import pickletools
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO

from amdet_audit.checks.base import CheckContext, CheckResult, Finding
from amdet_audit.errors import UnsafeFileError, one_line
from amdet_audit.sources import safe_files
from amdet_audit.sources.model import PICKLE_SUFFIXES


class PicklescanMissing(Exception):
    """Stands in for picklescan's GenOpsError when picklescan cannot be imported (never raised)."""

    globals: tuple = ()


try:  # picklescan's opcode walk is private API: a release that renames it disables this check, nothing else
    from picklescan.relaxed_zipfile import RelaxedZipFile
    from picklescan.scanner import GenOpsError, _list_globals, _unsafe_globals
    PICKLESCAN_PROBLEM: str | None = None
except Exception as import_error:  # ImportError for a renamed module or name; anything a broken install raises
    RelaxedZipFile, GenOpsError, _list_globals, _unsafe_globals = None, PicklescanMissing, None, {}
    PICKLESCAN_PROBLEM = ("picklescan's opcode walk (picklescan.scanner._list_globals, _unsafe_globals, GenOpsError)"
                          f" could not be imported ({type(import_error).__name__}: "
                          f"{' '.join(str(import_error).split())[:160]}); install picklescan>=1.0,<2")

#: suffixes whose files a consumer may unpickle (torch.load, pickle.load, joblib.load, np.load(allow_pickle=True))
PICKLE_LIKE_SUFFIXES = (*PICKLE_SUFFIXES, ".joblib", ".npy", ".npz", ".dat", ".data", ".pkl.gz")
#: bytes of one pickle stream that are parsed at most (a checkpoint's pickle is kilobytes; its tensors lie outside)
MAX_STREAM_BYTES = 128 * 1024 * 1024
#: bytes of pickle content read per file and per check run, all streams and both passes together
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_CHECK_BYTES = 2048 * 1024 * 1024
#: reads per file, both passes (each opcode takes at least one): bounds the opcode list kept in memory while parsing
MAX_FILE_READS = 4_000_000
MAX_CHECK_READS = 20_000_000
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_DEPTH = 2
MAX_FILES = 20_000
MAX_NPY_HEADER = 64 * 1024
HEAD_BYTES = 512
#: the first pickle of a legacy (non-zip) torch.save file holds this number; four more pickles follow, then raw data
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PICKLES = 5
COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"),
                     (b"\x04\x22\x4d\x18", "lz4"), (b"\x28\xb5\x2f\xfd", "zstd"))

TORCH_DTYPES = frozenset({
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex32", "complex64", "cfloat",
    "complex128", "cdouble", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "short", "int32", "int",
    "int64", "long", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"})
#: (module, name) a torch / numpy state dict or checkpoint legitimately imports when unpickled
SAFE_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    *(("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                    "_rebuild_parameter", "_rebuild_parameter_with_state", "_rebuild_qtensor",
                                    "_rebuild_sparse_tensor", "_rebuild_meta_tensor_no_storage",
                                    "_rebuild_nested_tensor", "_rebuild_device_tensor_from_cpu_tensor")),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch.nn.parameter", "Parameter"),
    ("torch.serialization", "_get_layout"),
    *(("torch", n) for n in ("Size", "device", "Tensor", "strided", "sparse_coo", "sparse_csr", "sparse_csc",
                             "sparse_bsr", "sparse_bsc", "_mkldnn", "contiguous_format", "channels_last",
                             "channels_last_3d", "preserve_format", "per_tensor_affine", "per_channel_affine",
                             "per_tensor_symmetric", "per_channel_symmetric", *TORCH_DTYPES)),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "slice", "complex", "bytearray",
                                                             "bytes", "tuple", "list", "dict", "int", "float",
                                                             "bool", "str", "range")),
})
#: modules any of whose names can run code, touch files or the network, or unpickle more data
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "runpy", "importlib", "pickle", "_pickle", "cPickle", "marshal",
    "shutil", "socket", "ctypes", "_ctypes", "code", "codeop", "pty", "commands", "multiprocessing", "webbrowser",
    "pip", "setuptools", "distutils", "asyncio", "pydoc", "timeit", "cProfile", "profile", "pdb", "bdb", "trace",
    "doctest", "venv", "ensurepip", "urllib", "http", "httplib", "requests", "ftplib", "smtplib", "telnetlib",
    "types", "cloudpickle", "dill", "signal", "_posixsubprocess", "tempfile", "glob", "io", "_io",
    "pathlib", "platform", "ssl", "uuid", "imaplib", "idlelib", "lib2to3", "pkgutil", "zipimport", "__main__",
    "torch.hub", "torch.serialization", "torch._inductor", "torch.utils.cpp_extension", "torch.package",
    "torch.jit", "torch._dynamo", "numpy.f2py", "numpy.testing", "numpy.distutils", "numpy.lib.npyio",
})
#: single names elsewhere that reach code: a loader of more pickles, callables that apply other callables
DANGEROUS_GLOBALS = frozenset({("torch", "load"), ("numpy", "load"), ("functools", "partial"),
                               ("operator", "attrgetter"), ("operator", "methodcaller"), ("_operator", "attrgetter"),
                               ("_operator", "methodcaller")})
#: names of the builtins module that run code or reach arbitrary attributes
DANGEROUS_BUILTINS = frozenset({
    "eval", "exec", "execfile", "compile", "getattr", "setattr", "delattr", "__import__", "open", "globals",
    "locals", "vars", "breakpoint", "input", "apply", "reload",
})
BUILTIN_MODULES = ("builtins", "__builtin__", "__builtins__")
#: picklescan's sentinel for a STACK_GLOBAL argument it could not resolve statically
UNRESOLVED = "unknown"


class BudgetExceeded(Exception):
    """Raised inside a stream read when the analysis budget would be exceeded."""


@dataclass
class Budget:
    """Bytes and reads left for parsing pickle content (one per file, drawing on one per check run)."""

    bytes_left: int
    reads_left: int = MAX_FILE_READS
    exceeded: str | None = None

    def share(self) -> Budget:
        """A per-file budget drawn from this check-wide one; hand it back with :meth:`settle`."""
        return Budget(min(MAX_FILE_BYTES, max(self.bytes_left, 0)), min(MAX_FILE_READS, max(self.reads_left, 0)))

    def settle(self, share: Budget) -> None:
        """Charge what ``share`` (from :meth:`share`, untouched since but for its use) spent."""
        granted = self.share()
        self.bytes_left -= granted.bytes_left - max(share.bytes_left, 0)
        self.reads_left -= granted.reads_left - max(share.reads_left, 0)

    def take(self, count: int) -> None:
        """Account for one read of ``count`` bytes; raise BudgetExceeded when the budget is spent."""
        self.reads_left -= 1
        self.bytes_left -= count
        if self.reads_left < 0:
            self.exceeded = "more opcodes than the analysis budget"
        elif self.bytes_left < 0:
            self.exceeded = "more pickle content than the analysis budget"
        if self.exceeded:
            raise BudgetExceeded(self.exceeded)


class BoundedStream:
    """A read-only view of ``size`` bytes of ``raw`` from its current position, capped and accounted.

    Reads never ask ``raw`` for more than the bytes that remain (a length field of 2^60 allocates nothing); a read
    past ``MAX_STREAM_BYTES`` or past the budget raises BudgetExceeded and sets ``exceeded``.
    """

    def __init__(self, raw: IO[bytes], size: int, budget: Budget) -> None:
        self.raw, self.budget, self.start, self.pos = raw, budget, raw.tell(), 0
        self.end = min(size, MAX_STREAM_BYTES)
        self.over = size > MAX_STREAM_BYTES
        self.exceeded: str | None = None

    def _room(self, wanted: int) -> int:
        """How many of ``wanted`` bytes may be asked of ``raw`` now."""
        if wanted > self.end - self.pos:
            if self.over:
                self._exceed(f"a pickle stream longer than {MAX_STREAM_BYTES // 2**20} MiB")
            wanted = self.end - self.pos
        return wanted

    def _exceed(self, why: str) -> None:
        """Record why the stream was not read to its end, and stop the parse."""
        self.exceeded = why
        raise BudgetExceeded(why)

    def _charge(self, data: bytes) -> bytes:
        """Account for bytes read (after reading: a text opcode's line is charged for its length only)."""
        self.pos += len(data)
        try:
            self.budget.take(len(data))
        except BudgetExceeded:
            self._exceed(self.budget.exceeded or "over budget")
        return data

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (all that remain when n is negative)."""
        return self._charge(self.raw.read(self._room(self.end - self.pos if n is None or n < 0 else n)))

    def readline(self, limit: int = -1) -> bytes:
        """One line, ending at the stream's end at most."""
        line = self._charge(self.raw.readline(self._room(self.end - self.pos if limit is None or limit < 0
                                                         else limit)))
        if self.over and self.pos >= self.end and not line.endswith(b"\n"):
            self._exceed(f"a pickle stream longer than {MAX_STREAM_BYTES // 2**20} MiB")
        return line

    def tell(self) -> int:
        """Position in the stream."""
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move within the stream (whence 0: from its start, 1: from the current position)."""
        target = offset if whence == 0 else self.pos + offset if whence == 1 else self.end + offset
        self.pos = max(0, min(target, self.end))
        self.raw.seek(self.start + self.pos)
        return self.pos

    def limit(self, end: int) -> None:
        """Let the stream end at ``end`` (a legacy torch file's pickles end where its raw tensor data begins)."""
        self.end, self.over = min(end, self.end), False


@dataclass
class StreamReport:
    """What one pickle stream (a file, or an archive member) imports, and why it was not fully analysed."""

    label: str
    imports: set[tuple[str, str]] = field(default_factory=set)
    problem: str | None = None
    over_budget: bool = False


@dataclass
class FileAnalysis:
    """The pickle streams found in one file; ``is_pickle`` when it holds pickle content or has a pickle suffix."""

    streams: list[StreamReport] = field(default_factory=list)
    is_pickle: bool = False
    note: str | None = None

    @property
    def dangerous(self) -> list[tuple[str, str]]:
        """(stream, module.name) of imports that can run code."""
        return [(s.label, g) for s in self.streams for g in sorted(dotted(i) for i in s.imports
                                                                  if classify(*i) == "dangerous")]

    @property
    def unknown(self) -> list[tuple[str, str]]:
        """(stream, module.name) of imports that are neither known-safe nor known-dangerous (or unresolved)."""
        return [(s.label, g) for s in self.streams for g in sorted(dotted(i) for i in s.imports
                                                                  if classify(*i) == "unknown")]

    @property
    def problems(self) -> list[tuple[str, str]]:
        """(stream, why) of streams that could not be fully analysed."""
        return [(s.label, s.problem) for s in self.streams if s.problem]


def dotted(item: tuple[str, str]) -> str:
    """``module.name`` of an import, with unresolved parts shown as ``<unresolved>``."""
    return ".".join("<unresolved>" if part == UNRESOLVED else part for part in item)


def picklescan_flags(module: str, name: str) -> bool:
    """Whether picklescan's own deny list marks ``module.name`` dangerous (the module or a parent with '*')."""
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        names = _unsafe_globals.get(".".join(parts[:depth]))
        if names == "*":
            return True
        if names is not None and depth == len(parts):
            listed = {names} if isinstance(names, str) else set(names)
            if name in listed or name.split(".")[0] in listed:
                return True
    return False


def classify(module: str, name: str) -> str:
    """``safe``, ``dangerous`` or ``unknown`` for one import a pickle makes."""
    if UNRESOLVED in (module, name):
        return "unknown"
    if (module, name) in SAFE_GLOBALS or (module == "torch" and name.endswith("Storage") and name.isidentifier()):
        return "safe"
    parts = module.split(".")
    if any(".".join(parts[:depth]) in DANGEROUS_MODULES for depth in range(1, len(parts) + 1)):
        return "dangerous"
    if picklescan_flags(module, name) or (module, name) in DANGEROUS_GLOBALS:
        return "dangerous"
    if module in BUILTIN_MODULES and name.split(".")[0] in DANGEROUS_BUILTINS:
        return "dangerous"
    return "unknown"


def sniff(head: bytes, name: str) -> str | None:
    """What a file or member holds by content, else by suffix: zip, npy, tar, pickle, not-pickle, or None."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return "pickle"
    if not named(name):
        return None
    if head[257:262] == b"ustar":
        return "tar"
    if compression(head):
        return "compressed"  # joblib.load and friends decompress, then unpickle
    if not head or chr(head[0]) not in pickletools.code2op:
        return "not-pickle"  # unpickling fails on its first byte: nothing can run
    return "pickle"


def compression(head: bytes) -> str | None:
    """The compression a file's first bytes announce (gzip, bz2, xz, lzma, zlib, lz4, zstd), else None."""
    for magic, name in COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    return None


def decompressed(raw: IO[bytes], method: str) -> tuple[bytes, bool]:
    """(the first MAX_STREAM_BYTES decompressed bytes, whether there were more) of a compressed stream."""
    if method in ("gzip", "bz2", "xz", "lzma"):
        opener = {"gzip": lambda: gzip.GzipFile(fileobj=raw), "bz2": lambda: bz2.BZ2File(raw),
                  "xz": lambda: lzma.LZMAFile(raw), "lzma": lambda: lzma.LZMAFile(raw)}[method]
        with opener() as stream:
            data = stream.read(MAX_STREAM_BYTES + 1)
        return data[:MAX_STREAM_BYTES], len(data) > MAX_STREAM_BYTES
    if method != "zlib":
        raise ValueError(f"compressed with {method}, which this check cannot read")
    inflater, parts, size = zlib.decompressobj(), [], 0
    while size <= MAX_STREAM_BYTES and not inflater.eof:
        chunk = inflater.unconsumed_tail or raw.read(1 << 20)
        if not chunk:
            break
        parts.append(inflater.decompress(chunk, MAX_STREAM_BYTES + 1 - size))
        size += len(parts[-1])
    data = b"".join(parts)
    return data[:MAX_STREAM_BYTES], size > MAX_STREAM_BYTES


def scan_compressed(raw: IO[bytes], label: str, budget: Budget) -> list[StreamReport]:
    """The pickle inside a compressed file (decompressed in memory, at most MAX_STREAM_BYTES)."""
    try:
        start = raw.tell()
        method = compression(raw.read(HEAD_BYTES)) or "unknown"
        raw.seek(start)
        data, more = decompressed(raw, method)
    except Exception as err:  # corrupt archives raise many types
        return [StreamReport(label, problem=f"compressed content that cannot be read ({one_line(err)})")]
    report = scan_pickle(io.BytesIO(data), len(data), label, budget)
    if more:
        report.problem = f"decompressed content longer than {MAX_STREAM_BYTES // 2**20} MiB: not parsed to its end"
        report.over_budget = True
    return [report]


def survey(stream: BoundedStream) -> tuple[int | None, set[tuple[str, str]]]:
    """One opcode pass over a stream's pickles, before picklescan's: (where the pickles of a legacy torch.save
    file end, its raw tensor bytes following, or None if not one; imports through the copyreg extension registry
    (EXT1/2/4 opcodes), which cannot be resolved from the stream)."""
    extensions: set[tuple[str, str]] = set()
    values: list[object] = []
    try:
        for count in range(1, MAX_FILE_READS):
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("EXT1", "EXT2", "EXT4"):
                    extensions.add(("<copyreg extension registry>", f"code {arg}"))
                elif count == 1 and op.name not in ("PROTO", "FRAME", "STOP") and len(values) < 2:
                    values.append(arg)
            if values == [TORCH_LEGACY_MAGIC] and count == TORCH_LEGACY_PICKLES:
                return stream.tell(), extensions
            if not stream.read(1):
                break
            stream.seek(-1, 1)
    except Exception:  # a broken stream, or over budget: the picklescan pass reports it
        pass
    return None, extensions


def scan_pickle(raw: IO[bytes], size: int, label: str, budget: Budget) -> StreamReport:
    """The imports of every pickle in ``size`` bytes of ``raw`` (from its current position), via picklescan."""
    stream = BoundedStream(raw, size, budget)
    report, extensions = StreamReport(label), set()
    try:
        end, extensions = survey(stream)
        stream.seek(0)
        if end is not None:
            stream.limit(end)
        report.imports = extensions | set(_list_globals(stream, multiple_pickles=True))
    except GenOpsError as err:
        report.imports = extensions | set(err.globals or ())
        report.problem = f"unparseable pickle ({one_line(err)})"
    except Exception as err:  # a read error of the container (CRC, decryption) or an opcode picklescan rejects
        report.imports, report.problem = extensions, one_line(err)
    if stream.exceeded:
        report.problem, report.over_budget = f"{stream.exceeded}: not parsed to its end", True
    report.imports = {(str(m), str(n)) for m, n in report.imports}
    return report


def npy_object_header(raw: IO[bytes]) -> tuple[bool, int]:
    """(holds objects, header length) of a .npy stream positioned at its start; raises ValueError if malformed."""
    magic = raw.read(8)
    if len(magic) < 8:
        raise ValueError("truncated .npy header")
    if magic[6] == 1:
        size_bytes, encoding = 2, "latin1"
    elif magic[6] in (2, 3):
        size_bytes, encoding = 4, "latin1" if magic[6] == 2 else "utf-8"
    else:
        raise ValueError(f"unsupported .npy format version {magic[6]}")
    (length,) = struct.unpack("<H" if size_bytes == 2 else "<I", raw.read(size_bytes).ljust(size_bytes, b"\0"))
    if length > MAX_NPY_HEADER:
        raise ValueError(f".npy header of {length} bytes")
    text = raw.read(length)
    if len(text) < length:
        raise ValueError("truncated .npy header")
    try:
        header = ast.literal_eval(text.decode(encoding))
    except Exception as err:  # literal_eval raises several types on hostile text; none may escape
        raise ValueError(f"unreadable .npy header ({one_line(err)})") from err
    if not isinstance(header, dict) or "descr" not in header:
        raise ValueError(".npy header without a dtype")
    return "O" in repr(header["descr"]), 8 + size_bytes + length


def scan_npy(raw: IO[bytes], size: int, label: str, budget: Budget) -> list[StreamReport]:
    """The pickle inside a .npy object array (none for a plain numeric array)."""
    try:
        objects, header = npy_object_header(raw)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as err:
        return [StreamReport(label, problem=one_line(err))]
    return [scan_pickle(raw, max(0, size - header), label, budget)] if objects else []


def scan_content(raw: IO[bytes], size: int, label: str, kind: str, budget: Budget, depth: int) -> list[StreamReport]:
    """Dispatch one file or member, positioned at its start, by its sniffed kind."""
    if kind == "zip":
        return scan_zip(raw, label, budget, depth)
    if kind == "npy":
        return scan_npy(raw, size, label, budget)
    if kind == "compressed":
        return scan_compressed(raw, label, budget)
    if kind == "tar":
        return [StreamReport(label, problem="a tar archive (the legacy torch format): its pickles are not analysed")]
    if kind == "pickle":
        report = scan_pickle(raw, size, label, budget)
        if report.problem and not report.imports and not report.over_budget and not named(label):
            return []  # found by magic bytes only and no pickle: raw data (a tensor storage starting 0x80 0x02...)
        return [report]
    return []


def named(label: str) -> bool:
    """Whether a file or member name has a suffix that a pickle loader is used on."""
    return label.lower().endswith(PICKLE_LIKE_SUFFIXES)


def relaxed_imports(raw: IO[bytes], info: zipfile.ZipInfo, label: str, budget: Budget) -> list[StreamReport]:
    """Best effort for a member the strict reader refused: read it as torch does (flags, names and CRC ignored)."""
    try:
        with RelaxedZipFile(raw) as archive, archive.open(info) as member:
            report = scan_pickle(member, info.file_size, label, budget)
    except Exception:  # the refusal is already reported; this pass only adds what it can read
        return []
    return [StreamReport(label, imports=report.imports)] if report.imports else []


def scan_zip(raw: IO[bytes], label: str, budget: Budget, depth: int) -> list[StreamReport]:
    """Every member of a zip that holds pickle content; a member that cannot be read is reported, never skipped."""
    try:
        archive = zipfile.ZipFile(raw)
        infos = archive.infolist()
    except Exception as err:  # truncated or malformed archives raise many types
        return [StreamReport(label, problem=f"unreadable zip archive ({one_line(err)})")]
    reports: list[StreamReport] = []
    if len(infos) > MAX_ZIP_MEMBERS:
        reports.append(StreamReport(label, problem=f"{len(infos)} zip members: only {MAX_ZIP_MEMBERS} analysed"))
    with archive:
        for info in infos[:MAX_ZIP_MEMBERS]:
            if info.is_dir():
                continue
            name = f"{label}:{info.filename}"
            try:
                with archive.open(info) as member:
                    kind = sniff(member.read(HEAD_BYTES), info.filename)
                if kind == "zip" and depth >= MAX_ZIP_DEPTH:
                    reports.append(StreamReport(name, problem=f"zip archives nested deeper than {MAX_ZIP_DEPTH}"))
                elif kind is not None:
                    with archive.open(info) as member:
                        reports += scan_content(member, info.file_size, name, kind, budget, depth + 1)
            except Exception as err:  # encrypted, patched, CRC or header mismatch, bad compression...
                reports.append(StreamReport(name, problem=f"unreadable zip member ({one_line(err)})"))
                reports += relaxed_imports(raw, info, name, budget)
    return reports


def open_file(path: Path, jail: safe_files.Jail | None = None) -> IO[bytes]:
    """``path`` opened by :func:`safe_files.open_regular` (a regular file, inside ``jail`` when given, never
    blocking); OSError (UnsafeFileError is one) otherwise."""
    root, links = (jail.root, jail.link_roots) if jail is not None else (None, ())
    return os.fdopen(safe_files.open_regular(path, root, links), "rb")


def analyse_file(path: Path, label: str | None = None, budget: Budget | None = None,
                 jail: safe_files.Jail | None = None) -> FileAnalysis:
    """The pickle content of one file (detected by suffix and by magic bytes) and what it imports."""
    label = label or path.name
    budget = budget or Budget(MAX_FILE_BYTES)
    suffixed = path.name.lower().endswith(PICKLE_SUFFIXES)
    try:
        with open_file(path, jail) as handle:
            size = os.fstat(handle.fileno()).st_size
            kind = sniff(handle.read(HEAD_BYTES), path.name)
            handle.seek(0)
            streams = scan_content(handle, size, label, kind, budget, 0) if kind else []
    except OSError as err:
        return FileAnalysis([StreamReport(label, problem=f"unreadable ({one_line(err)})")], is_pickle=suffixed)
    note = "its first byte is no pickle opcode, so unpickling it fails at once" if kind == "not-pickle" else None
    return FileAnalysis(streams, is_pickle=suffixed or bool(streams), note=note)


def refusal_reason(path: Path) -> str | None:
    """Why a pickle weight file must not be loaded even with --allow-pickle (None when it imports only safe globals).

    The reason names the first dangerous import, unknown import or analysis problem found.
    """
    if PICKLESCAN_PROBLEM is not None:
        return f"could not be analysed: {PICKLESCAN_PROBLEM}"
    analysis = analyse_file(path)
    for items, says in ((analysis.dangerous, "imports {}, which can run code"),
                        (analysis.unknown, "imports {}, not a known-safe checkpoint global"),
                        (analysis.problems, "could not be fully analysed: {}")):
        if items:
            stream, what = items[0]
            where = f" (in {stream})" if stream != path.name else ""
            return says.format(what) + where
    return None


def target_files(context: CheckContext) -> list[str]:
    """Every file of the target, relative to its root: those used and those present but not used."""
    return sorted({f.path for f in context.target.files} | set(context.target.other_files))


def candidate_files(context: CheckContext) -> tuple[list[str], bool, list[str]]:
    """Files to examine, whether the folder held more than MAX_FILES (the rest not examined), and the folders
    that could not be listed (relative POSIX paths)."""
    names = set(target_files(context))
    root = context.target.root
    lora_file = context.target.kind == "lora" and Path(context.target.input).suffix == ".safetensors"
    if context.target.kind == "file" or lora_file or not root.is_dir():  # a file alone: not its folder's others
        return sorted(names), False, []
    unreadable: list[Path] = []
    walked = [p.relative_to(root).as_posix()
              for p in islice(safe_files.walk(root, MAX_FILES + 1, unreadable=unreadable, skip=frozenset({".git"})),
                              MAX_FILES + 1)]
    folders = sorted({Path(os.path.abspath(f)).relative_to(os.path.abspath(root)).as_posix() for f in unreadable})
    return sorted(names | set(walked[:MAX_FILES])), len(walked) > MAX_FILES, folders


def some(items: list[tuple[str, str]], limit: int = 5) -> str:
    """'a, b, c and 4 more' of the second elements, deduplicated."""
    names = sorted({what for _, what in items})
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def file_findings(analysis: FileAnalysis, rel: str, used: bool) -> list[Finding]:
    """The findings for one analysed file."""
    if not analysis.is_pickle:
        return []
    note = f" ({analysis.note})" if analysis.note else ""
    findings = [Finding("serialization.pickle-file", "high" if used else "medium",
                        f"pickle file {'loaded (--allow-pickle)' if used else 'present (not loaded by this audit)'}: "
                        f"unpickling can run arbitrary code; prefer safetensors{note}", rel)]
    streams = sorted({s for s, _ in analysis.dangerous})
    if streams:
        findings.append(Finding("serialization.unsafe-import", "critical",
                                f"{', '.join(streams[:3])} imports {some(analysis.dangerous)} when unpickled "
                                "(can run code)", rel))
    if analysis.unknown:
        findings.append(Finding("serialization.unknown-import", "high",
                                f"imports {some(analysis.unknown)} when unpickled: not a known-safe torch/numpy "
                                "checkpoint global", rel))
    for stream, why in analysis.problems[:5]:
        findings.append(Finding("serialization.unanalysable", "high",
                                f"pickle could not be fully analysed: {stream}: {why}", rel))
    return findings


def link_finding(path: Path, jail: safe_files.Jail, rel: str) -> Finding | None:
    """A finding for a file that is written or resolves outside the target (or, for a Hugging Face cache
    snapshot, outside its blob store), which is not read; else None."""
    try:
        jail.contained(path)
    except UnsafeFileError:
        if rel.lower().endswith(PICKLE_LIKE_SUFFIXES):
            return Finding("serialization.unanalysable", "high",
                           "pickle could not be fully analysed: a symlink leaving the target (not read)", rel)
        return Finding("serialization.outside-link", "medium", "a symlink leaving the target (not read)", rel)
    return None


class SerializationCheck:
    """Pickle content in the target (by suffix and by magic bytes), and the imports inside it."""

    id = "serialization"
    version = "2"
    description = "pickle content in the target, and imports inside it that are not known-safe (fails closed)"

    def run(self, context: CheckContext) -> CheckResult:
        if PICKLESCAN_PROBLEM is not None:  # fail closed: an audit without its pickle analysis is not a pass
            return CheckResult(check=self.id, version=self.version, status="error", reason=PICKLESCAN_PROBLEM)
        result = CheckResult(check=self.id, version=self.version, status="ran")
        loaded = {str(p) for c in context.target.components if c.weight_format == "pickle" for p in c.weight_files}
        names, truncated, unreadable = candidate_files(context)
        if truncated:
            result.findings.append(Finding("serialization.unanalysable", "high", f"more than {MAX_FILES} files: "
                                           "the rest were not examined for pickle content", None))
        for folder in unreadable:  # fail closed: what cannot be listed may hold a pickle
            result.findings.append(Finding("serialization.unanalysable", "high", "folder could not be read: its "
                                           "files were not examined for pickle content", folder))
        root = context.target.root
        jail = safe_files.Jail(root, safe_files.hub_blob_store(root))
        total, count = Budget(MAX_CHECK_BYTES, MAX_CHECK_READS), 0
        for rel in names:
            path = root / rel
            link = link_finding(path, jail, rel)
            if link is not None:
                result.findings.append(link)
                continue
            if not path.exists() and rel.lower().endswith(PICKLE_SUFFIXES):  # listed on the hub, not downloaded
                result.findings.append(Finding("serialization.pickle-file", "medium", "pickle file present (not "
                                               "loaded by this audit): unpickling can run arbitrary code; prefer "
                                               "safetensors", rel))
                count += 1
                continue
            if not path.is_file() or rel.lower().endswith(".safetensors") and not suspicious_safetensors(path):
                continue
            budget = total.share()
            try:
                analysis = analyse_file(path, rel, budget, jail)
            except Exception as err:  # fail closed: an unforeseen error is a finding, never a crashed check
                analysis = FileAnalysis([StreamReport(rel, problem=f"unexpected {type(err).__name__}: "
                                                                    f"{one_line(err)}")], is_pickle=True)
            total.settle(budget)
            findings = file_findings(analysis, rel, str(path) in loaded)
            count += bool(findings)
            result.findings.extend(findings)
        result.scores["pickle_files"] = float(count)
        return result


def suspicious_safetensors(path: Path) -> bool:
    """Whether a ``.safetensors`` file does not start like one (8-byte header length, then a JSON object)."""
    try:
        with open_file(path) as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] != b"{"
