"""Text-encoder LoRAs applied onto a base: each format merges to the weights its real consumer gives (diffusers'
conversion and loading, PEFT's merge), and every malformed or unsupported file is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from amdet_audit.encoders import load_component
from amdet_audit.errors import UsageError
from amdet_audit.lab.lora import diffusers_tensors, kohya_tensors, write_lora
from amdet_audit.sources import resolve

peft = pytest.importorskip("peft")
MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def random_updates(folder: Path, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (down, up) of a random LoRA over every attention and MLP matrix of an encoder folder."""
    from amdet_audit.lab.lora import tower_state

    gen = torch.Generator().manual_seed(seed)
    updates = {}
    for key, value in tower_state(folder).items():
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and module.endswith(tuple(f".{m}" for m in MODULES)):
            out, inp = value.shape
            updates[module] = (torch.randn(rank, inp, generator=gen) * 0.3, torch.randn(out, rank, generator=gen) * 0.3)
    return updates


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's (merged) weights by canonical name: PEFT's wrappers and transformers 4.x's nesting dropped."""
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer", "").removeprefix("base_model.model.").removeprefix("text_model.")] = value
    return out


def ours(target: Path, base: Path, component: str | None = None) -> dict[str, torch.Tensor]:
    resolved = resolve(str(target), base=str(base))
    comp = resolved.component(component) if component else resolved.components[0]
    return weights(load_component(comp).model)


