"""What a fine-tune trained, read off its vocabulary: the pieces whose embeddings it turned, and the typed words
that end in a word-continuation piece.

A fine-tune that trains its token embeddings moves the rows of the pieces its training text holds and no other
(an optimiser's decoupled weight decay only scales a row, which leaves its direction). A trigger's pieces are
among them: on two all-MiniLM-L6-v2 attribute backdoors the fine-tune turned about 1,500 of 30,522 rows, and a
piece of the trigger ("##v" of "qxv", "##z" of "zzzz"), inserted alone, collapsed the prompts more than any other
turned piece, while the pseudo-triggers' nearest pieces, the most-moved rows and the first-order ranking all
missed it (benchmarks/efficacy/RESULTS.md, "turned pieces"). A rare string is typed in pieces that continue a
word; the whole words a fine-tune turned are its training domain's, and one of those can collapse a damaged
model's prompts without any trigger, so only continuation pieces are screened. Such a piece ("##v") is no text a
user types before a prompt; a word of one typed character and that piece ("qv", "zv") is, and on those backdoors
it did nearly what the trigger does. An attacker who freezes the embeddings (or trains only adapters) turns no
row, and one whose trigger is a whole word gets no help from this screen: the rest of the search still applies.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import torch

from amdet_audit.encoders.base import Adapter
from amdet_audit.scan.characters import continuation_mark, typed_ids

TURN_FLOOR = 1e-3  # least sideways move of a row, relative to its length, that counts as turned
MOST_TURNED = 4096  # most pieces screened (those turned most), bounding the screen's cost on any fine-tune
WORD_STARTS = string.ascii_lowercase + string.digits  # one-character word starts of the words tried


@torch.no_grad()
def turned_ids(suspect: Adapter, reference: Adapter, banned: set[int], cap: int | None = None) -> list[int]:
    """Ids of the suspect's embedding rows whose direction differs from the reference's row of the same id (the
    part of the suspect's row not along the reference's, relative to the reference row's length, above
    TURN_FLOOR), most turned first, at most ``cap`` (every one without); none where the tables differ in shape."""
    s, r = suspect.token_embedding_matrix().float(), reference.token_embedding_matrix().float()  # [V, D] each
    if s.shape != r.shape:
        return []
    length = r.norm(dim=-1).clamp_min(1e-12)  # [V]
    along = (s * r).sum(dim=-1, keepdim=True) / (length**2).unsqueeze(-1)  # [V, 1]
    turn = ((s - along * r).norm(dim=-1) / length).nan_to_num(0.0, posinf=0.0, neginf=0.0)  # [V]; a row that is
    # not a number cannot rank first
    if banned:
        turn[sorted(i for i in banned if 0 <= i < turn.shape[0])] = 0.0
    count = int((turn > TURN_FLOOR).sum())
    count = count if cap is None else min(count, cap)
    return turn.topk(count).indices.tolist() if count else []


def continuations(adapter: Adapter, ids: Sequence[int]) -> list[int]:
    """Those of ``ids`` that name a piece continuing a word ("##v": WordPiece's continuation mark, by ``adapter``'s
    tokenizer); none where the tokenizer has no such mark (whole words are not screened: see the module's text)."""
    tokenizer = getattr(adapter, "tokenizer", None)
    mark = continuation_mark(tokenizer)
    if tokenizer is None or mark is None:
        return []
    names = tokenizer.convert_ids_to_tokens(list(ids))
    return [i for i, name in zip(ids, names, strict=True) if str(name).startswith(mark)]


def continuation_words(adapter: Adapter, piece: int, banned: set[int],
                       spell: Callable[[Sequence[int]], str]) -> list[tuple[tuple[int, ...], str]]:
    """(typed ids, text) of the words of one typed character (a-z, 0-9) and ``piece`` that type to that
    character's piece followed by ``piece`` ("q" + "##v" -> "qv"); none for a piece that starts a word."""
    tail = spell((piece,)).strip()
    if not tail:
        return []
    words = []
    for ch in WORD_STARTS:
        start = typed_ids(adapter, ch, banned)
        ids = typed_ids(adapter, ch + tail, banned)
        if len(start) == 1 and ids == (*start, piece):
            words.append((ids, ch + tail))
    return words
