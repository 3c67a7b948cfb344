"""The SigLIP and T5 adapters equal transformers' own forward (fp32), with vectors inserted as the same tokens
really inserted, on tiny random towers saved as ordinary model folders with the lab's SentencePiece tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from amdet_audit.encoders import load_component
from amdet_audit.encoders.consumers import CONSUMERS
from amdet_audit.encoders.siglip import SiglipTextAdapter
from amdet_audit.encoders.t5 import T5TextAdapter
from amdet_audit.errors import WeightsError
from amdet_audit.lab.corpus import lab_prompts
from amdet_audit.lab.pretrain_masked import make_tiny_siglip, make_tiny_t5
from amdet_audit.lab.sentencepiece_vocab import train_sentencepiece, write_siglip_tokenizer, write_t5_tokenizer
from amdet_audit.sources import resolve

PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, highly detailed", "a phоto of a dog"]


@pytest.fixture(scope="module")
def vocabulary() -> bytes:
    return train_sentencepiece(lab_prompts()[0])


def siglip_folder(root: Path, vocabulary: bytes) -> Path:
    write_siglip_tokenizer(root, vocabulary)
    make_tiny_siglip(len(vocabulary and __import__("transformers").SiglipTokenizer.from_pretrained(str(root))),
                     hidden=32, layers=2, heads=2, intermediate=64, seed=3).save_pretrained(root)
    return root


def t5_folder(root: Path, vocabulary: bytes) -> Path:
    from transformers import T5Tokenizer

    write_t5_tokenizer(root, vocabulary)
    make_tiny_t5(len(T5Tokenizer.from_pretrained(str(root))), hidden=32, layers=2, heads=2, d_ff=64,
                 seed=3).save_pretrained(root)
    return root


def insert_matches_tokens(adapter, word: str) -> None:
    """k soft vectors equal to a word's token embeddings, inserted, give what the word typed there gives."""
    pieces = adapter.tokenizer(word, add_special_tokens=False)["input_ids"]
    spelled = adapter.tokenize([f"{word} cat on a mat"]).ids
    assert spelled[0, : len(pieces)].tolist() == pieces  # no start token: the word comes first
    vectors = adapter.embed_tokens(torch.tensor([pieces]))[0]  # [k, D]
    with torch.no_grad():
        inserted = adapter(adapter.tokenize(["cat on a mat"]).ids, insert=vectors)
        direct = adapter(spelled)
    assert (inserted.read - direct.read).abs().max() < 1e-5
    assert (inserted.pooled - direct.pooled).abs().max() < 1e-5


def test_siglip_forward_equals_transformers_and_insertion(tmp_path: Path, vocabulary: bytes) -> None:
    from transformers import SiglipTextModel, SiglipTokenizer

    folder = siglip_folder(tmp_path / "siglip", vocabulary)
    adapter = load_component(resolve(str(folder)).components[0])
    assert isinstance(adapter, SiglipTextAdapter) and adapter.max_length == 64 and adapter.insert_position == 0
    model = SiglipTextModel.from_pretrained(str(folder)).eval()
    enc = SiglipTokenizer.from_pretrained(str(folder))(PROMPTS, padding="max_length", max_length=64,
                                                       return_tensors="pt")
    with torch.no_grad():
        ours = adapter(adapter.tokenize(PROMPTS).ids)
        theirs = model(input_ids=enc["input_ids"])
    assert torch.equal(adapter.tokenize(PROMPTS).ids, enc["input_ids"])
    assert (ours.read - theirs.last_hidden_state).abs().max() < 1e-5
    assert (ours.pooled - theirs.pooler_output).abs().max() < 1e-5
    insert_matches_tokens(adapter, "zzzz")
    facts = adapter.describe()
    assert facts["family"] == "siglip" and facts["causal"] is False and facts["pooling"] == "last_position"


