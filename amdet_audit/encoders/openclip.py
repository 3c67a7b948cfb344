"""OpenCLIP's text-tower tensor layout (SD 2.x, SDXL's second encoder in single-file checkpoints) converted to
transformers' CLIP names.

OpenCLIP keeps attention's query, key and value in one ``in_proj`` matrix ([3D, D], rows q then k then v) and its
text projection as a [D, P] matrix used as ``x @ P``; transformers has three [D, D] projections and a Linear
whose weight is the transpose. Blocks at or beyond ``layers`` are dropped: SD 2.x pipelines read the
penultimate block's output through the final norm, which diffusers models as a tower one block shorter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
TOP = {"token_embedding.weight": "embeddings.token_embedding.weight",
       "positional_embedding": "embeddings.position_embedding.weight",
       "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
IN_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
            "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
DROPPED = ("logit_scale", "attn_mask")


def targets(key: str, layers: int) -> list[tuple[str, str]]:
    """(transformers name, how) for one OpenCLIP tensor name; how: ``same``, ``transpose`` or ``third:i`` (the
    i-th of the stacked q, k, v); [] drops the tensor."""
    if key in DROPPED:
        return []
    if key in TOP:
        return [(TOP[key], "same")]
    if key == "text_projection":
        return [("text_projection.weight", "transpose")]
    match = BLOCK.match(key)
    if match is None:
        return [(key, "same")]  # unknown: kept, so the name check reports it
    index, rest = int(match.group(1)), match.group(2)
    if index >= layers:
        return []
    base = f"encoder.layers.{index}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        leaf = "weight" if rest.endswith("weight") else "bias"
        return [(f"{base}self_attn.{name}_proj.{leaf}", f"third:{i}") for i, name in enumerate("qkv")]
    module, _, leaf = rest.rpartition(".")
    return [(f"{base}{IN_BLOCK.get(module, module)}.{leaf}", "same")]


def shape_of(how: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The converted tensor's shape."""
    if not shape:
        return shape
    if how == "transpose":
        return tuple(reversed(shape))
    if how.startswith("third:"):
        return (shape[0] // 3, *shape[1:])
    return shape


def tensor_of(how: str, tensor: Any) -> Any:
    """The converted tensor (a contiguous copy where it is split or transposed)."""
    if tensor.dim() == 0:
        return tensor  # malformed: the shape check names it
    if how == "transpose":
        return tensor.transpose(0, -1).contiguous()
    if how.startswith("third:"):
        size, i = tensor.shape[0] // 3, int(how.split(":")[1])
        return tensor[i * size:(i + 1) * size].contiguous()
    return tensor


def convert_shapes(declared: dict[str, tuple[tuple[int, ...], Path]], prefix: str,
                   layers: int) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Declared (shape, file) by OpenCLIP name under ``prefix`` -> by transformers name."""
    return {name: (shape_of(how, tuple(shape)), path) for key, (shape, path) in declared.items()
            for name, how in targets(key.removeprefix(prefix), layers)}


def convert_tensors(tensors: dict[str, tuple[Any, Path]], prefix: str, layers: int) -> dict[str, tuple[Any, Path]]:
    """Tensors by OpenCLIP name under ``prefix`` -> by transformers name."""
    return {name: (tensor_of(how, tensor), path) for key, (tensor, path) in tensors.items()
            for name, how in targets(key.removeprefix(prefix), layers)}
