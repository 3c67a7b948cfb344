"""Typeable triggers from byte pieces.

A vocabulary that can spell any text keeps one piece per byte: SentencePiece's byte fallback (``<0x84>``) and
byte-level BPE (CLIP: ``Ħ`` stands for 0x84). A character outside the learnt pieces, an emoji for one, is typed
as several such pieces. The token search can land on one of them alone, because a backdoor trained on the
whole character moves each of its bytes part of the way; but no typed text tokenizes to a lone piece of a
character, so such a probe is not an input a user can give, and it shows a reviewer an escape, not a trigger.

:func:`complete_characters` turns such findings into typeable input: every byte piece of a non-ASCII character
is screened alone on the suspect, the assigned characters whose bytes collapse the prompts most on average are
ranked from those scores, and the best are tokenized as typed, so the probes that are then scored are real
input. A backdoor on one emoji moves the bytes of its neighbours in the code table too, so the best character
need not be the trigger itself, but it is input a user can type that does what the trigger does. A lone piece
that the search reached as a seed (nearest to a pseudo-trigger, moved, gradient-ranked) is still judged, as
before, when it does more than every character. WordPiece (BERT) maps an unknown character to ``[UNK]`` and has
no pieces of characters: nothing to complete there.

A vocabulary without byte fallback (T5's SentencePiece, WordPiece) types every character outside it to one unknown
piece (``<unk>``, ``[UNK]``): a trigger spelt with an emoji there is that piece. :func:`unknown_character_ids`
gives what such a character types to, so the search can try it as typed input.
"""

from __future__ import annotations

import functools
import heapq
import re
import unicodedata
from collections.abc import Callable, Sequence

from amdet_audit.encoders.base import Adapter
from amdet_audit.tokenization import symbol_bytes

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback
END_OF_WORD = "</w>"  # byte-level BPE's mark of a word's last piece (a space follows when decoded)
NOT_TYPED = ("Cc", "Cs", "Cn", "Co")  # control, surrogate, unassigned, private use: not characters users type
PROOF = "\U0001FAE8"  # a recent emoji (shaking face, Unicode 15) that a byte-fallback vocabulary spells in bytes
UTF8_BYTES = [b for b in range(0x80, 0x100) if b not in (0xC0, 0xC1) and b < 0xF5]  # bytes of non-ASCII characters


def typeable(data: bytes) -> bool:
    """Whether ``data`` is whole UTF-8 characters that a user can type (no control, unassigned, surrogate or
    private-use code points; spaces and tabs are typed)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch in " \t" or unicodedata.category(ch) not in NOT_TYPED for ch in text)


@functools.cache
def typed_characters() -> tuple[str, ...]:
    """Every assigned non-ASCII character a user can type (by this Python's Unicode tables)."""
    return tuple(ch for ch in map(chr, range(0x80, 0x110000)) if not 0xD800 <= ord(ch) < 0xE000
                 and unicodedata.category(ch) not in NOT_TYPED)


def ranked_characters(byte_scores: dict[int, float], top: int) -> list[str]:
    """The ``top`` characters whose UTF-8 bytes score highest on average (each byte screened alone)."""
    def score(ch: str) -> float:
        data = ch.encode("utf-8")
        return sum(byte_scores.get(b, float("-inf")) for b in data) / len(data)

    return heapq.nlargest(top, typed_characters(), key=score)


def token_bytes(adapter: Adapter, token_id: int) -> bytes | None:
    """The bytes one vocabulary piece stands for (a space for SentencePiece's ``▁`` and after byte-level BPE's
    end of word); None for a vocabulary without pieces of characters (WordPiece) or without a tokenizer."""
    tokenizer = getattr(adapter, "tokenizer", None)
    if tokenizer is None or adapter.family == "bert":
        return None
    piece = str(tokenizer.convert_ids_to_tokens(int(token_id)))
    if adapter.family == "clip":
        body, end = (piece[: -len(END_OF_WORD)], b" ") if piece.endswith(END_OF_WORD) else (piece, b"")
        table = symbol_bytes()
        if not body or any(c not in table for c in body):
            return None
        return bytes(table[c] for c in body) + end
    return sentencepiece_bytes(piece)


def sentencepiece_bytes(piece: str) -> bytes:
    """The bytes a SentencePiece vocabulary string stands for: a byte piece's byte, else its text (``▁``: space)."""
    match = BYTE_PIECE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def byte_piece_ids(adapter: Adapter) -> dict[int, int]:
    """byte -> the id of the vocabulary piece that stands for that byte alone (inside a word, for byte-level BPE);
    empty when the vocabulary has no such pieces."""
    tokenizer = getattr(adapter, "tokenizer", None)
    if tokenizer is None or adapter.family == "bert":
        return {}
    if adapter.family == "clip":
        vocab = tokenizer.get_vocab()
        return {b: vocab[symbol] for symbol, b in symbol_bytes().items() if symbol in vocab}
    ids = {}
    for b in range(0x100):
        piece = f"<0x{b:02X}>"
        i = tokenizer.convert_tokens_to_ids(piece)
        if isinstance(i, int) and i >= 0 and tokenizer.convert_ids_to_tokens(i) == piece:
            ids[b] = i
    # trusted only when a rare character really types to them: a vocabulary without byte fallback may still
    # name ordinary pieces "<0x84>"
    typed = tokenizer(PROOF, add_special_tokens=False)["input_ids"]
    return ids if [i for i in typed if i in ids.values()] == [ids.get(b) for b in PROOF.encode()] else {}


def unknown_character_ids(adapter: Adapter, banned: set[int]) -> tuple[int, ...] | None:
    """The pieces a character outside the vocabulary types to (T5: ``▁`` and ``<unk>``; BERT: ``[UNK]``), when
    that holds the tokenizer's unknown piece and it is no start, end or padding id (``banned``); else None (a
    byte-fallback or byte-level vocabulary spells such a character in bytes; CLIP's unknown token is its end)."""
    tokenizer = getattr(adapter, "tokenizer", None)
    unknown = getattr(tokenizer, "unk_token_id", None)
    if tokenizer is None or not isinstance(unknown, int) or unknown < 0 or unknown in banned:
        return None
    typed = typed_ids(adapter, PROOF, banned)
    return typed if unknown in typed else None


def continuation_mark(tokenizer: object) -> str | None:
    """The prefix that names a piece continuing a word (WordPiece's "##"); None where the tokenizer has none."""
    mark = getattr(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None),
                   "continuing_subword_prefix", None)
    return mark if isinstance(mark, str) and mark else None