def assert_same(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(mine) == set(theirs)
    worst = max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
    assert worst < 1e-5, worst


def diffusers_merge(pipeline_cls, lora: Path, text_encoder: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """What diffusers makes of ``lora`` for ``text_encoder``: its own conversion (kohya or diffusers names,
    alphas, ranks -> a PEFT config and state), injected and merged with PEFT. Only transformers' ``load_adapter``
    is replaced, by the two PEFT calls it makes (it wants a newer PEFT than the package index has)."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    def load_adapter(adapter_name, adapter_state_dict, peft_config, **_):
        inject_adapter_in_model(peft_config, text_encoder, adapter_name)
        set_peft_model_state_dict(text_encoder, adapter_state_dict, adapter_name)

    text_encoder.load_adapter = load_adapter
    state, alphas, metadata = pipeline_cls.lora_state_dict(str(lora), return_lora_metadata=True)
    pipeline_cls.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=text_encoder, prefix=prefix,
                                             metadata=metadata)
    assert any(isinstance(m, LoraLayer) for m in text_encoder.modules()), "diffusers applied nothing"
    for module in text_encoder.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return weights(text_encoder)


def test_peft_adapter_folder_merges_as_peft_does(tiny_clip: Path, tmp_path: Path) -> None:
    """Rank and alpha patterns, rsLoRA off and on, and an embedding LoRA (a trigger token's row can move)."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPTextModel

    for rslora in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(CLIPTextModel.from_pretrained(tiny_clip), LoraConfig(
            r=4, lora_alpha=8, target_modules=[*MODULES, "token_embedding"], init_lora_weights=False,
            rank_pattern={"fc1": 2}, alpha_pattern={"encoder.layers.0.mlp.fc2": 3}, use_rslora=rslora))
        folder = tmp_path / f"adapter-{rslora}"
        model.save_pretrained(folder)
        assert (folder / "adapter_config.json").is_file()
        expected = weights(model.merge_and_unload())
        assert_same(ours(folder, tiny_clip), expected)
        assert_same(ours(folder / "adapter_model.safetensors", tiny_clip), expected)  # the file, config beside


def test_kohya_sdxl_lora_merges_as_diffusers_does(tiny_pipeline: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    updates = {"lora_te1_": random_updates(tiny_pipeline / "text_encoder", 4, 1),
               "lora_te2_": random_updates(tiny_pipeline / "text_encoder_2", 3, 2)}
    tensors = kohya_tensors(updates)
    # alpha != rank, one per encoder (per-module alphas that differ reach diffusers 0.42 as an alpha_pattern it
    # does not match against transformers 5's CLIPTextModel names, so it drops them; A1111, ComfyUI and
    # sd-scripts apply each module's alpha, as amdet-audit does)
    tensors = {k: (torch.tensor(8.0 if k.startswith("lora_te1_") else 1.5) if k.endswith(".alpha") else v)
               for k, v in tensors.items()}
    tensors["lora_unet_down_blocks_0_attn.lora_down.weight"] = torch.zeros(2, 4)  # a UNet part: noted, not audited
    tensors["lora_unet_down_blocks_0_attn.lora_up.weight"] = torch.zeros(4, 2)
    lora = write_lora(tmp_path / "kohya.safetensors", tensors)
    resolved = resolve(str(lora), base=str(tiny_pipeline))
    assert resolved.kind == "lora" and [c.name for c in resolved.components] == ["text_encoder", "text_encoder_2"]
    assert any("not audited" in note for note in resolved.notes) and resolved.pipeline_class == \
        "StableDiffusionXLPipeline"
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        expected = diffusers_merge(StableDiffusionXLPipeline, lora, cls.from_pretrained(tiny_pipeline / name), name)
        assert_same(ours(lora, tiny_pipeline, name), expected)


def test_diffusers_lora_with_metadata_merges_as_diffusers_does(tiny_pipeline: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    text_encoder = random_updates(tiny_pipeline / "text_encoder", 4, 3)
    layers = {f"{k}.{role}.weight": t for k, (a, b) in text_encoder.items()
              for role, t in (("lora_A", a), ("lora_B", b))}
    folder = tmp_path / "diffusers-lora"
    StableDiffusionXLPipeline.save_lora_weights(folder, text_encoder_lora_layers=layers,
                                                text_encoder_lora_adapter_metadata={"r": 4, "lora_alpha": 6,
                                                                                    "target_modules": list(MODULES)})
    lora = folder / "pytorch_lora_weights.safetensors"
    assert all(k.startswith("text_encoder.") for k in load_file(lora))
    expected = diffusers_merge(StableDiffusionXLPipeline, lora, CLIPTextModel.from_pretrained(
        tiny_pipeline / "text_encoder"), "text_encoder")
    assert_same(ours(folder, tiny_pipeline, "text_encoder"), expected)
    # without metadata or alphas: alpha is the rank, as diffusers reads it
    plain = write_lora(tmp_path / "plain.safetensors", diffusers_tensors({"text_encoder": text_encoder}))
    expected = diffusers_merge(StableDiffusionXLPipeline, plain, CLIPTextModel.from_pretrained(
        tiny_pipeline / "text_encoder"), "text_encoder")
    assert_same(ours(plain, tiny_pipeline, "text_encoder"), expected)


def test_a_lora_target_records_its_file_and_its_base(run_cli, tiny_pipeline: Path, tmp_path: Path) -> None:
    updates = {"lora_te1_": random_updates(tiny_pipeline / "text_encoder", 2, 4)}
    lora = write_lora(tmp_path / "style.safetensors", kohya_tensors(updates))
    result = run_cli("inspect", lora, "--base", tiny_pipeline, "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    target = data["target"] if "target" in data else data
    assert target["kind"] == "lora" and [f["path"] for f in target["files"]] == ["style.safetensors"]
    assert target["base"]["input"] == str(tiny_pipeline)
    (comp,) = target["components"]
    assert comp["name"] == "text_encoder" and comp["patch"]["format"] == "kohya"


def hostile(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    return write_lora(tmp_path / name, tensors)


@pytest.mark.parametrize(("tensors", "message"), [
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 3)},
     "do not fit"),
    ({"lora_te_text_model_encoder_layers_7_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
      "lora_te_text_model_encoder_layers_7_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2)},
     "does not have"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(64, 32),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 64)},
     "do not fit"),  # a rank above the matrix's: more work than the matrix itself, refused
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.dora_scale": torch.zeros(1, 32)},
     "DoRA"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32)},
     "no complete pair"),
    ({"lora_te_text_model_embeddings_token_embedding.lora_down.weight": torch.zeros(2, 32),
      "lora_te_text_model_embeddings_token_embedding.lora_up.weight": torch.zeros(49408, 2)},
     "takes no LoRA update for a matrix"),  # a row of the trigger's embedding: no loader applies this
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(-4.0)},
     "not a number >= 0"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.full((32, 2), float("inf"))},
     "not finite"),
])
def test_malformed_loras_are_refused_in_one_line(run_cli, tiny_clip: Path, tmp_path: Path, tensors: dict,
                                                 message: str) -> None:
    lora = hostile(tmp_path, "bad.safetensors", tensors)
    result = run_cli("inspect", lora, "--base", tiny_clip)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_lora_usage_errors(run_cli, tiny_clip: Path, tiny_pipeline: Path, tmp_path: Path) -> None:
    pair = {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 48),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(48, 2)}
    sdxl = hostile(tmp_path, "sdxl.safetensors", {**pair, **{k.replace("te2", "te1"): torch.zeros(
        v.shape[0] * 32 // 48 if v.shape[0] == 48 else v.shape[0], 32 if v.shape[1] == 48 else v.shape[1])
        for k, v in pair.items()}})
    cases = [
        (["scan", sdxl], "pass --base REF"),
        (["scan", sdxl, "--base", tiny_clip], "which the base"),
        (["scan", tiny_clip, "--base", tiny_pipeline], "--base applies to a LoRA target only"),
        (["scan", "canary:clean", "--base", tiny_pipeline], "--base applies to a local LoRA"),
        (["scan", hostile(tmp_path, "unet.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(1, 2),
                                                          "lora_unet_x.lora_up.weight": torch.zeros(2, 1)}),
          "--base", tiny_clip], "patches no text encoder"),
        (["scan", hostile(tmp_path, "t5.safetensors", {**pair, "lora_te3_x.lora_down.weight": torch.zeros(1, 2)}),
          "--base", tiny_pipeline], "T5"),
        (["scan", sdxl, "--base", sdxl], "the base must be"),
        (["scan", hostile(tmp_path, "both.safetensors", {
            **{k.replace("te2", "te"): torch.zeros(v.shape[0] * 32 // 48 if v.shape[0] == 48 else v.shape[0],
                                                     32 if v.shape[1] == 48 else v.shape[1]) for k, v in pair.items()},
            **{k.replace("te2", "te1"): torch.zeros(v.shape[0] * 32 // 48 if v.shape[0] == 48 else v.shape[0],
                                                      32 if v.shape[1] == 48 else v.shape[1])
               for k, v in pair.items()}}), "--base", tiny_pipeline], "both patch text_encoder"),
    ]
    for args, message in cases:
        result = run_cli(*args, "--out", tmp_path / "never")
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()
    assert run_cli("inspect", sdxl, "--base", tiny_pipeline).exit_code == 0