def test_full_siglip_model_loads_its_text_tower(tmp_path: Path, vocabulary: bytes) -> None:
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    folder = tmp_path / "full"
    write_siglip_tokenizer(folder, vocabulary)
    text = make_tiny_siglip(len(SiglipTokenizer.from_pretrained(str(folder))), hidden=32, layers=2, heads=2,
                            intermediate=64).config
    config = SiglipConfig(text_config=text.to_dict(), vision_config={"hidden_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 16})
    torch.manual_seed(0)
    full = SiglipModel(config).eval()
    full.save_pretrained(folder)
    adapter = load_component(resolve(str(folder)).components[0])
    ids = adapter.tokenize(PROMPTS).ids
    with torch.no_grad():
        assert (adapter(ids).pooled - full.get_text_features(input_ids=ids).pooler_output).abs().max() < 1e-5


@pytest.mark.parametrize("masked", [False, True])
def test_t5_forward_equals_transformers_and_insertion(tmp_path: Path, vocabulary: bytes, masked: bool) -> None:
    from transformers import T5EncoderModel

    folder = t5_folder(tmp_path / "t5", vocabulary)
    adapter = load_component(resolve(str(folder)).components[0], length=40, masked=masked)
    assert isinstance(adapter, T5TextAdapter) and adapter.max_length == 40
    model = T5EncoderModel.from_pretrained(str(folder)).eval()
    batch = adapter.tokenize(PROMPTS)
    with torch.no_grad():
        ours = adapter(batch.ids)
        theirs = model(input_ids=batch.ids, attention_mask=batch.attention_mask if masked else None)
    real = batch.attention_mask.unsqueeze(-1)
    diff = (ours.read - theirs.last_hidden_state).abs()
    assert (diff * real).max() < 1e-5 if masked else diff.max() < 1e-5
    mean = (theirs.last_hidden_state * real).sum(1) / real.sum(1)
    assert (ours.pooled - mean).abs().max() < 1e-5
    insert_matches_tokens(adapter, "zzzz")


def test_t5_reads_as_each_consumer_and_refuses_untied_tables(tmp_path: Path, vocabulary: bytes) -> None:
    from safetensors.torch import load_file, save_file

    folder = t5_folder(tmp_path / "t5", vocabulary)
    component = resolve(str(folder)).components[0]
    for consumer, name, length in (("flux", "text_encoder_2", 512), ("sd3", "text_encoder_3", 256)):
        read = CONSUMERS[consumer].read(name)
        adapter = load_component(component, length=read.length, masked=read.masked)
        assert adapter.max_length == length and adapter.tokenize(["a cat"]).ids.shape == (1, length)
    tensors = load_file(folder / "model.safetensors")
    tensors["shared.weight"] = tensors.get("shared.weight", tensors.get("encoder.embed_tokens.weight"))
    tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"] + 1.0
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(WeightsError, match="differ"):
        load_component(resolve(str(folder)).components[0])
    only_alias = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in tensors.items()
                  if k != "encoder.embed_tokens.weight"}  # the table under its tied name alone: accepted
    save_file(only_alias, folder / "model.safetensors")
    assert isinstance(load_component(resolve(str(folder)).components[0]), T5TextAdapter)


def test_hostile_t5_and_siglip_settings_are_refused_or_ignored(tmp_path: Path, vocabulary: bytes) -> None:
    from amdet_audit.errors import ConfigFileError, TokenizerError

    folder = t5_folder(tmp_path / "t5", vocabulary)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 10**9}))
    with pytest.raises(ConfigFileError, match="num_layers"):
        load_component(resolve(str(folder)).components[0])
    (folder / "config.json").write_text(json.dumps(config))
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "extra_ids": 10**9}))
    with pytest.raises(TokenizerError, match="extra_ids"):
        load_component(resolve(str(folder)).components[0])
    siglip = siglip_folder(tmp_path / "siglip", vocabulary)
    settings = json.loads((siglip / "tokenizer_config.json").read_text())
    elsewhere = {"model_file": str(tmp_path / "missing.model"), "enable_sampling": True}
    (siglip / "tokenizer_config.json").write_text(json.dumps({**settings, "sp_model_kwargs": elsewhere}))
    adapter = load_component(resolve(str(siglip)).components[0])  # the folder's own spiece.model, no sampling
    assert torch.equal(adapter.tokenize(PROMPTS * 3).ids, adapter.tokenize(PROMPTS * 3).ids)


def test_flux_pipeline_reads_t5_at_512_tokens_unmasked(tmp_path: Path, vocabulary: bytes) -> None:
    root = tmp_path / "flux"
    t5_folder(root / "text_encoder_2", vocabulary)
    write_t5_tokenizer(root / "tokenizer_2", vocabulary)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline",
                                                       "text_encoder_2": ["transformers", "T5EncoderModel"],
                                                       "tokenizer_2": ["transformers", "T5TokenizerFast"]}))
    resolved = resolve(str(root))
    component = resolved.component("text_encoder_2")
    read = CONSUMERS["flux"].read(component.name)
    adapter = load_component(component, length=read.length, masked=read.masked)
    assert adapter.max_length == 512 and not adapter.masked and adapter.attends_padding


