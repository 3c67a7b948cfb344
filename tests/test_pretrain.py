"""Brief causal-LM pretraining of a tiny CLIP tower: it moves the clean profile, and it is deterministic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from amdet_audit.data.prompts import corpus, split
from amdet_audit.lab.pretrain import clean_profile, make_tiny_clip, pretrain_causal_lm
from amdet_audit.tokenization import BOS_ID, EOS_ID, VOCAB_SIZE, write_clip_tokenizer

torch.set_num_threads(1)  # bitwise determinism, and no thread contention with other test processes

SMALL = {"hidden": 64, "layers": 2, "heads": 2, "intermediate": 256}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real CLIP BPE tokenizer, written offline."""
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer(Path(tmp_path_factory.mktemp("tok")))
    return CLIPTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def data() -> tuple[list[str], list[str]]:
    """600 training prompts and 200 held-out ones."""
    return split(corpus(800, 0), 0.25)


@pytest.fixture(scope="module")
def trained(tokenizer: Any, data: tuple[list[str], list[str]]) -> dict[str, Any]:
    """A small tower profiled on held-out prompts before and after 150 steps of pretraining (~10 s)."""
    train, test = data
    model = make_tiny_clip(**SMALL)
    before = clean_profile(model, tokenizer, test)
    result = pretrain_causal_lm(model, tokenizer, train, steps=150)
    after = clean_profile(model, tokenizer, test)
    return {"model": model, "before": before, "after": after, "result": result}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_make_tiny_clip_config_and_seed() -> None:
    rng = torch.get_rng_state()
    model = make_tiny_clip(**SMALL, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # caller's RNG untouched
    cfg = model.config
    assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id) == (VOCAB_SIZE, BOS_ID, EOS_ID)
    assert cfg.pad_token_id == EOS_ID
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.max_position_embeddings) == (64, 2, 77)
    assert not model.training
    same, other = make_tiny_clip(**SMALL, seed=3), make_tiny_clip(**SMALL, seed=4)
    s, t, o = _state(model), _state(same), _state(other)
    assert all(torch.equal(s[k], t[k]) for k in s)
    assert not torch.equal(s["embeddings.token_embedding.weight"], o["embeddings.token_embedding.weight"])
    assert make_tiny_clip(pad_token_id=0).config.pad_token_id == 0


def test_pretraining_lowers_loss(trained: dict[str, Any]) -> None:
    r = trained["result"]
    assert r["steps"] == 150 and r["seconds"] > 0
    assert 500 < r["kept_vocab"] < 5000  # restricted softmax: a few thousand ids, not 49,408
    assert r["initial_loss"] > 6.0  # about log(kept_vocab) at init
    assert r["final_loss"] < r["initial_loss"] - 1.5  # learns the corpus's language (observed: ~6.8 -> ~3.9)
    assert not trained["model"].training


def test_pretraining_moves_clean_profile_towards_a_real_encoder(trained: dict[str, Any]) -> None:
    before, after = trained["before"], trained["after"]
    # Real tokens stop sharing one direction (observed 0.63-0.88 -> ~0.30 over seeds).
    assert before["assimilation_real"] > 0.5
    assert after["assimilation_real"] < before["assimilation_real"] - 0.2
    assert after["assimilation_real"] < 0.45
    # Over all 77 positions, EOS padding (never a training target) keeps outputs alike; still lower.
    assert after["assimilation_all"] < before["assimilation_all"]
    # Different prompts' real-token outputs become less alike (observed 0.44-0.51 -> ~0.30 over seeds).
    # The flattened all-position cosine is dominated by padding and does not fall reliably at this tiny size.
    assert after["cross_prompt_cosine_real"] < before["cross_prompt_cosine_real"] - 0.08
    for profile in (before, after):
        assert abs(profile["cross_prompt_cosine_centred"]) < 0.05  # centred on themselves: ~ -1/(N-1)
        assert profile["n_prompts"] == 200


