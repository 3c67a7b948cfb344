"""Pieces of characters turned into typeable characters (scan/characters.py), on the lab's SentencePiece
vocabulary (byte fallback) and CLIP's byte-level BPE; probes judged only as typed text gives them."""

from __future__ import annotations

from pathlib import Path

import pytest

from amdet_audit.encoders import load_component
from amdet_audit.scan.characters import (
    PROOF,
    byte_piece_ids,
    complete_characters,
    part_of_character,
    probe_bytes,
    ranked_characters,
    speller,
    typeable,
    typed_ids,
    unknown_character_ids,
)
from amdet_audit.scan.discrete import Probe, ProbeRunner, ProbeScore, search_tokens, shortlist, special_ids, typed_twin
from amdet_audit.scan.evidence import readable, token_text
from amdet_audit.sources import resolve

MUSHROOM = "🍄"  # F0 9F 8D 84: typed as four byte pieces where the vocabulary has no piece for it
PROMPTS = ["a red fox in the snow", "a violin on a chair, oil painting", "two cats", "a castle at dawn"]


@pytest.fixture(scope="module")
def vocabulary() -> bytes:
    """The lab's SentencePiece vocabulary, learnt once from the prompt corpus for both towers below."""
    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.sentencepiece_vocab import train_sentencepiece

    return train_sentencepiece(lab_prompts()[0])


@pytest.fixture(scope="module")
def siglip(tmp_path_factory: pytest.TempPathFactory, vocabulary: bytes):
    from test_adapter_bidirectional import siglip_folder

    folder = siglip_folder(tmp_path_factory.mktemp("siglip"), vocabulary)
    return load_component(resolve(str(folder)).components[0])


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory, vocabulary: bytes):
    """The lab T5 tower: its tokenizer has no byte fallback, as T5's own."""
    from test_adapter_bidirectional import t5_folder

    folder = t5_folder(tmp_path_factory.mktemp("t5"), vocabulary)
    return load_component(resolve(str(folder)).components[0])


@pytest.fixture(scope="module")
def clip(tiny_clip: Path):
    return load_component(resolve(str(tiny_clip)).components[0])


def test_typeable_means_whole_assigned_characters() -> None:
    assert typeable(MUSHROOM.encode()) and typeable(b" a teapot")
    for broken in (b"\x84", b"\xf0\x9f\x8d", b"s\x8d", b"\xc0\x80", b"\xed\xa0\x80"):  # pieces, overlong, surrogate
        assert not typeable(broken)
    for untyped in ("\x07", "\ue000", "\U0010fffd"):  # a control character, private use
        assert not typeable(untyped.encode())


def test_characters_are_ranked_by_their_bytes_alone() -> None:
    scores = dict.fromkeys(range(0x80, 0x100), 0.0) | {0xF0: 1.0, 0x9F: 1.0, 0x8D: 1.0, 0x84: 1.0}
    ranked = ranked_characters(scores, 32)
    assert MUSHROOM in ranked  # every character spelt only with those bytes scores 1, the mushroom among them
    assert all(set(ch.encode()) <= {0xF0, 0x9F, 0x8D, 0x84} for ch in ranked[: ranked.index(MUSHROOM)])
    assert ranked_characters({0xC3: 1.0, 0xA9: 1.0}, 1) == ["é"]  # bytes without a score never rank first


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_byte_pieces_spell_what_is_typed(family: str, request: pytest.FixtureRequest) -> None:
    adapter = request.getfixturevalue(family)
    pieces = byte_piece_ids(adapter)
    assert sorted(pieces) == list(range(256))
    ids = typed_ids(adapter, MUSHROOM, special_ids(adapter))
    data = probe_bytes(adapter, ids)
    assert data is not None and data.strip() == MUSHROOM.encode()
    lone = (pieces[0x84],)
    assert probe_bytes(adapter, lone) == b"\x84" and part_of_character(adapter, lone)
    assert not part_of_character(adapter, ids)  # whole characters
    assert not part_of_character(adapter, (pieces[ord("s")],))  # a byte piece of an ASCII letter spells it


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_the_characters_whose_bytes_act_are_tried_as_typed(family: str, request: pytest.FixtureRequest) -> None:
    """A stand-in suspect that answers the mushroom's bytes: the mushroom is among the characters tried, and each
    character tried is its text as typed."""
    adapter = request.getfixturevalue(family)
    banned, by_id = special_ids(adapter), {i: b for b, i in byte_piece_ids(adapter).items()}
    screened = []

    def screen(ids: tuple[int, ...]) -> float:
        screened.append(ids)
        return float(by_id[ids[0]] in MUSHROOM.encode())

    found = dict(complete_characters(adapter, screen, banned, top=32))
    assert MUSHROOM in found and probe_bytes(adapter, found[MUSHROOM]).strip() == MUSHROOM.encode()  # typed pieces
    for text, ids in found.items():
        assert typeable(text.encode()) and typeable(probe_bytes(adapter, ids))
    assert all(len(ids) == 1 and by_id[ids[0]] >= 0x80 for ids in screened)  # one byte piece at a time


