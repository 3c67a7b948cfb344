"""Single-file checkpoints (A1111, ComfyUI, the ``.safetensors`` most fine-tunes are shared as): the text
encoders inside them, found by their tensor-name prefixes.

- SD 1.x: ``cond_stage_model.transformer.``: ``text_encoder``, CLIP ViT-L in transformers' layout.
- SD 2.x: ``cond_stage_model.model.``: ``text_encoder`` in OpenCLIP's layout (found, not converted yet).
- SDXL: ``conditioner.embedders.0.transformer.`` (``text_encoder``, CLIP ViT-L) and
  ``conditioner.embedders.1.model.`` (``text_encoder_2`` in OpenCLIP's layout: found, not converted yet).
- SD3: ``text_encoders.clip_l.transformer.`` and ``text_encoders.clip_g.transformer.`` (``text_encoder``,
  ``text_encoder_2``, transformers' layout; its T5 is not scanned).

The file holds no config: the CLIP config is inferred from the tensor shapes (width, layers, MLP width,
positions, vocabulary, projection; 64-wide attention heads and the activation of the model family: quick_gelu
for OpenAI's ViT-L, gelu for OpenCLIP's bigG) and written into the cache; nor a tokenizer: each CLIP reads
the CLIP vocabulary amdet-audit ships, padded as its pipeline pads. Both are stated in the target's notes. A
component found in a layout that is not converted yet is kept as a component that cannot be loaded, so the
audit says so and never passes without it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from amdet_audit.cache import store
from amdet_audit.sources.model import Component

HEAD_WIDTH = 64  # every CLIP text tower of these pipelines uses 64-wide attention heads
TEXT = "text_model."  # transformers 4.x names (and the checkpoints) nest the tower under it; 5.x does not
LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Part:
    """One text encoder of a layout: its component name, key prefix, key layout and tokenizer padding."""

    name: str
    prefix: str
    openclip: bool = False
    tokenizer: str = "clip"  # the shipped tokenizer: clip (EOS padding) or clip-sd2 ("!" padding)


@dataclass(frozen=True)
class Layout:
    """A single-file checkpoint layout: what it is, the pipeline class that reads it, its text encoders."""

    name: str
    pipeline_class: str
    parts: tuple[Part, ...]


LAYOUTS = (
    Layout("an SDXL single-file checkpoint", "StableDiffusionXLPipeline",
           (Part("text_encoder", "conditioner.embedders.0.transformer."),
            Part("text_encoder_2", "conditioner.embedders.1.model.", openclip=True, tokenizer="clip-sd2"))),
    Layout("an SD3 single-file checkpoint", "StableDiffusion3Pipeline",
           (Part("text_encoder", "text_encoders.clip_l.transformer."),
            Part("text_encoder_2", "text_encoders.clip_g.transformer.", tokenizer="clip-sd2"))),
    Layout("an SD 1.x single-file checkpoint", "StableDiffusionPipeline",
           (Part("text_encoder", "cond_stage_model.transformer."),)),
    Layout("an SD 2.x single-file checkpoint", "StableDiffusionPipeline",
           (Part("text_encoder", "cond_stage_model.model.", openclip=True, tokenizer="clip-sd2"),)),
)


#: key patterns of text-encoder LoRAs -> what to call them
LORA_KINDS = (("lora_te1_", "a kohya SDXL text-encoder LoRA"), ("lora_te2_", "a kohya SDXL text-encoder LoRA"),
              ("lora_te_", "a kohya text-encoder LoRA"), ("lora_unet_", "a kohya LoRA"),
              (".lora_A.", "a PEFT LoRA"), (".lora_linear_layer.", "a diffusers LoRA"),
              (".lora_down.", "a LoRA"))


def lora_kind(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What kind of LoRA the file is (None: not a LoRA), from its tensor names."""
    for pattern, kind in LORA_KINDS:
        if any(pattern in key or key.startswith(pattern) for key in shapes):
            return kind
    return None


def detect(shapes: dict[str, tuple[int, ...]]) -> Layout | None:
    """The layout whose text-encoder prefixes the file's tensor names carry (None: not a known single file)."""
    for layout in LAYOUTS:
        if any(key.startswith(layout.parts[0].prefix) for key in shapes):
            return layout
    return None


