"""The lab's bidirectional bases: a SigLIP-shaped and a T5-shaped tiny tower with SentencePiece vocabularies
learnt from prompts, masked-LM pretrained (:mod:`amdet_audit.lab.pretrain_masked`), saved as ordinary model
folders that the scan loads like any SigLIP or T5 encoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

KINDS = ("siglip", "t5")
T5_TRAIN_LENGTH = 64  # T5 pretrains on 64-token rows (relative positions: the model reads any length)


def build_bidirectional_base(kind: str, folder: Path, *, seed: int = 0, steps: int = 400, lr: float = 3e-3,
                             progress: Callable[[int, int], None] | None = None, **shape: int) -> dict:
    """Learn the vocabulary, pretrain a tiny ``kind`` tower on lab prompts and save it into ``folder``; returns
    ``{"pretrain": stats, "clean_profile": ..., "vocabulary": ...}``. ``shape``: the maker's size arguments."""
    import torch

    from amdet_audit.data.prompts import default_corpus
    from amdet_audit.encoders.siglip import SiglipTextAdapter
    from amdet_audit.encoders.t5 import T5TextAdapter
    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.folders import quiet_saving
    from amdet_audit.lab.pretrain_masked import (
        bidirectional_profile,
        make_tiny_siglip,
        make_tiny_t5,
        pretrain_masked_lm,
    )
    from amdet_audit.lab.sentencepiece_vocab import train_sentencepiece, write_siglip_tokenizer, write_t5_tokenizer

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    train, held_out = lab_prompts()
    vocabulary = train_sentencepiece(train + list(default_corpus()[:3000]))  # the prompts a scan reads, too
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "siglip":
        from transformers import SiglipTokenizer

        tokenizer = SiglipTokenizer.from_pretrained(str(write_siglip_tokenizer(folder, vocabulary)))
        adapter = SiglipTextAdapter(make_tiny_siglip(len(tokenizer), seed=seed, **shape), tokenizer)
        trained_on = adapter
    else:
        from transformers import T5Tokenizer

        tokenizer = T5Tokenizer.from_pretrained(str(write_t5_tokenizer(folder, vocabulary)))
        adapter = T5TextAdapter(make_tiny_t5(len(tokenizer), seed=seed, **shape), tokenizer)
        trained_on = T5TextAdapter(adapter.model, tokenizer, length=T5_TRAIN_LENGTH)
    with torch.random.fork_rng(devices=[]):
        stats = pretrain_masked_lm(trained_on, train, seed=seed, steps=steps, lr=lr, progress=progress)
    quiet_saving()
    adapter.model.save_pretrained(folder, safe_serialization=True)
    return {"pretrain": stats, "clean_profile": bidirectional_profile(adapter, held_out[:300]),
            "vocabulary": {"kind": "sentencepiece unigram, byte fallback", "pieces": len(tokenizer)}}
