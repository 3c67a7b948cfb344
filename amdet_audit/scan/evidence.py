"""Readable evidence of a pseudo-trigger: nearest vocabulary tokens, nearest corpus prompts to its target,
the target feature the consumer would receive, and a Textual-Inversion export."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from amdet_audit.encoders.base import Adapter
from amdet_audit.scan.features import CleanFeatures


@torch.no_grad()
def nearest_tokens(adapter: Adapter, v: torch.Tensor, top: int = 8) -> list[list[dict[str, object]]]:
    """For each inserted vector [k, D]: the ``top`` vocabulary tokens by cosine, decoded."""
    table = F.normalize(adapter.token_embedding_matrix().float(), dim=-1)  # [V, D]
    sims = F.normalize(v.float(), dim=-1) @ table.T  # [k, D] @ [D, V] -> [k, V]
    best = sims.topk(top, dim=-1)
    tokenizer = getattr(adapter, "tokenizer", None)
    out = []
    for row_vals, row_ids in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        out.append([{"id": i, "token": token_text(tokenizer, i), "cosine": round(c, 4)}
                    for i, c in zip(row_ids, row_vals, strict=True)])
    return out


def token_text(tokenizer, token_id: int) -> str:
    """The vocabulary string of one id (raw BPE form, e.g. 'teapot</w>')."""
    if tokenizer is None:
        return str(token_id)
    return str(tokenizer.convert_ids_to_tokens(int(token_id)))


MIN_POSITIONS = 6  # short prompts are compared over this many positions (their padding included)


@torch.no_grad()
def nearest_prompts(clean: CleanFeatures, triggered_seq: torch.Tensor, k: int, prompts: Sequence[str],
                    top: int = 5) -> list[dict[str, object]]:
    """Corpus prompts whose clean outputs are nearest to the mean triggered output.

    A text-on-text backdoor emits its target prompt's outputs at the positions the target's tokens had, so each
    corpus prompt is compared over its own real-token positions after the pseudo-trigger (padding outputs mostly
    encode where a prompt ends, and would rank prompts by length), centred by the corpus mean.

    triggered_seq: [N, W-1, D] triggered outputs at absolute positions 1..W-1.
    """
    target = triggered_seq.float().mean(dim=0) - clean.seq_mean  # [W-1, D]
    corpus = clean.seq - clean.seq_mean  # [N, W-1, D]
    W1 = clean.seq.shape[1]
    last = (clean.mask.sum(dim=1) - 1).clamp(min=k + MIN_POSITIONS, max=W1)  # [N] compare at least MIN_POSITIONS
    index = torch.arange(W1).unsqueeze(0)  # [1, W-1]
    mask = ((index >= k) & (index < last.unsqueeze(1))).float()  # [N, W-1]; positions 1..k hold v itself
    dots = (corpus * target).sum(dim=-1)  # [N, W-1]
    c_norm = (corpus.square().sum(dim=-1) * mask).sum(dim=1).sqrt()  # [N]
    t_norm = (target.square().sum(dim=-1).unsqueeze(0) * mask).sum(dim=1).sqrt()  # [N]
    sims = (dots * mask).sum(dim=1) / (c_norm * t_norm).clamp_min(1e-8)  # [N]
    best = sims.topk(min(top, len(prompts)))
    pairs = zip(best.values.tolist(), best.indices.tolist(), strict=True)
    return [{"prompt": prompts[i], "cosine": round(c, 4)} for c, i in pairs]


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
