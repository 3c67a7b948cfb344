"""Write text encoders as ordinary Hugging Face model folders (config, safetensors, CLIP tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from amdet_audit.tokenization import BOS_ID, EOS_ID, EOS_TOKEN, VOCAB_SIZE, write_clip_tokenizer

PAD_TOKENS = {"eos": (EOS_TOKEN, EOS_ID), "!": ("!", 0)}


def tiny_clip_config(
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 77,
    pad: str = "eos",
    projection_dim: int | None = None,
):
    """A small ``CLIPTextConfig`` with the real CLIP vocabulary; pad is ``"eos"`` (SD 1.x) or ``"!"`` (SD 2.x)."""
    from transformers import CLIPTextConfig

    if pad not in PAD_TOKENS:
        raise ValueError(f"pad must be one of {sorted(PAD_TOKENS)}, got {pad!r}")
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        projection_dim=projection_dim or hidden,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_TOKENS[pad][1],
    )


def build_tiny_clip(config, *, projection: bool = False, seed: int = 0) -> torch.nn.Module:
    """A ``CLIPTextModel`` (or ``...WithProjection``) with seeded random weights."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def quiet_saving() -> None:
    """Silence transformers' per-shard progress bars (stderr belongs to our own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def save_clip_folder(model: torch.nn.Module, folder: Path, *, pad: str = "eos") -> Path:
    """Save ``model`` as config.json + model.safetensors and a CLIP tokenizer padding with ``pad``.

    The tokenizer goes in the same folder (a transformers model folder), with model_max_length set to the
    model's max positions, as diffusers pads to it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    quiet_saving()
    model.save_pretrained(folder, safe_serialization=True)
    write_clip_tokenizer(folder, max_length=model.config.max_position_embeddings, pad_token=PAD_TOKENS[pad][0])
    return folder


def tiny_clip_folder(folder: Path, *, projection: bool = False, seed: int = 0, pad: str = "eos", **config) -> Path:
    """Build and save a seeded random tiny CLIP text tower (for tests of loading, not of detection)."""
    model = build_tiny_clip(tiny_clip_config(pad=pad, **config), projection=projection, seed=seed)
    return save_clip_folder(model, folder, pad=pad)


def save_encoder_folder(adapter, folder: Path, lab_info: dict | None = None) -> Path:
    """Save an adapter's model and tokenizer as a Hugging Face model folder, plus ``lab.json`` if given."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    quiet_saving()
    adapter.model.save_pretrained(folder, safe_serialization=True)
    adapter.tokenizer.save_pretrained(folder)
    if lab_info is not None:
        (folder / "lab.json").write_text(json.dumps(lab_info, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder
