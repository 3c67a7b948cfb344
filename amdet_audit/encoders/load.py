"""Turn a :class:`~amdet_audit.sources.model.Component` into a frozen :class:`Adapter`, running no code from it.

Steps: read config.json (JSON only), decide the family from ``model_type`` / ``architectures``, hand over to the
family's builder in :data:`FAMILY_BUILDERS` (the dispatch point where new families plug in: CLIP and BERT
today). Builders load the tokenizer with its plain transformers class (never remote code), read the weights
with safetensors (``torch.load(weights_only=True)`` only for components explicitly marked
``weight_format="pickle"``), check every tensor name and shape against the config, and load them strictly into
a model built on the meta device.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amdet_audit.encoders.base import Adapter
from amdet_audit.encoders.bert import BertTextAdapter
from amdet_audit.encoders.clip import ClipTextAdapter
from amdet_audit.errors import AmdetError, ConfigFileError, NotATextEncoderError, TokenizerError, WeightsError
from amdet_audit.sources import safe_files
from amdet_audit.sources.config_limits import check_config
from amdet_audit.sources.model import Component

Tensors = dict[str, tuple[torch.Tensor, Path]]  # key -> (tensor, file it came from)
FamilyBuilder = Callable[..., Adapter]  # (component, config, *, device, dtype, read_layer) -> Adapter

#: model_type -> family; "clip" is a full CLIPModel, whose text tower is used.
MODEL_TYPES: dict[str, str] = {"clip_text_model": "clip", "clip": "clip", "bert": "bert"}
#: architecture class name -> family, for configs without a usable model_type.
ARCHITECTURES: dict[str, str] = {"CLIPTextModel": "clip", "CLIPTextModelWithProjection": "clip", "CLIPModel": "clip",
                                 "BertModel": "bert"}
#: model types / classes that exist but are not text encoders (a clearer message than "unsupported").
NOT_TEXT_ENCODERS = frozenset(
    {
        "clip_vision_model", "CLIPVisionModel", "CLIPVisionModelWithProjection", "siglip_vision_model", "vit",
        "resnet", "convnext", "dinov2", "swin", "beit", "deit", "UNet2DConditionModel", "AutoencoderKL",
        "UNet2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel", "ControlNetModel",
    }
)  # fmt: skip
CLIP_TEXT_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
CLIP_PREFIX = "text_model."
OTHER_TOWER_PREFIXES = ("vision_model.", "visual_projection.", "logit_scale")
FULL_CLIP_HEAD_PREFIXES = ("text_projection.",)  # the joint head of a full CLIPModel, not part of the text tower
POSITION_IDS = "embeddings.position_ids"
LAYER_INDEX = re.compile(r"\.(\d+)\.")  # the layer number in a state-dict key: encoder.layers.3.mlp...
Shapes = dict[str, tuple[tuple[int, ...], Path]]  # key -> (shape, file it is declared in)


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


def detect_family(config: Mapping[str, Any], where: str) -> str:
    """The adapter family ("clip", ...) of a config; NotATextEncoderError when it holds no supported text encoder."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    for name in architectures:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
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
) -> Adapter:
    """Load one text encoder component as a frozen Adapter.

    dtype: None loads float32. read_layer: None means -1 (last layer + final norm); pass -2 for SDXL encoders.
    """
    config = read_config(component.config_path)
    family = detect_family(config, f"{component.name} ({component.config_path})")
    builder = FAMILY_BUILDERS.get(family)
    if builder is None:
        raise NotATextEncoderError(f"{component.name}: no adapter for the {family!r} family yet")
    return builder(component, config, device=device, dtype=dtype, read_layer=-1 if read_layer is None else read_layer)


# ---- weights (family independent) -------------------------------------------------------------------------------


def read_weights(component: Component, keep: Callable[[str], bool] = lambda key: True) -> Tensors:
    """The tensors of the component's weight files whose key passes ``keep`` (shards merged).

    A key in two files raises WeightsError. ``keep`` spares reading another tower's tensors.
    """
    if not component.weight_files:
        raise WeightsError(f"{component.name}: no weight files")
    tensors: Tensors = {}
    for path in component.weight_files:
        for key, tensor in read_weight_file(Path(path), component.weight_format, keep).items():
            if key in tensors:
                raise WeightsError(f"{path}: tensor {key} also in {tensors[key][1]}")
            tensors[key] = (tensor, Path(path))
    return tensors


def read_weight_file(
    path: Path, weight_format: str = "safetensors", keep: Callable[[str], bool] = lambda key: True
) -> Mapping[str, torch.Tensor]:
    """One file's tensors (those whose key passes ``keep``): safetensors, or, only when weight_format is
    "pickle", ``torch.load(weights_only=True)``."""
    try:
        safe_files.check_regular(path)  # a FIFO or device is refused here, never opened
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: weight file not found") from exc
    if weight_format == "pickle":
        return {k: v for k, v in _read_pickle(path).items() if keep(k)}
    if weight_format != "safetensors":
        raise WeightsError(f"{path}: unknown weight format {weight_format!r}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if keep(key)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file (corrupt or truncated): {exc}") from exc


def _read_pickle(path: Path) -> Mapping[str, torch.Tensor]:
    """A pickle state dict, unpickled with weights_only=True (tensors and plain containers only), and only when
    the serialization check finds nothing but known-safe checkpoint imports in it."""
    from amdet_audit.checks.serialization import refusal_reason

    reason = refusal_reason(path)
    if reason:
        raise WeightsError(f"{path}: refused to unpickle, even with --allow-pickle: {reason}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; none may escape as a crash, none spans lines
        why = next((ln.split("error:", 1)[1].strip()[:160] for ln in str(exc).splitlines() if "Unpickler error:" in ln),
                   type(exc).__name__)
        raise WeightsError(f"{path}: not a readable weights-only pickle checkpoint ({why})") from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path}: pickle checkpoint is not a flat state dict of tensors")
    return data


def _name_some(keys: Iterable[str], limit: int = 3) -> str:
    """'a, b, c and 4 more' for error messages."""
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def match_tensors(
    model: nn.Module, tensors: Tensors, *, canonical: Callable[[str], str], ignorable: Callable[[str], bool]
) -> dict[str, torch.Tensor]:
    """Map file tensors onto ``model``'s state-dict keys via ``canonical`` names; check names and shapes.

    Keys for which ``ignorable(canonical_key)`` holds (another tower, position_ids) are dropped; any other key the
    model lacks, any key it expects but the files lack, and any shape differing from the config raise WeightsError.
    """
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    declared = {key: (tuple(tensor.shape), path) for key, (tensor, path) in tensors.items()}
    mapping = check_planned(shapes, declared, canonical=canonical, ignorable=ignorable, model_name=type(model).__name__)
    return {model_key: tensors[key][0] for key, model_key in mapping.items()}


def check_planned(
    expected_shapes: Mapping[str, tuple[int, ...]],
    declared: Shapes,
    *,
    canonical: Callable[[str], str],
    ignorable: Callable[[str], bool],
    model_name: str,
) -> dict[str, str]:
    """Check declared tensors (key -> (shape, file)) against a model's state-dict shapes; return file key -> model
    key for the tensors the model takes. WeightsError names a missing, unexpected or mis-shaped tensor."""
    expected = {canonical(k): k for k in expected_shapes if not canonical(k).endswith(POSITION_IDS)}
    provided: dict[str, tuple[tuple[int, ...], Path, str]] = {}
    for key, (shape, path) in declared.items():
        name = canonical(key)
        if ignorable(name):
            continue
        if name in provided:
            raise WeightsError(f"{path}: tensors {provided[name][2]} and {key} both map to {name}")
        provided[name] = (tuple(shape), path, key)
    _check_names(expected, provided, model_name)
    for name, (shape, path, key) in provided.items():
        want = tuple(expected_shapes[expected[name]])
        if shape != want:
            raise WeightsError(f"{path}: tensor {key} has shape {list(shape)} but the config implies {list(want)}")
    return {key: expected[name] for name, (_, _, key) in provided.items()}


