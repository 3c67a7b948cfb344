"""The CLIP tokenizer amdet-audit ships (the 49,408-token BPE vocabulary, see data/NOTICE.md), written once
into the cache as tokenizer folders: ``clip`` pads with ``<|endoftext|>`` (SD 1.x, CLIP, SDXL's and SD3's first
encoder), ``clip-sd2`` with ``!`` (SD 2.x, SDXL's and SD3's second encoder)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from amdet_audit.cache import build_lock, store
from amdet_audit.sources.model import has_tokenizer

SHIPPED = {"clip": "<|endoftext|>", "clip-sd2": "!"}  # name -> pad token
CLIP_VOCAB_SIZE = 49408


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