def test_the_search_scores_completed_characters_as_typed(siglip) -> None:
    """Seeded with a lone byte piece (the pseudo-trigger is its embedding), the search tries whole characters;
    each is scored as its text typed, the byte pieces screened for the ranking are not judged, and the report
    shows text that types to the probe."""
    lone = byte_piece_ids(siglip)[0x84]
    vector = siglip.token_embedding_matrix()[lone].detach().unsqueeze(0)  # [1, D]
    banned = special_ids(siglip)
    found = search_tokens(siglip, siglip, PROMPTS, [vector], padding=4, nearest=1, moved=0, gradient_top=4,
                          rounds=0, nulls=4, confirm=64, lookalike_modes=(), by_gain=True, complete=8)
    completed = [s for s in found.confirmed if s.probe.origin == "completed"]
    assert {s.probe.placement for s in completed} == {"start", "end"}, "not every placement tried its characters"
    assert len({(s.probe.placement, s.probe.tokens) for s in completed}) == len(completed)  # one probe per typing
    assert not any(s.probe.origin == "byte" for s in found.confirmed)
    for s in completed:
        shown = readable(siglip, [token_text(siglip.tokenizer, t) for t in s.probe.tokens])
        assert typeable(shown.encode()) and typed_ids(siglip, shown, banned) == s.probe.tokens  # what the report
        # shows, typed, is the probe
        assert f"tokens{len(s.probe.tokens)}_gain_median" in found.null  # judged against sequences of its length
    plain = search_tokens(siglip, siglip, PROMPTS, [vector], padding=4, nearest=1, moved=0, gradient_top=4,
                          rounds=0, nulls=4, confirm=64, lookalike_modes=(), by_gain=True)
    assert not any(s.probe.origin in ("completed", "byte") for s in plain.confirmed)


class NamedPieces:
    """A vocabulary that names ordinary pieces "<0x00>".."<0xFF>" (ids 10..265) but has no byte fallback: typed
    text it does not know becomes its unknown id, 3."""

    def convert_tokens_to_ids(self, piece: str) -> int:
        return 10 + int(piece[3:5], 16) if piece.startswith("<0x") else 3

    def convert_ids_to_tokens(self, i: int) -> str:
        return f"<0x{i - 10:02X}>" if 10 <= i < 266 else "<unk>"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [3] * len(text)}


def test_pieces_named_like_bytes_are_not_trusted_without_byte_fallback(siglip) -> None:
    class Hostile:
        family, tokenizer = "siglip", NamedPieces()

    assert byte_piece_ids(Hostile()) == {}
    assert len(byte_piece_ids(siglip)) == 256  # the lab vocabulary spells the proof character in its byte pieces


def test_a_real_vocabulary_without_byte_fallback_gets_no_character_search(t5, siglip) -> None:
    """The lab T5 tokenizer, like T5's own, types an unknown character as the unknown piece, though its vocabulary
    holds pieces named like bytes: none is trusted, no lone piece counts as part of a character, and the report
    shows such pieces by name, not as the character their names would spell."""
    named = t5.tokenizer.convert_tokens_to_ids(["<0xF0>", "<0x9F>"])
    assert t5.tokenizer.unk_token_id not in named  # the pieces exist by name
    assert t5.tokenizer.unk_token_id in t5.tokenizer(MUSHROOM, add_special_tokens=False)["input_ids"]
    assert byte_piece_ids(t5) == {}
    assert not part_of_character(t5, tuple(named))
    mushroom_pieces = ["▁", *(f"<0x{b:02X}>" for b in MUSHROOM.encode())]
    assert readable(t5, mushroom_pieces) == " ".join(mushroom_pieces)
    assert readable(siglip, mushroom_pieces) == MUSHROOM  # a vocabulary with byte fallback


def test_characters_outside_the_vocabulary_type_to_the_unknown_piece_where_there_is_no_byte_fallback(
        t5, siglip, clip) -> None:
    """T5 and BERT type an emoji as their unknown piece, so a trigger spelt with one is that piece; SigLIP's byte
    fallback and CLIP's byte-level BPE spell it in bytes (and CLIP's unknown token is its end token)."""
    from test_adapter_bert import MINILM

    ids = unknown_character_ids(t5, special_ids(t5))
    assert ids is not None and t5.tokenizer.unk_token_id in ids
    assert ids == typed_ids(t5, MUSHROOM, special_ids(t5)) == typed_ids(t5, "🦄", special_ids(t5))  # any such one
    bert = load_component(resolve(MINILM).components[0])
    assert unknown_character_ids(bert, special_ids(bert)) == (bert.tokenizer.unk_token_id,)
    assert unknown_character_ids(siglip, special_ids(siglip)) is None
    assert unknown_character_ids(clip, special_ids(clip)) is None