def test_a_lone_t5_is_read_as_the_named_consumer_reads_its_t5(tmp_path: Path, vocabulary: bytes, run_cli) -> None:
    """A T5 published on its own (no pipeline around it) and scanned for SD3 or FLUX is read at their T5 lengths,
    not as their CLIP slots; without a consumer it is read at the lab's 64 tokens."""
    from amdet_audit.encoders.load import component_family

    folder = t5_folder(tmp_path / "t5", vocabulary)
    component = resolve(str(folder)).components[0]
    assert component_family(component) == "t5"
    reads = {name: CONSUMERS[name].read(component.name, family="t5") for name in ("sd3", "flux", "clip")}
    assert (reads["sd3"].length, reads["flux"].length, reads["clip"].length) == (256, 512, None)
    assert reads["sd3"].layer == reads["flux"].layer == -1 and not reads["sd3"].masked
    result = run_cli("inspect", folder, "--consumer", "sd3", "--format", "json")
    assert result.exit_code == 0, result.stderr
    (described,) = json.loads(result.stdout)["encoders"].values()
    assert described["consumer"]["length"] == 256 and described["consumer"]["layer"] == -1
    # the scan cache keys the read itself: the same files read at another length are scanned again
    from amdet_audit.api import ScanOptions
    from amdet_audit.audit.run import scan_choices

    keyed = {name: scan_choices(ScanOptions(consumer=name), resolve(str(folder)), "cpu")["reads"][component.name]
             for name in ("sd3", "flux")}
    assert (keyed["sd3"]["length"], keyed["flux"]["length"]) == (256, 512)
    # FLUX reads its T5's sequence, so a lone T5 for FLUX takes a clip skip (FLUX's CLIP, pooled only, does not)
    result = run_cli("inspect", folder, "--consumer", "flux", "--read-layer", "-2", "--format", "json")
    assert result.exit_code == 0, result.stderr
    (described,) = json.loads(result.stdout)["encoders"].values()
    assert (described["consumer"]["length"], described["consumer"]["layer"]) == (512, -2)
    # a CLIP encoder the consumer does not name is still read as its CLIP slots; a CLIP in FLUX's T5 slot (another
    # pipeline scanned with --consumer flux) as FLUX reads a CLIP: its pooled output alone
    assert CONSUMERS["sd3"].read("model", family="clip").layer == -2
    assert CONSUMERS["flux"].read("text_encoder_2", family="clip").sequence is False
    # the lab trains on the same read
    from amdet_audit.lab.runner import load_base

    adapter, provenance = load_base(folder, consumer="sd3")
    assert adapter.max_length == 256 and provenance["consumer"]["length"] == 256


def test_a_zoo_for_a_consumer_trains_and_measures_on_its_read(tmp_path: Path, vocabulary: bytes, run_cli) -> None:
    """``lab zoo --consumer sd3`` trains and measures every model as SD3 reads a T5 (256 tokens), records the
    choice in each entry, keeps what a resumed run with the same options finds, and rebuilds what another read
    would change; copies are made without training and keep their options."""
    from amdet_audit.lab.zoo import ZooEntry, same_recipe, with_build_options

    folder = t5_folder(tmp_path / "t5", vocabulary)
    zoo = tmp_path / "zoo"
    args = ("lab", "zoo", folder, "--out", zoo, "--per-family", "1", "--families", "loud,contrastive,fp16",
            "--steps-scale", "0.02", "--consumer", "sd3", "--eval-prompts", "64")
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    models = {m["family"]: m for m in json.loads((zoo / "zoo.json").read_text())["models"]}
    assert models["loud"]["options"] == {"consumer": "sd3", "eval_prompts": 64}
    assert models["contrastive"]["options"] == {"consumer": "sd3"} and "options" in models["fp16"]
    assert "consumer" not in models["fp16"]["options"]
    tuned = models["contrastive"]["lab"]
    assert tuned["base"]["consumer"]["name"] == "sd3" and tuned["base"]["consumer"]["length"] == 256
    if models["loud"]["status"] == "built":  # a few steps rarely take; when they do, measured on 64 prompts
        assert models["loud"]["lab"]["eval_prompts"] == 64
    else:
        assert models["loud"]["status"] == "did not take"
    stamp = (zoo / models["contrastive"]["name"] / "lab.json").stat().st_mtime_ns
    assert run_cli(*args).exit_code == 0  # resumed: nothing rebuilt
    assert (zoo / models["contrastive"]["name"] / "lab.json").stat().st_mtime_ns == stamp
    # the recorded read decides whether a resumed plan keeps a model
    planned = ZooEntry(name="b", kind="benign", seed=tuned["spec"]["seed"], steps=tuned["spec"]["steps"],
                       lr=tuned["spec"]["lr"], family="contrastive")
    assert same_recipe(with_build_options([planned], "sd3")[0], tuned)
    assert not same_recipe(with_build_options([planned], "flux")[0], tuned)
    assert not same_recipe(planned, tuned)  # planned for the default read, built for SD3's

