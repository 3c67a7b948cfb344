"""load_component: config dispatch, safetensors checks, key layouts, shards, tokenizer, full CLIP checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from amdet_audit.encoders import Adapter, load_component
from amdet_audit.encoders.load import FAMILY_BUILDERS, read_config
from amdet_audit.errors import ConfigFileError, NotATextEncoderError, TokenizerError, WeightsError
from amdet_audit.lab.folders import tiny_clip_folder
from amdet_audit.sources.model import Component
from amdet_audit.tokenization import write_clip_tokenizer

torch.set_num_threads(1)
TOL = 1e-5
PROMPTS = ["a photo of a cat", "an astronaut riding a horse!", "word " * 60, ""]
TINY = {"hidden": 32, "layers": 2, "heads": 2, "max_positions": 32}


def component(folder: Path, weights: list[str] | None = None, **overrides) -> Component:
    """A Component for a plain model folder (config, weights and tokenizer side by side)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}  # the loader is the one that must report it
    fields = {
        "name": "model",
        "config_path": folder / "config.json",
        "weight_files": tuple(folder / w for w in (weights or ["model.safetensors"])),
        "tokenizer_path": folder,
        "architecture": (config.get("architectures") or ["?"])[0],
        "model_type": config.get("model_type", "?"),
    }
    return Component(**{**fields, **overrides})


def copy_folder(src: Path, dst: Path, *, without: tuple[str, ...] = ("model.safetensors",)) -> Path:
    """Copy a model folder, leaving out some files."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*without))
    return dst


def reference_model(folder: Path, projection: bool = False) -> torch.nn.Module:
    """The same folder loaded by transformers' own from_pretrained (the independent reference)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls.from_pretrained(str(folder)).eval()


