"""ClipTextAdapter against the model's own forward, on tiny seeded towers with the real CLIP tokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from amdet_audit.encoders.clip import ClipTextAdapter, causal_mask, locate_parts
from amdet_audit.lab.folders import PAD_TOKENS, build_tiny_clip, tiny_clip_config
from amdet_audit.tokenization import EOS_ID, VOCAB_SIZE, write_clip_tokenizer

torch.set_num_threads(1)
TOL = 1e-5

PROMPTS = [
    "",
    "a photo of a cat",
    "an astronaut riding a horse on the moon, highly detailed!",
    "hello! world!! (masterpiece), 8k",
    " ".join(["portrait of a smiling woman in a red dress"] * 12),  # truncated at T
]


@dataclass(frozen=True)
class Spec:
    """One tiny tower: width, depth, heads, max positions, pad token, projection, legacy EOS id in config."""

    hidden: int
    layers: int
    heads: int
    positions: int
    pad: str
    projection: bool
    legacy_eos: bool = False

    def __str__(self) -> str:
        proj = "proj" if self.projection else "plain"
        legacy = "-legacy" if self.legacy_eos else ""
        return f"D{self.hidden}-L{self.layers}-H{self.heads}-T{self.positions}-pad{self.pad}-{proj}{legacy}"


SPECS = [
    Spec(32, 1, 2, 77, "eos", False),
    Spec(64, 2, 4, 32, "!", False),
    Spec(96, 3, 3, 77, "!", True),
    Spec(64, 2, 2, 32, "eos", True),
    Spec(48, 2, 4, 77, "eos", False, legacy_eos=True),
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """pad name -> CLIPTokenizer written from the bundled BPE file."""
    from transformers import CLIPTokenizer

    out = {}
    for pad, (token, _) in PAD_TOKENS.items():
        folder = write_clip_tokenizer(tmp_path_factory.mktemp("tok"), max_length=77, pad_token=token)
        out[pad] = CLIPTokenizer.from_pretrained(str(folder))
    return out


def make(spec: Spec, tokenizers: dict[str, object], read_layer: int = -1, seed: int = 0):
    """(model, adapter) for a spec; the adapter freezes the very model it wraps."""
    config = tiny_clip_config(
        hidden=spec.hidden, layers=spec.layers, heads=spec.heads, max_positions=spec.positions, pad=spec.pad
    )
    if spec.legacy_eos:
        config.eos_token_id, config.bos_token_id, config.pad_token_id = 2, 0, 1  # as openai/clip-vit-large-patch14
    model = build_tiny_clip(config, projection=spec.projection, seed=seed)
    return model, ClipTextAdapter(model, tokenizers[spec.pad], read_layer=read_layer)


def reference(model: torch.nn.Module, ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """(last_hidden_state, pooled or text_embeds, hidden_states) from the model's own forward."""
    out = model(input_ids=ids, output_hidden_states=True, **kwargs)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return out.last_hidden_state, pooled, out.hidden_states


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference (shapes must agree)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ---- 1. equivalence ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_forward_equals_model_forward(spec: Spec, tokenizers) -> None:
    model, adapter = make(spec, tokenizers)
    batch = adapter.tokenize(PROMPTS)
    assert batch.ids.shape == (len(PROMPTS), spec.positions)
    assert batch.ids[-1, -1].item() == EOS_ID  # the long prompt is truncated, EOS kept
    with torch.no_grad():
        out = adapter.forward(batch.ids)
        last, pooled, _ = reference(model, batch.ids)
    assert max_diff(out.last, last) <= TOL
    assert max_diff(out.read, last) <= TOL
    assert max_diff(out.pooled, pooled) <= TOL


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_read_layer_minus_two_is_penultimate_without_final_norm(spec: Spec, tokenizers) -> None:
    model, adapter = make(spec, tokenizers, read_layer=-2)
    batch = adapter.tokenize(PROMPTS)
    with torch.no_grad():
        out = adapter.forward(batch.ids)
        last, pooled, hidden = reference(model, batch.ids)
    assert max_diff(out.read, hidden[-2]) <= TOL
    assert max_diff(out.last, last) <= TOL
    assert max_diff(out.pooled, pooled) <= TOL
    assert max_diff(out.read, out.last) > 1e-3  # really a different read-out


@pytest.mark.parametrize("spec", SPECS[:3], ids=str)
def test_padding_mask_matches_model_with_mask(spec: Spec, tokenizers) -> None:
    model, adapter = make(spec, tokenizers)
    batch = adapter.tokenize(PROMPTS)
    with torch.no_grad():
        out = adapter.forward(batch.ids, attention_mask=batch.attention_mask)
        last, pooled, _ = reference(model, batch.ids, attention_mask=batch.attention_mask)
        unmasked = adapter.forward(batch.ids)
    assert max_diff(out.last, last) <= TOL
    assert max_diff(out.pooled, pooled) <= TOL
    assert max_diff(out.last, unmasked.last) > 1e-4  # the default (no mask, as SD) is a different computation


