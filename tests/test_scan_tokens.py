"""Real-input probes of the token-space search (scan/discrete.py) on a tiny tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amdet_audit.scan.discrete import (
    Probe,
    ProbeRunner,
    extension_probes,
    gradient_probes,
    lookalike_probes,
    probe_kind,
    robust,
    search_tokens,
    seed_probes,
)
from amdet_audit.scan.lookalikes import LOOKALIKES, substitute_every, substitute_first

PROMPTS = ["a red fox in the snow", "a violin on a chair, oil painting", "two cats", "a castle at dawn"]


@pytest.fixture(scope="module")
def tower(tiny_clip: Path):
    from amdet_audit.encoders import load_component
    from amdet_audit.sources import resolve

    return load_component(resolve(str(tiny_clip)).components[0])


def test_probe_inputs_place_tokens_after_start_and_before_end(tower) -> None:
    runner = ProbeRunner(tower, None, PROMPTS, padding=4)
    clean = tower.tokenize(PROMPTS)
    for placement in ("start", "end"):
        batch = runner.inputs(Probe("t", placement, tokens=(500, 501)))
        for b, prompt_ids in enumerate(clean.ids):
            real = prompt_ids[clean.attention_mask[b].bool()].tolist()  # BOS .. EOS
            expected = ([real[0], 500, 501, *real[1:]] if placement == "start" else [*real[:-1], 500, 501, real[-1]])
            assert batch.ids[b, : len(expected)].tolist() == expected
            assert int(batch.eos[b]) == len(expected) - 1 and int(batch.ids[b, batch.eos[b]]) == tower.eos_id


def test_a_probe_equals_the_same_text_typed(tower) -> None:
    """A look-alike substitution is the prompts retyped; its end token is the tokenizer's."""
    runner = ProbeRunner(tower, None, PROMPTS, padding=4)
    probe = Probe("o", "text", substitution=("o", "о", "every"))
    batch = runner.inputs(probe)
    typed = tower.tokenize([substitute_every(p, "o", "о") for p in PROMPTS])
    width = batch.ids.shape[1]
    assert torch.equal(batch.ids, typed.ids[:, :width])
    assert torch.equal(batch.eos, typed.attention_mask.sum(dim=1) - 1)


def test_the_model_against_itself_has_no_excess(tower) -> None:
    runner = ProbeRunner(tower, tower, PROMPTS, padding=4)
    score = runner.score(Probe("t", "end", tokens=(600,)))
    assert score.excess == pytest.approx(0.0, abs=1e-6) and score.shift == pytest.approx(0.0, abs=1e-6)


def test_move_cosine_says_whether_the_suspect_goes_where_the_reference_goes(tower) -> None:
    """Against itself a probe moves both alike (cosine 1); without a reference there is nothing to compare."""
    from amdet_audit.scan.features import move_cosine

    assert ProbeRunner(tower, tower, PROMPTS, padding=4).score(Probe("t", "end", tokens=(600,))).move_cosine \
        == pytest.approx(1.0, abs=1e-5)
    assert ProbeRunner(tower, None, PROMPTS, padding=4).score(Probe("t", "end", tokens=(600,))).move_cosine is None
    base = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])  # [B, F] per-prompt moves, mean (2, 0, 0)
    assert move_cosine(base * 5, base) == pytest.approx(1.0)  # only further: still 1
    assert move_cosine(-base, base) == pytest.approx(-1.0)
    assert move_cosine(torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 1.0]]), base) == pytest.approx(0.0)


def test_search_reports_z_scores_against_random_tokens(tower) -> None:
    v = tower.token_embedding_matrix()[[700]].clone()  # a pseudo-trigger sitting on a real token
    found = search_tokens(tower, tower, PROMPTS, [v], padding=4, nearest=2, moved=2, gradient_top=2, rounds=1,
                          nulls=6, seed=1)
    assert found.best_collapse is not None and found.probes > 12
    assert any(s.probe.tokens == (700,) for s in found.top) or found.best_collapse.excess == pytest.approx(0.0)
    assert found.null["token_excess_spread"] > 0 and found.null["text_excess_spread"] > 0  # floored, never zero