def declared_shapes(component: Component, keep: Callable[[str], bool], tensors: Tensors | None = None) -> Shapes:
    """key -> (shape, file) of the component's tensors that pass ``keep``: from ``tensors`` when already read
    (pickle), else from the safetensors headers alone (no tensor is read)."""
    if tensors is not None:
        return {key: (tuple(tensor.shape), path) for key, (tensor, path) in tensors.items()}
    if not component.weight_files:
        raise WeightsError(f"{component.name}: no weight files")
    shapes: Shapes = {}
    for path in map(Path, component.weight_files):
        for key, (_, shape) in safe_files.safetensors_header(path).items():
            if not keep(key):
                continue
            if key in shapes:
                raise WeightsError(f"{path}: tensor {key} also in {shapes[key][1]}")
            shapes[key] = (shape, path)
    return shapes


def planned_shapes(
    make: Callable[[int], nn.Module], layers: int, where: Path
) -> tuple[dict[str, tuple[int, ...]], str]:
    """State-dict key -> shape of the model ``make(layers)`` would be, and its class name, from a one-layer build
    on the meta device whose layer keys are repeated ``layers`` times: nothing the config's size is built."""
    one = build_on_meta(lambda: make(1), where)
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in one.state_dict().items():
        match = LAYER_INDEX.search(key)
        if match is None or match.group(1) != "0":
            shapes[key] = tuple(value.shape)
            continue
        for i in range(layers):
            shapes[f"{key[:match.start(1)]}{i}{key[match.end(1):]}"] = tuple(value.shape)
    return shapes, type(one).__name__


def check_budget(
    make: Callable[[int], nn.Module],
    layers: int,
    declared: Shapes,
    *,
    canonical: Callable[[str], str],
    ignorable: Callable[[str], bool],
    where: Path,
) -> int:
    """Before a model is built: the parameter count the config implies must equal what the weight files declare
    (another tower, a full CLIPModel's joint head and position ids excluded: ``ignorable``). A mismatch is refused,
    naming the first missing, unexpected or mis-shaped tensor where there is one. Returns the count."""
    shapes, model_name = planned_shapes(make, layers, where)
    implied = sum(math.prod(s) for k, s in shapes.items() if not canonical(k).endswith(POSITION_IDS))
    given = sum(math.prod(shape) for key, (shape, _) in declared.items() if not ignorable(canonical(key)))
    if implied != given:
        check_planned(shapes, declared, canonical=canonical, ignorable=ignorable, model_name=model_name)
        files = ", ".join(sorted({str(p) for _, p in declared.values()})) or "(no tensors)"
        raise WeightsError(f"{files}: the weights declare {given:,} parameters but {where} implies {implied:,} "
                           f"({model_name}); refused before building the model")
    return implied


def with_layers(config: Any, layers: int) -> Any:
    """A copy of a transformers config with ``num_hidden_layers`` set."""
    changed = copy.deepcopy(config)
    changed.num_hidden_layers = layers
    return changed


def build_on_meta(make: Callable[[], nn.Module], where: Path) -> nn.Module:
    """``make()`` on the meta device; a config transformers cannot build a model from raises ConfigFileError."""
    try:
        with torch.device("meta"):
            return make()
    except AmdetError:
        raise
    except (ValueError, TypeError, AttributeError, RuntimeError, ZeroDivisionError) as exc:
        raise ConfigFileError(f"{where}: the config does not describe a buildable model ({one_line(exc)})") from exc


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (:func:`amdet_audit.errors.one_line`)."""
    from amdet_audit import errors

    return errors.one_line(exc, limit)


def _check_names(expected: Mapping[str, str], provided: Mapping[str, tuple], model_name: str) -> None:
    """Raise WeightsError naming up to 3 missing or unexpected tensors."""
    missing = set(expected) - set(provided)
    if missing:
        files = sorted({str(p) for _, p, _ in provided.values()}) or ["(no tensors)"]
        raise WeightsError(f"{', '.join(files)}: missing {len(missing)} tensors of {model_name}: {_name_some(missing)}")
    unexpected = {provided[n][2]: provided[n][1] for n in set(provided) - set(expected)}
    if unexpected:
        files = sorted({str(p) for p in unexpected.values()})
        raise WeightsError(f"{', '.join(files)}: tensors that are not part of {model_name}: {_name_some(unexpected)}")


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a checked state dict into a model built on the meta device; rebuild the index buffers
    (position_ids 0..n-1, BERT's token_type_ids zeros)."""
    model.load_state_dict(dict(state), strict=True, assign=True)
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        owner, _, leaf = name.rpartition(".")
        if leaf == "position_ids":
            value = torch.arange(buffer.shape[-1]).expand(tuple(buffer.shape))
        elif leaf == "token_type_ids":
            value = torch.zeros(tuple(buffer.shape), dtype=torch.long)
        else:
            raise RuntimeError(f"buffer {name} of {type(model).__name__} was not materialised")
        setattr(model.get_submodule(owner), leaf, value)
    return model


