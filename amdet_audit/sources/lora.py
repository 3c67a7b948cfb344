"""LoRA targets: a text-encoder LoRA (kohya, PEFT or diffusers) resolved onto the model it was trained on.

Each text-encoder part of the LoRA is matched to the base's component of the same name (kohya ``lora_te_`` and
``lora_te1_`` patch ``text_encoder``, ``lora_te2_`` patches ``text_encoder_2``; diffusers ``text_encoder.`` and
``text_encoder_2.``; a PEFT adapter patches the one encoder it was made for) and becomes that component with the
LoRA as its patch (merged on load, :mod:`amdet_audit.encoders.lora`). A lone-encoder base takes a LoRA of one
text encoder whatever its part is called. The target's files are the LoRA's own; the base's files are recorded
under ``base``. Parts that patch no text encoder (the UNet's, FLUX's transformer's) are named in the notes and
not audited; a part for an encoder that cannot be scanned (T5) refuses the whole LoRA.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from amdet_audit.errors import UsageError
from amdet_audit.sources.model import Component, LoraPatch, ResolvedTarget

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"


class MissingBaseError(UsageError):
    """A LoRA target was given without the model it applies onto."""


@dataclass(frozen=True)
class Format:
    """A LoRA file format: what to call it, the prefixes of its text-encoder parts (-> the component each
    patches), of parts that are no text encoder, and of parts for encoders that cannot be scanned yet."""

    name: str
    description: str
    parts: tuple[tuple[str, str], ...]
    other: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()

    def part_of(self, key: str) -> tuple[str, str] | None:
        """(prefix, component) of the text-encoder part ``key`` belongs to, if any."""
        return next((p for p in self.parts if key.startswith(p[0])), None)


KOHYA = Format("kohya", "a kohya text-encoder LoRA", (("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                                                      ("lora_te_", "text_encoder")),
               other=("lora_unet_",), unsupported=("lora_te3_",))
DIFFUSERS = Format("diffusers", "a diffusers text-encoder LoRA", (("text_encoder.", "text_encoder"),
                                                                  ("text_encoder_2.", "text_encoder_2")),
                   other=("unet.", "transformer."), unsupported=("text_encoder_3.",))
PEFT = Format("peft", "a PEFT text-encoder LoRA", (("", "model"),))  # names under base_model.model. (or none)
LORA_MARKS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora_linear_layer.", ".lora_embedding_")


def lora_format(keys: list[str]) -> Format | None:
    """The LoRA format of a file's tensor names (None: not a LoRA)."""
    if not any(mark in key for key in keys for mark in LORA_MARKS):
        return None
    if any(key.startswith(("lora_te", "lora_unet_")) for key in keys):
        return KOHYA
    if any(key.startswith(("text_encoder", "unet.", "transformer.")) for key in keys):
        return DIFFUSERS
    return PEFT


def lora_folder_file(root: Path) -> Path | None:
    """The LoRA file of a PEFT adapter folder or a diffusers LoRA folder (no config.json), if ``root`` is one."""
    if os.path.lexists(root / "config.json") or os.path.lexists(root / "model_index.json"):
        return None
    for name in (PEFT_WEIGHTS, DIFFUSERS_WEIGHTS):
        if os.path.lexists(root / name):
            return root / name
    return None


def resolve_lora(path: Path, keys: list[str], fmt: Format, *, input: str, base: str | None,
                 resolve_base: Callable[[str], ResolvedTarget], records: list) -> ResolvedTarget:
    """The LoRA file ``path`` (tensor names ``keys``, in format ``fmt``: :func:`lora_format`) applied onto
    ``base``, resolved by ``resolve_base``.

    records: the FileRecords of the LoRA's own files (its weights, adapter_config.json).
    Raises UsageError when no base is given, when the LoRA patches an encoder the base lacks or one that
    cannot be scanned, or when it patches no text encoder.
    """
    if base is None:
        raise MissingBaseError(f"{input}: {fmt.description}: pass --base REF (the model it was trained on) to "
                               "scan it applied onto that model")
    refused = sorted({p for k in keys for p in fmt.unsupported if k.startswith(p)})
    if refused:
        raise UsageError(f"{input}: {fmt.description} that also patches a T5 encoder ({', '.join(refused)}), which "
                         "amdet-audit cannot scan yet")
    parts: dict[str, str] = {}
    others = 0
    for key in keys:
        part = fmt.part_of(key)
        if part is not None:
            parts[part[0]] = part[1]
        elif key.startswith(fmt.other):
            others += 1
        else:
            raise UsageError(f"{input}: tensor {key[:80]!r} belongs to no part of {fmt.description} that "
                             "amdet-audit knows")
    if not parts:
        raise UsageError(f"{input}: {fmt.description.replace('text-encoder ', '')} that patches no text encoder "
                         "(its UNet or transformer only): nothing here for amdet-audit to scan")
    twice = sorted(p for p, name in parts.items() if list(parts.values()).count(name) > 1)
    if twice:
        raise UsageError(f"{input}: {fmt.description} whose parts {' and '.join(twice)} both patch "
                         f"{parts[twice[0]]}; a file with one of them can be scanned")
    try:
        resolved_base = resolve_base(base)
    except MissingBaseError as err:
        raise UsageError(f"--base {base}: a LoRA; the base must be the model the LoRA was trained on") from err
    config = path.parent / PEFT_CONFIG if fmt is PEFT and os.path.lexists(path.parent / PEFT_CONFIG) else None
    components = [replace(component_for(resolved_base, name, len(parts), input, fmt),
                          patch=LoraPatch(path=path, format=fmt.name, prefix=prefix, config_path=config))
                  for prefix, name in sorted(parts.items(), key=lambda p: p[1])]
    notes = [f"{fmt.description}, scanned applied onto --base {base}"]
    if others:
        notes.append(f"{others} tensors of its UNet or transformer part patch no text encoder and are not audited")
    return ResolvedTarget(input=input, kind="lora", root=path.parent, components=components, files=records,
                          pipeline_class=resolved_base.pipeline_class, notes=notes, base=resolved_base)


def component_for(base: ResolvedTarget, name: str, parts: int, input: str, fmt: Format) -> Component:
    """The base's component a LoRA part named ``name`` patches: the same-named one, else a lone encoder's only
    component when the LoRA has one part."""
    names = [c.name for c in base.components]
    if name in names:
        return base.component(name)
    if len(names) == 1 and parts == 1:
        return base.components[0]
    raise UsageError(f"{input}: {fmt.description} patching {name}, which the base {base.input} does not have "
                     f"(it has: {', '.join(names)})")