def speller(adapter: Adapter, banned: set[int]) -> Callable[[Sequence[int]], str]:
    """Ids -> text that types to them where any does: their decoding, with the unknown piece written as a
    character outside the vocabulary (its own text, "<unk>", would type to the special piece alone) and a leading
    word continuation mark (WordPiece's "##") dropped; "" without a tokenizer. The decoder is the tokenizer's
    own (bounded by its size, as its encoder is)."""
    tokenizer = getattr(adapter, "tokenizer", None)
    if tokenizer is None:
        return lambda ids: ""
    unknown = getattr(tokenizer, "unk_token", None)
    spelt = isinstance(unknown, str) and bool(unknown) and unknown_character_ids(adapter, banned) is not None
    mark = continuation_mark(tokenizer)

    written = unknown if spelt else ""

    def spell(ids: Sequence[int]) -> str:
        text = tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)
        text = text.replace(written, PROOF) if written else text
        return text[len(mark):] if mark is not None and text.startswith(mark) else text

    return spell


def probe_bytes(adapter: Adapter, tokens: tuple[int, ...]) -> bytes | None:
    """The bytes a probe's pieces stand for, or None when one of them stands for none."""
    parts = [token_bytes(adapter, t) for t in tokens]
    return None if any(p is None for p in parts) else b"".join(p for p in parts if p is not None)


def typed_ids(adapter: Adapter, text: str, banned: set[int]) -> tuple[int, ...]:
    """The pieces ``text`` tokenizes to when typed (start, end and padding ids left out)."""
    batch = adapter.tokenize([text])
    ids = batch.ids[0][batch.attention_mask[0].bool()].tolist()
    return tuple(i for i in ids if i not in banned)


def part_of_character(adapter: Adapter, tokens: tuple[int, ...]) -> bool:
    """Whether a probe's pieces stand for non-ASCII bytes that are not whole typeable characters (a lone byte of
    an emoji, which no typed text gives; or an unassigned or private-use character). Never in a SentencePiece
    vocabulary without byte fallback (T5's): pieces named like bytes there are no part of any typed character."""
    data = probe_bytes(adapter, tokens)
    if data is None or all(b < 0x80 for b in data) or typeable(data):
        return False
    return bool(byte_piece_ids(adapter))


def complete_characters(adapter: Adapter, screen: Callable[[tuple[int, ...]], float], banned: set[int],
                        top: int) -> list[tuple[str, tuple[int, ...]]]:
    """(character, typed ids) of the ``top`` characters whose bytes, each screened alone (``screen`` of the byte's
    piece: the suspect's collapse), score highest on average; empty when the vocabulary has no byte pieces."""
    pieces = byte_piece_ids(adapter)
    if not pieces:
        return []
    scores = {b: screen((pieces[b],)) for b in UTF8_BYTES if b in pieces}
    found = {ch: typed_ids(adapter, ch, banned) for ch in ranked_characters(scores, top)}
    return [(ch, ids) for ch, ids in found.items() if ids]