# ---- CLIP -------------------------------------------------------------------------------------------------------


def local_tokenizer(cls: Any, folder: Path | None, what: str) -> Any:
    """``cls.from_pretrained(folder)`` from local files only, never remote code; TokenizerError when unreadable."""
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizer loading raises many types for bad files
        raise TokenizerError(f"{folder}: unreadable {what}: {one_line(exc)}") from exc


def clip_text_config(config: Mapping[str, Any], where: Path) -> tuple[Any, bool]:
    """(CLIPTextConfig, is_full_clip) from a text-tower config or a full CLIPModel config (its text_config)."""
    from transformers import CLIPConfig, CLIPTextConfig

    full = config.get("model_type") == "clip" or "CLIPModel" in (config.get("architectures") or [])
    try:
        text = CLIPConfig.from_dict(dict(config)).text_config if full else CLIPTextConfig.from_dict(dict(config))
    except Exception as exc:  # transformers raises TypeError, ValueError or strict-dataclass errors
        raise ConfigFileError(f"{where}: not a valid CLIP text config ({one_line(exc)})") from exc
    return text, full


def clip_class_name(config: Mapping[str, Any], component: Component, tensors: Mapping[str, Any], full: bool) -> str:
    """Which CLIP text class the weights belong to: the config's architecture, else the component's, else the
    presence of a ``text_projection`` tensor decides."""
    if full:
        return "CLIPTextModel"
    for name in [*(config.get("architectures") or []), component.architecture]:
        if name in CLIP_TEXT_CLASSES:
            return name
    has_projection = any(k.removeprefix(CLIP_PREFIX).startswith("text_projection.") for k in tensors)
    return CLIP_TEXT_CLASSES[1] if has_projection else CLIP_TEXT_CLASSES[0]


