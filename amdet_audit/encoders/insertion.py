"""Placing k vectors after the first ``at`` tokens (BOS / [CLS]: at = 1; none, as SigLIP and T5: at = 0), shared
by every adapter family."""

from __future__ import annotations

import torch


def insert_at(tokens: torch.Tensor, insert: torch.Tensor, at: int = 1) -> torch.Tensor:
    """[B, T, D] token embeddings + [k, D] or [B, k, D] vectors -> [B, T, D]: the first ``at`` tokens, the k
    vectors, the rest cut to T."""
    batch, length, width = tokens.shape
    if insert.dim() == 2:
        insert = insert.unsqueeze(0).expand(batch, -1, -1)  # [B, k, D]
    if insert.dim() != 3 or insert.shape[0] != batch or insert.shape[2] != width:
        raise ValueError(f"insert must be [k, {width}] or [{batch}, k, {width}], got {list(insert.shape)}")
    k = insert.shape[1]
    if not 1 <= k <= length - max(at, 1):
        raise ValueError(f"insert of {k} vectors does not fit after {at} leading tokens in {length} tokens")
    insert = insert.to(dtype=tokens.dtype, device=tokens.device)
    return torch.cat([tokens[:, :at], insert, tokens[:, at : length - k]], dim=1)  # [B, T, D]


def shift_mask(mask: torch.Tensor, k: int, at: int = 1) -> torch.Tensor:
    """[B, T] padding mask for the layout with k real vectors inserted after the first ``at`` tokens (cut to T)."""
    ones = torch.ones(mask.shape[0], k, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask[:, :at], ones, mask[:, at : mask.shape[1] - k]], dim=1)  # [B, T]