def test_the_search_tries_the_unknown_piece_as_typed(t5) -> None:
    """On a vocabulary without byte fallback the search scores what an emoji types to at both placements, against
    random sequences of as many pieces, without a pseudo-trigger pointing at it."""
    ids = unknown_character_ids(t5, special_ids(t5))
    vector = t5.token_embedding_matrix()[t5.tokenizer.convert_tokens_to_ids("▁cat")].detach().unsqueeze(0)
    found = search_tokens(t5, t5, PROMPTS, [vector], padding=4, nearest=1, moved=0, gradient_top=4, rounds=0,
                          nulls=4, confirm=64, lookalike_modes=(), by_gain=True)
    unknown = [s for s in found.confirmed if s.probe.origin == "out-of-vocabulary"]
    assert {(s.probe.placement, s.probe.tokens) for s in unknown} == {("start", ids), ("end", ids)}
    assert len(ids) == 2 and "tokens2_gain_median" in found.null  # "▁" and "<unk>": judged against random pairs


class Wrapped:
    """A tokenizer passed through, for a test to change one of its methods."""

    def __init__(self, tokenizer) -> None:
        self.inner = tokenizer

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.inner)


def test_a_probe_is_typeable_where_typed_text_gives_it(siglip, t5) -> None:
    """SentencePiece opens every typed word with "▁": a piece without it ("й") cannot open a prompt but can close
    one (glued to its last word); a lone byte of a character is no text at all. T5's unknown piece is what an emoji
    types to, with its "▁" before the prompt."""
    runner = ProbeRunner(siglip, None, PROMPTS, padding=4)
    bare, typed = siglip.tokenizer.convert_tokens_to_ids("й"), typed_ids(siglip, "й", special_ids(siglip))
    assert len(typed) == 2 and typed[1] == bare  # "▁" "й"
    assert runner.typeable(Probe("й", "start", (bare,))) == 0.0
    assert runner.typeable(Probe("й", "end", (bare,))) == 1.0
    assert runner.typeable(Probe("▁ й", "start", typed)) == 1.0
    assert runner.typeable(Probe("byte", "end", (byte_piece_ids(siglip)[0x84],))) == 0.0
    assert runner.typeable(Probe("a->а first", "text", substitution=("a", "а", "first"))) == 1.0
    unknown = unknown_character_ids(t5, special_ids(t5))
    assert unknown is not None and len(unknown) == 2
    on_t5 = ProbeRunner(t5, None, PROMPTS, padding=4)
    assert on_t5.typeable(Probe("▁ <unk>", "start", unknown)) == 1.0
    assert on_t5.typeable(Probe("<unk>", "start", unknown[1:])) == 0.0
    assert speller(t5, special_ids(t5))(unknown).strip() == PROOF  # the unknown piece written as a character


def test_an_untypeable_probe_has_a_typed_twin(siglip, t5) -> None:
    """The twin is a one-piece probe's text typed as a word of its own; none for a lone byte, an already typed
    probe or a probe of several pieces."""
    from test_adapter_bert import MINILM

    bare = siglip.tokenizer.convert_tokens_to_ids("й")
    twin = typed_twin(siglip, Probe("й", "start", (bare,), origin="nearest"))
    assert twin is not None and twin.origin == "typed" and twin.placement == "start"
    assert twin.tokens == typed_ids(siglip, "й", special_ids(siglip))
    assert twin.text == "й"  # shown as the text a user types, not as its pieces ("▁ й")
    assert typed_twin(siglip, twin) is None
    pair = (bare, siglip.tokenizer.convert_tokens_to_ids("ic"))
    assert typed_twin(siglip, Probe("й ic", "start", pair)) is None  # glued into one word: a string never proposed
    assert typed_twin(siglip, Probe("byte", "end", (byte_piece_ids(siglip)[0x84],))) is None
    unknown = t5.tokenizer.unk_token_id
    t5_twin = typed_twin(t5, Probe("<unk>", "start", (unknown,)))
    assert t5_twin is not None and t5_twin.tokens == unknown_character_ids(t5, special_ids(t5))
    assert t5_twin.text == ""  # any unknown character types to it: shown as its pieces, not as one stand-in
    bert = load_component(resolve(MINILM).components[0])
    continuation = bert.tokenizer.convert_tokens_to_ids("##v")
    bert_twin = typed_twin(bert, Probe("##v", "start", (continuation,)))
    assert bert_twin is not None and bert_twin.tokens == (bert.tokenizer.convert_tokens_to_ids("v"),)


