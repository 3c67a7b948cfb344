"""The serialization check against a malicious-pickle corpus generated here, beside a clean safetensors model.

The corpus covers the classes a pickle scanner is known to be evaded with: every protocol, GLOBAL / INST /
STACK_GLOBAL, REDUCE / OBJ / NEWOBJ / BUILD, imports reached through the memo, several pickles in one file,
bytes after STOP, nested pickles, wrong or missing suffixes, torch zip and legacy layouts, zips that a strict
reader refuses (encrypted, patched, CRC-broken, a central directory that disagrees with the local header,
truncated), numpy object arrays, compressed pickles (joblib), and the imports of published advisories. Every
sample must give a high or critical finding without crashing the check; real torch checkpoints must give none.
No payload ever runs: each would create a canary file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import shutil
import struct
import tarfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from amdet_audit.checks.base import CheckContext, CheckResult
from amdet_audit.checks.serialization import SerializationCheck, analyse_file, classify
from amdet_audit.sources import resolve

HIGH = ("high", "critical")
TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def text_arg(value: str) -> bytes:
    """SHORT_BINUNICODE or BINUNICODE for ``value``."""
    raw = value.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw


def stack_global(module: str, name: str) -> bytes:
    """Push ``module.name`` with STACK_GLOBAL (protocol 4), each string memoized."""
    return text_arg(module) + b"\x94" + text_arg(name) + b"\x94" + b"\x93\x94"


def call4(module: str, name: str, *args: str) -> bytes:
    """A protocol 4 pickle that calls ``module.name(*args)`` when loaded."""
    return b"\x80\x04" + stack_global(module, name) + b"(" + b"".join(text_arg(a) for a in args) + b"tR."


def call0(module: str, name: str, *args: str) -> bytes:
    """A protocol 0 pickle (GLOBAL, text opcodes) that calls ``module.name(*args)`` when loaded."""
    quoted = b"".join(b"V" + a.encode("raw_unicode_escape") + b"\n" for a in args)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + quoted + b"tR."


class Runs:
    """Unpickling this runs ``func(*args)`` (built by pickle.dumps for each protocol)."""

    def __init__(self, func: Callable, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def zip_bytes(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive holding ``members`` in order (duplicate names kept)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression) as archive:
        warnings.simplefilter("ignore")  # duplicate names are the point of some samples
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def with_flag(data: bytes, flag: int) -> bytes:
    """A zip whose every local and central header carries general-purpose ``flag`` (encrypted, patched...)."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(signature)
        while at >= 0:
            (bits,) = struct.unpack_from("<H", out, at + offset)
            struct.pack_into("<H", out, at + offset, bits | flag)
            at = out.find(signature, at + 4)
    return bytes(out)


