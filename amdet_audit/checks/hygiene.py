"""Built-in file checks that need no model run: unsafe serialization, custom code, suspicious tokenizer entries.

They see every file of the target (used or not), because a file that this tool does not load may still be
loaded by the target's consumer.
"""

from __future__ import annotations

import json
import pickletools
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path

from amdet_audit.checks.base import CheckContext, CheckResult, Finding
from amdet_audit.sources.model import PICKLE_SUFFIXES

#: module prefixes a torch / numpy checkpoint legitimately references while unpickling
SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "numpy.core.multiarray._reconstruct", "numpy.dtype",
                "numpy.ndarray", "numpy._core.multiarray._reconstruct", "_codecs.encode", "builtins.set",
                "builtins.slice", "builtins.frozenset")
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # a checkpoint's pickle stream is small; larger ones are not parsed


def target_files(context: CheckContext) -> list[str]:
    """Every file of the target, relative to its root: those used and those present but not used."""
    return sorted({f.path for f in context.target.files} | set(context.target.other_files))


def pickle_streams(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each pickle stream in a file: the ``*.pkl`` members of a torch zip, else the file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".pkl") and info.file_size <= MAX_PICKLE_BYTES:
                    yield info.filename, archive.read(info)
        return
    with path.open("rb") as handle:
        yield path.name, handle.read(MAX_PICKLE_BYTES)


def pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every global a pickle stream imports (GLOBAL and STACK_GLOBAL), without running it."""
    found, strings = set(), []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings = [*strings[-1:], str(arg)]
            elif opcode.name == "GLOBAL":
                found.add(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                found.add(".".join(strings))
            elif opcode.name == "STOP":
                break
    except Exception:  # a truncated or non-pickle stream: report what was read so far
        found.add("<unparseable pickle stream>")
    return found


class SerializationCheck:
    """Pickle-based weight files (they can run code when loaded), and the imports inside them."""

    id = "serialization"
    version = "1"
    description = "pickle weight files present in the target, and unsafe imports inside them"

    def run(self, context: CheckContext) -> CheckResult:
        result = CheckResult(check=self.id, version=self.version, status="ran")
        loaded = {str(p) for c in context.target.components if c.weight_format == "pickle" for p in c.weight_files}
        pickles = [f for f in target_files(context) if f.lower().endswith(PICKLE_SUFFIXES)]
        for rel in pickles:
            path = context.target.root / rel
            used = str(path) in loaded
            result.findings.append(Finding(
                "serialization.pickle-file", "high" if used else "medium",
                f"pickle file {'loaded (--allow-pickle)' if used else 'present (not loaded by this audit)'}: "
                "unpickling can run arbitrary code; prefer safetensors", rel))
            if not path.is_file():
                continue
            for stream, data in pickle_streams(path):
                unsafe = sorted(g for g in pickle_globals(data) if not g.startswith(SAFE_GLOBALS))
                if unsafe:
                    result.findings.append(Finding("serialization.unsafe-import", "critical",
                                                   f"{stream} imports {', '.join(unsafe[:5])} when unpickled", rel))
        result.scores["pickle_files"] = float(len(pickles))
        return result


class RemoteCodeCheck:
    """Custom code the target asks its consumer to run (``auto_map`` in configs, ``.py`` files)."""

    id = "remote-code"
    version = "1"
    description = "custom code (auto_map, .py files) that a consumer with trust_remote_code would run"

    def run(self, context: CheckContext) -> CheckResult:
        result = CheckResult(check=self.id, version=self.version, status="ran")
        for item in context.target.custom_code:
            result.findings.append(Finding("remote-code.custom-code", "high",
                                           f"custom code: {item} (never run by this audit)", item))
        result.scores["custom_code_items"] = float(len(context.target.custom_code))
        return result


def is_invisible(ch: str) -> bool:
    """Format characters (zero-width, bidi controls), odd spaces and other non-printing characters."""
    return unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cn") or (unicodedata.category(ch) == "Zs" and ch != " ")


def scripts(text: str) -> set[str]:
    """Scripts of the letters in ``text`` by Unicode name prefix (LATIN, CYRILLIC, GREEK, ...)."""
    return {unicodedata.name(ch, "?").split()[0] for ch in text if ch.isalpha()}


def added_tokens(folder: Path) -> list[tuple[str, bool]]:
    """(content, special) of the tokens a tokenizer adds beyond its base vocabulary."""
    tokens: dict[str, bool] = {}
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        for entry in json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens") or []:
            tokens[str(entry.get("content", ""))] = bool(entry.get("special", False))
    added_json = folder / "added_tokens.json"
    if added_json.is_file():
        for content in json.loads(added_json.read_text(encoding="utf-8")):
            tokens.setdefault(str(content), False)
    return sorted(tokens.items())


class TokenizerCheck:
    """Tokens added to the tokenizer that look like triggers: invisible characters, mixed-script look-alikes."""

    id = "tokenizer"
    version = "1"
    description = "added tokens, and added tokens that look like triggers (invisible or mixed-script characters)"

    def run(self, context: CheckContext) -> CheckResult:
        folders = {c.tokenizer_path for c in context.target.components if c.tokenizer_path is not None}
        if not folders:
            return CheckResult(check=self.id, version=self.version, status="skipped", reason="no tokenizer files")
        result = CheckResult(check=self.id, version=self.version, status="ran")
        count = 0
        for folder in sorted(folders):
            try:
                tokens = added_tokens(folder)
            except (OSError, ValueError) as err:
                return CheckResult(check=self.id, version=self.version, status="error",
                                   reason=f"{folder}: unreadable tokenizer file ({err})")
            where = str(folder.relative_to(context.target.root)) if folder.is_relative_to(context.target.root) \
                else str(folder)
            for content, special in tokens:
                if special:
                    continue
                count += 1
                if any(is_invisible(ch) for ch in content):
                    result.findings.append(Finding("tokenizer.invisible-token", "high",
                                                   f"added token {content!r} holds invisible characters", where))
                elif len(scripts(content)) > 1:
                    result.findings.append(Finding("tokenizer.mixed-script-token", "medium",
                                                   f"added token {content!r} mixes scripts {sorted(scripts(content))}"
                                                   " (a look-alike of a word)", where))
                else:
                    result.findings.append(Finding("tokenizer.added-token", "info", f"added token {content!r}",
                                                   where))
        result.scores["added_tokens"] = float(count)
        return result