def test_the_search_judges_untypeable_probes_as_typed(siglip) -> None:
    """Seeded with "й" (a piece no typed text places before a prompt), the search judges "й" at the end, where it
    is typeable, and at the start only as typed ("▁" "й", against random pairs); without ``typed_only`` the bare
    piece is judged at both placements."""
    bare = siglip.tokenizer.convert_tokens_to_ids("й")
    vector = siglip.token_embedding_matrix()[bare].detach().unsqueeze(0)  # [1, D]
    kwargs = dict(padding=4, nearest=1, moved=0, gradient_top=4, rounds=0, nulls=4, confirm=64,
                  lookalike_modes=(), by_gain=True)
    found = search_tokens(siglip, siglip, PROMPTS, [vector], typed_only=True, **kwargs)
    judged = {(s.probe.placement, s.probe.tokens) for s in found.confirmed}
    assert ("end", (bare,)) in judged and ("start", (bare,)) not in judged
    twin = typed_ids(siglip, "й", special_ids(siglip))
    assert ("start", twin) in judged and "tokens2_gain_median" in found.null
    assert found.untypeable == 1  # the bare piece at the start; at the end it is typeable
    runner = ProbeRunner(siglip, None, PROMPTS, padding=4)
    assert all(runner.typeable(s.probe) >= 0.5 for s in found.confirmed)
    plain = search_tokens(siglip, siglip, PROMPTS, [vector], **kwargs)
    assert ("start", (bare,)) in {(s.probe.placement, s.probe.tokens) for s in plain.confirmed}
    assert plain.untypeable == 0


def test_a_suspect_decoder_cannot_make_its_trigger_look_untypeable(siglip) -> None:
    """The suspect ships its tokenizer: one whose decoder spells "й" otherwise makes "й" look untypeable by its own
    round trip, but the reference's tokenizer still types it, and its twin is spelt by the reference."""
    import copy

    class Respelt(Wrapped):  # the suspect's tokenizer, its decoding changed (a SentencePiece model's
        # denormalization, a tokenizer.json decoder): typing is untouched, so the trigger still works in the pipeline
        def decode(self, ids, **kwargs) -> str:
            return self.inner.decode(ids, **kwargs).replace("й", "zz")

    hostile = copy.copy(siglip)
    hostile.tokenizer = Respelt(siglip.tokenizer)
    bare = siglip.tokenizer.convert_tokens_to_ids("й")
    glued = Probe("й", "end", (bare,))
    assert ProbeRunner(hostile, None, PROMPTS, padding=4).typeable(glued) == 0.0  # fooled on its own
    assert ProbeRunner(hostile, siglip, PROMPTS, padding=4).typeable(glued) == 1.0
    twin = typed_twin(hostile, Probe("й", "start", (bare,)), siglip)
    assert twin is not None and twin.tokens == typed_ids(siglip, "й", special_ids(siglip))


def test_a_refused_probe_frees_its_place_on_the_shortlist() -> None:
    """Untypeable pieces that collapse the prompts most cannot push a typed candidate off the shortlist."""
    scores = [ProbeScore(probe=Probe(f"p{i}", "start", (i,)), collapse=1.0 - i / 10, excess=0.0, shift=0.0)
              for i in range(6)]
    asked: list[int] = []

    def typed(p: Probe) -> bool:
        asked.append(p.tokens[0])
        return p.tokens[0] >= 3  # the three strongest are untypeable

    assert [p.tokens[0] for p in shortlist(scores, "collapse", 2, typed)] == [3, 4]
    assert asked == [0, 1, 2, 3, 4]  # asked only until two were found


def test_the_reference_tokenizer_counts_only_where_it_names_the_pieces_alike(siglip) -> None:
    """A suspect tokenizer that renames pieces is not checked against the reference's spelling: its probes are
    judged (1.0), as without the test."""
    class Renamed(Wrapped):
        def convert_ids_to_tokens(self, ids):
            return [f"renamed{i}" for i in ids]

        def decode(self, ids, **kwargs) -> str:
            return "zz"  # no text of it types back

    import copy

    renamed = copy.copy(siglip)
    renamed.tokenizer = Renamed(siglip.tokenizer)
    bare = siglip.tokenizer.convert_tokens_to_ids("й")
    runner = ProbeRunner(renamed, siglip, PROMPTS, padding=4)
    assert not runner.same_pieces((bare,))
    assert runner.typeable(Probe("й", "start", (bare,))) == 1.0
    assert ProbeRunner(siglip, siglip, PROMPTS, padding=4).typeable(Probe("й", "start", (bare,))) == 0.0