def load_clip_tokenizer(component: Component, max_positions: int) -> Any:
    """The component's CLIPTokenizer (local files only), with model_max_length capped at the model's positions."""
    import transformers

    folder = component.tokenizer_path
    has_bpe = folder is not None and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    has_json = folder is not None and (folder / "tokenizer.json").is_file()
    if not (has_bpe or has_json):
        raise TokenizerError(
            f"no tokenizer found for {component.name} (expected vocab.json + merges.txt or tokenizer.json)"
        )
    cls = transformers.CLIPTokenizer if has_bpe else transformers.CLIPTokenizerFast
    tokenizer = local_tokenizer(cls, folder, f"CLIP tokenizer for {component.name}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None or tokenizer.bos_token_id is None:
        raise TokenizerError(f"{folder}: CLIP tokenizer for {component.name} lacks a BOS, EOS or pad token")
    if not tokenizer.model_max_length or tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    return tokenizer


def clip_ignorable(full: bool) -> Callable[[str], bool]:
    """Canonical keys to drop: another tower's (and, for a full CLIPModel, its joint head), and position_ids."""
    prefixes = OTHER_TOWER_PREFIXES + (FULL_CLIP_HEAD_PREFIXES if full else ())
    return lambda name: name.startswith(prefixes) or name == POSITION_IDS



def prefixed_keys(prefix: str, ignorable: Callable[[str], bool]
                  ) -> tuple[Callable[[str], bool], Callable[[str], str]]:
    """(keep, canonical) for a family whose checkpoints may nest the encoder under ``prefix``: keep a stored
    key unless its name without the prefix is ignorable; its canonical name is the name without the prefix."""

    def canonical(key: str) -> str:
        return key.removeprefix(prefix)

    def keep(key: str) -> bool:
        return not ignorable(canonical(key))

    return keep, canonical

def build_clip(
    component: Component,
    config: Mapping[str, Any],
    *,
    device: torch.device | str,
    dtype: torch.dtype | None,
    read_layer: int,
) -> ClipTextAdapter:
    """The CLIP family builder: config, tokenizer, checked weights -> ClipTextAdapter."""
    import transformers

    text_config, full = clip_text_config(config, component.config_path)
    tokenizer = load_clip_tokenizer(component, int(text_config.max_position_embeddings))
    ignorable = clip_ignorable(full)
    keep, canonical = prefixed_keys(CLIP_PREFIX, ignorable)

    tensors = read_weights(component, keep=keep) if component.weight_format == "pickle" else None
    declared = declared_shapes(component, keep, tensors)
    cls = getattr(transformers, clip_class_name(config, component, declared, full))
    check_budget(lambda n: cls(with_layers(text_config, n)), int(text_config.num_hidden_layers), declared,
                 canonical=canonical, ignorable=ignorable, where=component.config_path)
    tensors = tensors if tensors is not None else read_weights(component, keep=keep)
    model = build_on_meta(lambda: cls(text_config), component.config_path)
    state = match_tensors(model, tensors, canonical=canonical, ignorable=ignorable)
    model = load_strict(model, state).to(device=device, dtype=dtype or torch.float32)
    return ClipTextAdapter(model, tokenizer, read_layer=read_layer)


# ---- BERT -------------------------------------------------------------------------------------------------------

BERT_PREFIX = "bert."  # task-head checkpoints (BertForMaskedLM, ...) keep the encoder under bert.
BERT_IGNORED_PREFIXES = ("cls.", "classifier.", "qa_outputs.")  # task heads, not part of the encoder


def load_bert_tokenizer(component: Component) -> Any:
    """The component's BERT WordPiece tokenizer (local files only, no remote code)."""
    import transformers

    folder = component.tokenizer_path
    has_vocab = folder is not None and (folder / "vocab.txt").is_file()
    has_json = folder is not None and (folder / "tokenizer.json").is_file()
    if not (has_vocab or has_json):
        raise TokenizerError(f"no tokenizer found for {component.name} (expected vocab.txt or tokenizer.json)")
    cls = transformers.BertTokenizerFast if has_json else transformers.BertTokenizer
    tokenizer = local_tokenizer(cls, folder, f"BERT tokenizer for {component.name}")
    if None in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        raise TokenizerError(f"{folder}: BERT tokenizer for {component.name} lacks a [CLS], [SEP] or [PAD] token")
    return tokenizer


def build_bert(
    component: Component,
    config: Mapping[str, Any],
    *,
    device: torch.device | str,
    dtype: torch.dtype | None,
    read_layer: int,
) -> BertTextAdapter:
    """The BERT family builder: config, tokenizer, checked weights -> BertTextAdapter (pooler layer included
    when the weights have one)."""
    from transformers import BertConfig, BertModel

    try:
        bert_config = BertConfig.from_dict(dict(config))
    except Exception as exc:  # transformers raises TypeError, ValueError or strict-dataclass errors
        raise ConfigFileError(f"{component.config_path}: not a valid BERT config ({one_line(exc)})") from exc
    tokenizer = load_bert_tokenizer(component)

    def ignorable(name: str) -> bool:
        return name.startswith(BERT_IGNORED_PREFIXES) or name == POSITION_IDS

    keep, canonical = prefixed_keys(BERT_PREFIX, ignorable)

    tensors = read_weights(component, keep=keep) if component.weight_format == "pickle" else None
    declared = declared_shapes(component, keep, tensors)
    has_pooler = any(canonical(k).startswith("pooler.") for k in declared)
    check_budget(lambda n: BertModel(with_layers(bert_config, n), add_pooling_layer=has_pooler),
                 int(bert_config.num_hidden_layers), declared, canonical=canonical, ignorable=ignorable,
                 where=component.config_path)
    tensors = tensors if tensors is not None else read_weights(component, keep=keep)
    model = build_on_meta(lambda: BertModel(bert_config, add_pooling_layer=has_pooler), component.config_path)
    state = match_tensors(model, tensors, canonical=canonical, ignorable=ignorable)
    model = load_strict(model, state).to(device=device, dtype=dtype or torch.float32)
    return BertTextAdapter(model, tokenizer, read_layer=read_layer)


#: family -> builder(component, config, *, device, dtype, read_layer). Register new families here.
FAMILY_BUILDERS: dict[str, FamilyBuilder] = {"clip": build_clip, "bert": build_bert}
