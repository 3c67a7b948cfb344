"""Consumers: the features the scan reads equal what each diffusers pipeline's own ``encode_prompt`` feeds its
denoiser, for the same prompt (tiny random towers, built here; no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from amdet_audit.encoders import load_component
from amdet_audit.encoders.consumers import CONSUMERS, PIPELINES, consumer_for
from amdet_audit.errors import UsageError
from amdet_audit.sources import resolve

PROMPT = "a photo of a red bicycle leaning on a wall"


def adapters(folder: Path, consumer: str | None = None, read_layer: int | None = None) -> dict:
    """Every component of ``folder`` loaded as the consumer reads it."""
    target = resolve(str(folder))
    reader = consumer_for(consumer, target.pipeline_class)
    out = {}
    for comp in target.components:
        read = reader.read(comp.name, read_layer)
        out[comp.name] = load_component(comp, read_layer=read.layer, read_norm=read.final_norm)
    return out


def scan_read(adapter, prompt: str = PROMPT):
    """(read sequence [1, T, D], pooled [1, P]) of the adapter, as the scan computes them."""
    with torch.no_grad():
        out = adapter(adapter.tokenize([prompt]).ids)
    return out.read, out.pooled


def pipeline_tokenizers(root: Path, names: tuple[str, ...]) -> list:
    from transformers import CLIPTokenizer

    return [CLIPTokenizer.from_pretrained(str(root / name)) for name in names]


def sd_pipeline_folder(root: Path, *, seed: int, pad: str = "eos", act: str | None = None) -> Path:
    """A StableDiffusionPipeline-shaped folder at ``root``: one 3-layer text encoder (activation ``act`` when
    given), its tokenizer (padding with ``pad``) in ``tokenizer/``, model_index.json."""
    from amdet_audit.lab.folders import tiny_clip_folder

    enc = tiny_clip_folder(root / "text_encoder", hidden=32, layers=3, heads=2, seed=seed, pad=pad)
    if act is not None:
        config = json.loads((enc / "config.json").read_text())
        (enc / "config.json").write_text(json.dumps({**config, "hidden_act": act}))
    (root / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.move(enc / f, root / "tokenizer" / f)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (root / "model_index.json").write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SD 1.x-style pipeline folder: one 3-layer text encoder, its tokenizer, model_index.json."""
    return sd_pipeline_folder(tmp_path_factory.mktemp("sd1") / "pipe", seed=3)