def npy_header(descr: str) -> bytes:
    """A version 1.0 .npy header for a 1-D array of 2 items of dtype ``descr``."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def npy_object(payload: bytes) -> bytes:
    """A .npy file of an object array whose data is ``payload`` (what np.load(allow_pickle=True) unpickles)."""
    return npy_header("|O") + payload


def legacy_torch(main: bytes, keys: bytes | None = None) -> bytes:
    """A legacy (non-zip) torch.save layout: magic, protocol, sys info, ``main``, storage keys, raw data."""
    head = pickle.dumps(TORCH_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    info = pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    return head + info + main + (keys or pickle.dumps([], protocol=2)) + b"\x00" * 64


def memo_chain(module: str, name: str, arg: str) -> bytes:
    """posix.system reached only through the memo: strings BINPUT then popped, BINGET around STACK_GLOBAL."""
    return (b"\x80\x04" + text_arg(module) + b"q\x00" + b"0" + text_arg(name) + b"q\x01" + b"0"
            + b"h\x00h\x01\x93" + text_arg(arg) + b"\x85R.")


#: advisory-style imports: (module, name), each called with a shell command
ADVISORY_IMPORTS = [
    ("runpy", "_run_code"), ("subprocess", "run"), ("subprocess", "Popen"), ("socket", "create_connection"),
    ("bdb", "Bdb.run"), ("pip", "main"), ("torch._inductor.codecache", "compile_file"), ("pydoc", "pipepager"),
    ("venv", "create"), ("timeit", "timeit"), ("numpy.testing._private.utils", "runstring"),
    ("torch.utils.bottleneck.__main__", "run_cprofile"), ("torch._dynamo.guards", "GuardBuilder.get"),
    ("torch.fx.experimental.symbolic_shapes", "ShapeEnv.evaluate_guards_expression"),
    ("torch.utils.collect_env", "run"), ("torch.jit.unsupported_tensor_ops", "execWrapper"),
    ("torch.utils._config_module", "ConfigModule.load_config"), ("trace", "Trace.runctx"),
    ("cProfile", "runctx"), ("profile", "Profile.run"), ("code", "InteractiveInterpreter.runcode"),
    ("idlelib.run", "Executive.runcode"), ("doctest", "debug_script"), ("ensurepip", "_run_pip"),
    ("asyncio.unix_events", "_UnixSubprocessTransport._start"), ("distutils.file_util", "write_file"),
    ("ctypes", "CDLL"), ("pty", "spawn"), ("numpy.f2py.crackfortran", "getlincoef"), ("_io", "FileIO"),
    ("logging", "FileHandler"), ("urllib.request", "urlopen"), ("uuid", "_get_command_stdout"),
    ("_osx_support", "_read_output"), ("_aix_support", "_read_cmd_output"), ("imaplib", "IMAP4_stream"),
    ("_pyrepl.pager", "pipe_pager"), ("test.support.script_helper", "assert_python_ok"),
    ("importlib", "import_module"), ("pkgutil", "resolve_name"), ("types", "CodeType"),
    ("cloudpickle.cloudpickle", "_make_function"), ("ssl", "get_server_certificate"), ("webbrowser", "open"),
    ("builtins", "__import__"), ("builtins", "getattr"), ("__builtin__", "eval"), ("sys", "exit"),
    ("shutil", "rmtree"), ("some_plugin.models", "Loader"),  # the last: unknown, so high
]


def corpus(canary: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (file name, content) of every malicious sample; each payload would create ``canary``."""
    cmd = f"touch {canary}"
    code = f"open({str(canary)!r}, 'w').close()"
    system = Runs(os.system, cmd)
    samples: dict[str, tuple[str, bytes]] = {}
    for proto in range(6):
        samples[f"reduce-os-system-protocol-{proto}"] = ("extra.pkl", pickle.dumps(system, protocol=proto))
    samples |= {
        "global-builtins-eval-protocol-0": ("extra.pkl", call0("__builtin__", "eval", code)),
        "global-builtins-exec-protocol-2": ("extra.pt", b"\x80\x02" + call0("builtins", "exec", code)),
        "stack-global-builtins-exec": ("extra.pt", call4("builtins", "exec", code)),
        "inst-opcode-exec": ("extra.pkl", b"(V" + code.encode() + b"\ni__builtin__\nexec\n."),
        "obj-opcode-system": ("extra.pkl", b"\x80\x02(cposix\nsystem\nX" + struct.pack("<I", len(cmd))
                              + cmd.encode() + b"o."),
        "newobj-popen": ("extra.pkl", b"\x80\x02csubprocess\nPopen\n" + text_arg("sh") + b"\x85\x81."),
        "newobj-ex-popen": ("extra.pkl", b"\x80\x04" + stack_global("subprocess", "Popen") + text_arg("sh")
                            + b"\x85}\x92."),
        "build-after-reduce": ("extra.pkl", b"\x80\x02cposix\nsystem\n" + text_arg(cmd) + b"\x85R}b."),
        "memo-binput-binget-stack-global": ("pytorch_model.bin", memo_chain("posix", "system", cmd)),
        "memo-long-binput": ("extra.pkl", b"\x80\x04" + text_arg("os") + b"r\x00\x01\x00\x00" + b"0"
                             + text_arg("system") + b"r\x01\x01\x00\x00" + b"0" + b"j\x00\x01\x00\x00"
                             + b"j\x01\x01\x00\x00\x93" + text_arg(cmd) + b"\x85R."),
        "memo-text-put-get-decoy": ("extra.pkl", b"Vos\np2\n0Vsystem\np3\n0Vtorch\np0\n0VLongStorage\np1\n0"
                                    b"g2\ng3\n\x93(V" + cmd.encode() + b"\ntR."),
        "memo-missing-key": ("extra.pkl", b"\x80\x04cos\nsystem\n" + text_arg(cmd) + b"\x85R0"
                             + text_arg("os") + b"\x94h\x03h\x00\x93K\x42."),
        "memo-type-confusion": ("extra.pkl", b"\x80\x04cos\nsystem\n" + text_arg(cmd) + b"\x85R0J\x2a\x00\x00\x00"
                                + b"\x94" + text_arg("os") + b"\x94h\x00h\x01\x93K\x42."),
        "stack-global-from-string-opcodes": ("extra.pkl", b"S'os'\nS'system'\n\x93S'" + cmd.encode()
                                             + b"'\n\x85R."),
        "stack-global-computed-name": ("extra.pkl", b"\x80\x04" + stack_global("builtins", "str") + text_arg("posix")
                                       + b"\x85R" + text_arg("system") + b"\x93" + text_arg(cmd) + b"\x85R."),
        "two-pickles-second-malicious": ("extra.pkl", pickle.dumps(["a", "b"]) + pickle.dumps(system, protocol=4)),
        "invalid-bytes-after-stop": ("extra.pkl", memo_chain("os", "system", cmd) + b"\n\n\t\t"),
        "malicious-then-truncated": ("extra.pkl", b"cbuiltins\nexec\n(X" + struct.pack("<I", len(code))
                                     + code.encode() + b"tRX"),
        "huge-length-field": ("extra.pkl", b"\x80\x04" + stack_global("posix", "system")
                              + b"\x8e" + struct.pack("<Q", 2**60) + b"x"),
        "stack-global-without-arguments": ("extra.pkl", b"\x80\x04\x93" + pickle.dumps(system, protocol=4)[2:]),
        "extension-registry-code": ("extra.pkl", b"\x80\x02\x82\x01)R."),  # EXT1: a global from copyreg's registry
        "nested-pickle-loads": ("extra.pkl", pickle.dumps(Runs(pickle.loads, pickle.dumps(system)), protocol=4)),
        "partial-torch-load": ("extra.pkl", b"\x80\x04" + stack_global("functools", "partial")
                               + stack_global("torch", "load") + text_arg("other.bin") + b"\x86R)R."),
        "operator-attrgetter-import": ("extra.pkl", b"\x80\x04" + stack_global("operator", "attrgetter")
                                       + text_arg("system") + b"\x85R" + stack_global("builtins", "__import__")
                                       + text_arg("os") + b"\x85R\x85R" + text_arg(cmd) + b"\x85R."),
        "sys-modules-override": ("extra.pkl", call0("sys", "modules.__setitem__", "torch", "os")),
        "legacy-torch-main-pickle": ("pytorch_model.bin", legacy_torch(pickle.dumps(system, protocol=2))),
        "legacy-torch-keys-pickle": ("pytorch_model.bin", legacy_torch(pickle.dumps({}, protocol=2),
                                                                      pickle.dumps(system, protocol=2))),
        "legacy-torch-magic-bypass": ("model.pt", call4("builtins", "eval", str(TORCH_MAGIC))
                                      + pickle.dumps(system, protocol=2)),
        "tar-legacy-format": ("model.pt", tar_with("pickle", pickle.dumps(system, protocol=2))),
        "npy-object-array": ("extra.npy", npy_object(pickle.dumps([system], protocol=3))),
        "npy-object-array-named-bin": ("embeddings.bin", npy_object(pickle.dumps(system, protocol=3))),
        "npz-object-array": ("arrays.npz", zip_bytes([("a.npy", npy_object(pickle.dumps(system, protocol=3)))])),
        "npy-header-hostile": ("extra.npy", b"\x93NUMPY\x01\x00\x10\x00" + b"{'descr': (((((,\n"),
    }
    malicious4 = pickle.dumps(system, protocol=4)
    for suffix in (".pt", ".ckpt", ".pth", ".bin", ".pkl", ".joblib", ".npy", ".dat", ".pickle"):
        samples[f"plain-pickle-as{suffix}"] = (f"weights{suffix}", malicious4)
    samples["pickle-without-suffix"] = ("weights_model", malicious4)
    samples["pickle-as-txt"] = ("notes.txt", malicious4)
    samples["pickle-as-safetensors"] = ("extra.safetensors", malicious4)
    samples["protocol-0-as-pth"] = ("model.pth", pickle.dumps(system, protocol=0))
    packers = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zlib": zlib.compress}
    for method, pack in packers.items():
        samples[f"compressed-{method}-joblib"] = ("model.joblib", pack(malicious4))
    samples["compressed-gzip-pkl-gz"] = ("state.pkl.gz", gzip.compress(malicious4))
    samples["compressed-lz4-joblib"] = ("model.joblib", b"\x04\x22\x4d\x18" + malicious4)  # not readable here: high
    samples |= zip_samples(malicious4, pickle.dumps(["benign"], protocol=4))
    for module, name in ADVISORY_IMPORTS:
        samples[f"import-{module}.{name}"] = ("extra.pkl", call4(module, name, cmd))
    return samples


