"""Family-independent loading: read weight files (safetensors; pickles only when marked so), check every tensor
name and shape against the model the config builds, bound the work before allocating, load strictly on a model
built on the meta device, and read tokenizers from local files only."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amdet_audit.errors import AmdetError, ConfigFileError, TokenizerError, WeightsError, one_line
from amdet_audit.sources import safe_files
from amdet_audit.sources.model import Component

Tensors = dict[str, tuple[torch.Tensor, Path]]  # key -> (tensor, file it came from)
Shapes = dict[str, tuple[tuple[int, ...], Path]]  # key -> (shape, file it is declared in)
POSITION_IDS = "embeddings.position_ids"
LAYER_INDEX = re.compile(r"\.(\d+)\.")  # the layer number in a state-dict key: encoder.layers.3.mlp...


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
    expected = {canonical(k): k for k in expected_shapes
                if not canonical(k).endswith(POSITION_IDS) and not ignorable(canonical(k))}
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
    """State-dict key -> shape of the model ``make(layers)`` would be, and its class name, from a build of at most
    two layers on the meta device: the first layer's keys as they are, the second's repeated for every further
    layer (T5's first layer alone holds the relative position bias): nothing the config's size is built."""
    few = build_on_meta(lambda: make(min(layers, 2)), where)
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in few.state_dict().items():
        match = LAYER_INDEX.search(key)
        if match is None or match.group(1) not in ("0", "1"):
            shapes[key] = tuple(value.shape)
            continue
        for i in ([0] if match.group(1) == "0" else range(1, layers)):
            shapes[f"{key[:match.start(1)]}{i}{key[match.end(1):]}"] = tuple(value.shape)
    return shapes, type(few).__name__


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
    implied = sum(math.prod(s) for k, s in shapes.items()
                  if not canonical(k).endswith(POSITION_IDS) and not ignorable(canonical(k)))
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


def materialize(
    component: Component,
    make: Callable[[], nn.Module],
    tensors: Tensors,
    *,
    canonical: Callable[[str], str],
    ignorable: Callable[[str], bool],
    device: torch.device | str,
    dtype: torch.dtype | None,
    aliases: Mapping[str, str] | None = None,
) -> nn.Module:
    """``make()`` built on the meta device and filled from the checked ``tensors`` with the component's LoRA
    patch applied, on ``device`` in ``dtype`` (float32 by default). ``aliases``: state keys the model ties to
    another (alias -> source), set from the source."""
    from amdet_audit.encoders.lora import with_patch

    model = build_on_meta(make, component.config_path)
    state = with_patch(match_tensors(model, tensors, canonical=canonical, ignorable=ignorable), component.patch,
                       canonical)
    for alias, source in (aliases or {}).items():
        state[alias] = state[source]
    return load_strict(model, state).to(device=device, dtype=dtype or torch.float32)


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


def local_tokenizer(cls: Any, folder: Path | None, what: str, **overrides: Any) -> Any:
    """``cls.from_pretrained(folder)`` from local files only, never remote code; TokenizerError when unreadable.
    ``overrides``: keyword arguments that replace what the folder's tokenizer_config.json says."""
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, **overrides)
    except Exception as exc:  # tokenizer loading raises many types for bad files
        raise TokenizerError(f"{folder}: unreadable {what}: {one_line(exc)}") from exc


def prefixed_keys(prefix: str, ignorable: Callable[[str], bool], outer: str = ""
                  ) -> tuple[Callable[[str], bool], Callable[[str], str]]:
    """(keep, canonical) for a family whose checkpoints may nest the encoder under ``prefix``: keep a stored
    key unless its name without the prefix is ignorable; its canonical name is the name without the prefix.
    ``outer``: the component's own prefix in a file shared with other parts (a single-file checkpoint); keys
    outside it are not the component's and are never read."""

    def canonical(key: str) -> str:
        return key.removeprefix(outer).removeprefix(prefix)

    def keep(key: str) -> bool:
        return key.startswith(outer) and not ignorable(canonical(key))

    return keep, canonical