def test_sd1_reads_the_last_layer_after_the_norm_and_clip_skip_keeps_the_norm(sd1_folder: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    (tokenizer,) = pipeline_tokenizers(sd1_folder, ("tokenizer",))
    encoder = CLIPTextModel.from_pretrained(str(sd1_folder / "text_encoder"))
    pipe = StableDiffusionPipeline(vae=None, text_encoder=encoder, tokenizer=tokenizer, unet=None, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    expected, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    read, _ = scan_read(adapters(sd1_folder)["text_encoder"])
    assert consumer_for(None, "StableDiffusionPipeline").name == "sd1"
    assert torch.allclose(read, expected, atol=1e-5), (read - expected).abs().max()
    # clip skip c: diffusers takes hidden_states[-(c + 1)] and applies text_model.final_layer_norm; that path
    # needs the 4.x module layout (CLIPTextModel.text_model), so its formula is applied here on the same model
    model, ids = pipe.text_encoder, tokenizer([PROMPT], padding="max_length", return_tensors="pt").input_ids
    norm = getattr(model, "text_model", model).final_layer_norm
    for clip_skip in (1, 2):
        with torch.no_grad():
            expected = norm(model(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)])
        read, _ = scan_read(adapters(sd1_folder, read_layer=-(clip_skip + 1))["text_encoder"])
        assert torch.allclose(read, expected, atol=1e-5), (clip_skip, (read - expected).abs().max())


def test_sd2_reads_as_sd1_with_its_own_padding(tmp_path: Path) -> None:
    """SD 2.x: the same pipeline class and read; its tokenizer pads with "!" (id 0) and its tower uses gelu."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    root = sd_pipeline_folder(tmp_path / "sd2", seed=4, pad="!", act="gelu")  # OpenCLIP's activation
    (tokenizer,) = pipeline_tokenizers(root, ("tokenizer",))
    assert tokenizer.pad_token == "!"
    pipe = StableDiffusionPipeline(vae=None, text_encoder=CLIPTextModel.from_pretrained(str(root / "text_encoder")),
                                   tokenizer=tokenizer, unet=None, scheduler=None, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    expected, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    adapter = adapters(root)["text_encoder"]
    read, _ = scan_read(adapter)
    assert adapter.tokenizer.pad_token == "!" and torch.allclose(read, expected, atol=1e-5)


def test_sdxl_reads_the_penultimate_layer_of_both_encoders_without_the_norm(tiny_pipeline: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok1, tok2 = pipeline_tokenizers(tiny_pipeline, ("tokenizer", "tokenizer_2"))
    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=CLIPTextModel.from_pretrained(str(tiny_pipeline / "text_encoder")),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(str(tiny_pipeline / "text_encoder_2")),
        tokenizer=tok1, tokenizer_2=tok2, unet=None, scheduler=None)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    loaded = adapters(tiny_pipeline)
    one, _ = scan_read(loaded["text_encoder"])
    two, two_pooled = scan_read(loaded["text_encoder_2"])
    width = one.shape[-1]
    assert loaded["text_encoder"].read_layer == loaded["text_encoder_2"].read_layer == -2
    assert torch.allclose(one, embeds[..., :width], atol=1e-5)
    assert torch.allclose(two, embeds[..., width:], atol=1e-5)
    assert torch.allclose(two_pooled, pooled, atol=1e-5)  # the projected pooled output SDXL feeds its UNet
    last, _ = scan_read(adapters(tiny_pipeline, consumer="sd1")["text_encoder_2"])  # the old, wrong read
    assert not torch.allclose(last, embeds[..., width:], atol=1e-3)


def test_sd3_clip_parts_read_the_penultimate_layer_and_projected_pools(tiny_pipeline: Path) -> None:
    from diffusers import StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    folder = Path(shutil.copytree(tiny_pipeline, tiny_pipeline.parent / "sd3-tiny", dirs_exist_ok=True))
    index = json.loads((folder / "model_index.json").read_text())
    index.update({"_class_name": "StableDiffusion3Pipeline",
                  "text_encoder": ["transformers", "CLIPTextModelWithProjection"]})
    (folder / "model_index.json").write_text(json.dumps(index))
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    config["architectures"] = ["CLIPTextModelWithProjection"]  # SD3's first CLIP projects too
    config["projection_dim"] = config["hidden_size"]
    (folder / "text_encoder" / "config.json").write_text(json.dumps(config))
    te1 = CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder"))  # new projection, random
    te1.save_pretrained(str(folder / "text_encoder"))
    te2 = CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder_2"))
    tok1, tok2 = pipeline_tokenizers(folder, ("tokenizer", "tokenizer_2"))
    pipe = StableDiffusion3Pipeline(transformer=None, scheduler=None, vae=None, text_encoder=te1, tokenizer=tok1,
                                    text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=None, tokenizer_3=None)
    loaded = adapters(folder)
    for index_, name in enumerate(("text_encoder", "text_encoder_2")):
        embeds, pooled = pipe._get_clip_prompt_embeds(PROMPT, device="cpu", clip_model_index=index_)
        read, our_pooled = scan_read(loaded[name])
        assert torch.allclose(read, embeds, atol=1e-5) and torch.allclose(our_pooled, pooled, atol=1e-5), name


def test_flux_reads_the_clip_pooled_output_alone(sd1_folder: Path, tmp_path: Path, run_cli) -> None:
    """FLUX feeds its transformer CLIP's pooler_output only: the consumer reads that, and the scan scores it
    alone (no sequence feature, no token assimilation)."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextModel

    from amdet_audit.scan.features import clean_features

    folder = Path(shutil.copytree(sd1_folder, tmp_path / "flux"))
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    (tokenizer,) = pipeline_tokenizers(folder, ("tokenizer",))
    encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=encoder, tokenizer=tokenizer, text_encoder_2=None,
                        tokenizer_2=None, transformer=None)
    expected = pipe._get_clip_prompt_embeds(PROMPT, device="cpu")
    assert consumer_for(None, "FluxPipeline").name == "flux"
    read = consumer_for(None, "FluxPipeline").read("text_encoder")
    assert read.sequence is False and read.describe() == "pooled"
    adapter = adapters(folder)["text_encoder"]
    _, pooled = scan_read(adapter)
    assert torch.allclose(pooled, expected, atol=1e-5)
    ids = adapter.tokenize([PROMPT, "a cat"]).ids
    feats = clean_features(adapter, ids, torch.ones_like(ids), 8, 0.5, pooled_only=True)
    assert feats.clean(torch.arange(2)).shape == (2, pooled.shape[-1])  # the pooled output alone
    with pytest.raises(UsageError, match="reads no hidden layer"):
        consumer_for("flux", None).read("text_encoder", -2)
    # a clip skip on the pipeline: refused for its CLIP, by name, before any model is loaded; nothing is written
    result = run_cli("scan", folder, "--read-layer", "-2", "--out", tmp_path / "report")
    assert result.exit_code == 2 and "no hidden layer of text_encoder" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "report").exists()