def tar_with(name: str, data: bytes) -> bytes:
    """A tar archive holding one member."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_samples(malicious: bytes, benign: bytes) -> dict[str, tuple[str, bytes]]:
    """Torch-zip-like samples: member layouts, names, nesting and what a strict zip reader refuses."""
    torch_like = zip_bytes([("archive/data.pkl", malicious), ("archive/version", b"3\n"), ("archive/data/0", b"\0")])
    cut = torch_like[: len(torch_like) // 2]
    return {
        "zip-data-pkl-at-root": ("pytorch_model.bin", zip_bytes([("data.pkl", malicious)])),
        "zip-torch-layout": ("pytorch_model.bin", torch_like),
        "zip-deflated": ("model.ckpt", zip_bytes([("archive/data.pkl", malicious)], zipfile.ZIP_DEFLATED)),
        "zip-data-pkl-deep": ("model.pt", zip_bytes([("a/b/c/d/data.pkl", malicious)])),
        "zip-member-without-suffix": ("model.pt", zip_bytes([("archive/data.txt", malicious)])),
        "zip-as-unknown-suffix": ("weights.model", zip_bytes([("archive/data.pkl", malicious)])),
        "zip-second-of-duplicate-names": ("model.pt", zip_bytes([("archive/data.pkl", benign),
                                                                 ("archive/data.pkl", malicious)])),
        "zip-first-of-duplicate-names": ("model.pt", zip_bytes([("archive/data.pkl", malicious),
                                                                ("archive/data.pkl", benign)])),
        "zip-nested": ("model.pt", zip_bytes([("inner.zip", zip_bytes([("archive/data.pkl", malicious)]))])),
        "zip-encrypted-flag": ("model.pt", with_flag(torch_like, 0x1)),
        "zip-patched-data-flag": ("model.pt", with_flag(torch_like, 0x20)),
        "zip-strong-encryption-flag": ("model.pt", with_flag(torch_like, 0x40)),
        "zip-crc-broken": ("model.pt", torch_like.replace(b"touch", b"tauch", 1)),
        "zip-central-directory-mismatch": ("model.pt", torch_like.replace(b"archive/data.pkl", b"archive/datap.kl", 1)),
        "zip-truncated": ("model.pt", cut),
        "zip-local-header-method-mismatch": ("model.pt", torch_like.replace(b"PK\x03\x04\x14\x00\x00\x00\x00",
                                                                            b"PK\x03\x04\x14\x00\x00\x00\x63", 1)),
    }


@pytest.fixture(scope="module")
def model_folder(tiny_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the clean tiny CLIP folder; each test places its sample in it and removes it."""
    folder = tmp_path_factory.mktemp("corpus") / "model"
    shutil.copytree(tiny_clip, folder)
    return folder


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary") / "payload-ran"


