"""Single-file checkpoints (A1111/ComfyUI): the text encoders inside them are found by key prefix, read with an
inferred config and the shipped CLIP vocabulary, and equal the same encoder saved as a model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from amdet_audit.encoders import load_component
from amdet_audit.errors import NotATextEncoderError
from amdet_audit.sources import resolve

PROMPT = "a watercolor of a lighthouse at dawn"


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny CLIP text towers with 64-wide heads: a ViT-L-like one and a projected one (as SD3 ships)."""
    from amdet_audit.lab.folders import tiny_clip_folder

    root = tmp_path_factory.mktemp("towers")
    return {"plain": tiny_clip_folder(root / "plain", hidden=128, layers=2, heads=2, seed=5),
            "projected": tiny_clip_folder(root / "projected", hidden=128, layers=3, heads=2, seed=6,
                                          projection=True)}


def single_file(path: Path, parts: dict[str, Path], extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``path`` holding each tower's tensors under its prefix (in the checkpoints' ``text_model.`` nesting),
    plus denoiser and VAE tensors as a real checkpoint has."""
    tensors = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(2, 2), **(extra or {})}
    for prefix, folder in parts.items():
        for key, value in load_file(folder / "model.safetensors").items():
            nested = key if key.startswith("text_projection") else f"text_model.{key.removeprefix('text_model.')}"
            tensors[f"{prefix}{nested}"] = value
    save_file(tensors, path)
    return path


def outputs(adapter, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(read sequence, pooled) of ``PROMPT`` (or of ``ids``: the same tokens for two adapters)."""
    with torch.no_grad():
        out = adapter(adapter.tokenize([PROMPT]).ids if ids is None else ids)
    return out.read, out.pooled


def test_an_sd1_single_file_loads_the_same_encoder(towers: dict[str, Path], tmp_path: Path, run_cli) -> None:
    path = single_file(tmp_path / "sd15-finetune.safetensors", {"cond_stage_model.transformer.": towers["plain"]})
    target = resolve(str(path))
    assert target.pipeline_class == "StableDiffusionPipeline" and [c.name for c in target.components] == [
        "text_encoder"]
    assert any("SD 1.x single-file checkpoint" in n for n in target.notes)
    assert any("the CLIP vocabulary amdet-audit ships" in n for n in target.notes)
    single = load_component(target.components[0])
    folder = load_component(resolve(str(towers["plain"])).components[0])
    for mine, theirs in zip(outputs(single), outputs(folder), strict=True):
        assert torch.equal(mine, theirs)
    shown = run_cli("inspect", path, "--format", "json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["encoders"]["text_encoder"]["consumer"]["name"] == "sd1"


def test_an_sd3_single_file_reads_both_clips_at_the_penultimate_layer(towers: dict[str, Path], tmp_path: Path) -> None:
    path = single_file(tmp_path / "sd3.safetensors", {"text_encoders.clip_l.transformer.": towers["plain"],
                                                      "text_encoders.clip_g.transformer.": towers["projected"]},
                       extra={"text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight":
                              torch.zeros(2, 2)})
    target = resolve(str(path))
    assert target.pipeline_class == "StableDiffusion3Pipeline"
    assert {c.name: c.architecture for c in target.components} == {
        "text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection", "text_encoder_3": "unknown"}
    with pytest.raises(NotATextEncoderError, match="a T5 encoder without its tokenizer"):
        load_component(target.components[2])  # found, so the audit cannot pass without it
    two = load_component(target.components[1], read_layer=-2, read_norm=False)
    reference = load_component(resolve(str(towers["projected"])).components[0], read_layer=-2, read_norm=False)
    assert two.tokenizer.pad_token == "!"  # SD3's second tokenizer pads with "!"
    assert torch.equal(outputs(two)[1], outputs(reference)[1])  # the projected pooled output


def openclip_names(folder: Path) -> dict[str, torch.Tensor]:
    """A transformers CLIP tower's tensors under OpenCLIP's names (stacked q/k/v, a [D, P] projection)."""
    state = {k.removeprefix("text_model."): v for k, v in load_file(folder / "model.safetensors").items()}
    out = {"token_embedding.weight": state["embeddings.token_embedding.weight"],
           "positional_embedding": state["embeddings.position_embedding.weight"],
           "ln_final.weight": state["final_layer_norm.weight"], "ln_final.bias": state["final_layer_norm.bias"],
           "text_projection": state["text_projection.weight"].T.contiguous()}
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    for i in range(layers):
        old, new = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{new}attn.in_proj_{leaf}"] = torch.cat([state[f"{old}self_attn.{n}_proj.{leaf}"] for n in "qkv"])
            for mine, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj",
                                 "self_attn.out_proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{new}{mine}.{leaf}"] = state[f"{old}{theirs}.{leaf}"]
    return out


@pytest.fixture(scope="module")
def gelu_tower(towers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The projected tower as OpenCLIP's towers are: gelu."""
    import shutil

    folder = Path(shutil.copytree(towers["projected"], tmp_path_factory.mktemp("gelu") / "t"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    return folder


def test_an_sdxl_single_file_converts_its_openclip_encoder(towers: dict[str, Path], gelu_tower: Path,
                                                           tmp_path: Path) -> None:
    openclip = {f"conditioner.embedders.1.model.{k}": v for k, v in openclip_names(gelu_tower).items()}
    openclip["conditioner.embedders.1.model.logit_scale"] = torch.ones(())
    path = single_file(tmp_path / "sdxl.safetensors", {"conditioner.embedders.0.transformer.": towers["plain"]},
                       extra=openclip)
    target = resolve(str(path))
    assert target.pipeline_class == "StableDiffusionXLPipeline"
    assert [(c.name, c.key_layout, c.refusal) for c in target.components] == [
        ("text_encoder", "transformers", None), ("text_encoder_2", "openclip", None)]
    two = load_component(target.components[1], read_layer=-2, read_norm=False)
    same = load_component(resolve(str(gelu_tower)).components[0], read_layer=-2, read_norm=False)
    assert two.tokenizer.pad_token == "!"
    ids = two.tokenize([PROMPT]).ids
    for mine, theirs in zip(outputs(two, ids), outputs(same, ids), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)  # hidden_states[-2] and the projected pooled output


def test_an_sd2_single_file_leaves_out_the_last_block(gelu_tower: Path, tmp_path: Path) -> None:
    openclip = {f"cond_stage_model.model.{k}": v for k, v in openclip_names(gelu_tower).items()}
    path = tmp_path / "sd2.safetensors"
    save_file({**openclip, "model.diffusion_model.out.2.weight": torch.zeros(2, 2)}, path)
    (comp,) = resolve(str(path)).components
    encoder = load_component(comp)  # SD 2.x reads the penultimate block through the final norm
    assert encoder.num_layers == 2 and encoder.read_layer == -1
    full = load_component(resolve(str(gelu_tower)).components[0], read_layer=-2, read_norm=True)
    ids = encoder.tokenize([PROMPT]).ids
    assert torch.allclose(outputs(encoder, ids)[0], outputs(full, ids)[0], atol=1e-6)


@pytest.mark.slow
def test_an_sdxl_single_file_scan_says_which_encoder_it_could_not_read(towers: dict[str, Path], tmp_path: Path,
                                                                        run_cli) -> None:
    openclip = {"conditioner.embedders.1.model.token_embedding.weight": torch.zeros(8, 2)}  # a broken tower
    path = single_file(tmp_path / "sdxl.safetensors", {"conditioner.embedders.0.transformer.": towers["plain"]},
                       extra=openclip)
    result = run_cli("scan", path, "--reference-free", "--out", tmp_path / "r")
    assert result.exit_code != 0, result.stdout  # (a random tower may even look backdoored: exit 1)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [c["consumer"]["reads"] for c in report["components"] if "scan" in c] == ["hidden[-2]"]
    assert {r["check"]: r["status"] for r in report["coverage"]}["assimilation"] == "error"
    missing = [f for f in report["findings"] if f["component"] == "text_encoder_2"]
    assert [f["kind"] for f in missing] == ["inconclusive"] and "no OpenCLIP text tower" in missing[0]["message"]


@pytest.mark.parametrize(("key", "kind"), [
    ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "a kohya text-encoder LoRA"),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", "a kohya text-encoder LoRA"),
    ("base_model.model.text_model.encoder.layers.0.mlp.fc1.lora_A.weight", "a PEFT text-encoder LoRA"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
     "a diffusers text-encoder LoRA"),
])
def test_a_lora_is_named_as_one(tmp_path: Path, run_cli, key: str, kind: str) -> None:
    path = tmp_path / "style.safetensors"
    save_file({key: torch.zeros(4, 2)}, path)
    result = run_cli("scan", path, "--out", tmp_path / "r")
    assert result.exit_code == 2 and f"{kind}: pass --base REF" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_decoy_tower_or_a_broken_one_is_never_passed_over(towers: dict[str, Path], tmp_path: Path) -> None:
    decoys = {"cond_stage_model.model.token_embedding.weight": torch.zeros(8, 2),  # an SD 2.x tower beside SD 1.x's
              "text_encoders.t5xxl.transformer.shared.weight": torch.zeros(8, 2)}
    path = single_file(tmp_path / "two.safetensors", {"cond_stage_model.transformer.": towers["plain"]}, extra=decoys)
    names = {c.name: c.refusal for c in resolve(str(path)).components}
    assert names["text_encoder"] is None
    others = sorted(r for n, r in names.items() if n.startswith("other_encoder_"))
    assert len(others) == 2 and "cond_stage_model.model.*" in others[0] and "text_encoders.t5xxl.*" in others[1]
    broken = {f"cond_stage_model.transformer.text_model.{k}": v for k, v in load_file(
        towers["plain"] / "model.safetensors").items()}
    broken["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] = torch.zeros(())
    save_file(broken, tmp_path / "broken.safetensors")
    (comp,) = resolve(str(tmp_path / "broken.safetensors")).components
    assert "position_embedding.weight is []" in comp.refusal  # a one-line reason, no traceback
    deep = dict(broken, **{"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight":
                           torch.zeros(77, 128),
                           "cond_stage_model.transformer.text_model.encoder.layers.999999999.mlp.fc1.weight":
                           torch.zeros(1, 1)})
    save_file(deep, tmp_path / "deep.safetensors")
    (comp,) = resolve(str(tmp_path / "deep.safetensors")).components
    assert comp.refusal is not None and "num_hidden_layers" in comp.refusal


def test_the_tokenizer_option_leaves_refused_encoders_alone(towers: dict[str, Path], tmp_path: Path) -> None:
    from amdet_audit.api import SourceOptions

    openclip = {"conditioner.embedders.1.model.token_embedding.weight": torch.zeros(8, 2)}
    path = single_file(tmp_path / "sdxl.safetensors", {"conditioner.embedders.0.transformer.": towers["plain"]},
                       extra=openclip)
    target = SourceOptions(tokenizer="clip").resolve(str(path))
    assert [n for n in target.notes if n.startswith("tokenizer:")] == [
        'tokenizer: the CLIP vocabulary amdet-audit ships (--tokenizer clip, padding with "<|endoftext|>"), not one '
        "of the target's files"]
    assert target.components[1].refusal is not None and target.components[1].tokenizer_path is None


def canonical_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIP text tower's tensors by canonical name (no ``text_model.`` nesting, no position ids)."""
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}


def test_single_files_load_as_diffusers_converts_them(towers: dict[str, Path], gelu_tower: Path,
                                                      tmp_path: Path) -> None:
    """The weights each single-file encoder loads to equal diffusers' own conversion of the same file
    (``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``: what ``from_single_file`` runs)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    openclip = {f"conditioner.embedders.1.model.{k}": v for k, v in openclip_names(gelu_tower).items()}
    sdxl = single_file(tmp_path / "sdxl.safetensors", {"conditioner.embedders.0.transformer.": towers["plain"]},
                       extra=openclip)
    sd1 = single_file(tmp_path / "sd1.safetensors", {"cond_stage_model.transformer.": towers["plain"]})
    for path in (sdxl, sd1):
        mine = canonical_state(load_component(resolve(str(path)).components[0]).model.state_dict())
        theirs = canonical_state(convert_ldm_clip_checkpoint(load_file(path)))
        assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine), path.name
    two = load_component(resolve(str(sdxl)).component("text_encoder_2")).model
    theirs = canonical_state(convert_open_clip_checkpoint(two, load_file(sdxl),
                                                          prefix="conditioner.embedders.1.model."))
    mine = canonical_state(two.state_dict())
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # SD 2.x: diffusers' text encoder is one block shorter (it drops OpenCLIP's last block by name, for the
    # 24-block ViT-H); the tower loaded here is the same minus that block
    sd2 = tmp_path / "sd2.safetensors"
    save_file({f"cond_stage_model.model.{k}": v for k, v in openclip_names(gelu_tower).items()}, sd2)
    short = load_component(resolve(str(sd2)).components[0]).model
    mine = canonical_state(short.state_dict())
    theirs = canonical_state(convert_open_clip_checkpoint(short, load_file(sd2)))
    last = f"encoder.layers.{short.config.num_hidden_layers}."
    assert {k for k in theirs if k not in mine} == {k for k in theirs if k.startswith(last)} != set()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k != "text_projection.weight")


def test_a_ckpt_single_file_loads_with_allow_pickle_only(towers: dict[str, Path], tmp_path: Path, run_cli) -> None:
    """An A1111 .ckpt (a pickled {"state_dict": ...}): refused without --allow-pickle, read with it (after the
    serialization check) into the same encoder as its safetensors twin."""
    twin = single_file(tmp_path / "sd15.safetensors", {"cond_stage_model.transformer.": towers["plain"]})
    ckpt = tmp_path / "sd15.ckpt"
    torch.save({"state_dict": load_file(twin), "global_step": 1000}, ckpt)
    refused = run_cli("inspect", ckpt)
    assert refused.exit_code == 2 and "--allow-pickle" in refused.stderr
    target = resolve(str(ckpt), allow_pickle=True)
    assert target.pipeline_class == "StableDiffusionPipeline" and target.components[0].weight_format == "pickle"
    mine, theirs = (load_component(resolve(str(p), allow_pickle=True).components[0]) for p in (ckpt, twin))
    for a, b in zip(outputs(mine), outputs(theirs), strict=True):
        assert torch.equal(a, b)
    shown = run_cli("inspect", ckpt, "--allow-pickle", "--format", "json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["encoders"]["text_encoder"]["consumer"]["name"] == "sd1"