def test_consumer_choice_and_bad_choices() -> None:
    assert consumer_for(None, None).name == "clip" and consumer_for(None, "FluxPipeline").name == "flux"
    assert all(PIPELINES[name] in CONSUMERS for name in PIPELINES)
    assert consumer_for(None, "StableDiffusionXLControlNetPipeline").name == "sdxl"
    assert consumer_for(None, "StableDiffusion3Img2ImgPipeline").name == "sd3"
    assert consumer_for(None, "StableDiffusionImg2ImgPipeline").name == "sd1"
    assert consumer_for("sdxl", "StableDiffusionPipeline").name == "sdxl"  # --consumer wins over the folder
    assert CONSUMERS["sdxl"].read("text_encoder", -3).final_norm is False
    assert CONSUMERS["sdxl"].read("model") == CONSUMERS["sdxl"].read("text_encoder")  # a lone encoder, --consumer sdxl
    assert CONSUMERS["sd1"].read("text_encoder", -3).final_norm is True
    with pytest.raises(UsageError, match="known consumers"):
        consumer_for("sd9", None)
    with pytest.raises(UsageError, match="must be negative"):
        CONSUMERS["sd1"].read("text_encoder", 0)


def test_inspect_and_a_too_deep_read_layer(run_cli, tiny_pipeline: Path) -> None:
    shown = run_cli("inspect", tiny_pipeline, "--format", "json")
    assert shown.exit_code == 0, shown.stderr
    encoders = json.loads(shown.stdout)["encoders"]
    assert {name: e["consumer"]["reads"] for name, e in encoders.items()} == {
        "text_encoder": "hidden[-2]", "text_encoder_2": "hidden[-2]"}
    assert encoders["text_encoder_2"]["consumer"]["pooled"] == "projected"
    deep = run_cli("inspect", tiny_pipeline, "--read-layer", "-9")
    assert deep.exit_code == 2 and "read layer -9 does not exist" in deep.stderr
    assert len(deep.stderr.strip().splitlines()) == 1


def test_readme_consumer_table_names_every_consumer() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("### What is scanned: the consumer", 1)[1].split("\n\n")[2]
    named = {name.strip("` ") for row in table.splitlines()[2:] for name in row.split("|")[1].split(",")}
    assert named == set(CONSUMERS)