def test_a_token_reached_by_the_gradient_and_by_a_pseudo_trigger_is_one_probe(tower) -> None:
    """The same token at the same placement, proposed by two routes, is scored once and listed once."""
    v = tower.token_embedding_matrix()[[700]].clone()
    seeded = seed_probes(tower, None, [v], nearest=1, moved=0)
    assert {(p.placement, p.tokens) for p in seeded} == {("start", (700,)), ("end", (700,))}
    vocabulary = tower.token_embedding_matrix().shape[0]
    by_gradient = gradient_probes(ProbeRunner(tower, None, PROMPTS, padding=4), seeded[0], top=vocabulary)
    assert seeded[0] in by_gradient and len(set(by_gradient)) == len(by_gradient)


def test_an_extension_keeps_the_probe_and_adds_one_token(tower) -> None:
    """Each grown probe is the parent's tokens and one more on either side: its own tokens repeated, then
    gradient-ranked ones."""
    from amdet_audit.scan.discrete import special_ids

    runner = ProbeRunner(tower, None, PROMPTS, padding=4)
    for placement in ("start", "end"):
        parent = Probe("p", placement, tokens=(700, 701))
        grown = extension_probes(runner, parent, top=3)
        assert [g.tokens for g in grown[:2]] == [(700, 701, 700), (700, 701, 701)]  # the repeats come first
        after = [g for g in grown if g.tokens[:2] == (700, 701)]
        before = [g for g in grown if g.tokens[1:] == (700, 701)]
        assert len(after) + len(before) == len(grown) == len(set(grown)) and 3 <= len(after) <= 5
        assert (700, 700, 701) in [g.tokens for g in before]
        added = {g.tokens[-1] for g in after} | {g.tokens[0] for g in before}
        assert all(len(g.tokens) == 3 and g.placement == placement and g.origin == "extended" for g in grown)
        assert not added & special_ids(tower)


def test_extended_probes_are_judged_against_random_sequences_of_their_length(tower) -> None:
    v = tower.token_embedding_matrix()[[700]].clone()
    found = search_tokens(tower, tower, PROMPTS, [v], padding=4, nearest=2, moved=0, gradient_top=2, rounds=1,
                          nulls=4, seed=1, extend=2, beam=1)
    assert {"tokens2_gain_spread", "tokens3_gain_spread", "token_gain_spread"} <= set(found.null)
    assert found.best_collapse in found.confirmed  # the rules chose from the confirmed probes
    assert max(len(s.probe.tokens) for s in found.top if not s.probe.substitution) <= 3
    assert probe_kind(Probe("x", "end", tokens=(1, 2, 3)), (2, 3)) == "tokens3"
    assert probe_kind(Probe("x", "end", tokens=(1, 2)), ()) == "token"  # no null of pairs: the single tokens'
    plain = search_tokens(tower, tower, PROMPTS, [v], padding=4, nearest=2, moved=0, gradient_top=2, rounds=1,
                          nulls=4, seed=1)
    assert not any(k.startswith("tokens") for k in plain.null) and found.probes > plain.probes


def test_lookalike_table_and_robust_spread() -> None:
    assert all(len(t) == 1 and not t.isascii() for twins in LOOKALIKES.values() for t in twins)
    assert substitute_first("moon", "o", "о") == "mоon" and len(lookalike_probes()) % 2 == 0
    median, spread = robust([1.0, 1.0, 1.0, 1.0])
    assert median == 1.0 and spread > 0


def test_a_token_rule_judges_the_strongest_probe_the_null_does_not_explain() -> None:
    from amdet_audit.scan.discrete import ProbeScore, judged

    def score(label: str, excess: float, z: float) -> ProbeScore:
        return ProbeScore(probe=Probe(label, "end", tokens=(1,)), collapse=excess, excess=excess, shift=0.0,
                          excess_z=z)

    narrow_null = score("look-alike", 0.39, 24.7)  # a substitution: its null is narrow, so its z is high
    strong = score("inserted pair", 0.66, 10.9)
    noise = score("explained by the null", 0.9, 2.0)
    scores = [narrow_null, strong, noise]
    assert judged(scores, "excess", "excess_z", 8.0) is strong
    assert judged(scores, "excess", "excess_z", 30.0) is narrow_null  # none clears the bar: the highest z-score
    assert judged([], "excess", "excess_z", 8.0) is None
    capped = ProbeScore(probe=Probe("a->а every", "text", substitution=("a", "а", "every")), collapse=0.9,
                        excess=0.31, shift=0.0, gain=0.76, gain_z=5.0)  # the reference collapses to 0.59 itself
    assert judged([strong, capped], "gain", "gain_z", 3.0) is capped  # by gain (bidirectional towers)
