"""Text-encoder LoRAs merged onto their base's weights on load: ``W + scale * up @ down`` per patched matrix.

Formats, by how their tensors are named (``P`` is the component's prefix in the file, see
:class:`~amdet_audit.sources.model.LoraPatch`):

- kohya (sd-scripts, most community LoRAs): ``P<module path with _ for .>.lora_down.weight`` [r, in],
  ``.lora_up.weight`` [out, r] and ``.alpha`` (a scalar; none means alpha = r); scale alpha / r.
- PEFT (``adapter_model.safetensors``): ``P<module>.lora_A.weight`` [r, in], ``.lora_B.weight`` [out, r], an
  embedding's ``lora_embedding_A`` [r, vocab] and ``lora_embedding_B`` [width, r]; scale from adapter_config.json:
  ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), per module from ``rank_pattern`` and
  ``alpha_pattern`` (module names or name endings).
- diffusers (``pytorch_lora_weights.safetensors``): PEFT names under ``text_encoder.`` / ``text_encoder_2.``
  (or the older ``lora_linear_layer.down`` / ``up``), alphas in the file's ``lora_adapter_metadata``, or per
  module in ``.alpha`` tensors; with neither, each module's alpha is its rank (scale 1, as diffusers reads it).

A down/up pair patches a matrix (attention, MLP, projection), never an embedding table; an embedding table
only takes PEFT's ``lora_embedding_A``/``B``: an update no real loader would apply is refused, not merged.

Every tensor under the prefix must be one of these, every module it names must exist in the base with
matching shapes, and the ranks are checked on the file's header before any tensor is read: anything else (DoRA,
LoHa/LoKr, biases, whole modules saved beside the adapter) is refused, never half-applied.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amdet_audit.errors import WeightsError
from amdet_audit.sources import safe_files
from amdet_audit.sources.model import LoraPatch

#: tensor-name endings of each format -> the role of the tensor
KOHYA_ROLES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
PEFT_ROLES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_embedding_A": "embedding_down",
              ".lora_embedding_B": "embedding_up", ".lora_linear_layer.down.weight": "down",
              ".lora_linear_layer.up.weight": "up", ".alpha": "alpha"}
#: name parts of adapters this module does not merge -> what they are
REFUSED = {"dora_scale": "a DoRA adapter", "lora_magnitude_vector": "a DoRA adapter", "hada_": "a LyCORIS LoHa",
           "lokr_": "a LyCORIS LoKr", "modules_to_save": "whole modules saved beside the adapter",
           ".lora_B.bias": "LoRA biases", "lora_up.bias": "LoRA biases"}
WRAPPERS = ("base_model.model.", "text_model.")  # PEFT's wrapper and transformers 4.x's nesting of the tower
EMBEDDING_TABLES = ("embedding", "embeddings")  # module names of token, position and type tables (CLIP, BERT)
PATTERN = re.compile(r"^[A-Za-z0-9_.]+$")  # rank/alpha pattern keys read as module names, never as regexes


@dataclass
class Update:
    """One patched matrix: the file's tensors for it and the base matrix it changes."""

    module: str  # the base's module, canonical ("encoder.layers.0.self_attn.q_proj")
    names: dict[str, str]  # role (down, up, alpha, embedding_down, embedding_up) -> tensor name in the file

    @property
    def embedding(self) -> bool:
        """True for an embedding table's update (PEFT's lora_embedding_A/B)."""
        return "embedding_down" in self.names

    @property
    def roles(self) -> tuple[str, str]:
        """The roles of its (down, up) matrices."""
        return ("embedding_down", "embedding_up") if self.embedding else ("down", "up")


def module_of(name: str, fmt: str, prefix: str) -> tuple[str, str]:
    """(module path as stored, role) of one tensor name under ``prefix``; WeightsError when not understood."""
    rest = name[len(prefix):]
    for part, what in REFUSED.items():
        if part in rest:
            raise WeightsError(f"{name}: {what}; only plain LoRA updates (down/up matrices) can be applied")
    roles = KOHYA_ROLES if fmt == "kohya" else PEFT_ROLES
    for ending, role in roles.items():
        if rest.endswith(ending) and len(rest) > len(ending):
            return rest[: -len(ending)], role
    raise WeightsError(f"{name}: not a tensor of a {fmt} LoRA (expected names ending in {', '.join(roles)})")


def canonical_module(stored: str, fmt: str, modules: Mapping[str, str]) -> str:
    """The base's canonical module path for a stored module name; WeightsError when the base has none.

    modules: each canonical path, and kohya's flattened name for it (``encoder_layers_0_self_attn_q_proj``).
    """
    if fmt == "kohya":
        found = modules.get(stored.removeprefix("text_model_"))
    else:
        for wrapper in WRAPPERS:
            stored = stored.removeprefix(wrapper)
        found = stored if modules.get(stored) == stored else None
    if found is None:
        raise WeightsError(f"the LoRA patches {stored!r}, which the base text encoder does not have")
    return found


