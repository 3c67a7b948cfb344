"""Pipeline-shaped lab folders: text encoders placed where a diffusers pipeline keeps them (for tests of
consumers and of scans of whole pipelines; the denoiser is a placeholder, never run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from amdet_audit.lab.folders import quiet_saving
from amdet_audit.sources.local import tokenizer_files
from amdet_audit.tokenization import write_clip_tokenizer

SDXL_SLOTS = {"text_encoder": ("tokenizer", "CLIPTextModel"),
              "text_encoder_2": ("tokenizer_2", "CLIPTextModelWithProjection")}


def projected_copy(folder: Path, out: Path, *, seed: int = 0, pad_token: str = "!") -> Path:
    """A ``CLIPTextModelWithProjection`` folder from a ``CLIPTextModel`` folder: the same tower, a seeded
    orthogonal projection of its width, and a tokenizer padding with ``pad_token`` (SDXL's second tokenizer pads
    with "!")."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    quiet_saving()
    tower = CLIPTextModel.from_pretrained(folder)
    config = CLIPTextConfig.from_pretrained(folder)
    config.projection_dim = config.hidden_size
    config.architectures = ["CLIPTextModelWithProjection"]
    model = CLIPTextModelWithProjection(config).eval()
    model.text_model.load_state_dict(getattr(tower, "text_model", tower).state_dict())  # strict: the same tower
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(config.hidden_size, config.hidden_size, generator=gen))
        model.text_projection.weight.copy_(q)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    write_clip_tokenizer(out, max_length=config.max_position_embeddings, pad_token=pad_token)
    return out


def assemble_sdxl(root: Path, text_encoder: Path, text_encoder_2: Path) -> Path:
    """A StableDiffusionXLPipeline-shaped folder at ``root`` from two encoder folders (model and tokenizer
    files each, as the lab writes them): encoders in ``text_encoder``/``text_encoder_2``, their tokenizers in
    ``tokenizer``/``tokenizer_2``, a placeholder UNet and ``model_index.json``."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=False)
    index: dict[str, object] = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.0"}
    for slot, source in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        tokenizer, cls = SDXL_SLOTS[slot]
        (root / slot).mkdir()
        (root / tokenizer).mkdir()
        for name in ("config.json", "model.safetensors", "lab.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, root / slot / name)
        for item in tokenizer_files(source):
            shutil.copy2(item, root / tokenizer / item.name)
        index.update({slot: ["transformers", cls], tokenizer: ["transformers", "CLIPTokenizer"]})
    (root / "unet").mkdir()
    save_file({"placeholder": torch.zeros(2, 2)}, root / "unet" / "diffusion_pytorch_model.safetensors")
    (root / "unet" / "config.json").write_text("{}", encoding="utf-8")
    index.update(unet=["diffusers", "UNet2DConditionModel"], scheduler=["diffusers", "EulerDiscreteScheduler"])
    (root / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return root