def test_token_embeds_argument_matches_lookup(tokenizers) -> None:
    _, adapter = make(SPECS[1], tokenizers)
    ids = adapter.tokenize(PROMPTS).ids
    with torch.no_grad():
        direct = adapter.forward(ids)
        cached = adapter.forward(ids, token_embeds=adapter.embed_tokens(ids))
    assert max_diff(direct.read, cached.read) == 0.0


def test_shorter_sequences_are_causal_prefixes(tokenizers) -> None:
    _, adapter = make(SPECS[0], tokenizers)
    ids = adapter.tokenize(PROMPTS).ids
    with torch.no_grad():
        full = adapter.forward(ids).last
        short = adapter.forward(ids[:, :20]).last
    assert max_diff(full[:, :20], short) <= TOL


# ---- 2. insertion is a faithful soft token ----------------------------------------------------------------------


def inserted_ids(ids: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """ids with ``tokens`` really placed after BOS, cut back to T."""
    k, length = len(tokens), ids.shape[1]
    middle = torch.tensor(tokens, dtype=ids.dtype).expand(ids.shape[0], k)
    return torch.cat([ids[:, :1], middle, ids[:, 1 : length - k]], dim=1)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("words", [["sks"], ["cat", "astronaut"]], ids=["k1", "k2"])
@pytest.mark.parametrize("batched", [False, True], ids=["shared", "per-row"])
def test_insert_equals_real_tokens(spec: Spec, words: list[str], batched: bool, tokenizers) -> None:
    model, adapter = make(spec, tokenizers)
    tokens = [adapter.tokenizer.convert_tokens_to_ids(w + "</w>") for w in words]
    assert all(0 < t < VOCAB_SIZE - 2 for t in tokens)
    ids = adapter.tokenize(PROMPTS).ids
    vectors = adapter.token_embedding_matrix()[tokens]  # [k, D]
    if batched:
        vectors = vectors.expand(ids.shape[0], -1, -1)  # [B, k, D]
    real = inserted_ids(ids, tokens)
    with torch.no_grad():
        soft = adapter.forward(ids, insert=vectors)
        hard = adapter.forward(real)
        last, pooled, _ = reference(model, real)
    assert max_diff(soft.read, hard.read) <= TOL
    assert max_diff(soft.last, last) <= TOL
    kept = (real == EOS_ID).any(dim=1)  # rows whose EOS was not pushed off the end
    assert kept[:-1].all() and not kept[-1]
    assert max_diff(soft.pooled[kept], pooled[kept]) <= TOL
    end = soft.last[~kept, -1]  # an EOS pushed off the end pools at the last position
    if adapter._projection is not None:
        end = adapter._projection(end)
    assert max_diff(soft.pooled[~kept], end) <= TOL


def test_insert_with_padding_mask_matches_real_tokens(tokenizers) -> None:
    model, adapter = make(SPECS[1], tokenizers)
    batch = adapter.tokenize(PROMPTS[:4])
    token = adapter.tokenizer.convert_tokens_to_ids("sks</w>")
    real = inserted_ids(batch.ids, [token])
    real_mask = inserted_ids(batch.attention_mask, [1])
    with torch.no_grad():
        vector = adapter.token_embedding_matrix()[[token]]  # [1, D]
        soft = adapter.forward(batch.ids, attention_mask=batch.attention_mask, insert=vector)
        last, pooled, _ = reference(model, real, attention_mask=real_mask)
    assert max_diff(soft.last, last) <= TOL
    assert max_diff(soft.pooled, pooled) <= TOL


def test_insert_rejects_bad_shapes(tokenizers) -> None:
    _, adapter = make(SPECS[1], tokenizers)
    ids = adapter.tokenize(PROMPTS[:2]).ids
    with pytest.raises(ValueError, match="insert must be"):
        adapter.forward(ids, insert=torch.zeros(1, adapter.hidden_size + 1))
    with pytest.raises(ValueError, match="insert must be"):
        adapter.forward(ids, insert=torch.zeros(3, 1, adapter.hidden_size))
    with pytest.raises(ValueError, match="does not fit"):
        adapter.forward(ids, insert=torch.zeros(ids.shape[1], adapter.hidden_size))
    with pytest.raises(ValueError, match="exceeds"):
        adapter.forward(torch.zeros(1, adapter.max_positions + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        adapter.forward(ids.float())


# ---- 3. causality -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS[:3], ids=str)
def test_later_token_does_not_change_earlier_positions(spec: Spec, tokenizers) -> None:
    _, adapter = make(spec, tokenizers, read_layer=-2)
    ids = adapter.tokenize(["a photo of a cat on a sofa"]).ids
    changed = ids.clone()
    changed[0, 5] = adapter.tokenizer.convert_tokens_to_ids("dog</w>")
    with torch.no_grad():
        a, b = adapter.forward(ids), adapter.forward(changed)
    for name in ("read", "last"):
        x, y = getattr(a, name), getattr(b, name)
        assert max_diff(x[:, :5], y[:, :5]) == 0.0
        assert max_diff(x[:, 5], y[:, 5]) > 1e-6
    moved = (a.last[:, 5:] - b.last[:, 5:]).abs().amax(dim=-1)  # [1, T-5]
    assert moved.min().item() > 1e-6  # every later position attends to the changed token


@pytest.mark.parametrize("spec", SPECS[:3], ids=str)
def test_adapter_path_is_not_bidirectional(spec: Spec, tokenizers) -> None:
    """Guards against the silent pitfall: the encoder called without a mask attends in both directions."""
    _, adapter = make(spec, tokenizers)
    ids = adapter.tokenize(PROMPTS).ids
    tower, _ = locate_parts(adapter.model)
    with torch.no_grad():
        ours = adapter.forward(ids).last
        bidirectional = tower.final_layer_norm(tower.encoder(inputs_embeds=adapter.embed(ids))[0])
    assert max_diff(ours, bidirectional) > 1e-2


def test_causal_mask_layout() -> None:
    mask = causal_mask(4, torch.float32, torch.device("cpu"), key_mask=torch.tensor([[1, 1, 1, 0]]))
    assert mask.shape == (1, 1, 4, 4)
    lowest = torch.finfo(torch.float32).min
    allowed = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask[0, 0] == 0, allowed)
    assert (mask[0, 0][~allowed] == lowest).all()


# ---- 4. gradients -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[2]], ids=str)
def test_gradient_reaches_insert_and_no_parameter(spec: Spec, tokenizers) -> None:
    _, adapter = make(spec, tokenizers, read_layer=-2)
    ids = adapter.tokenize(PROMPTS).ids
    torch.manual_seed(1)
    vectors = (adapter.token_embedding_matrix()[[320, 1125]] + 0.01 * torch.randn(2, spec.hidden)).requires_grad_()
    out = adapter.forward(ids, insert=vectors)
    loss = out.read.pow(2).mean() + out.pooled.pow(2).mean()
    loss.backward()
    assert vectors.grad is not None and torch.isfinite(vectors.grad).all()
    assert (vectors.grad.abs().sum(dim=-1) > 0).all()
    assert all(not p.requires_grad and p.grad is None for p in adapter.model.parameters())
    assert not adapter.model.training


# ---- 5. embeddings ----------------------------------------------------------------------------------------------


def test_embed_is_token_plus_position(tokenizers) -> None:
    model, adapter = make(SPECS[1], tokenizers)
    ids = adapter.tokenize(PROMPTS).ids
    tower, _ = locate_parts(model)
    expected = tower.embeddings.token_embedding(ids) + tower.embeddings.position_embedding.weight[: ids.shape[1]]
    assert max_diff(adapter.embed(ids), expected) == 0.0
    assert max_diff(adapter.embed(ids), tower.embeddings(input_ids=ids)) <= TOL
    assert max_diff(adapter.embed_tokens(ids), tower.embeddings.token_embedding(ids)) == 0.0
    assert adapter.token_embedding_matrix().shape == (VOCAB_SIZE, SPECS[1].hidden)


# ---- protocol, describe, dtype ----------------------------------------------------------------------------------


def test_protocol_and_describe(tokenizers) -> None:
    from amdet_audit.encoders import Adapter

    _, adapter = make(SPECS[2], tokenizers, read_layer=-2)
    assert isinstance(adapter, Adapter)
    info = adapter.describe()
    json.dumps(info)
    assert info["family"] == "clip" and info["causal"] is True and info["read_layer"] == -2
    assert info["architecture"] == "CLIPTextModelWithProjection" and info["projection_dim"] == SPECS[2].hidden
    assert (info["hidden_size"], info["layers"], info["heads"], info["max_length"]) == (96, 3, 3, 77)
    assert (info["pad_token"], info["pad_id"], info["vocab_size"]) == ("!", 0, VOCAB_SIZE)
    assert info["parameters"] == sum(p.numel() for p in adapter.model.parameters())
    assert info["dtype"] == "float32"
    _, plain = make(SPECS[0], tokenizers)
    assert plain.describe()["projection_dim"] is None and plain.describe()["pad_id"] == EOS_ID


def test_read_layer_out_of_range(tokenizers) -> None:
    with pytest.raises(ValueError, match="read_layer"):
        make(SPECS[0], tokenizers, read_layer=-3)  # one layer: hidden_states has 2 entries
    with pytest.raises(ValueError, match="read_layer"):
        make(SPECS[0], tokenizers, read_layer=0)


def test_to_bfloat16_runs_and_tracks_dtype(tokenizers) -> None:
    model, adapter = make(SPECS[1], tokenizers)
    ids = adapter.tokenize(PROMPTS).ids
    with torch.no_grad():
        ref = adapter.forward(ids).last
        adapter.to("cpu", torch.bfloat16)
        out = adapter.forward(ids, insert=torch.zeros(1, SPECS[1].hidden))  # float32 insert is cast
        again = adapter.forward(ids).last
    assert adapter.dtype == torch.bfloat16 and out.last.dtype == torch.bfloat16
    assert max_diff(again.float(), ref) < 0.2
