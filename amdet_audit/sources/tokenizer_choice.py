"""``--tokenizer PATH|clip|clip-sd2``: the tokenizer of a target that ships none (a lone weights file), or another.

``clip`` and ``clip-sd2`` are the CLIP vocabulary amdet-audit ships (:mod:`amdet_audit.sources.shipped_tokenizer`),
used only for a model whose embedding table has exactly that many rows. The choice replaces every other
tokenizer note of the target and is recorded in its notes (report.json ``target.notes``) and the scan cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from amdet_audit.errors import UsageError
from amdet_audit.sources import safe_files
from amdet_audit.sources.digest import sha256_file
from amdet_audit.sources.local import check_tokenizer, tokenizer_files
from amdet_audit.sources.model import ResolvedTarget, has_tokenizer
from amdet_audit.sources.safe_files import read_json
from amdet_audit.sources.shipped_tokenizer import CLIP_VOCAB_SIZE, SHIPPED, shipped_tokenizer


def vocab_size(config_path: Path) -> int | None:
    """The model's vocabulary size from its config (a full CLIP config keeps it in ``text_config``)."""
    config = read_json(config_path)
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def folder_digest(folder: Path) -> str:
    """sha256 over the tokenizer files of ``folder`` (their names and contents), for the cache key."""
    digest = hashlib.sha256()
    for path in tokenizer_files(folder):
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def with_tokenizer(resolved: ResolvedTarget, choice: str) -> ResolvedTarget:
    """``resolved`` with every loadable component reading its prompts through ``choice`` (a folder or a
    shipped name)."""
    loadable = [comp for comp in resolved.components if comp.refusal is None]
    if choice in SHIPPED:
        for comp in loadable:
            size = vocab_size(comp.config_path)
            if size != CLIP_VOCAB_SIZE:
                raise UsageError(f"--tokenizer {choice}: {comp.name} has a vocabulary of {size} tokens, the CLIP "
                                 f"tokenizer amdet-audit ships {CLIP_VOCAB_SIZE}; pass --tokenizer PATH")
        folder = shipped_tokenizer(choice)
        note = (f"tokenizer: the CLIP vocabulary amdet-audit ships (--tokenizer {choice}, padding with "
                f"{json.dumps(SHIPPED[choice])}), not one of the target's files")
    else:
        folder = Path(choice).expanduser()
        if not has_tokenizer(folder):
            raise UsageError(f"--tokenizer {choice}: not a folder with tokenizer files (vocab.json + merges.txt, "
                             "tokenizer.json or vocab.txt); or pass --tokenizer clip or clip-sd2")
        check_tokenizer(folder, safe_files.Jail(folder), whole_folder=False)  # regular, capped files only
        note = f"tokenizer: {folder} (--tokenizer, files sha256 {folder_digest(folder)}), not one of the target's"
    components = [dataclasses.replace(comp, tokenizer_path=folder) if comp.refusal is None else comp
                  for comp in resolved.components]
    notes = [n for n in resolved.notes if not n.startswith("tokenizer:")] + [note]
    return dataclasses.replace(resolved, components=components, notes=notes)