def test_same_seed_gives_identical_weights(tokenizer: Any, data: tuple[list[str], list[str]]) -> None:
    train = data[0][:200]
    runs = []
    for seed in (0, 0, 1):
        model = make_tiny_clip(**SMALL)
        pretrain_causal_lm(model, tokenizer, train, steps=12, batch_size=16, seed=seed)
        runs.append(_state(model))
    first, again, other = runs
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_untouched_vocabulary_rows_and_module_restored(tokenizer: Any, data: tuple[list[str], list[str]]) -> None:
    model = make_tiny_clip(**SMALL)
    embedding = model.get_input_embeddings()
    init = embedding.weight.detach().clone()
    calls: list[tuple[int, int]] = []
    train = data[0][:100]
    pretrain_causal_lm(model, tokenizer, train, steps=5, batch_size=8, progress=lambda s, n: calls.append((s, n)))
    assert calls == [(s, 5) for s in range(1, 6)]
    assert model.get_input_embeddings() is embedding and embedding.weight.shape == (VOCAB_SIZE, 64)
    used = torch.unique(tokenizer(train, return_tensors="pt", padding=True)["input_ids"])
    changed = (embedding.weight.detach() != init).any(dim=1)
    assert changed[used].float().mean() > 0.9  # the corpus's rows were trained
    unused = torch.ones(VOCAB_SIZE, dtype=torch.bool)
    unused[used] = False
    assert not changed[unused].any()  # the other ~48k rows are exactly as initialised


def test_clean_profile_sanity(tokenizer: Any) -> None:
    model = make_tiny_clip(**SMALL)
    same = clean_profile(model, tokenizer, ["a red fox"] * 3)
    assert same["cross_prompt_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert same["cross_prompt_cosine_real"] == pytest.approx(1.0, abs=1e-5)
    model.train()
    profile = clean_profile(model, tokenizer, ["a red fox", "an old lighthouse at night", "a bowl of ramen"])
    assert model.training  # mode restored
    keys = {"assimilation_all", "assimilation_real", "cross_prompt_cosine", "cross_prompt_cosine_centred"}
    assert keys <= set(profile)
    assert all(-1.0 <= v <= 1.0 for k, v in profile.items() if k != "n_prompts")
    with pytest.raises(ValueError):
        clean_profile(model, tokenizer, ["one prompt"])


def test_bad_arguments_raise(tokenizer: Any) -> None:
    model = make_tiny_clip(**SMALL)
    with pytest.raises(ValueError):
        pretrain_causal_lm(model, tokenizer, [], steps=5)
    with pytest.raises(ValueError):
        pretrain_causal_lm(model, tokenizer, ["a red fox"], steps=0)


def test_summary_loss_hand_computed() -> None:
    from amdet_audit.lab.pretrain import _summary_loss

    emb = 50.0 * torch.eye(4)  # [V'=4, D=4]: logits = 50 * h
    ids = torch.tensor([[0, 2, 3, 1, 1]])  # BOS, two content tokens, EOS, padding (kept-index space)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    h = torch.zeros(1, 5, 4)
    h[0, 3] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # first EOS output: all mass on tokens 2 and 3, evenly
    assert _summary_loss(h, ids, mask, emb).item() == pytest.approx(math.log(2), abs=1e-4)
    h[0, 3] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # all mass on token 2 only: token 3 gets ~e^-50
    assert _summary_loss(h, ids, mask, emb).item() > 20


def test_summary_weight_trains_and_adds_its_term(tokenizer: Any, data: tuple[list[str], list[str]]) -> None:
    train = data[0][:100]
    plain, summary = make_tiny_clip(**SMALL), make_tiny_clip(**SMALL)
    r0 = pretrain_causal_lm(plain, tokenizer, train, steps=3, batch_size=8)
    r1 = pretrain_causal_lm(summary, tokenizer, train, steps=3, batch_size=8, summary_weight=1.0)
    assert r1["initial_loss"] > r0["initial_loss"] + 3.0  # bag-of-words term ~log(kept vocab) at init
    assert not torch.equal(plain.final_layer_norm.weight, summary.final_layer_norm.weight)
