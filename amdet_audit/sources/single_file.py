"""Single-file checkpoints (A1111, ComfyUI, the ``.safetensors`` most fine-tunes are shared as): the text
encoders inside them, found by their tensor-name prefixes.

- SD 1.x: ``cond_stage_model.transformer.``: ``text_encoder``, CLIP ViT-L in transformers' layout.
- SD 2.x: ``cond_stage_model.model.``: ``text_encoder`` in OpenCLIP's layout (converted on load; its last block
  left out, as diffusers' SD 2.x text encoder is one block shorter: the pipeline reads the penultimate one).
- SDXL: ``conditioner.embedders.0.transformer.`` (``text_encoder``, CLIP ViT-L) and
  ``conditioner.embedders.1.model.`` (``text_encoder_2`` in OpenCLIP's layout, converted on load).
- SD3: ``text_encoders.clip_l.transformer.`` and ``text_encoders.clip_g.transformer.`` (``text_encoder``,
  ``text_encoder_2``, transformers' layout) and ``text_encoders.t5xxl.`` (``text_encoder_3``, T5: found, not
  loaded: the file ships neither its SentencePiece tokenizer nor its config; the pipeline folder's T5 scans).

Any other token-embedding table in the file (a tower a web UI might load instead) is listed as a component that
cannot be loaded, as is SD3's T5, so such an audit ends inconclusive, never clean.

The file holds no config: the CLIP config is inferred from the tensor shapes (width, layers, MLP width,
positions, vocabulary, projection; 64-wide attention heads and the activation of the model family: quick_gelu
for OpenAI's ViT-L, gelu for OpenCLIP's towers) and written into the cache; nor a tokenizer: each CLIP reads
the CLIP vocabulary amdet-audit ships, padded as its pipeline pads. Both are stated in the target's notes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from amdet_audit.cache import store, write_json
from amdet_audit.sources.model import Component

HEAD_WIDTH = 64  # every CLIP text tower of these pipelines uses 64-wide attention heads
TEXT = "text_model."  # transformers 4.x names (and the checkpoints) nest the tower under it; 5.x does not
LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Part:
    """One text encoder of a layout: its component name, key prefix, key layout and tokenizer padding."""

    name: str
    prefix: str
    unsupported: str | None = None  # why it is found but not loaded (a family not modelled)
    tokenizer: str = "clip"  # the shipped tokenizer: clip (EOS padding) or clip-sd2 ("!" padding)
    layout: str = "transformers"  # its tensor names: transformers' or "openclip" (converted on load)
    drop_last: bool = False  # the pipeline reads the penultimate block (SD 2.x): modelled one block shorter


@dataclass(frozen=True)
class Layout:
    """A single-file checkpoint layout: what it is, the pipeline class that reads it, its text encoders."""

    name: str
    pipeline_class: str
    parts: tuple[Part, ...]


LAYOUTS = (
    Layout("an SDXL single-file checkpoint", "StableDiffusionXLPipeline",
           (Part("text_encoder", "conditioner.embedders.0.transformer."),
            Part("text_encoder_2", "conditioner.embedders.1.model.", tokenizer="clip-sd2", layout="openclip"))),
    Layout("an SD3 single-file checkpoint", "StableDiffusion3Pipeline",
           (Part("text_encoder", "text_encoders.clip_l.transformer."),
            Part("text_encoder_2", "text_encoders.clip_g.transformer.", tokenizer="clip-sd2"),
            Part("text_encoder_3", "text_encoders.t5xxl.",
                 unsupported="a T5 encoder without its tokenizer and config in a single file: scan the pipeline folder"
                 ))),
    Layout("an SD 1.x single-file checkpoint", "StableDiffusionPipeline",
           (Part("text_encoder", "cond_stage_model.transformer."),)),
    Layout("an SD 2.x single-file checkpoint", "StableDiffusionPipeline",
           (Part("text_encoder", "cond_stage_model.model.", tokenizer="clip-sd2", layout="openclip",
                 drop_last=True),)),
)
#: tensor-name endings of a text encoder's token-embedding table (CLIP, OpenCLIP, BERT, T5): one under a prefix
#: that no part of the detected layout covers is a text encoder the audit must not pass over in silence
TOKEN_TABLES = ("token_embedding.weight", "word_embeddings.weight", "shared.weight", "embed_tokens.weight")


def detect(shapes: dict[str, tuple[int, ...]]) -> Layout | None:
    """The layout whose text-encoder prefixes the file's tensor names carry (None: not a known single file)."""
    for layout in LAYOUTS:
        if any(key.startswith(layout.parts[0].prefix) for key in shapes):
            return layout
    return None