def assert_matches(adapter: Adapter, model: torch.nn.Module) -> float:
    """Adapter forward equals the model's forward on real prompts; returns the max abs diff."""
    ids = adapter.tokenize(PROMPTS).ids
    with torch.no_grad():
        out = adapter.forward(ids)
        ref = model(input_ids=ids, output_hidden_states=True)
    pooled = ref.text_embeds if hasattr(ref, "text_embeds") else ref.pooler_output
    diffs = [(out.last - ref.last_hidden_state).abs().max(), (out.pooled - pooled).abs().max()]
    worst = max(d.item() for d in diffs)
    assert worst <= TOL
    return worst


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIPTextModel folder padding with "!" (SD 2.x style)."""
    return tiny_clip_folder(tmp_path_factory.mktemp("plain") / "m", pad="!", seed=3, **TINY)


# ---- happy paths ------------------------------------------------------------------------------------------------


def test_loads_folder_and_equals_original(plain: Path) -> None:
    adapter = load_component(component(plain))
    assert isinstance(adapter, Adapter)
    assert_matches(adapter, reference_model(plain))
    assert adapter.describe()["architecture"] == "CLIPTextModel" and adapter.pad_id == 0
    assert all(not p.requires_grad for p in adapter.model.parameters()) and not adapter.model.training
    assert all(not b.is_meta for b in adapter.model.buffers())


def test_loads_projection_model_with_read_layer(tmp_path: Path) -> None:
    folder = tiny_clip_folder(tmp_path / "m", projection=True, pad="eos", **TINY)
    adapter = load_component(component(folder), read_layer=-2)
    model = reference_model(folder, projection=True)
    assert_matches(adapter, model)
    ids = adapter.tokenize(PROMPTS).ids
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        assert (adapter.forward(ids).read - hidden).abs().max().item() <= TOL
    assert adapter.describe()["projection_dim"] == TINY["hidden"] and adapter.read_layer == -2


def test_old_style_prefixed_keys_load(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "old")
    state = {"text_model." + k: v for k, v in load_file(plain / "model.safetensors").items()}
    state["text_model.embeddings.position_ids"] = torch.arange(TINY["max_positions"])[None]  # as 4.x once saved
    save_file(state, folder / "model.safetensors")
    assert_matches(load_component(component(folder)), reference_model(plain))


def test_unprefixed_keys_load_into_projection_model(tmp_path: Path) -> None:
    folder = tiny_clip_folder(tmp_path / "m", projection=True, **TINY)
    state = {k.removeprefix("text_model."): v for k, v in load_file(folder / "model.safetensors").items()}
    save_file(state, folder / "model.safetensors")
    assert_matches(load_component(component(folder)), reference_model(folder, projection=True))


def test_sharded_weights(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "sharded")
    items = sorted(load_file(plain / "model.safetensors").items())
    save_file(dict(items[::2]), folder / "model-00001-of-00002.safetensors")
    save_file(dict(items[1::2]), folder / "model-00002-of-00002.safetensors")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert_matches(load_component(component(folder, shards)), reference_model(plain))
    with pytest.raises(WeightsError, match="missing"):
        load_component(component(folder, shards[:1]))
    save_file(dict(items[:3]), folder / "dup.safetensors")
    with pytest.raises(WeightsError, match="also in"):
        load_component(component(folder, [*shards, "dup.safetensors"]))


def test_full_clip_model_loads_text_tower(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    text = {**small, "max_position_embeddings": 32, "bos_token_id": 49406, "eos_token_id": 49407}
    vision = {**small, "num_hidden_layers": 1, "image_size": 32, "patch_size": 16}
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    full.save_pretrained(tmp_path / "clip")
    write_clip_tokenizer(tmp_path / "clip", max_length=32)
    adapter = load_component(component(tmp_path / "clip"))
    assert adapter.describe()["projection_dim"] is None  # the joint head is not part of the text tower
    assert_matches(adapter, full.text_model)


def test_pickle_only_when_marked(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "pkl")
    torch.save(load_file(plain / "model.safetensors"), folder / "pytorch_model.bin")
    adapter = load_component(component(folder, ["pytorch_model.bin"], weight_format="pickle"))
    assert_matches(adapter, reference_model(plain))
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_component(component(folder, ["pytorch_model.bin"]))


def test_dtype_and_tokenizer_length_cap(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "cap", without=())
    write_clip_tokenizer(folder, max_length=77, pad_token="!")  # longer than the model's 32 positions
    adapter = load_component(component(folder), dtype=torch.bfloat16)
    assert adapter.dtype == torch.bfloat16 and adapter.max_length == 32
    assert adapter.tokenize(PROMPTS).ids.shape == (len(PROMPTS), 32)
    assert adapter.forward(adapter.tokenize(PROMPTS).ids).last.dtype == torch.bfloat16


def test_tokenizer_json_only(plain: Path, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    folder = copy_folder(plain, tmp_path / "tj", without=("vocab.json", "merges.txt", "*.json"))
    shutil.copy(plain / "config.json", folder / "config.json")
    CLIPTokenizer.from_pretrained(str(plain)).save_pretrained(str(folder / "tok"))
    for name in ("vocab.json", "merges.txt"):
        (folder / "tok" / name).unlink(missing_ok=True)
    adapter = load_component(component(folder, tokenizer_path=folder / "tok"))
    assert_matches(adapter, reference_model(plain))


def test_family_registry_has_clip() -> None:
    assert "clip" in FAMILY_BUILDERS


# ---- failures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["junk", "truncated", "empty"])
def test_corrupt_safetensors(plain: Path, tmp_path: Path, cut: str) -> None:
    folder = copy_folder(plain, tmp_path / "bad")
    data = (plain / "model.safetensors").read_bytes()
    body = {"junk": b"this is not a safetensors file" * 4, "truncated": data[: len(data) // 2], "empty": b""}[cut]
    (folder / "model.safetensors").write_bytes(body)
    with pytest.raises(WeightsError, match=r"model\.safetensors: not a readable safetensors file"):
        load_component(component(folder))


def test_missing_weight_file(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "none")
    with pytest.raises(WeightsError, match="not found"):
        load_component(component(folder))


def test_shape_mismatch_names_tensor(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "shape", without=())
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 40
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"embeddings\.position_embedding\.weight has shape \[32, 32\].*\[40, 32\]"):
        load_component(component(folder))


def test_missing_and_unexpected_tensors(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "keys")
    state = load_file(plain / "model.safetensors")
    save_file({k: v for k, v in state.items() if "layers.1." not in k}, folder / "model.safetensors")
    missing = r"missing \d+ tensors of CLIPTextModel: encoder\.layers\.1\..* and \d+ more"
    with pytest.raises(WeightsError, match=missing):
        load_component(component(folder))
    save_file({**state, "encoder.layers.7.mlp.fc1.weight": torch.zeros(2, 2)}, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"not part of CLIPTextModel: encoder\.layers\.7\.mlp\.fc1\.weight"):
        load_component(component(folder))
    save_file({**state, "vision_model.post_layernorm.weight": torch.zeros(2)}, folder / "model.safetensors")
    assert_matches(load_component(component(folder)), reference_model(plain))  # another tower: ignored


def test_vision_config_is_not_a_text_encoder(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig

    CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(NotATextEncoderError, match="is a clip_vision_model, not a text encoder"):
        load_component(component(tmp_path))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"_class_name": "UNet2DConditionModel"}, "is a UNet2DConditionModel, not a text encoder"),
        ({"model_type": "vit", "architectures": ["ViTModel"]}, "is a vit, not a text encoder"),
        ({"model_type": "llama"}, "is a llama, not a supported text encoder"),
        ({}, "names no model_type or architecture"),
    ],
)
def test_other_configs_are_refused(tmp_path: Path, config: dict, message: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotATextEncoderError, match=message):
        load_component(component(tmp_path))


def test_invalid_json_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "clip_text_model",')
    with pytest.raises(ConfigFileError, match=r"config\.json: not valid JSON \(line 1"):
        load_component(component(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigFileError, match="JSON object"):
        read_config(tmp_path / "config.json")
    with pytest.raises(ConfigFileError, match="not found"):
        read_config(tmp_path / "nope.json")


def test_invalid_config_values(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "vals", without=())
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads"] = 5  # 32 is not a multiple of 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigFileError, match="not a valid CLIP text config"):
        load_component(component(folder))


def test_missing_tokenizer(plain: Path, tmp_path: Path) -> None:
    folder = copy_folder(plain, tmp_path / "notok", without=("vocab.json", "merges.txt"))
    message = (r"no tokenizer found for model \(looked in .+ for vocab\.json \+ merges\.txt or tokenizer\.json\); "
               r"pass --tokenizer PATH, or --tokenizer clip")
    with pytest.raises(TokenizerError, match=message):
        load_component(component(folder))
    with pytest.raises(TokenizerError, match=message):
        load_component(component(plain, tokenizer_path=None))


def test_a_lone_weights_file_takes_a_tokenizer_by_option(run_cli, plain: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(plain / "model.safetensors", lone / "model.safetensors")
    shutil.copy(plain / "config.json", lone / "config.json")
    weights = lone / "model.safetensors"
    refused = run_cli("inspect", weights)
    assert refused.exit_code == 2 and "--tokenizer clip" in refused.stderr and str(lone) in refused.stderr
    shipped = run_cli("inspect", weights, "--tokenizer", "clip-sd2", "--format", "json")
    assert shipped.exit_code == 0, shipped.stderr
    data = json.loads(shipped.stdout)
    assert data["encoders"]["model"]["pad_token"] == "!"
    assert any("the CLIP vocabulary amdet-audit ships (--tokenizer clip-sd2" in n for n in data["target"]["notes"])
    assert run_cli("inspect", weights, "--tokenizer", str(plain)).exit_code == 0  # a folder of tokenizer files
    missing = run_cli("inspect", weights, "--tokenizer", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "not a folder with tokenizer files" in missing.stderr
    config = json.loads((lone / "config.json").read_text())
    config["vocab_size"] = 1000
    (lone / "config.json").write_text(json.dumps(config))
    other = run_cli("inspect", weights, "--tokenizer", "clip")
    assert other.exit_code == 2 and "vocabulary of 1000 tokens" in other.stderr