def infer_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, object]:
    """A CLIPTextConfig dict from one CLIP tower's tensor shapes (names without the part's prefix)."""
    shapes = {key.removeprefix(TEXT): shape for key, shape in shapes.items()}
    embed = shapes.get("embeddings.token_embedding.weight")
    positions = shapes.get("embeddings.position_embedding.weight")
    fc1 = shapes.get("encoder.layers.0.mlp.fc1.weight")
    if embed is None or positions is None or fc1 is None or len(embed) != 2:
        raise ValueError("no CLIP text tower (token and position embeddings, MLP) under this prefix")
    vocab, width = embed
    layers = 1 + max(int(m.group(1)) for key in shapes if (m := LAYER.match(key)))
    projection = shapes.get("text_projection.weight")
    return {"architectures": ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
            "model_type": "clip_text_model", "vocab_size": vocab, "hidden_size": width,
            "intermediate_size": fc1[0], "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // HEAD_WIDTH), "max_position_embeddings": positions[0],
            "hidden_act": "quick_gelu" if width <= 1024 else "gelu", "layer_norm_eps": 1e-5,
            "projection_dim": projection[0] if projection else width,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}


def write_config(config: dict[str, object], identity: str) -> Path:
    """The inferred config as a config.json in the cache, named by ``identity`` (written whole)."""
    folder = store("configs") / hashlib.sha256(identity.encode()).hexdigest()[:32]
    path = folder / "config.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".config.{time.time_ns()}.tmp"
        tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
        tmp.replace(path)
    return path


def components(path: Path, shapes: dict[str, tuple[int, ...]], layout: Layout) -> tuple[list[Component], list[str]]:
    """The layout's text encoders in ``path`` as components, and the notes that say how each was made."""
    from amdet_audit.sources.tokenizer_choice import CLIP_VOCAB_SIZE, SHIPPED, shipped_tokenizer

    header = json.dumps(sorted(shapes.items()))
    found, notes = [], [f"{layout.name}: its text encoders are read from their key prefixes"]
    for part in layout.parts:
        own = {key.removeprefix(part.prefix): shape for key, shape in shapes.items() if key.startswith(part.prefix)}
        if not own:
            notes.append(f"{part.name}: no tensors under {part.prefix}: not in this file")
            continue
        if part.openclip:
            found.append(Component(name=part.name, config_path=path, weight_files=(path,), tokenizer_path=None,
                                   architecture="OpenCLIP", model_type="open_clip", key_prefix=part.prefix,
                                   refusal=f"an OpenCLIP-layout text encoder ({part.prefix}*) of {layout.name}: "
                                           "converting this layout is not supported yet, so it is not scanned"))
            continue
        try:
            config = infer_config(own)
        except ValueError as err:
            found.append(Component(name=part.name, config_path=path, weight_files=(path,), tokenizer_path=None,
                                   architecture="unknown", model_type="unknown", key_prefix=part.prefix,
                                   refusal=f"{part.prefix}*: {err}"))
            continue
        config_path = write_config(config, f"{header}|{part.prefix}")
        tokenizer = shipped_tokenizer(part.tokenizer) if config["vocab_size"] == CLIP_VOCAB_SIZE else None
        notes.append(f"{part.name}: config inferred from the tensor shapes ({config['num_hidden_layers']} layers, "
                     f"width {config['hidden_size']}, {config['hidden_act']}), written to {config_path}")
        if tokenizer is not None:
            notes.append(f"tokenizer: {part.name} reads the CLIP vocabulary amdet-audit ships, padding with "
                         f"{json.dumps(SHIPPED[part.tokenizer])} as its pipeline does (the file has no tokenizer)")
        architecture = "CLIPTextModelWithProjection" if "text_projection.weight" in own else "CLIPTextModel"
        found.append(Component(name=part.name, config_path=config_path, weight_files=(path,),
                               tokenizer_path=tokenizer, architecture=architecture, model_type="clip_text_model",
                               key_prefix=part.prefix))
    return found, notes