def matrix(shapes: dict[str, tuple[int, ...]], name: str, what: str) -> tuple[int, int]:
    """The shape of tensor ``name``: 2-D with positive sizes, else ValueError naming it."""
    shape = shapes.get(name)
    if shape is None or len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"no {what} here: {name} is {'missing' if shape is None else list(shape)}")
    return shape[0], shape[1]


def tower_matrices(shapes: dict[str, tuple[int, ...]], names: tuple[str, str, str], projection: str,
                   what: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int] | None]:
    """The token embedding, position embedding and first MLP matrix named ``names`` and the optional
    ``projection``; the width must be a multiple of the heads. ValueError otherwise."""
    embed, positions, mlp = (matrix(shapes, name, what) for name in names)
    projected = matrix(shapes, projection, what) if projection in shapes else None
    if embed[1] % HEAD_WIDTH:
        raise ValueError(f"width {embed[1]} is not a multiple of the {HEAD_WIDTH}-wide attention heads")
    return embed, positions, mlp, projected


def clip_config(embed: tuple[int, int], positions: tuple[int, int], mlp: tuple[int, int], layers: int,
                projection_dim: int | None, act: str) -> dict[str, object]:
    """A CLIPTextConfig dict (64-wide heads; the legacy OpenAI token ids, pooling at the highest id)."""
    (vocab, width), (length, _), (inner, _) = embed, positions, mlp
    return {"architectures": ["CLIPTextModelWithProjection" if projection_dim else "CLIPTextModel"],
            "model_type": "clip_text_model", "vocab_size": vocab, "hidden_size": width, "intermediate_size": inner,
            "num_hidden_layers": layers, "num_attention_heads": width // HEAD_WIDTH,
            "max_position_embeddings": length, "hidden_act": act, "layer_norm_eps": 1e-5,
            "projection_dim": projection_dim or width, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}


def infer_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, object]:
    """A CLIPTextConfig dict from one CLIP tower's tensor shapes (names without the part's prefix); ValueError
    when the shapes do not describe one."""
    shapes = {key.removeprefix(TEXT): shape for key, shape in shapes.items()}
    embed, positions, mlp, projection = tower_matrices(
        shapes, ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
                 "encoder.layers.0.mlp.fc1.weight"), "text_projection.weight", "CLIP text tower")
    layers = 1 + max(int(m.group(1)) for key in shapes if (m := LAYER.match(key)))
    return clip_config(embed, positions, mlp, layers, projection[0] if projection else None,
                       "quick_gelu" if embed[1] <= 1024 else "gelu")


OPENCLIP_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def infer_openclip_config(shapes: dict[str, tuple[int, ...]], drop_last: bool) -> dict[str, object]:
    """A CLIPTextConfig dict from an OpenCLIP text tower's tensor shapes (names without the part's prefix)."""
    embed, positions, mlp, projection = tower_matrices(
        shapes, ("token_embedding.weight", "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight"),
        "text_projection", "OpenCLIP text tower")
    blocks = 1 + max(int(m.group(1)) for key in shapes if (m := OPENCLIP_BLOCK.match(key)))
    layers = blocks - 1 if drop_last and blocks > 1 else blocks
    return clip_config(embed, positions, mlp, layers, projection[1] if projection else None, "gelu")


def write_config(config: dict[str, object]) -> Path:
    """The inferred config as a config.json in the cache, named by its own content (written whole)."""
    name = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:32]
    path = store("configs") / name / "config.json"
    if not path.is_file():
        write_json(path, config)
    return path


