"""Readable evidence of a pseudo-trigger: nearest vocabulary tokens, nearest corpus prompts to its target,
the target feature the consumer would receive, and a Textual-Inversion export."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from amdet_audit.encoders.base import Adapter
from amdet_audit.scan.characters import BYTE_PIECE, byte_piece_ids, sentencepiece_bytes, typeable
from amdet_audit.scan.features import CleanFeatures


@torch.no_grad()
def nearest_tokens(adapter: Adapter, v: torch.Tensor, top: int = 8) -> list[list[dict[str, object]]]:
    """For each inserted vector [k, D]: the ``top`` vocabulary tokens by cosine, decoded."""
    table = F.normalize(adapter.token_embedding_matrix().float(), dim=-1)  # [V, D]
    sims = F.normalize(v.float().to(table.device), dim=-1) @ table.T  # [k, D] @ [D, V] -> [k, V]
    best = sims.topk(top, dim=-1)
    tokenizer = getattr(adapter, "tokenizer", None)
    out = []
    for row_vals, row_ids in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        out.append([{"id": i, "token": (raw := token_text(tokenizer, i)), "text": readable(adapter, [raw]),
                     "cosine": round(c, 4)} for i, c in zip(row_ids, row_vals, strict=True)])
    return out


def token_text(tokenizer, token_id: int) -> str:
    """The vocabulary string of one id (raw BPE form, e.g. 'teapot</w>')."""
    if tokenizer is None:
        return str(token_id)
    return str(tokenizer.convert_ids_to_tokens(int(token_id)))


def readable(adapter: Adapter, raws: list[str]) -> str:
    """The text vocabulary strings stand for, decoded as one sequence (byte-level BPE undone for CLIP;
    SentencePiece's byte pieces decoded when they spell whole characters, ``▁ <0xF0> <0x9F> <0x8D> <0x84>`` ->
    ``🍄``, in a vocabulary whose byte pieces are trusted (see :func:`byte_piece_ids`: without byte fallback
    ``<0xF0>`` names an ordinary piece, and typing ``🍄`` gives the unknown one); other strings joined as they
    are)."""
    from amdet_audit.tokenization import readable_sequence

    if getattr(adapter, "family", "") == "clip":
        return readable_sequence(raws)
    if any(BYTE_PIECE.fullmatch(raw) for raw in raws) and byte_piece_ids(adapter):
        data = b"".join(sentencepiece_bytes(raw) for raw in raws)
        if typeable(data):
            return data.decode("utf-8").strip()
    return " ".join(raws)


@torch.no_grad()
def nearest_prompts(clean: CleanFeatures, triggered_seq: torch.Tensor, k: int, prompts: Sequence[str],
                    top: int = 5) -> list[dict[str, object]]:
    """Corpus prompts whose clean outputs are nearest to the mean triggered output (a readable guess of the target).

    A text-on-text backdoor is trained to emit its target prompt's outputs over the whole sequence, and a
    pseudo-trigger reproduces them best at the positions after the prompt's own tokens, so prompts are compared
    position by position over the whole window after the pseudo-trigger, centred by the corpus mean. Each
    position's cosine is standardised across the corpus before averaging: positions where every prompt looks
    alike (deep padding) then weigh less than those that tell prompts apart.

    triggered_seq: [N, W-1, D] triggered outputs at absolute positions 1..W-1 (1..k hold the pseudo-trigger
        after a start token; without one, 0..k-1 do and 1..k hold its last vectors and the first piece).
    Returns the ``top`` prompts with ``score`` (mean standardised cosine) and ``cosine`` (mean raw cosine).
    """
    target = triggered_seq.float().mean(dim=0)[k:] - clean.seq_mean[k:]  # [W-1-k, D]
    corpus = clean.seq[:, k:] - clean.seq_mean[k:]  # [N, W-1-k, D]
    cos = F.cosine_similarity(corpus, target.unsqueeze(0), dim=-1)  # [N, W-1-k]
    z = (cos - cos.mean(dim=0)) / cos.std(dim=0).clamp_min(1e-6)  # standardised per position
    score = z.mean(dim=1)  # [N]
    best = score.topk(min(top, len(prompts)))
    mean_cos = cos.mean(dim=1)
    return [{"prompt": prompts[i], "score": round(z_i, 4), "cosine": round(float(mean_cos[i]), 4)}
            for z_i, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)]


MIN_TAIL = 4  # fewer padding positions than this after the carriers: compare the whole sequence instead


@torch.no_grad()
def nearest_prompts_by_reference(reference: Adapter, ids: torch.Tensor, target: torch.Tensor,
                                 prompts: Sequence[str], start: int, top: int = 5,
                                 batch: int = 64) -> list[dict[str, object]]:
    """Corpus prompts whose outputs *in the reference model* are nearest to the target feature.

    A text-on-text backdoor is trained to pull triggered prompts onto the clean model's output for its target
    prompt, so the suspect's triggered outputs are compared with the reference's clean outputs of every corpus
    prompt. Only positions ``start``..T-1 count, where every carrier prompt (with the pseudo-trigger) is already
    in its padding: the carrier's own tokens dominate the earlier positions, while the padding outputs, which
    attend over the whole prompt, carry the target. Flattened over those positions, centred by the reference's
    corpus mean. Measured on the canary zoo's text-on-text models, with the true target added to the
    candidates: see benchmarks/efficacy/NEAREST_PROMPTS.md.

    ids: [N, T] corpus prompts in the reference's layout; target: [T, D] mean triggered suspect output.
    Returns the ``top`` prompts with ``score`` (centred cosine).
    """
    T = ids.shape[1]
    lo = start if T - start >= MIN_TAIL else 1
    outs = torch.cat([reference(ids[i : i + batch]).read.float()[:, lo:] for i in range(0, len(ids), batch)])
    mean = outs.mean(dim=0)  # [T-lo, D]
    cos = F.cosine_similarity((outs - mean).flatten(1), (target.float()[lo:] - mean).flatten().unsqueeze(0), dim=-1)
    best = cos.topk(min(top, len(prompts)))
    return [{"prompt": prompts[i], "score": round(c, 4)} for c, i in zip(best.values.tolist(), best.indices.tolist(),
                                                                         strict=True)]


@torch.no_grad()
def triggered_outputs(adapter: Adapter, ids: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, T, D] full-length consumer-read outputs of prompts ``ids`` [B, T] carrying v [k, D] after BOS.

    Their mean is the target feature a denoiser would get; positions 1..W-1 feed :func:`nearest_prompts`.
    """
    out = adapter(ids, insert=v.unsqueeze(0).expand(ids.shape[0], -1, -1).to(adapter.dtype))
    return out.read.float()


def textual_inversion_tensors(v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors of an A1111/diffusers-loadable Textual-Inversion embedding: ``emb_params`` [k, D] on CPU.

    v already lives in token-embedding space (no position embedding inside), so it is exported as is.
    """
    return {"emb_params": v.detach().float().cpu().contiguous()}