SAMPLE_NAMES = sorted(corpus(Path("/nonexistent/canary")))


def run_check(folder: Path) -> CheckResult:
    return SerializationCheck().run(CheckContext(target=resolve(str(folder))))


def place(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_corpus_is_broad() -> None:
    assert len(SAMPLE_NAMES) >= 40
    classes = ("protocol-", "memo-", "inst-", "obj-", "newobj-", "build-", "two-pickles", "invalid-bytes",
               "nested", "plain-pickle-as", "pickle-without-suffix", "zip-encrypted", "zip-crc", "zip-central",
               "zip-patched", "zip-strong", "npy-", "legacy-torch", "compressed-", "import-")
    assert all(any(c in n for n in SAMPLE_NAMES) for c in classes)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_malicious_sample_is_high_or_critical(name: str, model_folder: Path, canary: Path) -> None:
    file_name, data = corpus(canary)[name]
    path = place(model_folder, file_name, data)
    try:
        result = run_check(model_folder)
    finally:
        path.unlink()
    assert result.status == "ran", result.reason
    severe = [f for f in result.findings if f.location == file_name and f.severity in HIGH]
    assert severe, f"{name}: only {[(f.rule, f.severity, f.message) for f in result.findings]}"


def test_memo_bypass_and_advisory_imports_are_critical(model_folder: Path, canary: Path) -> None:
    samples = corpus(canary)
    for name in ("memo-binput-binget-stack-global", "memo-text-put-get-decoy", "zip-data-pkl-deep",
                 "legacy-torch-main-pickle", "zip-central-directory-mismatch", "zip-encrypted-flag",
                 "npy-object-array", "import-torch._inductor.codecache.compile_file", "invalid-bytes-after-stop"):
        file_name, data = samples[name]
        path = place(model_folder, file_name, data)
        try:
            result = run_check(model_folder)
        finally:
            path.unlink()
        rules = {f.rule: f.severity for f in result.findings if f.location == file_name}
        assert rules.get("serialization.unsafe-import") == "critical", (name, rules)


def test_refused_zip_members_are_reported_as_not_fully_analysed(tmp_path: Path) -> None:
    samples = corpus(tmp_path / "ran")
    for name in ("zip-encrypted-flag", "zip-patched-data-flag", "zip-strong-encryption-flag", "zip-crc-broken",
                 "zip-central-directory-mismatch", "zip-truncated"):
        path = place(tmp_path, *samples[name])
        assert analyse_file(path).problems, name


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_real_torch_checkpoints_give_no_unsafe_finding(zip_format: bool, model_folder: Path) -> None:
    state = {"w": torch.zeros(2, 3), "b": torch.ones(3, dtype=torch.float16), "i": torch.arange(4),
             "p": torch.nn.Parameter(torch.zeros(2)), "h": torch.zeros(2, dtype=torch.bfloat16),
             "u": torch.tensor([128, 2, 7, 9], dtype=torch.uint8)}  # raw storage bytes that look like a pickle header
    checkpoint = {"state_dict": state, "epoch": 3, "size": torch.Size([2, 3]), "device": torch.device("cpu"),
                  "dtype": torch.float32, "meta": {"tags": {"a", "b"}, "blob": b"xy", "when": (1, 2.5, None)}}
    written = []
    for name, obj in (("pytorch_model.bin", state), ("training_state.pt", checkpoint)):
        torch.save(obj, model_folder / name, _use_new_zipfile_serialization=zip_format)
        written.append(name)
    try:
        result = run_check(model_folder)
    finally:
        for name in written:
            (model_folder / name).unlink()
    assert result.status == "ran"
    assert {(f.rule, f.location, f.severity) for f in result.findings} == {
        ("serialization.pickle-file", name, "medium") for name in written}


def test_benign_content_gives_no_high_finding(model_folder: Path) -> None:
    placed = [place(model_folder, "list.pkl", pickle.dumps([f"token{i}" for i in range(20000)], protocol=0)),
              place(model_folder, "numbers.npy", npy_header("<f4") + b"\0" * 8),
              place(model_folder, "raw_weights.bin", b"\x00\x00\x80\x3f" * 16)]
    try:
        result = run_check(model_folder)
    finally:
        for path in placed:
            path.unlink()
    assert not [f for f in result.findings if f.severity in HIGH]
    assert {f.location for f in result.findings} == {"list.pkl", "raw_weights.bin"}  # suffix: present, medium


def test_padding_before_the_import_is_fast_and_flagged(model_folder: Path, canary: Path) -> None:
    padding = b"\x8e" + struct.pack("<Q", 64 * 2**20) + b"\0" * (64 * 2**20) + b"0"  # BINBYTES8, then POP
    data_pkl = b"\x80\x04" + padding + stack_global("posix", "system") + text_arg(f"touch {canary}") + b"\x85R."
    path = model_folder / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
    del data_pkl
    started = time.perf_counter()
    try:
        result = run_check(model_folder)
    finally:
        path.unlink()
    assert time.perf_counter() - started < 20
    rules = {f.rule: f.severity for f in result.findings if f.location == "pytorch_model.bin"}
    assert rules.get("serialization.unsafe-import") == "critical", rules


def test_an_opcode_flood_exceeds_the_budget_and_is_high(tmp_path: Path) -> None:
    path = place(tmp_path, "flood.pkl", b"\x80\x04" + b")0" * 1_100_000 + b"N.")
    started = time.perf_counter()
    analysis = analyse_file(path)
    assert time.perf_counter() - started < 30
    assert analysis.problems and "opcodes" in analysis.problems[0][1]


def test_classify() -> None:
    assert classify("torch._utils", "_rebuild_tensor_v2") == "safe"
    assert classify("torch", "FloatStorage") == "safe"
    assert classify("posix", "system") == "dangerous"
    assert classify("os.path", "join") == "dangerous"
    assert classify("torch.serialization", "load") == "dangerous"
    assert classify("builtins", "getattr") == "dangerous"
    assert classify("unknown", "system") == "unknown"
    assert classify("mylib", "Thing") == "unknown"


@pytest.mark.parametrize("name", ["memo-binput-binget-stack-global", "zip-central-directory-mismatch",
                                  "pickle-without-suffix"])
def test_cli_scan_fails_on_a_sample(name: str, run_cli, tiny_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_clip, folder)
    canary = tmp_path / "ran"
    file_name, data = corpus(canary)[name]
    place(folder, file_name, data)
    result = run_cli("scan", folder, "--reference-free", "--no-cache", "--out", tmp_path / "report")
    assert result.exit_code == 1, result.stderr
    assert "serialization" in result.stdout and not canary.exists()


@pytest.mark.parametrize("name", ["memo-binput-binget-stack-global", "zip-crc-broken", "import-some_plugin.models."
                                  "Loader"])
def test_allow_pickle_never_loads_a_flagged_pickle(name: str, run_cli, tiny_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_clip, folder)
    (folder / "model.safetensors").unlink()  # the pickle is the only weight file: --allow-pickle would load it
    canary = tmp_path / "ran"
    place(folder, "pytorch_model.bin", corpus(canary)[name][1])
    result = run_cli("scan", folder, "--reference-free", "--allow-pickle", "--no-cache", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to unpickle" in lines[0] and "Traceback" not in result.stderr, lines
    assert "weights_only" not in result.stderr and not canary.exists()


def test_allow_pickle_loads_a_real_torch_checkpoint(run_cli, tiny_clip: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_clip, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    result = run_cli("inspect", folder, "--allow-pickle")
    assert result.exit_code == 0, result.stderr


def test_a_symlink_leaving_the_target_is_not_read(model_folder: Path, tmp_path: Path) -> None:
    outside = place(tmp_path, "elsewhere.pkl", pickle.dumps(["not", "read"]))
    context = CheckContext(target=resolve(str(model_folder)))  # the link appears after the target was resolved
    link = model_folder / "extra.pkl"
    link.symlink_to(outside)
    try:
        result = SerializationCheck().run(context)
    finally:
        link.unlink()
    found = [f for f in result.findings if f.location == "extra.pkl"]
    assert [f.severity for f in found] == ["high"] and "symlink leaving the target" in found[0].message


def test_the_check_wide_budget_fails_closed(model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amdet_audit.checks import serialization

    monkeypatch.setattr(serialization, "MAX_CHECK_READS", 100)
    placed = [place(model_folder, f"part{i}.pkl", pickle.dumps(list(range(10)), protocol=0)) for i in range(4)]
    try:
        result = run_check(model_folder)
    finally:
        for path in placed:
            path.unlink()
    over = [f for f in result.findings if f.rule == "serialization.unanalysable"]
    assert over and all(f.severity == "high" and "budget" in f.message for f in over)
    assert len(over) < 4  # the first files were analysed in full


def test_hub_snapshot_links_into_the_blob_store_are_read(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / ("a" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    blob = place(blobs, "0123abcd", memo_chain("posix", "system", f"touch {tmp_path / 'ran'}"))
    link = snapshot / "pytorch_model.bin"
    link.symlink_to(blob)
    assert [g for _, g in analyse_file(link).dangerous] == ["posix.system"]


def test_a_hub_snapshot_given_as_a_local_folder_reads_its_blob_store(tiny_clip: Path, tmp_path: Path) -> None:
    import hashlib

    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / ("a" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    files = {p.name: p.read_bytes() for p in sorted(tiny_clip.iterdir())}
    files["pytorch_model.bin"] = memo_chain("posix", "system", f"touch {tmp_path / 'ran'}")
    for name, data in files.items():
        blob = place(blobs, hashlib.sha256(data).hexdigest(), data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    result = run_check(snapshot)  # kind "local": the cache layout pointed at as a folder
    assert result.status == "ran", result.reason
    rules = {(f.rule, f.location): f.severity for f in result.findings}
    assert rules.get(("serialization.unsafe-import", "pytorch_model.bin")) == "critical", rules
    assert not [r for r, _ in rules if r == "serialization.outside-link"], rules
    assert [loc for r, loc in rules if r == "serialization.unanalysable"] == [], rules


def test_an_unreadable_subfolder_is_a_high_finding(model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = model_folder / "extras"
    hidden.mkdir()
    place(hidden, "evil.pkl", memo_chain("posix", "system", "true"))
    context = CheckContext(target=resolve(str(model_folder)))
    listing = os.scandir

    def refuse(path=".", *args, **kwargs):  # a folder without read permission (root could read it)
        if Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", refuse)
    try:
        result = SerializationCheck().run(context)
    finally:
        monkeypatch.undo()
        shutil.rmtree(hidden)
    found = [f for f in result.findings if f.location == "extras"]
    assert [(f.rule, f.severity) for f in found] == [("serialization.unanalysable", "high")], result.findings
    assert "could not be read" in found[0].message


def test_a_renamed_picklescan_private_is_a_check_error_not_a_crash(run_cli, tiny_clip: Path, tmp_path: Path
                                                                   ) -> None:
    import subprocess
    import sys

    fake = tmp_path / "fake" / "picklescan"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "relaxed_zipfile.py").write_text("RelaxedZipFile = None\n")
    (fake / "scanner.py").write_text("def scan_file_path(path):\n    return None\n")  # privates renamed away
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "AMDET_AUDIT_CACHE": str(tmp_path / "c"), "AMDET_AUDIT_CACHE_SCANS": str(tmp_path / "s")}
    done = subprocess.run([sys.executable, "-m", "amdet_audit", "scan", str(tiny_clip), "--checks",
                           "serialization,remote-code,tokenizer", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "picklescan" in done.stdout + done.stderr
