"""Turn a :class:`~amdet_audit.sources.model.Component` into a frozen :class:`Adapter`, running no code from it.

Steps: read config.json (JSON only), decide the family from ``model_type`` / ``architectures``, hand over to the
family module's ``build`` (:data:`FAMILIES`: clip.py, siglip.py, t5.py and bert.py; a new family is one
module). Builders load the tokenizer with its plain transformers class (never remote code), read the weights
with safetensors (``torch.load(weights_only=True)`` only for components explicitly marked
``weight_format="pickle"``), check every tensor name and shape against the config, and load them strictly into a
model built on the meta device
(:mod:`amdet_audit.encoders.weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from amdet_audit.encoders import bert, clip, siglip, t5
from amdet_audit.encoders.base import Adapter
from amdet_audit.encoders.consumers import Consumer, Read
from amdet_audit.errors import ConfigFileError, NotATextEncoderError, UsageError
from amdet_audit.sources import safe_files
from amdet_audit.sources.config_limits import check_config
from amdet_audit.sources.model import Component

#: (component, config, *, device, dtype, read_layer, read_norm, length, masked) -> Adapter
FamilyBuilder = Callable[..., Adapter]
#: family -> its module: the module's MODEL_TYPES and ARCHITECTURES name its configs, its ``build`` loads one.
#: A new family is one module beside these plus one entry here.
FAMILIES = {"clip": clip, "siglip": siglip, "t5": t5, "bert": bert}
#: model_type -> family
MODEL_TYPES: dict[str, str] = {t: name for name, module in FAMILIES.items() for t in module.MODEL_TYPES}
#: architecture class name -> family, for configs without a usable model_type
ARCHITECTURES: dict[str, str] = {a: name for name, module in FAMILIES.items() for a in module.ARCHITECTURES}
#: model types / classes that exist but are not text encoders (a clearer message than "unsupported").
NOT_TEXT_ENCODERS = frozenset(
    {
        "clip_vision_model", "CLIPVisionModel", "CLIPVisionModelWithProjection", "siglip_vision_model",
        "SiglipVisionModel", "vit",
        "resnet", "convnext", "dinov2", "swin", "beit", "deit", "UNet2DConditionModel", "AutoencoderKL",
        "UNet2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel", "ControlNetModel",
    }
)  # fmt: skip


def read_config(path: Path | str) -> dict[str, Any]:
    """Parse a config.json into a dict (a regular file of at most 1 MiB, nested at most 64 deep) and check its
    names and sizes (:func:`~amdet_audit.sources.config_limits.check_config`); ConfigFileError otherwise."""
    path = Path(path)
    try:
        config = safe_files.read_json(path)
    except ConfigFileError as exc:
        raise ConfigFileError(str(exc).replace(f"{path}: not found", f"{path}: config file not found")) from exc
    check_config(config, path)
    return config


def family_named(model_type: Any, architectures: Sequence[Any]) -> str | None:
    """The adapter family a ``model_type``, else the first known of ``architectures``, names; None if none does."""
    if isinstance(model_type, str) and model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    return next((ARCHITECTURES[a] for a in architectures if isinstance(a, str) and a in ARCHITECTURES), None)


def component_family(component: Component) -> str | None:
    """The adapter family a component's config names (:func:`family_named`); None when it names none of
    :data:`FAMILIES` (loading it then says why)."""
    return family_named(component.model_type, [component.architecture])


def read_of(consumer: Consumer, component: Component, layer: int | None = None) -> Read:
    """How ``consumer`` reads ``component``: by its slot and its family (a lone T5 for SD3 as SD3's T5);
    ``layer`` is ``--read-layer``."""
    return consumer.read(component.name, layer, component_family(component))


def load_as_read(component: Component, read: Read, device: torch.device | str = "cpu") -> Adapter:
    """``component`` loaded to give what ``read`` reads of it (layer, final norm, length, padding mask)."""
    return load_component(component, device=device, read_layer=read.layer, read_norm=read.final_norm,
                          length=read.length, masked=read.masked)


def detect_family(config: Mapping[str, Any], where: str) -> str:
    """The adapter family ("clip", ...) of a config; NotATextEncoderError when it holds no supported text encoder."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    family = family_named(model_type, architectures)
    if family is not None:
        return family
    kind = model_type or (architectures[0] if architectures else None) or config.get("_class_name")
    if kind is None:
        raise NotATextEncoderError(f"{where}: config names no model_type or architecture, not a text encoder")
    if kind in NOT_TEXT_ENCODERS or any(a in NOT_TEXT_ENCODERS for a in architectures):
        raise NotATextEncoderError(f"{where} is a {kind}, not a text encoder")
    raise NotATextEncoderError(f"{where} is a {kind}, not a supported text encoder (supported: {sorted(MODEL_TYPES)})")


def load_component(
    component: Component,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    read_layer: int | None = None,
    read_norm: bool | None = None,
    length: int | None = None,
    masked: bool | None = None,
) -> Adapter:
    """Load one text encoder component as a frozen Adapter.

    dtype: None loads float32. read_layer, read_norm: the sequence the consumer reads, ``hidden_states[read_layer]``
    with the final norm or not (None: -1, the last layer, with it); see :mod:`amdet_audit.encoders.consumers`.
    length, masked: the token count the consumer reads and whether it passes the padding mask, for families
    whose consumers differ in both (T5); None keeps the family's default. A read layer the model does not have
    is a UsageError.
    """
    if component.refusal is not None:
        raise NotATextEncoderError(f"{component.name}: {component.refusal}")
    config = read_config(component.config_path)
    family = detect_family(config, f"{component.name} ({component.config_path})")
    builder = FAMILY_BUILDERS.get(family)
    if builder is None:
        raise NotATextEncoderError(f"{component.name}: no adapter for the {family!r} family yet")
    layers = (config.get("num_hidden_layers") or config.get("num_layers")
              or (config.get("text_config") or {}).get("num_hidden_layers"))
    if read_layer is not None and isinstance(layers, int) and not -(layers + 1) <= read_layer <= -1:
        raise UsageError(f"{component.name}: read layer {read_layer} does not exist: the model has {layers} layers "
                         f"(hidden_states -1..-{layers + 1})")
    options = {name: value for name, value in (("length", length), ("masked", masked)) if value is not None}
    return builder(component, config, device=device, dtype=dtype, read_layer=-1 if read_layer is None else read_layer,
                   read_norm=read_norm, **options)


#: family -> builder(component, config, *, device, dtype, read_layer, read_norm, **length/masked)
FAMILY_BUILDERS: dict[str, FamilyBuilder] = {name: module.build for name, module in FAMILIES.items()}