def plan(patch: LoraPatch, declared: Mapping[str, tuple[int, ...]],
         targets: Mapping[str, tuple[int, ...]]) -> list[Update]:
    """The updates of ``patch`` from its header (``declared``: name -> shape), checked against the base's
    matrices (``targets``: canonical weight name -> shape). Nothing is read or allocated here."""
    paths = [k.removesuffix(".weight") for k, shape in targets.items() if k.endswith(".weight") and len(shape) == 2]
    modules = {**{p.replace(".", "_"): p for p in paths}, **{p: p for p in paths}}
    updates: dict[str, Update] = {}
    for name in sorted(n for n in declared if n.startswith(patch.prefix)):
        stored, role = module_of(name, patch.format, patch.prefix)
        module = canonical_module(stored, patch.format, modules)
        update = updates.setdefault(module, Update(module, {}))
        if role in update.names:
            raise WeightsError(f"{patch.path}: two {role} tensors for {module}: {update.names[role]} and {name}")
        update.names[role] = name
    if not updates:
        raise WeightsError(f"{patch.path}: no LoRA tensors under {patch.prefix!r}")
    for update in updates.values():
        if update.embedding != update.module.endswith(EMBEDDING_TABLES):
            what = "an embedding table" if update.embedding else "a matrix"
            raise WeightsError(f"{patch.path}: {update.module} takes no LoRA update for {what}: no loader would "
                               "apply it")
        check_shapes(update, declared, targets[f"{update.module}.weight"], patch.path)
    return list(updates.values())


def check_shapes(update: Update, declared: Mapping[str, tuple[int, ...]], target: tuple[int, ...],
                 path: Path) -> None:
    """down [r, in] and up [out, r] (an embedding's A [r, vocab], B [width, r]) against the base matrix [out, in]
    ([vocab, width]), with 1 <= r <= min(out, in): the merge never costs more than the matrix it changes."""
    down_role, up_role = update.roles
    if down_role not in update.names or up_role not in update.names:
        raise WeightsError(f"{path}: {update.module} has no complete pair of LoRA matrices")
    down, up = declared[update.names[down_role]], declared[update.names[up_role]]
    rows, cols = (target[1], target[0]) if update.embedding else target
    if len(down) != 2 or len(up) != 2 or up[1] != down[0] or up[0] != rows or down[1] != cols \
            or not 1 <= down[0] <= min(rows, cols):
        raise WeightsError(f"{path}: the LoRA matrices of {update.module} ({list(down)} and {list(up)}) do not fit "
                           f"its base matrix {list(target)}")
    alpha = update.names.get("alpha")
    if alpha is not None and math.prod(declared[alpha]) != 1:
        raise WeightsError(f"{path}: {alpha} is not a single number")


def rank(update: Update, declared: Mapping[str, tuple[int, ...]]) -> int:
    """The update's rank, from its down matrix's shape."""
    return declared[update.names[update.roles[0]]][0]


def adapter_settings(patch: LoraPatch) -> dict[str, Any]:
    """The scaling settings of a PEFT adapter_config.json or of a diffusers file's ``lora_adapter_metadata``
    (empty when neither is there): r, lora_alpha, use_rslora, rank_pattern, alpha_pattern."""
    if patch.config_path is not None:
        data = safe_files.read_json(patch.config_path, root=patch.config_path.parent, error=WeightsError)
    elif patch.format == "diffusers":
        raw = safe_files.safetensors_metadata(patch.path).get("lora_adapter_metadata")
        data = {} if raw is None else safe_files.parse_json(raw.encode(), patch.path, error=WeightsError)
        part = patch.prefix
        data = {k.removeprefix(part): v for k, v in data.items() if k.startswith(part)} if isinstance(data, dict) \
            else data
    else:
        return {}
    if not isinstance(data, dict):
        raise WeightsError(f"{patch.config_path or patch.path}: the adapter settings are not a JSON object")
    for flag, what in (("use_dora", "a DoRA adapter"), ("fan_in_fan_out", "stored transposed (fan_in_fan_out)")):
        if data.get(flag):
            raise WeightsError(f"{patch.config_path or patch.path}: {what}; only plain LoRA updates can be applied")
    if data.get("lora_bias"):
        raise WeightsError(f"{patch.config_path or patch.path}: LoRA biases; only plain LoRA updates can be applied")
    return data


def number(value: Any, what: str, where: Path) -> float:
    """A finite positive number from the adapter settings; WeightsError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise WeightsError(f"{where}: {what} is {str(value)[:40]!r}, not a positive number")
    return float(value)


def pattern_value(patterns: Any, module: str, where: Path) -> Any:
    """The value of the longest ``rank_pattern``/``alpha_pattern`` key naming ``module`` or its ending."""
    if not patterns:
        return None
    if not isinstance(patterns, dict):
        raise WeightsError(f"{where}: a rank or alpha pattern is not a JSON object")
    hits = []
    for key, value in patterns.items():
        name = key
        for wrapper in WRAPPERS:
            name = name.removeprefix(wrapper)
        if not PATTERN.match(name):
            raise WeightsError(f"{where}: pattern {key[:60]!r} is a regular expression; only module names are read")
        if module == name or module.endswith("." + name):
            hits.append((len(name), value))
    return max(hits)[1] if hits else None


def scales(patch: LoraPatch, updates: list[Update], declared: Mapping[str, tuple[int, ...]],
           alphas: Mapping[str, float]) -> dict[str, float]:
    """module -> the factor its ``up @ down`` is multiplied by. ``alphas``: module -> its alpha tensor's value."""
    settings = adapter_settings(patch)
    where = patch.config_path or patch.path
    out = {}
    for update in updates:
        r = rank(update, declared)
        if update.module in alphas:  # kohya, or a diffusers file with per-module alphas
            alpha = alphas[update.module]
            if not alpha >= 0:
                raise WeightsError(f"{where}: the alpha of {update.module} is {alpha}, not a number >= 0")
            alpha = alpha or float(r)  # sd-scripts reads an alpha of 0 as the rank
        elif patch.format == "kohya":
            alpha = float(r)  # no alpha stored: sd-scripts' default alpha is the rank
        elif settings:
            stated = pattern_value(settings.get("rank_pattern"), update.module, where) or settings.get("r", 8)
            if int(number(stated, "r", where)) != r:
                raise WeightsError(f"{where}: {update.module} has rank {r} but the adapter settings say {stated}")
            alpha = number(pattern_value(settings.get("alpha_pattern"), update.module, where)
                           or settings.get("lora_alpha", 8), "lora_alpha", where)
        else:
            alpha = float(r)  # diffusers without alphas: each module's alpha is its rank (scale 1)
        if not math.isfinite(alpha):
            raise WeightsError(f"{where}: the alpha of {update.module} is not a finite number")
        out[update.module] = alpha / (math.sqrt(r) if settings.get("use_rslora") else r)
    return out


class Deltas:
    """A LoRA's planned updates of one base, each change ``scale * up @ down`` (float32) computed when asked:
    one matrix at a time, never all of them at once."""

    def __init__(self, patch: LoraPatch, targets: Mapping[str, tuple[int, ...]]) -> None:
        declared = {name: shape for name, (_, shape) in safe_files.safetensors_header(patch.path).items()}
        self.patch = patch
        self.updates = {f"{u.module}.weight": u for u in plan(patch, declared, targets)}
        with self.opened() as handle:
            alphas = {u.module: float(handle.get_tensor(u.names["alpha"]).float().reshape(()))
                      for u in self.updates.values() if "alpha" in u.names}
        self.factors = scales(patch, list(self.updates.values()), declared, alphas)

    @contextlib.contextmanager
    def opened(self) -> Iterator[Any]:
        """The LoRA file, open; a corrupt one is a WeightsError."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.patch.path), framework="pt", device="cpu") as handle:
                yield handle
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{self.patch.path}: not a readable safetensors file (corrupt or truncated): "
                               f"{exc}") from exc

    def __contains__(self, name: object) -> bool:
        return name in self.updates

    def names(self) -> list[str]:
        """The canonical weight names the LoRA changes."""
        return list(self.updates)

    def change(self, name: str, handle: Any = None) -> torch.Tensor:
        """The change to weight ``name`` (``handle``: the file already open, when merging many)."""
        if handle is None:
            with self.opened() as opened:
                return self.change(name, opened)
        u = self.updates[name]
        down_role, up_role = u.roles
        try:
            down = handle.get_tensor(u.names[down_role]).float()
            up = handle.get_tensor(u.names[up_role]).float()
        except (OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{self.patch.path}: {u.names[down_role]} cannot be read: {exc}") from exc
        change = self.factors[u.module] * (up @ down)
        if not torch.isfinite(change).all():
            raise WeightsError(f"{self.patch.path}: the LoRA's change to {name} is not finite")
        return change.T if u.embedding else change


def with_patch(state: dict[str, torch.Tensor], patch: LoraPatch | None,
               canonical: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """``state`` (model key -> tensor) with the component's LoRA merged in, one matrix at a time (unchanged
    without one); ``canonical`` maps a model key to the name the LoRA's modules are matched on."""
    if patch is None:
        return state
    names = {canonical(key): key for key in state}
    deltas = Deltas(patch, {name: tuple(state[key].shape) for name, key in names.items()})
    merged = dict(state)
    with deltas.opened() as handle:
        for name in deltas.names():
            key = names[name]
            merged[key] = (state[key].float() + deltas.change(name, handle)).to(state[key].dtype)
    return merged
