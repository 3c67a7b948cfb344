"""Text-encoder LoRAs made in the lab: a fine-tuned encoder's difference from its base as a low-rank update of
its attention and MLP matrices, written in the formats users ship (kohya, diffusers), as kohya's extraction
script turns a full fine-tune into a LoRA. A backdoor shipped this way reaches users as a small file applied
onto a base they trust.
"""

from __future__ import annotations

from pathlib import Path

import torch

from amdet_audit.errors import UsageError

LINEAR = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")  # what kohya trains in a CLIP tower
Update = tuple[torch.Tensor, torch.Tensor]  # (down [r, in], up [out, r]), scale 1 (alpha = rank)


def tower_state(folder: Path) -> dict[str, torch.Tensor]:
    """An encoder folder's tensors by canonical name (without transformers 4.x's ``text_model.``)."""
    from safetensors.torch import load_file

    return {k.removeprefix("text_model."): v.float() for k, v in load_file(folder / "model.safetensors").items()}


def low_rank(delta: torch.Tensor, rank: int) -> Update:
    """The best rank-``rank`` factors of ``delta`` [out, in] (truncated SVD, the singular values split evenly)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).float(), (u[:, :r] * root).float()


def extract(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rank: int) -> dict[str, Update]:
    """module -> its rank-``rank`` update, for every attention and MLP matrix that differs (canonical names)."""
    out = {}
    for key, value in sorted(tuned.items()):
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and module.endswith(LINEAR) and not torch.equal(value, base[key]):
            out[module] = low_rank(value - base[key], rank)
    return out


def kohya_tensors(parts: dict[str, dict[str, Update]]) -> dict[str, torch.Tensor]:
    """kohya names: ``<prefix><text_model.module with _ for .>.lora_down.weight`` / ``lora_up`` / ``alpha``;
    ``parts`` maps a prefix (``lora_te_``, ``lora_te1_``, ``lora_te2_``) to its updates."""
    tensors = {}
    for prefix, updates in parts.items():
        for module, (down, up) in updates.items():
            name = prefix + f"text_model.{module}".replace(".", "_")
            tensors[f"{name}.lora_down.weight"] = down.contiguous()
            tensors[f"{name}.lora_up.weight"] = up.contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return tensors


def diffusers_tensors(parts: dict[str, dict[str, Update]]) -> dict[str, torch.Tensor]:
    """diffusers names: ``<component>.text_model.<module>.lora_A.weight`` / ``lora_B``; ``parts`` maps a
    component (``text_encoder``, ``text_encoder_2``) to its updates (alpha = rank: no alphas stored)."""
    return {f"{component}.text_model.{module}.{role}.weight": tensor.contiguous()
            for component, updates in parts.items() for module, (down, up) in updates.items()
            for role, tensor in (("lora_A", down), ("lora_B", up))}


def lora_of(base: Path, tuned: Path, rank: int, fmt: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a ``fmt`` (kohya or diffusers) LoRA carrying ``tuned``'s change from ``base`` (encoder
    folders, or pipeline folders whose ``text_encoder``/``text_encoder_2`` are compared), and the names of the
    changed tensors a LoRA cannot carry (embeddings, norms, biases)."""
    pipeline = (base / "model_index.json").is_file()
    slots = [s for s in ("text_encoder", "text_encoder_2") if (base / s).is_dir()] if pipeline else [""]
    prefixes = {"text_encoder": "lora_te1_" if len(slots) > 1 else "lora_te_", "text_encoder_2": "lora_te2_",
                "": "lora_te_"}
    parts, left_out = {}, []
    for slot in slots:
        for folder in (base / slot, tuned / slot):
            if not (folder / "model.safetensors").is_file():
                raise UsageError(f"{folder}: no model.safetensors (an encoder folder or an SDXL-shaped pipeline)")
        before, after = tower_state(base / slot), tower_state(tuned / slot)
        if {k: v.shape for k, v in before.items()} != {k: v.shape for k, v in after.items()}:
            raise UsageError(f"{tuned / slot}: not the same tensors and shapes as {base / slot}")
        key = prefixes[slot] if fmt == "kohya" else (slot or "text_encoder")
        parts[key] = extract(before, after, rank)
        left_out += [f"{slot + '.' if slot else ''}{k}" for k, v in after.items()
                     if k.removesuffix(".weight") not in parts[key] and not torch.equal(v, before[k])]
    return (kohya_tensors(parts) if fmt == "kohya" else diffusers_tensors(parts)), left_out


def write_lora(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a LoRA file (safetensors) at ``path``, which must not exist."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as handle:
        handle.write(save(tensors, metadata={"format": "pt"}))
    return path
