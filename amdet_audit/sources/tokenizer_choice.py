"""``--tokenizer PATH|clip|clip-sd2``: the tokenizer of a target that ships none (a lone weights file), or another.

``clip`` is the CLIP BPE vocabulary amdet-audit ships (49,408 tokens, see data/NOTICE.md), padding with
``<|endoftext|>`` as SD 1.x and CLIP do; ``clip-sd2`` pads with ``!`` as SD 2.x and SDXL's ``text_encoder_2``
do. It is used only for a model whose embedding table has exactly that many rows; the choice is recorded in
the target's notes (report.json ``target.notes``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from amdet_audit.cache import build_lock, store
from amdet_audit.errors import UsageError
from amdet_audit.sources.model import ResolvedTarget, has_tokenizer
from amdet_audit.sources.safe_files import read_json

SHIPPED = {"clip": "<|endoftext|>", "clip-sd2": "!"}  # name -> pad token
CLIP_VOCAB_SIZE = 49408


def vocab_size(config_path: Path) -> int | None:
    """The model's vocabulary size from its config (a full CLIP config keeps it in ``text_config``)."""
    config = read_json(config_path)
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def shipped_tokenizer(name: str) -> Path:
    """The folder of the shipped CLIP tokenizer ``name``, written once into the cache."""
    from amdet_audit.tokenization import write_clip_tokenizer

    folder = store("tokenizers") / name
    with build_lock(folder.parent / f".{name}.lock"):
        if not has_tokenizer(folder):
            if folder.exists():
                shutil.rmtree(folder)  # left half-written by a crash
            tmp = folder.with_name(f".{name}.{time.time_ns()}.tmp")
            write_clip_tokenizer(tmp, pad_token=SHIPPED[name])
            tmp.rename(folder)
    return folder


def with_tokenizer(resolved: ResolvedTarget, choice: str) -> ResolvedTarget:
    """``resolved`` with every component reading its prompts through ``choice`` (a folder or a shipped name)."""
    if choice in SHIPPED:
        for comp in resolved.components:
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
        note = f"tokenizer: {folder} (--tokenizer), not one of the target's files"
    components = [dataclasses.replace(comp, tokenizer_path=folder) for comp in resolved.components]
    return dataclasses.replace(resolved, components=components, notes=[*resolved.notes, note])
