"""The real CLIP BPE tokenizer, derived offline from the merge list shipped in ``amdet_audit/data``.

CLIP's vocabulary is: the 256 byte symbols, the same with an end-of-word mark ``</w>``, one entry per merge
(48,894 merges), then ``<|startoftext|>`` and ``<|endoftext|>`` -- 49,408 tokens, BOS 49406, EOS 49407.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

BPE_FILE = "clip_bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # merges CLIP uses from the file (its lines 2 .. 48,895)
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407


@lru_cache(maxsize=1)
def symbol_bytes() -> dict[str, int]:
    """Byte-level BPE's 256 stand-in characters -> the byte each stands for, in CLIP's vocabulary order.

    Printable bytes stand for themselves and come first (in byte order); the other bytes are chr(256 + n)
    and follow.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def byte_symbols() -> list[str]:
    """The 256 stand-in characters of byte-level BPE, in CLIP's vocabulary order."""
    return list(symbol_bytes())


def readable_token(token: str) -> str:
    """The text a vocabulary string stands for: byte-level BPE undone and the end-of-word mark dropped
    (``Ð¾</w>`` -> ``о``); bytes that are only part of a character show as escapes (``\\xd0``), the characters
    around them as they are; tokens of other vocabularies (WordPiece) come back unchanged."""
    body = token[: -len("</w>")] if token.endswith("</w>") else token
    table = symbol_bytes()
    if not body or any(c not in table for c in body):
        return token
    return bytes(table[c] for c in body).decode("utf-8", errors="backslashreplace")


def readable_sequence(tokens: list[str]) -> str:
    """The text a sequence of byte-level BPE vocabulary strings stands for, decoded as a whole: a word split
    over tokens joins up (``tea`` ``pot</w>`` -> ``teapot``), and so does a character split over tokens."""
    words = "".join(tokens).split("</w>")
    return " ".join(readable_token(w) for w in words if w)


def character_names(text: str) -> list[str]:
    """The code point and Unicode name of each distinct non-ASCII character of ``text``, in order of first
    appearance: ``["U+043E CYRILLIC SMALL LETTER O"]``; U+2581 is said to be the word-start mark that
    SentencePiece vocabularies write in their pieces (``▁rising``), not a character a user typed."""
    import unicodedata

    odd = dict.fromkeys(c for c in text if ord(c) > 0x7F)
    return [f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" + (WORD_START_NOTE if c == "\u2581" else "")
            for c in odd]


#: how :func:`character_names` names U+2581 ("▁"), which SentencePiece pieces carry for a word's start
WORD_START_NOTE = " (SentencePiece's word-start mark in a piece)"


def shown_text(row: dict) -> str:
    """What to show for a token-evidence row: its decoded ``text``, else (a report written before rows carried
    one) its raw vocabulary string or probe label."""
    return str(row.get("text", row.get("token", row.get("probe", ""))))


@lru_cache(maxsize=1)
def clip_merges() -> tuple[str, ...]:
    """The 48,894 merge rules, each ``"left right"``."""
    raw = resources.files("amdet_audit.data").joinpath(BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return tuple(lines[1 : 1 + N_MERGES])


@lru_cache(maxsize=1)
def clip_vocab() -> dict[str, int]:
    """Token -> id for the 49,408-token CLIP vocabulary."""
    base = byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m.split(" ")) for m in clip_merges()]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"derived CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab


def write_clip_tokenizer(folder: Path, *, max_length: int = 77, pad_token: str = EOS_TOKEN) -> Path:
    """Write a transformers ``CLIPTokenizer`` folder (vocab.json, merges.txt, configs) into ``folder``.

    pad_token: ``<|endoftext|>`` as SD 1.x pads, or ``"!"`` as SD 2.x / SDXL's second tokenizer pad.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(), ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "\n".join(clip_merges()) + "\n"
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "errors": "replace",
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder
