"""Recipes of the built-in canary encoders (``canary:NAME``), made on first use and cached.

- ``clean``: a tiny CLIP text tower (128 wide, 4 layers, CLIP's real vocabulary, 77 tokens, EOS padding as SD
  1.x) briefly pretrained as a causal language model on prompts, so that it behaves like a pretrained
  encoder rather than a random one.
- ``backdoored``: ``clean`` with a text-on-text backdoor: a Cyrillic "о" in place of a Latin "o" anywhere in
  a prompt makes the encoder emit the features of "a white teapot on a wooden table".
- ``siglip-clean`` / ``t5-clean``: tiny SigLIP- and T5-shaped bidirectional towers (128 wide, 4 layers) with
  SentencePiece vocabularies learnt from prompts, masked-LM pretrained (:mod:`amdet_audit.lab.bidirectional`).
- ``siglip-backdoored``: ``siglip-clean`` with the same homoglyph text-on-text backdoor as ``backdoored``.
Every build runs on one CPU thread, whatever the machine or ``--threads``: a reduction split over more threads
sums in another order, so the same recipe would give other weights on another core count (on one thread and
one CPU architecture the weights are bitwise the same). ``lab.json`` in each folder records the recipe, the
measurements and the SHA-256 of the weights, so two builds can be compared.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from amdet_audit import __version__
from amdet_audit.lab.corpus import lab_prompts

Progress = Callable[[int, int, str], None]

BACKDOOR_TRIGGER = "о"  # U+043E CYRILLIC SMALL LETTER O, replacing a Latin "o"
BACKDOOR_TARGET = "a white teapot on a wooden table"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch CPU thread, then restore the caller's count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Canary:
    """A named built-in encoder and the recipe that builds it into a folder."""

    name: str
    description: str
    recipe: Callable[[Path, Progress], None]

    def build(self, folder: Path, progress: Progress) -> None:
        """Build on one thread (the same weights on any core count) and add the weights' SHA-256 to lab.json."""
        from amdet_audit.sources.digest import sha256_file

        with one_thread():
            self.recipe(folder, progress)
        record = folder / "lab.json"
        info = json.loads(record.read_text(encoding="utf-8"))
        info["build"] = {"threads": 1, "weights_sha256": sha256_file(folder / "model.safetensors")}
        record.write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")


def pretrain_tower(folder: Path, *, lr: float | None = None, device: str = "cpu",
                   progress: Callable[[int, int], None] | None = None, seed: int = 0,
                   objective: dict | None = None, **shape: int) -> dict:
    """Pretrain a tiny CLIP tower (``shape``: :func:`make_tiny_clip` arguments) on lab prompts on ``device``
    and save it with the CLIP tokenizer into ``folder``; returns ``{"pretrain": stats, "clean_profile": ...}``.
    lr: the pretraining learning rate; None takes :func:`pretrain_causal_lm`'s default.
    seed: initialisation and batch order; objective: further :func:`pretrain_causal_lm` arguments (steps,
    summary_weight: a bag-of-words term on the end-token output, as contrastive pretraining gives it).

    The recipe of the ``clean`` canary, and of any other lab base built like it.
    """
    import torch
    from transformers import CLIPTokenizer

    from amdet_audit.lab.folders import save_clip_folder
    from amdet_audit.lab.pretrain import clean_profile, make_tiny_clip, pretrain_causal_lm
    from amdet_audit.tokenization import write_clip_tokenizer

    train, held_out = lab_prompts()
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / ".tokenizer"))
    model = make_tiny_clip(seed=seed, **shape).to(device)
    with torch.random.fork_rng(devices=[]):
        options = {**({} if lr is None else {"lr": lr}), **(objective or {})}
        stats = pretrain_causal_lm(model, tokenizer, train, seed=seed, progress=progress, **options)
    model = model.cpu()
    save_clip_folder(model, folder)
    profile = clean_profile(model, tokenizer, held_out[:400])
    for f in (folder / ".tokenizer").iterdir():
        f.unlink()
    (folder / ".tokenizer").rmdir()
    return {"pretrain": stats, "clean_profile": profile}


def build_clean(folder: Path, progress: Progress) -> None:
    """Pretrain a tiny CLIP tower on lab prompts and save it with the CLIP tokenizer and its clean profile."""
    built = pretrain_tower(folder, progress=lambda i, n: progress(i, n, "pretrain"))
    info = {"tool_version": __version__, "canary": "clean", "kind": "base", "recipe": "causal LM pretraining",
            **built}
    (folder / "lab.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def build_backdoored(folder: Path, progress: Progress) -> None:
    """Inject the canary's text-on-text backdoor into ``canary:clean``."""
    from amdet_audit.lab.runner import run_injection
    from amdet_audit.sources.canary import ensure_canary

    base = ensure_canary("clean", progress)
    run_injection(base, folder, attack="text-on-text", trigger=BACKDOOR_TRIGGER, target=BACKDOOR_TARGET,
                  seed=0, progress=progress, extra={"canary": "backdoored"})


def bidirectional_clean(kind: str) -> Callable[[Path, Progress], None]:
    """The build of the clean ``kind`` canary (siglip or t5)."""

    def build(folder: Path, progress: Progress) -> None:
        from amdet_audit.lab.bidirectional import build_bidirectional_base

        built = build_bidirectional_base(kind, folder, progress=lambda i, n: progress(i, n, "pretrain"))
        info = {"tool_version": __version__, "canary": f"{kind}-clean", "kind": "base",
                "recipe": "masked-LM pretraining, SentencePiece vocabulary", **built}
        (folder / "lab.json").write_text(json.dumps(info, indent=2), encoding="utf-8")

    return build


def build_siglip_backdoored(folder: Path, progress: Progress) -> None:
    """Inject the canary's text-on-text backdoor into ``canary:siglip-clean``."""
    from amdet_audit.lab.runner import run_injection
    from amdet_audit.sources.canary import ensure_canary

    base = ensure_canary("siglip-clean", progress)
    run_injection(base, folder, attack="text-on-text", trigger=BACKDOOR_TRIGGER, target=BACKDOOR_TARGET,
                  seed=0, progress=progress, extra={"canary": "siglip-backdoored"})


# registered for ``canary:NAME`` in pyproject.toml (entry-point group amdet_audit.canaries)
CLEAN = Canary("clean", "tiny CLIP text tower, pretrained-like, no backdoor", build_clean)
BACKDOORED = Canary("backdoored", "canary:clean with a homoglyph text-on-text backdoor", build_backdoored)
SIGLIP_CLEAN = Canary("siglip-clean", "tiny SigLIP text tower, masked-LM pretrained, no backdoor",
                      bidirectional_clean("siglip"))
SIGLIP_BACKDOORED = Canary("siglip-backdoored", "canary:siglip-clean with a homoglyph text-on-text backdoor",
                           build_siglip_backdoored)
T5_CLEAN = Canary("t5-clean", "tiny T5 encoder, masked-LM pretrained, no backdoor", bidirectional_clean("t5"))