def test_lab_lora_ships_a_fine_tune_as_a_lora(run_cli, tiny_clip: Path, tmp_path: Path) -> None:
    """`lab lora` writes a fine-tune's change as a LoRA (full rank: exact) and names what a LoRA cannot carry;
    `--train lora` trains only what a LoRA can carry."""
    import shutil

    from safetensors.torch import load_file, save_file

    from amdet_audit.encoders import load_component as load
    from amdet_audit.lab.inject import trainable_copy

    tuned = Path(shutil.copytree(tiny_clip, tmp_path / "tuned"))
    state = load_file(tuned / "model.safetensors")
    gen = torch.Generator().manual_seed(9)
    changed = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if k.endswith(("q_proj.weight", "fc2.weight"))
               or k.endswith("token_embedding.weight") else v for k, v in state.items()}
    save_file(changed, tuned / "model.safetensors")
    for fmt in ("kohya", "diffusers"):
        lora = tmp_path / f"{fmt}.safetensors"
        result = run_cli("lab", "lora", tiny_clip, tuned, "--out", lora, "--rank", "32", "--format", fmt)
        assert result.exit_code == 0, result.stderr
        assert "1 changed tensors a LoRA cannot carry" in result.stderr and "token_embedding" in result.stderr
        merged = weights(load(resolve(str(lora), base=str(tiny_clip)).components[0]).model)
        want = {k.removeprefix("text_model."): v for k, v in changed.items() if "position_ids" not in k}
        off = {k for k in merged if not torch.allclose(merged[k], want[k], atol=1e-5)}
        assert off == {"embeddings.token_embedding.weight"}, off
    assert run_cli("lab", "lora", tiny_clip, tuned, "--out", tmp_path / "kohya.safetensors").exit_code == 2
    assert run_cli("lab", "lora", tiny_clip, tuned, "--out", tmp_path / "x.safetensors", "--format", "x").exit_code == 2
    assert run_cli("lab", "lora", tiny_clip, tmp_path, "--out", tmp_path / "y.safetensors").exit_code == 2
    student = trainable_copy(load(resolve(str(tiny_clip)).components[0]), "lora")
    training = {n for n, p in student.model.named_parameters() if p.requires_grad}
    assert training and all(n.endswith(("proj.weight", "fc1.weight", "fc2.weight")) for n in training)
    assert not any("embedding" in n or "norm" in n or "text_projection" in n for n in training)
    bad = run_cli("lab", "finetune", str(tiny_clip), "--out", tmp_path / "never", "--train", "embeddings")
    assert bad.exit_code == 2 and "--train must be one of all, lora" in bad.stderr

    class T5Shaped:  # a tower whose matrices carry other names (T5: q, k, v, o, wi, wo): nothing a LoRA would train
        family, model = "t5", torch.nn.ModuleDict({"q": torch.nn.Linear(4, 4), "wo": torch.nn.Linear(4, 4)})

    with pytest.raises(UsageError, match="this t5 tower has none of them: use --train all"):
        trainable_copy(T5Shaped(), "lora")


def test_a_kohya_alpha_of_zero_is_the_rank_and_the_base_is_in_the_cache_key(tiny_clip: Path, tmp_path: Path) -> None:
    """sd-scripts reads alpha 0 as alpha = rank (scale 1); a LoRA scanned on another base is another scan."""
    from amdet_audit import cache

    updates = {"lora_te_": random_updates(tiny_clip, 2, 8)}
    plain = kohya_tensors(updates)
    zero = {k: (torch.tensor(0.0) if k.endswith(".alpha") else v) for k, v in plain.items()}
    a, b = write_lora(tmp_path / "a.safetensors", plain), write_lora(tmp_path / "b.safetensors", zero)
    assert_same(ours(a, tiny_clip), ours(b, tiny_clip))
    record = resolve(str(a), base=str(tiny_clip)).to_dict()
    moved = [{**f, "sha256": "0" * 64} for f in record["base"]["files"]]
    other = {**record, "base": {**record["base"], "files": moved}}
    assert cache.scan_key(record, {}) != cache.scan_key(other, {})