def refused(path: Path, name: str, prefix: str, reason: str) -> Component:
    """A text encoder found in the file that cannot be loaded: loading it raises ``reason`` (the audit then
    cannot pass)."""
    return Component(name=name, config_path=path, weight_files=(path,), tokenizer_path=None, architecture="unknown",
                     model_type="unknown", key_prefix=prefix, refusal=f"{prefix}* in {path.name}: {reason}")


def stray_encoders(shapes: dict[str, tuple[int, ...]], layout: Layout) -> list[str]:
    """Prefixes (two name parts) of token-embedding tables that no part of ``layout`` covers: an encoder the
    layout does not name, such as a second tower added beside the one a scanner would read."""
    covered = tuple(part.prefix for part in layout.parts)
    stray = set()
    for key in shapes:
        if key.endswith(TOKEN_TABLES) and not key.startswith(covered):
            names = key.split(".")
            stray.add(".".join(names[:2]) + "." if len(names) > 2 else key)
    return sorted(stray)


def component(path: Path, part: Part, own: dict[str, tuple[int, ...]], layout: Layout,
              weight_format: str = "safetensors") -> tuple[Component, list[str]]:
    """One part of the layout as a component (refused when unsupported or its shapes do not hold a CLIP tower)."""
    from amdet_audit.errors import AmdetError
    from amdet_audit.sources.config_limits import check_config
    from amdet_audit.sources.shipped_tokenizer import CLIP_VOCAB_SIZE, SHIPPED, shipped_tokenizer

    if part.unsupported is not None:
        return refused(path, part.name, part.prefix, f"{part.unsupported} ({layout.name})"), []
    try:
        config = infer_openclip_config(own, part.drop_last) if part.layout == "openclip" else infer_config(own)
        check_config(config, Path(f"{path.name}:{part.prefix}*"))
    except (ValueError, AmdetError) as err:
        return refused(path, part.name, part.prefix, str(err)), []
    config_path = write_config(config)
    notes = [f"{part.name}: config inferred from the tensor shapes ({config['num_hidden_layers']} layers, width "
             f"{config['hidden_size']}, {config['hidden_act']}), written to {config_path}"]
    if part.layout == "openclip":
        notes.append(f"{part.name}: OpenCLIP tensor names converted to transformers' on load"
                     + ("; its last block is left out, as SD 2.x pipelines read the one before" if part.drop_last
                        else ""))
    tokenizer = shipped_tokenizer(part.tokenizer) if config["vocab_size"] == CLIP_VOCAB_SIZE else None
    if tokenizer is not None:
        notes.append(f"tokenizer: {part.name} reads the CLIP vocabulary amdet-audit ships, padding with "
                     f"{json.dumps(SHIPPED[part.tokenizer])} as its pipeline does (the file has no tokenizer)")
    architecture = str(config["architectures"][0])  # type: ignore[index]
    return Component(name=part.name, config_path=config_path, weight_files=(path,), tokenizer_path=tokenizer,
                     architecture=architecture, model_type="clip_text_model", key_prefix=part.prefix,
                     key_layout=part.layout, weight_format=weight_format), notes


def components(path: Path, shapes: dict[str, tuple[int, ...]], layout: Layout,
               weight_format: str = "safetensors") -> tuple[list[Component], list[str]]:
    """The layout's text encoders in ``path`` as components, any other token-embedding table as a refused one,
    and the notes that say how each was made (``weight_format``: safetensors, or pickle for a .ckpt)."""
    found, notes = [], [f"{layout.name}: its text encoders are read from their key prefixes"]
    for part in layout.parts:
        own = {key.removeprefix(part.prefix): shape for key, shape in shapes.items() if key.startswith(part.prefix)}
        if not own:
            notes.append(f"{part.name}: no tensors under {part.prefix}: not in this file")
            continue
        comp, made = component(path, part, own, layout, weight_format)
        found.append(comp)
        notes += made
    for i, prefix in enumerate(stray_encoders(shapes, layout)):
        found.append(refused(path, f"other_encoder_{i + 1}", prefix,
                             f"a token-embedding table {layout.name} does not have: an encoder that is not scanned"))
    return found, notes
