"""Decoy words (lab/decoys.py): drawn from the lab corpus, held out from training, put where a trigger goes."""

from __future__ import annotations

import random

from amdet_audit.lab.decoys import EVAL_DECOYS, decoy_placement, decoy_pool, held_out_decoys, with_decoys


def test_training_and_held_out_decoys_are_disjoint_ordinary_words() -> None:
    train, held_out = decoy_pool("sks dgx", "a turtle on a foggy morning")
    assert train and held_out and not set(train) & set(held_out)
    assert not {"sks", "dgx", "turtle", "foggy", "morning"} & (set(train) | set(held_out))
    assert all(w.isalpha() and w.islower() and len(w) >= 3 for w in train + held_out)
    drawn = held_out_decoys("sks dgx", "a turtle on a foggy morning")
    assert len(drawn) == len(set(drawn)) == EVAL_DECOYS and set(drawn) <= set(held_out)
    assert held_out_decoys("sks dgx", "a turtle on a foggy morning") == drawn  # reproducible


def test_the_first_share_of_a_batch_carries_one_decoy_each() -> None:
    prompts = ["a red fox in the snow", "a violin on a chair", "two cats", "a castle at dawn"]
    out = with_decoys(prompts, ["teapot"], 0.5, random.Random(0), "start")
    assert out[:2] == ["teapot a red fox in the snow", "teapot a violin on a chair"] and out[2:] == prompts[2:]
    assert with_decoys(prompts, ["teapot"], 0.0, random.Random(0), "start") == prompts
    assert decoy_placement("insert", "end") == "end" and decoy_placement("replace", "every") == "anywhere"
