"""Placing k vectors right after the first token (BOS / [CLS]), shared by every adapter family."""

from __future__ import annotations

import torch


def insert_after_bos(tokens: torch.Tensor, insert: torch.Tensor) -> torch.Tensor:
    """[B, T, D] token embeddings + [k, D] or [B, k, D] vectors -> [B, T, D]: BOS, the k vectors, the rest cut to T."""
    batch, length, width = tokens.shape
    if insert.dim() == 2:
        insert = insert.unsqueeze(0).expand(batch, -1, -1)  # [B, k, D]
    if insert.dim() != 3 or insert.shape[0] != batch or insert.shape[2] != width:
        raise ValueError(f"insert must be [k, {width}] or [{batch}, k, {width}], got {list(insert.shape)}")
    k = insert.shape[1]
    if not 1 <= k <= length - 1:
        raise ValueError(f"insert of {k} vectors does not fit after BOS in {length} tokens")
    insert = insert.to(dtype=tokens.dtype, device=tokens.device)
    return torch.cat([tokens[:, :1], insert, tokens[:, 1 : length - k]], dim=1)  # [B, T, D]


def shift_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """[B, T] padding mask for the layout with k real vectors inserted after BOS (cut back to T)."""
    ones = torch.ones(mask.shape[0], k, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask[:, :1], ones, mask[:, 1 : mask.shape[1] - k]], dim=1)  # [B, T]
