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


@torch.no_grad()
def nearest_prompts(clean: CleanFeatures, triggered_seq: torch.Tensor, triggered_pooled: torch.Tensor, k: int,
                    prompts: Sequence[str], top: int = 5) -> list[dict[str, object]]:
    """Corpus prompts whose clean outputs are nearest to the mean triggered output, compared at absolute
    positions (a backdoor emits its target's features at the positions the target prompt had).

    triggered_seq: [N, W-1, D] triggered outputs at absolute positions 1..W-1; triggered_pooled: [N, P].
    """
    W1 = clean.seq.shape[1]
    seq_target = triggered_seq.float().mean(dim=0)[k:] - clean.seq_mean[k:]  # [W-1-k, D]
    pool_target = (triggered_pooled.float().mean(dim=0) - clean.pooled_mean) * clean.pooled_scale  # [P]
    target = torch.cat([seq_target.reshape(-1), pool_target])  # [F']
    corpus = torch.cat([(clean.seq[:, k:W1] - clean.seq_mean[k:]).reshape(len(clean.seq), -1),
                        (clean.pooled - clean.pooled_mean) * clean.pooled_scale], dim=1)  # [N, F']
    sims = F.normalize(corpus, dim=-1) @ F.normalize(target, dim=0)  # [N]
    best = sims.topk(min(top, len(prompts)))
    pairs = zip(best.values.tolist(), best.indices.tolist(), strict=True)
    return [{"prompt": prompts[i], "cosine": round(c, 4)} for c, i in pairs]


@torch.no_grad()
def target_feature(adapter: Adapter, ids: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[T, D] the mean full-length consumer-read output of prompts carrying v: what a denoiser would get."""
    out = adapter(ids, insert=v.unsqueeze(0).expand(ids.shape[0], -1, -1).to(adapter.dtype))
    return out.read.float().mean(dim=0).cpu()


def textual_inversion_tensors(v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors of an A1111/diffusers-loadable Textual-Inversion embedding: ``emb_params`` [k, D] on CPU.

    v already lives in token-embedding space (no position embedding inside), so it is exported as is.
    """
    return {"emb_params": v.detach().float().cpu().contiguous()}
